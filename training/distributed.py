"""Running ``train.py`` under ``torchrun``: one process per GPU (or CPU worker), DistributedDataParallel; the
process group, and the collectives training needs (summing statistics, gathering validation predictions).

torchrun sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (and the rendezvous address) for every process; without
them, or with ``WORLD_SIZE=1``, training runs as a single process and nothing here does anything. Follows the
layout of torchvision's ``references/classification/utils.py`` (``init_distributed_mode``): NCCL on GPUs, gloo
on CPUs, one GPU per process chosen by ``LOCAL_RANK``; rank 0 alone logs, writes checkpoints and evaluates.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass
class DistributedContext:
    """Where this process stands in a (possibly one-process) training job.

    Attributes:
        rank: global index of this process, 0 to ``world_size - 1``.
        world_size: number of processes.
        local_rank: index of this process on its machine (its GPU under CUDA).
        device: the device this process trains on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs, writes files and evaluates."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (no-op alone)."""
        if self.enabled:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """``value`` as rank 0 has it, on every rank (a picklable object; no-op alone)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Leave the process group (no-op alone)."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group torchrun describes in the environment, or return a one-process context.

    Args:
        device: the device resolved from ``--device``; under torchrun a CUDA device becomes ``cuda:LOCAL_RANK``.

    Returns:
        The context; its ``device`` is the one this process must use.

    Raises:
        ValueError: torchrun's variables are incomplete.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(device=device)
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    except KeyError as exc:
        raise ValueError(f"WORLD_SIZE={world_size} but {exc.args[0]} is not set; start training with torchrun") from exc
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    logger.info("process %d of %d (local rank %d) on %s, backend %s", rank, world_size, local_rank, device, backend)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def is_distributed() -> bool:
    """True inside a ``torch.distributed`` process group of more than one process (e.g. under torchrun)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_over_processes(values: Sequence[float], device: torch.device) -> list[float]:
    """Each of ``values`` summed over every process under torch.distributed (float64, on ``device``, which must
    suit the backend: a CUDA device under NCCL); the values unchanged otherwise."""
    if not is_distributed():
        return [float(v) for v in values]
    totals = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return totals.tolist()


def gather_predictions(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate every process's ``(logits (M_r, C), targets (M_r,))`` under torch.distributed (identity
    otherwise), so each rank computes the metrics of the whole validation set."""
    if not is_distributed():
        return logits, targets
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (logits.cpu(), targets.cpu()))
    parts = [(lg, tg) for lg, tg in gathered if tg.numel()]
    if not parts:
        return logits, targets
    return torch.cat([lg for lg, _ in parts]), torch.cat([tg for _, tg in parts])
