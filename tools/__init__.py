"""Developer tools run from the repository root: ``python tools/loadtest.py`` (also ``make loadtest``)."""
