"""Preprocessing of forecast targets: the deterministic part (least-squares trend plus Fourier terms of given
periods) and standardisation.

The forecaster models ``y(t) = d(t) + s * z(t)``: ``d`` is fitted per series by least squares (:class:`Deterministic`),
``s`` and the mean of the residuals by :class:`Scaler`, and the ODE-RNN forecasts the standardised residual ``z``.
:class:`odernn.forecasting.SeasonalRegression` is ``d`` alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

__all__ = ["Deterministic", "Scaler", "resolve_periods", "YEAR"]

YEAR = "365.2425D"


def resolve_periods(spec, axis, span: float, where: str) -> list:
    """Seasonal periods in model units.

    Args:
        spec: ``None`` (none), ``"auto"`` (one year for a DatetimeIndex whose training data span at least two
            years, else none), a duration (``"365.2425D"``, ``pd.Timedelta``) for a DatetimeIndex or a number of
            index units for a numeric index, or a list of those.
        axis: the fitted :class:`~odernn.forecasting._frames.TimeAxis`.
        span: longest training span in model units.
        where: parameter name for messages.
    """
    if spec is None:
        return []
    if isinstance(spec, str) and spec == "auto":
        if axis.kind != "datetime":
            return []
        year = axis.duration(YEAR, where)
        return [year] if span >= 2 * year else []
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    out = []
    for p in items:
        v = axis.duration(p, where)
        if not v > 0:
            raise ValueError(f"{where} must hold positive periods, got {p!r}")
        out.append(v)
    return out


@dataclass
class Deterministic:
    """Least-squares ``d(t) = sum_j b_j ((t - t_ref) / t_scale)^j + sum_{P, m} (a sin + c cos)(2 pi m t / P)`` per
    column, fitted on the observed entries.

    Attributes:
        degree: trend degree (0: a level, 1: a line, ...; -1: no trend term at all).
        periods: seasonal periods in model units (Fourier terms only for periods spanned at least twice).
        order: Fourier terms per period (harmonics 1..order).
        halflife: weight ``0.5 ** ((t_end - t) / halflife)`` per observation (None: equal weights). Recent data
            then decide the level and slope that are extrapolated.
        coef: (n_terms, k) fitted coefficients.
    """

    degree: int = 1
    periods: Sequence[float] = ()
    order: int = 3
    halflife: Optional[float] = None
    t_ref: float = 0.0
    t_scale: float = 1.0
    used_periods: list = field(default_factory=list)
    coef: Optional[np.ndarray] = None

    def features(self, t: np.ndarray) -> np.ndarray:
        """Design matrix (n, n_terms) at model times ``t`` (n,)."""
        u = (np.asarray(t, dtype=np.float64) - self.t_ref) / self.t_scale
        cols = [u ** j for j in range(self.degree + 1)]
        for p in self.used_periods:
            for m in range(1, self.order + 1):
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
        self.used_periods = [float(p) for p in self.periods if span >= 2 * p]
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

    def predict(self, t: np.ndarray) -> np.ndarray:
        """d(t), shape (n, k)."""
        return self.features(t) @ self.coef

    def to_state(self) -> dict:
        return dict(degree=self.degree, periods=[float(p) for p in self.periods], order=self.order,
                    halflife=self.halflife, t_ref=self.t_ref, t_scale=self.t_scale,
                    used_periods=list(self.used_periods), coef=self.coef)

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
