"""Generic irregular series (:class:`odernn.data.IrregularSeriesDataset`), windowing, collate, time encoding and
the irregularity tools. No data files needed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import odernn
import odernn.data as D

needs_odernn = pytest.mark.skipif(not hasattr(odernn, "ODERNN"), reason="odernn.ODERNN is not there yet")


def _frame() -> pd.DataFrame:
    idx = pd.to_datetime(["2021-03-04 08:00", "2021-03-04 09:30", "2021-03-04 10:00", "2021-03-04 13:15"])
    return pd.DataFrame({"a": [1.0, np.nan, 3.0, 4.0], "b": [np.nan, 2.0, np.nan, 5.0]}, index=idx)


# ----------------------------------------------------------------------------------------------------------------
# Construction
# ----------------------------------------------------------------------------------------------------------------


def test_from_frame_with_datetimes_records_the_time_unit():
    ds = D.IrregularSeriesDataset.from_frame(_frame(), time_unit="h")
    item = ds[0]
    torch.testing.assert_close(item["t"], torch.tensor([0.0, 1.5, 2.0, 5.25]))
    assert torch.equal(item["mask"], torch.tensor([[True, False], [False, True], [True, False], [True, True]]))
    torch.testing.assert_close(item["x"], torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [4.0, 5.0]]))
    assert ds.feature_names == ["a", "b"]
    back = ds.time_encoder.to_datetime(item["t"])
    assert back.equals(pd.DatetimeIndex(_frame().index))
    assert ds.time_encoder.to_float(pd.to_datetime(["2021-03-05 08:00"]))[0] == 24.0


@pytest.mark.parametrize(
    "unit, expected",
    [("s", 5400.0), ("min", 90.0), ("h", 1.5), ("D", 1.5 / 24), ("W", 1.5 / 168), (pd.Timedelta(minutes=30), 3.0)],
)
def test_time_units(unit, expected):
    ds = D.IrregularSeriesDataset.from_frame(_frame(), time_unit=unit, dtype=torch.float64)
    assert ds[0]["t"][1].item() == pytest.approx(expected)


def test_origin_and_timezone_are_kept():
    frame = _frame().tz_localize("Europe/Paris")
    ds = D.IrregularSeriesDataset.from_frame(frame, time_unit="min", origin="2021-03-04 07:00+01:00")
    assert ds[0]["t"][0].item() == 60.0
    assert ds.time_encoder.to_datetime([60.0])[0] == frame.index[0]


def test_from_frame_numeric_index_and_columns_selection():
    df = pd.DataFrame({"v": [1.0, 2.0, np.nan], "w": [0.5, np.nan, np.nan], "note": ["x", "y", "z"]},
                      index=[0.0, 0.25, 2.0])
    ds = D.IrregularSeriesDataset.from_frame(df, columns=["v", "w"])
    assert ds.time_encoder is None
    torch.testing.assert_close(ds[0]["t"], torch.tensor([0.0, 0.25]))  # the all-NaN row is not an observation
    series = D.IrregularSeriesDataset.from_frame(df["v"])
    assert series.feature_names == ["v"]


def test_from_long_groups_by_id_and_shares_the_origin():
    df = pd.DataFrame({
        "id": ["b", "b", "a", "a", "a"],
        "time": pd.to_datetime(["2020-01-02", "2020-01-04", "2020-01-01", "2020-01-03", "2020-01-05"]),
        "hr": [60.0, np.nan, 70.0, 71.0, np.nan],
        "temp": [36.6, 37.0, np.nan, 36.9, 38.0],
    })
    ds = D.IrregularSeriesDataset.from_long(df, id_col="id", time_col="time", time_unit="D")
    assert ds.series_ids == ["b", "a"] and ds.feature_names == ["hr", "temp"]
    torch.testing.assert_close(ds[0]["t"], torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(ds[1]["t"], torch.tensor([0.0, 2.0, 4.0]))
    back = ds.to_long(id_name="id", time_name="time")
    expected = df.sort_values("id", key=lambda s: s.map({"b": 0, "a": 1}), kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(back, expected, check_dtype=False)


def test_from_arrays_with_tensors_and_1d_values():
    ds = D.IrregularSeriesDataset.from_arrays(
        [(torch.tensor([0.0, 0.5, 2.0]), torch.tensor([1.0, float("nan"), 3.0])), (np.array([1.0, 4.0]), [7.0, 8.0])],
        feature_names=["value"], ids=["s1", "s2"],
    )
    assert len(ds) == 2 and ds.n_features == 1
    assert ds[0]["mask"][:, 0].tolist() == [True, False, True]
    np.testing.assert_array_equal(ds.lengths(), [3, 2])


# ----------------------------------------------------------------------------------------------------------------
# Bad input: each error says what was wrong and how to fix it
# ----------------------------------------------------------------------------------------------------------------


def test_unsorted_timestamps():
    df = _frame().iloc[[0, 2, 1, 3]]
    with pytest.raises(ValueError, match=r"strictly increasing; found 1 non-increasing step\(s\), first at position 2 "
                                         r"\(2021-03-04 09:30:00 after 2021-03-04 10:00:00\); sort the frame with "
                                         r"df.sort_index\(\)"):
        D.IrregularSeriesDataset.from_frame(df, time_unit="h")


def test_duplicate_timestamps():
    df = _frame().iloc[[0, 1, 1, 3]]
    with pytest.raises(ValueError, match=r"duplicate timestamps: 1 repeated, first 2021-03-04 09:30:00 at positions 1 "
                                         r"and 2.*groupby"):
        D.IrregularSeriesDataset.from_frame(df, time_unit="h")
    long = pd.DataFrame({"id": [1, 1], "t": [3.0, 3.0], "v": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"series 1 \(id=1\): duplicate timestamps"):
        D.IrregularSeriesDataset.from_long(long, id_col="id", time_col="t")


def test_unsorted_within_a_long_series():
    long = pd.DataFrame({"id": ["a", "a", "a"], "t": [0.0, 2.0, 1.0], "v": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match=r"series 'a'.*first at position 2 \(1.0 after 2.0\); sort the frame with "
                                         r"df.sort_values\(\['id', 't'\]\)"):
        D.IrregularSeriesDataset.from_long(long, id_col="id", time_col="t")


def test_nan_in_time_columns():
    long = pd.DataFrame({"id": [1, 1, 2], "t": [0.0, np.nan, 1.0], "v": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match=r"time_col='t' has 1 missing value\(s\) \(NaN/NaT\) at rows \[1\].*dropna"):
        D.IrregularSeriesDataset.from_long(long, id_col="id", time_col="t")
    df = _frame()
    df.index = pd.DatetimeIndex([df.index[0], pd.NaT, df.index[2], df.index[3]])
    with pytest.raises(ValueError, match=r"missing value\(s\) \(NaN/NaT\), first at position\(s\) \[1\]"):
        D.IrregularSeriesDataset.from_frame(df, time_unit="h")
    with pytest.raises(ValueError, match=r"series\[0\]: time column has 1 missing"):
        D.IrregularSeriesDataset.from_arrays([(np.array([0.0, np.nan]), np.array([1.0, 2.0]))])


def test_all_nan_series():
    long = pd.DataFrame({"id": ["a", "b", "b"], "t": [0.0, 0.0, 1.0], "v": [np.nan, 1.0, 2.0]})
    with pytest.raises(ValueError, match=r"series 'a' \(id='a'\): all values are NaN, so the series has no "
                                         r"observation; drop it"):
        D.IrregularSeriesDataset.from_long(long, id_col="id", time_col="t")
    with pytest.raises(ValueError, match="all values are NaN"):
        D.IrregularSeriesDataset.from_arrays([(np.array([0.0, 1.0]), np.array([np.nan, np.nan]))])


def test_series_shorter_than_a_window():
    ds = D.IrregularSeriesDataset.from_arrays([(np.arange(10.0), np.ones(10)), (np.arange(5.0), np.ones(5))],
                                              ids=["long", "short"])
    with pytest.raises(ValueError, match=r"series 'short' \(index 1\) has 5 stamps but a window needs 8 \(length=6, "
                                         r"horizon=2\); use a shorter length, drop_last=False.*skip_short=True"):
        ds.windows(6, horizon=2)
    assert {ds.series_ids[w[0]] for w in ds.windows(6, horizon=2, skip_short=True).spans} == {"long"}
    with pytest.raises(ValueError, match="length must be >= 1, got 0"):
        ds.windows(0)


def test_wrong_column_names():
    with pytest.raises(ValueError, match=r"columns: column\(s\) \['c'\] not found; available columns are \['a', 'b'\]"):
        D.IrregularSeriesDataset.from_frame(_frame(), columns=["a", "c"], time_unit="h")
    long = pd.DataFrame({"id": [1], "t": [0.0], "v": [1.0]})
    with pytest.raises(ValueError, match=r"time_col='time' is not a column; available columns are \['id', 't', 'v'\]"):
        D.IrregularSeriesDataset.from_long(long, id_col="id", time_col="time")
    with pytest.raises(ValueError, match=r"id_col='ID' is not a column"):
        D.IrregularSeriesDataset.from_long(long, id_col="ID", time_col="t")


def test_non_numeric_values_and_times():
    df = _frame().assign(label=["x", "y", "z", "w"])
    with pytest.raises(TypeError, match=r"value column\(s\) 'label' \(.*\) are not numeric; convert them.*to_numeric"):
        D.IrregularSeriesDataset.from_frame(df, time_unit="h")
    with pytest.raises(TypeError, match=r"index must be a DatetimeIndex or numeric times.*set_index"):
        D.IrregularSeriesDataset.from_frame(df.reset_index(drop=True).set_index("label"))
    long = pd.DataFrame({"id": [1, 1], "t": ["2020-01-01", "2020-01-02"], "v": [1.0, 2.0]})
    with pytest.raises(TypeError, match=r"time_col='t' must hold datetimes or numbers.*pd.to_datetime"):
        D.IrregularSeriesDataset.from_long(long, id_col="id", time_col="t")
    with pytest.raises(TypeError, match=r"series\[0\]: values must be numeric"):
        D.IrregularSeriesDataset.from_arrays([(np.arange(2.0), np.array(["a", "b"]))])


def test_datetimes_need_a_time_unit_and_numbers_refuse_one():
    with pytest.raises(ValueError, match=r"DatetimeIndex, so time_unit= is required.*time_unit='s'"):
        D.IrregularSeriesDataset.from_frame(_frame())
    with pytest.raises(ValueError, match=r"time_unit=/origin= apply to a DatetimeIndex.*numeric"):
        D.IrregularSeriesDataset.from_frame(_frame().reset_index(drop=True), time_unit="s")
    with pytest.raises(ValueError, match=r"time_unit must be one of \['ns', 'us', 'ms', 's', 'min', 'h', 'D', 'W'\]"):
        D.IrregularSeriesDataset.from_frame(_frame(), time_unit="hours")


# ----------------------------------------------------------------------------------------------------------------
# Windows and collate
# ----------------------------------------------------------------------------------------------------------------


def test_windows_inputs_and_horizon_targets():
    t = np.array([0.0, 1.0, 1.5, 4.0, 4.5, 7.0, 9.0, 9.5])
    v = np.arange(8.0)
    w = D.IrregularSeriesDataset.from_arrays([(t, v)]).windows(3, stride=2, horizon=2)
    assert [(s, e) for _, s, e in w.spans] == [(0, 3), (2, 5), (4, 7)][: len(w.spans)]
    assert len(w) == 2  # start 4 would need stamps up to index 8
    item = w[1]
    torch.testing.assert_close(item["t"], torch.tensor([1.5, 4.0, 4.5]))
    torch.testing.assert_close(item["t_future"], torch.tensor([7.0, 9.0]))
    torch.testing.assert_close(item["x_future"][:, 0], torch.tensor([5.0, 6.0]))
    tail = D.IrregularSeriesDataset.from_arrays([(t, v)]).windows(3, stride=3, horizon=2, drop_last=False)
    assert [(s, e) for _, s, e in tail.spans] == [(0, 3), (3, 6)]
    tail = D.IrregularSeriesDataset.from_arrays([(t, v)]).windows(4, stride=4, horizon=1, drop_last=False)
    assert [(s, e) for _, s, e in tail.spans] == [(0, 4), (4, 7)]
    torch.testing.assert_close(tail[1]["t_future"], torch.tensor([9.5]))


def test_collate_pads_values_times_mask_and_lengths():
    ds = D.IrregularSeriesDataset.from_arrays(
        [(np.array([0.0, 2.0, 3.0]), np.array([[1.0, np.nan], [2.0, 2.0], [np.nan, 3.0]])),
         (np.array([10.0]), np.array([[5.0, 6.0]]))]
    )
    batch = D.collate_irregular([ds[0], ds[1]])
    assert batch["x"].shape == (2, 3, 2) and batch["mask"].shape == (2, 3, 2)
    torch.testing.assert_close(batch["t"], torch.tensor([[0.0, 2.0, 3.0], [10.0, 11.0, 12.0]]))
    assert batch["lengths"].tolist() == [3, 1]
    assert batch["mask"][1, 1:].any().item() is False and batch["x"][1, 1:].abs().sum().item() == 0
    assert batch["mask"][0].tolist() == [[True, False], [True, True], [False, True]]
    assert batch["series"].tolist() == [0, 1]


def test_collate_targets_continue_after_the_inputs():
    t = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    w = D.IrregularSeriesDataset.from_arrays([(t, np.arange(6.0))]).windows(4, stride=4, horizon=1, drop_last=False)
    batch = D.collate_irregular([w[0], w[1]])
    torch.testing.assert_close(batch["t"], torch.tensor([[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]))
    assert batch["lengths"].tolist() == [4, 1] and batch["lengths_future"].tolist() == [1, 1]
    torch.testing.assert_close(batch["t_future"], torch.tensor([[4.0], [5.0]]))
    torch.testing.assert_close(batch["x_future"][:, 0, 0], torch.tensor([4.0, 5.0]))
    # a sample without targets gets padded target times after its last input time
    items = [
        {"x": torch.ones(2, 1), "t": torch.tensor([0.0, 1.0]), "x_future": torch.ones(2, 1),
         "t_future": torch.tensor([2.0, 3.0])},
        {"x": torch.ones(1, 1), "t": torch.tensor([5.0]), "x_future": torch.ones(0, 1), "t_future": torch.ones(0)},
    ]
    batch = D.collate_irregular(items)
    torch.testing.assert_close(batch["t_future"], torch.tensor([[2.0, 3.0], [6.0, 7.0]]))
    assert batch["lengths_future"].tolist() == [2, 0] and not batch["mask_future"][1].any()
    assert batch["mask_future"][0].all()  # no mask given: every real value counts as observed


def test_collate_errors():
    with pytest.raises(ValueError, match="cannot collate an empty batch"):
        D.collate_irregular([])
    with pytest.raises(ValueError, match=r"need keys 'x' and 't'; missing \['t'\]"):
        D.collate_irregular([{"x": torch.zeros(2, 1)}])
    big = {"x": torch.zeros(2, 1), "t": torch.tensor([2.0**25, 2.0**25 + 4.0])}
    small = {"x": torch.zeros(3, 1), "t": torch.tensor([0.0, 1.0, 2.0])}
    with pytest.raises(ValueError, match=r"batch\[0\]: times 't' are not strictly increasing after padding"):
        D.collate_irregular([big, small])


@st.composite
def _series_lists(draw):
    n_series = draw(st.integers(1, 4))
    n_feat = draw(st.integers(1, 3))
    out = []
    for _ in range(n_series):
        n = draw(st.integers(1, 25))
        gaps = draw(st.lists(st.integers(1, 1000), min_size=n, max_size=n))
        times = np.cumsum(np.array(gaps, dtype=np.float64)) / 8.0  # exact in float32
        obs = draw(st.lists(st.lists(st.booleans(), min_size=n_feat, max_size=n_feat), min_size=n, max_size=n))
        obs = np.array(obs, dtype=bool)
        obs[draw(st.integers(0, n - 1)), draw(st.integers(0, n_feat - 1))] = True  # at least one observation
        vals = np.array(draw(st.lists(st.integers(-10_000, 10_000), min_size=n * n_feat, max_size=n * n_feat)),
                        dtype=np.float64).reshape(n, n_feat) / 4.0
        out.append((times, np.where(obs, vals, np.nan)))
    return out


@settings(max_examples=60, deadline=None)
@given(series=_series_lists(), length=st.integers(1, 9), batch_size=st.integers(1, 5))
def test_windowing_and_collate_keep_every_observation_once_with_its_time(series, length, batch_size):
    ds = D.IrregularSeriesDataset.from_arrays(series)
    windows = ds.windows(length, drop_last=False)
    seen = []
    for lo in range(0, len(windows), batch_size):
        batch = D.collate_irregular([windows[k] for k in range(lo, min(lo + batch_size, len(windows)))])
        t = batch["t"]
        assert bool((t[:, 1:] > t[:, :-1]).all())  # strictly increasing, padding included
        for b in range(t.shape[0]):
            n = int(batch["lengths"][b])
            assert not batch["mask"][b, n:].any()
            for i, f in batch["mask"][b, :n].nonzero().tolist():
                seen.append((int(batch["series"][b]), float(t[b, i]), f, float(batch["x"][b, i, f])))
    expected = [
        (s, float(tt), f, float(v))
        for s, (times, vals) in enumerate(series)
        for tt, row in zip(times, vals)
        for f, v in enumerate(row)
        if not np.isnan(v)
    ]
    assert sorted(seen) == sorted(expected)


@settings(max_examples=40, deadline=None)
@given(series=_series_lists(), length=st.integers(1, 6), stride=st.integers(1, 6), horizon=st.integers(0, 3))
def test_windows_take_consecutive_stamps_and_the_next_horizon(series, length, stride, horizon):
    ds = D.IrregularSeriesDataset.from_arrays(series, dtype=torch.float64)
    try:
        windows = ds.windows(length, stride=stride, horizon=horizon)
    except ValueError:
        assert min(len(t) for t, _ in series) < length + horizon
        return
    for k in range(len(windows)):
        item = windows[k]
        s, start = item["series"], item["start"]
        times = series[s][0]
        np.testing.assert_array_equal(item["t"].numpy(), times[start:start + length])
        np.testing.assert_array_equal(item["t_future"].numpy(), times[start + length:start + length + horizon])
        assert start % stride == 0


@pytest.mark.parametrize("unit", ["s", "min", "h", "D"])
@settings(max_examples=25, deadline=None)
@given(minutes=st.lists(st.integers(0, 10**6), min_size=1, max_size=30, unique=True))
def test_time_encoder_round_trip(unit, minutes):
    stamps = pd.Timestamp("2019-06-01 12:00") + pd.to_timedelta(sorted(minutes), unit="min")
    enc = D.TimeEncoder(unit).fit(stamps)
    assert enc.origin_ == stamps[0]
    assert enc.to_datetime(enc.to_float(stamps)).equals(pd.DatetimeIndex(stamps))


# ----------------------------------------------------------------------------------------------------------------
# Irregularity tools
# ----------------------------------------------------------------------------------------------------------------


def test_drop_stamps_exact_and_reproducible():
    kept = D.drop_stamps(1000, 0.25, seed=3)
    assert kept.size == 750 and kept.dtype == np.int64
    assert bool((np.diff(kept) > 0).all()) and kept.min() >= 0 and kept.max() < 1000
    np.testing.assert_array_equal(kept, D.drop_stamps(np.zeros(1000), 0.25, seed=3))
    assert not np.array_equal(kept, D.drop_stamps(1000, 0.25, seed=4))
    torch_kept = D.drop_stamps(1000, 0.25, generator=torch.Generator().manual_seed(0))
    assert torch_kept.size == 750
    assert D.drop_stamps(10, 0.0, seed=0).tolist() == list(range(10)) and D.drop_stamps(10, 1.0, seed=0).size == 0


def test_drop_stamps_bernoulli_matches_the_walker_rule():
    rng, ref = np.random.RandomState(891374), np.random.RandomState(891374)
    kept = D.drop_stamps(500, 0.1, generator=rng, method="bernoulli")
    expected = [i for i in range(500) if ref.rand() < 0.9]
    assert kept.tolist() == expected
    assert rng.rand() == ref.rand()  # the shared generator advanced by exactly one draw per stamp


def test_drop_stamps_errors():
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\], got 1.5"):
        D.drop_stamps(10, 1.5, seed=0)
    with pytest.raises(ValueError, match="either seed= or generator="):
        D.drop_stamps(10, 0.1, seed=0, generator=np.random.default_rng(0))
    with pytest.raises(TypeError, match="generator must be a numpy Generator"):
        D.drop_stamps(10, 0.1, generator="abc")
    with pytest.raises(ValueError, match="method must be 'exact' or 'bernoulli'"):
        D.drop_stamps(10, 0.1, seed=0, method="poisson")


def test_sampling_stats_single_and_several():
    s = D.sampling_stats(np.array([0.0, 1.0, 3.0, 6.0]), np.array([[1, 0], [1, 1], [0, 1], [1, 1]]), names=["a", "b"])
    assert s["n"] == 4 and s["duration"] == 6.0
    assert s["mean_gap"] == 2.0 and s["median_gap"] == 2.0 and s["min_gap"] == 1.0 and s["max_gap"] == 3.0
    assert s["cv_gap"] == pytest.approx(np.std([1, 2, 3]) / 2.0)
    assert s["missing_a"] == 0.25 and s["missing_b"] == 0.25
    regular = D.sampling_stats(torch.arange(10.0))
    assert regular["cv_gap"] == 0.0
    frame = D.sampling_stats([np.arange(5.0), np.array([0.0, 10.0])])
    assert isinstance(frame, pd.DataFrame)
    assert frame["n"].tolist() == [5, 2] and frame["max_gap"].tolist() == [1.0, 10.0]
    dt = D.sampling_stats(pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-04"]), unit="D")
    assert dt["mean_gap"] == 1.5
    with pytest.raises(ValueError, match=r"mask must have one row per time stamp \(3\)"):
        D.sampling_stats(np.arange(3.0), np.ones((2, 1)))


def test_dataset_sampling_stats_reports_missing_fractions():
    ds = D.IrregularSeriesDataset.from_frame(_frame(), time_unit="h")
    stats = ds.sampling_stats()
    assert stats.loc[0, "n"] == 4 and stats.loc[0, "duration"] == 5.25
    assert stats.loc[0, "missing_a"] == 0.25 and stats.loc[0, "missing_b"] == 0.5


# ----------------------------------------------------------------------------------------------------------------
# Straight into odernn.ODERNN
# ----------------------------------------------------------------------------------------------------------------


@needs_odernn
def test_collated_user_series_train_odernn_for_one_step():
    rng = np.random.default_rng(0)
    series = []
    for n in (12, 7, 9):
        t = np.cumsum(rng.uniform(0.1, 1.0, n))
        v = rng.normal(size=(n, 17))
        v[rng.random((n, 17)) < 0.3] = np.nan
        v[:, 0] = rng.normal(size=n)  # every stamp observes something
        series.append((t, v))
    windows = D.IrregularSeriesDataset.from_arrays(series).windows(8, drop_last=False)
    loader = torch.utils.data.DataLoader(windows, batch_size=4, collate_fn=D.collate_irregular)
    batch = next(iter(loader))
    assert batch["x"].shape[0] == 4 and batch["lengths"].min() < 8  # padded samples in the batch
    torch.manual_seed(0)
    model = odernn.ODERNN("hbnode", 17, 8, 17, rtol=1e-3, atol=1e-4)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    out = model(batch["x"], batch["t"], mask=batch["mask"])
    assert out.shape == batch["x"].shape
    loss = ((out - batch["x"]) ** 2 * batch["mask"]).sum() / batch["mask"].sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss.detach())
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))


def test_infinite_values_and_empty_input():
    with pytest.raises(ValueError, match=r"values contain inf \(first at row 1, feature 0\); use NaN for unobserved"):
        D.IrregularSeriesDataset.from_arrays([(np.arange(2.0), np.array([1.0, np.inf]))])
    with pytest.raises(ValueError, match=r"series is empty; pass at least one \(times, values\) pair"):
        D.IrregularSeriesDataset.from_arrays([])
