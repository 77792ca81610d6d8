"""Checks shared by the dataset constructors: times, values and column selection, each with an error that says
what was wrong and what to do."""

from __future__ import annotations

from typing import Any, Hashable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

__all__ = ["cast_keeps_gaps", "check_times", "check_values", "numeric_block", "real_values", "require_column",
           "select_columns", "square_limit", "training_stats"]

GAP_RTOL = 1e-3
"""Largest relative change of a gap that casting times to the dataset's dtype may cause (see
:func:`cast_keeps_gaps`)."""


def _fmt(label: Any) -> str:
    if isinstance(label, (pd.Timestamp, np.datetime64)):
        return str(pd.Timestamp(label))
    return repr(label.item() if isinstance(label, np.generic) else label)


def check_times(times: np.ndarray, labels: Sequence[Any], where: str, sort_hint: str) -> None:
    """Raise ``ValueError`` if ``times`` (float64, NaN = missing) has NaN, or is not strictly increasing.

    Args:
        times: float64 ``(n,)``.
        labels: The original stamps, shown in messages, ``(n,)``.
        where: Which series, for the message.
        sort_hint: How to sort, for the message.
    """
    bad = np.flatnonzero(np.isnan(times))
    if bad.size:
        pos = bad[:5].tolist()
        raise ValueError(
            f"{where}: time column has {bad.size} missing value(s) (NaN/NaT), first at position(s) {pos}; "
            "every row needs a time stamp: drop those rows (e.g. df.dropna(subset=[<time column>])) or fill them"
        )
    inf = np.flatnonzero(np.isinf(times))
    if inf.size:
        raise ValueError(f"{where}: time column has {inf.size} infinite value(s), first at position {int(inf[0])}; "
                         "every time stamp must be finite")
    steps = np.diff(times)
    dup = np.flatnonzero(steps == 0)
    if dup.size:
        i = int(dup[0]) + 1
        raise ValueError(
            f"{where}: duplicate timestamps: {dup.size} repeated, first {_fmt(labels[i])} at positions {i - 1} and "
            f"{i}; each stamp must appear once: aggregate duplicates first (e.g. df.groupby(level=0).mean())"
        )
    back = np.flatnonzero(steps < 0)
    if back.size:
        i = int(back[0]) + 1
        raise ValueError(
            f"{where}: timestamps must be strictly increasing; found {back.size} non-increasing step(s), first at "
            f"position {i} ({_fmt(labels[i])} after {_fmt(labels[i - 1])}); {sort_hint}"
        )


def cast_keeps_gaps(times: np.ndarray, dtype: torch.dtype) -> bool:
    """Whether casting float64 ``times`` ``(n,)`` to ``dtype`` keeps them finite, strictly increasing and every gap
    within a relative :data:`GAP_RTOL` of its float64 value."""
    cast = torch.as_tensor(times, dtype=torch.float64).to(dtype).double().numpy()
    if not np.isfinite(cast).all():
        return False
    gaps, cast_gaps = np.diff(times), np.diff(cast)
    return bool((cast_gaps > 0).all() and (np.abs(cast_gaps - gaps) <= GAP_RTOL * gaps).all())


def square_limit(dtype: torch.dtype = torch.float64) -> float:
    """The largest magnitude whose square is finite both in float64 and in ``dtype`` (about 1.3e154 for float64,
    1.8e19 for float32): squared errors, variances and normalisation statistics of larger values overflow."""
    return float(np.sqrt(min(torch.finfo(dtype).max, np.finfo(np.float64).max)))


def real_values(values: Any, where: str) -> np.ndarray:
    """``values`` as a float64 array; ``TypeError`` for complex values (a cast would drop the imaginary part)."""
    arr = np.asarray(values)
    if np.iscomplexobj(arr) or (arr.dtype == object and any(isinstance(v, complex) for v in arr.reshape(-1))):
        raise TypeError(
            f"{where}: values are complex (dtype {arr.dtype}); odernn models real values. Pass the parts as "
            "separate real features, e.g. np.stack([v.real, v.imag], axis=-1), or np.abs(v) if only the magnitude "
            "matters"
        )
    return np.asarray(arr, dtype=np.float64)


def check_values(values: np.ndarray, where: str, dtype: torch.dtype = torch.float64,
                 times: Sequence[Any] | None = None, features: Sequence[Any] | None = None) -> None:
    """Raise ``ValueError`` for an empty series, inf values, values whose squares overflow (in float64 or in
    ``dtype``, the dtype the values will be used in), or a series without any observed value. ``times`` (n,), the
    stamps as the user gave them (or float times), and ``features`` (F,) names are shown in messages."""
    if values.shape[0] == 0:
        raise ValueError(f"{where}: series is empty; every series needs at least one observed value")
    inf = np.isinf(values)
    if inf.any():
        r, c = np.argwhere(inf)[0]
        raise ValueError(f"{where}: values contain inf (first at row {r}, feature {c}); use NaN for unobserved")
    limit = square_limit(dtype)
    with np.errstate(invalid="ignore"):
        big = np.abs(values) > limit
    if big.any():
        r, c = np.argwhere(big)[0]
        at = f"row {r}" + ("" if times is None else f" (time {_fmt(times[r])})")
        raise ValueError(
            f"{where}: value {float(values[r, c])!r} at {at}, feature {c if features is None else repr(features[c])} "
            f"is too large: squares (losses, variances, "
            f"normalisation) of values beyond {limit:.3g} overflow in {dtype}; rescale the values (e.g. divide by "
            f"a constant or take logs)" + ("" if dtype == torch.float64 else " or use dtype=torch.float64")
        )
    if np.isnan(values).all():
        raise ValueError(
            f"{where}: all values are NaN, so the series has no observation; drop it or check the value columns"
        )


def training_stats(values: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Normalisation statistics ``(mean, std)`` of ``(n, F)`` values over axis 0, in float64, ``std`` 1 where it is 0.

    Raises:
        TypeError: complex values.
        ValueError: no rows, NaN/inf values or values whose squares overflow (the statistics would be inf or NaN
            and every normalised value 0 or NaN).
    """
    v = real_values(values, where)
    if v.shape[0] == 0:
        raise ValueError(f"{where}: no values to compute normalisation statistics from")
    bad = ~np.isfinite(v)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{where}: value at index {idx} is {float(v[idx])!r}; normalisation statistics need finite "
                         "values")
    limit = square_limit()
    big = np.abs(v) > limit
    if big.any():
        idx = tuple(int(i) for i in np.argwhere(big)[0])
        raise ValueError(f"{where}: value {float(v[idx])!r} at index {idx} is too large: its square overflows float64 "
                         f"(limit {limit:.3g}), so the standard deviation would be inf; rescale the values")
    with np.errstate(over="ignore", invalid="ignore"):
        mean = v.mean(axis=0)
        std = v.std(axis=0)
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):  # many values near the limit: scale first
        scale = np.abs(v).max(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        mean, std = (v / scale).mean(axis=0) * scale, (v / scale).std(axis=0) * scale
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise ValueError(f"{where}: the normalisation statistics overflow (mean {mean}, std {std}); rescale the values")
    return mean, np.where(std > 0, std, 1.0)


def numeric_block(frame: pd.DataFrame, where: str) -> np.ndarray:
    """The frame's values as float64 ``(rows, columns)`` with NaN for missing; ``TypeError`` for text columns."""
    bad = [
        f"{c!r} ({frame[c].dtype})"
        for c in frame.columns
        if not (pd.api.types.is_numeric_dtype(frame[c].dtype) or pd.api.types.is_bool_dtype(frame[c].dtype))
    ]
    if bad:
        raise TypeError(
            f"{where}: value column(s) {', '.join(bad)} are not numeric; convert them "
            "(e.g. df[col] = pd.to_numeric(df[col], errors='coerce')) or select numeric columns with "
            "columns=/value_cols="
        )
    cplx = [f"{c!r} ({frame[c].dtype})" for c in frame.columns if pd.api.types.is_complex_dtype(frame[c].dtype)]
    if cplx:
        raise TypeError(
            f"{where}: value column(s) {', '.join(cplx)} are complex; odernn models real values: split each into "
            "real features (e.g. df[c + '_re'], df[c + '_im'] = df[c].to_numpy().real, df[c].to_numpy().imag)"
        )
    return frame.to_numpy(dtype=np.float64, na_value=np.nan)


def select_columns(frame: pd.DataFrame, columns: Sequence[Hashable] | None, exclude: Sequence[Hashable],
                   arg: str) -> list:
    """``columns`` (one name or several) checked against the frame, or every column not in ``exclude``."""
    if columns is None:
        return [c for c in frame.columns if c not in set(exclude)]
    if isinstance(columns, (str, bytes)) or not isinstance(columns, Iterable):
        columns = [columns]  # a single column name
    columns = list(columns)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{arg}: column(s) {missing} not found; available columns are {list(frame.columns)}")
    return columns


def require_column(frame: pd.DataFrame, col: Hashable, arg: str) -> None:
    """``ValueError`` naming the available columns when ``col`` is not one of them."""
    if col not in frame.columns:
        raise ValueError(f"{arg}={col!r} is not a column; available columns are {list(frame.columns)}")
