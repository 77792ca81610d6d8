"""What every odernn forecaster shares: reading ``y`` in any layout, the time axis, forecasting horizons and
per-series selection, and returning forecasts in the layout ``fit`` got."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from ._frames import ID_COL, TIME_COL, Panel, TimeAxis, parse_fh, read_panel

__all__ = ["BaseForecaster", "check_coverage", "check_alpha"]


def check_coverage(coverage: Any) -> list:
    """Coverages as a list of floats in (0, 1)."""
    items = list(coverage) if isinstance(coverage, (list, tuple, np.ndarray, pd.Index)) else [coverage]
    if not items:
        raise ValueError("coverage is empty; pass e.g. coverage=0.9 or [0.5, 0.9]")
    out = []
    for c in items:
        if isinstance(c, bool) or not isinstance(c, (int, float, np.floating, np.integer)) or not 0 < c < 1:
            raise ValueError(f"coverage must be in (0, 1) (e.g. 0.9 for a 90% interval), got {c!r}")
        out.append(float(c))
    return out


def check_alpha(alpha: Any) -> list:
    """Quantile levels as a sorted-as-given list of floats in (0, 1)."""
    items = list(alpha) if isinstance(alpha, (list, tuple, np.ndarray, pd.Index)) else [alpha]
    if not items:
        raise ValueError("alpha is empty; pass quantile levels such as [0.05, 0.5, 0.95]")
    out = []
    for a in items:
        if isinstance(a, bool) or not isinstance(a, (int, float, np.floating, np.integer)) or not 0 < a < 1:
            raise ValueError(f"alpha must hold quantile levels in (0, 1), got {a!r}")
        out.append(float(a))
    if any(b <= a for a, b in zip(out[:-1], out[1:])):
        raise ValueError(f"alpha must be strictly increasing (sorted, no repeats), got {out}")
    return out


class BaseForecaster(BaseEstimator):
    """Input and output handling shared by :class:`ODERNNForecaster` and :class:`SeasonalRegression`.

    Fitted attributes set here: ``index_kind_``, ``time_unit_``, ``time_origin_``, ``layout_``, ``columns_``,
    ``n_features_in_``, ``feature_names_in_`` (string columns), ``series_ids_``, ``series_end_``.
    """

    # -- reading ----------------------------------------------------------------------------------------------------
    def _read_fit(self, y: Any, time_unit: Any) -> tuple[Panel, TimeAxis]:
        panel = read_panel(y)
        axis = TimeAxis.from_panel(panel, time_unit)
        self.index_kind_ = panel.kind
        self.time_unit_ = axis.unit
        self.time_origin_ = axis.origin
        self.layout_ = panel.layout
        self.columns_ = list(panel.columns)
        self.n_features_in_ = len(panel.columns)
        if all(isinstance(c, str) for c in panel.columns):
            self.feature_names_in_ = np.asarray(panel.columns, dtype=object)
        else:
            self.__dict__.pop("feature_names_in_", None)
        self.series_name_ = panel.name
        self.series_ids_ = list(panel.ids)
        self._axis_ = axis
        return panel, axis

    def _read_like_fit(self, y: Any, what: str = "y") -> Panel:
        """Validate ``y`` against the fitted layout, columns, index kind and origin."""
        from ._frames import as_frames

        _, frames, layout, _ = as_frames(y, what)
        fitted = self.layout_
        if (layout in ("list", "long")) != (fitted in ("list", "long")):
            many = fitted in ("list", "long")
            raise ValueError(f"the forecaster was fitted on {'several series' if many else 'one series'}, got "
                             f"{'several series' if layout in ('list', 'long') else 'one series'} in {what}")
        if fitted == "series":
            for df in frames:
                if df.shape[1] != 1:
                    raise ValueError(f"{what} has {df.shape[1]} columns; the forecaster was fitted on a Series "
                                     f"(one variable)")
            y = frames[0].set_axis([self.columns_[0]], axis=1)
        origin = self.time_origin_ if self.index_kind_ == "datetime" else None
        panel = read_panel(y, columns=self.columns_, origin=origin, what=what)
        if panel.kind != self.index_kind_:
            raise TypeError(f"{what} has a {panel.kind} index but the forecaster was fitted on a {self.index_kind_} "
                            f"index")
        return panel

    def _check_fitted(self) -> None:
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                                 f"appropriate arguments before using this estimator.")

    # -- which series -------------------------------------------------------------------------------------------------
    def _positions(self, ids: Any) -> list:
        """Positions of the series ``ids`` (None: all)."""
        if ids is None:
            return list(range(len(self.series_ids_)))
        if self.layout_ not in ("list", "long"):
            raise ValueError(f"ids= selects series of a panel, but the forecaster was fitted on one series "
                             f"(layout {self.layout_!r}); leave ids=None")
        items = list(ids) if isinstance(ids, (list, tuple, np.ndarray, pd.Index)) else [ids]
        if not items:
            raise ValueError("ids is empty; pass the ids of the series to forecast, or None for all")
        lookup = {sid: k for k, sid in enumerate(self.series_ids_)}
        unknown = [i for i in items if i not in lookup]
        if unknown:
            shown = self.series_ids_[:10]
            raise ValueError(f"unknown series id(s) {unknown[:5]}; the forecaster knows {len(lookup)} series "
                             f"({shown}{' ...' if len(lookup) > 10 else ''})")
        if len(set(items)) != len(items):
            raise ValueError(f"ids has repeats: {items}")
        return [lookup[i] for i in items]

    def _future(self, fh: Any, relative: Optional[bool], which: list) -> tuple[np.ndarray, list]:
        ends = self._end_model_time_[which]
        return parse_fh(fh, relative, self._axis_, ends, [self.series_end_[s] for s in which],
                        check=lambda future: self._check_reach(future, which))

    def _check_reach(self, future: np.ndarray, which: list) -> None:
        """Refuse stamps too far ahead (subclasses with a bound override this)."""

    # -- output ----------------------------------------------------------------------------------------------------
    def _output(self, frames: list, which: list, *, point: bool):
        """Per-series frames (indexed by stamp) in the layout of ``fit``."""
        if self.layout_ == "long":
            parts = []
            for f, s in zip(frames, which):
                part = f.copy()
                part.index = pd.MultiIndex.from_arrays([[self.series_ids_[s]] * len(f), f.index],
                                                       names=[ID_COL, TIME_COL])
                parts.append(part)
            out = pd.concat(parts)
            return out.reset_index() if point else out
        if self.layout_ == "list":
            return frames
        if self.layout_ == "series" and point:
            s = frames[0].iloc[:, 0]
            s.name = self.series_name_
            return s
        return frames[0]

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "_axis_")

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "index_kind_" in state and "_axis_" not in state:
            self._axis_ = TimeAxis(self.index_kind_, self.time_unit_, self.time_origin_)

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state.pop("_axis_", None)  # rebuilt from index_kind_, time_unit_, time_origin_
        return state
