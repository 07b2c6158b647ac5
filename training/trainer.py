"""``fit(config)``: the whole of a training run, from an ImageFolder to checkpoints and an evaluation.

Run folder contents: ``config.json``, ``split.csv``, ``metrics.csv`` (one row per epoch), ``best.pt`` (by
validation macro-F1), ``last.pt``, ``release.pt`` (best weights in fp16, no optimizer state, for serving), and
the final evaluation of ``release.pt`` on the validation set: ``metrics.json``, ``per_class.csv``,
``confusion_matrix.csv`` and ``confusion_matrix.png``.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from model.checkpoint import load_checkpoint, make_checkpoint, release_checkpoint, save_checkpoint
from model.network import build_model
from model.predictor import Predictor
from model.transforms import Preprocessing, eval_transform, train_transform
from training.config import TrainConfig, validate
from training.data import (
    SPLIT_FILE,
    ImageListDataset,
    Sample,
    class_counts,
    collate_skip_none,
    read_class_info,
    read_split,
    scan_image_folder,
    split_samples,
    write_split,
)
from training.engine import (
    autocast,
    build_optimizer,
    build_scheduler,
    predict_loader,
    resolve_device,
    resolve_precision,
    train_one_epoch,
)
from training.evaluation import DEFAULT_TARGET_ACCURACY, ClassMismatchError, evaluate_predictor, report
from training.metrics import classification_metrics

logger = logging.getLogger(__name__)

METRICS_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_macro_f1",
    "train_images_per_s",
    "epoch_seconds",
]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data(cfg: TrainConfig, out: Path) -> tuple[list[str], Path, list[Sample], Path, list[Sample]]:
    """Scan the data and make (or reuse) the split.

    Returns:
        ``(class_names, train_root, train_samples, val_root, val_samples)``.

    Raises:
        ClassMismatchError: ``--val-data`` has other classes than ``--data``.
    """
    class_names, samples = scan_image_folder(cfg.data)
    split_path = out / SPLIT_FILE
    if cfg.val_data:
        val_classes, val = scan_image_folder(cfg.val_data)
        if val_classes != class_names:
            raise ClassMismatchError(f"--val-data classes {val_classes} differ from --data classes {class_names}")
        train, val_root = samples, Path(cfg.val_data)
    elif cfg.resume and split_path.exists():
        val = read_split(split_path, class_names, "val")
        train = read_split(split_path, class_names, "train")
        val_root = Path(cfg.data)
        logger.info("reusing the split in %s", split_path)
    else:
        train, val = split_samples(samples, cfg.val_fraction, cfg.seed, cfg.group_pattern)
        val_root = Path(cfg.data)
    write_split(split_path, train, val if not cfg.val_data else [], class_names)
    logger.info(
        "%d classes; %d train / %d val images; train per class %s",
        len(class_names),
        len(train),
        len(val),
        class_counts(train, class_names),
    )
    return class_names, Path(cfg.data), train, val_root, val


def _append_metrics_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRICS_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def fit(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg.arch`` on ``cfg.data``; write the run folder ``cfg.out``.

    Returns:
        The final evaluation of the best checkpoint (see :func:`training.metrics.classification_metrics`) plus
        ``"best_epoch"``, ``"train_seconds"`` and ``"train_images_per_s"`` (mean over epochs).

    Raises:
        ValueError: bad options; model.network.WeightsUnavailableError: pretrained weights unavailable;
        model.checkpoint.CheckpointError: ``--resume`` file unreadable; FileNotFoundError: no data.
    """
    validate(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    logger.info("device %s, precision %s, torch threads %d", device, precision, torch.get_num_threads())

    class_names, train_root, train_samples, val_root, val_samples = load_data(cfg, out)
    class_info = read_class_info(cfg.class_info, class_names) if cfg.class_info else None
    preprocessing = Preprocessing.for_image_size(cfg.image_size, cfg.crop_pct)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader_kwargs: dict[str, Any] = {
        "num_workers": cfg.workers,
        "collate_fn": collate_skip_none,
        "pin_memory": device.type == "cuda",
        "persistent_workers": cfg.workers > 0,
    }
    train_loader = DataLoader(
        ImageListDataset(train_root, train_samples, train_transform(preprocessing), cache=cfg.cache_images),
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=len(train_samples) > cfg.batch_size,
        generator=generator,
        **loader_kwargs,
    )
    val_loader = DataLoader(
        ImageListDataset(val_root, val_samples, eval_transform(preprocessing), cache=cfg.cache_images),
        batch_size=cfg.batch_size * 2,
        shuffle=False,
        **loader_kwargs,
    )

    model = build_model(cfg.arch, len(class_names), cfg.weights).to(device, memory_format=torch.channels_last)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    optimizer = build_optimizer(model, cfg.lr, cfg.momentum, cfg.weight_decay)
    lr_scheduler = build_scheduler(
        optimizer,
        name=cfg.scheduler,
        epochs=cfg.epochs,
        steps_per_epoch=len(train_loader),
        warmup_epochs=cfg.warmup_epochs,
        step_size=cfg.lr_step_size,
        gamma=cfg.lr_gamma,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    start_epoch, best_f1, best_epoch = 0, -1.0, -1
    if cfg.resume:
        ckpt = load_checkpoint(cfg.resume, map_location=device)
        if ckpt["class_names"] != class_names or ckpt["arch"] != cfg.arch:
            raise ClassMismatchError(f"--resume {cfg.resume} was trained as {ckpt['arch']} on {ckpt['class_names']}")
        model.load_state_dict(ckpt["model"])
        for key, obj in (("optimizer", optimizer), ("lr_scheduler", lr_scheduler), ("scaler", scaler)):
            if key in ckpt:
                obj.load_state_dict(ckpt[key])
        start_epoch = ckpt["epoch"] + 1
        best_f1 = float(ckpt["metrics"].get("best_val_macro_f1", -1.0))
        best_epoch = int(ckpt["metrics"].get("best_epoch", -1))
        logger.info("resumed from %s at epoch %d (best macro-F1 %.4f)", cfg.resume, start_epoch, best_f1)
        previous_best = Path(cfg.resume).parent / "best.pt"
        if not (out / "best.pt").exists() and previous_best.exists():
            shutil.copyfile(previous_best, out / "best.pt")  # resuming into a new run folder

    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    train_speeds: list[float] = []
    run_start = time.perf_counter()

    def forward(images: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return model(images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last))

    for epoch in range(start_epoch, cfg.epochs):
        epoch_start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_stats = train_one_epoch(
            model, criterion, optimizer, lr_scheduler, train_loader, device, epoch, precision=precision, scaler=scaler
        )
        train_speeds.append(train_stats["images_per_s"])
        model.eval()
        logits, targets = predict_loader(forward, val_loader, desc="val")
        val_loss = float(nn.functional.cross_entropy(logits, targets)) if targets.numel() else float("nan")
        val = classification_metrics(targets.tolist(), logits.argmax(1).tolist(), class_names)
        epoch_seconds = time.perf_counter() - epoch_start
        if val["macro_f1"] > best_f1:
            best_f1, best_epoch = val["macro_f1"], epoch
        row = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train_stats["loss"],
            "train_accuracy": train_stats["accuracy"],
            "val_loss": val_loss,
            "val_accuracy": val["accuracy"],
            "val_macro_f1": val["macro_f1"],
            "train_images_per_s": train_stats["images_per_s"],
            "epoch_seconds": epoch_seconds,
        }
        _append_metrics_row(out / "metrics.csv", row)
        logger.info(
            "epoch %d/%d  train loss %.4f acc %.3f  val loss %.4f acc %.3f macro-F1 %.3f  %.1f img/s  %.0f s",
            epoch + 1,
            cfg.epochs,
            train_stats["loss"],
            train_stats["accuracy"],
            val_loss,
            val["accuracy"],
            val["macro_f1"],
            train_stats["images_per_s"],
            epoch_seconds,
        )
        metrics = {
            "val_accuracy": val["accuracy"],
            "val_macro_f1": val["macro_f1"],
            "val_loss": val_loss,
            "train_loss": train_stats["loss"],
            "best_val_macro_f1": best_f1,
            "best_epoch": float(best_epoch),
        }
        ckpt = make_checkpoint(
            model=model,
            arch=cfg.arch,
            class_names=class_names,
            preprocessing=preprocessing,
            epoch=epoch,
            metrics=metrics,
            config=cfg.to_dict(),
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            scaler=scaler,
            class_info=class_info,
        )
        save_checkpoint(ckpt, out / "last.pt")
        if best_epoch == epoch:
            save_checkpoint(ckpt, out / "best.pt")
            logger.info("new best macro-F1 %.4f: saved %s", best_f1, out / "best.pt")

    train_seconds = time.perf_counter() - run_start
    final = write_release(
        out,
        val_root,
        val_samples,
        device=device,
        batch_size=cfg.batch_size * 2,
        workers=cfg.workers,
        target_accuracy=cfg.target_accuracy,
    )
    final.update(
        train_seconds=train_seconds,
        train_images_per_s=float(np.mean(train_speeds)) if train_speeds else 0.0,
    )
    (out / "metrics.json").write_text(json.dumps(final, indent=2) + "\n")
    return final


def write_release(
    out: Path,
    val_root: Path,
    val_samples: list[Sample],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    workers: int = 2,
    target_accuracy: float = DEFAULT_TARGET_ACCURACY,
    class_info: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Make ``out/release.pt`` from ``out/best.pt`` and evaluate it on the validation images.

    The release copy holds fp16 weights and no optimizer state (see :func:`model.checkpoint.release_checkpoint`);
    its ``metrics`` are replaced by this evaluation (through :class:`Predictor`, as served), so the numbers the
    web app shows are the ones ``evaluate.py`` reproduces, and its ``serving`` record holds the "not sure"
    threshold chosen on the same images for ``target_accuracy``. ``class_info`` replaces the names recorded in
    ``best.pt`` when given. Writes the evaluation files into ``out``.

    Returns:
        The evaluation (see :func:`training.evaluation.evaluate_predictor`) plus ``"best_epoch"``.
    """
    best = load_checkpoint(out / "best.pt")
    release = release_checkpoint(best)
    if class_info is not None:
        release["class_info"] = class_info
    save_checkpoint(release, out / "release.pt")
    predictor = Predictor.from_checkpoint(out / "release.pt", device=device)
    final = evaluate_predictor(
        predictor, val_root, val_samples, batch_size=batch_size, workers=workers, target_accuracy=target_accuracy
    )
    logger.info(
        "final evaluation of %s (epoch %d) on %d val images:\n%s",
        out / "release.pt",
        best["epoch"],
        final["images"],
        report(final, predictor.class_names, out),
    )
    release["metrics"] = {
        "val_accuracy": final["accuracy"],
        "val_macro_f1": final["macro_f1"],
        "val_macro_precision": final["macro_precision"],
        "val_macro_recall": final["macro_recall"],
        "val_images": float(final["images"]),
        "best_epoch": float(best["epoch"]),
        "per_class": final["per_class"],
        "confusion_matrix": final["confusion_matrix"],
    }
    release["serving"] = dict(final["selective"])
    logger.info(
        "'not sure' threshold %.3f: %.1f%% of val images above it, %.1f%% of those right (target %.0f%%)",
        final["selective"]["confidence_threshold"],
        100 * final["selective"]["coverage"],
        100 * final["selective"]["selective_accuracy"],
        100 * target_accuracy,
    )
    save_checkpoint(release, out / "release.pt")
    final["best_epoch"] = best["epoch"]
    return final
