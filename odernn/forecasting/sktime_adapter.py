"""sktime interoperability (optional extra: ``pip install sktime``).

:class:`ODERNNSktimeForecaster` wraps an :class:`ODERNNForecaster` as an sktime forecaster, so sktime's
``evaluate``, splitters, pipelines and tuning accept it::

    from sktime.forecasting.model_evaluation import evaluate
    from sktime.split import ExpandingWindowSplitter
    from odernn.forecasting.sktime_adapter import ODERNNSktimeForecaster

    f = ODERNNSktimeForecaster(ODERNNForecaster(max_epochs=10, random_state=0))
    evaluate(f, ExpandingWindowSplitter(fh=[1, 2, 3], initial_window=150, step_length=20), y)

Limitation (sktime's, measured with sktime 1.2.0): sktime converts every horizon to steps of the index's frequency,
so it needs a ``DatetimeIndex`` with a frequency (or an integer index) even for absolute stamps; on an irregular
``DatetimeIndex`` it fails inside ``ForecastingHorizon`` before reaching the forecaster. For irregular stamps use
:class:`ODERNNForecaster` and :func:`odernn.forecasting.backtest` directly. Importing this module without sktime
raises ``ImportError`` with the install command.
"""

from __future__ import annotations

from typing import Any, Optional

import pandas as pd

try:
    from sktime.forecasting.base import BaseForecaster as _SktimeBase
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("odernn.forecasting.sktime_adapter needs sktime: pip install sktime") from e

from ._estimator import ODERNNForecaster

__all__ = ["ODERNNSktimeForecaster"]


class ODERNNSktimeForecaster(_SktimeBase):
    """An :class:`ODERNNForecaster` behind sktime's forecaster interface.

    Args:
        forecaster: the (unfitted) :class:`ODERNNForecaster` to use; None means the defaults. It is cloned on fit.

    Attributes:
        forecaster_ (ODERNNForecaster): the fitted forecaster.

    Example:
        >>> import numpy as np, pandas as pd
        >>> from odernn.forecasting import ODERNNForecaster
        >>> from odernn.forecasting.sktime_adapter import ODERNNSktimeForecaster
        >>> y = pd.DataFrame({"y": np.sin(np.arange(80) / 5)}, index=pd.date_range("2020-01-05", periods=80, freq="W"))
        >>> f = ODERNNSktimeForecaster(ODERNNForecaster(hidden_size=4, max_epochs=1, random_state=0)).fit(y)
        >>> f.predict(fh=[1, 2]).shape
        (2, 1)
    """

    _tags = {
        "scitype:y": "both",
        "y_inner_mtype": "pd.DataFrame",
        "X_inner_mtype": "pd.DataFrame",
        "capability:missing_values": True,
        "capability:pred_int": True,
        "capability:update": True,  # _update appends observations (sktime >= 1.3 calls it according to this tag)
        "capability:insample": False,
        "requires-fh-in-fit": False,
        "X-y-must-have-same-index": False,
        "authors": ["odernn"],
        "python_dependencies": "torch",
    }

    def __init__(self, forecaster: Optional[ODERNNForecaster] = None) -> None:
        self.forecaster = forecaster
        super().__init__()
        # _update appends the new observations itself, so sktime need not keep a copy of the data (its default
        # changes in sktime 1.3; setting it here silences the FutureWarning on every fit)
        self.set_config(remember_data=False)

    @staticmethod
    def _times(index: pd.Index) -> pd.Index:
        """odernn's time index for sktime's: periods become their start timestamps."""
        return index.to_timestamp() if isinstance(index, pd.PeriodIndex) else index

    def _frame(self, df: Optional[pd.DataFrame], prefix: str = "") -> Optional[pd.DataFrame]:
        if df is None:
            return None
        out = df.set_axis(self._times(df.index), axis=0)
        return out.set_axis([f"{prefix}{c}" for c in df.columns], axis=1) if prefix else out

    def _fit(self, y: pd.DataFrame, X: Optional[pd.DataFrame] = None, fh: Any = None) -> "ODERNNSktimeForecaster":
        from sklearn.base import clone

        base = self.forecaster if self.forecaster is not None else ODERNNForecaster()
        # covariates get a prefix so that they never clash with the targets' column names
        self.forecaster_ = clone(base).fit(self._frame(y), self._frame(X, "X:"))
        return self

    def _stamps(self, fh: Any) -> tuple[pd.Index, pd.Index]:
        index = fh.to_absolute_index(self.cutoff)
        return pd.Index(self._times(index)), index

    def _predict(self, fh: Any, X: Optional[pd.DataFrame] = None) -> pd.DataFrame:
        stamps, index = self._stamps(fh)
        out = self.forecaster_.predict(stamps, self._frame(X, "X:"), relative=False)
        return out.set_axis(index, axis=0)

    def _update(self, y: pd.DataFrame, X: Optional[pd.DataFrame] = None, update_params: bool = True):
        """Append the observations after the current end (the network is not retrained; the deterministic part
        is refitted on the longer history, see :meth:`ODERNNForecaster.update`)."""
        y, X = self._frame(y), self._frame(X, "X:")
        end = self.forecaster_.series_end_[0]
        new = y[y.index > end]
        if len(new) and not new.isna().all(axis=None):
            self.forecaster_.update(new, None if X is None else X[X.index > end])
        return self

    def _predict_interval(self, fh: Any, X: Optional[pd.DataFrame] = None, coverage: Any = 0.9) -> pd.DataFrame:
        stamps, index = self._stamps(fh)
        out = self.forecaster_.predict_interval(stamps, self._frame(X, "X:"), coverage=list(coverage),
                                                relative=False)
        return out.set_axis(index, axis=0)

    def _predict_quantiles(self, fh: Any, X: Optional[pd.DataFrame] = None, alpha: Any = None) -> pd.DataFrame:
        stamps, index = self._stamps(fh)
        out = self.forecaster_.predict_quantiles(stamps, self._frame(X, "X:"), alpha=sorted(alpha), relative=False)
        return out.set_axis(index, axis=0)

    @classmethod
    def get_test_params(cls, parameter_set: str = "default"):
        """Small, fast settings for sktime's own estimator checks."""
        # sktime's test series are short: hold out 40% so that intervals can be calibrated; no season search
        return [{"forecaster": ODERNNForecaster(hidden_size=4, context_length=6, horizon=3, max_epochs=1,
                                                batch_size=8, windows_per_epoch=8, calibration_fraction=0.4,
                                                seasonal_period=None, random_state=0)},
                {"forecaster": ODERNNForecaster("node", hidden_size=3, context_length=5, horizon=2, max_epochs=1,
                                                batch_size=4, windows_per_epoch=4, calibration_fraction=0.4,
                                                seasonal_period=None, random_state=1)}]
