"""odernn.forecasting: intervals and quantiles, covariates, backtesting, panels (long format, update), the seasonal
regression baseline, parameter validation, safe save/load, far horizons and epoch-scale times."""

import os
import pickle
import time

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings, strategies as st
from sklearn.base import clone

import odernn
from odernn.forecasting import ODERNNForecaster, SeasonalRegression, backtest
from odernn.forecasting._intervals import Calibration, conformal_quantile, resolvable, symmetric_quantile
from odernn.forecasting._params import Interval, Options, validate_params

from test_estimators import TINY, seasonal_frame, small_frame


def long_frame(frames, ids):
    return pd.concat([f.rename_axis("ds").reset_index().assign(unique_id=i) for f, i in zip(frames, ids)],
                     ignore_index=True)[["unique_id", "ds", *frames[0].columns]]


@pytest.fixture(scope="module")
def seasonal():
    df = seasonal_frame(seed=0)
    return ODERNNForecaster(**{**TINY, "max_epochs": 2}).fit(df), df


@pytest.fixture(scope="module")
def panel():
    a, b = seasonal_frame(seed=1), seasonal_frame(seed=2) * 3.0
    b.index = b.index + pd.Timedelta(days=2)
    long = long_frame([a, b], ["north", "south"])
    return ODERNNForecaster(**{**TINY, "max_epochs": 1}).fit(long), long, a, b


# -- parameter table ---------------------------------------------------------------------------------------------------

def test_every_parameter_is_declared_and_defaults_pass():
    for cls in (ODERNNForecaster, SeasonalRegression):
        params = cls().get_params(deep=False)
        assert set(params) == set(cls._parameter_constraints)
        validate_params(params, cls._parameter_constraints, owner=cls.__name__)  # defaults are valid


def test_validate_params_messages():
    table = {"n": [Interval(int, 1, None)], "f": [Interval(float, 0, 1, closed="neither"), None],
             "mode": [Options(("a", "b"))]}
    validate_params({"n": 3, "f": None, "mode": "a"}, table, owner="T")
    with pytest.raises(ValueError, match=r"T: parameter n must be an int >= 1, got 2.5"):
        validate_params({"n": 2.5, "f": None, "mode": "a"}, table, owner="T")
    with pytest.raises(ValueError, match=r"parameter f must be a number in \(0, 1\) or None, got 1.0"):
        validate_params({"n": 1, "f": 1.0, "mode": "a"}, table, owner="T")
    with pytest.raises(ValueError, match=r"parameter mode must be one of 'a', 'b', got True"):
        validate_params({"n": 1, "f": None, "mode": True}, table, owner="T")
    with pytest.raises(RuntimeError, match=r"no constraint declared for parameter\(s\) \['extra'\]"):
        validate_params({"n": 1, "f": None, "mode": "a", "extra": 0}, table, owner="T")


def test_solver_object_and_shorthands():
    df = small_frame(n=24)
    est = ODERNNForecaster(**{**TINY, "method": None, "step_size": None},
                           solver=odernn.Solver("dopri5", rtol=1e-2, atol=1e-3)).fit(df)
    assert est.solver_.method == "dopri5" and est.model_.solver.rtol == 1e-2
    over = ODERNNForecaster(**TINY, solver=odernn.Solver("dopri5")).fit(df)  # TINY's method='rk4' overrides
    assert over.solver_.method == "rk4" and over.solver_.step_fraction == 1.0
    assert clone(est).get_params()["solver"] == est.solver
    with pytest.raises(ValueError, match="parameter solver must be an odernn.Solver or None"):
        ODERNNForecaster(solver={"method": "rk4"}).fit(df)


# -- seasonal regression --------------------------------------------------------------------------------------------

def test_seasonal_regression_recovers_trend_and_season():
    stamps = pd.date_range("2000-01-01", periods=400, freq="7D")
    stamps = stamps.delete([5, 50, 51, 200])
    yrs = (stamps - stamps[0]).days.to_numpy() / 365.2425
    y = 3.0 + 0.5 * yrs + 2.0 * np.sin(2 * np.pi * yrs) - np.cos(4 * np.pi * yrs)
    df = pd.DataFrame({"y": y}, index=stamps)
    sr = SeasonalRegression(fourier_order=2).fit(df)
    fh = pd.date_range(stamps[-1] + pd.Timedelta(days=3), periods=30, freq="11D")
    fy = (fh - stamps[0]).days.to_numpy() / 365.2425
    truth = 3.0 + 0.5 * fy + 2.0 * np.sin(2 * np.pi * fy) - np.cos(4 * np.pi * fy)
    np.testing.assert_allclose(sr.predict(fh)["y"].to_numpy(), truth, atol=1e-8)
    no_season = SeasonalRegression(seasonal_period=None).fit(df)
    assert no_season.regression_[0].used_periods == []
    with pytest.raises(ValueError, match="parameter fourier_order must be one of .auto. or an int in"):
        SeasonalRegression(fourier_order=0).fit(df)


def test_seasonal_regression_numeric_period_and_long_panel():
    t = np.arange(0.0, 300.0, 1.5)
    y = np.sin(2 * np.pi * t / 50.0) + 0.01 * t
    df = pd.DataFrame({"v": y}, index=t)
    sr = SeasonalRegression(seasonal_period=50.0, fourier_order=1).fit(df)
    np.testing.assert_allclose(sr.predict([301.0, 310.0])["v"].to_numpy(),
                               np.sin(2 * np.pi * np.array([301.0, 310.0]) / 50.0) + 0.01 * np.array([301.0, 310.0]),
                               atol=1e-8)
    auto = SeasonalRegression().fit(df)  # "auto" finds the period on a numeric index too, in index units
    assert auto.seasonal_periods_ == [50.0] and auto.regression_[0].used_periods == [50.0 / 1.5]
    long = long_frame([df, 2 * df], ["p", "q"])
    out = SeasonalRegression(seasonal_period=50.0, fourier_order=1).fit(long).predict([301.0], ids=["q"])
    assert list(out.columns) == ["unique_id", "ds", "v"] and out["unique_id"].tolist() == ["q"]


# -- intervals and quantiles ----------------------------------------------------------------------------------------

def test_interval_and_quantile_conventions(seasonal):
    est, df = seasonal
    fh = [1, 2, 30]
    iv = est.predict_interval(fh, coverage=[0.5, 0.9])
    assert list(iv.columns) == [("y", 0.5, "lower"), ("y", 0.5, "upper"), ("y", 0.9, "lower"), ("y", 0.9, "upper")]
    point = est.predict(fh)
    assert iv.index.equals(point.index)
    lo9, lo5, hi5, hi9 = (iv[("y", c, s)].to_numpy() for c, s in [(0.9, "lower"), (0.5, "lower"), (0.5, "upper"),
                                                                      (0.9, "upper")])
    assert (lo9 <= lo5).all() and (lo5 < hi5).all() and (hi5 <= hi9).all()
    q = est.predict_quantiles(fh, alpha=[0.05, 0.25, 0.5, 0.75, 0.95])
    assert list(q.columns) == [("y", a) for a in [0.05, 0.25, 0.5, 0.75, 0.95]]
    np.testing.assert_allclose(q[("y", 0.05)], lo9)  # the 90% interval is the 5% and 95% quantiles
    np.testing.assert_allclose(q[("y", 0.95)], hi9)
    assert (np.diff(q.to_numpy(), axis=1) >= 0).all()


@pytest.mark.parametrize("kw, match", [
    (dict(coverage=1.0), r"coverage must be in \(0, 1\)"),
    (dict(coverage=[0.5, 0.0]), r"coverage must be in \(0, 1\)"),
    (dict(coverage=[]), "coverage is empty"),
])
def test_interval_bad_coverage(seasonal, kw, match):
    est, _ = seasonal
    with pytest.raises(ValueError, match=match):
        est.predict_interval([1], **kw)


@pytest.mark.parametrize("alpha, match", [
    ([0.95, 0.05], "strictly increasing"), ([0.5, 0.5], "strictly increasing"), ([0.0, 0.5], r"in \(0, 1\)"),
    ([0.5, 1.2], r"in \(0, 1\)"),
])
def test_quantiles_bad_alpha(seasonal, alpha, match):
    est, _ = seasonal
    with pytest.raises(ValueError, match=match):
        est.predict_quantiles([1], alpha=alpha)


def test_no_calibration_gives_a_clear_error():
    est = ODERNNForecaster(**{**TINY, "calibration_fraction": 0.0}).fit(small_frame(n=30))
    assert est.calibration_ is None
    with pytest.raises(ValueError, match="no calibrated intervals: calibration_fraction=0"):
        est.predict_interval([1])


def test_ninety_percent_intervals_cover_85_to_95_percent():
    # Generated data: 4 series x 2 draws of six years of irregular weekly stamps (noise sd 0.3); fit on five years
    # as one panel, score the 90% interval on the sixth year. Measured: 92.2% and 87.0% (pooled 89.6%; with signed
    # quantiles, before issue 19's second round: 93.3% and 91.0%).
    hits = []
    for rep in range(2):
        frames = [seasonal_frame(seed=100 + 10 * rep + i, years=6, noise=0.3) for i in range(4)]
        cut = frames[0].index[0] + pd.Timedelta(days=int(365.25 * 5))
        train = [f[f.index < cut] for f in frames]
        est = ODERNNForecaster(**{**TINY, "max_epochs": 2, "calibration_fraction": 0.2}).fit(train)
        for i, f in enumerate(frames):
            test = f[f.index >= cut]
            iv = est.predict_interval(test.index, ids=[i], coverage=0.9)[0]
            y = test["y"].to_numpy()
            hits.append((y >= iv[("y", 0.9, "lower")].to_numpy()) & (y <= iv[("y", 0.9, "upper")].to_numpy()))
    coverage = np.concatenate(hits).mean()
    assert 0.85 <= coverage <= 0.95, coverage


@settings(max_examples=30, deadline=None)
@given(n=st.integers(30, 300), q=st.floats(0.01, 0.99))
def test_conformal_quantile_has_its_finite_sample_rank(n, q):
    r = np.random.default_rng(n).standard_normal((n, 1))
    v = conformal_quantile(r, q)[0]
    below = (r[:, 0] <= v).sum()
    if q >= 0.5:  # at least ceil((n + 1) q) of the n residuals lie at or below it (capped at n)
        assert below >= min(n, int(np.ceil((n + 1) * q)))
    else:
        assert below <= max(1, int(np.floor((n + 1) * q)))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(30, 300), q=st.floats(0.01, 0.99))
def test_symmetric_quantile_is_the_absolute_error_conformal_quantile(n, q):
    r = np.random.default_rng(n).standard_normal((n, 1)) + 0.5  # skewed: the sign must not matter
    v = float(symmetric_quantile(r, q)[0])
    assert v == pytest.approx(-float(symmetric_quantile(r, 1 - q)[0]))  # symmetric about the point forecast
    c = abs(2 * q - 1)
    within = (np.abs(r[:, 0]) <= abs(v) + 1e-12).sum()
    need = int(np.ceil((n + 1) * c - 1e-12))
    if resolvable(n, q):  # at least ceil((n + 1) c) of the n errors lie inside [-|v|, |v|], and no more are needed
        assert within >= need and (need == 0 or (np.abs(r[:, 0]) < abs(v) - 1e-12).sum() < need)
    else:
        assert abs(v) >= np.abs(r).max()


def test_intervals_cover_an_error_of_the_sign_the_calibration_never_saw():
    # far-distance errors of a trend extrapolated through a cooling autumn are all negative; when the trend turns,
    # the forecast errs upwards by as much. Signed quantiles would put the whole 90% interval below the forecast.
    rng = np.random.default_rng(0)
    dist = rng.uniform(0, 40, 1000)
    resid = (-np.abs(rng.normal(2.0, 0.5, 1000)) * dist / 40)[:, None]
    cal = Calibration.from_errors(dist, resid)
    lo, hi = cal.offsets(np.array([35.0]), 0.05)[0, 0], cal.offsets(np.array([35.0]), 0.95)[0, 0]
    assert hi == pytest.approx(-lo) and hi > 1.5  # an error of +1.75 (the mirror of the typical one) is covered
    assert conformal_quantile(cal.residuals[-1], 0.95)[0] < 0  # what the signed quantile would have given


def test_calibration_bins_and_far_growth():
    rng = np.random.default_rng(0)
    dist = rng.uniform(0, 40, 2000)
    resid = (rng.standard_normal(2000) * (1 + dist / 10))[:, None]
    cal = Calibration.from_errors(dist, resid)
    assert all(len(r) >= 30 for r in cal.residuals)
    assert cal.edges[0] == 0 and cal.edges[-1] >= 40
    near, far = cal.offsets(np.array([1.0, 35.0]), 0.95)[:, 0]
    assert far > 2 * near  # errors grow with distance
    beyond = cal.offsets(np.array([4 * cal.max_distance]), 0.95)[0, 0]
    last = cal.offsets(np.array([cal.max_distance]), 0.95)[0, 0]
    assert beyond == pytest.approx(last * np.sqrt(4 * cal.max_distance / (0.5 * (cal.edges[-2] + cal.edges[-1]))))
    assert Calibration.from_errors(dist[:10], resid[:10]) is None


# -- panels: long format, ids, update ---------------------------------------------------------------------------------

def test_long_format_predict_all_and_named(panel):
    est, long, a, b = panel
    assert est.series_ids_ == ["north", "south"] and est.layout_ == "long"
    out = est.predict([1, 2])
    assert list(out.columns) == ["unique_id", "ds", "y"]
    assert out["unique_id"].tolist() == ["north", "north", "south", "south"]
    assert (out[out.unique_id == "south"]["ds"] > b.index[-1]).all()
    south = est.predict([1, 2], ids=["south"])
    pd.testing.assert_frame_equal(south.reset_index(drop=True),
                                  out[out.unique_id == "south"].reset_index(drop=True))
    iv = est.predict_interval([1], ids="north")
    assert iv.index.names == ["unique_id", "ds"] and iv.index.get_level_values(0).tolist() == ["north"]
    with pytest.raises(ValueError, match=r"unknown series id\(s\) \['east'\]"):
        est.predict([1], ids=["east"])
    with pytest.raises(ValueError, match="ids has repeats"):
        est.predict([1], ids=["north", "north"])


def test_long_format_bad_input():
    df = small_frame(n=30)
    long = long_frame([df], ["x"])
    with pytest.raises(ValueError, match="missing ids"):
        ODERNNForecaster(**TINY).fit(long.assign(unique_id=[None] + ["x"] * (len(long) - 1)))
    with pytest.raises(ValueError, match="value columns"):
        ODERNNForecaster(**TINY).fit(long[["unique_id", "ds"]])
    shuffled = long.iloc[::-1]
    with pytest.raises(ValueError, match="strictly increasing"):
        ODERNNForecaster(**TINY).fit(shuffled)


def test_update_appends_and_adds_series(panel):
    est, long, a, b = panel
    import copy
    est = copy.deepcopy(est)
    n_before = len(est._history_[0]["t"])
    new_stamp = a.index[-1] + pd.Timedelta(days=7)
    base = est.predict([new_stamp + pd.Timedelta(days=7)], ids=["north"])
    est.update(pd.DataFrame({"unique_id": ["north"], "ds": [new_stamp], "y": [a["y"].iloc[-1] + 5.0]}))
    assert len(est._history_[0]["t"]) == n_before + 1
    assert est.series_end_[0] == new_stamp
    after = est.predict([new_stamp + pd.Timedelta(days=7)], ids=["north"])
    assert after["y"].iloc[0] != pytest.approx(base["y"].iloc[0])  # the new observation is read
    with pytest.raises(ValueError, match="at or before its last stamp"):
        est.update(pd.DataFrame({"unique_id": ["north"], "ds": [new_stamp], "y": [1.0]}))
    with pytest.raises(ValueError, match=r"fh offsets must be positive"):
        est.predict([0], ids=["north"])
    newcomer = long_frame([seasonal_frame(seed=7, years=1)], ["west"])
    est.update(newcomer)
    assert est.series_ids_ == ["north", "south", "west"]
    assert np.isfinite(est.predict([1, 2], ids=["west"])["y"]).all()


def test_update_frame_appends(seasonal):
    est, df = seasonal
    import copy
    a = copy.deepcopy(est).fit(df.iloc[:-10])
    b = copy.deepcopy(a).update(df.iloc[-10:])
    c = copy.deepcopy(a).update(df, replace=True)
    pd.testing.assert_frame_equal(b.predict([1, 3]), c.predict([1, 3]))  # appending = replacing with the whole
    assert b.series_end_ == [df.index[-1]]


# -- covariates -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def with_covariates():
    rng = np.random.default_rng(0)
    df = seasonal_frame(seed=3)
    X = pd.DataFrame({"promo": rng.integers(0, 2, len(df)).astype(float)}, index=df.index)
    X = pd.concat([X, pd.DataFrame({"temp": rng.normal(size=40)},
                                   index=df.index[0] + pd.to_timedelta(np.sort(rng.uniform(0, 1400, 40)), "D"))])
    X = X.sort_index()
    y = df["y"] + 2 * X["promo"].reindex(df.index)
    est = ODERNNForecaster(**{**TINY, "max_epochs": 3}, past_covariates=["temp"]).fit(y.to_frame("y"), X)
    return est, y, X


def test_covariates_known_and_past(with_covariates):
    est, y, X = with_covariates
    assert est.covariate_columns_ == ["promo", "temp"] and est.known_covariates_ == ["promo"]
    assert est.model_.input_size == 1 + 2 + 1  # target, covariates, query flag
    fut = y.index[-1] + pd.to_timedelta([7, 14, 21], unit="D")
    on = est.predict(fut, pd.DataFrame({"promo": [1.0, 1.0, 1.0]}, index=fut))
    off = est.predict(fut, pd.DataFrame({"promo": [0.0, 0.0, 0.0]}, index=fut))
    assert not np.allclose(on.to_numpy(), off.to_numpy())  # the known covariate is read at the forecast stamps
    extra = pd.DataFrame({"promo": [0.0, 0.0, 0.0, 1.0]}, index=fut.insert(1, fut[0] + pd.Timedelta(days=3)))
    assert np.isfinite(est.predict(fut, extra).to_numpy()).all()  # covariate rows between requested stamps
    iv = est.predict_interval(fut, pd.DataFrame({"promo": [1.0, 0.0, 1.0]}, index=fut))
    assert iv.shape == (3, 2)


@pytest.mark.parametrize("make, match", [
    (lambda fut: None, r"covariates known in advance \['promo'\]; pass their values"),
    (lambda fut: pd.DataFrame({"promo": [1.0, 1.0]}, index=fut[:2]), "lacks values of the known covariates"),
    (lambda fut: pd.DataFrame({"promo": [1.0, np.nan, 1.0]}, index=fut), "lacks values of the known covariates"),
    (lambda fut: pd.DataFrame({"other": [1.0, 1.0, 1.0]}, index=fut), r"lacks covariate column\(s\) \['promo'\]"),
    (lambda fut: [pd.DataFrame({"promo": [1.0] * 3}, index=fut)], "must be one DataFrame"),
])
def test_missing_future_covariates(with_covariates, make, match):
    est, y, _ = with_covariates
    fut = y.index[-1] + pd.to_timedelta([7, 14, 21], unit="D")
    with pytest.raises(ValueError, match=match):
        est.predict(fut, make(fut))


def test_covariate_fit_errors():
    df = small_frame(n=30)
    X = pd.DataFrame({"u": np.arange(30.0)}, index=df.index)
    with pytest.raises(ValueError, match=r"past_covariates names \['v'\]"):
        ODERNNForecaster(**TINY, past_covariates=["v"]).fit(df, X)
    with pytest.raises(ValueError, match="past_covariates is set but fit got no X"):
        ODERNNForecaster(**TINY, past_covariates=["u"]).fit(df)
    with pytest.raises(ValueError, match="also in y"):
        ODERNNForecaster(**TINY).fit(df, X.rename(columns={"u": "a"}))
    with pytest.raises(TypeError, match="numeric index but y has a datetime index"):
        ODERNNForecaster(**TINY).fit(df, X.reset_index(drop=True))
    plain = ODERNNForecaster(**TINY).fit(df)
    with pytest.raises(ValueError, match="fitted without covariates"):
        plain.predict([1], X)


def test_past_covariates_need_no_future_values():
    df = small_frame(n=40)
    X = pd.DataFrame({"u": np.cos(np.arange(40.0))}, index=df.index)
    est = ODERNNForecaster(**TINY, past_covariates=["u"]).fit(df, X)
    assert np.isfinite(est.predict([1, 2]).to_numpy()).all()


# -- backtest -----------------------------------------------------------------------------------------------------------

def test_backtest_folds_in_time(seasonal):
    _, df = seasonal
    summary, preds = backtest(ODERNNForecaster(**TINY), df, initial="800D", step="200D", horizon="60D",
                              return_predictions=True)
    cutoffs = df.index[0] + pd.Timedelta("800D") + pd.Timedelta("200D") * np.arange(3)
    assert sorted(summary["cutoff"].unique()) == list(cutoffs)
    assert list(summary.columns) == ["fold", "cutoff", "h", "distance", "n", "mae", "rmse", "coverage"]
    for cut, part in preds.groupby("cutoff"):
        truth = df[(df.index > cut) & (df.index <= cut + pd.Timedelta("60D"))]
        assert part["ds"].tolist() == list(truth.index)
        assert part["h"].tolist() == list(range(1, len(truth) + 1))
    np.testing.assert_allclose(summary["mae"], summary["rmse"])  # one value per (fold, h)
    assert summary["coverage"].isin([0.0, 1.0]).all()
    row = preds.iloc[0]
    assert row["abs_error"] == pytest.approx(abs(row["y"] - row["y_pred"]))


def test_backtest_update_and_sliding(seasonal):
    _, df = seasonal
    refit = backtest(SeasonalRegression(), df, initial="800D", step="200D", horizon="60D")
    once = backtest(SeasonalRegression(), df, initial="800D", step="200D", horizon="60D", refit=False)
    # a seasonal regression updated with the new observations is the regression refitted on them
    np.testing.assert_allclose(refit["mae"], once["mae"])
    assert refit["coverage"].notna().all()  # the regression has calibrated intervals too
    plain = backtest(SeasonalRegression(calibration_fraction=0.0), df, initial="800D", step="200D", horizon="60D")
    assert plain["coverage"].isna().all()  # no intervals
    sliding = backtest(SeasonalRegression(), df, initial="800D", step="200D", horizon="60D", window="sliding")
    assert not np.allclose(sliding["mae"], refit["mae"])
    with pytest.raises(ValueError, match="only makes sense with window='expanding'"):
        backtest(SeasonalRegression(), df, initial="800D", step="200D", horizon="60D", window="sliding", refit=False)
    with pytest.raises(ValueError, match="no fold fits"):
        backtest(SeasonalRegression(), df, initial="2000D", step="200D", horizon="60D")
    with pytest.raises(TypeError, match="must be a duration"):
        backtest(SeasonalRegression(), df, initial=800, step="200D", horizon="60D")


# -- persistence ------------------------------------------------------------------------------------------------------

def test_save_load_without_pickle(panel, with_covariates, tmp_path):
    for est, args in [(panel[0], ([1, 2],)), (with_covariates[0], None)]:
        path = tmp_path / "model.odernn"
        est.save(path)
        back = ODERNNForecaster.load(path)
        if args is None:
            fut = with_covariates[1].index[-1] + pd.to_timedelta([7], unit="D")
            args = (fut, pd.DataFrame({"promo": [1.0]}, index=fut))
        pd.testing.assert_frame_equal(back.predict(*args), est.predict(*args))
        pd.testing.assert_frame_equal(back.predict_interval(*args), est.predict_interval(*args))
        assert back.get_params() == est.get_params()
        payload = torch.load(path, weights_only=True)  # plain tensors, strings and containers only
        assert payload["format"] == "odernn.forecasting.ODERNNForecaster"
    assert sorted(os.listdir(tmp_path)) == ["model.odernn"]


def test_load_rejects_bad_files(seasonal, tmp_path):
    est, _ = seasonal
    good = tmp_path / "good.odernn"
    est.save(good)
    data = good.read_bytes()
    cases = {"truncated": data[: len(data) // 2], "empty": b"", "text": b"hello world",
             "flipped": data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]}
    for name, content in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(ValueError, match="could not be read as an odernn forecaster file|is damaged"):
            ODERNNForecaster.load(p)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="is a torch file but not an odernn forecaster"):
        ODERNNForecaster.load(foreign)


def test_old_pickles_only_when_trusted(seasonal, tmp_path):
    est, _ = seasonal

    class Boom:  # what a crafted pickle would do: run code on load
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(Boom(), protocol=4))
    with pytest.raises(ValueError, match="unpickling can run code"):
        ODERNNForecaster.load(evil)
    assert not (tmp_path / "pwned").exists()
    old = tmp_path / "old.pkl"
    old.write_bytes(pickle.dumps(est, protocol=4))
    back = ODERNNForecaster.load(old, trusted=True)
    pd.testing.assert_frame_equal(back.predict([1]), est.predict([1]))


def test_save_refuses_values_without_json_form(tmp_path):
    est = ODERNNForecaster(random_state=np.random.RandomState(0))
    with pytest.raises(TypeError, match="RandomState has no JSON form"):
        est.save(tmp_path / "x.odernn")
    assert os.listdir(tmp_path) == []


# -- far horizons, epoch-scale times, time zones -----------------------------------------------------------------------

def test_far_horizon_is_refused_quickly(seasonal):
    est, _ = seasonal
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"fh reaches 12,\d{3} typical gaps .* max_forecast_steps=10,000"):
        est.predict([pd.Timestamp("2262-01-01")])
    with pytest.raises(ValueError, match="max_forecast_steps"):
        est.predict([1e7])
    assert time.perf_counter() - start < 1.0
    near = est.set_params(max_forecast_steps=50)
    with pytest.raises(ValueError, match="max_forecast_steps=50"):
        near.predict([51])
    near.set_params(max_forecast_steps=10_000)


def test_far_horizon_within_the_limit_takes_bounded_time(seasonal):
    est, _ = seasonal
    start = time.perf_counter()
    out = est.predict([2000])  # 2,000 typical gaps: one rk4 step per typical gap
    assert np.isfinite(out.to_numpy()).all()
    assert time.perf_counter() - start < 10.0


@settings(max_examples=5, deadline=None)
@given(offset=st.sampled_from([0.0, 1.7e9, 3.0e12]))
def test_epoch_scale_numeric_times_keep_their_gaps(offset):
    df = small_frame(n=30)
    rel = df.set_axis((df.index - df.index[0]).total_seconds().to_numpy())
    shifted = rel.set_axis(rel.index + offset)
    a = ODERNNForecaster(**TINY).fit(rel)
    b = ODERNNForecaster(**TINY).fit(shifted)
    assert a.time_unit_ == pytest.approx(b.time_unit_, rel=1e-7)  # float64 stamps at 3e12 resolve ~5e-4 s
    np.testing.assert_allclose(b.predict([3600.0, 7200.0], relative=True).to_numpy(),
                               a.predict([3600.0, 7200.0], relative=True).to_numpy(), rtol=1e-5, atol=1e-5)


def test_timezone_aware_index_everywhere(tmp_path):
    df = small_frame(n=100)
    df.index = df.index.tz_localize("Europe/Paris")
    est = ODERNNForecaster(**TINY).fit(df)
    fh = df.index[-1] + pd.to_timedelta([1, 2], unit="D")
    iv = est.predict_interval(fh)
    assert iv.index.tz is not None and iv.index.equals(fh)
    est.save(tmp_path / "tz.odernn")
    back = ODERNNForecaster.load(tmp_path / "tz.odernn")
    assert back.time_origin_ == est.time_origin_ and str(back.time_origin_.tz) == "Europe/Paris"
    pd.testing.assert_frame_equal(back.predict(fh), est.predict(fh))
    with pytest.raises(ValueError, match="naive"):
        est.predict(fh.tz_localize(None))


def test_verbose_without_tqdm_prints_epochs(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError("no tqdm")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    ODERNNForecaster(**{**TINY, "max_epochs": 2, "verbose": True}).fit(small_frame(n=20))
    err = capsys.readouterr().err
    assert "ODERNNForecaster.fit: epoch 1/2 loss=" in err and "epoch 2/2" in err


# -- every new method on every layout and index kind ------------------------------------------------------------------

def _layout(kind, layout):
    a, b = small_frame(n=90, seed=1), small_frame(n=80, seed=2)
    if kind == "numeric":
        a = a.set_axis((a.index - a.index[0]).total_seconds().to_numpy() + 1.7e9)  # epoch seconds
        b = b.set_axis((b.index - b.index[0]).total_seconds().to_numpy() + 1.7e9 + 3600.0)
    elif kind == "tz":
        a.index, b.index = a.index.tz_localize("UTC"), b.index.tz_localize("UTC")
    if layout == "series":
        return a["a"].rename("sales"), a.iloc[-15:]["a"].rename("sales")
    if layout == "frame":
        return a, a.iloc[-15:]
    if layout == "list":
        return [a, b], None
    return long_frame([a, b], ["p", "q"]), None


@pytest.mark.parametrize("kind", ["datetime", "tz", "numeric"])
@pytest.mark.parametrize("layout", ["series", "frame", "list", "long"])
def test_new_methods_on_every_layout(kind, layout):
    y, _ = _layout(kind, layout)
    est = ODERNNForecaster(**{**TINY, "calibration_fraction": 0.3}).fit(y)
    offsets = [1.0, 2.5] if kind != "numeric" else [3600.0, 9000.0]
    rel = None if kind != "numeric" else True
    point = est.predict(offsets, relative=rel)
    iv = est.predict_interval(offsets, relative=rel, coverage=0.8)
    q = est.predict_quantiles(offsets, relative=rel, alpha=[0.1, 0.9])
    first = lambda out: out[0] if isinstance(out, list) else out  # noqa: E731
    k = 1 if layout == "series" else 2
    assert first(iv).shape == (2 * (2 if layout == "long" else 1), 2 * k)
    np.testing.assert_allclose(first(iv).to_numpy(), first(q).to_numpy())  # the 80% interval = 10% and 90%
    if layout in ("list", "long"):
        ids = [1] if layout == "list" else ["q"]
        sub = est.predict(offsets, relative=rel, ids=ids)
        full = point[1] if layout == "list" else point[point.unique_id == "q"].reset_index(drop=True)
        pd.testing.assert_frame_equal(sub[0] if layout == "list" else sub.reset_index(drop=True), full)
    summary = backtest(ODERNNForecaster(**TINY, calibration_fraction=0.0), y,
                       initial="50D" if kind != "numeric" else 50 * 86400.0,
                       step="10D" if kind != "numeric" else 10 * 86400.0,
                       horizon="5D" if kind != "numeric" else 5 * 86400.0, coverage=None)
    assert len(summary) > 0 and np.isfinite(summary["mae"]).all()


def test_long_and_list_layouts_fit_the_same_model():
    a, b = small_frame(n=60, seed=1), small_frame(n=50, seed=2)
    as_list = ODERNNForecaster(**TINY).fit([a, b])
    as_long = ODERNNForecaster(**TINY).fit(long_frame([a, b], ["p", "q"]))
    for x, y in zip(as_list.model_.state_dict().values(), as_long.model_.state_dict().values()):
        torch.testing.assert_close(x, y)
    lst = as_list.predict([1, 2])
    lng = as_long.predict([1, 2])
    np.testing.assert_allclose(np.concatenate([f.to_numpy() for f in lst]), lng[["a", "b"]].to_numpy())


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), m=st.integers(0, 12), seed=st.integers(0, 10_000), known=st.lists(st.booleans(),
       min_size=1, max_size=3))
def test_merge_rows_places_every_value_once(n, m, seed, known):
    from odernn.forecasting._covariates import merge_rows

    rng = np.random.default_rng(seed)
    t_y = np.sort(rng.choice(np.arange(0, 40), n, replace=False)).astype(float)
    t_x = np.sort(rng.choice(np.arange(0, 40), m, replace=False)).astype(float) if m else None
    y = rng.normal(size=(n, 2))
    c = rng.normal(size=(m, len(known))) if m else None
    kn = np.array(known)
    times, Y, C = merge_rows(t_y, y, t_x, c, kn, 0.01, keep_after=True)
    assert (np.diff(times) > 0).all()
    np.testing.assert_array_equal(Y[np.isin(times, t_y)], y)  # every target at its own stamp
    assert np.isnan(Y[~np.isin(times, t_y)]).all()
    if m:
        for j, is_known in enumerate(kn):  # known covariates lead their stamp by 0.01, past ones sit on it
            at = np.isin(times, t_x - 0.01 if is_known else t_x)
            np.testing.assert_array_equal(C[at, j], c[:, j])
            assert np.isnan(C[~at, j]).all()
    cut = merge_rows(t_y, y, t_x, c, kn, 0.01)[0]
    assert cut[-1] == t_y[-1]  # covariate rows after the last target are dropped unless keep_after


def test_fitted_pickle_of_odernn_0_1_asks_for_a_refit(tmp_path):
    est = ODERNNForecaster(hidden_size=5)
    state = dict(est.__dict__, model_={}, trend_=None, _context_=[])  # the attributes of a 0.1 fitted estimator
    old = tmp_path / "old.pkl"

    class Old:  # pickles as ODERNNForecaster with that state
        def __reduce__(self):
            return (object.__new__, (ODERNNForecaster,), state)

    old.write_bytes(pickle.dumps(Old(), protocol=4))
    with pytest.raises(ValueError, match="pickled by odernn 0.1.*refit it"):
        ODERNNForecaster.load(old, trusted=True)
