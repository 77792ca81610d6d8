"""Rolling-origin evaluation with folds defined in time (stamps are irregular, so rows are not a unit of time)."""

from __future__ import annotations

import numbers
from typing import Any, Optional

import numpy as np
import pandas as pd
from sklearn.base import clone

from ._frames import ID_COL, TIME_COL, as_frames, index_kind

__all__ = ["backtest"]


def _duration(v: Any, kind: str, what: str) -> Any:
    if kind == "datetime":
        if isinstance(v, numbers.Real) and not isinstance(v, bool):
            raise TypeError(f"{what} must be a duration (pd.Timedelta or a string such as '365D') for a "
                            f"DatetimeIndex, got the number {v!r}")
        try:
            d = pd.Timedelta(v)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be a duration such as '365D' or pd.Timedelta(weeks=26), got {v!r}") from None
    else:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{what} must be a number of index units for a numeric index, got {v!r}")
        d = float(v)
    if not d > d * 0:
        raise ValueError(f"{what} must be positive, got {v!r}")
    return d


def _slice(obj: Any, layout: str, lo: Any, hi: Any) -> Any:
    """Rows with ``lo < stamp <= hi`` (``lo`` None: from the start), in the layout of ``obj``."""
    def cut(df: pd.DataFrame) -> pd.DataFrame:
        idx = df.index
        keep = idx <= hi if lo is None else (idx > lo) & (idx <= hi)
        return df[keep]

    if obj is None:
        return None
    if layout == "long":
        ds = obj[TIME_COL]
        keep = ds <= hi if lo is None else (ds > lo) & (ds <= hi)
        return obj[keep.to_numpy()]
    if layout == "list":
        return [cut(df) for df in obj]
    if isinstance(obj, pd.Series):
        return cut(obj.to_frame()).iloc[:, 0]
    return cut(obj)


def backtest(forecaster: Any, y: Any, X: Any = None, *, initial: Any, step: Any, horizon: Any,
             window: str = "expanding", refit: bool = True, coverage: Optional[float] = 0.9,
             return_predictions: bool = False, max_folds: int = 1000):
    """Evaluate ``forecaster`` on forecasts from successive cutoffs, defined in time.

    Cutoffs are ``first stamp + initial``, then every ``step`` while a cutoff leaves ``horizon`` of data after it.
    At each cutoff the forecaster learns from the data up to it (``window="expanding"``: all of it;
    ``"sliding"``: the last ``initial``) and forecasts every observed stamp in ``(cutoff, cutoff + horizon]``.
    With ``refit=False`` it is fitted once, at the first cutoff, and later folds only :meth:`update` it with the
    observations since the previous cutoff (sktime's meaning; needs ``window="expanding"``).

    Args:
        forecaster: an unfitted estimator with ``fit(y, X)`` and ``predict(fh, X, ids=...)`` (an
            :class:`ODERNNForecaster` or :class:`SeasonalRegression`); it is cloned, not modified.
        y, X: the data (any layout ``fit`` accepts; covariates in the same layout).
        initial: length of the first training window: a duration (``"730D"``, ``pd.Timedelta``) for a
            DatetimeIndex, a number of index units for a numeric index.
        step: time between cutoffs; horizon: how far each fold forecasts (same kind as ``initial``).
        window: ``"expanding"`` or ``"sliding"``.
        refit: refit at every fold (True) or fit once and update.
        coverage: nominal coverage of the intervals scored (``predict_interval``), or None for none.
        return_predictions: also return the per-stamp table.
        max_folds: the most folds allowed; more raise ``ValueError`` before anything is built or fitted.

    Returns:
        A DataFrame with one row per fold and horizon step ``h`` (``h = 1`` is the first stamp after the cutoff):
        ``fold``, ``cutoff``, ``h``, ``distance`` (mean time from the cutoff), ``n`` (scored values), ``mae``,
        ``rmse``, ``coverage`` (share of values inside the interval; NaN without intervals). With
        ``return_predictions``, a tuple (that table, one row per fold, series, stamp and variable with ``y``,
        ``y_pred``, ``lower``, ``upper``).

    Raises:
        ValueError: no cutoff fits in the data, more than ``max_folds`` folds, or bad arguments.
    """
    if window not in ("expanding", "sliding"):
        raise ValueError(f"window must be 'expanding' or 'sliding', got {window!r}")
    if not isinstance(refit, bool):
        raise TypeError(f"refit must be True or False, got {refit!r}")
    if not refit and window != "expanding":
        raise ValueError("refit=False updates one fitted forecaster with new observations, which only makes sense "
                         "with window='expanding'")
    if coverage is not None and not (isinstance(coverage, float) and 0 < coverage < 1):
        raise ValueError(f"coverage must be None or a float in (0, 1), got {coverage!r}")
    ids, frames, layout, _ = as_frames(y)
    kind = index_kind(frames[0].index, "y")
    initial = _duration(initial, kind, "initial")
    step = _duration(step, kind, "step")
    horizon = _duration(horizon, kind, "horizon")
    first = min(df.index.min() for df in frames)
    last = max(df.index.max() for df in frames)
    if isinstance(max_folds, bool) or not isinstance(max_folds, numbers.Integral) or max_folds < 1:
        raise ValueError(f"max_folds must be a positive int, got {max_folds!r}")
    room = (last - horizon) - (first + initial)
    n_folds = int(np.floor(room / step)) + 1 if room >= room * 0 else 0
    if n_folds > max_folds:
        raise ValueError(f"backtest would run {n_folds:,} folds (from {first + initial} every {step} until "
                         f"{last - horizon}), more than max_folds={max_folds:,}; each fold fits a forecaster. Use a "
                         f"longer step, a later initial, or raise max_folds")
    cutoffs = []
    c = first + initial
    while c + horizon <= last:
        cutoffs.append(c)
        c = c + step
    if not cutoffs:
        raise ValueError(f"no fold fits: the data run from {first} to {last}, but the first cutoff {first + initial} "
                         f"plus the horizon {horizon} goes past the end; shorten initial or horizon")
    rows = []
    fitted = None
    prev = None
    for fold, cut in enumerate(cutoffs):
        lo = cut - initial if window == "sliding" else None
        if refit or fitted is None:
            fitted = clone(forecaster).fit(_slice(y, layout, lo, cut), _slice(X, layout, lo, cut))
        else:
            new_y = _slice(y, layout, prev, cut)
            if _has_rows(new_y, layout):
                fitted.update(new_y, _slice(X, layout, prev, cut) if X is not None else None)
        prev = cut
        test_y = _slice(y, layout, cut, cut + horizon)
        x_future = _slice(X, layout, cut, cut + horizon)
        _, t_frames, _, _ = as_frames(test_y) if _has_rows(test_y, layout) else (None, [], None, None)
        t_ids = ids if layout != "long" else as_frames(test_y)[0] if t_frames else []
        for pos, (sid, df) in enumerate(zip(t_ids, t_frames)):
            df = df[~df.isna().all(axis=1)]
            if len(df) == 0 or (layout == "long" and sid not in fitted.series_ids_):
                continue
            sel = None if layout in ("frame", "series") else [sid]
            pred = _as_frame(fitted.predict(df.index, x_future, relative=False, ids=sel), layout, fitted)
            lower = upper = None
            if coverage is not None and hasattr(fitted, "predict_interval") and \
                    getattr(fitted, "calibration_", None) is not None:
                iv = _as_frame(fitted.predict_interval(df.index, x_future, coverage=coverage, relative=False,
                                                       ids=sel), "interval", fitted)
                lower = iv.xs("lower", axis=1, level=2).to_numpy()
                upper = iv.xs("upper", axis=1, level=2).to_numpy()
            truth = df.to_numpy(dtype=np.float64)
            yp = pred.to_numpy(dtype=np.float64)
            for j, col in enumerate(df.columns):
                for i, stamp in enumerate(df.index):
                    if np.isnan(truth[i, j]):
                        continue
                    rows.append(dict(fold=fold, cutoff=cut, unique_id=sid, ds=stamp, variable=col, h=i + 1,
                                     distance=stamp - cut, y=truth[i, j], y_pred=yp[i, j],
                                     lower=np.nan if lower is None else lower[i, j],
                                     upper=np.nan if upper is None else upper[i, j]))
    preds = pd.DataFrame(rows, columns=["fold", "cutoff", "unique_id", "ds", "variable", "h", "distance", "y",
                                        "y_pred", "lower", "upper"])
    err = preds["y"] - preds["y_pred"]
    preds["abs_error"] = err.abs()
    preds["sq_error"] = err ** 2
    preds["covered"] = np.where(preds["lower"].isna(), np.nan,
                                ((preds["y"] >= preds["lower"]) & (preds["y"] <= preds["upper"])).astype(float))
    summary = preds.groupby(["fold", "cutoff", "h"], sort=True).agg(
        distance=("distance", "mean"), n=("y", "size"), mae=("abs_error", "mean"), rmse=("sq_error", "mean"),
        coverage=("covered", "mean")).reset_index()
    summary["rmse"] = np.sqrt(summary["rmse"])
    return (summary, preds) if return_predictions else summary


def _has_rows(obj: Any, layout: str) -> bool:
    if layout == "list":
        return any(len(df) for df in obj)
    return len(obj) > 0


def _as_frame(out: Any, layout: str, fitted: Any) -> pd.DataFrame:
    """One series' forecast as a frame indexed by stamp."""
    if isinstance(out, list):
        return out[0]
    if isinstance(out, pd.Series):
        return out.to_frame()
    if layout == "long" and ID_COL in out.columns:
        return out.set_index(TIME_COL).drop(columns=[ID_COL])
    if isinstance(out.index, pd.MultiIndex):
        return out.droplevel(0)
    return out
