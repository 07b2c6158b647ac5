"""Speed benchmark of prediction, serving and training, side by side in one run: ``make bench``.

Writes ``BENCHMARKS.md`` (machine, date, commit, then one table per measurement). Everything is measured on the
same checkpoint and the same photos in one process, so the ratios are what to read; absolute times move with the
machine and whatever else it is doing. Tests never assert a time: this script is where timings live.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import io
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from werkzeug.datastructures import FileStorage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.images import decode_image  # noqa: E402
from model.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from model.network import build_model  # noqa: E402
from model.predictor import BackendUnavailableError, Predictor, resolve_inference_precision  # noqa: E402
from model.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, train_transform  # noqa: E402
from tools import loadtest  # noqa: E402
from training.data import ImageListDataset, collate_skip_none, read_split, scan_image_folder  # noqa: E402
from training.engine import build_optimizer, build_scheduler, resolve_precision, train_one_epoch  # noqa: E402

logger = logging.getLogger("bench")

DEFAULT_MODEL = ROOT / "weights" / "fish4knowledge_lite0.pt"
DEFAULT_SPLIT = ROOT / "weights" / "fish4knowledge_split.csv"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fish4knowledge"


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> list[float]:
    """Wall times of ``fn()`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``."""
    return float(np.percentile(values, q))


class NaiveBaseline:
    """The textbook way: the eager fp32 network, PIL decode, resize 256, centre crop 224, one image at a time."""

    def __init__(self, ckpt: dict[str, Any]) -> None:
        from torchvision import transforms as T

        self.model = model_from_checkpoint(ckpt)
        self.transform = T.Compose(
            [T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        )

    @torch.no_grad()
    def predict_bytes(self, data: bytes) -> torch.Tensor:
        """Class probabilities ``(C,)`` of one encoded image."""
        image = Image.open(io.BytesIO(data)).convert("RGB")
        return torch.softmax(self.model(self.transform(image).unsqueeze(0)), dim=1)[0]


def app_predict_bytes(predictor: Predictor, data: bytes) -> torch.Tensor:
    """The app's path for one upload: in-memory decode (reduced size for big JPEGs), eval preset, predictor."""
    upload = FileStorage(io.BytesIO(data), filename="x")
    size = predictor.preprocessing.resize_size
    image = decode_image(upload, resize_short_side=size, reduce_to=size)
    batch = predictor.transform(image).unsqueeze(0)
    return predictor.probabilities(batch)[0]


def phone_photo(source: Path) -> bytes:
    """A 4000 x 3000 (12 MP) JPEG at quality 90 made from a real photo, with camera-like noise."""
    image = Image.open(source).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).integers(-6, 7, (3000, 4000, 3))
    arr = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def bench_predict(ckpt_path: Path, photos: list[Path], repeats: int) -> dict[str, Any]:
    """Single-image latency and batched throughput: naive baseline vs the app's predictor in fp32 and bf16."""
    ckpt = load_checkpoint(ckpt_path)
    size = ckpt["preprocessing"]["image_size"]
    small = [p.read_bytes() for p in photos[:20]]
    big = phone_photo(photos[0])
    naive = NaiveBaseline(ckpt)
    fp32 = Predictor.from_checkpoint(ckpt_path, precision="fp32")
    bf16 = Predictor.from_checkpoint(ckpt_path, precision="bf16")
    paths: list[tuple[str, Callable[[bytes], Any]]] = [
        ("naive: eager fp32, 224 px (resize 256, crop 224)", naive.predict_bytes),
        (f"app predictor, fp32, checkpoint's {size} px preset", lambda d: app_predict_bytes(fp32, d)),
        (f"app predictor, bf16 autocast + channels_last, {size} px", lambda d: app_predict_bytes(bf16, d)),
    ]
    predictors = [("torch fp32", fp32), ("torch bf16", bf16)]
    try:
        openvino = Predictor.from_checkpoint(ckpt_path, precision="bf16", backend="openvino")
        paths.append((f"app predictor, OpenVINO bf16, {size} px", lambda d: app_predict_bytes(openvino, d)))
        predictors.append(("OpenVINO bf16", openvino))
    except BackendUnavailableError as exc:
        logger.warning("skipping OpenVINO: %s", exc)
    rows: dict[str, Any] = {}

    def cycle(fn: Callable[[bytes], Any], items: list[bytes]) -> Callable[[], Any]:
        state = {"i": 0}

        def call() -> Any:
            state["i"] = (state["i"] + 1) % len(items)
            return fn(items[state["i"]])

        return call

    for name, fn in paths:
        small_ms = timed(cycle(fn, small), repeats)
        big_ms = timed(lambda fn=fn: fn(big), max(5, repeats // 5), warmup=1)
        rows[name] = {
            "p50_ms": pct(small_ms, 50),
            "p90_ms": pct(small_ms, 90),
            "big_p50_ms": pct(big_ms, 50),
        }
        logger.info("%s: %s", name, rows[name])

    images = [Image.open(p).convert("RGB") for p in photos[:64]]
    batched = {}
    for name, predictor in predictors:
        for batch_size in (16, 64):
            ms = timed(lambda predictor=predictor, b=batch_size: predictor.predict(images[:b]), 5, warmup=1)
            batched[f"{name}, batch {batch_size}"] = batch_size / (statistics.median(ms) / 1000)
    logger.info("batched img/s: %s", batched)
    return {
        "latency": rows,
        "batched_images_per_s": batched,
        "big_photo": f"4000 x 3000 JPEG, {len(big) // 1024} KB",
    }


def bench_fidelity(ckpt_path: Path, data: Path, split: Path) -> list[dict[str, Any]]:
    """Top-1 agreement and largest probability difference of each fast path against fp32, on the validation
    images; one row per fast path (torch bf16, and OpenVINO bf16 when installed)."""
    fp32 = Predictor.from_checkpoint(ckpt_path, precision="fp32")
    candidates = [("torch bf16", Predictor.from_checkpoint(ckpt_path, precision="bf16"))]
    try:
        candidates.append(("OpenVINO bf16", Predictor.from_checkpoint(ckpt_path, precision="bf16", backend="openvino")))
    except BackendUnavailableError as exc:
        logger.warning("skipping OpenVINO: %s", exc)
    samples = read_split(split, fp32.class_names)
    loader = DataLoader(ImageListDataset(data, samples, fp32.transform), batch_size=64, collate_fn=collate_skip_none)
    stats = {name: {"agree": 0, "correct": 0, "max_diff": 0.0} for name, _ in candidates}
    total, correct32 = 0, 0
    for images, targets in loader:
        p32 = fp32.probabilities(images)
        correct32 += int((p32.argmax(1) == targets).sum())
        total += len(targets)
        for name, predictor in candidates:
            p = predictor.probabilities(images)
            s = stats[name]
            s["agree"] += int((p32.argmax(1) == p.argmax(1)).sum())
            s["correct"] += int((p.argmax(1) == targets).sum())
            s["max_diff"] = max(s["max_diff"], float((p32 - p).abs().max()))
    return [
        {
            "path": name,
            "images": total,
            "top1_agreement": s["agree"] / total,
            "max_probability_difference": s["max_diff"],
            "accuracy_fp32": correct32 / total,
            "accuracy": s["correct"] / total,
        }
        for name, s in stats.items()
    ]


def bench_serving(
    model: Path,
    data: Path,
    clients: list[int],
    duration: float,
    precision: str,
    backend: str = "torch",
    batch_max_size: int | None = None,
) -> list[dict[str, Any]]:
    """``tools/loadtest.py`` without bad input or a kill, once per client count, against real gunicorn.

    ``batch_max_size`` overrides ``FISH_BATCH_MAX_SIZE`` (1: no dynamic batching)."""
    results = []
    os.environ["FISH_PRECISION"] = precision
    os.environ["FISH_BACKEND"] = backend
    if batch_max_size is not None:
        os.environ["FISH_BATCH_MAX_SIZE"] = str(batch_max_size)
    try:
        for count in clients:
            args = loadtest.parse_args(
                [
                    "--clients",
                    str(count),
                    "--duration",
                    str(duration),
                    "--no-kill",
                    "--bad-fraction",
                    "0",
                    "--model",
                    str(model),
                    "--data",
                    str(data),
                ]
            )
            report = loadtest.run_loadtest(args)
            good = report["good"]
            results.append(
                {
                    "clients": count,
                    "precision": f"{backend} {precision}"
                    + (f" (= {resolve_inference_precision(precision)}, the default)" if precision == "auto" else "")
                    + (", no batching" if batch_max_size == 1 else ""),
                    "requests_per_s": report["requests_per_s"],
                    "p50_ms": good["p50_ms"],
                    "p99_ms": good["p99_ms"],
                    "errors": report["unexpected_errors"],
                    "workers": report["config"]["workers"],
                }
            )
            logger.info("serving %s", results[-1])
    finally:
        os.environ.pop("FISH_PRECISION", None)
        os.environ.pop("FISH_BACKEND", None)
        os.environ.pop("FISH_BATCH_MAX_SIZE", None)
    return results


def bench_training(data: Path, image_size: int, images: int, precision: str) -> dict[str, float]:
    """ResNet-50 training images/s at ``image_size``: one epoch of the real loop on ``images`` photos (data
    loading included), and the model alone on random tensors (forward, backward, SGD step)."""
    device = torch.device("cpu")
    precision = resolve_precision(precision, device)
    class_names, samples = scan_image_folder(data)
    samples = samples[:: max(1, len(samples) // images)][:images]
    p = Preprocessing.for_image_size(image_size)
    dataset = ImageListDataset(data, samples, train_transform(p))
    loader = DataLoader(
        dataset,
        batch_size=64,
        shuffle=True,
        num_workers=2,
        collate_fn=collate_skip_none,
        persistent_workers=True,
        drop_last=True,
    )
    model = build_model("resnet50", len(class_names)).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, 0.05, 0.9, 5e-4)
    criterion = torch.nn.CrossEntropyLoss()
    # two epochs, the second measured: worker start-up and first-iteration allocation are not steady state
    scheduler = build_scheduler(optimizer, name="cosine", epochs=2, steps_per_epoch=len(loader), warmup_epochs=0)
    train_one_epoch(model, criterion, optimizer, scheduler, loader, device, 0, precision=precision)
    stats = train_one_epoch(model, criterion, optimizer, scheduler, loader, device, 1, precision=precision)

    x = torch.randn(64, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, len(class_names), (64,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    ms = timed(step, 4, warmup=1)
    return {
        "precision": precision,
        "image_size": image_size,
        "end_to_end_images_per_s": stats["images_per_s"],
        "model_only_images_per_s": 64 / (statistics.median(ms) / 1000),
        "images": stats["images"],
    }


def bench_predict_cli(model: Path, data: Path, images: int) -> dict[str, float]:
    """Images/s of ``predict.py`` over a folder of ``images`` photos (symlinks), in fp32 and bf16."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for i, path in enumerate(sorted(data.rglob("*.jpg"))[:images]):
            (folder / f"{i:05d}.jpg").symlink_to(path.resolve())
        for precision in ("fp32", "bf16"):
            start = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "predict.py"),
                    str(folder),
                    "--checkpoint",
                    str(model),
                    "--output",
                    str(Path(tmp) / "out.csv"),
                    "--precision",
                    precision,
                    "--workers",
                    "2",
                ],
                check=True,
                capture_output=True,
            )
            results[precision] = images / (time.perf_counter() - start)
    return results


def machine() -> dict[str, str]:
    """CPU model, cores, memory, library versions, date and commit of this run."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": (commit.stdout.strip() or "unknown") + (" (with uncommitted changes)" if dirty else ""),
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "torch": f"torch {torch.__version__}, torchvision {__import__('torchvision').__version__}, "
        f"{torch.get_num_threads()} threads",
    }


def render(results: dict[str, Any]) -> str:
    """BENCHMARKS.md from the results."""
    m = results["machine"]
    out = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`tools/bench.py`); every number below comes from one run on one machine, on the",
        "same checkpoint (`weights/fish4knowledge_lite0.pt`) and the same Fish4Knowledge photos. Read the ratios;",
        "absolute times move with the machine and its load.",
        "",
        f"- date: {m['date']}, commit {m['commit']}",
        f"- CPU: {m['cpu']}; GPU: {m['gpu']}",
        f"- {m['torch']}",
        "",
    ]
    if "predict" in results:
        r = results["predict"]
        out += [
            "## 1. Predict one photo (decode, preprocess, network)",
            "",
            f"20 small Fish4Knowledge JPEGs, cycled; the big photo is a {r['big_photo']}.",
            "",
            "| path | p50 ms | p90 ms | 12 MP photo p50 ms | 12 MP adds ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, row in r["latency"].items():
            out.append(
                f"| {name} | {row['p50_ms']:.1f} | {row['p90_ms']:.1f} | {row['big_p50_ms']:.1f} | "
                f"{row['big_p50_ms'] - row['p50_ms']:.1f} |"
            )
        base = next(iter(r["latency"].values()))["p50_ms"]
        best = min(row["p50_ms"] for row in r["latency"].values())
        out += ["", f"Fastest single-image path: {base / best:.1f}x the naive baseline.", ""]
        out += [
            "Batched throughput of the app's predictor (decoded images in memory):",
            "",
            "| precision, batch | images/s |",
            "|---|---:|",
        ]
        out += [f"| {k} | {v:.1f} |" for k, v in r["batched_images_per_s"].items()]
        out.append("")
    if "predict" in results and "serving" in results:
        lat = list(results["predict"]["latency"].values())
        serving16 = [row for row in results["serving"] if row["clients"] == 16]
        out += [
            "## What each step bought",
            "",
            "| step | measure | before | after | gain |",
            "|---|---|---:|---:|---:|",
        ]
        names = [
            "the checkpoint's own preset instead of 224 px",
            "bf16 autocast + channels_last",
            "OpenVINO bf16 (optional backend)",
        ]
        for name, before, after in zip(names, lat, lat[1:], strict=False):
            out.append(
                f"| {name} | one photo, p50 ms | {before['p50_ms']:.1f} | {after['p50_ms']:.1f} | "
                f"{before['p50_ms'] / after['p50_ms']:.2f}x |"
            )
        for before, after in zip(serving16, serving16[1:], strict=False):
            out.append(
                f"| {after['precision']} after {before['precision']} | 16 clients, requests/s | "
                f"{before['requests_per_s']:.1f} | {after['requests_per_s']:.1f} | "
                f"{after['requests_per_s'] / before['requests_per_s']:.2f}x |"
            )
        out.append("")
    if "fidelity" in results:
        rows = results["fidelity"]
        out += [
            "## 2. Fidelity of the fast paths against fp32",
            "",
            f"On the {rows[0]['images']} validation photos of the model card's split "
            f"(fp32 accuracy {100 * rows[0]['accuracy_fp32']:.2f} %):",
            "",
            "| path | top-1 agreement with fp32 | largest probability difference | accuracy |",
            "|---|---:|---:|---:|",
        ]
        for f in rows:
            out.append(
                f"| {f['path']} | {100 * f['top1_agreement']:.2f} % | {f['max_probability_difference']:.4f} | "
                f"{100 * f['accuracy']:.2f} % |"
            )
        out.append("")
    if "serving" in results:
        out += [
            "## 3. Serving: gunicorn with the default configuration",
            "",
            "`tools/loadtest.py` with real photos, no bad input, no worker killed; each client sends one request at",
            "a time.",
            "",
            "| backend, precision | clients | workers | requests/s | p50 ms | p99 ms | errors |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in results["serving"]:
            out.append(
                f"| {row['precision']} | {row['clients']} | {row['workers']} | {row['requests_per_s']:.1f} | "
                f"{row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {row['errors']} |"
            )
        out.append("")
    if "training" in results:
        out += [
            "## 4. Training ResNet-50 (CPU)",
            "",
            "| precision | image size | end to end (train.py's loop, data loading included; 2nd epoch) | model only |",
            "|---|---:|---:|---:|",
        ]
        for row in results["training"]:
            out.append(
                f"| {row['precision']} | {row['image_size']} | {row['end_to_end_images_per_s']:.1f} img/s "
                f"({row['images']:.0f} images) | {row['model_only_images_per_s']:.1f} img/s |"
            )
        out += ["", "GPU training was not measured: no GPU was available to this run.", ""]
    if "predict_cli" in results:
        out += ["## 5. Batch prediction: `predict.py DIR`", "", "| precision | images/s |", "|---|---:|"]
        out += [f"| {k} | {v:.1f} |" for k, v in results["predict_cli"].items()]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks and write the report; exit code 2 when the photos or model are missing."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT)
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--repeats", type=int, default=60, help="timed single-image predictions per path")
    parser.add_argument("--serving-duration", type=float, default=15.0, help="seconds per client count")
    parser.add_argument("--train-images", type=int, default=640)
    parser.add_argument(
        "--only",
        nargs="*",
        default=["predict", "fidelity", "serving", "training", "predict_cli"],
        help="subset of: predict fidelity serving training predict_cli",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not args.data.is_dir() or not args.model.is_file():
        logger.error("need the photos (%s) and the model (%s)", args.data, args.model)
        return 2
    photos = sorted(args.data.rglob("*.jpg"))[::37]
    results: dict[str, Any] = {"machine": machine()}
    if "predict" in args.only:
        results["predict"] = bench_predict(args.model, photos, args.repeats)
    if "fidelity" in args.only:
        results["fidelity"] = bench_fidelity(args.model, args.data, args.split)
        logger.info("fidelity %s", results["fidelity"])
    if "serving" in args.only:
        results["serving"] = []
        configs: list[tuple[str, str, int | None, list[int]]] = [
            ("fp32", "torch", 1, [16]),  # the first version of the app: fp32, one request at a time
            ("auto", "torch", 1, [16]),
            ("auto", "torch", None, [1, 4, 16]),  # the default configuration
        ]
        if importlib.util.find_spec("openvino") is not None:
            configs.append(("bf16", "openvino", None, [1, 4, 16]))
        for precision, backend, batch, counts in configs:
            results["serving"] += bench_serving(
                args.model, args.data, counts, args.serving_duration, precision, backend, batch
            )
    if "training" in args.only:
        results["training"] = [bench_training(args.data, 128, args.train_images, p) for p in ("fp32", "auto")]
        logger.info("training %s", results["training"])
    if "predict_cli" in args.only and (ROOT / "predict.py").is_file():
        results["predict_cli"] = bench_predict_cli(args.model, args.data, 800)
        logger.info("predict.py %s", results["predict_cli"])
    args.output.write_text(render(results) + "\n")
    logger.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
