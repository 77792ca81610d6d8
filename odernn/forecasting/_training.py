"""Training an ODE-RNN forecaster: windows, batches, the loss and the optimisation loop.

A series is held as model times ``t`` (n,) and channels ``u`` (n, C): the first ``k`` are the standardised targets,
the others standardised covariates (NaN = not observed). A training window is ``L`` context rows followed
by ``H`` horizon rows.

- Without covariates the model reads the context and the ODE is continued, without inputs, to the horizon stamps.
- With covariates the horizon rows are read too, with the targets (and covariates known only in the past) hidden,
  and a *query* channel marking the rows whose targets are asked for; the prediction of a row is the readout of
  the state arriving there (before the cell reads the row), so it uses every earlier observation and every known
  covariate up to that time.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .. import ODERNN, SolverError, nfe_counter

__all__ = ["threads", "encode", "add_seasonal_skip", "with_skip", "masked_mse", "window_loss", "Batch", "make_batch",
           "batch_predictions", "train", "TrainSettings"]


@contextlib.contextmanager
def threads(n: Optional[int]):
    """torch's intra-op threads and the BLAS threads of numpy's least squares (through threadpoolctl, a
    scikit-learn dependency) set to ``n`` inside the block (None: unchanged), restored after."""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        with threadpool_limits(limits=int(n)):
            yield
    finally:
        torch.set_num_threads(old)


def encode(model: ODERNN, x: Tensor, t: Tensor, m: Tensor, t_future: Optional[Tensor] = None, *,
           priors: bool = True) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """Read a batch: one-step-ahead predictions ``priors`` (B, T, out) (entry i predicts row i from rows < i) and,
    when ``t_future`` (B, F) is given, the ODE continued to it without inputs (B, F, out).

    The only place that calls the ODE-RNN's encoding API (:meth:`odernn.ODERNN.encode` / ``extrapolate``)."""
    enc = model.encode(x, t, m)
    fut = model.extrapolate(enc, t_future) if t_future is not None else None
    return (enc.priors if priors else None), fut


def add_seasonal_skip(model: ODERNN, channels: tuple) -> None:
    """Give ``model`` a seasonal skip: a learned per-target multiple (parameter ``seasonal_skip`` (k,), starting at
    0, saved with the weights) of the lag channels ``channels = (start, stop)`` of each row, added to the
    prediction made for that row (:func:`with_skip`)."""
    k = channels[1] - channels[0]
    model.register_parameter("seasonal_skip", torch.nn.Parameter(torch.zeros(k)))
    model.lag_channels = tuple(int(c) for c in channels)


def with_skip(model: ODERNN, pred: Tensor, x: Tensor, m: Tensor) -> Tensor:
    """``pred`` (B, T, k) of the rows of input ``x``, ``m`` (B, T, C) plus the seasonal skip (where the lag is
    known); unchanged for a model without one."""
    skip = getattr(model, "seasonal_skip", None)
    if skip is None:
        return pred
    a, b = model.lag_channels
    return pred + skip * x[..., a:b] * m[..., a:b].to(pred.dtype)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    w = mask.to(pred.dtype)
    return ((pred - target) ** 2 * w).sum() / w.sum().clamp_min(1.0)


@dataclass
class Batch:
    """Tensors of a batch of windows (float32, times relative to each window's first row).

    ``x, t, m``: model input (B, T, C'); ``target, target_mask`` (B, T', k) what is scored; ``t_future`` (B, H)
    the horizon stamps when the ODE is continued without inputs (no covariates), else None; ``context`` the number
    of context rows."""

    x: Tensor
    t: Tensor
    m: Tensor
    target: Tensor
    target_mask: Tensor
    t_future: Optional[Tensor]
    context: int


def make_batch(rows: Sequence[tuple[np.ndarray, np.ndarray]], L: int, k: int, known: Optional[np.ndarray],
               device: torch.device) -> Batch:
    """A batch from windows ``(t (L+H,), u (L+H, C))``.

    Args:
        rows: windows of equal length.
        L: context rows.
        k: target channels (the first k of C).
        known: None without covariates, else (C - k,) bool: covariates known in the future.
    """
    t = np.stack([r[0] for r in rows])
    u = np.stack([r[1] for r in rows])
    t = t - t[:, :1]  # float64 before the cast: long series keep their resolution
    obs = ~np.isnan(u)
    v = np.where(obs, u, 0.0)
    f32 = dict(dtype=torch.float32, device=device)
    if known is None:
        return Batch(torch.as_tensor(v[:, :L], **f32), torch.as_tensor(t[:, :L], **f32),
                     torch.as_tensor(obs[:, :L], device=device), torch.as_tensor(v[:, L:, :k], **f32),
                     torch.as_tensor(obs[:, L:, :k], device=device), torch.as_tensor(t[:, L:], **f32), L)
    inp_obs = obs.copy()
    inp_obs[:, L:, :k] = False  # targets of the horizon are hidden
    inp_obs[:, L:, k:] &= known[None, None, :]  # so are covariates not known in advance
    query = np.zeros(obs.shape[:2] + (1,), dtype=bool)
    query[:, L:, 0] = obs[:, L:, :k].any(axis=2)
    x = np.concatenate([np.where(inp_obs, v, 0.0), query.astype(np.float64)], axis=2)
    m = np.concatenate([inp_obs, query], axis=2)
    return Batch(torch.as_tensor(x, **f32), torch.as_tensor(t, **f32), torch.as_tensor(m, device=device),
                 torch.as_tensor(v[:, :, :k], **f32), torch.as_tensor(obs[:, :, :k], device=device), None, L)


def window_loss(model: ODERNN, b: Batch) -> Tensor:
    """Mean squared one-step error inside the context plus mean squared multi-step error over the horizon, on the
    observed entries (standardised values)."""
    L = b.context
    if b.t_future is not None:
        priors, fc = encode(model, b.x, b.t, b.m, b.t_future)
        one_step = masked_mse(priors[:, 1:], b.x[:, 1:], b.m[:, 1:])
        return one_step + masked_mse(fc, b.target, b.target_mask)
    priors = with_skip(model, encode(model, b.x, b.t, b.m)[0], b.x, b.m)
    one_step = masked_mse(priors[:, 1:L], b.target[:, 1:L], b.target_mask[:, 1:L])
    return one_step + masked_mse(priors[:, L:], b.target[:, L:], b.target_mask[:, L:])


def batch_predictions(model: ODERNN, b: Batch) -> Tensor:
    """What the loss scores on the horizon, (B, H, k), without gradients."""
    with torch.no_grad():
        if b.t_future is not None:
            return encode(model, b.x, b.t, b.m, b.t_future, priors=False)[1]
        return with_skip(model, encode(model, b.x, b.t, b.m)[0], b.x, b.m)[:, b.context:]


@dataclass
class TrainSettings:
    batch_size: int
    max_epochs: int
    per_epoch: int
    lr: float
    lr_schedule: str
    weight_decay: float
    grad_clip: Optional[float]
    n_iter_no_change: int
    tol: float
    verbose: bool


class _Progress:
    """A tqdm bar over epochs when tqdm is installed, else one line per epoch on stderr."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.n = total, desc, 0
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=total, desc=desc, unit="epoch", file=sys.stderr)

    def update(self, **stats: str) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(**stats)
        else:
            info = " ".join(f"{k}={v}" for k, v in stats.items())
            print(f"{self.desc}: epoch {self.n}/{self.total} {info}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(model: ODERNN, batches: Callable[[list], Batch], n_windows: int, val: Optional[Batch],
          s: TrainSettings, gen: torch.Generator, loss_fn: Callable = None) -> tuple[list, float]:
    """Adam with gradient-norm clipping and an optional cosine decay; early stopping on ``val`` (keeping the best
    weights). Returns (one row per epoch, best validation loss or NaN).

    Raises:
        SolverError: a solve fails or the loss is not finite (with the epoch and what to try).
    """
    loss_fn = loss_fn or window_loss
    opt = torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    steps_per_epoch = math.ceil(s.per_epoch / s.batch_size)
    total = max(1, steps_per_epoch * s.max_epochs)
    sched = None
    if s.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(i, total) / total)))
    rows, best, best_state, stall = [], math.inf, None, 0
    bar = _Progress(s.max_epochs, "ODERNNForecaster.fit") if s.verbose else None
    try:
        for epoch in range(s.max_epochs):
            t0 = time.perf_counter()
            model.train()
            order = torch.randperm(n_windows, generator=gen)[: s.per_epoch].tolist()
            losses, nfe_f, nfe_b = [], [], []
            for i in range(0, len(order), s.batch_size):
                b = batches(order[i:i + s.batch_size])
                try:
                    with nfe_counter(model) as nfe:
                        loss = loss_fn(model, b)
                        if not torch.isfinite(loss):
                            raise SolverError("the training loss is not finite")
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                except SolverError as e:
                    raise SolverError(f"training diverged in epoch {epoch + 1}: {e}. Lower lr, keep grad_clip, or "
                                      f"use an adaptive solver (solver=odernn.Solver('dopri5'))") from e
                if s.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
                opt.step()
                if sched is not None:
                    sched.step()
                losses.append(float(loss.detach()))
                nfe_f.append(nfe.forward)
                nfe_b.append(nfe.backward)
            val_loss = math.nan
            if val is not None:
                model.eval()
                val_loss = float(masked_mse(batch_predictions(model, val), val.target[:, val.context:]
                                            if val.t_future is None else val.target,
                                            val.target_mask[:, val.context:] if val.t_future is None
                                            else val.target_mask))
            rows.append(dict(epoch=epoch + 1, steps=len(losses), train_loss=float(np.mean(losses)),
                             val_loss=val_loss, nfe_forward=float(np.mean(nfe_f)), nfe_backward=float(np.mean(nfe_b)),
                             seconds=time.perf_counter() - t0))
            if bar is not None:
                bar.update(loss=f"{rows[-1]['train_loss']:.4g}", **({"val": f"{val_loss:.4g}"} if val else {}))
            if val is not None:
                if val_loss < best - s.tol:
                    best, stall = val_loss, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    stall += 1
                    if stall >= s.n_iter_no_change:
                        break
    finally:
        if bar is not None:
            bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return rows, (best if val is not None else math.nan)
