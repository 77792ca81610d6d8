"""The data layer refuses complex values and values whose squares overflow, by name, and its statistics never
overflow silently (issue 18, item 6, data-layer part)."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import odernn.data as D
from odernn.data._silverbox import Silverbox
from odernn.data._validate import square_limit, training_stats

T4 = np.arange(4.0)


@pytest.fixture(autouse=True)
def _no_silent_casts():
    # numpy's ComplexWarning / torch's "discards the imaginary part" must never be the only signal
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _long(values):
    return pd.DataFrame({"id": [0, 0, 1, 1], "t": [0.0, 1.0, 0.0, 1.0], "v": values})


@pytest.mark.parametrize("make", [
    lambda: D.IrregularSeriesDataset.from_arrays([(T4, np.array([1, 2, 3, 4j]))]),
    lambda: D.IrregularSeriesDataset.from_arrays([(T4, torch.tensor([1, 2, 3, 4j]))]),
    lambda: D.IrregularSeriesDataset.from_arrays([(T4, [1.0, 2.0, 3.0, 1 + 2j])]),
    lambda: D.IrregularSeriesDataset.from_frame(pd.DataFrame({"a": [1 + 1j, 2, 3, 4]}, index=T4)),
    lambda: D.IrregularSeriesDataset.from_long(_long(np.array([1, 2, 3, 1j])), id_col="id", time_col="t"),
    lambda: D.IrregularSeriesDataset([T4], [np.full(4, 1j)], feature_names=["a"]),
    lambda: D.collate_irregular([{"x": torch.ones(3, 1) * 1j, "t": torch.arange(3.0)}]),
], ids=["arrays", "tensor", "list", "frame", "long", "init", "collate"])
def test_complex_values_are_refused(make):
    with pytest.raises(TypeError, match="complex"):
        make()


@pytest.mark.parametrize("make", [
    lambda: D.IrregularSeriesDataset.from_arrays([(T4 + 0j, np.ones(4))]),
    lambda: D.IrregularSeriesDataset([T4 + 1j], [np.ones(4)], feature_names=["a"]),
    lambda: D.encode_times(T4 + 1j),
    lambda: D.collate_irregular([{"x": torch.ones(3, 1), "t": torch.arange(3.0) * 1j}]),
], ids=["arrays", "init", "encode_times", "collate"])
def test_complex_times_are_refused(make):
    with pytest.raises(TypeError, match="complex|must be numeric"):
        make()


def test_square_limits():
    assert np.isfinite(square_limit() ** 2) and square_limit() > 1e154
    with np.errstate(over="ignore"):
        assert np.isinf(np.float64(square_limit() * 1.0000001) ** 2)
    assert 1.8e19 < square_limit(torch.float32) < 1.9e19


@pytest.mark.parametrize("dtype,bad,ok", [(torch.float64, 1e155, 1e153), (torch.float32, 1e20, 1e18)])
def test_values_whose_squares_overflow_are_refused_in_every_constructor(dtype, bad, ok):
    hint = "" if dtype == torch.float64 else r".*dtype=torch.float64"
    match = rf"value -?{bad:.0e}".replace("e+", r"e\+") + rf" at row 3 \(time 3.0\), feature '0' is too large.*{hint}"
    for v in (bad, -bad):
        with pytest.raises(ValueError, match=match):
            D.IrregularSeriesDataset.from_arrays([(T4, np.array([1, 2, 3, v]))], dtype=dtype)
        with pytest.raises(ValueError, match=r"frame: value .* at row 3 \(time 3.0\), feature 'a' is too large"):
            D.IrregularSeriesDataset.from_frame(pd.DataFrame({"a": [1, 2, 3, v]}, index=T4), dtype=dtype)
        dates = pd.date_range("2020-01-01", periods=4, freq="D")
        with pytest.raises(ValueError, match=r"\(time 2020-01-04 00:00:00\), feature 'a' is too large"):
            D.IrregularSeriesDataset.from_frame(pd.DataFrame({"a": [1, 2, 3, v]}, index=dates), time_unit="D",
                                                dtype=dtype)
        with pytest.raises(ValueError, match=r"series 1 \(id=1\): value .* at row 1 \(time 1.0\), feature 'v' is too large"):
            D.IrregularSeriesDataset.from_long(_long([1, 2, 3, v]), id_col="id", time_col="t", dtype=dtype)
    ds = D.IrregularSeriesDataset.from_arrays([(T4, np.array([1, 2, np.nan, ok]))], dtype=dtype)
    x = ds[0]["x"]
    assert torch.isfinite(x.pow(2)).all() and x[3, 0].item() == pytest.approx(ok)


def test_collate_refuses_observed_values_whose_squares_overflow_but_ignores_masked_ones():
    big = torch.tensor([[1.0], [1e20], [3.0]])
    with pytest.raises(ValueError, match=r"batch\[0\]: 'x' is 1.0+\d*e\+20 at step 1, feature 0"):
        D.collate_irregular([{"x": big, "t": torch.arange(3.0)}])
    out = D.collate_irregular([{"x": big, "t": torch.arange(3.0), "mask": torch.tensor([True, False, True])}])
    assert out["x"][0, 1, 0] == 0 and not out["mask"][0, 1, 0]
    assert D.collate_irregular([{"x": big.double(), "t": torch.arange(3.0)}])["x"].dtype == torch.float64


def test_normalisation_statistics_refuse_overflow_nan_and_complex():
    v = np.random.default_rng(0).normal(size=(50, 2))
    mean, std = training_stats(v, "here")
    np.testing.assert_array_equal(mean, v.mean(axis=0))
    np.testing.assert_array_equal(std, v.std(axis=0))
    np.testing.assert_array_equal(training_stats(np.ones((3, 1)), "here")[1], [1.0])  # constant: 1
    with pytest.raises(ValueError, match=r"here: value 1e\+155 at index \(1, 0\) is too large"):
        training_stats(np.array([[1.0], [1e155]]), "here")
    with pytest.raises(ValueError, match=r"here: value at index \(0, 1\) is nan"):
        training_stats(np.array([[1.0, np.nan]]), "here")
    with pytest.raises(TypeError, match="here: values are complex"):
        training_stats(np.array([[1.0 + 1j]]), "here")
    # below the limit but whose sum of squares would overflow in a naive variance: still finite
    near = np.full((1000, 1), 1e153)
    near[::2] *= -1
    assert np.isfinite(training_stats(near, "here")[1]).all()


def test_a_benchmark_loader_with_overflowing_values_says_so():
    data = np.stack([np.linspace(0, 1, 64), np.linspace(0, 1, 64)], axis=1)
    Silverbox(data, window=None, stride=None, time_unit="sample", normalize=True)  # fine
    data[5, 1] = 3e160
    with pytest.raises(ValueError, match="silverbox record: value 3e\\+160 at index \\(5, 1\\) is too large"):
        Silverbox(data, window=None, stride=None, time_unit="sample", normalize=True)


def test_sampling_statistics_of_huge_gaps_stay_finite():
    ds = D.IrregularSeriesDataset.from_arrays([(np.array([0.0, 1e300, 1.7e308]), np.ones(3))], dtype=torch.float64)
    row = ds.sampling_stats().iloc[0]
    assert row["mean_gap"] == pytest.approx(8.5e307) and row["std_gap"] == pytest.approx(8.5e307)
    assert np.isfinite(row[["mean_gap", "std_gap", "cv_gap"]].to_numpy(dtype=float)).all()
