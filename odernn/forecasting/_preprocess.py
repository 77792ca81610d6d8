"""Preprocessing of forecast targets: the deterministic part (least-squares trend plus Fourier terms of given
periods) and standardisation.

The forecaster models ``y(t) = d(t) + s * z(t)``: ``d`` is fitted per series by least squares (:class:`Deterministic`),
``s`` and the mean of the residuals by :class:`Scaler`, and the ODE-RNN forecasts the standardised residual ``z``.
:class:`odernn.forecasting.SeasonalRegression` is ``d`` alone.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["Deterministic", "Scaler", "resolve_seasons", "SeasonalSetup", "YEAR"]

YEAR = "365.2425D"
MAX_AUTO_ORDER = 10  # the most harmonics "auto" gives a period (each adds two columns to every refit)


@dataclass
class SeasonalSetup:
    """The deterministic part's settings resolved at fit time (model units).

    Attributes:
        periods: seasonal periods, longest first.
        orders: harmonics per period.
        halflife: recency half-life of the least-squares weights (None: equal weights).
        report: the detection's candidate table (``"auto"`` only, else None).
        degree: the trend's degree (0: a level, 1: a line, ...).
    """

    periods: list
    orders: list
    halflife: Optional[float]
    report: Optional[list] = None
    degree: int = 1


def resolve_seasons(period_spec, order_spec, halflife_spec, axis, times: list, values: list, gap: float,
                    owner: str, degree_spec="auto") -> SeasonalSetup:
    """Periods, harmonics and recency half-life of the deterministic part, from the parameters and the data.

    Args:
        period_spec: ``"auto"`` (detected, :func:`odernn.forecasting._seasons.detect_seasons`), None (none), a
            duration / number, or a list of them.
        order_spec: ``"auto"`` (chosen by held-out error, at most ``MAX_AUTO_ORDER``), an int for every period,
            or a list (one per given period).
        halflife_spec: ``"auto"`` (three times the longest period; None without periods), None, or a duration.
        degree_spec: ``"auto"`` (a level or a line, by held-out error) or the trend's degree.
        axis: the fitted :class:`~odernn.forecasting._frames.TimeAxis`.
        times, values: per series, model times (n_i,) and values (n_i, k).
        gap: typical gap (model units).
        owner: class name for warnings.

    Raises:
        ValueError: a non-positive period or half-life, or a list of orders of the wrong length.
    """
    from ._seasons import detect_seasons, fit_fixed

    def halflife_of(periods: list) -> Optional[float]:
        if isinstance(halflife_spec, str) and halflife_spec == "auto":
            return 3 * max(periods) if periods else None
        if halflife_spec is None:
            return None
        h = axis.duration(halflife_spec, "trend_halflife")
        if not h > 0:
            raise ValueError(f"trend_halflife must be a positive duration, got {halflife_spec!r}")
        return h

    halflife_of([])  # validate a given half-life before any work
    auto_order = isinstance(order_spec, str) and order_spec == "auto"
    degree = None if isinstance(degree_spec, str) and degree_spec == "auto" else int(degree_spec)
    report = None
    if isinstance(period_spec, str) and period_spec == "auto":
        found = detect_seasons(times, values, gap=gap,
                               unit_seconds=axis.unit_seconds if axis.kind == "datetime" else None,
                               index_unit=None if axis.kind == "datetime" else float(axis.unit),
                               max_order=MAX_AUTO_ORDER if auto_order else max(1, int(order_spec)),
                               halflife_of=halflife_of, orders=None if auto_order else [int(order_spec)] * 8,
                               degree=degree)
        periods, orders, report, degree = found.periods, found.orders, found.table, found.degree
        if not periods and found.could_detect:  # too few observations to find even a strong cycle: nothing to say
            warnings.warn(_nothing_found(found, axis, owner), UserWarning, stacklevel=4)
    else:
        items = [] if period_spec is None else (list(period_spec) if isinstance(period_spec, (list, tuple))
                                                 else [period_spec])
        periods = []
        for p in items:
            v = axis.duration(p, "seasonal_period")
            if not v > 0:
                raise ValueError(f"seasonal_period must hold positive periods, got {p!r}")
            periods.append(v)
        if auto_order:
            orders = None
        elif isinstance(order_spec, (list, tuple)):
            if len(order_spec) != len(periods):
                raise ValueError(f"fourier_order has {len(order_spec)} entries but seasonal_period has "
                                 f"{len(periods)}; give one order per period (or one int, or 'auto')")
            orders = [int(o) for o in order_spec]
        else:
            orders = [int(order_spec)] * len(periods)
        if orders is None or degree is None:
            fitted = fit_fixed(times, values, periods, gap=gap, max_order=MAX_AUTO_ORDER, halflife_of=halflife_of,
                               orders=orders, degree=degree)
            orders, degree = fitted.orders, fitted.degree
    return SeasonalSetup(list(periods), list(orders), halflife_of(list(periods)), report, int(degree))


def _nothing_found(found, axis, owner: str) -> str:
    lo, hi = found.searched
    fmt = (lambda v: str((axis.unit * v).round("s"))) if axis.kind == "datetime" else (
        lambda v: f"{v * axis.unit:.4g}")
    if not found.table:
        tried = "no periodogram could be formed (too few observations or too short a span)"
    else:
        tried = "; ".join(f"{fmt(r['period'])}: {r['why']}" for r in found.table[:5])
    rng = f"periods from {fmt(lo)} to {fmt(hi)}" if lo == lo else "no range (the data are too short)"
    return (f"{owner}: seasonal_period='auto' found no seasonal period. Searched {rng} (two cycles must fit in "
            f"the data); candidates: {tried}. The deterministic part is a trend only; pass seasonal_period= "
            f"(e.g. '1D', '7D' or a number of index units) if you know the cycles, or None to silence this")


@dataclass
class Deterministic:
    """Least-squares ``d(t) = sum_j b_j ((t' - t_ref) / t_scale)^j + sum_{P, m} (a sin + c cos)(2 pi m t / P)`` per
    column, fitted on the observed entries, with ``t' = min(t, t_ref + halflife)`` (the trend held flat from one
    half-life after the end of the fit; ``t' = t`` without recency weights).

    Attributes:
        degree: trend degree (0: a level, 1: a line, ...; -1: no trend term at all).
        periods: seasonal periods in model units (Fourier terms only for periods spanned at least twice).
        order: harmonics per period (1..order): one int for every period, or a list aligned with ``periods``.
        halflife: weight ``0.5 ** ((t_end - t) / halflife)`` per observation (None: equal weights). Recent data
            then decide the level and slope that are extrapolated.
        coef: (n_terms, k) fitted coefficients.
    """

    degree: int = 1
    periods: Sequence[float] = ()
    order: Any = 3
    halflife: Optional[float] = None
    t_ref: float = 0.0
    t_scale: float = 1.0
    used_periods: list = field(default_factory=list)
    coef: Optional[np.ndarray] = None
    used_orders: Optional[list] = None

    def features(self, t: np.ndarray) -> np.ndarray:
        """Design matrix (n, n_terms) at model times ``t`` (n,). With recency weights the trend is held flat from
        one half-life after the end of the fit on (a damped trend): a slope estimated from data of that memory is
        not extrapolated farther."""
        t = np.asarray(t, dtype=np.float64)
        t_trend = t if self.halflife is None else np.minimum(t, self.t_ref + self.halflife)
        u = (t_trend - self.t_ref) / self.t_scale
        cols = [u ** j for j in range(self.degree + 1)]
        orders = self.used_orders if self.used_orders is not None else [int(self.order)] * len(self.used_periods)
        for p, order in zip(self.used_periods, orders):
            for m in range(1, int(order) + 1):
                w = 2 * math.pi * m / p
                cols += [np.sin(w * t), np.cos(w * t)]
        return np.stack(cols, axis=1) if cols else np.zeros((len(u), 0))

    def fit(self, t: np.ndarray, v: np.ndarray) -> "Deterministic":
        """Fit on times ``t`` (n,) and values ``v`` (n, k) with NaN = not observed."""
        t = np.asarray(t, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        self.t_ref = float(t[-1])
        self.t_scale = float(max(t[-1] - t[0], 1e-12))
        span = float(t[-1] - t[0])
        orders = list(self.order) if isinstance(self.order, (list, tuple)) else [int(self.order)] * len(self.periods)
        used = [(float(p), int(m)) for p, m in zip(self.periods, orders) if span >= 2 * p]
        self.used_periods, self.used_orders = [p for p, _ in used], [m for _, m in used]
        X = self.features(t)
        w = np.ones(len(t)) if self.halflife is None else 0.5 ** ((t[-1] - t) / self.halflife)
        coef = np.zeros((X.shape[1], v.shape[1]))
        for j in range(v.shape[1]):
            ok = ~np.isnan(v[:, j])
            if ok.sum() == 0:
                continue
            Xj = X[ok]
            if ok.sum() < 2 * X.shape[1]:  # too few points for every term: keep the mean level only
                coef[0, j] = np.average(v[ok, j], weights=w[ok]) if self.degree >= 0 else 0.0
                continue
            sw = np.sqrt(w[ok])[:, None]
            coef[:, j] = np.linalg.lstsq(Xj * sw, v[ok, j] * sw[:, 0], rcond=None)[0]
        self.coef = coef
        return self

    def residual_scale(self, t: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Per column, the standard deviation of the residuals ``v - d(t)`` (observed entries) under the fit's
        recency weights, so that a short half-life measures the scale of recent residuals and not the misfit of
        old data; 1 where it cannot be measured. Shape (k,)."""
        t = np.asarray(t, dtype=np.float64)
        r = np.asarray(v, dtype=np.float64) - self.predict(t)
        w_all = np.ones(len(t)) if self.halflife is None else 0.5 ** ((t[-1] - t) / self.halflife)
        out = np.ones(r.shape[1])
        for j in range(r.shape[1]):
            ok = ~np.isnan(r[:, j])
            if ok.sum() < 2:
                continue
            w, c = w_all[ok], r[ok, j]
            mu = np.average(c, weights=w)
            sd = float(np.sqrt(np.average((c - mu) ** 2, weights=w)))
            if sd > 0 and np.isfinite(sd):
                out[j] = sd
        return out

    def predict(self, t: np.ndarray) -> np.ndarray:
        """d(t), shape (n, k)."""
        return self.features(t) @ self.coef

    def to_state(self) -> dict:
        order = [int(o) for o in self.order] if isinstance(self.order, (list, tuple)) else int(self.order)
        return dict(degree=self.degree, periods=[float(p) for p in self.periods], order=order,
                    halflife=self.halflife, t_ref=self.t_ref, t_scale=self.t_scale,
                    used_periods=list(self.used_periods), coef=self.coef,
                    used_orders=None if self.used_orders is None else [int(o) for o in self.used_orders])

    @classmethod
    def from_state(cls, state: dict) -> "Deterministic":
        s = dict(state)
        s["coef"] = np.asarray(s["coef"], dtype=np.float64)
        return cls(**s)


@dataclass
class Scaler:
    """Per-column standardisation ``(v - mean_) / scale_``, NaN ignored when fitting and kept when transforming."""

    mean_: Optional[np.ndarray] = None
    scale_: Optional[np.ndarray] = None

    def fit(self, v: np.ndarray) -> "Scaler":
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(v, axis=0) if len(v) else np.zeros(v.shape[1])
            std = np.nanstd(v, axis=0) if len(v) else np.ones(v.shape[1])
        self.mean_ = np.nan_to_num(mean)
        self.scale_ = np.where(np.isfinite(std) & (std > 0), std, 1.0)
        return self

    def transform(self, v: np.ndarray) -> np.ndarray:
        return (v - self.mean_) / self.scale_

    def inverse_transform(self, v: np.ndarray) -> np.ndarray:
        return v * self.scale_ + self.mean_
