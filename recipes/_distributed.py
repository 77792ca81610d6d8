"""Devices and processes: ``--device`` resolution, torchrun set-up, all-reduced sums and per-rank data loaders.

Launch with ``torchrun --nproc_per_node N -m recipes.<name> ...``. :func:`init_distributed` reads torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and uses gloo on CPU and nccl on CUDA; the training set is
split with a :class:`~torch.utils.data.DistributedSampler`, evaluation sets are sharded without padding
(:class:`ShardSampler`), metrics are summed over processes, and only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterator, Mapping, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["DistContext", "select_device", "init_distributed", "close_distributed", "all_reduce_sums", "unwrap",
           "ShardSampler", "make_loader", "set_epoch"]


@dataclasses.dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` processes (1 and rank 0 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def select_device(name: str = "auto", *, local_rank: int = 0) -> torch.device:
    """Resolve a ``--device`` value.

    Args:
        name: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        local_rank: under DDP, ``"auto"``/``"cuda"`` become ``cuda:<local_rank>``.

    Raises:
        ValueError: for an unknown name, or CUDA asked for on a machine without it.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} was requested but CUDA is not available here; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    elif dev.type != "cpu":
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return dev


def init_distributed(device: str = "auto") -> DistContext:
    """Start the process group when launched by ``torchrun`` (``WORLD_SIZE > 1`` in the environment).

    Uses the nccl backend on CUDA and gloo on CPU; the device is ``cuda:<LOCAL_RANK>`` for ``auto``/``cuda``.
    Without torchrun's variables it returns a single-process context on :func:`select_device` ``(device)``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=select_device(device))
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    dev = select_device(device, local_rank=local)
    if not torch.distributed.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev)


def close_distributed(ctx: DistContext) -> None:
    """Destroy the process group that :func:`init_distributed` started."""
    if ctx.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def all_reduce_sums(values: Mapping[str, float], ctx: DistContext) -> dict[str, float]:
    """Sum each value over all processes (identity when not distributed); float64 on the context's device."""
    if not ctx.enabled:
        return dict(values)
    keys = list(values)
    buf = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=ctx.device)
    torch.distributed.all_reduce(buf)
    return dict(zip(keys, buf.tolist()))


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` in order: every sample is seen exactly once over all ranks (no padding,
    unlike :class:`~torch.utils.data.DistributedSampler`), for evaluation."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(dataset: Dataset, *, batch_size: int, train: bool, seed: int, ctx: DistContext,
                collate_fn: Optional[Callable] = None, workers: int = 0) -> DataLoader:
    """A DataLoader for training (shuffled) or evaluation (in order).

    Single process: training shuffles with a dedicated ``torch.Generator`` seeded with ``seed`` (``loader.generator``;
    save its state in checkpoints). Distributed: training uses a :class:`~torch.utils.data.DistributedSampler`
    (reshuffled per epoch by :func:`set_epoch`), evaluation a :class:`ShardSampler`.
    """
    gen = torch.Generator()
    gen.manual_seed(seed)
    kw = dict(batch_size=batch_size, collate_fn=collate_fn, num_workers=workers, generator=gen,
              pin_memory=ctx.device.type == "cuda", persistent_workers=False)
    if ctx.enabled:
        if train:
            sampler: Sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=ctx.world_size,
                                                                    rank=ctx.rank, shuffle=True, seed=seed)
        else:
            sampler = ShardSampler(len(dataset), ctx.rank, ctx.world_size)
        return DataLoader(dataset, sampler=sampler, **kw)
    return DataLoader(dataset, shuffle=train, **kw)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell a DistributedSampler which epoch starts (its shuffle depends on it); no-op otherwise."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
