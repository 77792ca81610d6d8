"""What a new user hits (issue 19) and the reliability classes of issue 18 that concern the forecaster: intervals
beyond the calibration's resolution, values that overflow, complex columns, unbounded backtests, edited files, and
times the model cannot resolve. Each test fails on the code before these fixes."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.exceptions import NotFittedError

from odernn.forecasting import ODERNNForecaster, SeasonalRegression, backtest
from odernn.forecasting._intervals import CalibrationWarning, conformal_quantile, highest_coverage

from test_estimators import TINY, seasonal_frame


@pytest.fixture(scope="module")
def fitted():
    df = seasonal_frame(seed=3)
    return ODERNNForecaster(**{**TINY, "max_epochs": 1}).fit(df), df


# -- issue 19: a new user's path ----------------------------------------------------------------------------------------

def test_intervals_and_quantiles_before_fit_are_not_fitted_errors():
    for est in (ODERNNForecaster(), SeasonalRegression()):
        with pytest.raises(NotFittedError):
            est.predict_interval([1, 2])
        with pytest.raises(NotFittedError):
            est.predict_quantiles([1, 2])


def test_seasonal_regression_intervals_cover_held_out_data():
    df = seasonal_frame(seed=4, years=6, noise=0.3)
    train, test = df[df.index < df.index[0] + pd.Timedelta(days=5 * 365)], df[df.index >= df.index[0]
                                                                               + pd.Timedelta(days=5 * 365)]
    sr = SeasonalRegression().fit(train)
    assert sr.trend_halflife == "auto" and sr._halflife_ is not None  # aligned with the forecaster's defaults
    iv = sr.predict_interval(test.index, coverage=0.9)
    inside = ((test["y"] >= iv[("y", 0.9, "lower")]) & (test["y"] <= iv[("y", 0.9, "upper")])).mean()
    assert 0.8 <= inside <= 1.0
    q = sr.predict_quantiles(test.index, alpha=[0.05, 0.5, 0.95])
    assert (q[("y", 0.05)] < q[("y", 0.5)]).all() and (q[("y", 0.5)] < q[("y", 0.95)]).all()


def test_a_date_column_with_row_numbers_as_index_is_refused():
    df = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=60, freq="D"), "y": np.arange(60.0)})
    with pytest.raises(TypeError, match=r"column 'date' holds datetime64.* index the frame by its time column: "
                                        r"y.set_index\('date'\)"):
        ODERNNForecaster(**TINY).fit(df)


def test_fh_as_iso_date_strings(fitted):
    f, df = fitted
    stamps = [str((df.index[-1] + pd.Timedelta(days=d)).date()) for d in (10, 40)]
    out = f.predict(stamps)
    pd.testing.assert_frame_equal(out, f.predict(pd.DatetimeIndex(pd.to_datetime(stamps))))
    assert len(f.predict(stamps[0])) == 1
    assert np.allclose(f.predict(["7D", "14D"]).to_numpy(), f.predict(pd.to_timedelta(["7D", "14D"])).to_numpy())
    with pytest.raises(TypeError, match="pandas reads neither as timestamps nor as durations"):
        f.predict(["next tuesday"])


def test_sktime_adapter_declares_update():
    pytest.importorskip("sktime")
    from odernn.forecasting.sktime_adapter import ODERNNSktimeForecaster

    assert ODERNNSktimeForecaster.get_class_tag("capability:update") is True


# -- issue 18 item 3: no level answered by a lower one -------------------------------------------------------------------

def test_quantiles_beyond_the_calibration_are_extrapolated_not_clipped():
    rng = np.random.default_rng(0)
    r = rng.standard_normal((45, 1))
    qs = [float(conformal_quantile(r, q)[0]) for q in (0.95, 0.985, 0.995, 0.9995)]
    assert all(b > a for a, b in zip(qs[:-1], qs[1:]))  # strictly wider, never the same max
    assert qs[-1] > r.max()
    lo = [float(conformal_quantile(r, q)[0]) for q in (0.0005, 0.02)]
    assert lo[0] < lo[1] <= r.min() + 1e-12
    assert highest_coverage(45) == pytest.approx(45 / 46)


def test_interval_levels_beyond_resolution_warn_and_widen(fitted):
    f, _ = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f.predict_interval(range(1, 4), coverage=0.5)  # resolved: no warning
    with pytest.warns(CalibrationWarning, match=r"holds \d+ held-out errors, which support central coverage up to"):
        iv = f.predict_interval(range(1, 4), coverage=[0.9, 0.99, 0.999])
    width = {c: (iv[("y", c, "upper")] - iv[("y", c, "lower")]).to_numpy() for c in (0.9, 0.99, 0.999)}
    assert (width[0.99] > width[0.9]).all() and (width[0.999] > width[0.99]).all()
    with pytest.warns(CalibrationWarning):
        q = f.predict_quantiles(range(1, 4), alpha=[0.0005, 0.02])
    assert (q[("y", 0.0005)] < q[("y", 0.02)]).all()


# -- issue 18 item 6: values the forecaster cannot represent ------------------------------------------------------------

def test_values_whose_squares_overflow_are_refused():
    df = seasonal_frame(seed=0) * 1e153
    for est in (ODERNNForecaster(**TINY), SeasonalRegression()):
        with pytest.raises(ValueError, match=r"values reach .* their squares overflow float64 .* divide by 10\*\*"):
            est.fit(df)


def test_complex_columns_are_refused():
    df = seasonal_frame(seed=0).astype(complex) + 1j
    with pytest.raises(TypeError, match="column 'y' is complex"):
        ODERNNForecaster(**TINY).fit(df)
    X = pd.DataFrame({"x": np.ones(len(df)) + 1j}, index=df.index)
    with pytest.raises(TypeError, match="column 'x' is complex"):
        ODERNNForecaster(**TINY).fit(seasonal_frame(seed=0), X)


# -- issue 18 item 7: bounded backtests -----------------------------------------------------------------------------

def test_backtest_refuses_too_many_folds_before_building_them():
    df = seasonal_frame(seed=0, years=3)
    with pytest.raises(ValueError, match=r"backtest would run [\d,]+ folds .* more than max_folds=1,000"):
        backtest(SeasonalRegression(), df, initial="365D", step="1s", horizon="30D")
    out = backtest(SeasonalRegression(), df, initial="365D", step="200D", horizon="30D", max_folds=5)
    assert out["fold"].nunique() <= 5
    with pytest.raises(ValueError, match="max_folds must be a positive int"):
        backtest(SeasonalRegression(), df, initial="365D", step="200D", horizon="30D", max_folds=0)


# -- issue 18 item 10: edited forecaster files ------------------------------------------------------------------------

def _edit(path, out, change):
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, out)


def _edit_json(key, value):
    import json

    def change(payload):
        doc = json.loads(payload["json"])
        section, field = key
        doc[section][field] = value
        payload["json"] = json.dumps(doc)
    return change


@pytest.mark.parametrize("key, value, match", [
    (("params", "hidden_size"), -3, "its parameters are invalid: .*hidden_size must be an int >= 1"),
    (("fitted", "context_length_"), "24", "field 'context_length_' is '24', expected an int >= 1"),
    (("fitted", "series_ids_"), [], "field 'series_ids_' is \\[\\], expected a non-empty list"),
    (("fitted", "columns_"), ["y", "z"], "field 'n_features_in_' is 1, expected 2"),
    (("fitted", "_periods_"), [-1.0], "field '_periods_' is \\[-1.0\\], expected a list of positive numbers"),
    (("fitted", "index_kind_"), "weird", "field 'index_kind_' is 'weird'"),
])
def test_load_names_the_bad_field(fitted, tmp_path, key, value, match):
    f, _ = fitted
    f.save(tmp_path / "ok.odernn")
    _edit(tmp_path / "ok.odernn", tmp_path / "bad.odernn", _edit_json(key, value))
    with pytest.raises(ValueError, match="is damaged: " + match):
        ODERNNForecaster.load(tmp_path / "bad.odernn")


def test_load_checks_removed_fields_and_array_shapes(fitted, tmp_path):
    import json

    f, _ = fitted
    f.save(tmp_path / "ok.odernn")

    def drop(payload):
        doc = json.loads(payload["json"])
        del doc["fitted"]["scale_"]
        payload["json"] = json.dumps(doc)
    _edit(tmp_path / "ok.odernn", tmp_path / "a.odernn", drop)
    with pytest.raises(ValueError, match="field 'scale_' is 'missing'"):
        ODERNNForecaster.load(tmp_path / "a.odernn")

    def shape(payload):
        doc = json.loads(payload["json"])
        payload["arrays"][doc["fitted"]["scale_"]["__array__"]] = torch.ones(3, 3, dtype=torch.float64)
    _edit(tmp_path / "ok.odernn", tmp_path / "b.odernn", shape)
    with pytest.raises(ValueError, match=r"field 'scale_' is \(3, 3\), expected an array of shape \(1, 1\)"):
        ODERNNForecaster.load(tmp_path / "b.odernn")


def test_version_stored_as_text(fitted, tmp_path):
    f, _ = fitted
    f.save(tmp_path / "ok.odernn")
    _edit(tmp_path / "ok.odernn", tmp_path / "s.odernn", lambda p: p.update(version="1"))
    g = ODERNNForecaster.load(tmp_path / "s.odernn")  # a number written as text is read
    pd.testing.assert_frame_equal(g.predict([1, 2]), f.predict([1, 2]))
    _edit(tmp_path / "ok.odernn", tmp_path / "t.odernn", lambda p: p.update(version="one"))
    with pytest.raises(ValueError, match="field 'version' is 'one', expected an integer format version"):
        ODERNNForecaster.load(tmp_path / "t.odernn")


# -- issue 18 item 11: times in the user's terms --------------------------------------------------------------------

def test_offsets_below_the_time_resolution(fitted):
    f, df = fitted
    with pytest.raises(ValueError, match=r"fh asks for a stamp 0 days 00:00:00.100000 after the end of the series .* "
                                         r"resolves times to about"):
        f.predict([pd.Timedelta("100ms")])
    with pytest.raises(ValueError, match="after the previous requested stamp"):
        f.predict([df.index[-1] + pd.Timedelta("1D"), df.index[-1] + pd.Timedelta("1D") + pd.Timedelta("1ms")])


def test_stamps_outside_the_nanosecond_range(fitted):
    f, _ = fitted
    with pytest.raises(ValueError, match="outside pandas' nanosecond range"):
        f.predict(pd.DatetimeIndex(["2400-01-01"]).as_unit("s"))
    old = pd.DataFrame({"y": np.sin(np.arange(60.0))}, index=pd.date_range("1600-01-01", periods=60, freq="7D",
                                                                           unit="s"))
    with pytest.raises(ValueError, match=r"y has stamps from 1600-01-01 .* outside pandas' nanosecond range"):
        ODERNNForecaster(**TINY).fit(old)


def test_integers_beyond_two_to_the_53():
    idx = np.arange(2**53, 2**53 + 60, dtype=np.int64)
    df = pd.DataFrame({"y": np.sin(np.arange(60.0))}, index=idx)
    with pytest.raises(ValueError, match=r"integers up to 9007199254741051, beyond 2\*\*53 .* subtract an offset"):
        ODERNNForecaster(**TINY).fit(df)
    ok = ODERNNForecaster(**{**TINY, "seasonal_period": None}).fit(df.set_axis(idx - idx[0]))
    with pytest.raises(ValueError, match="fh holds integers beyond 2\\*\\*53"):
        ok.predict([2**53 + 100])
