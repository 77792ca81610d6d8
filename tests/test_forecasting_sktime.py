"""sktime adapter: runs only where sktime is installed (the optional extra)."""

import numpy as np
import pandas as pd
import pytest

sktime = pytest.importorskip("sktime")

from sktime.forecasting.base import ForecastingHorizon  # noqa: E402
from sktime.forecasting.compose import TransformedTargetForecaster  # noqa: E402
from sktime.forecasting.model_evaluation import evaluate  # noqa: E402
from sktime.split import ExpandingWindowSplitter  # noqa: E402
from sktime.transformations.series.exponent import ExponentTransformer  # noqa: E402

from odernn.forecasting import ODERNNForecaster  # noqa: E402
from odernn.forecasting.sktime_adapter import ODERNNSktimeForecaster  # noqa: E402

SMALL = dict(hidden_size=4, context_length=8, horizon=4, max_epochs=1, batch_size=8, windows_per_epoch=8,
             random_state=0)


def weekly(n=160, seed=0):
    rng = np.random.default_rng(seed)
    idx = pd.date_range("2015-01-04", periods=n, freq="W")
    t = np.arange(n) / 52.0
    return pd.DataFrame({"y": 10 + t + np.sin(2 * np.pi * t) + 0.1 * rng.standard_normal(n)}, index=idx)


def test_fit_predict_intervals_match_the_wrapped_forecaster():
    y = weekly()
    f = ODERNNSktimeForecaster(ODERNNForecaster(**SMALL)).fit(y, fh=[1, 2, 3])
    pred = f.predict()
    direct = ODERNNForecaster(**SMALL).fit(y).predict(y.index[-1] + pd.to_timedelta([7, 14, 21], unit="D"))
    np.testing.assert_allclose(pred.to_numpy(), direct.to_numpy())
    iv = f.predict_interval(coverage=0.9)
    assert list(iv.columns) == [("y", 0.9, "lower"), ("y", 0.9, "upper")]
    assert (iv[("y", 0.9, "lower")] < pred["y"]).all() and (pred["y"] < iv[("y", 0.9, "upper")]).all()
    q = f.predict_quantiles(alpha=[0.1, 0.5, 0.9])
    assert q.shape == (3, 3)


def test_evaluate_with_an_expanding_splitter_and_update():
    y = weekly()
    cv = ExpandingWindowSplitter(fh=[1, 2, 4], initial_window=120, step_length=15)
    res = evaluate(ODERNNSktimeForecaster(ODERNNForecaster(**SMALL)), cv, y, strategy="update")
    assert len(res) == 3 and np.isfinite(res.iloc[:, 0]).all()


def test_pipeline():
    y = weekly()
    pipe = TransformedTargetForecaster([("power", ExponentTransformer(power=1.0)),
                                        ("odernn", ODERNNSktimeForecaster(ODERNNForecaster(**SMALL)))])
    pipe.fit(y, fh=[1, 2])
    direct = ODERNNForecaster(**SMALL).fit(y).predict([1, 2])  # numbers: multiples of the weekly time unit
    np.testing.assert_allclose(pipe.predict().to_numpy(), direct.to_numpy(), rtol=1e-6)


def test_absolute_horizon():
    y = weekly()
    f = ODERNNSktimeForecaster(ODERNNForecaster(**SMALL)).fit(y)
    stamps = pd.DatetimeIndex([y.index[-1] + pd.Timedelta(weeks=2), y.index[-1] + pd.Timedelta(weeks=5)])
    out = f.predict(ForecastingHorizon(stamps, is_relative=False))
    assert out.index.equals(stamps)


@pytest.mark.slow
def test_sktime_estimator_checks():
    # sktime's own suite (754 checks with sktime 1.2.0, about two minutes on one thread): all pass.
    from sktime.utils.estimator_checks import check_estimator

    results = check_estimator(ODERNNSktimeForecaster, raise_exceptions=False)
    failed = {k: str(v)[:200] for k, v in results.items() if v != "PASSED"}
    assert not failed, failed
