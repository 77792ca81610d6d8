"""Exogenous variables (covariates) on their own irregular stamps, merged with the targets on one timeline.

A covariate is either *known in advance* (calendar features, planned controls: its future values are passed to
``predict``) or *past only* (observed with the targets, unknown in the future). Rows of the merged timeline are the
union of the target stamps and the covariate stamps; a value that was not observed at a row is NaN and the ODE-RNN's
mask hides it, so nothing is resampled. A known covariate is placed ``KNOWN_LEAD`` typical gaps *before* its stamp,
so that the state that predicts the target at a stamp has already read the covariate of that stamp.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from ._frames import ID_COL, TIME_COL, as_frames, frame_arrays, index_kind

__all__ = ["KNOWN_LEAD", "merge_rows", "read_covariates"]

KNOWN_LEAD = 1e-3


def read_covariates(X: Any, *, layout: str, ids: Sequence, kind: str, axis_origin: Any, columns: Optional[list],
                    what: str = "X") -> tuple[list, dict]:
    """Validate ``X`` against the layout of ``y`` and return (columns, {series id: (raw times, values)}).

    Args:
        X: a frame indexed by time (one series), a list of frames (a list of series, same order), or a long frame
            with ``unique_id`` and ``ds`` (a panel; series without rows get no covariates).
        layout: layout of ``y``; ids: ids of the series of ``y``; kind: index kind.
        axis_origin: datetime origin (raw times are seconds since it), None for numeric.
        columns: the columns required (as fitted) or None to take them from ``X``.
    """
    if isinstance(X, pd.Series):
        X = X.to_frame(name=X.name if X.name is not None else 0)
    x_ids, frames, x_layout, _ = as_frames(X, what)
    single = layout in ("frame", "series")
    if single and x_layout != "frame":
        raise ValueError(f"{what} must be one DataFrame indexed by time, because y is one series; got a "
                         f"{'list' if x_layout == 'list' else 'long frame'}")
    if layout == "list":
        if x_layout != "list" or len(frames) != len(ids):
            raise ValueError(f"y is a list of {len(ids)} series, so {what} must be a list of {len(ids)} frames in the "
                             f"same order")
    if layout == "long":
        if x_layout != "long":
            raise ValueError(f"y is a long frame, so {what} must be a long frame with columns {ID_COL!r}, "
                             f"{TIME_COL!r} and the covariates")
        unknown = [i for i in x_ids if i not in set(ids)]
        if unknown:
            raise ValueError(f"{what} has rows for unknown series id(s) {unknown[:5]}; the series are {list(ids)[:10]}")
    else:
        x_ids = list(ids)
    out = {}
    for sid, df in zip(x_ids, frames):
        where = f"{what}" if single else f"{what} series {sid!r}"
        cols = list(df.columns)
        if columns is None:
            columns = cols
        missing = [c for c in columns if c not in cols]
        if missing:
            raise ValueError(f"{where} lacks covariate column(s) {missing}; it has {cols}")
        if len(df) == 0:
            continue
        k = index_kind(df.index, where)
        if k != kind:
            raise TypeError(f"{where} has a {k} index but y has a {kind} index; index both the same way")
        t, v, _ = frame_arrays(df[columns], kind, axis_origin, where, True)
        out[sid] = (t, v)
    overlap = [c for c in columns]
    if not overlap:
        raise ValueError(f"{what} has no covariate columns")
    return list(columns), out


def merge_rows(t_y: np.ndarray, y: np.ndarray, t_x: Optional[np.ndarray], c: Optional[np.ndarray],
               known: np.ndarray, lead: float, *,
               keep_after: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One timeline from targets (t_y (n,), y (n, k)) and covariates (t_x (m,), c (m, p)) in model time.

    Known covariates move ``lead`` (model time units: ``KNOWN_LEAD`` typical gaps) earlier. Unless ``keep_after``,
    covariate rows after the last target stamp are dropped (future covariates belong to ``predict``). Returns
    (times (r,), y (r, k), c (r, p)), NaN where a row does not hold a value.
    """
    k, p = y.shape[1], len(known)
    if t_x is None or len(t_x) == 0:
        return t_y, y, np.full((len(t_y), p), np.nan)
    parts_t = [t_y]
    if known.any():
        parts_t.append(t_x - lead)
    if (~known).any():
        parts_t.append(t_x)
    times, inv = np.unique(np.concatenate(parts_t), return_inverse=True)
    Y = np.full((len(times), k), np.nan)
    C = np.full((len(times), p), np.nan)
    Y[inv[: len(t_y)]] = y
    pos = len(t_y)
    if known.any():
        C[inv[pos:pos + len(t_x)], :] = np.where(known[None, :], c, C[inv[pos:pos + len(t_x)], :])
        pos += len(t_x)
    if (~known).any():
        rows = inv[pos:pos + len(t_x)]
        C[rows] = np.where(~known[None, :], c, C[rows])
    keep = ~(np.isnan(Y).all(axis=1) & np.isnan(C).all(axis=1))
    if not keep_after and len(t_y):
        keep &= times <= t_y[-1]
    return times[keep], Y[keep], C[keep]
