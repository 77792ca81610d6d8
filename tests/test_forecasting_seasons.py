"""Season detection on irregular stamps (odernn.forecasting._seasons) and how the forecasters use it."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.signal import lombscargle

from odernn.forecasting import ODERNNForecaster, SeasonalRegression
from odernn.forecasting._seasons import _fft_power, _ls_power, detect_seasons

from test_estimators import TINY


def half_hourly(weeks=8, drop=0.3, seed=0, noise=1.0):
    """Half-hourly stamps with 30% dropped; a daily cycle (two harmonics), a weekly cycle and a weekend step."""
    rng = np.random.default_rng(seed)
    base = pd.date_range("2021-03-01", periods=48 * 7 * weeks, freq="30min")
    keep = np.sort(rng.choice(len(base), int(len(base) * (1 - drop)), replace=False))
    idx = base[keep]
    h = (idx - base[0]).total_seconds().to_numpy() / 3600.0
    y = (20 + 0.002 * h + 3 * np.sin(2 * np.pi * h / 24) + 1.5 * np.cos(4 * np.pi * h / 24)
         + 2 * np.sin(2 * np.pi * h / 168) + 3.0 * (idx.day_of_week >= 5) + noise * rng.standard_normal(len(h)))
    return pd.DataFrame({"load": y}, index=idx)


def test_periodogram_matches_scipy_lombscargle():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 200, 400))
    y = np.sin(2 * np.pi * t / 13.0) + 0.5 * rng.standard_normal(400)
    y = y - y.mean()
    f = np.linspace(0.01, 0.5, 300)
    ref = lombscargle(t, y, 2 * np.pi * f, normalize=True)
    np.testing.assert_allclose(_ls_power(t, y, f), ref, rtol=1e-8, atol=1e-10)
    # the FFT version with stamps rounded to a fine grid agrees closely (and exactly on grid stamps)
    tg = np.round(t * 8) / 8
    size, delta = 8 * 1024, 1 / 8
    ks = np.arange(2, 400)
    exact = _ls_power(tg, y, ks / (size * delta))
    np.testing.assert_allclose(_fft_power(tg, y, delta, size, ks), exact, rtol=1e-7, atol=1e-9)


def test_daily_and_weekly_cycles_of_irregular_half_hourly_data():
    df = half_hourly()
    t = (df.index - df.index[0]).total_seconds().to_numpy() / 1800.0
    found = detect_seasons([t], [df.to_numpy()], gap=1.0, unit_seconds=1800.0)
    assert found.periods == [336.0, 48.0]  # a week and a day, in half-hour units
    # the weekend step needs many weekly harmonics; the day's two are enough (held-out error decides)
    assert found.orders[0] >= 4 and 2 <= found.orders[1] <= 4
    harmonics = [r for r in found.table if r["why"].startswith("harmonic")]
    assert all(not r["kept"] for r in harmonics)


def test_noise_has_no_season_and_auto_says_what_it_tried():
    rng = np.random.default_rng(1)
    idx = pd.date_range("2020-01-01", periods=300, freq="D") + pd.to_timedelta(rng.uniform(0, 0.3, 300), unit="D")
    df = pd.DataFrame({"y": rng.standard_normal(300)}, index=idx)
    with pytest.warns(UserWarning, match=r"seasonal_period='auto' found no seasonal period\. Searched periods from "
                                         r".* candidates: .*not significant"):
        sr = SeasonalRegression().fit(df)
    assert sr.seasonal_periods_ == [] and sr.season_candidates_[0]["kept"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SeasonalRegression(seasonal_period=None).fit(df)  # None: no search, no warning


def test_no_warning_when_the_series_is_too_short_to_show_a_season():
    # sktime's checks fit 20-30 daily points of noise: too few for the test to find even a cycle explaining half
    # the variance, so "found nothing" would say nothing about the data; the candidates are still recorded
    rng = np.random.default_rng(4)
    for n in (20, 30):
        df = pd.DataFrame({"y": rng.standard_normal(n)}, index=pd.date_range("2000-01-01", periods=n, freq="D"))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sr = SeasonalRegression().fit(df)
        assert sr.seasonal_periods_ == [] and sr.season_candidates_ is not None
    # the threshold is where a moderate cycle becomes detectable, on a numeric index too
    t = np.arange(200.0)
    short = detect_seasons([t[:20]], [rng.standard_normal((20, 1))], gap=1.0, unit_seconds=None, index_unit=1.0)
    longer = detect_seasons([t], [rng.standard_normal((200, 1))], gap=1.0, unit_seconds=None, index_unit=1.0)
    assert not short.could_detect and longer.could_detect
    with pytest.warns(UserWarning, match="found no seasonal period"):
        SeasonalRegression().fit(pd.DataFrame({"y": rng.standard_normal(200)}, index=t))


def test_numeric_index_monthly_series_in_index_units():
    rng = np.random.default_rng(2)
    t = np.arange(240.0)
    keep = np.sort(rng.choice(240, 200, replace=False))
    y = 5 + 0.02 * t + np.sin(2 * np.pi * t / 12) + 0.2 * rng.standard_normal(240)
    df = pd.DataFrame({"y": y[keep]}, index=t[keep].astype(int))
    sr = SeasonalRegression().fit(df)
    assert sr.seasonal_periods_ == [12.0] and sr.index_kind_ == "numeric"
    truth = 5 + 0.02 * np.arange(240, 252) + np.sin(2 * np.pi * np.arange(240, 252) / 12)
    assert np.abs(sr.predict(np.arange(240, 252)).to_numpy()[:, 0] - truth).mean() < 0.2


def test_auto_seasons_beat_a_trend_and_match_the_true_periods_on_half_hourly_data():
    df = half_hourly(weeks=6)
    train, test = df.iloc[:-400], df.iloc[-400:]
    auto = SeasonalRegression().fit(train)
    assert [p for p in auto.seasonal_periods_] == [pd.Timedelta("7D"), pd.Timedelta("1D")]
    given = SeasonalRegression(seasonal_period=["7D", "1D"]).fit(train)
    plain = SeasonalRegression(seasonal_period=None).fit(train)
    mae = {k: float(np.abs(m.predict(test.index)["load"] - test["load"]).mean())
           for k, m in dict(auto=auto, given=given, plain=plain).items()}
    assert mae["auto"] < 0.5 * mae["plain"]
    assert mae["auto"] <= mae["given"] * 1.05  # data-chosen orders at least as good as the user's periods


def test_period_aliases_are_fixed_durations():
    df = half_hourly(weeks=3)
    for alias, want in [("W", pd.Timedelta("7D")), ("D", pd.Timedelta("1D")), ("24h", pd.Timedelta("1D")),
                        ("h", pd.Timedelta("1h"))]:
        sr = SeasonalRegression(seasonal_period=alias, fourier_order=2).fit(df)
        assert sr.seasonal_periods_ == [want]
    with pytest.raises(ValueError, match="varying length .* '365.2425D' for a year"):
        SeasonalRegression(seasonal_period="ME").fit(df)


def test_fourier_order_per_period_and_its_validation():
    df = half_hourly(weeks=3)
    sr = SeasonalRegression(seasonal_period=["7D", "1D"], fourier_order=[5, 2]).fit(df)
    assert sr.fourier_orders_ == [5, 2] and sr.regression_[0].used_orders == [5, 2]
    assert sr.regression_[0].coef.shape[0] == 2 + 2 * 7
    with pytest.raises(ValueError, match="fourier_order has 1 entries but seasonal_period has 2"):
        SeasonalRegression(seasonal_period=["7D", "1D"], fourier_order=[5]).fit(df)
    with pytest.raises(ValueError, match="parameter fourier_order must be one of 'auto' or an int"):
        ODERNNForecaster(fourier_order=0).fit(df)


def test_forecaster_reports_seasons_and_saves_them(tmp_path):
    df = half_hourly(weeks=4)
    f = ODERNNForecaster(**TINY).fit(df)
    assert f.seasonal_periods_ == [pd.Timedelta("7D"), pd.Timedelta("1D")]
    assert len(f.fourier_orders_) == 2 and all(o >= 1 for o in f.fourier_orders_)
    assert math.isclose(f._halflife_ * f._axis_.unit_seconds, 3 * 7 * 86400)  # "auto": three longest periods
    f.save(tmp_path / "f.odernn")
    g = ODERNNForecaster.load(tmp_path / "f.odernn")
    assert g.fourier_orders_ == f.fourier_orders_
    pd.testing.assert_frame_equal(g.predict(range(1, 5)), f.predict(range(1, 5)))


def test_lag_channel_interpolates_one_period_back_and_hides_the_future():
    df = half_hourly(weeks=3, noise=0.0)
    f = ODERNNForecaster(**TINY, seasonal_lag=True).fit(df)
    assert f._lag_period_ == 336.0 and f.model_.seasonal_skip.shape == (1,)
    assert f._model_config_["input_size"] == 1 + 1 + 1  # target, lag, query channel
    h, d, s = f._history_[0], f.regression_[0], f.scale_[0]
    t = h["t"][-50:]
    lag = f._lag_values(0, t, d, float(h["t"][-1]))[:, 0]
    z = (h["y"][:, 0] - d.predict(h["t"])[:, 0]) / s
    ok = ~np.isnan(lag)
    assert ok.mean() > 0.8  # 30% of stamps dropped: most lags have neighbours within two gaps
    np.testing.assert_allclose(lag[ok], np.interp(t[ok] - 336.0, h["t"], z), atol=1e-12)
    # a stamp whose lag lies after the forecast origin gets none
    late = f._lag_values(0, np.array([h["t"][-1] + 400.0]), d, float(h["t"][-1]))
    assert np.isnan(late).all()
    early = f._lag_values(0, h["t"][-10:], d, float(h["t"][-1]) - 400.0)
    assert np.isnan(early).all()


def test_seasonal_lag_off_and_on_both_forecast_and_save(tmp_path):
    df = half_hourly(weeks=3)
    off = ODERNNForecaster(**TINY).fit(df)
    assert off._lag_period_ is None and not hasattr(off.model_, "seasonal_skip")
    on = ODERNNForecaster(**TINY, seasonal_lag=True).fit(df)
    fh = pd.date_range(df.index[-1] + pd.Timedelta("30min"), periods=48 * 7, freq="30min")
    a, b = on.predict(fh), off.predict(fh)
    assert np.isfinite(a.to_numpy()).all() and np.isfinite(b.to_numpy()).all()
    on.save(tmp_path / "on.odernn")
    g = ODERNNForecaster.load(tmp_path / "on.odernn")
    torch_equal = (g.model_.seasonal_skip == on.model_.seasonal_skip).all()
    assert bool(torch_equal)
    pd.testing.assert_frame_equal(g.predict(fh), a)
