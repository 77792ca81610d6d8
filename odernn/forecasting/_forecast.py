"""Forecasting with a fitted ODE-RNN forecaster: residual forecasts of the network (ODE continued without inputs,
or read through future covariate rows), the far-horizon grid and its bound, point, quantile and interval outputs,
and the split-conformal calibration on the held-out end of every series.

:class:`ForecastMixin` is a part of :class:`odernn.forecasting.ODERNNForecaster`; it reads the fitted state that
``fit`` sets (``model_``, ``regression_``, ``scale_``, ``_history_``, ``context_length_``, ...).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch

from . import _training as training
from ._covariates import KNOWN_LEAD, read_covariates
from ._intervals import ROLLING_ORIGINS, ROLLING_SHARE, Calibration, IntervalMixin, calibration_origins, \
    rolling_origins

__all__ = ["ForecastMixin", "MAX_CAL_AHEAD"]

MAX_CAL_AHEAD = 2000  # rows forecast from each calibration origin


class ForecastMixin(IntervalMixin):
    """Forecasting methods of :class:`odernn.forecasting.ODERNNForecaster`."""

    # -- calibrate --------------------------------------------------------------------------------------------------
    def _calibrate(self, data: dict) -> None:
        """Forecast every series from origins in its held-out end and (with rolling detrending) spread over the last
        half of it, exactly as forecasts are made (the deterministic part refitted on the rows before each origin,
        the network reading the context before it); keep the scaled signed errors by distance (the quantiles use their
        absolute values, :func:`~odernn.forecasting._intervals.symmetric_quantile`).

        Origins before the held-out part let the calibration see many distinct stretches of data at long
        distances (the trend's and level's extrapolation error), where the held-out end alone reuses its few
        observations from every origin; the network has trained on those stretches, which matters mostly at short
        distances, where the held-out origins dominate the bins."""
        dist, res = [], []
        L = self.context_length_
        first = self._first_complete_rows()
        for s, h in enumerate(self._history_):
            n = len(h["t"])
            origins = calibration_origins(n, float(self.calibration_fraction))
            if origins.size and self._rolling_:
                origins = np.union1d(origins, rolling_origins(n, max(int(first[s]), L), ROLLING_SHARE,
                                                              ROLLING_ORIGINS))
            jobs = []
            for e in origins:
                ahead = np.flatnonzero(~np.isnan(h["y"][e:e + MAX_CAL_AHEAD]).all(axis=1)) + e
                if len(ahead) == 0:
                    continue
                d = self._fit_regression(h["t"][:e], h["y"][:e]) if self._rolling_ else self.regression_[s]
                lo = max(0, e - L)
                ctx = (h["t"][lo:e], self._channels(s, h["t"][lo:e], h["y"][lo:e], h["c"][lo:e], d))
                fut_t = h["t"][e:ahead[-1] + 1]
                fut_c = h["c"][e:ahead[-1] + 1]
                query = np.zeros(len(fut_t), dtype=bool)
                query[ahead - e] = True
                lag = self._lag_values(s, fut_t, d, float(h["t"][e - 1])) if self._n_lag else None
                jobs.append((e, d, ctx, fut_t, fut_c, query, lag))
            if not jobs:
                continue
            preds = self._residual_forecast(s, [j[2] for j in jobs], [(j[3], j[4], j[5], j[6]) for j in jobs])
            for (e, d, _, fut_t, _, query, _), z in zip(jobs, preds):
                tq = fut_t[query]
                yhat = d.predict(tq) + self.scale_[s] * z
                truth = h["y"][e:e + len(fut_t)][query]
                res.append((truth - yhat) / self.scale_[s])
                dist.append((tq - h["t"][e - 1]) / self._typical_gap_)
        self.calibration_ = (Calibration.from_errors(np.concatenate(dist), np.concatenate(res, axis=0))
                             if res else None)

    # ==============================================================================================================
    # forecasting
    # ==============================================================================================================
    def _residual_forecast(self, s: int, contexts: list, futures: list) -> list:
        """Standardised residual forecasts of series ``s`` from several (context, future) pairs.

        Args:
            contexts: ``(t (L_i,), u (L_i, C))`` per forecast.
            futures: ``(t (R_i,), c (R_i, p), query (R_i,), lag (R_i, k_lag) or None)``: future rows
                (increasing, after the context), covariates known there (NaN otherwise), which rows are asked for,
                and the lag channels there.

        Returns:
            (n_query_i, k) arrays.
        """
        device = torch.device(self.device)
        model = self.model_.to(device)
        model.eval()
        k = self.n_features_in_
        out: list = [None] * len(contexts)
        groups: dict = {}
        for i, (tc, _) in enumerate(contexts):
            groups.setdefault(len(tc), []).append(i)
        for idx in groups.values():
            tc = np.stack([contexts[i][0] for i in idx])
            uc = np.stack([contexts[i][1] for i in idx])
            t0 = tc[:, :1]
            obs = ~np.isnan(uc)
            if self._input_known() is None:
                grids, picks = [], []
                for i in idx:
                    ft, _, q, _ = futures[i]
                    g, pk = self._grid(contexts[i][0][-1], ft[q])
                    grids.append(g)
                    picks.append(pk)
                width = max(len(g) for g in grids)
                grid = np.stack([np.concatenate([g, g[-1] + self._typical_gap_ * np.arange(1, width - len(g) + 1)])
                                 for g in grids])
                x = torch.as_tensor(np.where(obs, uc, 0.0), dtype=torch.float32, device=device)
                t = torch.as_tensor(tc - t0, dtype=torch.float32, device=device)
                m = torch.as_tensor(obs, device=device)
                tf = torch.as_tensor(grid - t0, dtype=torch.float32, device=device)
                with torch.no_grad():
                    fc = training.encode(model, x, t, m, tf, priors=False)[1].double().cpu().numpy()
                for j, i in enumerate(idx):
                    out[i] = fc[j][picks[j]]
            else:
                p, kl = len(self.covariate_columns_), self._n_lag
                width = max(len(futures[i][0]) for i in idx)
                R = tc.shape[1] + width
                X = np.zeros((len(idx), R, k + p + kl + 1))
                M = np.zeros((len(idx), R, k + p + kl + 1), dtype=bool)
                T = np.zeros((len(idx), R))
                for j, i in enumerate(idx):
                    ft, fc_, q, lag = futures[i]
                    L = tc.shape[1]
                    X[j, :L, :k + p + kl] = np.where(obs[j], uc[j], 0.0)
                    M[j, :L, :k + p + kl] = obs[j]
                    if p:
                        cz = self.covariate_scaler_.transform(fc_)
                        cobs = ~np.isnan(cz) & self._known_[None, :]
                        X[j, L:L + len(ft), k:k + p] = np.where(cobs, cz, 0.0)
                        M[j, L:L + len(ft), k:k + p] = cobs
                    if kl:
                        lobs = ~np.isnan(lag)
                        X[j, L:L + len(ft), k + p:k + p + kl] = np.where(lobs, lag, 0.0)
                        M[j, L:L + len(ft), k + p:k + p + kl] = lobs
                    X[j, L:L + len(ft), -1] = q
                    M[j, L:L + len(ft), -1] = q
                    T[j, :L] = tc[j]
                    T[j, L:L + len(ft)] = ft
                    T[j, L + len(ft):] = (ft[-1] if len(ft) else tc[j, -1]) + np.arange(1, R - L - len(ft) + 1)
                t = torch.as_tensor(T - t0, dtype=torch.float32, device=device)
                Xt = torch.as_tensor(X, dtype=torch.float32, device=device)
                Mt = torch.as_tensor(M, device=device)
                with torch.no_grad():
                    pri = training.with_skip(model, training.encode(model, Xt, t, Mt)[0], Xt, Mt)
                pri = pri.double().cpu().numpy()
                for j, i in enumerate(idx):
                    q = futures[i][2]
                    L = tc.shape[1]
                    out[i] = pri[j, L:L + len(q)][q]
        return out

    def _grid(self, start: float, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fixed-grid solvers step per gap: split every gap longer than the typical gap into equal pieces, so a
        far stamp is integrated as finely as in training. Returns the grid and the positions of ``points``."""
        if self.solver_.adaptive:
            return points, np.arange(len(points))
        grid, picks, prev = [], [], float(start)
        g = self._typical_gap_
        for p in points:
            n = max(1, math.ceil((p - prev) / g - 1e-9))
            grid.extend(prev + (p - prev) * np.arange(1, n + 1) / n)
            picks.append(len(grid) - 1)
            prev = float(p)
        return np.asarray(grid), np.asarray(picks)

    def _check_reach(self, future: np.ndarray, which: list) -> None:
        reach = (future.max(axis=1) - self._end_model_time_[which]) / self._typical_gap_
        worst = int(np.argmax(reach))
        if reach[worst] > self.max_forecast_steps:
            raise ValueError(f"fh reaches {reach[worst]:,.0f} typical gaps (time_unit_ = {self.time_unit_}) after the "
                             f"end of series {self.series_ids_[which[worst]]!r}; forecasts are limited to "
                             f"max_forecast_steps={self.max_forecast_steps:,} typical gaps because the ODE is "
                             f"integrated through the whole distance. Ask for nearer stamps or raise "
                             f"max_forecast_steps (the time grows linearly with it)")

    def _point(self, fh: Any, X: Any, relative: Optional[bool], ids: Any) -> tuple[list, list, list, list]:
        """Point forecasts: (which, indexes, model times, raw forecasts (F, k)) per series."""
        self._check_fitted()
        which = self._positions(ids)
        future, indexes = self._future(fh, relative, which)
        self._check_reach(future, which)  # absolute stamps (offsets were checked before building their index)
        xs = self._future_covariates(X, future, indexes, which)
        L = self.context_length_
        preds = []
        for j, s in enumerate(which):
            h = self._history_[s]
            lo = max(0, len(h["t"]) - L)
            ctx = (h["t"][lo:], self._channels(s, h["t"][lo:], h["y"][lo:], h["c"][lo:], self.regression_[s]))
            order = np.argsort(future[j], kind="stable")
            ft = future[j][order]
            if xs is None and self._n_lag:  # rows on the integration grid, the requested ones marked
                grid, picks = self._grid(h["t"][-1], ft)
                query = np.zeros(len(grid), dtype=bool)
                query[picks] = True
                rows = (grid, np.full((len(grid), len(self.covariate_columns_)), np.nan), query)
            elif xs is None:
                rows = (ft, np.full((len(ft), len(self.covariate_columns_)), np.nan), np.ones(len(ft), dtype=bool))
            else:
                rows = self._covariate_rows(ft, h["t"][-1], *xs[j])
            lag = self._lag_values(s, rows[0], self.regression_[s], h["t"][-1]) if self._n_lag else None
            fut = (*rows, lag)
            z = self._residual_forecast(s, [ctx], [fut])[0]
            p = np.empty((len(ft), self.n_features_in_))
            p[order] = self.regression_[s].predict(ft) + self.scale_[s] * z
            preds.append(p)
        return which, indexes, list(future), preds

    def _future_covariates(self, X: Any, future: np.ndarray, indexes: list, which: list) -> Optional[list]:
        """Known covariates for the requested stamps: per series (model times, values), checked to cover fh."""
        if not len(self.covariate_columns_) or not self._known_.any():
            if X is not None and not len(self.covariate_columns_):
                raise ValueError("predict got X but the forecaster was fitted without covariates; pass X=None")
            return None
        if X is None:
            raise ValueError(f"the forecaster was fitted with covariates known in advance {self.known_covariates_}; "
                             f"pass their values at every requested stamp as X (or declare them in past_covariates)")
        origin = self._axis_.origin if self.index_kind_ == "datetime" else None
        _, xs = read_covariates(X, layout=self.layout_, ids=self.series_ids_, kind=self.index_kind_,
                                axis_origin=origin, columns=self.known_covariates_)
        out = []
        kn = np.flatnonzero(self._known_)
        for j, s in enumerate(which):
            sid = self.series_ids_[s]
            if sid not in xs:
                raise ValueError(f"X has no rows for series {sid!r}; known covariates {self.known_covariates_} are "
                                 f"needed at every requested stamp")
            t, v = xs[sid]
            tm = self._axis_.from_raw(t)
            full = np.full((len(tm), len(self.covariate_columns_)), np.nan)
            full[:, kn] = v
            pos = np.clip(np.searchsorted(tm, future[j]), 1, max(len(tm) - 1, 1))
            if len(tm) > 1:  # the nearer of the two neighbours
                pos = np.where(np.abs(tm[pos - 1] - future[j]) <= np.abs(tm[pos] - future[j]), pos - 1, pos)
            else:
                pos = np.zeros(len(future[j]), dtype=int)
            tol = 1e-9 * max(1.0, float(np.abs(future[j]).max()))
            found = (np.abs(tm[pos] - future[j]) <= tol) if len(tm) else np.zeros(len(future[j]), dtype=bool)
            found[found] &= ~np.isnan(v[pos[found]]).any(axis=1)
            if not found.all():
                missing = indexes[j][~found]
                raise ValueError(f"X lacks values of the known covariates {self.known_covariates_} at "
                                 f"{int((~found).sum())} requested stamp(s) of series {sid!r}, first "
                                 f"{missing[0]}; give X a row with every known covariate at each stamp of fh")
            out.append((tm, full))
        return out

    def _covariate_rows(self, ft: np.ndarray, start: float, tm: np.ndarray, c: np.ndarray) -> tuple:
        """Future rows: known covariates (led by KNOWN_LEAD) after ``start`` up to the last requested stamp, plus
        query rows at the requested stamps ``ft`` (sorted)."""
        lead = KNOWN_LEAD * self._typical_gap_
        sel = (tm - lead > start) & (tm <= ft[-1] + 1e-12)
        tx = tm[sel] - lead
        times, inv = np.unique(np.concatenate([ft, tx]), return_inverse=True)
        C = np.full((len(times), c.shape[1]), np.nan)
        C[inv[len(ft):]] = c[sel]
        q = np.zeros(len(times), dtype=bool)
        q[inv[: len(ft)]] = True
        return times, C, q

    def predict(self, fh: Any, X: Any = None, *, relative: Optional[bool] = None, ids: Any = None):
        """Forecast the values at future stamps.

        Args:
            fh: the forecasting horizon, a list / array / pandas Index (or a scalar) of future stamps of the
                training index's kind (after the end of every selected series), or positive offsets from each
                series' end: durations for a DatetimeIndex, or numbers (multiples of ``time_unit_`` for a
                DatetimeIndex; index units with ``relative=True`` for a numeric index).
            X: future values of the covariates known in advance, with a row at every requested stamp (a frame, a
                list or a long frame, as in ``fit``).
            relative: None (infer), True (offsets) or False (absolute stamps).
            ids: series to forecast (ids of a long frame, positions of a list); None: all.

        Returns:
            A DataFrame indexed by the forecast stamps (in the order of ``fh``) with the training columns; a Series
            after fitting a Series; a list of frames after a list; a long frame (``unique_id``, ``ds``, columns)
            after a long frame.

        Raises:
            NotFittedError: before :meth:`fit`.
            TypeError, ValueError: a bad ``fh``, stamps not after a series' end, unknown ids, missing covariates,
                or stamps beyond ``max_forecast_steps``.
        """
        with training.threads(self.num_threads):
            which, indexes, _, preds = self._point(fh, X, relative, ids)
        frames = [pd.DataFrame(p, index=idx, columns=self.columns_) for p, idx in zip(preds, indexes)]
        return self._output(frames, which, point=True)
