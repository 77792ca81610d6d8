"""Silverbox (an electronic Duffing oscillator; Wigren & Schoukens 2013), the SNLS80mV record.

``silverbox/sb.csv`` holds 131,072 rows of ``V1`` (input voltage) and ``V2`` (output voltage), sampled at
``10**7 / 2**14 = 610.3515625`` Hz. The HBNODE paper uses it for its initialisation study: integrate each model over
``t`` in ``[0, 64)`` with the input ``V1(t)`` interpolated between samples, and plot ``||h(t)||``. Its reference
code centres each voltage and multiplies it by 100, with time in samples:
``silverbox(normalize=Normalization(center=True, scale=100.0))``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._csv import read_columns
from ._normalized import NormalizedDataset, NormalizeLike, resolve_normalize
from ._root import ensure_dataset
from ._schema import Item
from ._validate import training_stats
from ._time import sample_times

__all__ = ["Silverbox", "silverbox"]

COLUMNS = ("V1", "V2")
SAMPLE_RATE_HZ = 1e7 / 2**14  # 610.3515625 Hz


@lru_cache(maxsize=4)
def _read(path: str, size: int, mtime_ns: int) -> np.ndarray:
    del size, mtime_ns
    return read_columns(path, COLUMNS)


class Silverbox(NormalizedDataset):
    """The Silverbox record as one item (default) or as windows.

    Item ``k`` is an :class:`~odernn.data.Item` with

    - ``"t"``: float32 ``(L,)``, times in samples (default) or in ``time_unit``, strictly increasing; absolute,
      i.e. sample ``i`` of the file has time ``i`` (or ``i / 610.3515625`` seconds).
    - ``"x"``: float32 ``(L, 1)``, the input voltage ``V1``; ``"mask"``: bool ``(L, 1)``, all True.
    - ``"y"``: float32 ``(L, 1)``, the output voltage ``V2`` at the same stamps; ``"mask_y"``: all True.

    With ``window=None`` there is one item with the whole record (``L = 131072``); otherwise item ``k`` covers
    samples ``[k * stride, k * stride + window)`` (only full windows).

    Attributes:
        v1, v2: float64 ``(131072,)``, the (optionally normalised) voltages.
        mean, std: float64 ``(2,)`` statistics of ``V1`` and ``V2`` over the record.
        normalization: The :class:`~odernn.data.Normalization` in use, or ``None`` (raw values).
        sample_rate: 610.3515625 (Hz).
        time_unit: ``"sample"`` or a unit of :func:`~odernn.data.parse_time_unit`.
    """

    sample_rate = SAMPLE_RATE_HZ

    def __init__(self, data: np.ndarray, *, window: int | None, stride: int | None, time_unit: Any,
                 normalize: NormalizeLike = False) -> None:
        self.mean, self.std = training_stats(data, "silverbox record")
        self.normalization = resolve_normalize(normalize)
        values = self.normalize_values(data)
        self.v1 = values[:, 0].copy()
        self.v2 = values[:, 1].copy()
        self.time_unit = time_unit
        n = values.shape[0]
        self._t = sample_times(np.arange(n), SAMPLE_RATE_HZ, time_unit)
        self._x = values[:, :1].astype(np.float32)
        self._y = values[:, 1:2].astype(np.float32)
        if window is None:
            self._starts = np.zeros(1, dtype=np.int64)
            self._len = n
        else:
            step = window if stride is None else stride
            self._starts = np.arange(0, n - window + 1, step, dtype=np.int64)
            self._len = window

    def __len__(self) -> int:
        return int(self._starts.shape[0])

    def __getitem__(self, k: int) -> Item:
        if not -len(self) <= k < len(self):
            raise IndexError(f"index {k} out of range for {len(self)} item(s)")
        s = int(self._starts[k])
        e = s + self._len
        return {
            "x": torch.from_numpy(self._x[s:e]),
            "t": torch.from_numpy(self._t[s:e].astype(np.float32)),
            "mask": torch.ones(e - s, 1, dtype=torch.bool),
            "y": torch.from_numpy(self._y[s:e]),
            "mask_y": torch.ones(e - s, 1, dtype=torch.bool),
        }

    def __repr__(self) -> str:
        return f"Silverbox(items={len(self)}, length={self._len}, time_unit={self.time_unit!r})"


def silverbox(
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    *,
    window: int | None = None,
    stride: int | None = None,
    time_unit: Any = "sample",
    normalize: NormalizeLike = False,
    center: bool | None = None,
    scale: float | None = None,
) -> Silverbox:
    """The Silverbox SNLS80mV record: input ``V1`` and output ``V2`` with their sample times.

    Args:
        root: Data root holding ``silverbox/sb.csv`` (default ``$ODERNN_DATA``, else the user cache).
        download: Download the file if missing (verified by SHA-256).
        window: ``None`` for one item with the whole record, else the samples per window.
        stride: Step between window starts (default ``window``).
        time_unit: ``"sample"`` (default: the time of sample ``i`` is ``i``) or a unit of
            :func:`~odernn.data.parse_time_unit` (``"s"``, ``"ms"``, ...).
        normalize: ``False`` (default): raw volts; ``True``: standardise each voltage with its mean and std over
            the record; or a :class:`~odernn.data.Normalization`, e.g. ``Normalization(center=True, scale=100.0)``
            for the reference code's scaling.
        center, scale: Deprecated spelling of ``normalize=Normalization(center=center, scale=scale)``.

    Returns:
        A :class:`Silverbox` dataset; items ``{"t": (L,), "x": (L, 1), "mask": (L, 1), "y": (L, 1),
        "mask_y": (L, 1)}``.

    Raises:
        ValueError: Bad ``window``/``stride``/``time_unit``, or a file with unexpected columns.
        MissingDataError: File missing and not downloadable.
        ChecksumError: The file differs from the published one.
    """
    sample_times(np.zeros(1), SAMPLE_RATE_HZ, time_unit)  # checks the unit before the file is read
    normalization = resolve_normalize(normalize, center, scale)
    for name, val in (("window", window), ("stride", stride)):
        if val is not None and (isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1):
            raise ValueError(f"{name} must be None or a positive int, got {val!r}")
    if stride is not None and window is None:
        raise ValueError("stride= needs window=; with window=None the whole record is one item")
    folder = ensure_dataset("silverbox", root=root, download=download)
    path = (Path(folder) / "sb.csv").resolve()
    st = path.stat()
    data = _read(str(path), st.st_size, st.st_mtime_ns)
    if window is not None and window > data.shape[0]:
        raise ValueError(f"window={window} is longer than the record ({data.shape[0]} samples)")
    return Silverbox(data, window=window, stride=stride, time_unit=time_unit, normalize=normalization or False)
