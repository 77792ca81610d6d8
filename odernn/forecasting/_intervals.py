"""Split-conformal prediction intervals from held-out forecast errors, per horizon distance.

Why conformal: it works with every dynamics and needs no likelihood head or change to training; its coverage rests
on one assumption that can be checked (errors on the held-out end of the series are representative of errors after
it) instead of a noise model. Errors are kept per *distance* from the forecast origin (in model time units, bins
doubling in width), because forecast errors grow with the distance and stamps are irregular.

Residuals are divided by each series' residual scale, so a panel pools errors of series of different sizes. The
conformity score is the *absolute* error (intervals symmetric about the point forecast): quantile ``q`` is
``sign(q - 1/2) A(|2q - 1|)``, with ``A(c)`` the ``ceil((n + 1) c)``-th smallest of the ``n`` absolute errors.
Why not the signed errors: far from the origin they are mostly the trend's extrapolation error, whose sign is that
of the curvature the trend met during the calibration stretch (a cooling autumn, an accelerating rise). When the
trend turns after it (a winter minimum), signed quantiles put the interval on the wrong side: on the hourly Seattle
temperatures (the same fitted model) the last week's 90% interval covered 54% of it with signed quantiles, 78% with
absolute ones, at a width 8% larger (benchmarks/forecasting.md). The absolute score assumes only that the error's
size persists, not its sign. Errors of forecasts from nearby origins are correlated, so the finite-sample guarantee
of exchangeable errors holds only approximately; the tests and the benchmark measure the coverage reached.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pandas as pd

__all__ = ["Calibration", "conformal_quantile", "symmetric_quantile", "resolvable", "highest_coverage",
           "IntervalMixin", "CalibrationWarning"]

class CalibrationWarning(UserWarning):
    """A requested interval or quantile lies beyond what the held-out errors resolve (it is extrapolated)."""


MIN_PER_BIN = 30
TAIL_SHARE = 0.1  # share of the errors on one side that fit the exponential tail


def resolvable(n: int, q: float) -> bool:
    """Whether ``n`` absolute errors resolve quantile level ``q`` of :func:`symmetric_quantile` (the order
    statistic ``ceil((n + 1) |2q - 1|)`` exists)."""
    return math.ceil((n + 1) * abs(2 * q - 1) - 1e-12) <= n


def highest_coverage(n: int) -> float:
    """The highest central coverage ``c`` that ``n`` absolute errors resolve: ``n / (n + 1)``."""
    return n / (n + 1)


def conformal_quantile(r: np.ndarray, q: float) -> np.ndarray:
    """Finite-sample conformal quantile of ``r`` (n, k) at level ``q``, per column -> (k,).

    Levels beyond the most extreme error (``q > n / (n + 1)`` or ``q < 1 / (n + 1)``) are extrapolated with an
    exponential tail fitted to the ``TAIL_SHARE`` most extreme errors on that side (at least 3): with ``u`` the
    threshold and ``theta`` the mean excess over it, ``Q(q) = u + theta * log(p_u / (1 - q))``, where ``p_u`` is
    the share of errors beyond ``u`` (mirrored below the median). So a higher level always gives a wider quantile.
    """
    n = r.shape[0]
    s = np.sort(r, axis=0)
    if (math.ceil((n + 1) * q) <= n) if q >= 0.5 else (math.floor((n + 1) * q) >= 1):  # the order statistic exists
        i = math.ceil((n + 1) * q) - 1 if q >= 0.5 else math.floor((n + 1) * q) - 1
        return s[i]
    m = max(3, math.ceil(TAIL_SHARE * n))
    m = min(m, n - 1)
    if q >= 0.5:
        u, top = s[n - m - 1], s[n - m:]
        theta = np.maximum((top - u).mean(axis=0), 0.0)
        return np.maximum(s[-1], u + theta * math.log((m / (n + 1)) / (1 - q)))
    u, bottom = s[m], s[:m]
    theta = np.maximum((u - bottom).mean(axis=0), 0.0)
    return np.minimum(s[0], u - theta * math.log((m / (n + 1)) / q))


def symmetric_quantile(r: np.ndarray, q: float) -> np.ndarray:
    """Quantile ``q`` of the forecast error from the absolute errors ``|r|`` (n, k), per column -> (k,):
    ``sign(q - 1/2) A(|2q - 1|)``, where ``A(c)`` is the ``ceil((n + 1) c)``-th smallest absolute error (at least
    ``ceil((n + 1) c)`` of the ``n`` errors lie within it: split-conformal coverage ``c`` for the interval
    ``[-A(c), A(c)]``). Beyond the largest error (``c > n / (n + 1)``), ``A`` is extrapolated with the exponential
    tail of :func:`conformal_quantile`, so a higher level always gives a wider quantile."""
    a = np.abs(r)
    n = a.shape[0]
    c = abs(2 * q - 1)
    m = math.ceil((n + 1) * c - 1e-12)
    if m == 0:
        return np.zeros(a.shape[1])
    if m <= n:
        out = np.sort(a, axis=0)[m - 1]
    else:
        out = conformal_quantile(a, c)
    return out if q >= 0.5 else -out


@dataclass
class Calibration:
    """Held-out residuals grouped by forecast distance.

    Attributes:
        edges: (n_bins + 1,) bin edges in model time units (distance from the forecast origin).
        residuals: list of (n_b, k) arrays of scaled signed residuals ``(y - y_hat) / scale`` (kept signed; the
            quantiles use their absolute values, :func:`symmetric_quantile`).
    """

    edges: np.ndarray
    residuals: list

    @classmethod
    def from_errors(cls, distance: np.ndarray, resid: np.ndarray) -> Optional["Calibration"]:
        """Group residuals (m, k) at distances (m,) into doubling bins, merging bins with fewer than
        ``MIN_PER_BIN`` residuals into the previous one. None when there are fewer than ``MIN_PER_BIN`` in all."""
        ok = ~np.isnan(resid).all(axis=1)
        distance, resid = distance[ok], resid[ok]
        if len(distance) < MIN_PER_BIN:
            return None
        top = float(distance.max())
        raw = [0.0, 1.5]
        while raw[-1] < top:
            raw.append(raw[-1] * 2)
        raw[-1] = max(raw[-1], top) + 1e-9
        edges, groups, cur = [0.0], [], []
        for lo, hi in zip(raw[:-1], raw[1:]):
            cur.append(resid[(distance > lo) & (distance <= hi)])
            if sum(len(c) for c in cur) >= MIN_PER_BIN:
                groups.append(np.concatenate(cur))
                edges.append(hi)
                cur = []
        if cur and sum(len(c) for c in cur):
            if groups:
                groups[-1] = np.concatenate([groups[-1], *cur])
                edges[-1] = raw[-1]
            else:
                groups.append(np.concatenate(cur))
                edges.append(raw[-1])
        return cls(np.asarray(edges), groups)

    def offsets(self, distance: np.ndarray, q: float) -> np.ndarray:
        """Quantile ``q`` of the scaled residual at each distance (F,) -> (F, k). Beyond the largest calibrated
        distance the last bin's quantile grows like the square root of the distance (a random-walk rate)."""
        k = self.residuals[0].shape[1]
        per_bin = np.stack([self._quantile(r, q, k) for r in self.residuals])  # (n_bins, k)
        b = np.clip(np.searchsorted(self.edges, distance, side="left") - 1, 0, len(self.residuals) - 1)
        out = per_bin[b]
        last = self.edges[-1]
        far = distance > last
        if far.any():
            centre = 0.5 * (self.edges[-2] + last)
            out[far] = out[far] * np.sqrt(distance[far] / centre)[:, None]
        return out

    @staticmethod
    def _quantile(r: np.ndarray, q: float, k: int) -> np.ndarray:
        out = np.empty(k)
        for j in range(k):
            col = r[:, j][~np.isnan(r[:, j])]
            out[j] = symmetric_quantile(col[:, None], q)[0] if len(col) else np.nan
        return out

    def check_levels(self, levels: list, owner: str) -> None:
        """Warn (:class:`CalibrationWarning`) when a level lies beyond what the smallest bin resolves."""
        sizes = [int((~np.isnan(r).all(axis=1)).sum()) for r in self.residuals]
        n = min(sizes)
        beyond = [q for q in levels if not resolvable(n, q)]
        if beyond:
            warnings.warn(
                f"{owner}: quantile level(s) {[round(q, 6) for q in beyond]} lie beyond what the calibration resolves: "
                f"the smallest forecast-distance bin holds {n} held-out errors, which support central coverage up "
                f"to {highest_coverage(n):.3f} (quantile levels {0.5 / (n + 1):.4f} to {1 - 0.5 / (n + 1):.4f}). "
                f"These levels are extrapolated with an exponential tail fitted to the largest errors (see "
                f"odernn.forecasting._intervals.symmetric_quantile); raise calibration_fraction or use longer series "
                f"for empirical ones", CalibrationWarning, stacklevel=4)

    @property
    def max_distance(self) -> float:
        return float(self.edges[-1])

    def to_state(self) -> dict:
        return dict(edges=self.edges, residuals=list(self.residuals))

    @classmethod
    def from_state(cls, state: dict) -> "Calibration":
        return cls(np.asarray(state["edges"]), [np.asarray(r) for r in state["residuals"]])


CALIBRATION_ORIGINS = 24  # forecast origins per series in the held-out calibration part
MIN_CAL_ROWS = 20  # series with fewer rows are not used for calibration
ROLLING_SHARE = 0.5  # the deterministic part's calibration origins spread over the last half of every series
ROLLING_ORIGINS = 48


def rolling_origins(n: int, first: int, share: float, count: int) -> np.ndarray:
    """Up to ``count`` origins spread evenly over the last ``share`` of ``n`` rows, none before row ``first``."""
    lo = max(int(first), int(round(n * (1 - share))), 2)
    if lo >= n:
        return np.zeros(0, dtype=int)
    return np.unique(np.linspace(lo, n - 1, min(count, n - lo)).round().astype(int))


def calibration_origins(n: int, fraction: float) -> np.ndarray:
    """Forecast origins (row counts: the history is rows ``[0, e)``) inside the last ``fraction`` of ``n`` rows,
    at most ``CALIBRATION_ORIGINS``, evenly spaced; none for short series or ``fraction=0``."""
    c = int(round(fraction * n)) if fraction > 0 and n >= MIN_CAL_ROWS else 0
    if c == 0:
        return np.zeros(0, dtype=int)
    first = max(n - c, 2)
    return np.unique(np.linspace(first, n - 1, min(CALIBRATION_ORIGINS, n - first)).round().astype(int))


class IntervalMixin:
    """``predict_quantiles`` and ``predict_interval`` from a :class:`Calibration` (``calibration_``), for a
    forecaster that provides ``_point(fh, X, relative, ids)``, ``scale_``, ``_end_model_time_``, ``_typical_gap_``,
    ``num_threads`` and ``_output``."""

    def _require_calibration(self) -> Calibration:
        self._check_fitted()
        if self.calibration_ is None:
            why = ("calibration_fraction=0" if not self.calibration_fraction else
                   "too few held-out forecast errors (series with at least 20 rows and a calibration part giving "
                   "30 errors are needed)")
            raise ValueError(f"this forecaster has no calibrated intervals: {why}. Refit with calibration_fraction > "
                             f"0 (e.g. 0.15) on longer series")
        return self.calibration_

    def _quantile_frames(self, fh: Any, X: Any, relative: Optional[bool], ids: Any,
                         levels: list) -> tuple[list, list, list]:
        from ._training import threads

        cal = self._require_calibration()
        cal.check_levels(levels, type(self).__name__)
        with threads(getattr(self, "num_threads", None)):
            which, indexes, future, preds = self._point(fh, X, relative, ids)
        out = []
        for s, f, p in zip(which, future, preds):
            dist = (f - self._end_model_time_[s]) / self._typical_gap_
            out.append([p + self.scale_[s] * cal.offsets(dist, q) for q in levels])
        return which, indexes, out

    def predict_quantiles(self, fh: Any, X: Any = None, *, alpha: Any = (0.05, 0.5, 0.95),
                          relative: Optional[bool] = None, ids: Any = None):
        """Quantile forecasts: the point forecast plus the split-conformal quantile of held-out errors at the same
        forecast distance.

        Args:
            fh, X, relative, ids: as in ``predict``.
            alpha: quantile levels in (0, 1), strictly increasing. Levels beyond what the held-out errors resolve
                are extrapolated by an exponential tail, with a :class:`CalibrationWarning`.

        Returns:
            A DataFrame (per series, in the layout of ``fit``; a long fit gives rows indexed by (``unique_id``,
            ``ds``)) with columns ``MultiIndex`` (variable, alpha), sktime's convention.

        Raises:
            NotFittedError: before ``fit``.
            ValueError: levels outside (0, 1) or not increasing; no calibration (``calibration_fraction=0``).
        """
        from ._base import check_alpha

        levels = check_alpha(alpha)
        which, indexes, qs = self._quantile_frames(fh, X, relative, ids, levels)
        cols = pd.MultiIndex.from_tuples([(c, a) for c in self.columns_ for a in levels])
        frames = []
        for idx, per in zip(indexes, qs):
            data = np.stack(per, axis=2)  # (F, k, n_levels)
            frames.append(pd.DataFrame(data.reshape(len(idx), -1), index=idx, columns=cols))
        return self._output(frames, which, point=False)

    def predict_interval(self, fh: Any, X: Any = None, *, coverage: Any = 0.9, relative: Optional[bool] = None,
                         ids: Any = None):
        """Central prediction intervals: quantiles ``(1 - c) / 2`` and ``(1 + c) / 2`` for each coverage ``c``.

        Args:
            fh, X, relative, ids: as in ``predict``.
            coverage: a float in (0, 1) or a list of them.

        Returns:
            A DataFrame with columns ``MultiIndex`` (variable, coverage, ``"lower"``/``"upper"``) (sktime's
            convention), in the layout of ``fit`` (see :meth:`predict_quantiles`).

        Raises:
            NotFittedError: before ``fit``.
            ValueError: a coverage outside (0, 1); no calibration.
        """
        from ._base import check_coverage

        covs = check_coverage(coverage)
        levels = sorted({lv for c in covs for lv in ((1 - c) / 2, (1 + c) / 2)})
        which, indexes, qs = self._quantile_frames(fh, X, relative, ids, levels)
        pos = {lv: i for i, lv in enumerate(levels)}
        cols = pd.MultiIndex.from_tuples([(v, c, side) for v in self.columns_ for c in covs
                                          for side in ("lower", "upper")])
        frames = []
        for idx, per in zip(indexes, qs):
            data = []
            for j in range(self.n_features_in_):
                for c in covs:
                    data.append(per[pos[(1 - c) / 2]][:, j])
                    data.append(per[pos[(1 + c) / 2]][:, j])
            frames.append(pd.DataFrame(np.stack(data, axis=1), index=idx, columns=cols))
        return self._output(frames, which, point=False)
