"""Walker2D kinematic data with the ODE-LSTM protocol (Lechner & Hasani 2020), as used by the HBNODE paper.

Protocol, step by step (the order matters, because one random generator is shared over the splits):

1. Sort the 400 file names ``rollout_000.npy`` ... ``rollout_399.npy`` and shuffle the list with
   ``numpy.random.RandomState(125487).shuffle``.
2. ``n_test = int(0.15 * 400) = 60`` first files are the test split, the files up to ``int(0.25 * 400) = 100``
   the validation split, the remaining 300 the training split (each in shuffled order).
3. Per rollout of ``T`` rows: inputs are rows ``0..T-2``, targets rows ``1..T-1`` (the next raw step).
4. One ``RandomState(891374)`` draws one ``rand()`` per input step, over the training rollouts, then the
   validation rollouts, then the test rollouts; a step is kept when ``rand() < 0.9``. The time value of a kept
   step is the number of raw steps since the previous kept step (the first kept step of a rollout at raw row
   ``r`` gets ``r + 1``).
5. Per rollout with ``K`` kept steps, windows of 64 kept steps start at ``0, 16, 32, ...`` while
   ``start < K - 64`` (``range(0, K - 64, 16)``: a window ending exactly at the last kept step is not used).

This yields 9,684 / 1,272 / 1,937 windows. Values are float32 copies of the float64 files and are not
normalised by default (the ODE-LSTM and HBNODE papers report MSE on raw values).

Exactly the 400 registered files are read, each verified by SHA-256: other files in the folder are ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from pathlib import PurePosixPath
from typing import Literal

import numpy as np
import torch

from ._normalized import NormalizedDataset, NormalizeLike, resolve_normalize
from ._registry import registered_files
from ._root import ensure_dataset
from ._schema import Item
from ._stamps import drop_stamps
from ._validate import training_stats

__all__ = ["Walker2d", "walker2d"]

SHUFFLE_SEED = 125487
DROP_SEED = 891374
DROP_FRACTION = 0.1  # keep a step when rand() < 1 - 0.1 == 0.9
TEST_FRACTION = 0.15
VALID_FRACTION = 0.10
WINDOW = 64
STRIDE = 16
N_FEATURES = 17
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class _Split:
    files: tuple[str, ...]
    x: tuple[np.ndarray, ...]  # per rollout, kept input rows, (K, 17) float32
    y: tuple[np.ndarray, ...]  # per rollout, next raw rows, (K, 17) float32
    dt: tuple[np.ndarray, ...]  # per rollout, raw steps since previous kept step, (K,) float32
    windows: np.ndarray  # (n_windows, 2) int64: rollout index, start


def _split_files(names: list[str]) -> dict[str, list[str]]:
    names = sorted(names)
    np.random.RandomState(SHUFFLE_SEED).shuffle(names)
    n_test = int(TEST_FRACTION * len(names))
    n_test_valid = int((TEST_FRACTION + VALID_FRACTION) * len(names))
    return {"test": names[:n_test], "valid": names[n_test:n_test_valid], "train": names[n_test_valid:]}


def registered_names() -> list[str]:
    """Base names of the registered rollout files (``rollout_000.npy`` ... ``rollout_399.npy``)."""
    return [PurePosixPath(f.path).name for f in registered_files("walker2d")]


@lru_cache(maxsize=4)
def _protocol(folder: str, stamp: tuple[tuple[str, int, int], ...]) -> dict[str, _Split]:
    """Run the protocol once for a folder (``stamp`` = file names, sizes, mtimes, so a changed file reloads)."""
    groups = _split_files([name for name, _, _ in stamp])
    rng = np.random.RandomState(DROP_SEED)
    out: dict[str, _Split] = {}
    for split in SPLITS:  # train, then valid, then test: the generator is shared in this order
        xs, ys, dts, wins = [], [], [], []
        for k, name in enumerate(groups[split]):
            arr = np.load(os.path.join(folder, name))
            if arr.ndim != 2 or arr.shape[1] != N_FEATURES:
                raise ValueError(f"{name}: expected a (T, {N_FEATURES}) array, got shape {arr.shape}")
            inputs = arr[:-1].astype(np.float32)
            targets = arr[1:].astype(np.float32)
            kept = drop_stamps(inputs.shape[0], DROP_FRACTION, generator=rng, method="bernoulli")
            dt = np.diff(kept, prepend=-1).astype(np.float32)
            xs.append(inputs[kept])
            ys.append(targets[kept])
            dts.append(dt)
            for start in range(0, kept.shape[0] - WINDOW, STRIDE):
                wins.append((k, start))
        out[split] = _Split(
            tuple(groups[split]), tuple(xs), tuple(ys), tuple(dts), np.asarray(wins, dtype=np.int64).reshape(-1, 2)
        )
    return out


class Walker2d(NormalizedDataset):
    """Walker2D windows of one split under the ODE-LSTM protocol (see the module docstring).

    Item ``k`` is an :class:`~odernn.data.Item`:

    - ``"x"``: float32 ``(64, 17)``, the 64 kept input steps of the window; ``"mask"``: bool ``(64, 17)``, all True.
    - ``"dt"``: float32 ``(64,)``, raw steps since the previous kept step (1, 2, 3, ...), the ODE-LSTM time input.
    - ``"t"``: float32 ``(64,)``, absolute observation times ``cumsum(dt)``, measured from the kept step just
      before the window (so ``t[0] = dt[0]``, ``t[i] - t[i-1] = dt[i]``); strictly increasing, in raw steps.
    - ``"x_next"``: float32 ``(64, 17)``, the next raw step after each input step (raw row ``r + 1`` for input row
      ``r``, whether or not row ``r + 1`` was kept); ``"t_next"`` ``(64,)`` = ``t + 1``; ``"mask_next"`` all True.

    Attributes:
        split: ``"train"``, ``"valid"`` or ``"test"``.
        files: Rollout file names of the split, in protocol order.
        mean, std: float32 ``(17,)`` statistics of the training inputs (kept steps of the training rollouts),
            applied to ``x`` and ``x_next`` when a normalisation is chosen.
        normalization: The :class:`~odernn.data.Normalization` in use, or ``None`` (raw values).
    """

    def __init__(self, split: _Split, name: str, train: _Split, *, normalize: NormalizeLike) -> None:
        self.split = name
        self._data = split
        self.files = split.files
        mean, std = training_stats(np.concatenate(train.x, axis=0), "walker2d training split")
        self.mean, self.std = mean.astype(np.float32), std.astype(np.float32)
        self.normalization = resolve_normalize(normalize)

    def __len__(self) -> int:
        return int(self._data.windows.shape[0])

    def __getitem__(self, k: int) -> Item:
        if not -len(self) <= k < len(self):
            raise IndexError(f"window index {k} out of range for {len(self)} windows")
        r, s = self._data.windows[k]
        x = self.normalize_values(self._data.x[r][s:s + WINDOW])
        x_next = torch.from_numpy(np.array(self.normalize_values(self._data.y[r][s:s + WINDOW]), dtype=np.float32))
        dt = self._data.dt[r][s:s + WINDOW]
        t = np.cumsum(dt, dtype=np.float32)
        return {
            "x": torch.from_numpy(np.array(x, dtype=np.float32)),
            "t": torch.from_numpy(t),
            "mask": torch.ones(WINDOW, N_FEATURES, dtype=torch.bool),
            "dt": torch.from_numpy(np.array(dt, dtype=np.float32)),
            "x_next": x_next,
            "t_next": torch.from_numpy(t + np.float32(1.0)),
            "mask_next": torch.ones(WINDOW, N_FEATURES, dtype=torch.bool),
        }

    def __repr__(self) -> str:
        return f"Walker2d(split={self.split!r}, windows={len(self)}, rollouts={len(self.files)})"


def walker2d(
    split: Literal["train", "valid", "test"],
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    *,
    normalize: NormalizeLike = False,
) -> Walker2d:
    """Walker2D windows under the ODE-LSTM protocol: 9,684 / 1,272 / 1,937 for train / valid / test.

    The 400 rollouts are read once per process (all three splits are computed together, because the
    step-dropping generator is shared over them) and kept in memory; items are sliced on access.

    Args:
        split: ``"train"``, ``"valid"`` or ``"test"``.
        root: Data root holding ``walker2d/rollout_NNN.npy`` (default ``$ODERNN_DATA``, else the user cache).
        download: Download missing files (verified by SHA-256).
        normalize: ``False`` (default): raw values, as in the reference protocol; ``True``: standardise ``x`` and
            ``x_next`` with the mean and std of the training inputs; or a :class:`~odernn.data.Normalization`.

    Returns:
        A :class:`Walker2d` dataset; items ``{"x": (64, 17), "t": (64,), "mask": (64, 17), "dt": (64,),
        "x_next": (64, 17), "t_next": (64,), "mask_next": (64, 17)}``.

    Raises:
        ValueError: Unknown split.
        MissingDataError: Files missing and not downloadable.
        ChecksumError: A file differs from the published one.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    normalization = resolve_normalize(normalize)
    folder = Path(ensure_dataset("walker2d", root=root, download=download)).resolve()
    stamp = tuple((name, (folder / name).stat().st_size, (folder / name).stat().st_mtime_ns)
                  for name in registered_names())
    splits = _protocol(str(folder), stamp)
    return Walker2d(splits[split], split, splits["train"], normalize=normalization or False)

