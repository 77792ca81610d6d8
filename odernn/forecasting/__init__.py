"""Forecasting irregularly sampled pandas series with ODE-RNNs, scikit-learn style.

- :class:`ODERNNForecaster`: ``fit(y, X=None)``, ``predict(fh, X=None)``, ``predict_interval``,
  ``predict_quantiles``, ``update``, ``score``, ``save`` / ``load``.
- :class:`SeasonalRegression`: least-squares trend plus Fourier terms, the baseline to beat.
- :func:`backtest`: rolling-origin evaluation with folds defined in time.

Layout of the subpackage: ``_frames`` (input layouts, time axis, horizons), ``_covariates`` (covariates on their own
stamps), ``_seasons`` (season detection on irregular stamps), ``_preprocess`` (trend, seasonality, scaling),
``_history`` (per-series rows, deterministic parts, model channels, ``update``), ``_network`` and ``_training``
(the ODE-RNN, windows, loss, loop), ``_forecast`` (forecasts and their calibration), ``_intervals``
(split-conformal intervals), ``_estimator`` (the estimator), ``_baseline``, ``_backtest``, ``_persist`` (safe
files), ``_params`` (declarative parameter validation), ``sktime_adapter`` (optional).
"""

from ._backtest import backtest
from ._baseline import SeasonalRegression
from ._estimator import DEFAULT_SOLVER, ODERNNForecaster

__all__ = ["ODERNNForecaster", "SeasonalRegression", "backtest", "DEFAULT_SOLVER"]
