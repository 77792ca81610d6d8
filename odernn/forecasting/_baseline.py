"""A seasonal regression baseline: least-squares trend plus Fourier terms of the detected or given periods, per
series, with split-conformal intervals from the same held-out calibration as :class:`ODERNNForecaster`."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd

from ._base import BaseForecaster
from ._history import SeasonsMixin
from ._intervals import ROLLING_ORIGINS, ROLLING_SHARE, Calibration, IntervalMixin, calibration_origins, \
    rolling_origins
from ._params import Check, Interval, Options, validate_params
from ._preprocess import Deterministic

__all__ = ["SeasonalRegression"]


def _period_spec(v: Any) -> bool:
    items = list(v) if isinstance(v, (list, tuple)) else [v]
    return bool(items) and all(isinstance(p, (str, int, float, pd.Timedelta)) and not isinstance(p, bool)
                               for p in items)


def _order_spec(v: Any) -> bool:
    items = list(v) if isinstance(v, (list, tuple)) else [v]
    return bool(items) and all(isinstance(o, int) and not isinstance(o, bool) and 1 <= o <= 50 for o in items)


def _duration_spec(v: Any) -> bool:
    return isinstance(v, (str, int, float, pd.Timedelta)) and not isinstance(v, bool)


class SeasonalRegression(SeasonsMixin, IntervalMixin, BaseForecaster):
    r"""Forecast with a least-squares trend plus Fourier terms of the seasonal periods, fitted to each series
    separately (the forecaster's deterministic part alone):

    .. math::
        \hat y(t) = \sum_{j=0}^{d} b_j u^j + \sum_{P} \sum_{m=1}^{M_P} a_{P,m} \sin(2\pi m t / P)
        + c_{P,m} \cos(2\pi m t / P), \qquad u = (t - t_n) / (t_n - t_1),

    weighted by recency (``0.5 ** (age / halflife)``). The baseline that :class:`ODERNNForecaster` is measured
    against (``docs/forecaster.md``); it takes the same input layouts and horizons (see
    :meth:`ODERNNForecaster.predict`) and the same defaults for the seasons, the orders and the recency weights.

    Args:
        seasonal_period: ``"auto"`` (detected, as in :class:`ODERNNForecaster`), ``None``, a duration (``"7D"``,
            ``"W"``, ``pd.Timedelta``) for a DatetimeIndex, a number of index units for a numeric index, or a
            list of them. A period is used for a series only if the series spans it at least twice.
        fourier_order: ``"auto"`` (held-out error), an int, or one int per period.
        trend_degree: degree of the polynomial trend: ``"auto"`` (a level or a line, by held-out error, as in
            :class:`ODERNNForecaster`), or 0 (a level), 1 (a line), 2, 3.
        time_unit: model time unit (default: the median gap); it does not change the fit.
        trend_halflife: ``"auto"`` (three times the longest period; equal weights without seasons), None (ordinary
            least squares), a duration or a number of index units.
        calibration_fraction: share of every series' rows whose forecasts from origins inside it (the regression
            refitted on the rows before each origin) calibrate :meth:`predict_interval` (0: no intervals).

    Attributes:
        regression_ (list): per series, the fitted coefficients (``coef`` (terms, k)) and design.
        seasonal_periods_, fourier_orders_, season_candidates_: as in :class:`ODERNNForecaster`.
        scale_ (np.ndarray): (n_series, k) residual scale; calibration_: held-out errors (None without).
    """

    _parameter_constraints = {
        "seasonal_period": [Options(("auto",)), Check(_period_spec, "a duration, a number or a list of them"), None],
        "fourier_order": [Options(("auto",)), Check(_order_spec, "an int in [1, 50] or a list of them")],
        "trend_degree": [Options(("auto",)), Interval(int, 0, 3)],
        "trend_halflife": [Options(("auto",)), Check(_duration_spec, "a duration or a positive number"), None],
        "time_unit": [Check(_duration_spec, "a duration or a positive number"), None],
        "calibration_fraction": [Interval(float, 0, 0.5, closed="left")],
    }

    num_threads = None  # IntervalMixin: no torch work

    def __init__(self, seasonal_period: Any = "auto", *, fourier_order: Any = "auto", trend_degree: Any = "auto",
                 time_unit: Any = None, trend_halflife: Any = "auto", calibration_fraction: float = 0.15) -> None:
        self.seasonal_period = seasonal_period
        self.fourier_order = fourier_order
        self.trend_degree = trend_degree
        self.time_unit = time_unit
        self.trend_halflife = trend_halflife
        self.calibration_fraction = calibration_fraction

    def fit(self, y: Any, X: Any = None) -> "SeasonalRegression":
        """Fit every series of ``y`` (a frame or Series indexed by time, a list of them, or a long frame).

        ``X`` is accepted for interface compatibility and must be None.

        Raises:
            TypeError, ValueError: bad input or parameters.
        """
        validate_params(self.get_params(deep=False), self._parameter_constraints, owner=type(self).__name__)
        if X is not None:
            raise ValueError("SeasonalRegression uses no covariates; pass X=None")
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]:
            delattr(self, name)
        panel, axis = self._read_fit(y, self.time_unit)
        times = [axis.from_raw(t) for t in panel.times]
        self._typical_gap_ = float(np.median(np.concatenate([np.diff(t) for t in times])))
        self._set_seasons(axis, times, panel.values)
        self._history_ = [(t, v) for t, v in zip(times, panel.values)]
        self.series_end_ = [df.index[-1] for df in panel.frames]
        self._refit_all()
        self._calibrate()
        return self

    def _fit_one(self, t: np.ndarray, v: np.ndarray) -> Deterministic:
        return Deterministic(self.trend_degree_, self._periods_, self._orders_, self._halflife_).fit(t, v)

    def _degree_spec(self) -> Any:
        return self.trend_degree

    def _refit_all(self) -> None:
        self.regression_ = [self._fit_one(t, v) for t, v in self._history_]
        self._end_model_time_ = np.array([t[-1] for t, _ in self._history_])
        self.scale_ = np.stack([d.residual_scale(t, v) for (t, v), d in zip(self._history_, self.regression_)])

    def _calibrate(self) -> None:
        """Signed errors of the regression refitted at origins inside the last ``calibration_fraction`` of every
        series, scaled, by forecast distance (as :class:`ODERNNForecaster` does with its full forecasts)."""
        dist, res = [], []
        need = 2 * max(self._periods_) if self._periods_ else 0.0
        for s, (t, v) in enumerate(self._history_):
            if not calibration_origins(len(t), float(self.calibration_fraction)).size:
                continue
            first = int(np.searchsorted(t - t[0], need - 1e-9)) + 1
            for e in rolling_origins(len(t), first, ROLLING_SHARE, ROLLING_ORIGINS):
                d = self._fit_one(t[:e], v[:e])
                ahead = ~np.isnan(v[e:]).all(axis=1)
                if not ahead.any():
                    continue
                tq = t[e:][ahead]
                res.append((v[e:][ahead] - d.predict(tq)) / self.scale_[s])
                dist.append((tq - t[e - 1]) / self._typical_gap_)
        self.calibration_ = (Calibration.from_errors(np.concatenate(dist), np.concatenate(res, axis=0))
                             if res else None)

    def update(self, y: Any, X: Any = None) -> "SeasonalRegression":
        """Append later observations to every series in ``y`` and refit their regressions (a long frame may add
        new series). The periods, scales and calibration stay as fitted."""
        self._check_fitted()
        if X is not None:
            raise ValueError("SeasonalRegression uses no covariates; pass X=None")
        panel = self._read_like_fit(y)
        lookup = {sid: k for k, sid in enumerate(self.series_ids_)}
        if self.layout_ != "long" and len(panel.ids) != len(self.series_ids_):
            raise ValueError(f"update got {len(panel.ids)} series but the forecaster has {len(self.series_ids_)}")
        hist, ends, scale = list(self._history_), list(self.series_end_), list(self.scale_)
        for sid, t_raw, v, df in zip(panel.ids, panel.times, panel.values, panel.frames):
            t = self._axis_.from_raw(t_raw)
            s = lookup.get(sid)
            if s is None:
                lookup[sid] = len(hist)
                hist.append((t, v))
                ends.append(df.index[-1])
                self.series_ids_.append(sid)
                scale.append(np.ones(v.shape[1]))
                continue
            if t[0] <= hist[s][0][-1] + 1e-9:
                raise ValueError(f"update: series {sid!r} has new rows from {df.index[0]}, at or before its last "
                                 f"stamp {ends[s]}; update appends later observations")
            hist[s] = (np.concatenate([hist[s][0], t]), np.concatenate([hist[s][1], v]))
            ends[s] = df.index[-1]
        self._history_, self.series_end_ = hist, ends
        self.regression_ = [self._fit_one(t, v) for t, v in hist]
        self._end_model_time_ = np.array([t[-1] for t, _ in hist])
        self.scale_ = np.stack(scale)
        return self

    def _point(self, fh: Any, X: Any, relative: Optional[bool], ids: Any) -> tuple[list, list, list, list]:
        self._check_fitted()
        if X is not None:
            raise ValueError("SeasonalRegression uses no covariates; pass X=None")
        which = self._positions(ids)
        future, indexes = self._future(fh, relative, which)
        preds = [self.regression_[s].predict(f) for s, f in zip(which, future)]
        return which, indexes, list(future), preds

    def predict(self, fh: Any, X: Any = None, *, relative: Optional[bool] = None, ids: Any = None):
        """Forecast at ``fh`` (as :meth:`ODERNNForecaster.predict`); ``ids`` selects series of a panel."""
        which, indexes, _, preds = self._point(fh, X, relative, ids)
        frames = [pd.DataFrame(p, index=idx, columns=self.columns_) for p, idx in zip(preds, indexes)]
        return self._output(frames, which, point=True)

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "regression_")
