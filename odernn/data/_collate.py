"""Batching windows of different lengths: :func:`collate_irregular` pads every group of an
:class:`~odernn.data.Item` (inputs, next-step targets, future targets, outputs) with masks and lengths, keeping
the padded times strictly increasing as ``odernn.ODERNN`` requires."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from ._schema import FUTURE_KEYS, INPUT_KEYS, NEXT_KEYS, OUTPUT_KEYS
from ._validate import square_limit

__all__ = ["collate_irregular"]

def _finite_times(ts: Sequence[torch.Tensor], tk: str) -> None:
    for j, t in enumerate(ts):
        if t.is_complex():
            raise TypeError(f"batch[{j}]: times {tk!r} are complex ({t.dtype}); times must be real numbers")
        bad = ~torch.isfinite(t.double())
        if bool(bad.any()):
            pos = bad.nonzero().flatten()[:5].tolist()
            raise ValueError(
                f"batch[{j}]: times {tk!r} contain {int(bad.sum())} NaN/inf value(s), first at position(s) {pos}; "
                "every stamp needs a finite time: drop those stamps from the item (mark a missing value with NaN "
                "in the values or mask=False, never in the times)"
            )


def _values_and_masks(items: Sequence[Mapping[str, Any]], xk: str, mk: str) -> tuple[list, list]:
    """Values ``(T_b, F)`` and masks (given mask AND not NaN) per item; NaN values are masked, inf raises."""
    xs = [torch.as_tensor(it[xk]) for it in items]
    n_feat = {x.shape[-1] for x in xs if x.ndim == 2}
    if len(n_feat) > 1:
        raise ValueError(f"batch items have different numbers of features {sorted(n_feat)} in {xk!r}")
    masks = []
    for j, it in enumerate(items):
        x = xs[j]
        if x.ndim != 2:
            raise ValueError(f"batch[{j}]: {xk!r} must be (T, F), got shape {tuple(x.shape)}")
        m = it.get(mk)
        m = torch.ones(x.shape, dtype=torch.bool) if m is None else torch.as_tensor(m, dtype=torch.bool)
        if m.ndim == 1:
            m = m[:, None].expand_as(x)
        if m.shape != x.shape:
            raise ValueError(f"batch[{j}]: {mk!r} has shape {tuple(m.shape)}, expected {tuple(x.shape)}")
        if x.is_complex():
            raise TypeError(f"batch[{j}]: {xk!r} is complex ({x.dtype}); odernn models real values: pass the real "
                            "and imaginary parts as separate features (torch.view_as_real)")
        if x.is_floating_point():
            m = m & ~torch.isnan(x)
            inf = torch.isinf(x) & m
            if bool(inf.any()):
                r, c = inf.nonzero()[0].tolist()
                raise ValueError(f"batch[{j}]: {xk!r} is inf at step {r}, feature {c}; use NaN (or mask False) "
                                 "for a value that was not observed")
            limit = square_limit(x.dtype)
            big = (x.abs() > limit) & m
            if bool(big.any()):
                r, c = big.nonzero()[0].tolist()
                raise ValueError(f"batch[{j}]: {xk!r} is {x[r, c].item()!r} at step {r}, feature {c}: squares "
                                 f"(losses, variances) of values beyond {limit:.3g} overflow in {x.dtype}; rescale "
                                 "the values")
        masks.append(m)
    return xs, masks


def _pad_values(xs: list, masks: list, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    f = xs[0].shape[1]
    x_dtype = xs[0].dtype if xs[0].is_floating_point() else torch.get_default_dtype()
    x_out = torch.zeros(len(xs), width, f, dtype=x_dtype)
    m_out = torch.zeros(len(xs), width, f, dtype=torch.bool)
    for j, (x, m) in enumerate(zip(xs, masks)):
        n = x.shape[0]
        x_out[j, :n] = torch.where(m, x.to(x_dtype), torch.zeros((), dtype=x_dtype))
        m_out[j, :n] = m
    return x_out, m_out


def _pad_times(ts: list, tk: str, width: int, pad_step: float, after: Sequence[float] | None) -> torch.Tensor:
    """``(B, width)`` times; after a row's last real time (or ``after[b]``), steps of ``pad_step``."""
    t_dtype = ts[0].dtype if ts[0].is_floating_point() else torch.get_default_dtype()
    t_out = torch.zeros(len(ts), width, dtype=torch.float64)
    for j, t in enumerate(ts):
        n = t.shape[0]
        t_out[j, :n] = t.double()
        if n < width:
            last = float(t[-1]) if n else (after[j] if after is not None else -pad_step)
            t_out[j, n:] = last + pad_step * torch.arange(1, width - n + 1, dtype=torch.float64)
    t_cast = t_out.to(t_dtype)
    if width > 1 and not bool((t_cast[:, 1:] > t_cast[:, :-1]).all()):
        j = int((t_cast[:, 1:] <= t_cast[:, :-1]).any(dim=1).nonzero()[0])
        raise ValueError(
            f"batch[{j}]: times {tk!r} are not strictly increasing after padding in {t_dtype} (real times must be "
            "strictly increasing; large times may also be too coarse in float32 for padding steps of "
            f"{pad_step}): use a larger pad_step, an origin closer to the data, or float64 times"
        )
    return t_cast


def _pad_group(items: Sequence[Mapping[str, Any]], keys: Sequence[str], pad_step: float,
               after: Sequence[float] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    xk, tk, mk = keys
    xs, masks = _values_and_masks(items, xk, mk)
    ts = [torch.as_tensor(it[tk]) for it in items]
    for j, (x, t) in enumerate(zip(xs, ts)):
        if t.ndim != 1 or x.shape[0] != t.shape[0]:
            raise ValueError(
                f"batch[{j}]: {xk!r} must be (T, F) and {tk!r} (T,) with the same T, got {tuple(x.shape)} and "
                f"{tuple(t.shape)}"
            )
    _finite_times(ts, tk)
    width = max(x.shape[0] for x in xs)
    x_out, m_out = _pad_values(xs, masks, width)
    lengths = torch.tensor([x.shape[0] for x in xs], dtype=torch.int64)
    return x_out, _pad_times(ts, tk, width, pad_step, after), m_out, lengths


def collate_irregular(batch: Sequence[Mapping[str, Any]], *, pad_step: float = 1.0) -> dict[str, Any]:
    """Pad a list of items (:class:`~odernn.data.Item`) of different lengths into one batch.

    Args:
        batch: Items with ``"x"`` ``(T_b, F)``, ``"t"`` ``(T_b,)`` and optionally ``"mask"`` (``(T_b, F)`` or
            ``(T_b,)``, default all True); optionally the target groups ``"x_next"``/``"t_next"``/``"mask_next"``
            ``(T_b, ...)``, ``"x_future"``/``"t_future"``/``"mask_future"`` ``(H_b, ...)`` and
            ``"y"``/``"mask_y"`` ``(T_b, G)``. Other keys are batched with PyTorch's ``default_collate`` (or kept
            as a list when that fails).
        pad_step: Spacing of the padded times, in the series' time unit.

    Returns:
        A dict with

        - ``"x"`` ``(B, T, F)``: values, 0 at unobserved and padded steps.
        - ``"t"`` ``(B, T)``: times; after a sample's last real time ``t_last`` the padded steps get
          ``t_last + pad_step, t_last + 2 * pad_step, ...``, so every row stays strictly increasing.
        - ``"mask"`` ``(B, T, F)`` bool: True exactly at observed values (False at NaN values, whatever the
          item's mask says, and at padding).
        - ``"lengths"`` ``(B,)`` int64: real steps per sample.
        - with next-step targets: ``"x_next"`` ``(B, T, F)``, ``"t_next"`` ``(B, T)``, ``"mask_next"``.
        - with future targets: ``"x_future"`` ``(B, H, F)``, ``"t_future"`` ``(B, H)`` (padded the same way,
          continuing after the last input time when a sample has none), ``"mask_future"`` and
          ``"lengths_future"`` ``(B,)``.
        - with outputs: ``"y"`` ``(B, T, G)`` and ``"mask_y"`` ``(B, T, G)``.
        - the other keys, batched.

    Raises:
        ValueError: Empty batch, inconsistent shapes, NaN or inf in any times, inf in observed values, or times
            that are not strictly increasing after padding.

    Example:
        >>> loader = torch.utils.data.DataLoader(ds.windows(64), batch_size=32, collate_fn=collate_irregular)
    """
    if len(batch) == 0:
        raise ValueError("cannot collate an empty batch")
    if not pad_step > 0:
        raise ValueError(f"pad_step must be > 0, got {pad_step}")
    missing = [k for k in ("x", "t") if k not in batch[0]]
    if missing:
        raise ValueError(f"batch items need keys 'x' and 't'; missing {missing} (got {sorted(batch[0])})")
    out: dict[str, Any] = {}
    out["x"], out["t"], out["mask"], lengths = _pad_group(batch, INPUT_KEYS, pad_step, None)
    out["lengths"] = lengths
    used = set(INPUT_KEYS)
    last = [float(out["t"][j, int(n) - 1]) if int(n) else 0.0 for j, n in enumerate(lengths)]
    first = batch[0]
    if NEXT_KEYS[0] in first and NEXT_KEYS[1] in first:
        out["x_next"], out["t_next"], out["mask_next"], _ = _pad_group(batch, NEXT_KEYS, pad_step, last)
        used |= set(NEXT_KEYS)
    if FUTURE_KEYS[0] in first and FUTURE_KEYS[1] in first:
        x, t, m, n = _pad_group(batch, FUTURE_KEYS, pad_step, last)
        out["x_future"], out["t_future"], out["mask_future"], out["lengths_future"] = x, t, m, n
        used |= set(FUTURE_KEYS)
    if OUTPUT_KEYS[0] in first:
        ys, masks = _values_and_masks(batch, *OUTPUT_KEYS)
        for j, (y, n) in enumerate(zip(ys, lengths.tolist())):
            if y.shape[0] != n:
                raise ValueError(
                    f"batch[{j}]: 'y' has {y.shape[0]} rows but the item has {n} input stamps; 'y' holds outputs "
                    "at the input times t (targets after the inputs go in 'x_future'/'t_future')"
                )
        out["y"], out["mask_y"] = _pad_values(ys, masks, out["x"].shape[1])
        used |= set(OUTPUT_KEYS)
    for key in first:
        if key in used:
            continue
        vals = [it.get(key) for it in batch]
        try:
            out[key] = torch.utils.data.default_collate(vals)
        except (TypeError, RuntimeError):
            out[key] = vals
    return out
