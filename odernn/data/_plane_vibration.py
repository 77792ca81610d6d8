"""Plane vibration (F-16 ground vibration test) with the HBNODE protocol (Xia et al. 2021, Sec. 5.3).

The file ``plane_vibration/pv.csv`` holds 73,728 rows (9 periods x 8,192 samples at 400 Hz) of five attributes:
force, voltage and three accelerations (the ``Fs`` column and the trailing empty column are ignored).

Protocol, reproducing the official code (``pvdat.py`` of hedixia/HeavyBallNODE) draw for draw:

1. ``rng = numpy.random.RandomState(1)``. The official code first draws (and multiplies by 0) a Gaussian noise
   array of the data's shape, ``rng.standard_normal((73728, 5))``; those draws are consumed here too so that the
   same stamps are kept.
2. The last 100 stamps are held back (so that forecasts never run past the file): of the first
   ``73,628`` stamps ``int(73,628 * 0.9) = 66,265`` are kept, ``rng.choice(73628, 66265, replace=False)``, sorted.
3. The first ``int(0.5 * 66,265) = 33,132`` kept stamps are the training split, the next
   ``int(0.25 * 66,265) = 16,566`` the validation split, the last ``16,567`` the test split.
4. Each split is cut into non-overlapping segments of 65 consecutive kept stamps ``s_0 < ... < s_64`` (leftover
   stamps at the end of a split are unused): 509 / 254 / 254 segments.

Normalisation: the official code standardised with the mean and std of the *whole* series, which leaks test
data into training. Here the mean and (population) std are computed on the training split's kept stamps only and
applied to every split, when asked for (``normalize=True``; the default, as for every loader, is raw values).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ._csv import read_columns
from ._normalized import NormalizedDataset, NormalizeLike, resolve_normalize
from ._root import ensure_dataset
from ._schema import Item
from ._stamps import drop_stamps
from ._validate import training_stats
from ._time import sample_times

__all__ = ["PlaneVibration", "plane_vibration"]

COLUMNS = ("Force", "Voltage", "Acceleration1", "Acceleration2", "Acceleration3")
SAMPLE_RATE_HZ = 400.0
SEED = 1
HOLD_BACK = 100
DROP_FRACTION = 0.1
INPUT_LEN = 64
FORECAST_LEN = 8
SPLITS = ("train", "valid", "test")


def read_pv_csv(path: str | os.PathLike[str]) -> np.ndarray:
    """Read ``pv.csv``: float64 array ``(73728, 5)`` of the columns ``COLUMNS``.

    Raises:
        ValueError: If the header does not start with the expected five column names.
    """
    return read_columns(path, COLUMNS)


@dataclass(frozen=True)
class _Protocol:
    data: np.ndarray  # (N, 5) float64, raw
    stamps: dict[str, np.ndarray]  # kept stamps of each split, sorted
    segments: dict[str, np.ndarray]  # (n_segments, 65) int64 stamps


def kept_stamps(n_rows: int, n_features: int = len(COLUMNS)) -> np.ndarray:
    """Stamps kept by the protocol for a file of ``n_rows`` rows, sorted ``int64`` of shape ``(k,)``."""
    rng = np.random.RandomState(SEED)
    rng.standard_normal((n_rows, n_features))  # drawn (and multiplied by 0) by the official code; consume it
    return drop_stamps(n_rows - HOLD_BACK, DROP_FRACTION, generator=rng, method="exact")


def split_stamps(stamps: np.ndarray) -> dict[str, np.ndarray]:
    """Split sorted kept stamps 2 : 1 : 1 the way the official code rounds (train and valid floored)."""
    n = stamps.shape[0]
    n_train, n_valid = int(0.5 * n), int(0.25 * n)
    n_test = n - n_train - n_valid
    return {"train": stamps[:n_train], "valid": stamps[n_train:n - n_test], "test": stamps[n - n_test:]}


@lru_cache(maxsize=4)
def _protocol(path: str, size: int, mtime_ns: int) -> _Protocol:
    del size, mtime_ns
    data = read_pv_csv(path)
    stamps = split_stamps(kept_stamps(data.shape[0], data.shape[1]))
    seg_len = INPUT_LEN + 1
    segments = {}
    for split, lab in stamps.items():
        n_seg = lab.shape[0] // seg_len
        segments[split] = lab[:n_seg * seg_len].reshape(n_seg, seg_len)
    return _Protocol(data, stamps, segments)


class PlaneVibration(NormalizedDataset):
    """Plane-vibration segments of one split (see the module docstring for the protocol).

    For segment ``k`` with kept stamps ``s_0 < s_1 < ... < s_64`` (sample indices into the 400 Hz file) the item
    is an :class:`~odernn.data.Item` (times in samples by default, see ``time_unit``):

    - ``"x"``: float32 ``(64, 5)``, values at the input stamps ``s_0 .. s_63``; ``"mask"`` bool, all True.
    - ``"t"``: float32 ``(64,)``, the input times ``s_0 .. s_63``; absolute, strictly increasing.
    - ``"x_next"``: float32 ``(64, 5)``, next-step targets: values at ``s_1 .. s_64`` (the next *kept* stamp of
      each input; the official code's training target); ``"t_next"`` ``(64,)``: their times ``s_1 .. s_64``
      (``t_next - t`` is the official code's time input); ``"mask_next"`` all True.
    - ``"x_future"``: float32 ``(8, 5)``, forecast targets: the raw samples ``s_64, s_64 + 1, ..., s_64 + 7``
      (8 consecutive samples of the file starting at the segment's last stamp, whether kept or not);
      ``"t_future"`` ``(8,)``: their times ``s_64 + 0 .. 7``, all strictly after ``t[-1] = s_63``;
      ``"mask_future"`` all True.

    Attributes:
        split: ``"train"``, ``"valid"`` or ``"test"``.
        segments: int64 ``(n_segments, 65)``, the stamps of each segment.
        mean, std: float64 ``(5,)`` statistics of the training split's kept stamps.
        normalization: The :class:`~odernn.data.Normalization` in use, or ``None`` (raw values).
        sample_rate: 400.0 (Hz), to convert times to seconds.
        time_unit: ``"sample"`` or a unit of :func:`~odernn.data.parse_time_unit`.
    """

    sample_rate = SAMPLE_RATE_HZ
    columns = COLUMNS

    def __init__(self, proto: _Protocol, split: str, *, normalize: NormalizeLike, time_unit: Any = "sample") -> None:
        self.split = split
        self.segments = proto.segments[split]
        train = proto.data[proto.stamps["train"]]
        self.mean, self.std = training_stats(train, "plane_vibration training split")
        self.normalization = resolve_normalize(normalize)
        self.time_unit = time_unit
        self._values = self.normalize_values(proto.data).astype(np.float32)
        self._times = sample_times(np.arange(proto.data.shape[0] + FORECAST_LEN), SAMPLE_RATE_HZ,
                                   time_unit).astype(np.float32)
        self._offsets = np.arange(FORECAST_LEN, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.segments.shape[0])

    def __getitem__(self, k: int) -> Item:
        if not -len(self) <= k < len(self):
            raise IndexError(f"segment index {k} out of range for {len(self)} segments")
        seg = self.segments[k]
        future = seg[-1] + self._offsets
        x_next, t_next = torch.from_numpy(self._values[seg[1:]]), torch.from_numpy(self._times[seg[1:]])
        x_future = torch.from_numpy(self._values[future])
        observed = torch.ones(INPUT_LEN, len(COLUMNS), dtype=torch.bool)
        return {
            "x": torch.from_numpy(self._values[seg[:-1]]),
            "t": torch.from_numpy(self._times[seg[:-1]]),
            "mask": observed,
            "x_next": x_next,
            "t_next": t_next,
            "mask_next": observed.clone(),
            "x_future": x_future,
            "t_future": torch.from_numpy(self._times[future]),
            "mask_future": torch.ones(FORECAST_LEN, len(COLUMNS), dtype=torch.bool),
        }

    def __repr__(self) -> str:
        return f"PlaneVibration(split={self.split!r}, segments={len(self)}, normalize={self.normalize})"


def plane_vibration(
    split: Literal["train", "valid", "test"],
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    *,
    normalize: NormalizeLike = False,
    time_unit: Any = "sample",
) -> PlaneVibration:
    """Plane-vibration segments under the HBNODE protocol: 509 / 254 / 254 for train / valid / test.

    The CSV is parsed once per process and kept in memory.

    Args:
        split: ``"train"``, ``"valid"`` or ``"test"``.
        root: Data root holding ``plane_vibration/pv.csv`` (default ``$ODERNN_DATA``, else the user cache).
        download: Download the file if missing (verified by SHA-256).
        normalize: ``False`` (default): raw values; ``True``: standardise with the training split's mean and std
            (the HBNODE protocol, without its test leak); or a :class:`~odernn.data.Normalization`.
        time_unit: ``"sample"`` (default: times are sample indices) or a unit of
            :func:`~odernn.data.parse_time_unit` (``"s"``, ``"ms"``, ...).

    Returns:
        A :class:`PlaneVibration` dataset; items ``{"x": (64, 5), "t": (64,), "mask": (64, 5), "x_next": (64, 5),
        "t_next": (64,), "mask_next": (64, 5), "x_future": (8, 5), "t_future": (8,), "mask_future": (8, 5)}``.

    Raises:
        ValueError: Unknown split or time unit, or a file with unexpected columns.
        MissingDataError: File missing and not downloadable.
        ChecksumError: The file differs from the published one.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    normalization = resolve_normalize(normalize)
    sample_times(np.zeros(1), SAMPLE_RATE_HZ, time_unit)  # checks the unit before the file is read
    folder = ensure_dataset("plane_vibration", root=root, download=download)
    path = (Path(folder) / "pv.csv").resolve()
    st = path.stat()
    return PlaneVibration(_protocol(str(path), st.st_size, st.st_mtime_ns), split, normalize=normalization or False,
                          time_unit=time_unit)
