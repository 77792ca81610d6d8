"""Any user's irregular series as a PyTorch dataset: from pandas or arrays, windowed, padded into batches.

Three ways in, one representation: every series is a pair ``(times, values)`` with ``times`` float64 of shape
``(n,)``, strictly increasing, and ``values`` of shape ``(n, F)`` where NaN marks a value that was not observed.

- :meth:`IrregularSeriesDataset.from_frame`: one wide DataFrame indexed by time (``DatetimeIndex`` or numeric).
- :meth:`IrregularSeriesDataset.from_long`: a long DataFrame with an id column, a time column and value columns.
- :meth:`IrregularSeriesDataset.from_arrays`: a list of ``(times, values)`` pairs.

Datetimes become floats through a :class:`TimeEncoder` (a unit the user chooses and an origin), which the dataset
keeps so that model outputs at float times map back to timestamps. :meth:`IrregularSeriesDataset.windows` cuts
series into windows (length, stride, horizon) and :func:`collate_irregular` pads windows of different lengths into
one batch with a mask and lengths, keeping the padded times strictly increasing as ``odernn.ODERNN`` requires.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Hashable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

__all__ = ["IrregularSeriesDataset", "SeriesWindows", "TimeEncoder", "collate_irregular"]

_UNIT_NAMES = ("ns", "us", "ms", "s", "min", "h", "D", "W")


# --------------------------------------------------------------------------------------------------------------
# Time encoding
# --------------------------------------------------------------------------------------------------------------


def _as_step(unit: Any) -> pd.Timedelta:
    if isinstance(unit, str):
        if unit not in _UNIT_NAMES:
            raise ValueError(f"time_unit must be one of {list(_UNIT_NAMES)} or a pd.Timedelta, got {unit!r}")
        return pd.Timedelta(1, unit=unit)
    if isinstance(unit, (pd.Timedelta, _dt.timedelta, np.timedelta64)):
        step = pd.Timedelta(unit)
        if step <= pd.Timedelta(0):
            raise ValueError(f"time_unit must be a positive duration, got {step}")
        return step
    raise TypeError(f"time_unit must be a unit name {list(_UNIT_NAMES)} or a pd.Timedelta, got {type(unit).__name__}")


class TimeEncoder:
    """Converts datetimes to float times ``(timestamp - origin) / unit`` and back.

    The encoder is what makes a model's float times meaningful again: it records the unit and the origin, so
    :meth:`to_datetime` maps predictions at float times back to timestamps.

    Args:
        unit: Length of one time unit: ``"ns"``, ``"us"``, ``"ms"``, ``"s"``, ``"min"``, ``"h"``, ``"D"``,
            ``"W"`` or a positive ``pd.Timedelta``.
        origin: Timestamp mapped to 0.0. ``None`` (default) means the earliest timestamp passed to :meth:`fit`.

    Attributes:
        step_: The unit as a ``pd.Timedelta``.
        origin_: The origin as a ``pd.Timestamp`` (set by :meth:`fit`).
        resolution_: Resolution of the fitted timestamps (``"ns"``, ``"us"``, ``"ms"`` or ``"s"``); timestamps
            returned by :meth:`to_datetime` are rounded to it.

    Example:
        >>> enc = TimeEncoder("h").fit(pd.to_datetime(["2021-01-01 00:00", "2021-01-01 06:30"]))
        >>> enc.to_float(pd.to_datetime(["2021-01-01 06:30"]))
        array([6.5])
    """

    def __init__(self, unit: str | pd.Timedelta = "s", origin: Any | None = None) -> None:
        self.unit = unit
        self.origin = origin

    def fit(self, times: Any) -> "TimeEncoder":
        """Set ``origin_`` (the given origin, else the earliest of ``times``), ``step_`` and ``resolution_``;
        return ``self``."""
        self.step_ = _as_step(self.unit)
        idx = pd.DatetimeIndex(times)
        self.resolution_ = str(getattr(idx, "unit", "ns")) if len(idx) else "ns"
        if self.origin is not None:
            self.origin_ = pd.Timestamp(self.origin)
        else:
            if len(idx) == 0 or idx.isna().all():
                raise ValueError("cannot fit a TimeEncoder on no timestamps; pass origin= explicitly")
            self.origin_ = idx.min()
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "origin_"):
            raise RuntimeError("this TimeEncoder is not fitted yet; call fit(times) first")

    def to_float(self, times: Any) -> np.ndarray:
        """Timestamps to floats in units since the origin.

        Args:
            times: Datetime-like, shape ``(n,)`` (``DatetimeIndex``, ``datetime64`` array, list of timestamps).

        Returns:
            float64 array of shape ``(n,)``; NaT becomes NaN.
        """
        self._check_fitted()
        idx = pd.DatetimeIndex(times)
        if (idx.tz is None) != (self.origin_.tz is None):
            raise ValueError(
                f"timestamps are {'naive' if idx.tz is None else 'timezone-aware'} but the origin "
                f"{self.origin_} is not; make both naive or both aware (tz_localize / tz_convert)"
            )
        delta = pd.TimedeltaIndex(idx - self.origin_).as_unit("ns").asi8.astype(np.float64)
        delta[np.asarray(idx.isna())] = np.nan
        return delta / float(self.step_.value)

    def to_datetime(self, values: Any) -> pd.DatetimeIndex:
        """Floats in units since the origin back to timestamps.

        The result is rounded to the resolution of the timestamps the encoder was fitted on (``resolution_``,
        e.g. ``"us"``), which undoes the float rounding of :meth:`to_float`: ``to_datetime(to_float(ts))``
        gives ``ts`` back.

        Args:
            values: Float times, any shape (flattened), numpy array or tensor.

        Returns:
            ``pd.DatetimeIndex`` with the origin's timezone, in unit ``resolution_``.
        """
        self._check_fitted()
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().double().numpy()
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        ns = np.round(arr * float(self.step_.value))
        out = pd.DatetimeIndex(self.origin_ + pd.to_timedelta(ns, unit="ns"))
        if self.resolution_ != "ns":
            out = out.round(pd.Timedelta(1, unit=self.resolution_)).as_unit(self.resolution_)
        return out

    def __repr__(self) -> str:
        origin = getattr(self, "origin_", self.origin)
        return f"TimeEncoder(unit={self.unit!r}, origin={origin!r})"


# --------------------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------------------


def _fmt(label: Any) -> str:
    if isinstance(label, (pd.Timestamp, np.datetime64)):
        return str(pd.Timestamp(label))
    return repr(label.item() if isinstance(label, np.generic) else label)


def _is_datetime(values: Any) -> bool:
    dtype = getattr(values, "dtype", None)
    return dtype is not None and (
        isinstance(dtype, pd.DatetimeTZDtype) or (isinstance(dtype, np.dtype) and dtype.kind == "M")
    )


def _check_times(times: np.ndarray, labels: Sequence[Any], where: str, sort_hint: str) -> None:
    """Raise if ``times`` (float64, NaN = missing) has NaN, or is not strictly increasing."""
    bad = np.flatnonzero(np.isnan(times))
    if bad.size:
        pos = bad[:5].tolist()
        raise ValueError(
            f"{where}: time column has {bad.size} missing value(s) (NaN/NaT), first at position(s) {pos}; "
            "every row needs a time stamp: drop those rows (e.g. df.dropna(subset=[<time column>])) or fill them"
        )
    steps = np.diff(times)
    dup = np.flatnonzero(steps == 0)
    if dup.size:
        i = int(dup[0]) + 1
        raise ValueError(
            f"{where}: duplicate timestamps: {dup.size} repeated, first {_fmt(labels[i])} at positions {i - 1} and "
            f"{i}; each stamp must appear once: aggregate duplicates first (e.g. df.groupby(level=0).mean())"
        )
    back = np.flatnonzero(steps < 0)
    if back.size:
        i = int(back[0]) + 1
        raise ValueError(
            f"{where}: timestamps must be strictly increasing; found {back.size} non-increasing step(s), first at "
            f"position {i} ({_fmt(labels[i])} after {_fmt(labels[i - 1])}); {sort_hint}"
        )


def _check_values(values: np.ndarray, where: str) -> None:
    if values.shape[0] == 0:
        raise ValueError(f"{where}: series is empty; every series needs at least one observed value")
    inf = np.isinf(values)
    if inf.any():
        r, c = np.argwhere(inf)[0]
        raise ValueError(f"{where}: values contain inf (first at row {r}, feature {c}); use NaN for unobserved")
    if np.isnan(values).all():
        raise ValueError(
            f"{where}: all values are NaN, so the series has no observation; drop it or check the value columns"
        )


def _numeric_block(frame: pd.DataFrame, where: str) -> np.ndarray:
    bad = [
        f"{c!r} ({frame[c].dtype})"
        for c in frame.columns
        if not (pd.api.types.is_numeric_dtype(frame[c].dtype) or pd.api.types.is_bool_dtype(frame[c].dtype))
    ]
    if bad:
        raise TypeError(
            f"{where}: value column(s) {', '.join(bad)} are not numeric; convert them "
            "(e.g. df[col] = pd.to_numeric(df[col], errors='coerce')) or select numeric columns with "
            "columns=/value_cols="
        )
    return frame.to_numpy(dtype=np.float64, na_value=np.nan)


def _select(frame: pd.DataFrame, columns: Sequence[Hashable] | None, exclude: Sequence[Hashable], arg: str) -> list:
    if columns is None:
        return [c for c in frame.columns if c not in set(exclude)]
    if isinstance(columns, (str, bytes)) or not isinstance(columns, Iterable):
        columns = [columns]  # a single column name
    columns = list(columns)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{arg}: column(s) {missing} not found; available columns are {list(frame.columns)}"
        )
    return columns


def _require_column(frame: pd.DataFrame, col: Hashable, arg: str) -> None:
    if col not in frame.columns:
        raise ValueError(f"{arg}={col!r} is not a column; available columns are {list(frame.columns)}")


# --------------------------------------------------------------------------------------------------------------
# Dataset of whole series
# --------------------------------------------------------------------------------------------------------------


class IrregularSeriesDataset(Dataset):
    """Irregularly sampled multivariate series (NaN = not observed) as a PyTorch dataset.

    Build it with :meth:`from_frame`, :meth:`from_long` or :meth:`from_arrays`. Item ``i`` is the whole series:

    - ``"x"``: values, shape ``(n_i, F)``, 0 where not observed.
    - ``"t"``: times, shape ``(n_i,)``, strictly increasing (in the encoder's unit for datetimes).
    - ``"mask"``: bool, shape ``(n_i, F)``, True where observed.
    - ``"series"``: ``i`` (the id is ``series_ids[i]``).

    Use :meth:`windows` for fixed-length training windows and :func:`collate_irregular` to batch them.

    Args:
        times: One float64 array of shape ``(n_i,)`` per series, strictly increasing.
        values: One float array of shape ``(n_i, F)`` per series, NaN where not observed.
        feature_names: ``F`` names.
        series_ids: One id per series.
        time_encoder: The fitted :class:`TimeEncoder` when times came from datetimes, else ``None``.
        dtype: Floating dtype of the tensors returned (default ``torch.float32``).

    Attributes:
        feature_names: List of ``F`` feature names.
        series_ids: List of series ids (the frame's id values, or ``0..N-1``).
        time_encoder: :class:`TimeEncoder` or ``None`` (numeric times).

    Raises:
        ValueError: For NaN / unsorted / duplicate times, empty or all-NaN series, inf values, or inconsistent
            shapes.

    Warning:
        Times are returned in ``dtype``. float32 has 24 bits of mantissa: with datetimes choose a unit (and
        origin) that keeps the float times below about 1e6 distinct steps, or pass ``dtype=torch.float64``.
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
            t = np.asarray(t, dtype=np.float64).reshape(-1)
            v = np.asarray(v, dtype=np.float64)
            if v.ndim == 1:
                v = v[:, None]
            if v.ndim != 2 or v.shape[0] != t.shape[0]:
                raise ValueError(f"{where}: values must have shape (n, F) with n = {t.shape[0]} times, got {v.shape}")
            if v.shape[1] != n_feat:
                raise ValueError(f"{where}: expected {n_feat} features {self.feature_names}, got {v.shape[1]}")
            _check_times(t, t, where, "sort the series by time first")
            _check_values(v, where)
            self._times.append(t)
            self._values.append(v)

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
            time_unit: Required for a ``DatetimeIndex``: unit of the float times (``"s"``, ``"min"``, ``"h"``,
                ``"D"``, ``"W"``, ... or a ``pd.Timedelta``). Must be ``None`` for a numeric index.
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
        cols = _select(df, columns, (), "columns")
        index = df.index
        where = "frame"
        encoder = None
        if isinstance(index, pd.DatetimeIndex):
            if time_unit is None:
                raise ValueError(
                    "the frame has a DatetimeIndex, so time_unit= is required to turn timestamps into floats; "
                    "pass e.g. time_unit='s', 'min', 'h' or 'D'"
                )
            encoder = TimeEncoder(time_unit, origin).fit(index[~index.isna()])
            times = encoder.to_float(index)
        elif pd.api.types.is_numeric_dtype(index.dtype) and not pd.api.types.is_bool_dtype(index.dtype):
            if time_unit is not None or origin is not None:
                raise ValueError(
                    "time_unit=/origin= apply to a DatetimeIndex, but the frame's index is numeric "
                    f"({index.dtype}); numeric times are used as they are, so leave both unset"
                )
            times = index.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            raise TypeError(
                f"the frame's index must be a DatetimeIndex or numeric times, got {type(index).__name__} of dtype "
                f"{index.dtype}; set it with df.set_index(pd.to_datetime(df[<time column>]))"
            )
        _check_times(times, list(index), where, "sort the frame with df.sort_index()")
        values = _numeric_block(df[cols], where)
        keep = ~np.isnan(values).all(axis=1)
        if not keep.any():
            raise ValueError(f"{where}: all values are NaN, so the series has no observation; check the columns")
        return cls(
            [times[keep]],
            [values[keep]],
            feature_names=[str(c) for c in cols],
            series_ids=[0],
            time_encoder=encoder,
            dtype=dtype,
        )

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
        :class:`TimeEncoder` whose default origin is the earliest timestamp of the frame, so times are comparable
        across series.

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
        _require_column(df, id_col, "id_col")
        _require_column(df, time_col, "time_col")
        cols = _select(df, value_cols, (id_col, time_col), "value_cols")
        overlap = [c for c in cols if c in (id_col, time_col)]
        if overlap:
            raise ValueError(f"value_cols must not contain id_col or time_col, got {overlap}")
        if not cols:
            raise ValueError("no value columns: the frame has only the id and time columns")
        if df[id_col].isna().any():
            raise ValueError(f"id_col={id_col!r} has missing ids at rows {list(df.index[df[id_col].isna()][:5])}")
        tcol = df[time_col]
        encoder = None
        if _is_datetime(tcol):
            if time_unit is None:
                raise ValueError(
                    f"time_col={time_col!r} holds datetimes, so time_unit= is required; pass e.g. time_unit='s', "
                    "'min', 'h' or 'D'"
                )
            encoder = TimeEncoder(time_unit, origin).fit(tcol.dropna())
            times_all = encoder.to_float(tcol)
        elif pd.api.types.is_numeric_dtype(tcol.dtype) and not pd.api.types.is_bool_dtype(tcol.dtype):
            if time_unit is not None or origin is not None:
                raise ValueError(
                    f"time_unit=/origin= apply to datetimes, but time_col={time_col!r} is numeric ({tcol.dtype}); "
                    "leave both unset"
                )
            times_all = tcol.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            raise TypeError(
                f"time_col={time_col!r} must hold datetimes or numbers, got dtype {tcol.dtype}; convert it with "
                "pd.to_datetime(df[time_col]) or pd.to_numeric(df[time_col])"
            )
        nan_t = np.flatnonzero(np.isnan(times_all))
        if nan_t.size:
            rows = list(df.index[nan_t[:5]])
            raise ValueError(
                f"time_col={time_col!r} has {nan_t.size} missing value(s) (NaN/NaT) at rows {rows}; every row "
                "needs a time stamp: drop those rows (df.dropna(subset=[time_col])) or fill them"
            )
        values_all = _numeric_block(df[cols], "value_cols")
        codes, uniques = pd.factorize(df[id_col], sort=False)
        times, values, ids = [], [], []
        labels = tcol.to_numpy()
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
        for k, sid in enumerate(uniques):
            rows = order[bounds[k]:bounds[k + 1]]
            where = f"series {sid!r} ({id_col}={sid!r})"
            _check_times(
                times_all[rows], labels[rows], where, f"sort the frame with df.sort_values([{id_col!r}, {time_col!r}])"
            )
            v = values_all[rows]
            keep = ~np.isnan(v).all(axis=1)
            if not keep.any():
                raise ValueError(f"{where}: all values are NaN, so the series has no observation; drop it")
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
            if v.dtype == object or not (np.issubdtype(v.dtype, np.number) or v.dtype == bool):
                raise TypeError(f"series[{i}]: values must be numeric, got dtype {v.dtype}")
            if t.ndim != 1:
                raise ValueError(f"series[{i}]: times must be 1-D, got shape {t.shape}")
            raw_times.append(t)
            raw_values.append(v.astype(np.float64))
        kinds = {"datetime" if t.dtype.kind == "M" else "numeric" if np.issubdtype(t.dtype, np.number) else "other"
                 for t in raw_times}
        if "other" in kinds:
            bad = next(t.dtype for t in raw_times if not (t.dtype.kind == "M" or np.issubdtype(t.dtype, np.number)))
            raise TypeError(f"times must be numeric or datetime64, got dtype {bad}; convert with pd.to_datetime")
        if len(kinds) > 1:
            raise TypeError("times mix datetimes and numbers across series; use one kind for all series")
        encoder = None
        times: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        if kinds == {"datetime"}:
            if time_unit is None:
                raise ValueError("times are datetimes, so time_unit= is required; pass e.g. time_unit='s' or 'h'")
            encoder = TimeEncoder(time_unit, origin).fit(np.concatenate(raw_times))
            times = [encoder.to_float(t) for t in raw_times]
        else:
            if time_unit is not None or origin is not None:
                raise ValueError("time_unit=/origin= apply to datetime times, but the times are numeric")
            times = [t.astype(np.float64) for t in raw_times]
        labels = raw_times
        n_feat = None
        for i, (t, v) in enumerate(zip(times, raw_values)):
            vv = v[:, None] if v.ndim == 1 else v
            if vv.ndim != 2 or vv.shape[0] != t.shape[0]:
                raise ValueError(f"series[{i}]: values must have shape (n, F) with n = {t.shape[0]}, got {v.shape}")
            n_feat = vv.shape[1] if n_feat is None else n_feat
            if vv.shape[1] != n_feat:
                raise ValueError(f"series[{i}] has {vv.shape[1]} features but series[0] has {n_feat}")
            _check_times(t, labels[i], f"series[{i}]", "sort each series by time first")
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
        """Times (float64, ``(n_i,)``) and values (float64 with NaN, ``(n_i, F)``) of series ``i`` (copies)."""
        return self._times[i].copy(), self._values[i].copy()

    def _item(self, i: int, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        v = self._values[i][lo:hi]
        mask = ~np.isnan(v)
        x = np.where(mask, v, 0.0)
        return (
            torch.as_tensor(x, dtype=self.dtype),
            torch.as_tensor(self._times[i][lo:hi], dtype=self.dtype),
            torch.as_tensor(mask),
        )

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"series index {i} out of range for {len(self)} series")
        i = i % len(self)
        x, t, mask = self._item(i, 0, self._times[i].shape[0])
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
        """Per-series sampling statistics (see :func:`odernn.data.sampling_stats`), one row per series."""
        from ._irregular import sampling_stats

        return sampling_stats(self)

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
        for name, val, low in (("length", length, 1), ("stride", length if stride is None else stride, 1),
                               ("horizon", horizon, 0)):
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {type(val).__name__}")
            if val < low:
                raise ValueError(f"{name} must be >= {low}, got {val}")
        stride = int(length if stride is None else stride)
        length, horizon = int(length), int(horizon)
        spans: list[tuple[int, int, int]] = []
        for i, t in enumerate(self._times):
            n_in = t.shape[0] - horizon
            starts = list(range(0, n_in - length + 1, stride)) if n_in >= length else []
            own = [(i, s, s + length) for s in starts]
            if not drop_last:
                nxt = starts[-1] + stride if starts else 0
                if nxt < n_in:
                    own.append((i, nxt, n_in))
            if not own and not skip_short:
                need = length + horizon if drop_last else horizon + 1
                raise ValueError(
                    f"series {self.series_ids[i]!r} (index {i}) has {t.shape[0]} stamps but a window needs "
                    f"{need} (length={length}, horizon={horizon}); use a shorter length"
                    f"{', drop_last=False to keep a shorter last window' if drop_last else ''}, or skip_short=True "
                    "to leave such series out"
                )
            spans.extend(own)
        if not spans:
            raise ValueError(f"no series is long enough for a window of length={length} and horizon={horizon}")
        return SeriesWindows(self, spans, horizon)

    def __repr__(self) -> str:
        enc = f", time_encoder={self.time_encoder!r}" if self.time_encoder else ""
        return f"IrregularSeriesDataset(n_series={len(self)}, features={self.feature_names}{enc})"


class SeriesWindows(Dataset):
    """Windows of an :class:`IrregularSeriesDataset` (made by :meth:`IrregularSeriesDataset.windows`).

    Item ``k`` is a dict:

    - ``"x"`` ``(L_k, F)``, ``"t"`` ``(L_k,)``, ``"mask"`` ``(L_k, F)``: the input stamps (``L_k = length`` except
      for a shorter last window).
    - ``"y"`` ``(H, F)``, ``"t_y"`` ``(H,)``, ``"mask_y"`` ``(H, F)``: the ``horizon`` stamps that follow.
    - ``"series"``: index of the series in the parent dataset; ``"start"``: index of the first input stamp in it.

    Values are 0 where not observed (mask False). Batch with :func:`collate_irregular`.

    Attributes:
        source: The parent dataset (for ``time_encoder``, ``feature_names``, ``series_ids``).
        spans: ``(series, start, end)`` per window; inputs are stamps ``[start, end)``.
        horizon: Target stamps per window.
    """

    def __init__(self, source: IrregularSeriesDataset, spans: Sequence[tuple[int, int, int]], horizon: int) -> None:
        self.source = source
        self.spans = list(spans)
        self.horizon = horizon

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, k: int) -> dict[str, Any]:
        i, lo, hi = self.spans[k]
        x, t, mask = self.source._item(i, lo, hi)
        y, t_y, mask_y = self.source._item(i, hi, hi + self.horizon)
        return {"x": x, "t": t, "mask": mask, "y": y, "t_y": t_y, "mask_y": mask_y, "series": i, "start": lo}


# --------------------------------------------------------------------------------------------------------------
# Collate
# --------------------------------------------------------------------------------------------------------------


def _pad_group(
    items: Sequence[Mapping[str, Any]], xk: str, tk: str, mk: str, pad_step: float, after: Sequence[float] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    xs = [torch.as_tensor(it[xk]) for it in items]
    ts = [torch.as_tensor(it[tk]) for it in items]
    for j, (x, t) in enumerate(zip(xs, ts)):
        if x.ndim != 2 or t.ndim != 1 or x.shape[0] != t.shape[0]:
            raise ValueError(
                f"batch[{j}]: {xk!r} must be (T, F) and {tk!r} (T,) with the same T, got {tuple(x.shape)} and "
                f"{tuple(t.shape)}"
            )
    n_feat = {x.shape[1] for x in xs}
    if len(n_feat) > 1:
        raise ValueError(f"batch items have different numbers of features {sorted(n_feat)} in {xk!r}")
    masks = []
    for j, it in enumerate(items):
        m = it.get(mk)
        m = torch.ones(xs[j].shape, dtype=torch.bool) if m is None else torch.as_tensor(m, dtype=torch.bool)
        if m.ndim == 1:
            m = m[:, None].expand_as(xs[j])
        if m.shape != xs[j].shape:
            raise ValueError(f"batch[{j}]: {mk!r} has shape {tuple(m.shape)}, expected {tuple(xs[j].shape)}")
        masks.append(m)
    b = len(items)
    width = max(x.shape[0] for x in xs)
    f = n_feat.pop()
    x_dtype = xs[0].dtype if xs[0].is_floating_point() else torch.get_default_dtype()
    t_dtype = ts[0].dtype if ts[0].is_floating_point() else torch.get_default_dtype()
    x_out = torch.zeros(b, width, f, dtype=x_dtype)
    m_out = torch.zeros(b, width, f, dtype=torch.bool)
    t_out = torch.zeros(b, width, dtype=torch.float64)
    lengths = torch.tensor([x.shape[0] for x in xs], dtype=torch.int64)
    for j in range(b):
        n = xs[j].shape[0]
        x_out[j, :n] = torch.where(masks[j], xs[j].to(x_dtype), torch.zeros((), dtype=x_dtype))
        m_out[j, :n] = masks[j]
        t_out[j, :n] = ts[j].double()
        if n < width:
            if n:
                last = float(ts[j][-1])
            elif after is not None:
                last = after[j]
            else:
                last = -pad_step
            t_out[j, n:] = last + pad_step * torch.arange(1, width - n + 1, dtype=torch.float64)
    t_cast = t_out.to(t_dtype)
    if width > 1 and not bool((t_cast[:, 1:] > t_cast[:, :-1]).all()):
        j = int((t_cast[:, 1:] <= t_cast[:, :-1]).any(dim=1).nonzero()[0])
        raise ValueError(
            f"batch[{j}]: times {tk!r} are not strictly increasing after padding in {t_dtype} (real times must be "
            "strictly increasing; large times may also be too coarse in float32 for padding steps of "
            f"{pad_step}): use a larger pad_step, an origin closer to the data, or float64 times"
        )
    return x_out, t_cast, m_out, lengths


def collate_irregular(batch: Sequence[Mapping[str, Any]], *, pad_step: float = 1.0) -> dict[str, Any]:
    """Pad a list of windows of different lengths into one batch.

    Args:
        batch: Items with ``"x"`` ``(T_b, F)``, ``"t"`` ``(T_b,)`` and optionally ``"mask"`` (``(T_b, F)`` or
            ``(T_b,)``, default all True), and optionally targets ``"y"``, ``"t_y"``, ``"mask_y"`` (``(H_b, F)``,
            ``(H_b,)``). Other keys are batched with PyTorch's ``default_collate`` (or kept as a list when that
            fails).
        pad_step: Spacing of the padded times, in the series' time unit.

    Returns:
        A dict with

        - ``"x"`` ``(B, T, F)``: values, 0 at unobserved and padded steps.
        - ``"t"`` ``(B, T)``: times; after a sample's last real time ``t_last`` the padded steps get
          ``t_last + pad_step, t_last + 2 * pad_step, ...``, so every row stays strictly increasing.
        - ``"mask"`` ``(B, T, F)`` bool: True exactly at observed values (False at NaN and padding).
        - ``"lengths"`` ``(B,)`` int64: real steps per sample.
        - with targets: ``"y"`` ``(B, H, F)``, ``"t_y"`` ``(B, H)`` (padded the same way, continuing after the
          last input time when a sample has no target), ``"mask_y"`` ``(B, H, F)`` and ``"lengths_y"`` ``(B,)``.
        - the other keys, batched.

    Raises:
        ValueError: Empty batch, inconsistent shapes, or times that are not strictly increasing after padding.

    Example:
        >>> loader = torch.utils.data.DataLoader(ds.windows(64), batch_size=32, collate_fn=collate_irregular)
    """
    if len(batch) == 0:
        raise ValueError("cannot collate an empty batch")
    if not pad_step > 0:
        raise ValueError(f"pad_step must be > 0, got {pad_step}")
    missing = [k for k in ("x", "t") if k not in batch[0]]
    if missing:
        raise ValueError(f"batch items need keys 'x' and 't'; missing {missing} (got {sorted(batch[0])})")
    out: dict[str, Any] = {}
    out["x"], out["t"], out["mask"], out["lengths"] = _pad_group(batch, "x", "t", "mask", pad_step, None)
    used = {"x", "t", "mask"}
    if "y" in batch[0] and "t_y" in batch[0]:
        last = [float(out["t"][j, int(out["lengths"][j]) - 1]) if int(out["lengths"][j]) else 0.0
                for j in range(len(batch))]
        out["y"], out["t_y"], out["mask_y"], out["lengths_y"] = _pad_group(batch, "y", "t_y", "mask_y", pad_step, last)
        used |= {"y", "t_y", "mask_y"}
    for key in batch[0]:
        if key in used:
            continue
        vals = [it.get(key) for it in batch]
        try:
            out[key] = torch.utils.data.default_collate(vals)
        except (TypeError, RuntimeError):
            out[key] = vals
    return out
