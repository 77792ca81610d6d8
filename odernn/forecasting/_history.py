"""The history a forecaster conditions on: reading ``fit``'s input into per-series rows (targets and covariates on
one timeline), the deterministic part of every series (trend and the detected or given seasons), the residual
scales, the model's input channels, and appending observations (``update``).

:class:`HistoryMixin` is a part of :class:`odernn.forecasting.ODERNNForecaster`.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ._covariates import KNOWN_LEAD, merge_rows, read_covariates
from ._preprocess import Deterministic, Scaler, resolve_seasons
from ._seasons import CALENDAR_SECONDS

__all__ = ["HistoryMixin", "SeasonsMixin", "LAG_REACH", "MAX_REFITS"]

LAG_REACH = 2.0  # a lag value is interpolated only between observations within this many typical gaps of it
MAX_REFITS = 256  # distinct refits of the deterministic part per series while training (origins are bucketed)


class SeasonsMixin:
    """Resolve ``seasonal_period``, ``fourier_order`` and ``trend_halflife`` at fit time (shared by the forecaster
    and :class:`~odernn.forecasting.SeasonalRegression`)."""

    def _set_seasons(self, axis: Any, times: list, values: list) -> None:
        gaps = np.concatenate([np.diff(t) for t in times])
        gap = float(np.median(gaps)) if gaps.size else 1.0
        setup = resolve_seasons(self.seasonal_period, self.fourier_order, self.trend_halflife, axis, times, values,
                                gap, type(self).__name__, self._degree_spec())
        self._periods_, self._orders_, self._halflife_ = setup.periods, setup.orders, setup.halflife
        self.trend_degree_ = setup.degree
        self.seasonal_periods_ = [axis.unit * p if axis.kind == "datetime" else p * axis.unit
                                  for p in setup.periods]
        self.fourier_orders_ = list(setup.orders)
        if setup.report is None:
            self.season_candidates_ = None
        else:
            rows = []
            for r in setup.report:
                period = axis.unit * r["period"] if axis.kind == "datetime" else r["period"] * axis.unit
                label = r["label"] if r["label"] in CALENDAR_SECONDS else (
                    str(period.round("s")) if axis.kind == "datetime" else f"{period:.4g}")
                rows.append(dict(r, period=period, label=label))
            self.season_candidates_ = rows


class HistoryMixin(SeasonsMixin):
    """Preprocessing and history of :class:`odernn.forecasting.ODERNNForecaster`."""

    def _degree_spec(self) -> Any:
        return {True: 1, False: 0}.get(self.detrend, "auto") if isinstance(self.detrend, bool) else "auto"

    # -- preprocess -----------------------------------------------------------------------------------------------
    def _preprocess(self, y: Any, X: Any) -> dict:
        panel, axis = self._read_fit(y, self.time_unit)
        values_all = np.concatenate(panel.values, axis=0)
        empty = [c for c, ok in zip(panel.columns, (~np.isnan(values_all)).any(axis=0)) if not ok]
        if empty:
            raise ValueError(f"column(s) {empty} have no observed (non-NaN) value; drop them before fitting")
        times = [axis.from_raw(t) for t in panel.times]
        self._typical_gap_ = float(np.median(np.concatenate([np.diff(t) for t in times])))
        self._set_seasons(axis, times, panel.values)
        self._lag_period_ = max(self._periods_) if self._periods_ and self.seasonal_lag else None
        # covariates
        if X is not None:
            origin = axis.origin if axis.kind == "datetime" else None
            cols, xs = read_covariates(X, layout=panel.layout, ids=panel.ids, kind=panel.kind, axis_origin=origin,
                                       columns=None)
            clash = [c for c in cols if c in panel.columns]
            if clash:
                raise ValueError(f"X has column(s) {clash} that are also in y; rename the covariates")
            past = list(self.past_covariates or [])
            unknown = [c for c in past if c not in cols]
            if unknown:
                raise ValueError(f"past_covariates names {unknown}, which are not columns of X ({cols})")
            self.covariate_columns_ = cols
            self.known_covariates_ = [c for c in cols if c not in past]
            self._known_ = np.array([c not in past for c in cols], dtype=bool)
            xs = {sid: (axis.from_raw(t), v) for sid, (t, v) in xs.items()}
        else:
            if self.past_covariates:
                raise ValueError("past_covariates is set but fit got no X; pass the covariates as X")
            self.covariate_columns_, self.known_covariates_ = [], []
            self._known_ = np.zeros(0, dtype=bool)
            xs = {}
        p = len(self.covariate_columns_)
        hist = []
        for sid, t, v in zip(panel.ids, times, panel.values):
            tx, cx = xs.get(sid, (None, None))
            hist.append(merge_rows(t, v, tx, cx, self._known_, KNOWN_LEAD * self._typical_gap_))
        self._history_ = [dict(t=t, y=yy, c=c) for t, yy, c in hist]
        if p:
            self.covariate_scaler_ = Scaler().fit(np.concatenate([h["c"] for h in self._history_]))
        else:
            self.covariate_scaler_ = None
        self.series_end_ = [df.index[-1] for df in panel.frames]
        self.regression_ = [self._fit_regression(h["t"], h["y"]) for h in self._history_]
        self.scale_ = np.stack([self._residual_scale(h, d) for h, d in zip(self._history_, self.regression_)])
        self._end_model_time_ = np.array([h["t"][-1] for h in self._history_])
        return dict(panel=panel)

    def _fit_regression(self, t: np.ndarray, y: np.ndarray) -> Deterministic:
        return Deterministic(self.trend_degree_, self._periods_, self._orders_, self._halflife_).fit(t, y)

    def _first_complete_rows(self) -> np.ndarray:
        """Per series, the first origin (row count) whose history spans every seasonal period twice."""
        need = 2 * max(self._periods_) if self._periods_ else 0.0
        out = []
        for h in self._history_:
            span = h["t"] - h["t"][0]
            k = int(np.searchsorted(span, need - 1e-9)) + 1  # rows [0, k) span at least `need`
            out.append(max(k, 2))
        return np.array(out)

    @staticmethod
    def _residual_scale(h: dict, d: Deterministic) -> np.ndarray:
        return d.residual_scale(h["t"], h["y"])

    # -- model channels ---------------------------------------------------------------------------------------------
    @property
    def _n_lag(self) -> int:
        """Lag channels (one per target) when the network sees the longest cycle, else 0."""
        return self.n_features_in_ if getattr(self, "_lag_period_", None) else 0

    def _input_known(self) -> Optional[np.ndarray]:
        """Which extra channels (covariates, then lags) are known at forecast stamps; None: no extra channels."""
        if not len(self.covariate_columns_) and not self._n_lag:
            return None
        return np.concatenate([self._known_, np.ones(self._n_lag, dtype=bool)])

    def _lag_values(self, s: int, t: np.ndarray, d: Deterministic, t_end: float) -> np.ndarray:
        """The standardised residual one longest period before each stamp of ``t`` (n, k): linear interpolation
        between the observed neighbours of ``t - P`` in series ``s`` (each within ``LAG_REACH`` typical gaps of
        it, at or before ``t_end``), NaN where unknown."""
        h = self._history_[s]
        P = self._lag_period_
        q = np.asarray(t, dtype=np.float64) - P
        out = np.full((len(q), self.n_features_in_), np.nan)
        reach = LAG_REACH * self._typical_gap_
        lo = int(np.searchsorted(h["t"], q.min() - reach, side="left"))
        hi = int(np.searchsorted(h["t"], min(q.max() + reach, t_end), side="right"))
        if hi - lo < 1:
            return out
        ts, ys = h["t"][lo:hi], h["y"][lo:hi]
        zs = (ys - d.predict(ts)) / self.scale_[s]
        for j in range(zs.shape[1]):
            ok = ~np.isnan(zs[:, j])
            tj, zj = ts[ok], zs[ok, j]
            if len(tj) == 0:
                continue
            r = np.searchsorted(tj, q, side="left")  # right neighbour
            left, right = np.clip(r - 1, 0, len(tj) - 1), np.clip(r, 0, len(tj) - 1)
            exact = (r < len(tj)) & (np.abs(tj[right] - q) <= 1e-9)
            both = (r > 0) & (r < len(tj)) & (q - tj[left] <= reach) & (tj[right] - q <= reach)
            w = np.where(both, (q - tj[left]) / np.maximum(tj[right] - tj[left], 1e-12), 0.0)
            val = np.where(both, zj[left] * (1 - w) + zj[right] * w, np.nan)
            out[:, j] = np.where(exact, zj[right], val)
        return out

    def _channels(self, s: int, t: np.ndarray, y: np.ndarray, c: np.ndarray, d: Deterministic,
                  t_end: Optional[float] = None) -> np.ndarray:
        """Model channels (n, k + p + k_lag): standardised residuals of ``y`` w.r.t. ``d``, standardised
        covariates, and the residual one longest period back (known up to ``t_end``, default the last of ``t``)."""
        z = (y - d.predict(t)) / self.scale_[s]
        parts = [z]
        if self.covariate_scaler_ is not None:
            parts.append(self.covariate_scaler_.transform(c))
        if self._n_lag:
            parts.append(self._lag_values(s, t, d, float(t[-1]) if t_end is None else t_end))
        return np.concatenate(parts, axis=1) if len(parts) > 1 else z

    def _origin_channels(self, s: int, lo: int, hi: int, e: int, cache: Optional[dict] = None) -> np.ndarray:
        """Channels of rows [lo, hi) of series ``s`` as seen from the origin ``e`` (the history is rows [0, e)):
        ``d`` fitted on the rows before a nearby earlier origin (at most ``MAX_REFITS`` distinct refits per
        series, never using rows from ``e`` on), lags known up to row ``e - 1``."""
        h = self._history_[s]
        t_end = float(h["t"][e - 1])
        if not self._rolling_:
            return self._channels(s, h["t"][lo:hi], h["y"][lo:hi], h["c"][lo:hi], self.regression_[s], t_end)
        stride = max(1, len(h["t"]) // MAX_REFITS)
        e_fit = max(min(e, int(self._first_rows_[s])), (e // stride) * stride)
        key = (s, e_fit)
        d = cache.get(key) if cache is not None else None
        if d is None:
            d = self._fit_regression(h["t"][:e_fit], h["y"][:e_fit])
            if cache is not None:
                cache[key] = d
        return self._channels(s, h["t"][lo:hi], h["y"][lo:hi], h["c"][lo:hi], d, t_end)

    # -- update ----------------------------------------------------------------------------------------------------
    def update(self, y: Any, X: Any = None, *, replace: bool = False) -> "ODERNNForecaster":
        """Add new observations to the history that forecasts condition on, without retraining the network.

        By default (sktime's meaning) the rows of ``y`` are *appended* to each series' history; they must lie after
        the series' last stamp. The deterministic part (trend, seasonality) is refitted on the longer history, as
        during training; weights and scales stay as fitted. With a long frame, an id not seen before adds a new
        series (a global model forecasts it). ``replace=True`` swaps in ``y`` as the whole history instead.

        Args:
            y: new observations in the layout of ``fit``.
            X: their covariates (same layout), if the forecaster uses covariates.
            replace: replace the histories instead of appending.

        Returns:
            ``self``.

        Raises:
            NotFittedError: before :meth:`fit`.
            TypeError, ValueError: frames that do not match the fit, or stamps not after a series' end.
        """
        self._check_fitted()
        if not isinstance(replace, bool):
            raise TypeError(f"replace must be True or False, got {replace!r}")
        panel = self._read_like_fit(y)
        if self.layout_ != "long" and not replace and len(panel.ids) != len(self.series_ids_):
            raise ValueError(f"update got {len(panel.ids)} series but the forecaster has {len(self.series_ids_)}; "
                             f"pass one frame per series (or replace=True)")
        xs = {}
        if X is not None:
            if not len(self.covariate_columns_):
                raise ValueError("update got X but the forecaster was fitted without covariates; pass X=None")
            origin = self._axis_.origin if self.index_kind_ == "datetime" else None
            _, raw = read_covariates(X, layout=self.layout_, ids=panel.ids, kind=self.index_kind_,
                                     axis_origin=origin, columns=self.covariate_columns_)
            xs = {sid: (self._axis_.from_raw(t), v) for sid, (t, v) in raw.items()}
        hist, regs = list(self._history_), list(self.regression_)
        ids, ends, scales = list(self.series_ids_), list(self.series_end_), list(self.scale_)
        if replace and self.layout_ != "long":  # series i of the new list replaces series i
            n = len(panel.ids)
            hist, regs, ids, ends, scales = hist[:n], regs[:n], ids[:n], ends[:n], scales[:n]
        lookup = {sid: k for k, sid in enumerate(ids)}
        for sid, t_raw, v, df in zip(panel.ids, panel.times, panel.values, panel.frames):
            t = self._axis_.from_raw(t_raw)
            tx, cx = xs.get(sid, (None, None))
            rt, ry, rc = merge_rows(t, v, tx, cx, self._known_, KNOWN_LEAD * self._typical_gap_)
            s = lookup.get(sid)
            if s is not None and not replace:
                old = hist[s]
                if rt[0] <= old["t"][-1] + 1e-9:
                    raise ValueError(f"update: series {sid!r} has new rows from {df.index[0]}, at or before its last "
                                     f"stamp {ends[s]}; update appends later observations (pass replace=True to "
                                     f"replace the history)")
                h = dict(t=np.concatenate([old["t"], rt]), y=np.concatenate([old["y"], ry]),
                         c=np.concatenate([old["c"], rc]))
            else:
                h = dict(t=rt, y=ry, c=rc)
            d = self._fit_regression(h["t"], h["y"])
            if s is None:
                lookup[sid] = len(hist)
                hist.append(h)
                regs.append(d)
                ids.append(sid)
                ends.append(df.index[-1])
                scales.append(self._residual_scale(h, d))
            else:
                hist[s], regs[s], ends[s] = h, d, df.index[-1]
        self._history_, self.regression_, self.series_ids_, self.series_end_ = hist, regs, ids, ends
        self.scale_ = np.stack(scales)
        self._end_model_time_ = np.array([h["t"][-1] for h in self._history_])
        return self
