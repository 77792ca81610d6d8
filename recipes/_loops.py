"""Training and evaluation loops: one epoch of training and one pass of evaluation, each with NFE accounting.

Both loops move batches to the device, count vector-field evaluations per batch (forward and backward) through the
model's NFE counter (:func:`nfe_counter_for`), time themselves and sum their metrics over processes under DDP.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

import odernn

from ._distributed import DistContext, all_reduce_sums, unwrap

__all__ = ["LossFn", "TrainingDiverged", "progress", "nfe_counter_for", "train_epoch", "evaluate", "to_device",
           "batch_size_of", "count_parameters", "PAPER_NFE_COLUMNS", "first_batch", "paper_solver_nfe"]

#: The ``metrics.csv`` columns of the paper-solver probe (empty on epochs without a probe).
PAPER_NFE_COLUMNS = ("paper_forward_nfe", "paper_backward_nfe", "paper_test_nfe", "paper_probe_seconds")

LossFn = Callable[[nn.Module, Any], Union[Tensor, Mapping[str, Tensor]]]


class TrainingDiverged(RuntimeError):
    """A training batch gave a non-finite loss."""


def progress(iterable: Iterable, *, desc: str = "", total: Optional[int] = None, enabled: Optional[bool] = True,
             leave: bool = False) -> Iterable:
    """A tqdm progress bar on stderr.

    Args:
        enabled: True shows it only when stderr is a terminal; False hides it; None: the same as True.
    """
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True,
                disable=enabled is False or not sys.stderr.isatty())


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside a (nested) dict / list / tuple to ``device``; other values are kept."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


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


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars (parameters with ``requires_grad``), counting shared parameters once."""
    return sum(p.numel() for p in unwrap(model).parameters() if p.requires_grad)


def nfe_counter_for(model: nn.Module):
    """The NFE context manager for ``model`` (DDP wrappers included): :func:`odernn.nfe_counter` of the model, which
    counts every :class:`odernn.Dynamics` inside it (the ODE-RNNs, the continuous-depth layers, the Neural CDE's
    field). The context yields an :class:`odernn.NFECount` (``forward``, ``backward``).

    Raises:
        ValueError: if the model contains no odernn dynamics (nothing to count).
    """
    return odernn.nfe_counter(unwrap(model))


def _split_loss(out: Union[Tensor, Mapping[str, Tensor]]) -> tuple[Tensor, dict[str, float]]:
    if isinstance(out, Tensor):
        return out, {}
    if not isinstance(out, Mapping) or "loss" not in out:
        raise TypeError(f"a loss function must return a scalar tensor or a dict with a 'loss' entry, got "
                        f"{type(out).__name__}")
    return out["loss"], {k: float(v) for k, v in out.items() if k != "loss"}


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, loss_fn: LossFn, *,
                device: torch.device, ctx: Optional[DistContext] = None, max_batches: Optional[int] = None,
                desc: str = "train", grad_clip: Optional[float] = None,
                show_progress: Optional[bool] = None) -> dict[str, float]:
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
        show_progress: see :func:`progress` (only rank 0 shows one).

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
    shown = ctx.is_main and show_progress is not False
    for i, batch in enumerate(progress(loader, desc=desc, total=total, enabled=shown)):
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
             desc: str = "eval", show_progress: Optional[bool] = None) -> dict[str, float]:
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
    shown = ctx.is_main and show_progress is not False
    for i, batch in enumerate(progress(loader, desc=desc, total=total, enabled=shown)):
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


def first_batch(dataset: Any, size: int, collate_fn: Optional[Callable] = None) -> Any:
    """The first ``size`` items of ``dataset`` (all, if it has fewer), in order, collated as the loaders do: a fixed
    batch that uses no random state."""
    from torch.utils.data import default_collate

    n = min(int(size), len(dataset))
    if n < 1:
        raise ValueError("cannot take a batch from an empty dataset")
    return (collate_fn or default_collate)([dataset[i] for i in range(n)])


def paper_solver_nfe(model: nn.Module, train_batch: Any, test_batch: Any, train_loss: LossFn, eval_loss: LossFn, *,
                     device: torch.device) -> dict[str, Any]:
    """NFEs of the model as it is now under the paper's solver design (:func:`odernn.paper_solver`: one torchdiffeq
    solve per gap, the initial-step heuristic on every gap, RMS norm over the batch, no seminorm, no warm start).

    ``paper_forward_nfe`` and ``paper_backward_nfe``: one training step's forward and backward NFE on
    ``train_batch`` (the gradients are computed with :func:`torch.autograd.grad` and thrown away: parameters'
    ``.grad``, the optimizer and every random state are left as they were, so training is not changed);
    ``paper_test_nfe``: forward NFE of ``eval_loss`` on ``test_batch`` without gradients;
    ``paper_probe_seconds``: the wall time of both. A solve that fails (:class:`odernn.SolverError`, e.g. a blow-up
    the default design avoids) gives NaN NFEs and ``paper_error`` with the message.
    """
    base = unwrap(model)
    was_training = base.training
    start = time.perf_counter()
    out: dict[str, Any] = {}
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), odernn.paper_solver(base):
            base.train()
            params = [p for p in base.parameters() if p.requires_grad]
            batch = to_device(train_batch, device)
            with nfe_counter_for(base) as nfe:
                loss, _ = _split_loss(train_loss(base, batch))
                torch.autograd.grad(loss, params, allow_unused=True)
            out.update(paper_forward_nfe=nfe.forward, paper_backward_nfe=nfe.backward)
            base.eval()
            with torch.no_grad(), nfe_counter_for(base) as nfe:
                _split_loss(eval_loss(base, to_device(test_batch, device)))
            out["paper_test_nfe"] = nfe.forward
    except odernn.SolverError as e:
        out = {"paper_forward_nfe": out.get("paper_forward_nfe", float("nan")),
               "paper_backward_nfe": out.get("paper_backward_nfe", float("nan")), "paper_test_nfe": float("nan"),
               "paper_error": str(e)}
    finally:
        base.train(was_training)
    out["paper_probe_seconds"] = time.perf_counter() - start
    return out
