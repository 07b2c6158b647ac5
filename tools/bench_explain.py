"""Benchmark of the heat map (``explain=true``, :mod:`model.explain`) against the prediction it explains.

Times, for one photo on the default model and both serving backends: the prediction alone (preprocess, network,
verdict: what a request without ``explain`` costs) and the explanation (Grad-CAM on the torch network and its PNG),
the median of ``--repeats`` after one warm-up call (the first explanation also imports pytorch-grad-cam and
OpenCV: reported apart). Prints a Markdown section for BENCHMARKS.md (``make bench`` appends it).

    python tools/bench_explain.py --photo PHOTO [--model weights/fish4knowledge_lite2.pt] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.decoding import open_image  # noqa: E402
from model.explain import explain  # noqa: E402
from model.predictor import Predictor  # noqa: E402
from model.runtime import set_torch_threads  # noqa: E402


def median_ms(call: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``call`` over ``repeats`` calls, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    """Measure and print the Markdown section; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "weights" / "fish4knowledge_lite2.pt")
    parser.add_argument("--photo", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    image = open_image(args.photo)
    rows = []
    for backend in ("openvino", "torch"):
        predictor = Predictor.from_checkpoint(args.model, backend=backend, precision="auto")
        set_torch_threads(predictor.backend, None)
        start = time.perf_counter()
        explain(predictor, image).png_data_url  # noqa: B018 - the first call: imports and warm-up
        first = 1000 * (time.perf_counter() - start)
        predict = median_ms(lambda p=predictor: p.predict([image]), args.repeats)
        heat = median_ms(lambda p=predictor: explain(p, image).png_data_url, args.repeats)
        rows.append(f"| {predictor.backend} {predictor.precision} | {predict:.1f} | {heat:.1f} | {first:.0f} |")
    print("## 7. Where the model looked: the heat map of `explain=true`\n")
    print(f"`python tools/bench_explain.py --photo {args.photo.name}` (a {image.width} x {image.height} photo), median")
    print(f"of {args.repeats} after a warm-up call; the explanation runs on the torch network whatever the backend.\n")
    print("| serving backend | prediction alone (ms) | explanation + PNG (ms) | first explanation (ms) |")
    print("|---|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
