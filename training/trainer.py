"""``fit(config)``: the whole of a training run, from an ImageFolder to checkpoints and an evaluation.

Run folder contents: ``config.yaml`` (the resolved options; ``--config`` reads it back), ``split.csv``,
``metrics.csv`` (one row per epoch), ``best.pt`` (by validation macro-F1; with ``--ema-decay`` the averaged
weights), ``last.pt``, ``release.pt`` (best weights in fp16, no optimizer state, for serving), and the final
evaluation of ``release.pt`` on the validation set: ``metrics.json``, ``per_class.csv``,
``confusion_matrix.csv`` and ``confusion_matrix.png``.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset, WeightedRandomSampler

from model.checkpoint import load_checkpoint, make_checkpoint, release_checkpoint, save_checkpoint
from model.network import WEIGHTS_IMAGENET, build_model, default_preprocessing, pretrained_head
from model.open_set import OpenSetNetwork, distillation_loss
from model.predictor import Predictor
from model.runtime import autocast, resolve_device, resolve_precision
from model.transforms import eval_transform, train_transform
from training.config import TrainConfig, save_config, validate
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
from training.distributed import DistributedContext, init_distributed
from training.engine import (
    build_batch_mix,
    build_ema,
    build_optimizer,
    build_scheduler,
    class_weights,
    gather_predictions,
    predict_loader,
    set_backbone_trainable,
    train_one_epoch,
)
from training.evaluation import (
    DEFAULT_TARGET_ACCURACY,
    ClassMismatchError,
    Outputs,
    collect_outputs,
    evaluate_logits,
    report,
)
from training.metrics import classification_metrics
from training.open_set import choose_open_set, open_set_samples, verdict_report

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


def load_data(
    cfg: TrainConfig, out: Path, write: bool = True
) -> tuple[list[str], Path, list[Sample], Path, list[Sample]]:
    """Scan the data (``--classes`` only, when given) and make (or reuse) the split; ``write`` saves it as
    ``out/split.csv``.

    Returns:
        ``(class_names, train_root, train_samples, val_root, val_samples)``.

    Raises:
        ClassMismatchError: ``--val-data`` has other classes than ``--data``.
    """
    class_names, samples = scan_image_folder(cfg.data, cfg.classes)
    split_path = out / SPLIT_FILE
    if cfg.val_data:
        val_classes, val = scan_image_folder(cfg.val_data, cfg.classes)
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
    if write:
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


def _train_sampler(
    cfg: TrainConfig, samples: list[Sample], num_classes: int, ctx: DistributedContext
) -> Sampler[int] | None:
    """``--sampler balanced``: each class drawn equally often (with replacement), ``len / world_size`` draws per
    process per epoch; under torchrun a ``DistributedSampler``; otherwise None (the loader shuffles)."""
    if cfg.sampler == "balanced":
        per_class = class_weights((s.target for s in samples), num_classes)
        weights = torch.tensor([float(per_class[s.target]) for s in samples], dtype=torch.double)
        return WeightedRandomSampler(
            weights,
            num_samples=math.ceil(len(samples) / ctx.world_size),
            replacement=True,
            generator=torch.Generator().manual_seed(cfg.seed + ctx.rank),
        )
    if ctx.enabled:
        return DistributedSampler(samples, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed)
    return None


def _wrap(model: nn.Module, ctx: DistributedContext) -> nn.Module:
    """DistributedDataParallel under torchrun (over the parameters that require a gradient now), else ``model``."""
    if not ctx.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def fit(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg.arch`` on ``cfg.data``; write the run folder ``cfg.out``. Runs as one process, or as one of
    several under ``torchrun`` (see :mod:`training.distributed`), where rank 0 writes every file.

    Returns:
        The final evaluation of the best checkpoint (see :func:`training.evaluation.evaluate_logits`) plus
        ``"best_epoch"``, ``"epochs_run"``, ``"stopped_early"``, ``"world_size"``, ``"train_seconds"`` and
        ``"train_images_per_s"`` (mean over epochs, all processes together); the same on every rank.

    Raises:
        ValueError: bad options; model.network.WeightsUnavailableError: pretrained weights unavailable;
        model.checkpoint.CheckpointError: ``--resume`` file unreadable; FileNotFoundError: no data.
    """
    validate(cfg)
    ctx = init_distributed(resolve_device(cfg.device))
    try:
        return _fit(cfg, ctx)
    finally:
        ctx.close()


def _fit(cfg: TrainConfig, ctx: DistributedContext) -> dict[str, Any]:
    out = Path(cfg.out)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    device = ctx.device
    precision = resolve_precision(cfg.precision, device)
    logger.info(
        "device %s, precision %s, torch threads %d, %d process(es)",
        device,
        precision,
        torch.get_num_threads(),
        ctx.world_size,
    )

    # rank 0 writes the split first; the others then compute the same one (same seed) or read it on --resume
    data = load_data(cfg, out, write=True) if ctx.is_main else None
    ctx.barrier()
    class_names, train_root, train_samples, val_root, val_samples = data or load_data(cfg, out, write=False)
    num_classes = len(class_names)
    class_info = read_class_info(cfg.class_info, class_names) if cfg.class_info else None
    preprocessing = default_preprocessing(cfg.arch, cfg.weights, image_size=cfg.image_size, crop_pct=cfg.crop_pct)
    loader_kwargs: dict[str, Any] = {
        "num_workers": cfg.workers,
        "collate_fn": collate_skip_none,
        "pin_memory": device.type == "cuda",
        "persistent_workers": cfg.workers > 0,
    }
    sampler = _train_sampler(cfg, train_samples, num_classes, ctx)
    per_process = len(train_samples) // ctx.world_size
    train_loader = DataLoader(
        ImageListDataset(
            train_root, train_samples, train_transform(preprocessing, cfg.augment), cache=cfg.cache_images
        ),
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=per_process > cfg.batch_size,
        generator=torch.Generator().manual_seed(cfg.seed),
        **loader_kwargs,
    )
    val_dataset: Dataset[Any] = ImageListDataset(
        val_root, val_samples, eval_transform(preprocessing), cache=cfg.cache_images
    )
    if ctx.enabled:  # each rank predicts a shard; gather_predictions reassembles the whole set
        val_dataset = Subset(val_dataset, range(ctx.rank, len(val_samples), ctx.world_size))
    val_loader = DataLoader(val_dataset, batch_size=cfg.batch_size * 2, shuffle=False, **loader_kwargs)

    head = cfg.head_spec()
    model = build_model(
        cfg.arch, num_classes, cfg.weights, head=head, keep_pretrained_head=cfg.weights == WEIGHTS_IMAGENET
    ).to(device, memory_format=torch.channels_last)
    distill = _build_distillation(model, cfg.distill_weight, device, precision)
    weight = class_weights((s.target for s in train_samples), num_classes) if cfg.class_weights == "auto" else None
    if weight is not None:
        logger.info("class weights (inverse frequency): %s", [round(float(w), 3) for w in weight])
    criterion = nn.CrossEntropyLoss(
        weight=weight.to(device) if weight is not None else None, label_smoothing=cfg.label_smoothing
    )
    optimizer = build_optimizer(
        model,
        cfg.lr,
        cfg.momentum,
        cfg.weight_decay,
        name=cfg.optimizer,
        backbone_lr_scale=cfg.backbone_lr_scale if cfg.head_epochs else 1.0,
    )
    lr_scheduler = build_scheduler(
        optimizer,
        name=cfg.scheduler,
        epochs=cfg.epochs,
        steps_per_epoch=len(train_loader),
        warmup_epochs=cfg.warmup_epochs,
        step_size=cfg.lr_step_size,
        gamma=cfg.lr_gamma,
        plateau_patience=cfg.plateau_patience,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    ema = build_ema(model, cfg.ema_decay) if cfg.ema_decay else None
    batch_mix = build_batch_mix(cfg.mixup_alpha, cfg.cutmix_alpha, num_classes)

    start_epoch, best_f1, best_epoch, stale = 0, -1.0, -1, 0
    if cfg.resume:
        ckpt = load_checkpoint(cfg.resume, map_location=device)
        if ckpt["class_names"] != class_names or ckpt["arch"] != cfg.arch:
            raise ClassMismatchError(f"--resume {cfg.resume} was trained as {ckpt['arch']} on {ckpt['class_names']}")
        model.load_state_dict(ckpt.get("training_model", ckpt["model"]))
        if ema is not None:
            ema.module.load_state_dict(ckpt["model"])
            ema.n_averaged.fill_(1)
        for key, obj in (("optimizer", optimizer), ("lr_scheduler", lr_scheduler), ("scaler", scaler)):
            if key in ckpt:
                obj.load_state_dict(ckpt[key])
        start_epoch = ckpt["epoch"] + 1
        best_f1 = float(ckpt["metrics"].get("best_val_macro_f1", -1.0))
        best_epoch = int(ckpt["metrics"].get("best_epoch", -1))
        stale = int(ckpt["metrics"].get("epochs_without_improvement", 0))
        logger.info("resumed from %s at epoch %d (best macro-F1 %.4f)", cfg.resume, start_epoch, best_f1)
        previous_best = Path(cfg.resume).parent / "best.pt"
        if ctx.is_main and not (out / "best.pt").exists() and previous_best.exists():
            shutil.copyfile(previous_best, out / "best.pt")  # resuming into a new run folder

    if cfg.freeze_backbone or start_epoch < cfg.head_epochs:
        set_backbone_trainable(model, False)
        logger.info(
            "backbone frozen (BatchNorm in eval mode)%s",
            f" for the first {cfg.head_epochs} epoch(s)" if cfg.head_epochs else "",
        )
    train_model = _wrap(OpenSetNetwork(model) if distill else model, ctx)
    if ctx.is_main:
        save_config(cfg, out / "config.yaml")
        if not cfg.resume:
            (out / "metrics.csv").unlink(missing_ok=True)  # a new run in an old folder starts a new history
    train_speeds: list[float] = []
    run_start = time.perf_counter()
    epochs_run, stopped_early = 0, False

    for epoch in range(start_epoch, cfg.epochs):
        if cfg.head_epochs and epoch == cfg.head_epochs:
            set_backbone_trainable(model, True)
            train_model = _wrap(OpenSetNetwork(model) if distill else model, ctx)
            logger.info("epoch %d: training the whole network, backbone LR x %g", epoch + 1, cfg.backbone_lr_scale)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        epoch_start = time.perf_counter()
        lr = max(group["lr"] for group in optimizer.param_groups)
        train_stats = train_one_epoch(
            train_model,
            criterion,
            optimizer,
            lr_scheduler,
            train_loader,
            device,
            epoch,
            precision=precision,
            scaler=scaler,
            batch_mix=batch_mix,
            ema=ema,
            clip_grad_norm=cfg.clip_grad_norm,
            show_progress=ctx.is_main,
            distill=distill,
        )
        train_speeds.append(train_stats["images_per_s"])
        eval_model = ema.module if ema is not None else model  # the weights that are validated and saved
        eval_model.eval()

        def forward(images: torch.Tensor, net: nn.Module = eval_model) -> torch.Tensor:
            with autocast(device, precision):
                return net(images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last))

        logits, targets = gather_predictions(*predict_loader(forward, val_loader, desc="val"))
        val_loss = float(nn.functional.cross_entropy(logits, targets)) if targets.numel() else float("nan")
        val = classification_metrics(targets.tolist(), logits.argmax(1).tolist(), class_names)
        lr_scheduler.epoch_end(epoch, val["macro_f1"])
        epoch_seconds = time.perf_counter() - epoch_start
        epochs_run += 1
        if val["macro_f1"] > best_f1:
            best_f1, best_epoch, stale = val["macro_f1"], epoch, 0
        else:
            stale += 1
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
        if ctx.is_main:
            _append_metrics_row(out / "metrics.csv", row)
            metrics = {
                "val_accuracy": val["accuracy"],
                "val_macro_f1": val["macro_f1"],
                "val_loss": val_loss,
                "train_loss": train_stats["loss"],
                "best_val_macro_f1": best_f1,
                "best_epoch": float(best_epoch),
                "epochs_without_improvement": float(stale),
            }
            ckpt = make_checkpoint(
                model=eval_model,
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
                head=head,
            )
            if ema is not None:
                ckpt["training_model"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            save_checkpoint(ckpt, out / "last.pt")
            if best_epoch == epoch:
                save_checkpoint(ckpt, out / "best.pt")
                logger.info("new best macro-F1 %.4f: saved %s", best_f1, out / "best.pt")
        if cfg.patience and stale >= cfg.patience:
            stopped_early = True
            logger.info(
                "early stop after epoch %d: no better val macro-F1 for %d epoch(s) (best %.4f at epoch %d)",
                epoch + 1,
                stale,
                best_f1,
                best_epoch + 1,
            )
            break

    train_seconds = time.perf_counter() - run_start
    ctx.barrier()
    final: dict[str, Any] | None = None
    if ctx.is_main:
        final = write_release(
            out,
            val_root,
            val_samples,
            device=device,
            batch_size=cfg.batch_size * 2,
            workers=cfg.workers,
            target_accuracy=cfg.target_accuracy,
            open_set=OpenSetOptions(train_root, list(train_samples), cfg),
        )
        final.update(
            epochs_run=epochs_run,
            stopped_early=stopped_early,
            world_size=ctx.world_size,
            train_seconds=train_seconds,
            train_images_per_s=float(np.mean(train_speeds)) if train_speeds else 0.0,
        )
        (out / "metrics.json").write_text(json.dumps(final, indent=2) + "\n")
    return ctx.broadcast(final)


def _build_distillation(
    model: nn.Module, weight: float, device: torch.device, precision: str
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """Learning without Forgetting (Li & Hoiem 2016) for the kept ImageNet head: a frozen copy of the pretrained
    network gives the ImageNet logits the fine-tuned one should keep on each training batch; returns
    ``distill(images, imagenet_logits) -> weight * distillation_loss``, or None without a kept head or weight."""
    if weight <= 0 or pretrained_head(model) is None:
        return None
    teacher = OpenSetNetwork(copy.deepcopy(model)).eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    logger.info("keeping the ImageNet head: distillation from the pretrained network, weight %g", weight)

    def distill(images: torch.Tensor, imagenet_logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(device, precision):
            target = teacher(images)[2]
        return weight * distillation_loss(imagenet_logits, target)

    return distill


#: ``train.py``'s open-set options (:class:`training.config.TrainConfig` fields); a release records the values it
#: chose its thresholds with.
OPEN_SET_OPTIONS = (
    "subject",
    "open_set_photos",
    "not_subject",
    "subject_rejection",
    "novelty_rejection",
    "max_confidently_wrong",
)


@dataclass
class OpenSetOptions:
    """What the release step needs to choose the open-set thresholds (see :mod:`training.open_set`): the training
    images (to fit the scores on) and the run's configuration (its :data:`OPEN_SET_OPTIONS`)."""

    train_root: Path
    train_samples: list[Sample]
    config: TrainConfig


def _open_set_release(
    predictor: Predictor, options: OpenSetOptions, val: Outputs, batch_size: int, workers: int
) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, float]]]:
    """Choose the open-set thresholds for ``predictor`` and measure the verdicts on every set; ``val`` holds the
    outputs on the validation images, already computed for the evaluation.

    Returns:
        ``(checkpoint "open_set" record, serving fields, {set name: verdict report})``.
    """
    cfg = options.config
    kwargs = {"batch_size": batch_size, "workers": workers}
    train = collect_outputs(predictor, options.train_root, options.train_samples, **kwargs)
    sets = {"val": val}
    others = open_set_samples(cfg.open_set_photos, cfg.not_subject, predictor.class_names)
    for name, (root, rows) in others.items():
        if name != "not_subject":
            sets[name] = collect_outputs(predictor, root, rows, **kwargs)
    record, rule = choose_open_set(
        predictor,
        train,
        sets,
        subject=cfg.subject,
        subject_rejection=cfg.subject_rejection,
        novelty_rejection=cfg.novelty_rejection,
        max_confidently_wrong=cfg.max_confidently_wrong,
    )
    if "not_subject" in others:
        sets["not_subject"] = collect_outputs(predictor, *others["not_subject"], **kwargs)
    reports = {name: verdict_report(predictor, outputs) for name, outputs in sets.items()}
    for name, rep in reports.items():
        logger.info("open set, %s: %s", name, ", ".join(f"{k} {v:.3f}" for k, v in rep.items()))
    serving = {
        "subject_threshold": rule.subject_threshold,
        "novelty_threshold": rule.novelty_threshold,
        "subject": rule.subject,
        "confidence_threshold": rule.confidence_threshold,
    }
    return record, serving, reports


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
    open_set: OpenSetOptions | None = None,
) -> dict[str, Any]:
    """Make ``out/release.pt`` from ``out/best.pt`` and evaluate it on the validation images.

    The release copy holds fp16 weights and no optimizer state (see :func:`model.checkpoint.release_checkpoint`);
    its ``metrics`` are replaced by this evaluation (through :class:`Predictor`, as served), so the numbers the
    web app shows are the ones ``evaluate.py`` reproduces, and its ``serving`` record holds the softmax
    temperature fitted on the validation images (temperature scaling, Guo et al. 2017) and the "not sure"
    threshold chosen on the same, calibrated, probabilities for ``target_accuracy``. ``class_info`` replaces the
    names recorded in ``best.pt`` when given. With ``open_set``, the "unknown species" and "not a fish" checks
    are fitted and their thresholds chosen (:mod:`training.open_set`), and the verdicts on each set are reported
    under ``"open_set"``. Writes the evaluation files into ``out``.

    Returns:
        The evaluation (see :func:`training.evaluation.evaluate_logits`) plus ``"best_epoch"``.
    """
    best = load_checkpoint(out / "best.pt")
    release = release_checkpoint(best)
    if class_info is not None:
        release["class_info"] = class_info
    save_checkpoint(release, out / "release.pt")
    predictor = Predictor.from_checkpoint(out / "release.pt", device=device)
    val = collect_outputs(predictor, val_root, val_samples, batch_size=batch_size, workers=workers)
    final = evaluate_logits(predictor, val.logits, val.targets, target_accuracy=target_accuracy, fit_temperature=True)
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
        "val_ece": float(final["ece"]),
        "val_ece_before": float(final["ece_before"]),
        "val_nll": float(final["nll"]),
        "temperature": float(final["temperature"]),
        "per_class": final["per_class"],
        "confusion_matrix": final["confusion_matrix"],
    }
    release["serving"] = {**final["selective"], "temperature": float(final["temperature"])}
    if open_set is not None:
        predictor.confidence_threshold = final["selective"]["confidence_threshold"]
        record, serving, reports = _open_set_release(predictor, open_set, val, batch_size, workers)
        release["open_set"] = record
        release["serving"].update(serving)
        # the options that chose the thresholds, which a release re-made with --resume may have changed
        release["config"].update({name: getattr(open_set.config, name) for name in OPEN_SET_OPTIONS})
        # the "not sure" threshold may have risen: describe it by what it does on the validation images
        release["serving"]["coverage"] = reports["val"]["species"]
        release["serving"]["selective_accuracy"] = reports["val"]["species_accuracy"]
        release["metrics"]["open_set"] = reports
        final["open_set"] = reports
    logger.info(
        "temperature %.3f: ECE %.4f -> %.4f on the val images", final["temperature"], final["ece_before"], final["ece"]
    )
    serving = release["serving"]  # the selective threshold, or the open-set one where that rose above it
    logger.info(
        "'not sure' threshold %.3f: %.1f%% of val images named, %.1f%% of those right (target %.0f%%)",
        serving["confidence_threshold"],
        100 * serving["coverage"],
        100 * serving["selective_accuracy"],
        100 * target_accuracy,
    )
    save_checkpoint(release, out / "release.pt")
    final["best_epoch"] = best["epoch"]
    return final
