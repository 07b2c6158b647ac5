"""The data of a training run: the scan and split of the ImageFolder (``split.csv``, reused on ``--resume``), the
datasets with their transforms, the training sampler and both loaders (:func:`build_data`, a step of
:func:`training.trainer.fit`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset, WeightedRandomSampler

from model.network import default_preprocessing
from model.transforms import Preprocessing, eval_transform, train_transform
from training.config import TrainConfig
from training.data import (
    SPLIT_FILE,
    ImageListDataset,
    Sample,
    class_counts,
    collate_skip_none,
    read_class_info,
    read_split,
    reindex,
    scan_extra_data,
    scan_image_folder,
    split_samples,
    write_split,
)
from training.distributed import DistributedContext
from training.evaluation import ClassMismatchError
from training.optim import class_weights

logger = logging.getLogger(__name__)


def _given_split(path: Path, class_names: list[str], samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """``--split-file``: its train and val rows, which must all be images of ``--data`` under the same class.

    Raises:
        FileNotFoundError: no such file; ValueError: not a split file, or rows that ``--data`` does not hold.
    """
    train, val = read_split(path, class_names, "train"), read_split(path, class_names, "val")
    scanned = set(samples)
    missing = [s.path for s in train + val if s not in scanned]
    if missing:
        raise ValueError(
            f"--split-file {path}: {len(missing)} of its images are not in --data under that class (e.g. {missing[0]})"
        )
    logger.info("using the split in %s", path)
    return train, val


def load_data(
    cfg: TrainConfig, out: Path, write: bool = True
) -> tuple[list[str], Path, list[Sample], Path, list[Sample]]:
    """Scan the data (``--classes`` only, when given) and make (or reuse) the split; ``write`` saves it as
    ``out/split.csv``. ``--extra-data`` images join the training split only, with absolute paths; the classes are
    then the sorted union of every folder's (see :func:`training.data.scan_extra_data`).

    Returns:
        ``(class_names, train_root, train_samples, val_root, val_samples)``.

    Raises:
        ClassMismatchError: ``--val-data`` has other classes than ``--data``.
        FileNotFoundError, ValueError: see :func:`training.data.scan_image_folder` and ``scan_extra_data``.
    """
    data_names, samples = scan_image_folder(cfg.data, cfg.classes)
    class_names, extra = data_names, []
    if cfg.extra_data:
        class_names, extra = scan_extra_data(cfg.extra_data, data_names, cfg.classes, (cfg.data, cfg.val_data))
        samples = reindex(samples, data_names, class_names)
    split_path = out / SPLIT_FILE
    val_root = Path(cfg.val_data or cfg.data)
    if cfg.val_data:
        val_classes, val = scan_image_folder(cfg.val_data, cfg.classes)
        if val_classes != data_names:
            raise ClassMismatchError(f"--val-data classes {val_classes} differ from --data classes {data_names}")
        train, val = samples + extra, reindex(val, val_classes, class_names)
    elif cfg.split_file:
        train, val = _given_split(Path(cfg.split_file), class_names, samples)
        train += extra
    elif cfg.resume and split_path.exists():
        val = read_split(split_path, class_names, "val")
        train = read_split(split_path, class_names, "train")
        logger.info("reusing the split in %s", split_path)
        missing = {s.path for s in extra} - {s.path for s in train}
        if missing:
            logger.warning("%d --extra-data image(s) are not in the reused split: not trained on", len(missing))
    else:
        train, val = split_samples(samples, cfg.val_fraction, cfg.seed, cfg.group_pattern)
        train += extra
    if write:
        write_split(split_path, train, val if not cfg.val_data else [], class_names)
    logger.info(
        "%d classes; %d train (%d from --extra-data) / %d val images; train per class %s",
        len(class_names),
        len(train),
        len(extra),
        len(val),
        class_counts(train, class_names),
    )
    return class_names, Path(cfg.data), train, val_root, val


def train_sampler(
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


@dataclass
class RunData:
    """What :func:`build_data` makes: the classes, both splits, the preprocessing and the loaders.

    Attributes:
        class_names: the C class folder names, sorted; index i is logit i.
        train_root, val_root: the folders the samples' paths are relative to.
        train_samples, val_samples: the split (every process holds all of it).
        class_info: ``--class-info``'s names per class, or None.
        preprocessing: the network's input (size, crop, normalisation), recorded in every checkpoint.
        sampler: the training sampler (see :func:`train_sampler`), or None when the loader shuffles.
        train_loader: augmented batches of ``(images (N,3,S,S) float32, targets (N,) int64)``.
        val_loader: eval-transform batches; under torchrun this process's shard of the validation set.
    """

    class_names: list[str]
    train_root: Path
    train_samples: list[Sample]
    val_root: Path
    val_samples: list[Sample]
    class_info: dict[str, dict[str, str]] | None
    preprocessing: Preprocessing
    sampler: Sampler[int] | None
    train_loader: DataLoader[Any]
    val_loader: DataLoader[Any]


def build_data(cfg: TrainConfig, ctx: DistributedContext, out: Path) -> RunData:
    """Scan and split the data (:func:`load_data`; rank 0 writes ``split.csv`` first), then make the datasets,
    the training sampler and both loaders."""
    # rank 0 writes the split first; the others then compute the same one (same seed) or read it on --resume
    data = load_data(cfg, out, write=True) if ctx.is_main else None
    ctx.barrier()
    split = data or load_data(cfg, out, write=False)
    class_names, train_root, train_samples, val_root, val_samples = split
    preprocessing = default_preprocessing(cfg.arch, cfg.weights, image_size=cfg.image_size, crop_pct=cfg.crop_pct)
    loader_kwargs: dict[str, Any] = {
        "num_workers": cfg.workers,
        "collate_fn": collate_skip_none,
        "pin_memory": ctx.device.type == "cuda",
        "persistent_workers": cfg.workers > 0,
    }
    sampler = train_sampler(cfg, train_samples, len(class_names), ctx)
    train_dataset = ImageListDataset(
        train_root, train_samples, train_transform(preprocessing, cfg.augment), cache=cfg.cache_images
    )
    train_loader = DataLoader(
        train_dataset,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=len(train_samples) // ctx.world_size > cfg.batch_size,
        generator=torch.Generator().manual_seed(cfg.seed),
        **loader_kwargs,
    )
    val_dataset: Dataset[Any] = ImageListDataset(
        val_root, val_samples, eval_transform(preprocessing), cache=cfg.cache_images
    )
    if ctx.enabled:  # each rank predicts a shard; gather_predictions reassembles the whole set
        val_dataset = Subset(val_dataset, range(ctx.rank, len(val_samples), ctx.world_size))
    val_loader = DataLoader(val_dataset, batch_size=cfg.batch_size * 2, shuffle=False, **loader_kwargs)
    return RunData(
        *split,
        class_info=read_class_info(cfg.class_info, class_names) if cfg.class_info else None,
        preprocessing=preprocessing,
        sampler=sampler,
        train_loader=train_loader,
        val_loader=val_loader,
    )
