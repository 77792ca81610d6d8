"""Any user's irregular series as a PyTorch dataset: from pandas or arrays, cut into windows.

Three ways in, one representation: every series is a pair ``(times, values)`` with ``times`` float64 of shape
``(n,)``, strictly increasing, and ``values`` of shape ``(n, F)`` where NaN marks a value that was not observed.

- :meth:`IrregularSeriesDataset.from_frame`: one wide DataFrame indexed by time (``DatetimeIndex`` or numeric).
- :meth:`IrregularSeriesDataset.from_long`: a long DataFrame with an id column, a time column and value columns.
- :meth:`IrregularSeriesDataset.from_arrays`: a list of ``(times, values)`` pairs.

All three turn times into floats with :func:`~odernn.data.encode_times`; datetimes keep their
:class:`~odernn.data.TimeEncoder` so that model outputs at float times map back to timestamps.
:meth:`IrregularSeriesDataset.windows` cuts series into windows (length, stride, horizon; see ``_windows``);
batch them with :func:`~odernn.data.collate_irregular`. Items follow :class:`~odernn.data.Item`.

Precision: times stay float64 inside the dataset and are cast to the item dtype (float32 by default) only when an
item is made. When that cast would change a gap by more than 0.1 % (for example epoch seconds, about 1.7e9, in
float32), every series is first shifted in float64 to start at 0; the shifts are kept in ``time_offsets``.
"""

from __future__ import annotations

from typing import Any, Hashable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ._sampling import stats_table
from ._schema import Item
from ._time import TimeEncoder, encode_times, time_kind
from ._validate import (cast_keeps_gaps, check_times, check_values, numeric_block, real_values, require_column,
                        select_columns)
from ._windows import SeriesWindows, window_spans

__all__ = ["IrregularSeriesDataset"]


def _encode(
    times: Any,
    time_unit: Any,
    origin: Any,
    *,
    what: str,
    datetime_noun: str,
    type_message: str,
) -> tuple[np.ndarray, TimeEncoder | None]:
    """Float64 times and encoder of one constructor's time stamps, with that constructor's wording in errors.

    Args:
        times: The stamps, 1-D.
        time_unit, origin: As given to the constructor.
        what: What holds the times (``"the frame's index"``, ``"time_col='t'"``, ``"the times"``).
        datetime_noun: How the datetime form is called there (``"a DatetimeIndex"``, ``"datetimes"``).
        type_message: Start of the ``TypeError`` for times that are neither datetimes nor numbers.
    """
    try:
        kind = time_kind(times)
    except TypeError:
        kind = "other"
    if kind not in ("datetime", "numeric"):
        raise TypeError(f"{type_message}, got dtype {getattr(times, 'dtype', type(times).__name__)}")
    if kind == "datetime":
        if time_unit is None:
            raise ValueError(
                f"{what} holds datetimes{' in ' + datetime_noun if datetime_noun.startswith('a ') else ''}, so "
                "time_unit= is required to turn timestamps into floats; pass e.g. time_unit='s', 'min', 'h' or 'D'"
            )
        return encode_times(times, unit=time_unit, origin=origin)
    if time_unit is not None or origin is not None:
        raise ValueError(
            f"time_unit=/origin= apply to {datetime_noun}, but {what} is numeric ({times.dtype}); numeric times are "
            "used as they are, so leave both unset"
        )
    return encode_times(times)


class IrregularSeriesDataset(Dataset):
    """Irregularly sampled multivariate series (NaN = not observed) as a PyTorch dataset.

    Build it with :meth:`from_frame`, :meth:`from_long` or :meth:`from_arrays`. Item ``i`` is the whole series
    (an :class:`~odernn.data.Item`):

    - ``"x"``: values, shape ``(n_i, F)``, 0 where not observed.
    - ``"t"``: times, shape ``(n_i,)``, strictly increasing (in the encoder's unit for datetimes), minus
      ``time_offsets[i]``.
    - ``"mask"``: bool, shape ``(n_i, F)``, True where observed.
    - ``"series"``: ``i`` (the id is ``series_ids[i]``).

    Use :meth:`windows` for fixed-length training windows and :func:`~odernn.data.collate_irregular` to batch
    them.

    Args:
        times: One float64 array of shape ``(n_i,)`` per series, strictly increasing.
        values: One float array of shape ``(n_i, F)`` per series, NaN where not observed.
        feature_names: ``F`` names.
        series_ids: One id per series.
        time_encoder: The fitted :class:`~odernn.data.TimeEncoder` when times came from datetimes, else ``None``.
        dtype: Floating dtype of the tensors returned (default ``torch.float32``).

    Attributes:
        feature_names: List of ``F`` feature names.
        series_ids: List of series ids (the frame's id values, or ``0..N-1``).
        time_encoder: :class:`~odernn.data.TimeEncoder` or ``None`` (numeric times).
        time_offsets: float64 ``(N,)``: what was subtracted from each series' times before the cast to ``dtype``.
            All zeros when ``dtype`` holds the times with their gaps; otherwise each series' first time (see the
            module docstring). The time of item value ``t[j]`` is ``t[j] + time_offsets[i]`` (feed that to
            ``time_encoder.to_datetime`` for timestamps).

    Raises:
        TypeError: For complex values or times (the imaginary part would be lost).
        ValueError: For NaN / unsorted / duplicate times, empty or all-NaN series, inf values, values whose squares
            overflow in ``dtype`` or float64 (beyond about 1.8e19 for float32, 1.3e154 for float64: losses and
            variances of them are inf), inconsistent shapes, or times whose gaps ``dtype`` cannot hold even after
            the shift (use ``torch.float64`` or a coarser unit).
    """

    def __init__(
        self,
        times: Sequence[np.ndarray],
        values: Sequence[np.ndarray],
        *,
        feature_names: Sequence[str],
        series_ids: Sequence[Hashable] | None = None,
        time_encoder: TimeEncoder | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if len(times) != len(values):
            raise ValueError(f"got {len(times)} time arrays but {len(values)} value arrays")
        if len(times) == 0:
            raise ValueError("no series given; pass at least one series")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch dtype, got {dtype!r}")
        self.feature_names = [str(f) for f in feature_names]
        self.series_ids = list(series_ids) if series_ids is not None else list(range(len(times)))
        if len(self.series_ids) != len(times):
            raise ValueError(f"got {len(self.series_ids)} series ids for {len(times)} series")
        self.time_encoder = time_encoder
        self.dtype = dtype
        self._times: list[np.ndarray] = []
        self._values: list[np.ndarray] = []
        n_feat = len(self.feature_names)
        for i, (t, v) in enumerate(zip(times, values)):
            where = f"series {self.series_ids[i]!r}"
            t = real_values(t, f"{where} times").reshape(-1)
            v = real_values(v, where)
            if v.ndim == 1:
                v = v[:, None]
            if v.ndim != 2 or v.shape[0] != t.shape[0]:
                raise ValueError(f"{where}: values must have shape (n, F) with n = {t.shape[0]} times, got {v.shape}")
            if v.shape[1] != n_feat:
                raise ValueError(f"{where}: expected {n_feat} features {self.feature_names}, got {v.shape[1]}")
            check_times(t, t, where, "sort the series by time first")
            check_values(v, where, dtype, t, self.feature_names)
            self._times.append(t)
            self._values.append(v)
        self.time_offsets = self._offsets()

    def _offsets(self) -> np.ndarray:
        zeros = np.zeros(len(self._times))
        if all(cast_keeps_gaps(t, self.dtype) for t in self._times):
            return zeros
        firsts = np.array([t[0] for t in self._times])
        for i, t in enumerate(self._times):
            if not cast_keeps_gaps(t - firsts[i], self.dtype):
                gaps = np.diff(t)
                raise ValueError(
                    f"series {self.series_ids[i]!r}: its times span {t[-1] - t[0]:.6g} with gaps as small as "
                    f"{gaps.min():.6g}, which {self.dtype} cannot hold (a gap would change by more than 0.1 %); "
                    "pass dtype=torch.float64, or use a coarser time_unit"
                )
        return firsts

    # ---- constructors ----------------------------------------------------------------------------------------

    @classmethod
    def from_frame(
        cls,
        df: pd.DataFrame | pd.Series,
        *,
        columns: Sequence[Hashable] | None = None,
        time_unit: str | pd.Timedelta | None = None,
        origin: Any | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> "IrregularSeriesDataset":
        """One series from a wide DataFrame indexed by time.

        Rows whose selected values are all NaN carry no observation and are dropped; every other NaN is kept as
        "not observed" (mask False).

        Args:
            df: Frame (or Series) indexed by a ``DatetimeIndex`` or a numeric index, one column per feature.
            columns: Value columns to use (default: all).
            time_unit: Required for a ``DatetimeIndex``: unit of the float times, in the vocabulary of
                :func:`~odernn.data.parse_time_unit` (``"s"``, ``"min"``, ``"h"``, ``"D"``, ``"15min"``, a
                ``pd.Timedelta``, ...). Must be ``None`` for a numeric index.
            origin: Timestamp mapped to 0.0 (default: the first timestamp).
            dtype: Floating dtype of the returned tensors.

        Returns:
            A dataset with one series (id 0).

        Raises:
            TypeError: Non-numeric value columns, or an index that is neither datetime nor numeric.
            ValueError: Missing columns, NaN / unsorted / duplicate timestamps, an all-NaN series, or a
                ``time_unit`` that does not fit the index.
        """
        if isinstance(df, pd.Series):
            df = df.to_frame(name=df.name if df.name is not None else "value")
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"df must be a pandas DataFrame or Series, got {type(df).__name__}")
        cols = select_columns(df, columns, (), "columns")
        index = df.index
        times, encoder = _encode(
            index, time_unit, origin, what="the frame's index", datetime_noun="a DatetimeIndex",
            type_message=(
                f"the frame's index must be a DatetimeIndex or numeric times (got {type(index).__name__}); set it "
                "with df.set_index(pd.to_datetime(df[<time column>]))"
            ),
        )
        check_times(times, list(index), "frame", "sort the frame with df.sort_index()")
        values = numeric_block(df[cols], "frame")
        keep = ~np.isnan(values).all(axis=1)
        if not keep.any():
            raise ValueError("frame: all values are NaN, so the series has no observation; check the columns")
        check_values(values[keep], "frame", dtype, list(index[keep]), cols)
        return cls([times[keep]], [values[keep]], feature_names=[str(c) for c in cols], series_ids=[0],
                   time_encoder=encoder, dtype=dtype)

    @classmethod
    def from_long(
        cls,
        df: pd.DataFrame,
        *,
        id_col: Hashable,
        time_col: Hashable,
        value_cols: Sequence[Hashable] | None = None,
        time_unit: str | pd.Timedelta | None = None,
        origin: Any | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> "IrregularSeriesDataset":
        """Several series from a long DataFrame: one row per (series, time stamp).

        Series keep the order in which their ids first appear. Within a series rows must be sorted by time
        (``df.sort_values([id_col, time_col])``); rows whose values are all NaN are dropped. All series share one
        :class:`~odernn.data.TimeEncoder` whose default origin is the earliest timestamp of the frame, so times
        are comparable across series.

        Args:
            df: Long frame.
            id_col: Column identifying the series.
            time_col: Column of times (datetime or numeric).
            value_cols: Value columns (default: every column except ``id_col`` and ``time_col``).
            time_unit: Required when ``time_col`` holds datetimes (see :meth:`from_frame`).
            origin: Timestamp mapped to 0.0 (default: earliest timestamp).
            dtype: Floating dtype of the returned tensors.

        Raises:
            TypeError: Non-numeric value columns or a time column that is neither datetime nor numeric.
            ValueError: Missing columns, NaN times, unsorted or duplicate times within a series, all-NaN series.
        """
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
        require_column(df, id_col, "id_col")
        require_column(df, time_col, "time_col")
        cols = select_columns(df, value_cols, (id_col, time_col), "value_cols")
        overlap = [c for c in cols if c in (id_col, time_col)]
        if overlap:
            raise ValueError(f"value_cols must not contain id_col or time_col, got {overlap}")
        if not cols:
            raise ValueError("no value columns: the frame has only the id and time columns")
        if df[id_col].isna().any():
            raise ValueError(f"id_col={id_col!r} has missing ids at rows {list(df.index[df[id_col].isna()][:5])}")
        tcol = df[time_col]
        times_all, encoder = _encode(
            tcol, time_unit, origin, what=f"time_col={time_col!r}", datetime_noun="datetimes",
            type_message=(f"time_col={time_col!r} must hold datetimes or numbers; convert it with "
                          "pd.to_datetime(df[time_col]) or pd.to_numeric(df[time_col])"),
        )
        nan_t = np.flatnonzero(np.isnan(times_all))
        if nan_t.size:
            rows = list(df.index[nan_t[:5]])
            raise ValueError(
                f"time_col={time_col!r} has {nan_t.size} missing value(s) (NaN/NaT) at rows {rows}; every row "
                "needs a time stamp: drop those rows (df.dropna(subset=[time_col])) or fill them"
            )
        values_all = numeric_block(df[cols], "value_cols")
        codes, uniques = pd.factorize(df[id_col], sort=False)
        times, values, ids = [], [], []
        labels = tcol.to_numpy()
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
        for k, sid in enumerate(uniques):
            rows = order[bounds[k]:bounds[k + 1]]
            where = f"series {sid!r} ({id_col}={sid!r})"
            check_times(times_all[rows], labels[rows], where,
                        f"sort the frame with df.sort_values([{id_col!r}, {time_col!r}])")
            v = values_all[rows]
            keep = ~np.isnan(v).all(axis=1)
            if not keep.any():
                raise ValueError(f"{where}: all values are NaN, so the series has no observation; drop it")
            check_values(v[keep], where, dtype, labels[rows][keep], cols)
            times.append(times_all[rows][keep])
            values.append(v[keep])
            ids.append(sid.item() if isinstance(sid, np.generic) else sid)
        return cls(times, values, feature_names=[str(c) for c in cols], series_ids=ids, time_encoder=encoder,
                   dtype=dtype)

    @classmethod
    def from_arrays(
        cls,
        series: Sequence[tuple[Any, Any]],
        *,
        feature_names: Sequence[str] | None = None,
        ids: Sequence[Hashable] | None = None,
        time_unit: str | pd.Timedelta | None = None,
        origin: Any | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> "IrregularSeriesDataset":
        """Series from ``(times, values)`` pairs.

        Args:
            series: Pairs with ``times`` of shape ``(n_i,)`` (numeric, or datetime-like for all series) and
                ``values`` of shape ``(n_i,)`` or ``(n_i, F)`` (numpy arrays, tensors or lists; NaN = unobserved).
            feature_names: ``F`` names (default ``"0"``, ``"1"``, ...).
            ids: One id per series (default ``0..N-1``).
            time_unit: Required for datetime times (see :meth:`from_frame`).
            origin: Timestamp mapped to 0.0 (default: earliest timestamp over all series).
            dtype: Floating dtype of the returned tensors.

        Raises:
            TypeError: Non-numeric values, or times neither numeric nor datetime.
            ValueError: NaN / unsorted / duplicate times, all-NaN series, inconsistent shapes.
        """
        if isinstance(series, tuple) and len(series) == 2 and not isinstance(series[0], tuple):
            raise TypeError("series must be a list of (times, values) pairs; wrap a single pair as [(times, values)]")
        pairs = list(series)
        if not pairs:
            raise ValueError("series is empty; pass at least one (times, values) pair")
        raw_times, raw_values = [], []
        for i, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"series[{i}] must be a (times, values) pair, got {type(pair).__name__}")
            t, v = pair
            if isinstance(t, torch.Tensor):
                t = t.detach().cpu().numpy()
            if isinstance(v, torch.Tensor):
                v = v.detach().cpu().numpy()
            t = t.to_numpy() if isinstance(t, (pd.Index, pd.Series)) else np.asarray(t)
            v = v.to_numpy() if isinstance(v, (pd.DataFrame, pd.Series)) else np.asarray(v)
            if np.iscomplexobj(v):
                real_values(v, f"series[{i}]")  # raises: the imaginary part would be lost
            if v.dtype == object or not (np.issubdtype(v.dtype, np.number) or v.dtype == bool):
                raise TypeError(f"series[{i}]: values must be numeric, got dtype {v.dtype}")
            if t.ndim != 1:
                raise ValueError(f"series[{i}]: times must be 1-D, got shape {t.shape}")
            raw_times.append(t)
            raw_values.append(v.astype(np.float64))
        kinds = set()
        for t in raw_times:
            try:
                kinds.add(time_kind(t))
            except TypeError:
                kinds.add("other")
        if len(kinds - {"other"}) > 1:
            raise TypeError("times mix datetimes and numbers across series; use one kind for all series")
        flat, encoder = _encode(
            np.concatenate(raw_times), time_unit, origin, what="the times", datetime_noun="datetimes",
            type_message="times must be numeric or datetime64; convert with pd.to_datetime or pd.to_numeric",
        )
        times = np.split(flat, np.cumsum([t.shape[0] for t in raw_times])[:-1])
        n_feat = None
        for i, (t, v) in enumerate(zip(times, raw_values)):
            vv = v[:, None] if v.ndim == 1 else v
            if vv.ndim != 2 or vv.shape[0] != t.shape[0]:
                raise ValueError(f"series[{i}]: values must have shape (n, F) with n = {t.shape[0]}, got {v.shape}")
            n_feat = vv.shape[1] if n_feat is None else n_feat
            if vv.shape[1] != n_feat:
                raise ValueError(f"series[{i}] has {vv.shape[1]} features but series[0] has {n_feat}")
            check_times(t, raw_times[i], f"series[{i}]", "sort each series by time first")
        names = list(feature_names) if feature_names is not None else [str(j) for j in range(n_feat or 0)]
        return cls(times, raw_values, feature_names=names, series_ids=ids, time_encoder=encoder, dtype=dtype)

    # ---- access ----------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._times)

    @property
    def n_features(self) -> int:
        """Number of features ``F``."""
        return len(self.feature_names)

    def lengths(self) -> np.ndarray:
        """Number of stamps of each series, shape ``(N,)``."""
        return np.array([t.shape[0] for t in self._times], dtype=np.int64)

    def series_arrays(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Times (float64, ``(n_i,)``, as encoded, without ``time_offsets``) and values (float64 with NaN,
        ``(n_i, F)``) of series ``i`` (copies)."""
        return self._times[i].copy(), self._values[i].copy()

    def _stamps(self, i: int, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Values, times and mask of stamps ``[lo, hi)`` of series ``i`` as item tensors: ``(k, F)`` in
        ``dtype`` with 0 where unobserved, ``(k,)`` in ``dtype`` (minus ``time_offsets[i]``, in float64 before
        the cast) and bool ``(k, F)``."""
        v = self._values[i][lo:hi]
        mask = ~np.isnan(v)
        t = self._times[i][lo:hi] - self.time_offsets[i]
        return (
            torch.as_tensor(np.where(mask, v, 0.0), dtype=self.dtype),
            torch.as_tensor(t, dtype=self.dtype),
            torch.as_tensor(mask),
        )

    def __getitem__(self, i: int) -> Item:
        if not -len(self) <= i < len(self):
            raise IndexError(f"series index {i} out of range for {len(self)} series")
        i = i % len(self)
        x, t, mask = self._stamps(i, 0, self._times[i].shape[0])
        return {"x": x, "t": t, "mask": mask, "series": i}

    def to_long(self, *, id_name: str = "series", time_name: str = "time") -> pd.DataFrame:
        """All observations as a long DataFrame ``[id_name, time_name, *features]`` (times as timestamps when
        the dataset came from datetimes)."""
        frames = []
        for i, (t, v) in enumerate(zip(self._times, self._values)):
            part = pd.DataFrame(v, columns=self.feature_names)
            part.insert(0, time_name, self.time_encoder.to_datetime(t) if self.time_encoder else t)
            part.insert(0, id_name, [self.series_ids[i]] * len(t))
            frames.append(part)
        return pd.concat(frames, ignore_index=True)

    def sampling_stats(self) -> pd.DataFrame:
        """Per-series sampling statistics (see :func:`odernn.data.sampling_stats`), one row per series, in the
        dataset's float time unit."""
        rows = [(t, ~np.isnan(v)) for t, v in zip(self._times, self._values)]
        return stats_table(rows, self.feature_names, pd.Index(self.series_ids, name="series"))

    def windows(
        self,
        length: int,
        *,
        stride: int | None = None,
        horizon: int = 0,
        drop_last: bool = True,
        skip_short: bool = False,
    ) -> "SeriesWindows":
        """Cut every series into windows of ``length`` input stamps followed by ``horizon`` target stamps.

        For a series of ``n`` stamps, input windows start at ``0, stride, 2*stride, ...`` and cover stamps
        ``[s, s + length)``; their targets are the next ``horizon`` stamps ``[s + length, s + length + horizon)``.
        With ``drop_last=False`` one more, shorter window ends the series: inputs ``[s, n - horizon)`` and targets
        ``[n - horizon, n)``; then ``stride == length`` puts every input stamp in exactly one window.

        Args:
            length: Input stamps per window (>= 1).
            stride: Step between window starts (default ``length``: non-overlapping).
            horizon: Target stamps after each window (>= 0).
            drop_last: Leave out the final shorter window (default True).
            skip_short: Leave out series too short for any window instead of raising.

        Returns:
            A :class:`SeriesWindows` dataset.

        Raises:
            ValueError: Non-positive ``length``/``stride``, negative ``horizon``, or a series shorter than a window
                (unless ``skip_short``).
        """
        spans = window_spans([t.shape[0] for t in self._times], self.series_ids, length, stride=stride,
                             horizon=horizon, drop_last=drop_last, skip_short=skip_short)
        return SeriesWindows(self, spans, int(horizon))

    def __repr__(self) -> str:
        enc = f", time_encoder={self.time_encoder!r}" if self.time_encoder else ""
        return f"IrregularSeriesDataset(n_series={len(self)}, features={self.feature_names}{enc})"
