"""Checks shared by the dataset constructors: times, values and column selection, each with an error that says
what was wrong and what to do."""

from __future__ import annotations

from typing import Any, Hashable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

__all__ = ["cast_keeps_gaps", "check_times", "check_values", "numeric_block", "require_column", "select_columns"]

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


def check_values(values: np.ndarray, where: str) -> None:
    """Raise ``ValueError`` for an empty series, inf values, or a series without any observed value."""
    if values.shape[0] == 0:
        raise ValueError(f"{where}: series is empty; every series needs at least one observed value")
    inf = np.isinf(values)
    if inf.any():
        r, c = np.argwhere(inf)[0]
        raise ValueError(f"{where}: values contain inf (first at row {r}, feature {c}); use NaN for unobserved")
    if np.isnan(values).all():
        raise ValueError(
            f"{where}: all values are NaN, so the series has no observation; drop it or check the value columns"
        )


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
