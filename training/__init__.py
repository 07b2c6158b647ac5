"""Training: data loading and splits, the loop, metrics and configuration."""
