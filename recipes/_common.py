"""Shared machinery of the recipes: flags, seeding, devices, atomic files, metrics, checkpoints, loops, DDP, plots.

A recipe describes *what* to train (a model factory, a loss, datasets) in a :class:`RecipeSpec`; this module does
the rest, the same way for every recipe::

    parser = base_parser("Walker2D", models=("node", "hbnode"), defaults={"batch_size": 256, "lr": 3e-3})
    args = parser.parse_args()
    run_recipe(spec, args)        # trains each model, writes DIR/<model>/..., and DIR/comparison.* for --model all

Files written per model, in ``DIR/<model>/`` (``DIR`` = ``--out``), by rank 0 only:

- ``config.json``: the full configuration and the parameter count, written before training starts.
- ``metrics.csv``: one row per epoch (see :data:`METRIC_COLUMNS`); rewritten atomically after every epoch.
- ``checkpoint.pt``: model, optimizer, epoch and every random state (python, numpy, torch, CUDA, DataLoader
  generator), written atomically after every epoch; ``--resume`` continues from it and reproduces an uninterrupted
  run with the same seed exactly (same device and thread count; on CUDA as far as its kernels are
  deterministic).
- ``summary.json``: model, number of parameters, final metrics and the configuration, at the end.

Every file is written through a temporary file in the same folder, flushed, fsynced and moved into place with
:func:`os.replace`, so killing a run at any moment leaves either the old or the new file, never a torn one.

The pieces are usable on their own: :func:`base_parser`, :func:`seed_everything`, :func:`select_device`,
:func:`count_parameters`, :func:`atomic_save` / :func:`atomic_write_json` / :func:`atomic_write_csv`,
:class:`MetricsWriter`, :func:`write_summary`, :func:`save_checkpoint` / :func:`load_checkpoint`,
:func:`train_epoch` / :func:`evaluate`, :func:`init_distributed` / :func:`make_loader` / :func:`all_reduce_sums`,
:func:`progress` and :func:`compare_models`.

Multi-process training: launch with ``torchrun --nproc_per_node N -m recipes.<name> ...``. :func:`init_distributed`
reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), uses gloo on CPU and nccl on CUDA, the model
is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, the training set is split with a
:class:`~torch.utils.data.DistributedSampler`, evaluation sets are sharded without padding, metrics are all-reduced,
and only rank 0 writes files.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

import odernn

__all__ = [
    "METRIC_COLUMNS", "CHECKPOINT_NAME", "DistContext", "MetricsWriter", "RecipeSpec",
    "all_reduce_sums", "atomic_save", "atomic_write_bytes", "atomic_write_csv", "atomic_write_json",
    "atomic_write_text", "base_parser", "compare_models", "count_parameters", "evaluate", "expand_models",
    "init_distributed", "load_checkpoint", "make_loader", "nfe_counter_for", "progress", "rng_state",
    "TrainingDiverged", "run_recipe", "save_checkpoint", "seed_everything", "select_device", "set_rng_state", "to_device",
    "train_epoch", "unwrap", "write_summary",
]

#: Columns every recipe writes to ``metrics.csv`` (recipes may add more after these).
METRIC_COLUMNS = ("epoch", "train_loss", "valid_loss", "test_loss", "forward_nfe", "backward_nfe", "valid_nfe",
                  "test_nfe", "seconds", "eval_seconds")
CHECKPOINT_NAME = "checkpoint.pt"


# ==================================================================================================================
# Command line
# ==================================================================================================================

_DEFAULTS = dict(epochs=500, max_batches=None, max_eval_batches=None, batch_size=64, eval_batch_size=None, lr=1e-3,
                 rtol=1e-7, atol=1e-7, adjoint=True, adjoint_clip=None, seed=0, device="auto", out=None,
                 resume=False, threads=None, workers=0)


def add_hybrid_flags(p: argparse.ArgumentParser, *, xi0: float, xi0_help: str) -> argparse.ArgumentParser:
    """Flags shared by the ODE-RNN hybrid recipes: ``--grad-clip``, ``--xi0`` and ``--data-root``."""
    p.add_argument("--grad-clip", type=float, default=1.0,
                   help="clip the parameter-gradient norm after backward (official code: 1.0); 0 disables")
    p.add_argument("--xi0", type=float, default=xi0, help=xi0_help)
    p.add_argument("--data-root", default=None, help="data root (default $ODERNN_DATA or the user cache)")
    return p


def xi_kwargs(name: str, xi0: float) -> dict:
    """GHBNODE's ``chi`` for an initial ``xi = softplus(chi) = xi0`` (other models: nothing)."""
    if name != "ghbnode":
        return {}
    if not xi0 > 0:
        raise ValueError(f"--xi0 must be positive (xi = softplus(chi) > 0), got {xi0!r}")
    return {"chi": xi0 + math.log(-math.expm1(-xi0))}


def base_parser(description: str, *, models: Sequence[str], defaults: Optional[Mapping[str, Any]] = None,
                prog: Optional[str] = None) -> argparse.ArgumentParser:
    """An argument parser with the flags every recipe shares; add recipe-specific flags to the returned parser.

    Flags: ``--model {models..., all}``, ``--epochs``, ``--max-batches`` (training batches per epoch, for smoke
    runs), ``--max-eval-batches`` (per evaluation set; defaults to ``--max-batches``), ``--batch-size``,
    ``--eval-batch-size`` (default: ``--batch-size``), ``--lr``, ``--rtol``, ``--atol``, ``--adjoint/--no-adjoint``,
    ``--adjoint-clip``, ``--seed``, ``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``), ``--out``, ``--resume``,
    ``--threads`` (``torch.set_num_threads``), ``--workers`` (DataLoader worker processes).

    Args:
        description: shown by ``--help``.
        models: the model names this recipe offers; ``all`` is added (it runs them in order and compares them).
        defaults: overrides of the shared defaults, keyed by destination (``batch_size``, ``lr``, ``epochs``,
            ``out``, ``model``, ...). ``model`` defaults to ``"all"``.
        prog: program name for the usage line.

    Raises:
        ValueError: for an empty ``models`` or a default key that is not a shared flag.
    """
    models = tuple(models)
    if not models or "all" in models:
        raise ValueError(f"models must be a non-empty sequence of names without 'all', got {models!r}")
    d = dict(_DEFAULTS, model="all")
    for key, value in (defaults or {}).items():
        if key not in d:
            raise ValueError(f"unknown default {key!r}; shared flags are {sorted(d)}")
        d[key] = value
    p = argparse.ArgumentParser(description=description, prog=prog,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=(*models, "all"), default=d["model"],
                   help="which model to train; 'all' trains each in turn and writes a comparison")
    p.add_argument("--epochs", type=_positive_int, default=d["epochs"], help="number of epochs")
    p.add_argument("--max-batches", type=_positive_int, default=d["max_batches"],
                   help="at most this many training batches per epoch (smoke runs); default: all")
    p.add_argument("--max-eval-batches", type=_positive_int, default=d["max_eval_batches"],
                   help="at most this many batches per evaluation set; default: --max-batches")
    p.add_argument("--batch-size", type=_positive_int, default=d["batch_size"], help="training batch size")
    p.add_argument("--eval-batch-size", type=_positive_int, default=d["eval_batch_size"],
                   help="evaluation batch size; default: --batch-size")
    p.add_argument("--lr", type=_positive_float, default=d["lr"], help="Adam learning rate")
    p.add_argument("--rtol", type=_positive_float, default=d["rtol"], help="relative tolerance of dopri5")
    p.add_argument("--atol", type=_positive_float, default=d["atol"], help="absolute tolerance of dopri5")
    p.add_argument("--adjoint", action=argparse.BooleanOptionalAction, default=d["adjoint"],
                   help="differentiate with the adjoint method (else backpropagate through the solver)")
    p.add_argument("--adjoint-clip", type=_positive_float, default=d["adjoint_clip"],
                   help="clip the per-sample l2 norm of the adjoint state at every observation (paper Sec. 4)")
    p.add_argument("--seed", type=int, default=d["seed"], help="random seed (model init, shuffling)")
    p.add_argument("--device", default=d["device"], help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", default=d["out"], help="output folder DIR; each model writes DIR/<model>/")
    p.add_argument("--resume", action="store_true", default=d["resume"],
                   help="continue from DIR/<model>/checkpoint.pt where it exists")
    p.add_argument("--threads", type=_positive_int, default=d["threads"], help="torch.set_num_threads")
    p.add_argument("--workers", type=int, default=d["workers"], help="DataLoader worker processes")
    return p


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _positive_float(s: str) -> float:
    v = float(s)
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {s!r}")
    return v


def expand_models(choice: str, models: Sequence[str]) -> list[str]:
    """``"all"`` -> every model, in order; a single name -> ``[name]``.

    Raises:
        ValueError: for a name that is not in ``models``.
    """
    if choice == "all":
        return list(models)
    if choice not in models:
        raise ValueError(f"unknown model {choice!r}; expected one of {list(models)} or 'all'")
    return [choice]


# ==================================================================================================================
# Reproducibility and devices
# ==================================================================================================================

def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's (CPU and all CUDA devices) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global random state: python, numpy, torch CPU and (if CUDA is initialised) all CUDA devices."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


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


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside a (nested) dict / list / tuple to ``device``; other values are kept."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars (parameters with ``requires_grad``), counting shared parameters once."""
    return sum(p.numel() for p in unwrap(model).parameters() if p.requires_grad)


def batch_size_of(batch: Any) -> int:
    """Leading size of the first tensor found in a batch (tensor, dict, list or tuple)."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0])
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for v in values:
        try:
            return batch_size_of(v)
        except TypeError:
            continue
    raise TypeError(f"cannot find a tensor in a batch of type {type(batch).__name__}")


# ==================================================================================================================
# Atomic files
# ==================================================================================================================

def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone would leave 0600


def _atomic(path: Union[str, os.PathLike], write: Callable[[io.BufferedWriter], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with contextlib.suppress(OSError, AttributeError):
            os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_save(obj: Any, path: Union[str, os.PathLike]) -> Path:
    """``torch.save(obj, path)`` through a temporary file in the same folder, fsync and :func:`os.replace`.

    A crash or kill at any moment leaves ``path`` either as it was or complete; never torn. Returns the path.
    """
    return _atomic(path, lambda f: torch.save(obj, f))


def atomic_write_bytes(data: bytes, path: Union[str, os.PathLike]) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_save`)."""
    return _atomic(path, lambda f: f.write(data))


def atomic_write_text(text: str, path: Union[str, os.PathLike]) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(text.encode("utf-8"), path)


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, Tensor):
        return v.tolist()
    if isinstance(v, (Path, torch.device, torch.dtype)):
        return str(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return repr(v)


def atomic_write_json(obj: Any, path: Union[str, os.PathLike]) -> Path:
    """Write ``obj`` as indented JSON atomically (paths, devices, numpy scalars and tensors are converted)."""
    return atomic_write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n", path)


def _fmt_cell(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)  # exact round trip
    return "" if v is None else str(v)


def atomic_write_csv(rows: Sequence[Mapping[str, Any]], path: Union[str, os.PathLike],
                     fieldnames: Optional[Sequence[str]] = None) -> Path:
    """Write ``rows`` (dicts) as CSV atomically; floats are written with ``repr`` so they read back exactly.

    Args:
        rows: the rows.
        path: target file.
        fieldnames: column order (default: keys in order of first appearance).
    """
    if fieldnames is None:
        fieldnames = []
        for r in rows:
            fieldnames += [k for k in r if k not in fieldnames]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fieldnames), extrasaction="raise", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt_cell(r.get(k)) for k in fieldnames})
    return atomic_write_text(buf.getvalue(), path)


def read_csv(path: Union[str, os.PathLike]) -> list[dict[str, Any]]:
    """Read a CSV written by :func:`atomic_write_csv`; numbers come back as int/float, empty cells as None."""
    with open(path, newline="") as f:
        return [{k: _parse_cell(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _parse_cell(s: Optional[str]) -> Any:
    if s is None or s == "":
        return None
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return s


# ==================================================================================================================
# Metrics, summaries, checkpoints
# ==================================================================================================================

class MetricsWriter:
    """Per-epoch rows of ``<folder>/metrics.csv``; the whole file is rewritten atomically on every append.

    Args:
        folder: the model's output folder.
        columns: leading columns, in order (default :data:`METRIC_COLUMNS`); other keys follow in order of first
            appearance.
        resume_epoch: ``None`` starts a fresh file (existing rows are discarded); an int keeps the existing rows with
            ``epoch <= resume_epoch`` (rows written after the checkpoint that a resumed run starts from are dropped).
    """

    def __init__(self, folder: Union[str, os.PathLike], *, columns: Sequence[str] = METRIC_COLUMNS,
                 resume_epoch: Optional[int] = None) -> None:
        self.path = Path(folder) / "metrics.csv"
        self.columns = list(columns)
        self.rows: list[dict[str, Any]] = []
        if resume_epoch is not None and self.path.exists():
            self.rows = [r for r in read_csv(self.path) if r.get("epoch") is not None and r["epoch"] <= resume_epoch]

    def append(self, row: Mapping[str, Any]) -> None:
        """Add a row (must hold ``epoch``) and rewrite the file."""
        if "epoch" not in row:
            raise ValueError(f"a metrics row needs an 'epoch', got keys {sorted(row)}")
        self.rows.append(dict(row))
        self.flush()

    def flush(self) -> None:
        cols = list(self.columns)
        for r in self.rows:
            cols += [k for k in r if k not in cols]
        atomic_write_csv(self.rows, self.path, cols)

    @property
    def last(self) -> Optional[dict[str, Any]]:
        return self.rows[-1] if self.rows else None


def write_summary(folder: Union[str, os.PathLike], *, model: str, num_params: int,
                  final: Optional[Mapping[str, Any]], config: Mapping[str, Any],
                  extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``<folder>/summary.json``: model, num_params, the final metrics row (flattened) and the configuration."""
    data: dict[str, Any] = {"model": model, "num_params": int(num_params)}
    data.update(dict(final or {}))
    if extra:
        data.update(extra)
    data["config"] = dict(config)
    return atomic_write_json(data, Path(folder) / "summary.json")


def save_checkpoint(path: Union[str, os.PathLike], *, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                    generator: Optional[torch.Generator] = None, extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Atomically save model, optimizer, epoch, every global random state and the DataLoader generator's state.

    Args:
        path: checkpoint file.
        model: the model (a DDP wrapper is unwrapped).
        optimizer: its optimizer.
        epoch: the last *completed* epoch.
        generator: the training DataLoader's generator (its state decides the next shuffles).
        extra: anything else to store (configuration, scheduler state, ...).
    """
    ckpt = {"format": 1, "epoch": int(epoch), "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "rng": rng_state(), "generator": None if generator is None else generator.get_state(),
            "extra": dict(extra or {})}
    return atomic_save(ckpt, path)


def load_checkpoint(path: Union[str, os.PathLike], *, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                    generator: Optional[torch.Generator] = None, restore_rng: bool = True) -> dict:
    """Load what :func:`save_checkpoint` wrote into ``model`` / ``optimizer`` / ``generator`` and restore the random
    states. Returns the checkpoint dict (``epoch``, ``extra``, ...).

    Raises:
        FileNotFoundError: if there is no checkpoint; ValueError: if the file is not an odernn recipe checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != 1:
        raise ValueError(f"{path} is not a recipe checkpoint (expected a dict with format=1)")
    unwrap(model).load_state_dict(ckpt["model"])
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if generator is not None and ckpt.get("generator") is not None:
        generator.set_state(ckpt["generator"])
    if restore_rng:
        set_rng_state(ckpt["rng"])
    return ckpt


# ==================================================================================================================
# Distributed
# ==================================================================================================================

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


# ==================================================================================================================
# Loops
# ==================================================================================================================

def progress(iterable: Iterable, *, desc: str = "", total: Optional[int] = None, enabled: bool = True,
             leave: bool = False) -> Iterable:
    """A tqdm progress bar on stderr, silent when stderr is not a terminal or ``enabled`` is False."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))


def nfe_counter_for(model: nn.Module):
    """The NFE context manager for ``model``: ``model.nfe_counter()`` if the (unwrapped) model defines one, else
    :func:`odernn.nfe_counter` if it contains odernn dynamics, else the ``nfe_counter()`` of the first submodule that
    defines one (models not built on odernn dynamics, e.g. the Neural CDE baseline inside a wrapper).
    The context yields an object with ``forward`` and ``backward`` counts."""
    inner = unwrap(model)
    custom = getattr(inner, "nfe_counter", None)
    if callable(custom):
        return custom()
    if any(isinstance(m, odernn.Dynamics) for m in inner.modules()):
        return odernn.nfe_counter(model)
    for m in inner.modules():  # e.g. a wrapper around a model that counts its own evaluations
        custom = getattr(m, "nfe_counter", None)
        if callable(custom):
            return custom()
    raise ValueError(f"{type(inner).__name__} contains no odernn dynamics and no module with an nfe_counter()")


def _split_loss(out: Union[Tensor, Mapping[str, Tensor]]) -> tuple[Tensor, dict[str, float]]:
    if isinstance(out, Tensor):
        return out, {}
    if not isinstance(out, Mapping) or "loss" not in out:
        raise TypeError(f"a loss function must return a scalar tensor or a dict with a 'loss' entry, got "
                        f"{type(out).__name__}")
    return out["loss"], {k: float(v) for k, v in out.items() if k != "loss"}


LossFn = Callable[[nn.Module, Any], Union[Tensor, Mapping[str, Tensor]]]


class TrainingDiverged(RuntimeError):
    """A training batch gave a non-finite loss."""


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, loss_fn: LossFn, *,
                device: torch.device, ctx: Optional[DistContext] = None, max_batches: Optional[int] = None,
                desc: str = "train", grad_clip: Optional[float] = None) -> dict[str, float]:
    """One pass over ``loader`` (at most ``max_batches`` batches), measuring NFE per batch and time.

    Args:
        model: the model (possibly DDP-wrapped); ``loss_fn(model, batch)`` must call it.
        loader: training batches (moved to ``device`` here).
        optimizer: stepped once per batch.
        loss_fn: returns the scalar batch-mean loss to minimise, or a dict with ``loss`` and other batch means to log
            (logged as ``train_<name>``).
        device: where batches go.
        ctx: distributed context (metrics are all-reduced over processes).
        max_batches: stop after this many batches.
        desc: progress-bar label.
        grad_clip: optional clip of the parameter-gradient norm (not the paper's adjoint clip).

    Returns:
        ``loss`` (mean over samples), ``forward_nfe`` and ``backward_nfe`` (means per batch), ``batches``,
        ``seconds`` (wall time of the loop) and ``train_<name>`` for extra outputs of ``loss_fn``.

    Raises:
        TrainingDiverged: (a RuntimeError) when a batch gives a non-finite loss (nothing is stepped with it).
    """
    ctx = ctx or DistContext(device=device)
    model.train()
    sums: dict[str, float] = {"loss": 0.0, "n": 0.0, "fwd": 0.0, "bwd": 0.0, "batches": 0.0}
    total = len(loader) if max_batches is None else min(max_batches, len(loader))
    start = time.perf_counter()
    for i, batch in enumerate(progress(loader, desc=desc, total=total, enabled=ctx.is_main)):
        if max_batches is not None and i >= max_batches:
            break
        batch = to_device(batch, device)
        n = batch_size_of(batch)
        optimizer.zero_grad(set_to_none=True)
        with nfe_counter_for(model) as nfe:
            loss, extra = _split_loss(loss_fn(model, batch))
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"non-finite training loss {loss.item()} at batch {i}; lower --lr or tighten "
                                   f"--rtol/--atol")
            loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        sums["loss"] += float(loss.detach()) * n
        sums["n"] += n
        sums["fwd"] += nfe.forward
        sums["bwd"] += nfe.backward
        sums["batches"] += 1
        for k, v in extra.items():
            sums["train_" + k] = sums.get("train_" + k, 0.0) + v * n
    seconds = time.perf_counter() - start
    sums = all_reduce_sums(sums, ctx)
    if sums["n"] == 0:
        raise ValueError("the training loader gave no batches")
    out = {"loss": sums["loss"] / sums["n"], "forward_nfe": sums["fwd"] / sums["batches"],
           "backward_nfe": sums["bwd"] / sums["batches"], "batches": int(sums["batches"]), "seconds": seconds}
    out.update({k: v / sums["n"] for k, v in sums.items() if k.startswith("train_")})
    return out


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, metric_fn: LossFn, *, device: torch.device,
             ctx: Optional[DistContext] = None, max_batches: Optional[int] = None,
             desc: str = "eval") -> dict[str, float]:
    """Mean of ``metric_fn(model, batch)`` over samples (batch means weighted by batch size), without gradients.

    Returns:
        ``loss`` and any other entries ``metric_fn`` returned (sample means), ``nfe`` (forward NFE per batch),
        ``batches`` and ``seconds``. Under DDP each process evaluates its shard and the sums are all-reduced.
    """
    ctx = ctx or DistContext(device=device)
    model = unwrap(model)
    model.eval()
    sums: dict[str, float] = {"n": 0.0, "nfe": 0.0, "batches": 0.0}
    total = len(loader) if max_batches is None else min(max_batches, len(loader))
    start = time.perf_counter()
    for i, batch in enumerate(progress(loader, desc=desc, total=total, enabled=ctx.is_main)):
        if max_batches is not None and i >= max_batches:
            break
        batch = to_device(batch, device)
        n = batch_size_of(batch)
        with nfe_counter_for(model) as nfe:
            loss, extra = _split_loss(metric_fn(model, batch))
        for k, v in {"loss": float(loss), **extra}.items():
            sums["m_" + k] = sums.get("m_" + k, 0.0) + v * n
        sums["n"] += n
        sums["nfe"] += nfe.forward
        sums["batches"] += 1
    seconds = time.perf_counter() - start
    keys = sorted(sums)  # the same order on every rank
    sums = all_reduce_sums({k: sums.get(k, 0.0) for k in keys}, ctx)
    if sums["n"] == 0:
        return {"loss": float("nan"), "nfe": float("nan"), "batches": 0, "seconds": seconds}
    out = {k[2:]: v / sums["n"] for k, v in sums.items() if k.startswith("m_")}
    out.update(nfe=sums["nfe"] / sums["batches"], batches=int(sums["batches"]), seconds=seconds)
    return out


# ==================================================================================================================
# The driver
# ==================================================================================================================

@dataclasses.dataclass
class RecipeSpec:
    """What a recipe trains; :func:`run_recipe` does the rest.

    Attributes:
        name: recipe name (default output folder ``runs/<name>``).
        models: model names offered (``--model all`` runs them in this order).
        build_model: ``build_model(model_name, args) -> nn.Module`` (built after seeding; moved to the device here).
        datasets: ``datasets(args) -> {"train": ..., "valid": ..., "test": ...}`` (called once per run).
        train_loss: ``train_loss(model, batch) -> Tensor | {"loss": Tensor, ...}``, the batch-mean objective.
        eval_loss: ``eval_loss(model, batch) -> Tensor | {"loss": Tensor, ...}``, the reported metric (batch mean).
        collate_fn: DataLoader collate function (default: torch's).
        describe: ``describe(model_name, args) -> dict`` architecture facts stored in config/summary (sizes, ...).
        all_models: what ``--model all`` trains (default: ``models``); e.g. the paper's models without a baseline
            that is offered separately. The comparison also includes any model of ``models`` that already has
            metrics in the output folder.

    The optional flag ``--grad-clip`` (a recipe adds it to its parser) clips the parameter-gradient norm after each
    backward pass (``0`` or absent: no clip).
    """

    name: str
    models: Sequence[str]
    build_model: Callable[[str, argparse.Namespace], nn.Module]
    datasets: Callable[[argparse.Namespace], Mapping[str, Dataset]]
    train_loss: LossFn
    eval_loss: LossFn
    collate_fn: Optional[Callable] = None
    describe: Optional[Callable[[str, argparse.Namespace], Mapping[str, Any]]] = None
    all_models: Optional[Sequence[str]] = None


def _log(ctx: DistContext, msg: str) -> None:
    if ctx.is_main:
        print(msg, flush=True)


def run_recipe(spec: RecipeSpec, args: argparse.Namespace) -> dict[str, dict]:
    """Train every model that ``args.model`` names, write its files, and with ``--model all`` compare them.

    Returns:
        ``{model_name: summary dict}`` (on every rank; only rank 0 writes files).
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = init_distributed(args.device)
    try:
        out = Path(args.out or Path("runs") / spec.name)
        every = tuple(spec.all_models or spec.models)
        names = every if args.model == "all" else expand_models(args.model, spec.models)
        data = spec.datasets(args)
        missing = {"train", "valid", "test"} - set(data)
        if missing:
            raise ValueError(f"datasets() must return train, valid and test; missing {sorted(missing)}")
        summaries = {}
        for name in names:
            try:
                summaries[name] = fit_model(spec, name, args, data, out, ctx)
            except (odernn.SolverError, TrainingDiverged) as e:
                if ctx.enabled or args.model != "all":
                    raise
                # With --model all, one model blowing up (the paper's SONODE on Walker2D) is a result, not a crash.
                _log(ctx, f"[{spec.name}/{name}] FAILED: {e}")
                summaries[name] = {"model": name, "failed": True, "error": str(e)}
                atomic_write_json({**summaries[name], "config": vars(args)}, out / name / "summary.json")
        if args.model == "all" and ctx.is_main:
            compare_models(out, list(dict.fromkeys([*names, *spec.models])), title=spec.name)
            _log(ctx, f"comparison written to {out / 'comparison.md'} and {out / 'comparison.png'}")
        return summaries
    finally:
        close_distributed(ctx)


def fit_model(spec: RecipeSpec, name: str, args: argparse.Namespace, data: Mapping[str, Dataset], out: Path,
              ctx: DistContext) -> dict:
    """Train one model for ``args.epochs`` epochs (resuming if asked), writing its folder ``out/name``."""
    folder = out / name
    device = ctx.device
    seed_everything(args.seed)
    model = spec.build_model(name, args).to(device)
    num_params = count_parameters(model)
    config = {k: v for k, v in vars(args).items()}
    config.update(model=name, recipe=spec.name, world_size=ctx.world_size, device=str(device),
                  torch=torch.__version__, num_params=num_params)
    if spec.describe is not None:
        config["architecture"] = dict(spec.describe(name, args))
    _log(ctx, f"[{spec.name}/{name}] {num_params:,} trainable parameters")
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    eval_bs = args.eval_batch_size or args.batch_size
    train_loader = make_loader(data["train"], batch_size=args.batch_size, train=True, seed=args.seed, ctx=ctx,
                               collate_fn=spec.collate_fn, workers=args.workers)
    eval_loaders = {s: make_loader(data[s], batch_size=eval_bs, train=False, seed=args.seed, ctx=ctx,
                                   collate_fn=spec.collate_fn, workers=args.workers) for s in ("valid", "test")}
    ckpt_path = folder / CHECKPOINT_NAME
    start = 1
    if args.resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, model=model, optimizer=optimizer, generator=train_loader.generator)
        if ckpt["extra"].get("model") not in (None, name):
            raise ValueError(f"{ckpt_path} holds model {ckpt['extra'].get('model')!r}, not {name!r}")
        start = ckpt["epoch"] + 1
        _log(ctx, f"[{spec.name}/{name}] resuming after epoch {ckpt['epoch']} from {ckpt_path}")
        metrics = MetricsWriter(folder, resume_epoch=ckpt["epoch"]) if ctx.is_main else None
    else:
        if args.resume:
            _log(ctx, f"[{spec.name}/{name}] --resume: no checkpoint at {ckpt_path}, starting from scratch")
        metrics = MetricsWriter(folder) if ctx.is_main else None
    if ctx.is_main:
        atomic_write_json(config, folder / "config.json")
    train_model: nn.Module = model
    if ctx.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    max_eval = args.max_eval_batches or args.max_batches
    grad_clip = getattr(args, "grad_clip", None) or None
    for epoch in range(start, args.epochs + 1):
        set_epoch(train_loader, epoch)
        tr = train_epoch(train_model, train_loader, optimizer, spec.train_loss, device=device, ctx=ctx,
                         max_batches=args.max_batches, desc=f"{name} {epoch}/{args.epochs} train",
                         grad_clip=grad_clip)
        t0 = time.perf_counter()
        va = evaluate(model, eval_loaders["valid"], spec.eval_loss, device=device, ctx=ctx, max_batches=max_eval,
                      desc=f"{name} {epoch} valid")
        te = evaluate(model, eval_loaders["test"], spec.eval_loss, device=device, ctx=ctx, max_batches=max_eval,
                      desc=f"{name} {epoch} test")
        row = {"epoch": epoch, "train_loss": tr["loss"], "valid_loss": va["loss"], "test_loss": te["loss"],
               "forward_nfe": tr["forward_nfe"], "backward_nfe": tr["backward_nfe"], "valid_nfe": va["nfe"],
               "test_nfe": te["nfe"], "seconds": tr["seconds"], "eval_seconds": time.perf_counter() - t0}
        row.update({k: v for k, v in tr.items() if k.startswith("train_")})
        row.update({f"valid_{k}": v for k, v in va.items() if k not in ("loss", "nfe", "batches", "seconds")})
        row.update({f"test_{k}": v for k, v in te.items() if k not in ("loss", "nfe", "batches", "seconds")})
        _log(ctx, f"[{spec.name}/{name}] epoch {epoch}/{args.epochs}  train {row['train_loss']:.5g}  "
                  f"valid {row['valid_loss']:.5g}  test {row['test_loss']:.5g}  NFE fwd {row['forward_nfe']:.1f} "
                  f"bwd {row['backward_nfe']:.1f} test {row['test_nfe']:.1f}  {row['seconds']:.1f}s")
        if ctx.is_main:
            metrics.append(row)  # first the row, then the checkpoint: a resume drops rows after the checkpoint
            save_checkpoint(ckpt_path, model=model, optimizer=optimizer, epoch=epoch,
                            generator=train_loader.generator, extra={"model": name, "config": config})
        ctx.barrier()
    final = None
    if ctx.is_main:
        final = metrics.last
        write_summary(folder, model=name, num_params=num_params, final=final, config=config)
    return {"model": name, "num_params": num_params, **(final or {})}


# ==================================================================================================================
# Comparison across models
# ==================================================================================================================

def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def compare_models(out_dir: Union[str, os.PathLike], models: Sequence[str], *, title: str = "") -> tuple[Path, Path]:
    """Write ``out_dir/comparison.md`` (one row per model) and ``out_dir/comparison.png`` (Fig. 7/8-like panels:
    train loss, valid loss, test loss, forward NFE, backward NFE and seconds per epoch, one line per model).

    Reads ``out_dir/<model>/metrics.csv`` and ``summary.json`` (``config.json`` if there is no summary yet); models
    without metrics are skipped. Returns the two paths.
    """
    out_dir = Path(out_dir)
    runs: dict[str, tuple[list[dict], dict]] = {}
    for m in models:
        mpath = out_dir / m / "metrics.csv"
        if not mpath.exists():
            continue
        info_path = out_dir / m / "summary.json"
        if not info_path.exists():
            info_path = out_dir / m / "config.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        runs[m] = (read_csv(mpath), info)
    lines = [f"# {title} comparison".strip() if title else "# Comparison", "",
             "Final epoch values; NFEs are means per training batch (forward, backward) and per test batch; "
             "seconds are training seconds per epoch (mean).", "",
             "| model | params | epochs | train loss | valid loss | test loss | test loss @ best valid | "
             "forward NFE | backward NFE | test NFE | s/epoch |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m, (rows, info) in runs.items():
        if not rows:
            continue
        last = rows[-1]
        valid = [r for r in rows if isinstance(r.get("valid_loss"), float) and not math.isnan(r["valid_loss"])]
        best = min(valid, key=lambda r: r["valid_loss"])["test_loss"] if valid else None
        mean = lambda key: float(np.mean([r[key] for r in rows if r.get(key) is not None]))  # noqa: E731
        lines.append(f"| {m} | {_fmt(info.get('num_params'))} | {last['epoch']} | {_fmt(last['train_loss'])} | "
                     f"{_fmt(last['valid_loss'])} | {_fmt(last['test_loss'])} | {_fmt(best)} | "
                     f"{_fmt(mean('forward_nfe'), 4)} | {_fmt(mean('backward_nfe'), 4)} | "
                     f"{_fmt(mean('test_nfe'), 4)} | {_fmt(mean('seconds'), 3)} |")
    md = atomic_write_text("\n".join(lines) + "\n", out_dir / "comparison.md")

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    panels = [("train_loss", "train loss", True), ("valid_loss", "valid loss", True), ("test_loss", "test loss", True),
              ("forward_nfe", "forward NFE / batch", False), ("backward_nfe", "backward NFE / batch", False),
              ("seconds", "seconds / epoch", False)]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    for ax, (key, label, logy) in zip(axes.ravel(), panels):
        for m, (rows, _) in runs.items():
            pts = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), label=m, marker="." if len(pts) < 30 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if logy and any(ax.get_lines()):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0, 0].legend()
    if title:
        fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    png = atomic_write_bytes(buf.getvalue(), out_dir / "comparison.png")
    return md, png
