"""Tools to make series irregular and to describe how irregular they are.

:func:`drop_stamps` removes a fraction of the time stamps with a seeded generator (the benchmark protocols use it
with the exact generators of the reference code); :func:`sampling_stats` reports the sampling of one or several
series: count, span, gap statistics and, given a mask, the fraction of missing values per feature.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence, Union

import numpy as np
import pandas as pd
import torch

__all__ = ["drop_stamps", "sampling_stats"]

GeneratorLike = Union[int, np.random.Generator, np.random.RandomState, torch.Generator]


def _n_stamps(n_or_times: Any) -> int:
    if isinstance(n_or_times, (bool, np.bool_)):
        raise TypeError("n_or_times must be an int count or a 1-D sequence of times, got a bool")
    if isinstance(n_or_times, (int, np.integer)):
        n = int(n_or_times)
    else:
        try:
            n = len(n_or_times)
        except TypeError:
            raise TypeError(
                f"n_or_times must be an int count or a 1-D sequence of times, got {type(n_or_times).__name__}"
            ) from None
        ndim = getattr(n_or_times, "ndim", 1)
        if ndim != 1:
            raise ValueError(f"n_or_times must be 1-D, got an array with {ndim} dimensions")
    if n < 0:
        raise ValueError(f"the number of stamps must be >= 0, got {n}")
    return n


def drop_stamps(
    n_or_times: int | Sequence[Any] | np.ndarray | torch.Tensor | pd.Index,
    fraction: float,
    *,
    seed: int | None = None,
    generator: GeneratorLike | None = None,
    method: Literal["exact", "bernoulli"] = "exact",
) -> np.ndarray:
    """Randomly drop a fraction of the time stamps; return the indices that are kept, sorted.

    Two ways to drop:

    - ``"exact"``: keep exactly ``floor(n * (1 - fraction))`` stamps drawn without replacement (the plane
      vibration protocol: ``RandomState.choice(n, k, replace=False)``).
    - ``"bernoulli"``: keep each stamp independently when ``u < 1 - fraction`` for ``u`` uniform in [0, 1), one
      draw per stamp in order (the Walker2D protocol: ``RandomState.rand() < 0.9``).

    Args:
        n_or_times: Number of stamps ``n``, or the times themselves (only their length is used), shape ``(n,)``.
        fraction: Fraction to drop, in ``[0, 1]``.
        seed: Seed of a fresh ``numpy.random.default_rng`` when ``generator`` is not given.
        generator: A ``numpy.random.Generator``, a legacy ``numpy.random.RandomState`` (advanced in place,
            as the reference protocols do), a ``torch.Generator``, or an int seed.
        method: ``"exact"`` or ``"bernoulli"`` (see above).

    Returns:
        Kept indices, ``int64`` array of shape ``(k,)``, strictly increasing. Index the times and values with it:
        ``times[kept]``.

    Raises:
        ValueError: If ``fraction`` is outside ``[0, 1]``, ``method`` is unknown, or both ``seed`` and
            ``generator`` are given.
        TypeError: If ``generator`` is not a supported generator type.

    Example:
        >>> kept = drop_stamps(10, 0.3, seed=0)
        >>> len(kept)
        7
    """
    n = _n_stamps(n_or_times)
    if isinstance(fraction, (bool, np.bool_)) or not isinstance(fraction, (int, float, np.floating, np.integer)):
        raise TypeError(f"fraction must be a float in [0, 1], got {type(fraction).__name__}")
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}; it is the share of stamps to drop")
    if method not in ("exact", "bernoulli"):
        raise ValueError(f"method must be 'exact' or 'bernoulli', got {method!r}")
    if seed is not None and generator is not None:
        raise ValueError("pass either seed= or generator=, not both")
    gen: Any = generator
    if gen is None:
        gen = np.random.default_rng(seed)
    elif isinstance(gen, (int, np.integer)) and not isinstance(gen, (bool, np.bool_)):
        gen = np.random.default_rng(int(gen))
    if not isinstance(gen, (np.random.Generator, np.random.RandomState, torch.Generator)):
        raise TypeError(
            "generator must be a numpy Generator, a numpy RandomState, a torch.Generator or an int seed, "
            f"got {type(generator).__name__}"
        )

    keep_prob = 1.0 - fraction
    if method == "bernoulli":
        if isinstance(gen, torch.Generator):
            u = torch.rand(n, generator=gen, dtype=torch.float64).numpy()
        elif isinstance(gen, np.random.RandomState):
            u = gen.rand(n)
        else:
            u = gen.random(n)
        return np.flatnonzero(u < keep_prob).astype(np.int64)

    k = int(n * keep_prob)
    if isinstance(gen, torch.Generator):
        idx = torch.randperm(n, generator=gen)[:k].numpy()
    else:
        idx = gen.choice(n, k, replace=False) if k > 0 else np.empty(0, dtype=np.int64)
    return np.sort(np.asarray(idx, dtype=np.int64))


def _as_float_times(t: Any, unit: str | pd.Timedelta) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().double().numpy()
    if isinstance(t, pd.Series):
        t = t.to_numpy()
    if isinstance(t, pd.Index):
        t = t.to_numpy()
    arr = np.asarray(t)
    if np.issubdtype(arr.dtype, np.datetime64) or np.issubdtype(arr.dtype, np.timedelta64):
        step = pd.Timedelta(1, unit=unit) if isinstance(unit, str) else pd.Timedelta(unit)
        origin = arr[0] if arr.size else None
        if arr.size == 0:
            return np.empty(0)
        return (arr - origin) / np.timedelta64(step.value, "ns")
    if arr.dtype == object:
        try:
            return _as_float_times(pd.to_datetime(arr), unit)
        except (TypeError, ValueError):
            pass
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"times must be numeric or datetime-like, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _stats_one(t: Any, mask: Any | None, names: Sequence[str] | None, unit: str | pd.Timedelta) -> dict[str, Any]:
    times = _as_float_times(t, unit)
    if times.ndim != 1:
        raise ValueError(f"times must be 1-D per series, got shape {times.shape}")
    n = int(times.size)
    gaps = np.diff(times)
    out: dict[str, Any] = {"n": n}
    if n:
        out.update(start=float(times[0]), end=float(times[-1]), duration=float(times[-1] - times[0]))
    else:
        out.update(start=np.nan, end=np.nan, duration=np.nan)
    if gaps.size:
        mean = float(gaps.mean())
        std = float(gaps.std())
        out.update(
            mean_gap=mean,
            median_gap=float(np.median(gaps)),
            min_gap=float(gaps.min()),
            max_gap=float(gaps.max()),
            std_gap=std,
            cv_gap=std / mean if mean != 0 else np.nan,
        )
    else:
        out.update(mean_gap=np.nan, median_gap=np.nan, min_gap=np.nan, max_gap=np.nan, std_gap=np.nan, cv_gap=np.nan)
    if mask is not None:
        m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        if m.ndim == 1:
            m = m[:, None]
        if m.shape[0] != n:
            raise ValueError(f"mask must have one row per time stamp ({n}), got shape {m.shape}")
        m = m.astype(bool)
        feat = list(names) if names is not None else [str(i) for i in range(m.shape[1])]
        if len(feat) != m.shape[1]:
            raise ValueError(f"names has {len(feat)} entries but the mask has {m.shape[1]} features")
        missing = 1.0 - m.mean(axis=0) if n else np.full(m.shape[1], np.nan)
        for name, frac in zip(feat, missing):
            out[f"missing_{name}"] = float(frac)
    return out


def sampling_stats(
    t: Any,
    mask: Any | None = None,
    *,
    names: Sequence[str] | None = None,
    unit: str | pd.Timedelta = "s",
) -> dict[str, Any] | pd.DataFrame:
    """Describe the sampling of one series, or of several.

    Reported per series: ``n`` (stamps), ``start``, ``end``, ``duration``, the gap statistics ``mean_gap``,
    ``median_gap``, ``min_gap``, ``max_gap``, ``std_gap`` and ``cv_gap`` (coefficient of variation
    ``std_gap / mean_gap``, 0 for a regular grid), and with a mask ``missing_<feature>``: the fraction of stamps at
    which that feature is not observed.

    Args:
        t: Times of one series, shape ``(n,)`` (numeric, tensor, or datetime-like; datetimes are measured in
            ``unit`` from the first stamp), or a list of such series, or an
            :class:`~odernn.data.IrregularSeriesDataset`.
        mask: Observation mask of one series, shape ``(n,)`` or ``(n, F)`` (True = observed), or a list of
            masks, one per series. Ignored for a dataset, which brings its own.
        names: Feature names for the ``missing_*`` entries (default ``"0"``, ``"1"``, ...).
        unit: Unit of gaps for datetime times (``"s"``, ``"min"``, ``"h"``, ``"D"``, ... or a ``pd.Timedelta``).

    Returns:
        A dict for one series; a ``pandas.DataFrame`` with one row per series for several.

    Raises:
        ValueError: If a mask's length differs from its series.
    """
    from ._series import IrregularSeriesDataset

    if isinstance(t, IrregularSeriesDataset):
        rows = []
        for i in range(len(t)):
            times, values = t.series_arrays(i)
            rows.append(_stats_one(times, ~np.isnan(values), t.feature_names, unit))
        return pd.DataFrame(rows, index=pd.Index(t.series_ids, name="series"))
    several = isinstance(t, (list, tuple)) and len(t) > 0 and np.ndim(t[0]) >= 1
    if several:
        if mask is not None and len(mask) != len(t):
            raise ValueError(f"got {len(t)} series but {len(mask)} masks; pass one mask per series")
        rows = [_stats_one(ti, None if mask is None else mask[i], names, unit) for i, ti in enumerate(t)]
        return pd.DataFrame(rows, index=pd.RangeIndex(len(rows), name="series"))
    return _stats_one(t, mask, names, unit)
