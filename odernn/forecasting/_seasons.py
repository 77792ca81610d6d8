"""Season detection on irregular stamps: which cycles the data have, and how many harmonics each needs.

``seasonal_period="auto"`` runs :func:`detect_seasons`:

1. **Candidates.** A Lomb-Scargle periodogram (:func:`scipy.signal.lombscargle`, made for uneven sampling) of each
   series' linearly detrended values, on frequencies from two cycles per span to half the typical sampling rate,
   averaged over series and columns. The highest peak is tested against white noise (false-alarm probability
   ``M (1 - p)^((N - 3) / 2)`` for normalised power ``p``, ``N`` points and ``M`` independent frequencies);
   a significant peak is snapped to a calendar period (an hour, a day, a week, a year; a harmonic of one such as
   12 h counts as its base) or, for a numeric index, to a whole number of index units, when it lies within the
   periodogram's resolution of one. Its Fourier terms are then removed and the next peak is tested (prewhitening),
   up to ``MAX_CANDIDATES`` times.
2. **Held-out check.** Each series is split in time (the last ``HOLDOUT`` of its span held out). Candidates are
   added in order of power and kept only if the recency-weighted trend-plus-Fourier regression (the forecaster's
   deterministic part) forecasts the held-out part better with them (by ``MIN_GAIN``).
3. **Orders.** The number of harmonics of each kept period is chosen the same way, from ``ORDERS`` (capped by
   the samples per cycle and ``max_order``), one period at a time.

The result records every candidate with its power, false-alarm probability and why it was kept or dropped
(:attr:`Seasons.table`), so "auto" can say what it tried when it keeps nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy.fft import next_fast_len

__all__ = ["Seasons", "detect_seasons", "fit_fixed", "choose_orders", "choose_degree", "calendar_periods", "ORDERS"]

MAX_POINTS = 3000  # points per series in the periodogram (a fixed random subset beyond)
MAX_GRID = 1 << 22  # FFT length bound (peaks are refined locally by direct sums)
OVERSAMPLE = 5  # frequency grid 5x finer than 1 / span
MAX_SERIES = 8  # series (the longest) whose periodograms are averaged
MAX_CANDIDATES = 5
FAP = 1e-3  # false-alarm probability below which a peak is significant
HOLDOUT = 0.2  # share of each series' span held out to check candidates and orders
MIN_GAIN = 0.01  # relative held-out improvement a candidate or a higher order must bring
MODERATE_POWER = 0.5  # a cycle explaining half the variance: "auto" warns about finding nothing only if the test
                      # had the observations to find one that strong (Seasons.could_detect)
ORDERS = (1, 2, 3, 4, 6, 8, 10, 12)
ORIGINS = 6  # rolling origins of the held-out check
DAY = 86400.0
CALENDAR_SECONDS = {"1h": 3600.0, "1D": DAY, "7D": 7 * DAY, "365.2425D": 365.2425 * DAY}


@dataclass
class Seasons:
    """What :func:`detect_seasons` found.

    Attributes:
        periods: kept periods in model units, longest first.
        orders: harmonics per kept period.
        table: one dict per candidate (``period``, ``label``, ``power``, ``fap``, ``kept``, ``why``).
        searched: the range of periods searched, in model units (shortest, longest).
        degree: the trend's degree (0: a level, 1: a line).
        could_detect: whether the search could have found a season of moderate strength: the data span two cycles
            of some candidate period and hold enough observations that a cycle explaining half of the detrended
            variance (normalised power ``MODERATE_POWER``) would pass the significance test. When False, finding
            nothing says nothing about the data, and "auto" does not warn.
    """

    periods: list = field(default_factory=list)
    orders: list = field(default_factory=list)
    table: list = field(default_factory=list)
    searched: tuple = (math.nan, math.nan)
    degree: int = 1
    could_detect: bool = False


def calendar_periods(unit_seconds: Optional[float]) -> dict:
    """Calendar periods in model units for a datetime axis (``unit_seconds`` per model unit); {} for numeric."""
    if unit_seconds is None:
        return {}
    return {k: v / unit_seconds for k, v in CALENDAR_SECONDS.items()}


def _design(t: np.ndarray, periods: Sequence[float], orders: Sequence[int], t_ref: float, t_scale: float,
            degree: int = 1) -> np.ndarray:
    cols = [((t - t_ref) / t_scale) ** j for j in range(degree + 1)]
    for p, m in zip(periods, orders):
        for j in range(1, m + 1):
            w = 2 * math.pi * j / p
            cols += [np.sin(w * t), np.cos(w * t)]
    return np.stack(cols, axis=1)


def _fit_predict(t: np.ndarray, v: np.ndarray, periods: Sequence[float], orders: Sequence[int],
                 t_new: Optional[np.ndarray] = None, halflife: Optional[float] = None, degree: int = 1) -> np.ndarray:
    """Weighted least-squares polynomial trend plus Fourier terms on (t, v), evaluated at ``t_new`` (or t)."""
    t_ref, t_scale = float(t[-1]), float(max(t[-1] - t[0], 1e-12))
    X = _design(t, periods, orders, t_ref, t_scale, degree)
    w = np.ones(len(t)) if halflife is None else 0.5 ** ((t[-1] - t) / halflife)
    sw = np.sqrt(w)[:, None]
    if len(t) < 2 * X.shape[1]:
        coef = np.zeros(X.shape[1])
        coef[0] = np.average(v, weights=w)
    else:
        coef = np.linalg.lstsq(X * sw, v * sw[:, 0], rcond=None)[0]
    if t_new is None:
        return X @ coef
    Xn = _design(t_new, periods, orders, t_ref, t_scale, degree)
    if halflife is not None:  # the trend held flat from one half-life after the end (as Deterministic does)
        Xn[:, :degree + 1] = _design(np.minimum(t_new, t_ref + halflife), [], [], t_ref, t_scale, degree)
    return Xn @ coef


def _max_order(period: float, gap: float, cap: int) -> int:
    """At most ``cap`` harmonics, and fewer than half the samples per cycle (no harmonic above Nyquist)."""
    return int(max(1, min(cap, math.floor(period / gap / 2))))


def _harmonic_of(period: float, found: list, span: float) -> Optional[tuple]:
    """(index, m) when ``period`` is the m-th harmonic (m >= 2) of a found period, within the resolution."""
    f = 1.0 / period
    for i, q in enumerate(found):
        m = round(q / period)
        if m >= 2 and abs(f - m / q) <= 1.0 / span:
            return i, m
    return None


def _snap(period: float, span: float, calendar: dict, index_unit: Optional[float]) -> tuple[float, str]:
    """A calendar period (or, for a numeric index with ``index_unit`` index units per model unit, a whole number of
    index units) within the periodogram's resolution, else the period itself (model units)."""
    tol = 1.0 / span  # frequency resolution
    f = 1.0 / period
    for label, c in sorted(calendar.items(), key=lambda kv: kv[1]):
        for m in (1, 2, 3, 4):  # the peak may be a harmonic of the calendar period
            if abs(f - m / c) <= max(tol, 0.01 * m / c):
                return c, label
    if index_unit is not None and period * index_unit >= 2:
        r = round(period * index_unit)
        if abs(f - index_unit / r) <= tol:
            return r / index_unit, f"{r:g}"
    return period, f"{period:.4g}"


class _Data:
    """The series used for detection: observed values of one column at a time, detrended, scaled to unit std."""

    def __init__(self, times: list, values: list, rng: np.random.RandomState) -> None:
        items = []
        order = np.argsort([-(t[-1] - t[0]) for t in times], kind="stable")[:MAX_SERIES]
        for i in order:
            t, v = times[i], values[i]
            for j in range(v.shape[1]):
                ok = ~np.isnan(v[:, j])
                if ok.sum() < 12:
                    continue
                tt, vv = t[ok], v[ok, j]
                sd = float(np.std(vv))
                if not sd > 0:
                    continue
                items.append((tt, (vv - vv.mean()) / sd))
        self.items = items
        self.sub = []
        for tt, vv in items:
            idx = np.arange(len(tt)) if len(tt) <= MAX_POINTS else np.sort(rng.choice(len(tt), MAX_POINTS, False))
            self.sub.append((tt[idx], vv[idx]))


def _ls_power(t: np.ndarray, r: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Normalised Lomb-Scargle power (share of the variance of ``r`` explained by a sinusoid) at ``freqs``, direct
    sums (for a few frequencies)."""
    w = 2 * math.pi * freqs[:, None]
    c2, s2 = np.cos(2 * w * t).sum(axis=1), np.sin(2 * w * t).sum(axis=1)
    yc, ys = (r * np.cos(w * t)).sum(axis=1), (r * np.sin(w * t)).sum(axis=1)
    return _normalise(yc, ys, c2, s2, len(t), float(r @ r))


def _normalise(yc, ys, c2, s2, n, ss):
    """Power from the sums of y cos, y sin, cos 2wt and sin 2wt (Lomb's time shift tau folded in)."""
    theta = np.arctan2(s2, c2)
    big = np.hypot(c2, s2)
    ct, st = np.cos(theta / 2), np.sin(theta / 2)
    a = yc * ct + ys * st
    b = ys * ct - yc * st
    cc, sss = np.maximum((n + big) / 2, 1e-12), np.maximum((n - big) / 2, 1e-12)
    return (a * a / cc + b * b / sss) / max(ss, 1e-300)


def _fft_power(t: np.ndarray, r: np.ndarray, delta: float, size: int, ks: np.ndarray) -> np.ndarray:
    """Lomb-Scargle power at frequencies ``ks / (size * delta)`` with stamps rounded to a grid of step ``delta``:
    the sums become discrete Fourier transforms of sparse arrays (the approach of Press and Rybicki)."""
    j = np.round((t - t[0]) / delta).astype(np.int64)
    yg = np.bincount(j, weights=r, minlength=size)[:size]
    ng = np.bincount(j, minlength=size)[:size].astype(np.float64)
    Y = np.fft.rfft(yg, n=size)[ks]
    full = np.fft.fft(ng, n=size)
    W2 = full[(2 * ks) % size]
    # sum y cos = Re Y, sum y sin = -Im Y (numpy's FFT has e^{-i w t}); same for the doubled frequency
    return _normalise(Y.real, -Y.imag, W2.real, -W2.imag, len(t), float(r @ r))


def _periodogram(data: _Data, found: list, orders: list, grid: tuple) -> np.ndarray:
    """Mean normalised Lomb-Scargle power of the residuals after removing a line and the found periods."""
    delta, size, ks = grid
    acc = np.zeros(len(ks))
    for tt, vv in data.items:
        r = vv - _fit_predict(tt, vv, found, orders)
        r = r - r.mean()
        if not np.std(r) > 0:
            continue
        acc += _fft_power(tt, r, delta, size, ks)
    return acc / max(1, len(data.items))


def _peak_power(data: _Data, found: list, orders: list, freqs: np.ndarray) -> np.ndarray:
    acc = np.zeros(len(freqs))
    for tt, vv in data.sub:
        r = vv - _fit_predict(tt, vv, found, orders)
        r = r - r.mean()
        if np.std(r) > 0:
            acc += _ls_power(tt, r, freqs)
    return acc / max(1, len(data.sub))


class _Judge:
    """Rolling-origin held-out error of the regression: ``ORIGINS`` origins spread over the last ``HOLDOUT`` of each
    series' span, each fitted on the data before it (recency weights of a fixed half-life, so that candidates are
    compared under the same weights) and scored over the next ``horizon`` (mean absolute error, values at unit
    standard deviation)."""

    def __init__(self, data: _Data, horizon: float, halflife: Optional[float], degree: int) -> None:
        self.data, self.horizon, self.halflife, self.degree = data, horizon, halflife, degree

    def error(self, periods: list, orders: list, degree: Optional[int] = None) -> float:
        deg = self.degree if degree is None else degree
        errs = []
        for tt, vv in self.data.items:
            span = tt[-1] - tt[0]
            last = tt[-1] - self.horizon
            first = max(tt[-1] - HOLDOUT * span, tt[0] + 0.5 * span) if HOLDOUT * span > self.horizon else last
            for o in np.linspace(first, last, ORIGINS) if last > first else [last]:
                tr, te = tt <= o, (tt > o) & (tt <= o + self.horizon)
                if tr.sum() < 8 or te.sum() < 1:
                    continue
                use = [(p, m) for p, m in zip(periods, orders) if tt[tr][-1] - tt[0] >= p]
                pred = _fit_predict(tt[tr], vv[tr], [p for p, _ in use], [m for _, m in use], tt[te], self.halflife,
                                    deg)
                errs.append(float(np.mean(np.abs(vv[te] - pred))))
        return float(np.mean(errs)) if errs else math.nan


def _bic(data: _Data, periods: list, orders: list, degree: int = 1, halflife: Optional[float] = None) -> float:
    """Bayesian information criterion of the regression as the forecaster fits it, summed over series: with
    recency weights ``w`` (``halflife``), the weighted mean squared residual and Kish's effective number of
    observations ``(sum w)^2 / sum w^2`` in place of ``n`` (equal weights: the ordinary criterion). Judging an
    unweighted fit of all the data instead would count a seasonal shape that drifts as noise, and refuse the
    harmonics that the recency-weighted fit resolves."""
    total = 0.0
    for tt, vv in data.items:
        w = np.ones(len(tt)) if halflife is None else 0.5 ** ((tt[-1] - tt) / halflife)
        r = vv - _fit_predict(tt, vv, periods, orders, halflife=halflife, degree=degree)
        n = float(w.sum() ** 2 / (w @ w))
        k = degree + 1 + 2 * sum(orders)
        total += n * math.log(max(float(w @ (r * r)) / float(w.sum()), 1e-300)) + k * math.log(n)
    return total


def choose_orders(judge: _Judge, periods: list, gap: float, max_order: int) -> list:
    """Harmonics per period: start at one harmonic each and raise one period's order at a time (coordinate
    descent over ``ORDERS``, one pass, longest period first) when the held-out error drops by ``MIN_GAIN`` *and*
    the Bayesian information criterion on all the data drops too (held-out error alone lets noise pick high
    orders)."""
    orders = [1] * len(periods)
    best = judge.error(periods, orders)
    if not math.isfinite(best):
        return [min(3, _max_order(p, gap, max_order)) for p in periods]
    best_bic = _bic(judge.data, periods, orders, judge.degree, judge.halflife)
    for i, p in enumerate(periods):
        cap = _max_order(p, gap, max_order)
        for m in [o for o in ORDERS if 1 < o <= cap]:
            trial = orders[:i] + [m] + orders[i + 1:]
            e = judge.error(periods, trial)
            if e < best * (1 - MIN_GAIN):
                b = _bic(judge.data, periods, trial, judge.degree, judge.halflife)
                if b < best_bic:
                    best, best_bic, orders = e, b, trial
    return orders


def choose_degree(judge: _Judge, periods: list, orders: list) -> int:
    """A line (1) only if it beats a level (0) on held-out error by ``MIN_GAIN``: a slope extrapolated from a
    short, recency-weighted fit is the largest error of sub-daily series whose level wanders."""
    e0, e1 = judge.error(periods, orders, 0), judge.error(periods, orders, 1)
    if not math.isfinite(e1):
        return 1
    return 1 if e1 < e0 * (1 - MIN_GAIN) else 0


def detect_seasons(times: list, values: list, *, gap: float, unit_seconds: Optional[float],
                   index_unit: Optional[float] = None, max_order: int = 10,
                   halflife_of=None, orders: Optional[Sequence[int]] = None, degree: Optional[int] = None,
                   random_state: int = 0) -> Seasons:
    """Find the seasonal periods of irregularly sampled series.

    Args:
        times: per series, model times (n_i,), increasing.
        values: per series, values (n_i, k), NaN = not observed.
        gap: the typical gap between stamps, in model units.
        unit_seconds: seconds per model unit for a DatetimeIndex (calendar snapping), None for a numeric index.
        index_unit: index units per model unit for a numeric index (snapping to whole index units), else None.
        max_order: the most harmonics per period.
        halflife_of: ``periods -> recency half-life`` of the regression used in the held-out check (None: equal
            weights), so the check judges the regression the forecaster will use.
        orders: fixed harmonics for every kept period (None: chosen by held-out error).
        degree: the trend's degree (0: a level, 1: a line; None: chosen by held-out error).
        random_state: seed of the point subset used for long series.

    Returns:
        A :class:`Seasons`.
    """
    halflife_of = halflife_of or (lambda periods: None)
    data = _Data(times, values, np.random.RandomState(random_state))
    out = Seasons(degree=1 if degree is None else degree)
    if not data.items:
        return out
    span = max(tt[-1] - tt[0] for tt, _ in data.items)
    n_pts = float(np.mean([len(tt) for tt, _ in data.items]))
    f_lo, f_hi = 2.0 / span, 1.0 / (2.0 * gap)
    out.searched = (1.0 / f_hi, 1.0 / f_lo)
    if not f_hi > f_lo:
        return out
    delta = gap / 4.0  # stamps rounded to a quarter gap: phase error <= pi / 8 at the shortest period searched
    while span / delta > MAX_GRID / OVERSAMPLE:
        delta *= 2
    size = int(next_fast_len(int(OVERSAMPLE * (span / delta + 1))))
    ks = np.arange(max(1, math.ceil(f_lo * size * delta)), min(size // 2, math.floor(f_hi * size * delta)) + 1)
    if len(ks) < 3:
        return out
    n_indep = max(1.0, (f_hi - f_lo) * span)
    out.could_detect = _false_alarm(MODERATE_POWER, n_indep, n_pts) < FAP
    calendar = calendar_periods(unit_seconds)
    found: list = []
    fo: list = []
    for _ in range(MAX_CANDIDATES):
        power = _periodogram(data, found, fo, (delta, size, ks))
        f_grid = ks / (size * delta)
        for q in found:  # what is left of a found period (its exact frequency is off by up to the resolution)
            power[np.abs(f_grid - 1.0 / q) <= 1.0 / span] = 0.0
        k = int(np.argmax(power))
        lo, hi = ks[max(0, k - 1)], ks[min(len(ks) - 1, k + 1)]
        fine = np.linspace(lo, hi, 41) / (size * delta)
        fp = _peak_power(data, found, fo, fine)
        f_peak, p_peak = float(fine[np.argmax(fp)]), float(fp.max())
        fap = _false_alarm(p_peak, n_indep, n_pts)
        period, label = _snap(1.0 / f_peak, span, calendar, index_unit)
        row = dict(period=period, label=label, power=p_peak, fap=fap, kept=False, why="")
        out.table.append(row)
        if fap >= FAP:
            row["why"] = f"not significant (false-alarm probability {fap:.2g} >= {FAP:g})"
            break
        base = _harmonic_of(1.0 / f_peak, found, span)
        if base is not None:  # a harmonic of a period already found: that period needs more harmonics
            i, m = base
            row["why"] = f"harmonic {m} of {found[i]:.4g}"
            fo[i] = max(fo[i], min(m, _max_order(found[i], gap, max_order)))
            continue
        if any(abs(1.0 / period - 1.0 / q) <= 1.0 / span for q in found):
            row["why"] = "within the resolution of a period already found"
            continue
        if period > span / 2:
            row["why"] = "the data span fewer than two cycles"
            break
        found.append(period)
        fo.append(min(3, _max_order(period, gap, max_order)))
        row["why"] = "significant"
    # held-out check, in order of power, under the weights the significant candidates imply
    significant = [r["period"] for r in out.table if r["why"] == "significant"]
    judge = _Judge(data, _horizon(significant, span, gap), halflife_of(significant), 1 if degree is None else degree)
    kept: list = []
    best = judge.error([], [])
    for row in out.table:
        if row["why"] != "significant":
            continue
        trial = kept + [row["period"]]
        to = [min(3, _max_order(p, gap, max_order)) for p in trial]
        e = judge.error(trial, to)
        if math.isfinite(e) and (not math.isfinite(best) or e < best * (1 - MIN_GAIN)):
            kept.append(row["period"])
            best = e
            row["kept"], row["why"] = True, "significant and lowers the held-out error"
        else:
            row["why"] = "significant but does not lower the held-out error"
    kept.sort(reverse=True)
    out.periods = kept
    judge.halflife = halflife_of(kept)
    if orders is None:
        out.orders = choose_orders(judge, kept, gap, max_order) if kept else []
    else:
        out.orders = [int(min(o, _max_order(p, gap, max_order))) for p, o in zip(kept, orders)]
    out.degree = choose_degree(judge, kept, out.orders) if degree is None else degree
    return out


def _false_alarm(power: float, n_indep: float, n_pts: float) -> float:
    """False-alarm probability ``M (1 - p)^((N - 3) / 2)`` of a peak of normalised power ``p`` among ``M``
    independent frequencies of a periodogram of ``N`` points (white noise), capped at 1."""
    return min(1.0, n_indep * (1.0 - min(power, 1 - 1e-12)) ** ((n_pts - 3) / 2))


def _horizon(periods: list, span: float, gap: float) -> float:
    """How far the held-out check forecasts: one cycle of the longest period, else a tenth of the span."""
    h = max(periods) if periods else 0.1 * span
    return float(min(max(h, 4 * gap), HOLDOUT * span))


def fit_fixed(times: list, values: list, periods: list, *, gap: float, max_order: int = 10, halflife_of=None,
              orders: Optional[list] = None, degree: Optional[int] = None, random_state: int = 0) -> Seasons:
    """Harmonics (``orders`` None) and trend degree (``degree`` None) for user-given ``periods``, chosen by the
    held-out check of :func:`detect_seasons`."""
    halflife_of = halflife_of or (lambda periods: None)
    data = _Data(times, values, np.random.RandomState(random_state))
    out = Seasons(periods=list(periods), orders=list(orders) if orders is not None else [1] * len(periods),
                  degree=1 if degree is None else degree)
    if not data.items:
        return out
    span = max(tt[-1] - tt[0] for tt, _ in data.items)
    judge = _Judge(data, _horizon(list(periods), span, gap), halflife_of(list(periods)), out.degree)
    if orders is None and periods:
        out.orders = choose_orders(judge, list(periods), gap, max_order)
    if degree is None:
        out.degree = choose_degree(judge, list(periods), out.orders)
    return out
