"""How irregular series are: :func:`sampling_stats` reports count, span, gap statistics and, given a mask, the
fraction of missing values per feature, for one series, several, or a dataset."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ._time import encode_times, time_kind

__all__ = ["sampling_stats", "stats_table"]

_GAP_KEYS = ("mean_gap", "median_gap", "min_gap", "max_gap", "std_gap", "cv_gap")


def _float_times(t: Any, unit: Any) -> np.ndarray:
    kind = time_kind(t)
    return encode_times(t, unit=None if kind == "numeric" else unit)[0]


def _mean_std(gaps: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of finite gaps; huge gaps (whose sums or squares overflow) are scaled first."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = float(gaps.mean()), float(gaps.std())
    if np.isfinite(mean) and np.isfinite(std):
        return mean, std
    scale = float(np.abs(gaps).max())
    g = gaps / scale
    return float(g.mean()) * scale, float(g.std()) * scale


def _stats_one(times: np.ndarray, mask: Any | None, names: Sequence[str] | None) -> dict[str, Any]:
    if times.ndim != 1:
        raise ValueError(f"times must be 1-D per series, got shape {times.shape}")
    n = int(times.size)
    gaps = np.diff(times)
    out: dict[str, Any] = {"n": n}
    if n:
        out.update(start=float(times[0]), end=float(times[-1]), duration=float(times[-1] - times[0]))
    else:
        out.update(start=np.nan, end=np.nan, duration=np.nan)
    if gaps.size:
        mean, std = _mean_std(gaps)
        out.update(mean_gap=mean, median_gap=float(np.median(gaps)), min_gap=float(gaps.min()),
                   max_gap=float(gaps.max()), std_gap=std, cv_gap=std / mean if mean != 0 else np.nan)
    else:
        out.update({k: np.nan for k in _GAP_KEYS})
    if mask is not None:
        m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        if m.ndim == 1:
            m = m[:, None]
        if m.shape[0] != n:
            raise ValueError(f"mask must have one row per time stamp ({n}), got shape {m.shape}")
        m = m.astype(bool)
        feat = list(names) if names is not None else [str(i) for i in range(m.shape[1])]
        if len(feat) != m.shape[1]:
            raise ValueError(f"names has {len(feat)} entries but the mask has {m.shape[1]} features")
        missing = 1.0 - m.mean(axis=0) if n else np.full(m.shape[1], np.nan)
        for name, frac in zip(feat, missing):
            out[f"missing_{name}"] = float(frac)
    return out


def stats_table(rows: Sequence[tuple[np.ndarray, Any | None]], names: Sequence[str] | None,
                index: pd.Index) -> pd.DataFrame:
    """One row of statistics per ``(float64 times (n,), mask (n, F) or None)`` pair, indexed by ``index``."""
    return pd.DataFrame([_stats_one(t, m, names) for t, m in rows], index=index)


def sampling_stats(
    t: Any,
    mask: Any | None = None,
    *,
    names: Sequence[str] | None = None,
    unit: str | pd.Timedelta = "s",
) -> dict[str, Any] | pd.DataFrame:
    """Describe the sampling of one series, or of several.

    Reported per series: ``n`` (stamps), ``start``, ``end``, ``duration``, the gap statistics ``mean_gap``,
    ``median_gap``, ``min_gap``, ``max_gap``, ``std_gap`` and ``cv_gap`` (coefficient of variation
    ``std_gap / mean_gap``, 0 for a regular grid), and with a mask ``missing_<feature>``: the fraction of stamps at
    which that feature is not observed.

    Args:
        t: Times of one series, shape ``(n,)`` (numeric, tensor, or datetime-like; datetimes are measured in
            ``unit`` from the first stamp), or a list of such series, or an
            :class:`~odernn.data.IrregularSeriesDataset`.
        mask: Observation mask of one series, shape ``(n,)`` or ``(n, F)`` (True = observed), or a list of
            masks, one per series. Ignored for a dataset, which brings its own.
        names: Feature names for the ``missing_*`` entries (default ``"0"``, ``"1"``, ...).
        unit: Unit of gaps for datetime times, in the vocabulary of :func:`~odernn.data.parse_time_unit`.

    Returns:
        A dict for one series; a ``pandas.DataFrame`` with one row per series for several.

    Raises:
        ValueError: If a mask's length differs from its series.
    """
    if isinstance(t, torch.utils.data.Dataset) and callable(getattr(t, "sampling_stats", None)):
        return t.sampling_stats()
    several = isinstance(t, (list, tuple)) and len(t) > 0 and np.ndim(t[0]) >= 1
    if several:
        if mask is not None and len(mask) != len(t):
            raise ValueError(f"got {len(t)} series but {len(mask)} masks; pass one mask per series")
        rows = [(_float_times(ti, unit), None if mask is None else mask[i]) for i, ti in enumerate(t)]
        return stats_table(rows, names, pd.RangeIndex(len(rows), name="series"))
    return _stats_one(_float_times(t, unit), mask, names)
