"""Exact parsing of the benchmark CSV files (every value correctly rounded, as Python's ``float()`` does)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["read_columns"]


def _exact_parser_kwargs() -> dict[str, str]:
    # pandas >= 3.1 always parses floats exactly (and deprecates the option); older versions need round_trip.
    major, minor = (int(p) for p in pd.__version__.split(".")[:2])
    return {} if (major, minor) >= (3, 1) else {"float_precision": "round_trip"}


def read_columns(path: str | os.PathLike[str], names: Sequence[str]) -> np.ndarray:
    """Read the first ``len(names)`` columns of a CSV with a header row as float64, shape ``(rows, len(names))``.

    Raises:
        ValueError: If the header's first columns are not ``names`` (in order).
    """
    frame = pd.read_csv(path, usecols=range(len(names)), **_exact_parser_kwargs())
    found = tuple(str(c) for c in frame.columns)
    if found != tuple(names):
        raise ValueError(f"{path}: expected the columns {list(names)}, got {list(found)}")
    return frame.to_numpy(dtype=np.float64)
