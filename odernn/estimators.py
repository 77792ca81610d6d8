"""Backwards-compatible home of :class:`ODERNNForecaster`; the code lives in :mod:`odernn.forecasting`."""

from .forecasting import ODERNNForecaster, SeasonalRegression, backtest

__all__ = ["ODERNNForecaster", "SeasonalRegression", "backtest"]
