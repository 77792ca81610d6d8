"""Making series irregular: :func:`drop_stamps` removes a fraction of the time stamps with a seeded generator
(the benchmark protocols use it with the exact generators of the reference code)."""

from __future__ import annotations

from typing import Any, Literal, Sequence, Union

import numpy as np
import pandas as pd
import torch

__all__ = ["drop_stamps"]

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
