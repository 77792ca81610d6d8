"""A seasonal regression baseline: least-squares trend plus Fourier terms of given periods, per series."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd

from ._base import BaseForecaster
from ._params import Check, Interval, Options, validate_params
from ._preprocess import Deterministic, resolve_periods

__all__ = ["SeasonalRegression"]


def _period_spec(v: Any) -> bool:
    items = list(v) if isinstance(v, (list, tuple)) else [v]
    return bool(items) and all(isinstance(p, (str, int, float, pd.Timedelta)) and not isinstance(p, bool)
                               for p in items)


class SeasonalRegression(BaseForecaster):
    r"""Forecast with a least-squares trend plus Fourier terms of given periods, fitted to each series separately:

    .. math::
        \hat y(t) = \sum_{j=0}^{d} b_j u^j + \sum_{P} \sum_{m=1}^{M} a_{P,m} \sin(2\pi m t / P)
        + c_{P,m} \cos(2\pi m t / P), \qquad u = (t - t_n) / (t_n - t_1).

    The baseline that :class:`ODERNNForecaster` is measured against (``docs/forecaster.md``); it takes the same
    input layouts and horizons (see :meth:`ODERNNForecaster.predict`).

    Args:
        seasonal_period: ``"auto"`` (one year for a DatetimeIndex whose series span at least two years, else
            none), ``None``, a duration (``"365.2425D"``, ``pd.Timedelta``) for a DatetimeIndex, a number of index
            units for a numeric index, or a list of them. A period is used for a series only if the series spans it
            at least twice.
        fourier_order: harmonics per period.
        trend_degree: degree of the polynomial trend (1: a line).
        time_unit: model time unit (default: the median gap); it does not change the fit.
        trend_halflife: weight observations by ``0.5 ** (age / halflife)`` (a duration or a number of index units;
            default None: ordinary least squares, the baseline of the issue).

    Attributes:
        regression_ (list): per series, the fitted coefficients (``coef`` (terms, k)) and design.
    """

    _parameter_constraints = {
        "seasonal_period": [Options(("auto",)), Check(_period_spec, "a duration, a number or a list of them"), None],
        "fourier_order": [Interval(int, 1, None)],
        "trend_degree": [Interval(int, 0, 3)],
        "trend_halflife": [Check(lambda v: isinstance(v, (str, int, float, pd.Timedelta)) and not isinstance(v, bool),
                                 "a duration or a positive number"), None],
        "time_unit": [Check(lambda v: isinstance(v, (str, int, float, pd.Timedelta)) and not isinstance(v, bool),
                            "a duration or a positive number"), None],
    }

    def __init__(self, seasonal_period: Any = "auto", *, fourier_order: int = 3, trend_degree: int = 1,
                 time_unit: Any = None, trend_halflife: Any = None) -> None:
        self.seasonal_period = seasonal_period
        self.fourier_order = fourier_order
        self.trend_degree = trend_degree
        self.time_unit = time_unit
        self.trend_halflife = trend_halflife

    def fit(self, y: Any, X: Any = None) -> "SeasonalRegression":
        """Fit every series of ``y`` (a frame or Series indexed by time, a list of them, or a long frame).

        ``X`` is accepted for interface compatibility and must be None."""
        validate_params(self.get_params(deep=False), self._parameter_constraints, owner=type(self).__name__)
        if X is not None:
            raise ValueError("SeasonalRegression uses no covariates; pass X=None")
        panel, axis = self._read_fit(y, self.time_unit)
        times = [axis.from_raw(t) for t in panel.times]
        span = max(float(t[-1] - t[0]) for t in times)
        periods = resolve_periods(self.seasonal_period, axis, span, "seasonal_period")
        self._periods_ = periods
        self._halflife_ = None if self.trend_halflife is None else axis.duration(self.trend_halflife,
                                                                                   "trend_halflife")
        self._history_ = [(t, v) for t, v in zip(times, panel.values)]
        self.regression_ = [self._fit_one(t, v) for t, v in self._history_]
        self._end_model_time_ = np.array([t[-1] for t in times])
        self.series_end_ = [df.index[-1] for df in panel.frames]
        return self

    def _fit_one(self, t: np.ndarray, v: np.ndarray) -> Deterministic:
        return Deterministic(int(self.trend_degree), self._periods_, int(self.fourier_order),
                             self._halflife_).fit(t, v)

    def update(self, y: Any, X: Any = None) -> "SeasonalRegression":
        """Append later observations to every series in ``y`` and refit their regressions (a long frame may add
        new series). The periods stay as fitted."""
        self._check_fitted()
        if X is not None:
            raise ValueError("SeasonalRegression uses no covariates; pass X=None")
        panel = self._read_like_fit(y)
        lookup = {sid: k for k, sid in enumerate(self.series_ids_)}
        if self.layout_ != "long" and len(panel.ids) != len(self.series_ids_):
            raise ValueError(f"update got {len(panel.ids)} series but the forecaster has {len(self.series_ids_)}")
        hist, ends = list(self._history_), list(self.series_end_)
        for sid, t_raw, v, df in zip(panel.ids, panel.times, panel.values, panel.frames):
            t = self._axis_.from_raw(t_raw)
            s = lookup.get(sid)
            if s is None:
                lookup[sid] = len(hist)
                hist.append((t, v))
                ends.append(df.index[-1])
                self.series_ids_.append(sid)
                continue
            if t[0] <= hist[s][0][-1] + 1e-9:
                raise ValueError(f"update: series {sid!r} has new rows from {df.index[0]}, at or before its last "
                                 f"stamp {ends[s]}; update appends later observations")
            hist[s] = (np.concatenate([hist[s][0], t]), np.concatenate([hist[s][1], v]))
            ends[s] = df.index[-1]
        self._history_, self.series_end_ = hist, ends
        self.regression_ = [self._fit_one(t, v) for t, v in hist]
        self._end_model_time_ = np.array([t[-1] for t, _ in hist])
        return self

    def predict(self, fh: Any, X: Any = None, *, relative: Optional[bool] = None, ids: Any = None):
        """Forecast at ``fh`` (as :meth:`ODERNNForecaster.predict`); ``ids`` selects series of a panel."""
        self._check_fitted()
        which = self._positions(ids)
        future, indexes = self._future(fh, relative, which)
        frames = [pd.DataFrame(self.regression_[s].predict(f), index=idx, columns=self.columns_)
                  for s, f, idx in zip(which, future, indexes)]
        return self._output(frames, which, point=True)

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "regression_")
