"""Split-conformal prediction intervals from held-out forecast errors, per horizon distance.

Why conformal: it works with every dynamics and needs no likelihood head or change to training; its coverage rests
on one assumption that can be checked (errors on the held-out end of the series are representative of errors after
it) instead of a noise model. Errors are kept per *distance* from the forecast origin (in model time units, bins
doubling in width), because forecast errors grow with the distance and stamps are irregular.

Residuals are signed and divided by each series' residual scale, so a panel pools errors of series of different
sizes; quantiles are the finite-sample conformal ones (level ``ceil((n + 1) q) / n`` above the median,
``floor((n + 1) q) / n`` below). Errors of forecasts from nearby origins are correlated, so the finite-sample
guarantee of exchangeable errors holds only approximately; the tests measure the coverage reached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["Calibration", "conformal_quantile"]

MIN_PER_BIN = 30


def conformal_quantile(r: np.ndarray, q: float) -> np.ndarray:
    """Finite-sample conformal quantile of ``r`` (n, k) at level ``q``, per column -> (k,)."""
    n = r.shape[0]
    s = np.sort(r, axis=0)
    if q >= 0.5:
        i = min(n, math.ceil((n + 1) * q)) - 1
    else:
        i = max(1, math.floor((n + 1) * q)) - 1
    return s[i]


@dataclass
class Calibration:
    """Held-out residuals grouped by forecast distance.

    Attributes:
        edges: (n_bins + 1,) bin edges in model time units (distance from the forecast origin).
        residuals: list of (n_b, k) arrays of scaled signed residuals ``(y - y_hat) / scale``.
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
            out[j] = conformal_quantile(col[:, None], q)[0] if len(col) else np.nan
        return out

    @property
    def max_distance(self) -> float:
        return float(self.edges[-1])

    def to_state(self) -> dict:
        return dict(edges=self.edges, residuals=list(self.residuals))

    @classmethod
    def from_state(cls, state: dict) -> "Calibration":
        return cls(np.asarray(state["edges"]), [np.asarray(r) for r in state["residuals"]])
