"""Input frames and time: what users pass (frames, series, lists, long format) into validated per-series arrays,
and the time axis that maps stamps to model times and back.

Every layout is turned into a list of ``(id, times, values, index)`` with times in float64 (seconds since the
origin for a ``DatetimeIndex``, the numbers themselves for a numeric index) through
:meth:`odernn.data.IrregularSeriesDataset.from_frame`, which validates order, duplicates and dtypes. The
:class:`TimeAxis` then maps those floats to model time ``(t - origin) / unit`` in float64, before any cast to the
model's dtype, so epoch-scale stamps keep their gaps.
"""

from __future__ import annotations

import datetime as _dt
import numbers
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..data import IrregularSeriesDataset, encode_times, parse_time_unit

__all__ = ["Panel", "TimeAxis", "read_panel", "parse_fh", "ID_COL", "TIME_COL"]

ID_COL, TIME_COL = "unique_id", "ds"
FrameLike = Union[pd.DataFrame, pd.Series]


@dataclass
class Panel:
    """Validated series of one call: ids, frames (wide, indexed by time, rows with every value NaN dropped), raw
    float times and values (NaN = not observed)."""

    layout: str  # "series" | "frame" | "list" | "long"
    ids: list
    frames: list
    times: list  # float64 (n_i,): seconds since the origin (datetime) or raw numbers
    values: list  # float64 (n_i, k)
    kind: str  # "datetime" | "numeric"
    columns: list
    name: Any = None  # a Series' name

    def where(self, i: int) -> str:
        if self.layout == "long":
            return f"series {self.ids[i]!r}"
        return f"y[{i}]" if self.layout == "list" else "y"


def index_kind(index: pd.Index, where: str) -> str:
    if isinstance(index, pd.DatetimeIndex):
        return "datetime"
    if pd.api.types.is_numeric_dtype(index.dtype) and not pd.api.types.is_bool_dtype(index.dtype):
        return "numeric"
    raise TypeError(f"{where}: the index must be a DatetimeIndex or numeric times, got {type(index).__name__} of "
                    f"dtype {index.dtype}; set it with y.set_index(pd.to_datetime(y[<time column>]))")


def is_long(y: Any) -> bool:
    """A long-format frame: ``unique_id`` and ``ds`` columns (neuralforecast's convention)."""
    return isinstance(y, pd.DataFrame) and ID_COL in y.columns and TIME_COL in y.columns


def _split_long(y: pd.DataFrame, what: str) -> tuple[list, list]:
    if y[ID_COL].isna().any():
        raise ValueError(f"{what}: column {ID_COL!r} has missing ids; every row needs a series id")
    if y[TIME_COL].isna().any():
        raise ValueError(f"{what}: column {TIME_COL!r} has missing stamps; drop those rows first")
    values = [c for c in y.columns if c not in (ID_COL, TIME_COL)]
    if not values:
        raise ValueError(f"{what}: a long frame needs value columns besides {ID_COL!r} and {TIME_COL!r} (e.g. 'y')")
    ids, frames = [], []
    for sid, part in y.groupby(ID_COL, sort=False):
        ids.append(sid.item() if isinstance(sid, np.generic) else sid)
        frames.append(part.set_index(TIME_COL)[values].rename_axis(None))
    return ids, frames


def as_frames(y: Any, what: str = "y") -> tuple[list, list, str, Any]:
    """``y`` in any accepted layout -> (ids, frames, layout, series name)."""
    if isinstance(y, pd.Series):
        return [0], [y.to_frame(name=y.name if y.name is not None else 0)], "series", y.name
    if is_long(y):
        if len(y) == 0:
            raise ValueError(f"{what} is an empty long frame; pass rows of ({ID_COL}, {TIME_COL}, values)")
        ids, frames = _split_long(y, what)
        return ids, frames, "long", None
    if isinstance(y, pd.DataFrame):
        return [0], [y], "frame", None
    if isinstance(y, (list, tuple)):
        if len(y) == 0:
            raise ValueError(f"{what} is an empty list; pass at least one DataFrame or Series")
        frames = []
        for i, item in enumerate(y):
            if isinstance(item, pd.Series):
                frames.append(item.to_frame(name=item.name if item.name is not None else 0))
            elif isinstance(item, pd.DataFrame):
                frames.append(item)
            else:
                raise TypeError(f"{what}[{i}] must be a pandas DataFrame or Series, got {type(item).__name__}")
        return list(range(len(frames))), frames, "list", None
    raise TypeError(f"{what} must be a pandas DataFrame or Series indexed by time, a list of them, or a long frame "
                    f"with columns {ID_COL!r}, {TIME_COL!r} and value columns; got {type(y).__name__}")


def read_panel(y: Any, *, columns: Optional[list] = None, origin: Any = None, what: str = "y",
               allow_empty_columns: bool = False) -> Panel:
    """Validate ``y`` (any layout) into a :class:`Panel`.

    Args:
        y: a DataFrame/Series indexed by time, a list of them, or a long frame.
        columns: the expected columns (as fitted), or None to take them from ``y``.
        origin: the datetime origin (as fitted), or None for the earliest stamp of ``y``.
        what: the argument's name in messages.
        allow_empty_columns: accept a column with no observed value (covariates in ``predict``).
    """
    ids, frames, layout, name = as_frames(y, what)
    kinds = set()
    for i, df in enumerate(frames):
        where = (f"{what}[{i}]" if layout == "list" else f"{what} series {ids[i]!r}" if layout == "long" else what)
        if df.shape[1] == 0:
            raise ValueError(f"{where} has no columns; pass one column per variable")
        if df.shape[0] == 0:
            raise ValueError(f"{where} is empty (no rows); pass observations indexed by time")
        if df.columns.has_duplicates:
            raise ValueError(f"{where} has duplicate column names {list(df.columns[df.columns.duplicated()])}")
        cols = list(df.columns)
        if columns is None:
            columns = cols
        elif cols != list(columns):
            raise ValueError(f"{where} has columns {cols} but the forecaster expects {list(columns)} (same variables "
                             f"in the same order)")
        kinds.add(index_kind(df.index, where))
    if len(kinds) > 1:
        raise TypeError(f"the series of {what} mix DatetimeIndex and numeric indexes; use one kind of time for all")
    kind = kinds.pop()
    if kind == "datetime":
        tzs = {str(df.index.tz) for df in frames}
        if len(tzs) > 1:
            raise ValueError(f"the series of {what} have different time zones {sorted(tzs)}; convert them to one")
        if origin is None:
            origin = min(df.index.min() for df in frames)
    times, values, kept = [], [], []
    for i, df in enumerate(frames):
        where = (f"{what}[{i}]" if layout == "list" else f"{what} series {ids[i]!r}" if layout == "long" else what)
        t, v, idx = frame_arrays(df, kind, origin, where, allow_empty_columns)
        times.append(t)
        values.append(v)
        kept.append(df.loc[idx])
    return Panel(layout, ids, kept, times, values, kind, list(columns), name)


#: float64 tells integers apart only up to 2**53; larger integer stamps collide.
MAX_EXACT_INT = 2 ** 53
#: values beyond this magnitude overflow float64 when squared and summed (scales, least squares).
MAX_VALUE = 1e150
#: pandas' nanosecond range, which the forecaster's stamps and offsets are computed in.
NS_MIN, NS_MAX = pd.Timestamp.min, pd.Timestamp.max


def _ns_range_error(where: str, lo: Any, hi: Any) -> ValueError:
    return ValueError(f"{where} has stamps from {lo} to {hi}, outside pandas' nanosecond range "
                      f"({NS_MIN.date()} to {NS_MAX.date()}) that the forecaster computes "
                      f"times in; shift the stamps into that range (e.g. add a fixed number of years) or use a numeric "
                      f"index (e.g. years as floats)")


def check_frame(df: pd.DataFrame, kind: str, where: str) -> None:
    """Refuse what would be silently misread: datetime-like or complex value columns, integer stamps beyond 2**53,
    datetime stamps outside pandas' nanosecond range.

    Raises:
        TypeError: a datetime-like or complex column.
        ValueError: integer stamps beyond 2**53, stamps outside 1677-2262.
    """
    for c in df.columns:
        dt = df[c].dtype
        if pd.api.types.is_datetime64_any_dtype(dt) or pd.api.types.is_timedelta64_dtype(dt) or \
                isinstance(dt, pd.PeriodDtype):
            hint = (f"; the index is a {type(df.index).__name__} of row numbers, so index the frame by its time "
                    f"column: y.set_index({c!r})" if isinstance(df.index, pd.RangeIndex) else
                    f"; drop it or index the frame by it: y.set_index({c!r})")
            raise TypeError(f"{where}: column {c!r} holds {dt} values, which are times, not a variable to "
                            f"forecast{hint}")
        if pd.api.types.is_complex_dtype(dt):
            raise TypeError(f"{where}: column {c!r} is complex ({dt}); the forecaster takes real values: pass the "
                            f"real and imaginary parts as two columns (y[{c!r}].to_numpy().real / .imag)")
    idx = df.index
    if kind == "numeric" and pd.api.types.is_integer_dtype(idx.dtype) and len(idx):
        big = max(abs(int(idx.min())), abs(int(idx.max())))
        if big > MAX_EXACT_INT:
            raise ValueError(f"{where}: the index holds integers up to {big}, beyond 2**53 = {MAX_EXACT_INT}, where "
                             f"float64 times (which the model uses) can no longer tell neighbouring integers apart; "
                             f"subtract an offset first (y.index = y.index - y.index[0]) or convert epoch "
                             f"nanoseconds to a DatetimeIndex (pd.to_datetime(y.index))")
    if kind == "datetime" and len(idx):
        lo, hi = idx.min(), idx.max()
        naive = [x.tz_convert(None) if x.tz is not None else x for x in (lo, hi)]
        if naive[0] < NS_MIN or naive[1] > NS_MAX:
            raise _ns_range_error(where, lo, hi)


def check_magnitude(v: np.ndarray, where: str) -> None:
    """Refuse values whose squares overflow float64 (the residual scale and the least squares square them)."""
    if v.size and np.isfinite(v).any():
        big = float(np.nanmax(np.abs(v)))
        if big > MAX_VALUE:
            raise ValueError(f"{where}: values reach {big:.3g} in magnitude; beyond {MAX_VALUE:.0e} their squares "
                             f"overflow float64 (the forecaster's scale would be inf). Rescale the data first, e.g. "
                             f"divide by 10**{int(np.floor(np.log10(big)))} and multiply the forecasts back")


def frame_arrays(df: pd.DataFrame, kind: str, origin: Any, where: str,
                  allow_empty: bool) -> tuple[np.ndarray, np.ndarray, pd.Index]:
    """Validated (times as float64: seconds since ``origin`` for datetimes, else the numbers; values with NaN; kept
    index labels). Rows with every value NaN are dropped.

    Raises:
        TypeError, ValueError: see :func:`check_frame`, :func:`check_magnitude` and
            :meth:`odernn.data.IrregularSeriesDataset.from_frame`.
    """
    check_frame(df, kind, where)
    keep = ~df.isna().all(axis=1).to_numpy()
    if allow_empty and not keep.any():
        if kind == "datetime":
            t = encode_times(df.index, unit="s", origin=origin)[0]
        else:
            t = np.asarray(df.index, dtype=np.float64)
        return t[:0], np.zeros((0, df.shape[1])), df.index[:0]
    try:
        ds = IrregularSeriesDataset.from_frame(df, time_unit="s" if kind == "datetime" else None,
                                               origin=origin if kind == "datetime" else None, dtype=torch.float64)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{where}: {e}") from e
    t, v = ds.series_arrays(0)
    check_magnitude(v, where)
    return t, v, df.index[keep]


def fixed_duration(d: Any, what: str) -> pd.Timedelta:
    """A duration from a ``pd.Timedelta``, a duration string (``"365D"``, ``"24h"``) or a pandas frequency alias
    of fixed length (``"D"``, ``"h"``, ``"W"``, ``"2W"``, ``"30min"``; a week is seven days whatever its anchor).

    Raises:
        ValueError: not a duration, or an alias of varying length (months, years, business days).
    """
    try:
        return pd.Timedelta(d)
    except (TypeError, ValueError):
        pass
    if isinstance(d, str):
        try:
            off = pd.tseries.frequencies.to_offset(d)
        except (TypeError, ValueError):
            off = None
        if isinstance(off, pd.offsets.Week):
            return pd.Timedelta(days=7 * off.n)
        if off is not None:
            try:
                return pd.Timedelta(off.nanos, unit="ns")
            except (TypeError, ValueError, AttributeError):
                raise ValueError(f"{what}: {d!r} is a pandas frequency of varying length (months, years and business "
                                 f"days differ in length); give a fixed duration such as '365.2425D' for a year or "
                                 f"'30.436875D' for a mean month") from None
    raise ValueError(f"{what} must be a duration such as pd.Timedelta(days=365), '365D', '24h' or a fixed pandas "
                     f"alias ('D', 'W', 'h'), got {d!r}")


def _as_timedelta(unit: Any) -> pd.Timedelta:
    """A positive duration in the library's one time-unit vocabulary (:func:`odernn.data.parse_time_unit`)."""
    if isinstance(unit, (int, float)) and not isinstance(unit, bool):
        raise ValueError(f"with a DatetimeIndex, time_unit must be None or a duration ('D', '7D', pd.Timedelta), "
                         f"got the number {unit!r}")
    return parse_time_unit(unit)


class TimeAxis:
    """Model time of a fitted forecaster: ``(stamp - origin) / unit``, in float64, through
    :func:`odernn.data.encode_times` (integer nanoseconds for datetimes, so epoch-scale stamps keep their gaps).

    Args:
        kind: ``"datetime"`` or ``"numeric"``.
        unit: ``pd.Timedelta`` (datetime) or a positive float (numeric): one model time unit.
        origin: ``pd.Timestamp`` (datetime) or a float (numeric): stamp mapped to 0.
    """

    def __init__(self, kind: str, unit: Any, origin: Any) -> None:
        self.kind, self.unit, self.origin = kind, unit, origin

    @classmethod
    def from_panel(cls, panel: Panel, time_unit: Any) -> "TimeAxis":
        """Unit: ``time_unit`` or the median gap between stamps (rounded to the second for datetimes)."""
        gaps = np.concatenate([np.diff(t) for t in panel.times])
        if gaps.size == 0:
            raise ValueError("every series has a single observed stamp; need at least 3 observations in a series "
                             "to learn from")
        median_gap = float(np.median(gaps))
        if panel.kind == "datetime":
            if time_unit is None:
                unit = pd.Timedelta(int(round(median_gap * 1e9)), unit="ns")
                if unit >= pd.Timedelta(minutes=1):
                    unit = unit.round("s")
            else:
                unit = _as_timedelta(time_unit)
            origin = pd.Timestamp(min(df.index[0] for df in panel.frames))
            return cls("datetime", unit, origin)
        if time_unit is None:
            unit = median_gap
        elif isinstance(time_unit, numbers.Real) and not isinstance(time_unit, bool) and time_unit > 0:
            unit = float(time_unit)
        else:
            raise ValueError(f"with a numeric index, time_unit must be None or a positive number, got {time_unit!r}")
        return cls("numeric", unit, float(min(t[0] for t in panel.times)))

    @property
    def unit_seconds(self) -> float:
        return self.unit.value / 1e9

    def from_raw(self, t: np.ndarray) -> np.ndarray:
        """Float times of :func:`read_panel` (seconds since origin, or raw numbers) to model time."""
        if self.kind == "datetime":
            return t / self.unit_seconds
        return (t - self.origin) / self.unit

    def from_index(self, index: Any) -> np.ndarray:
        """Stamps (DatetimeIndex or numbers) to model time."""
        if self.kind == "datetime":
            idx = pd.DatetimeIndex(index)
            if (idx.tz is None) != (self.origin.tz is None):
                raise ValueError(f"stamps are {'naive' if idx.tz is None else 'timezone-aware'} but the training "
                                 f"index is not; use the training index's time zone")
            return encode_times(idx, unit=self.unit, origin=self.origin)[0]
        return encode_times(np.asarray(index, dtype=np.float64), unit=self.unit, origin=self.origin)[0]

    def offset_index(self, end: Any, offsets: np.ndarray) -> pd.Index:
        """Stamps ``end + offsets`` (offsets in model units)."""
        if self.kind == "datetime":
            ns = np.round(offsets * float(self.unit.value))
            limit = (pd.Timestamp.max.tz_localize(end.tz) - end).value
            if (ns > limit).any():
                raise ValueError(f"fh offsets reach past {pd.Timestamp.max.floor('D').date()}, the last date pandas "
                                 f"can represent; ask for nearer stamps")
            ns = ns.astype(np.int64)
            return pd.DatetimeIndex(end + pd.to_timedelta(ns, unit="ns"))
        return pd.Index(float(end) + offsets * self.unit)

    def duration(self, d: Any, what: str) -> float:
        """A duration (``pd.Timedelta``/string for datetimes, or a number of index units) in model units."""
        if self.kind == "datetime":
            if isinstance(d, numbers.Real) and not isinstance(d, bool):
                raise TypeError(f"{what} must be a duration such as pd.Timedelta(days=365) or '365D' for a "
                                f"DatetimeIndex, got the number {d!r}")
            return fixed_duration(d, what).value / float(self.unit.value)
        if isinstance(d, bool) or not isinstance(d, numbers.Real):
            raise TypeError(f"{what} must be a number (in the index's units) for a numeric index, got {d!r}")
        return float(d) / self.unit


def _parse_strings(values: list) -> tuple[str, Any]:
    """Strings as pandas reads them: ISO dates / timestamps (``"2024-01-31"``, ``"2024-01-31 12:00"``), else
    durations (``"7D"``, ``"12h"``)."""
    try:
        return "datetime", pd.DatetimeIndex(pd.to_datetime(values, format="ISO8601"))
    except (TypeError, ValueError, OverflowError):
        pass
    try:
        return "timedelta", pd.TimedeltaIndex(pd.to_timedelta(values))
    except (TypeError, ValueError, OverflowError):
        pass
    raise TypeError(f"fh holds strings that pandas reads neither as timestamps nor as durations, e.g. {values[0]!r}; "
                    f"pass ISO dates such as '2024-01-31' or '2024-01-31 12:00', durations such as '7D', or numbers")


def _classify_fh(fh: Any) -> tuple[str, Any]:
    """('datetime', DatetimeIndex) | ('timedelta', TimedeltaIndex) | ('numeric', float64 array)."""
    if isinstance(fh, bytes):
        raise TypeError(f"fh must be timestamps or offsets, got bytes {fh!r}")
    if isinstance(fh, str):
        fh = [fh]
    if isinstance(fh, (numbers.Number, pd.Timestamp, pd.Timedelta, _dt.datetime, _dt.timedelta, np.datetime64,
                       np.timedelta64, _dt.date)):
        fh = [fh]
    if isinstance(fh, pd.Series):
        fh = fh.to_numpy()
    if isinstance(fh, range):
        fh = list(fh)
    if isinstance(fh, Tensor):
        fh = fh.detach().cpu().numpy()
    if not isinstance(fh, (list, tuple, np.ndarray, pd.Index)):
        raise TypeError(f"fh must be a list, array or pandas Index of future timestamps or offsets, got "
                        f"{type(fh).__name__}")
    if isinstance(fh, np.ndarray) and fh.ndim != 1:
        raise ValueError(f"fh must be one-dimensional, got an array of shape {fh.shape}")
    if len(fh) == 0:
        raise ValueError("fh is empty; pass at least one future timestamp or offset")
    inferred = pd.api.types.infer_dtype(fh, skipna=False)
    if inferred in ("datetime64", "datetime", "date"):
        idx = pd.DatetimeIndex(fh)
        if idx.isna().any():
            raise ValueError("fh contains NaT; every forecast stamp must be a valid timestamp")
        return "datetime", idx
    if inferred in ("timedelta64", "timedelta"):
        idx = pd.TimedeltaIndex(fh)
        if idx.isna().any():
            raise ValueError("fh contains NaT; every offset must be a valid duration")
        return "timedelta", idx
    if inferred in ("integer", "floating", "mixed-integer-float", "decimal"):
        if inferred == "integer" and max(abs(int(v)) for v in fh) > MAX_EXACT_INT:
            raise ValueError(f"fh holds integers beyond 2**53 = {MAX_EXACT_INT} (e.g. {max(fh, key=abs)}), which "
                             f"float64 times cannot tell apart; use the same offset-shifted index as in fit")
        arr = np.asarray(fh, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ValueError("fh contains NaN or inf; every forecast stamp must be finite")
        return "numeric", arr
    if inferred == "string":
        return _parse_strings(list(fh))
    if inferred == "boolean":
        raise TypeError("fh holds booleans; pass future timestamps or positive offsets")
    values = list(fh)
    has_time = any(isinstance(v, (pd.Timestamp, _dt.datetime, _dt.date, np.datetime64, pd.Timedelta,
                                  _dt.timedelta, np.timedelta64)) for v in values)
    has_num = any(isinstance(v, numbers.Number) and not isinstance(v, bool) for v in values)
    if has_time and has_num:
        raise TypeError("fh mixes datetimes/durations and numbers; pass either future timestamps (or durations) "
                        "or numeric offsets, not both")
    kinds = sorted({type(v).__name__ for v in values})
    raise TypeError(f"fh must hold timestamps, durations or numbers, got elements of type(s) {kinds} "
                    f"(inferred {inferred!r})")


def parse_fh(fh: Any, relative: Optional[bool], axis: TimeAxis, ends: np.ndarray,
             series_end: Sequence[Any], check: Optional[Any] = None) -> tuple[np.ndarray, list]:
    """:func:`_parse_fh`, with stamps outside pandas' nanosecond range reported in the user's terms."""
    try:
        return _parse_fh(fh, relative, axis, ends, series_end, check)
    except (pd.errors.OutOfBoundsDatetime, pd.errors.OutOfBoundsTimedelta, OverflowError):
        raise ValueError(f"fh reaches outside pandas' nanosecond range ({NS_MIN.date()} to "
                         f"{NS_MAX.date()}), in which the forecaster computes stamps and offsets; ask for "
                         f"stamps inside it") from None


def _parse_fh(fh: Any, relative: Optional[bool], axis: TimeAxis, ends: np.ndarray,
              series_end: Sequence[Any], check: Optional[Any] = None) -> tuple[np.ndarray, list]:
    """Model times ``(n_series, F)`` of the requested stamps and each series' output index.

    Args:
        fh: timestamps, durations or numbers (see the forecaster's ``predict``).
        relative: None (infer), True (offsets) or False (absolute stamps).
        axis: the fitted time axis.
        ends: (n_series,) model time of every series' last observation.
        series_end: every series' last stamp (labels), for messages and offset indexes.
        check: called with the model times ``(n_series, F)`` before any output index is built (e.g. to refuse
            stamps too far ahead before they overflow a timestamp).
    """
    if relative not in (None, True, False):
        raise TypeError(f"relative must be None, True or False, got {relative!r}")
    strings = isinstance(fh, str) or (isinstance(fh, (list, tuple, np.ndarray, pd.Index)) and len(fh) > 0
                                      and all(isinstance(x, str) for x in fh))
    kind, vals = _classify_fh(fh)
    if strings and kind == "datetime" and vals.tz is None and axis.kind == "datetime" and axis.origin.tz is not None:
        vals = vals.tz_localize(axis.origin.tz)  # strings are read in the training index's time zone
    n = len(ends)
    if kind == "datetime":
        if axis.kind != "datetime":
            raise TypeError("fh holds timestamps but the forecaster was fitted on a numeric index; pass numeric "
                            "times (or relative=True offsets)")
        if relative:
            raise ValueError("relative=True needs offsets (durations or numbers), but fh holds timestamps")
        if (vals.tz is None) != (axis.origin.tz is None):
            raise ValueError(f"fh is {'naive' if vals.tz is None else 'timezone-aware'} but the training index "
                             f"is not; use the training index's time zone")
        if vals.has_duplicates:
            raise ValueError(f"fh has duplicate stamps: {list(vals[vals.duplicated()][:5].astype(str))}")
        future = np.tile(axis.from_index(vals), (n, 1))
        indexes = [vals] * n
        absolute = True
    elif kind == "timedelta":
        if axis.kind != "datetime":
            raise TypeError("fh holds durations but the forecaster was fitted on a numeric index; pass numeric "
                            "offsets with relative=True")
        if relative is False:
            raise ValueError("relative=False needs timestamps, but fh holds durations")
        offsets = vals.as_unit("ns").asi8.astype(np.float64) / float(axis.unit.value)
        absolute = False
    elif axis.kind == "datetime":
        if relative is False:
            raise TypeError("fh holds numbers, but the forecaster was fitted on a DatetimeIndex: pass timestamps, "
                            "or numeric offsets (multiples of time_unit_) with relative=None/True")
        offsets, absolute = vals / 1.0, False
    elif relative:
        offsets, absolute = vals / axis.unit, False
    else:
        if len(np.unique(vals)) != len(vals):
            raise ValueError("fh has duplicate times")
        future = np.tile(axis.from_index(vals), (n, 1))
        indexes = [pd.Index(vals)] * n
        absolute = True
    if absolute:
        past = future <= ends[:, None]
        if past.any():
            s = int(past.any(axis=1).nonzero()[0][0])
            bad = indexes[s][past[s]]
            raise ValueError(f"fh has {int(past[s].sum())} stamp(s) at or before the end of the training series "
                             f"({series_end[s]}), first {bad[0]}; forecasts must lie after the last observation "
                             f"(or pass positive offsets)")
    else:
        if not (offsets > 0).all():
            bad = offsets[offsets <= 0]
            raise ValueError(f"fh offsets must be positive (after the end of the series), got {int(bad.size)} "
                             f"non-positive offset(s)")
        if len(np.unique(offsets)) != len(offsets):
            raise ValueError("fh has duplicate offsets")
        future = ends[:, None] + offsets[None, :]
        if check is not None:
            check(future)
        _check_resolution(future, ends, axis, series_end)
        indexes = [axis.offset_index(series_end[s], offsets) for s in range(n)]
    _check_resolution(future, ends, axis, series_end)
    return future, indexes


#: the finest time separation the forecaster resolves, in model units (its stamps go to float32 relative to the
#: context's first stamp; known covariates are fed 1e-3 units before their stamp).
MIN_SEPARATION = 1e-3


def _check_resolution(future: np.ndarray, ends: np.ndarray, axis: TimeAxis, series_end: Sequence[Any]) -> None:
    """Refuse requested stamps closer to the series' end or to each other than the model resolves."""
    for s in range(len(ends)):
        f = np.sort(future[s])
        pts = np.concatenate([[ends[s]], f])
        need = np.maximum(MIN_SEPARATION, 1e-6 * np.abs(pts[1:] - ends[s]))
        close = np.diff(pts) < need
        if close.any():
            i = int(np.argmax(close))
            res = (axis.unit * MIN_SEPARATION).round("ms") if axis.kind == "datetime" else MIN_SEPARATION * axis.unit
            what = (f"the end of the series ({series_end[s]})" if i == 0 else "the previous requested stamp")
            raise ValueError(f"fh asks for a stamp {_fmt_gap(axis, pts[i + 1] - pts[i])} after {what}; the "
                             f"forecaster resolves times to about {res} (1e-3 of its time unit, time_unit_ = "
                             f"{axis.unit}), so such a forecast would equal the last one. Request stamps at least "
                             f"{res} apart and after the end of the series")


def _fmt_gap(axis: TimeAxis, d: float) -> str:
    if axis.kind == "datetime":
        td = pd.Timedelta(int(round(d * axis.unit.value)), unit="ns")
        return str(td.round("ms") if td >= pd.Timedelta("1ms") else td)
    return f"{d * axis.unit:.3g}"
