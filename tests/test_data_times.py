"""One time encoding for the whole library (issue 11) and times that keep their gaps at any magnitude and dtype
(issue 14)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import odernn.data as D

# ----------------------------------------------------------------------------------------------------------------
# The unit vocabulary
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("unit, seconds", [
    ("ns", 1e-9), ("us", 1e-6), ("ms", 1e-3), ("s", 1.0), ("min", 60.0), ("h", 3600.0), ("D", 86400.0),
    ("W", 604800.0), ("15min", 900.0), ("7D", 604800.0), ("1.5h", 5400.0), (pd.Timedelta(minutes=30), 1800.0),
    (dt.timedelta(seconds=2), 2.0), (np.timedelta64(3, "ms"), 3e-3),
])
def test_parse_time_unit_vocabulary(unit, seconds):
    assert D.parse_time_unit(unit).total_seconds() == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize("unit, error, message", [
    ("hours", ValueError, r"time_unit must be one of \['ns', 'us', 'ms', 's', 'min', 'h', 'D', 'W'\], a duration "
                          r"string such as '15min' or '7D', or a pd.Timedelta, got 'hours'"),
    ("T", ValueError, r"got 'T'"),
    ("0s", ValueError, r"time_unit must be a positive duration, got '0s'"),
    (pd.Timedelta(-1, "h"), ValueError, r"positive duration"),
    (5, TypeError, r"time_unit must be one of .* got int"),
    ("sample", ValueError, r"got 'sample'"),  # only the benchmarks with a sample rate know samples
])
def test_parse_time_unit_errors(unit, error, message):
    with pytest.raises(error, match=message):
        D.parse_time_unit(unit)


# ----------------------------------------------------------------------------------------------------------------
# encode_times
# ----------------------------------------------------------------------------------------------------------------


def test_encode_datetimes_with_origin_timezone_and_nat():
    idx = pd.DatetimeIndex(["2024-03-01 00:00", "NaT", "2024-03-01 01:30"], tz="Europe/Paris")
    t, enc = D.encode_times(idx, unit="h")
    np.testing.assert_array_equal(t, [0.0, np.nan, 1.5])
    assert enc.origin_ == idx[0] and enc.to_datetime([1.5])[0] == idx[2]
    t2, _ = D.encode_times(pd.Series(idx), unit="min", origin="2024-02-29 23:00+01:00")
    np.testing.assert_array_equal(t2, [60.0, np.nan, 150.0])
    t3, enc3 = D.encode_times([pd.Timestamp("2020-01-02"), dt.datetime(2020, 1, 1)], unit="D")
    np.testing.assert_array_equal(t3, [1.0, 0.0])  # the default origin is the earliest stamp, not the first
    with pytest.raises(ValueError, match=r"times are datetimes, so a unit is required.*unit='s'"):
        D.encode_times(idx)


def test_encode_durations_and_numbers():
    t, enc = D.encode_times(pd.to_timedelta(["1h", "90min", "NaT"]), unit="min", origin="30min")
    np.testing.assert_array_equal(t, [30.0, 60.0, np.nan])
    assert enc is None
    t, enc = D.encode_times(np.array([10, 12, 17]), unit=2, origin=10)
    assert t.dtype == np.float64 and enc is None
    np.testing.assert_array_equal(t, [0.0, 1.0, 3.5])
    np.testing.assert_array_equal(D.encode_times(torch.tensor([1.5, 2.5]))[0], [1.5, 2.5])
    np.testing.assert_array_equal(D.encode_times(pd.Index([3, 4]))[0], [3.0, 4.0])


def test_encode_times_errors():
    with pytest.raises(ValueError, match=r"times must be 1-D, got an array of shape \(2, 2\)"):
        D.encode_times(np.zeros((2, 2)))
    with pytest.raises(TypeError, match="got booleans"):
        D.encode_times(np.array([True, False]))
    with pytest.raises(TypeError, match=r"got dtype <U10; convert them with pd.to_datetime"):
        D.encode_times(np.array(["2020-01-01", "2020-01-02"]))
    with pytest.raises(ValueError, match=r"unit must be a positive number for numeric times, got -1"):
        D.encode_times([1.0, 2.0], unit=-1)
    with pytest.raises(TypeError, match=r"unit must be a real number for numeric times, got str"):
        D.encode_times([1.0, 2.0], unit="s")


def test_time_kind():
    assert D.time_kind(pd.date_range("2020", periods=2)) == "datetime"
    assert D.time_kind(pd.to_timedelta([1, 2], unit="s")) == "timedelta"
    assert D.time_kind([1, 2]) == "numeric"
    with pytest.raises(TypeError, match="numbers, datetimes or durations"):
        D.time_kind(["a", "b"])


# ----------------------------------------------------------------------------------------------------------------
# Large magnitudes keep their gaps (issue 14)
# ----------------------------------------------------------------------------------------------------------------


def test_epoch_seconds_keep_their_gaps_in_float32():
    base = 1.7e9
    t = base + np.array([0.0, 1.0, 2.5, 4.0, 4.25])
    ds = D.IrregularSeriesDataset.from_arrays([(t, np.arange(5.0)), (t + 100.0, np.arange(5.0))])
    torch.testing.assert_close(ds[0]["t"], torch.tensor([0.0, 1.0, 2.5, 4.0, 4.25]))
    torch.testing.assert_close(ds[1]["t"], torch.tensor([0.0, 1.0, 2.5, 4.0, 4.25]))
    np.testing.assert_array_equal(ds.time_offsets, [base, base + 100.0])
    w = ds.windows(2, horizon=1)
    torch.testing.assert_close(w[1]["t"], torch.tensor([2.5, 4.0]))
    torch.testing.assert_close(w[1]["t_future"], torch.tensor([4.25]))
    small = D.IrregularSeriesDataset.from_arrays([(np.array([3.0, 4.5]), np.ones(2))])
    np.testing.assert_array_equal(small.time_offsets, [0.0])  # times that fit are kept as given
    exact = D.IrregularSeriesDataset.from_arrays([(t, np.arange(5.0))], dtype=torch.float64)
    np.testing.assert_array_equal(exact[0]["t"].numpy(), t)


def test_times_no_dtype_can_hold_are_refused():
    t = np.array([0.0, 2e9, 2e9 + 1.0])
    with pytest.raises(ValueError, match=r"series 0: its times span 2e\+09 with gaps as small as 1, which "
                                         r"torch.float32 cannot hold.*dtype=torch.float64"):
        D.IrregularSeriesDataset.from_arrays([(t, np.ones(3))])
    assert D.IrregularSeriesDataset.from_arrays([(t, np.ones(3))], dtype=torch.float64)[0]["t"][2] == 2e9 + 1


@settings(max_examples=80, deadline=None)
@given(
    exponent=st.integers(0, 12),
    mantissa=st.floats(1.0, 9.99),
    gaps=st.lists(st.integers(1, 1000), min_size=1, max_size=30),
    gap_scale=st.sampled_from([1e-3, 0.1, 1.0, 60.0]),
    time_dtype=st.sampled_from(["float64", "int64", "datetime64[ns]"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_gaps_survive_any_magnitude_and_dtype(exponent, mantissa, gaps, gap_scale, time_dtype, dtype):
    base = mantissa * 10.0**exponent
    rel = np.concatenate([[0.0], np.cumsum(np.array(gaps, dtype=np.float64) * gap_scale)])
    if time_dtype == "int64":
        rel = np.round(rel)
        rel = rel[np.concatenate([[True], np.diff(rel) > 0])]
        times = np.int64(round(base)) + rel.astype(np.int64)
        true = rel
        kwargs = {}
    elif time_dtype == "datetime64[ns]":
        times = pd.Timestamp("2024-05-01") + pd.to_timedelta(rel + base % 1e6, unit="s")
        true = rel
        kwargs = {"time_unit": "s"}
    else:
        times = base + rel
        true = np.diff(times, prepend=times[0]).cumsum()  # the float64 gaps as given
        kwargs = {}
    values = np.arange(len(times), dtype=np.float64)
    ds = D.IrregularSeriesDataset.from_arrays([(times, values)], dtype=dtype, **kwargs)
    item_t = ds[0]["t"]
    assert item_t.dtype == dtype
    got = item_t.double().numpy()
    np.testing.assert_allclose(np.diff(got), np.diff(true), rtol=1e-3, atol=0)
    assert bool((np.diff(got) > 0).all())
    batch = D.collate_irregular([ds[0]])
    assert bool((batch["t"][0, 1:] > batch["t"][0, :-1]).all())


# ----------------------------------------------------------------------------------------------------------------
# collate_irregular: NaN times refused, NaN values masked
# ----------------------------------------------------------------------------------------------------------------


def test_collate_refuses_nan_times():
    good = {"x": torch.ones(3, 1), "t": torch.tensor([0.0, 1.0, 2.0])}
    bad = {"x": torch.ones(3, 1), "t": torch.tensor([0.0, 1.0, float("nan")])}
    with pytest.raises(ValueError, match=r"batch\[1\]: times 't' contain 1 NaN/inf value\(s\), first at "
                                         r"position\(s\) \[2\]; every stamp needs a finite time"):
        D.collate_irregular([good, bad])
    future = dict(good, x_future=torch.ones(2, 1), t_future=torch.tensor([float("inf"), 5.0]))
    with pytest.raises(ValueError, match=r"batch\[0\]: times 't_future' contain 1 NaN/inf value\(s\), first at "
                                         r"position\(s\) \[0\]"):
        D.collate_irregular([future])


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(1, 8), f=st.integers(1, 3), given_mask=st.booleans())
def test_collate_masks_nan_values(data, n, f, given_mask):
    x = torch.tensor(data.draw(st.lists(st.floats(-5, 5) | st.just(float("nan")), min_size=n * f,
                                        max_size=n * f))).reshape(n, f)
    item = {"x": x, "t": torch.arange(float(n))}
    if given_mask:
        item["mask"] = torch.ones(n, f, dtype=torch.bool)  # a mask that wrongly says "observed" at NaN
    batch = D.collate_irregular([item])
    nan = torch.isnan(x)
    assert torch.equal(batch["mask"][0], ~nan)
    assert not torch.isnan(batch["x"]).any()
    assert torch.equal(batch["x"][0][nan], torch.zeros(int(nan.sum())))
    assert torch.equal(batch["x"][0][~nan], x[~nan])


def test_collate_refuses_infinite_observed_values():
    item = {"x": torch.tensor([[1.0], [float("inf")]]), "t": torch.tensor([0.0, 1.0])}
    with pytest.raises(ValueError, match=r"batch\[0\]: 'x' is inf at step 1, feature 0; use NaN"):
        D.collate_irregular([item])
    item["mask"] = torch.tensor([[True], [False]])  # an unobserved inf is just padding
    assert D.collate_irregular([item])["x"][0, 1, 0] == 0.0
