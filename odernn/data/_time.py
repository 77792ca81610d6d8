"""Time stamps to float times: one vocabulary of units, one encoding function, and the encoder that maps back.

Every place where times enter the data module (the dataset constructors, :func:`sampling_stats`, the benchmark
loaders with a sample rate) and the forecaster go through :func:`encode_times`, so datetimes, durations and
numbers are turned into float64 times the same way everywhere:

- datetimes: ``(timestamp - origin) / unit``, computed from int64 nanoseconds (exact up to the final division),
  with the fitted :class:`TimeEncoder` returned so that float times map back to timestamps;
- durations (timedeltas): ``(duration - origin) / unit``;
- numbers: ``(time - origin) / unit`` in float64 (``origin`` 0 and ``unit`` 1 by default: times as given).

The unit vocabulary (:func:`parse_time_unit`) is the one every ``time_unit=`` argument of the library accepts:
``"ns"``, ``"us"``, ``"ms"``, ``"s"``, ``"min"``, ``"h"``, ``"D"``, ``"W"``, a duration string with a number
(``"15min"``, ``"7D"``), a ``pd.Timedelta``, ``datetime.timedelta`` or ``np.timedelta64``. Benchmarks recorded at
a fixed sample rate also accept ``"sample"`` (one sampling period).
"""

from __future__ import annotations

import datetime as _dt
import numbers
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

__all__ = ["UNIT_NAMES", "TimeEncoder", "encode_times", "parse_time_unit", "sample_times", "time_kind"]

UNIT_NAMES = ("ns", "us", "ms", "s", "min", "h", "D", "W")
"""Unit names accepted by :func:`parse_time_unit` (a duration string with a number, e.g. ``"15min"``, works too)."""

TimeKind = Literal["datetime", "timedelta", "numeric"]


def parse_time_unit(unit: Any) -> pd.Timedelta:
    """The library's one ``time_unit`` vocabulary, as a positive ``pd.Timedelta``.

    Args:
        unit: A unit name from :data:`UNIT_NAMES` (``"s"``, ``"h"``, ...), a duration string with a number
            (``"15min"``, ``"7D"``, ``"1.5h"``), a ``pd.Timedelta``, ``datetime.timedelta`` or ``np.timedelta64``.

    Returns:
        The duration of one unit.

    Raises:
        TypeError: ``unit`` is neither a string nor a duration.
        ValueError: An unknown name or a duration that is not positive.

    Example:
        >>> parse_time_unit("15min")
        Timedelta('0 days 00:15:00')
    """
    hint = f"one of {list(UNIT_NAMES)}, a duration string such as '15min' or '7D', or a pd.Timedelta"
    if isinstance(unit, str):
        try:
            step = pd.Timedelta(1, unit=unit) if unit in UNIT_NAMES else pd.Timedelta(unit)
        except (TypeError, ValueError):
            raise ValueError(f"time_unit must be {hint}, got {unit!r}") from None
        if unit not in UNIT_NAMES and not any(ch.isdigit() for ch in unit):
            # pandas also reads aliases such as "T" or "hours"; the library keeps one vocabulary.
            raise ValueError(f"time_unit must be {hint}, got {unit!r}")
    elif isinstance(unit, (pd.Timedelta, _dt.timedelta, np.timedelta64)):
        step = pd.Timedelta(unit)
    else:
        raise TypeError(f"time_unit must be {hint}, got {type(unit).__name__}")
    if pd.isna(step) or step <= pd.Timedelta(0):
        raise ValueError(f"time_unit must be a positive duration, got {unit!r}")
    return step


def _as_array(times: Any) -> np.ndarray | pd.Index:
    if isinstance(times, torch.Tensor):
        return times.detach().cpu().numpy()
    if isinstance(times, pd.Series):
        return pd.Index(times)
    if isinstance(times, pd.Index):
        return times
    arr = np.asarray(times)
    if arr.dtype == object and arr.size:
        first = next((v for v in arr.reshape(-1) if v is not None and v is not pd.NaT), None)
        if isinstance(first, (pd.Timestamp, _dt.datetime, np.datetime64)):
            return pd.DatetimeIndex(arr.reshape(-1)) if arr.ndim == 1 else arr
        if isinstance(first, (pd.Timedelta, _dt.timedelta, np.timedelta64)):
            return pd.TimedeltaIndex(arr.reshape(-1)) if arr.ndim == 1 else arr
    return arr


def time_kind(times: Any) -> TimeKind:
    """Classify times as ``"datetime"``, ``"timedelta"`` or ``"numeric"``.

    Args:
        times: Any 1-D container of times (see :func:`encode_times`).

    Raises:
        TypeError: For booleans, complex numbers, strings that are not timestamps, or other objects.
    """
    arr = _as_array(times)
    dtype = arr.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) or (isinstance(dtype, np.dtype) and dtype.kind == "M"):
        return "datetime"
    if isinstance(dtype, np.dtype) and dtype.kind == "m":
        return "timedelta"
    if pd.api.types.is_bool_dtype(dtype):
        raise TypeError("times must be numbers, datetimes or durations, got booleans")
    if pd.api.types.is_complex_dtype(dtype):
        raise TypeError(f"times must be real numbers, datetimes or durations, got complex dtype {dtype}; a cast "
                        "would drop the imaginary part")
    if pd.api.types.is_numeric_dtype(dtype):
        return "numeric"
    raise TypeError(
        f"times must be numbers, datetimes or durations, got dtype {dtype}; convert them with pd.to_datetime, "
        "pd.to_timedelta or pd.to_numeric"
    )


class TimeEncoder:
    """Converts datetimes to float times ``(timestamp - origin) / unit`` and back.

    The encoder is what makes a model's float times meaningful again: it records the unit and the origin, so
    :meth:`to_datetime` maps predictions at float times back to timestamps.

    Args:
        unit: Length of one time unit, in the vocabulary of :func:`parse_time_unit` (``"s"``, ``"h"``,
            ``"15min"``, a positive ``pd.Timedelta``, ...).
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
        self.step_ = parse_time_unit(self.unit)
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


def _real(value: Any, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number for numeric times, got {type(value).__name__}")
    out = float(value)
    if not np.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


def encode_times(times: Any, *, unit: Any = None, origin: Any = None) -> tuple[np.ndarray, TimeEncoder | None]:
    """Turn times of any kind into float64 times; the one encoding used across the library.

    Args:
        times: 1-D times, shape ``(n,)``: datetimes (``DatetimeIndex``, ``datetime64`` array or Series, a list of
            timestamps; timezone-aware allowed), durations (``TimedeltaIndex``, ``timedelta64``), or numbers
            (numpy array, list, numeric ``Index``/``Series``, tensor).
        unit: For datetimes and durations: required, in the vocabulary of :func:`parse_time_unit`. For numbers:
            ``None`` (times as given) or a positive real number that the times are divided by.
        origin: Time mapped to 0.0. Datetimes: a timestamp (default: the earliest non-NaT stamp). Durations: a
            duration (default 0). Numbers: a real number (default 0).

    Returns:
        ``(floats, encoder)``: float64 array of shape ``(n,)``, ``(times - origin) / unit`` (NaT and NaN become
        NaN), and the fitted :class:`TimeEncoder` for datetimes (``None`` otherwise). Nothing is sorted or
        checked for order here; the dataset constructors do that.

    Raises:
        TypeError: Times that are neither numbers, datetimes nor durations; a numeric ``unit``/``origin`` that is
            not a real number.
        ValueError: Times that are not 1-D; a missing ``unit`` for datetimes or durations; a non-positive unit.

    Example:
        >>> t, enc = encode_times(pd.to_datetime(["2024-01-01 00:00", "2024-01-01 00:30"]), unit="h")
        >>> t
        array([0. , 0.5])
    """
    arr = _as_array(times)
    if getattr(arr, "ndim", 1) != 1:
        raise ValueError(f"times must be 1-D, got an array of shape {np.shape(arr)}")
    kind = time_kind(arr)
    if kind == "numeric":
        step = 1.0 if unit is None else _real(unit, "unit")
        if step <= 0:
            raise ValueError(f"unit must be a positive number for numeric times, got {unit!r}")
        shift = 0.0 if origin is None else _real(origin, "origin")
        values = np.asarray(arr, dtype=np.float64)
        return (values - shift) / step if (shift or step != 1.0) else values.copy(), None
    if unit is None:
        raise ValueError(
            f"times are {kind}s, so a unit is required to turn them into floats; pass e.g. unit='s', 'min', 'h' "
            "or 'D'"
        )
    if kind == "timedelta":
        step = parse_time_unit(unit)
        idx = pd.TimedeltaIndex(arr)
        if origin is not None:
            idx = idx - pd.Timedelta(origin)
        ns = idx.as_unit("ns").asi8.astype(np.float64)
        ns[np.asarray(idx.isna())] = np.nan
        return ns / float(step.value), None
    idx = pd.DatetimeIndex(arr)
    encoder = TimeEncoder(unit, origin).fit(idx[~idx.isna()])
    return encoder.to_float(idx), encoder


def sample_times(samples: np.ndarray, sample_rate: float, time_unit: Any) -> np.ndarray:
    """Times of sample indices of a record taken at ``sample_rate`` Hz, in float64.

    Args:
        samples: Sample indices, any shape.
        sample_rate: Samples per second.
        time_unit: ``"sample"`` (the index itself) or a unit of :func:`parse_time_unit` (seconds are
            ``samples / sample_rate``).

    Returns:
        float64 array of the shape of ``samples``.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if time_unit == "sample":
        return samples
    try:
        step = parse_time_unit(time_unit)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{exc}; benchmarks recorded at a sample rate also accept 'sample'") from None
    return samples / sample_rate / step.total_seconds()
