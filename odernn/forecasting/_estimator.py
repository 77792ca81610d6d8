"""The estimator: :class:`ODERNNForecaster`. ``fit`` = validate -> preprocess -> train -> calibrate."""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import r2_score

from .. import Solver
from ._base import BaseForecaster
from ._forecast import ForecastMixin
from ._history import HistoryMixin
from ._network import NetworkMixin
from ._params import Check, InstanceOf, Interval, Options, validate_params
from . import _training as training

__all__ = ["ODERNNForecaster", "DEFAULT_SOLVER", "DYNAMICS"]

DYNAMICS = ("node", "anode", "sonode", "hbnode", "ghbnode")

#: The forecaster's solver unless ``solver=`` says otherwise: classical Runge-Kutta, one step per gap, direct
#: backpropagation (measured faster than dopri5 and than the adjoint for these small models, docs/forecaster.md).
DEFAULT_SOLVER = Solver(method="rk4", step_fraction=1.0, adjoint=False, max_steps=1000)


def _period_spec(v: Any) -> bool:
    items = list(v) if isinstance(v, (list, tuple)) else [v]
    return bool(items) and all(isinstance(p, (str, int, float, pd.Timedelta)) and not isinstance(p, bool)
                               for p in items)


def _order_spec(v: Any) -> bool:
    items = list(v) if isinstance(v, (list, tuple)) else [v]
    return bool(items) and all(isinstance(o, int) and not isinstance(o, bool) and 1 <= o <= 50 for o in items)


def _device_ok(v: Any) -> bool:
    torch.device(v)
    return True


class ODERNNForecaster(HistoryMixin, NetworkMixin, ForecastMixin, BaseForecaster):
    r"""Forecast irregularly sampled series with an ODE-RNN (:class:`odernn.ODERNN`), scikit-learn style.

    **Model.** Each target is split into a deterministic part and a residual,
    :math:`y(t) = d(t) + s\,z(t)`: :math:`d` is a least-squares trend plus Fourier terms of the seasonal periods,
    fitted per series (:class:`odernn.forecasting.SeasonalRegression`), :math:`s` the series' residual scale, and an
    ODE-RNN forecasts :math:`z` from the last ``context_length`` observations (values, mask and real gaps):

    .. math::
        z_i^- = \mathrm{ODESolve}(h_{i-1}, t_{i-1} \to t_i), \quad h_i = \mathrm{GRU}([x_i \odot m_i, m_i], z_i^-),
        \quad \hat z(t) = W\,\mathrm{hidden}(\mathrm{ODESolve}(h_n, t_n \to t)) + b.

    **Training.** Windows of ``context_length_`` rows followed by ``horizon_`` rows. For each window :math:`d` is
    refitted on the data *before the window's forecast origin only*, as it will be when forecasting, so the network
    learns to correct what the regression gets wrong at the end of a history (the level of a bending trend, a
    changing season). Loss: mean squared one-step error in the context plus mean squared multi-step error over the
    horizon, standardised, observed entries only. Adam, gradient-norm clipping, cosine decay.

    **Intervals.** The last ``calibration_fraction`` of every series is held out of training; forecasts from
    origins inside it and spread over the last half of the series (with :math:`d` refitted up to each origin) give
    errors per forecast distance, and :meth:`predict_interval` / :meth:`predict_quantiles` add the split-conformal
    quantiles of their absolute values to the point forecast, symmetrically (levels beyond what the errors resolve:
    an exponential tail and a :class:`~odernn.forecasting._intervals.CalibrationWarning`).

    Args:
        dynamics: ``"node" | "anode" | "sonode" | "hbnode" | "ghbnode"`` (default ``"hbnode"``).
        hidden_size: hidden channels of the ODE-RNN (state ``2 * hidden_size`` for second-order dynamics).
        ode_width: hidden width of the ODE's network (default ``2 * hidden_size``).
        dynamics_kwargs: options of the dynamics; ``None`` means ``{"omega": 0.0}`` (initial damping 0.5) for
            ``"hbnode"``/``"ghbnode"``.
        context_length: rows the model reads before forecasting (and the context of training windows).
        horizon: rows after each training window (default ``min(context_length, n_max // 3)``).
        window_stride, windows_per_epoch, batch_size, max_epochs, lr, lr_schedule, weight_decay, grad_clip:
            training windows and optimisation (``windows_per_epoch`` windows drawn at random per epoch).
        time_unit: model time unit (default: the median gap); a duration for a DatetimeIndex, a number otherwise.
        detrend: the trend of the deterministic part: ``"auto"`` (a line or a level, whichever forecasts the
            held-out end better: a slope fitted to a few recent days and extrapolated is the largest error on
            sub-daily series whose level wanders), True (a line) or False (a level).
        seasonal_period: ``"auto"`` (detected from the stamps as they are: a Lomb-Scargle periodogram, candidates
            kept only if significant and better on held-out data, see :mod:`odernn.forecasting._seasons`; a
            warning says what was tried when none is kept), None, a duration (``"7D"``, ``"24h"``, ``"W"``,
            ``pd.Timedelta``) / number of index units, or a list; Fourier terms of these periods join the trend.
        fourier_order: harmonics per seasonal period: ``"auto"`` (chosen by held-out error, at most 10), an int,
            or a list with one per period.
        seasonal_lag: give the network the residual one longest seasonal period before every stamp (interpolated
            between observed neighbours, masked where unknown) as input channels, and add a learned multiple of
            it to each prediction (a seasonal skip), so that it sees what happened one cycle ago even when the
            cycle is far longer than its context (a week of half-hourly data). Off by default: on the five
            benchmark series it changed the error by -13% to +21% (docs/forecaster.md); no effect without seasons.
        trend_halflife: weight observations by ``0.5 ** (age / halflife)`` when fitting the deterministic part, so
            the level and slope that are extrapolated come from recent seasons (a duration or a number of index
            units; None: equal weights). ``"auto"``: three times the longest seasonal period in use (three years
            for yearly seasonality), None without seasonality.
        past_covariates: columns of ``X`` observed only in the past; every other column of ``X`` is known in advance
            and must be given to :meth:`predict` at every requested stamp.
        calibration_fraction: share of every series' rows held out to calibrate intervals (0: no intervals).
        early_stopping, validation_fraction, n_iter_no_change, tol: stop when the forecast error of the last
            ``validation_fraction`` of the training rows stops improving; keep the best weights.
        solver: an :class:`odernn.Solver` (default ``Solver("rk4", step_fraction=1.0, adjoint=False,
            max_steps=1000)``). A fixed-grid method without ``step_fraction`` gets one step per gap.
        method, rtol, atol, step_size, adjoint, max_steps: shorthands overriding fields of ``solver``
            (``step_size`` is the fixed step as a fraction of each gap).
        max_forecast_steps: the farthest forecast, in typical gaps (``time_unit_``) after a series' end; farther
            stamps raise ``ValueError`` (forecasting integrates the ODE through the whole distance).
        num_threads: torch CPU threads while fitting and forecasting (restored afterwards); None keeps torch's
            setting. The default 1 is fastest for these small networks: two threads on a busy 2-core machine made a
            fit 9x slower (docs/forecaster.md).
        random_state: seed, ``numpy.random.RandomState`` or None.
        device: torch device.
        verbose: a progress bar (tqdm, or one line per epoch) with the losses.

    Attributes:
        model_ (odernn.ODERNN): the trained network.
        regression_ (list): per series, the fitted deterministic part (:math:`d`).
        scale_ (np.ndarray): (n_series, n_features) residual scale per series.
        covariate_columns_, known_covariates_ (list): columns of ``X`` and those known in advance.
        calibration_: held-out errors per forecast distance (None without calibration).
        seasonal_periods_ (list): the periods in use (``pd.Timedelta`` for a DatetimeIndex, index units
            otherwise), longest first; ``fourier_orders_`` their harmonics; ``season_candidates_`` the candidates
            that ``"auto"`` tested (period in model units, power, false-alarm probability, kept, why), else None.
        index_kind_, time_unit_, time_origin_, layout_, columns_, n_features_in_, feature_names_in_, series_ids_,
        series_end_: what ``fit`` read.
        context_length_, horizon_, window_stride_, n_windows_, n_epochs_, history_, nfe_forward_, nfe_backward_,
        best_val_loss_, fit_time_: training.
    """

    _parameter_constraints = {
        "dynamics": [Options(DYNAMICS)],
        "hidden_size": [Interval(int, 1, None)],
        "ode_width": [Interval(int, 1, None), None],
        "dynamics_kwargs": [InstanceOf((dict,), "a dict"), None],
        "context_length": [Interval(int, 2, None)],
        "horizon": [Interval(int, 1, None), None],
        "window_stride": [Interval(int, 1, None)],
        "windows_per_epoch": [Interval(int, 1, None), None],
        "batch_size": [Interval(int, 1, None)],
        "max_epochs": [Interval(int, 1, None)],
        "lr": [Interval(float, 0, None, closed="neither")],
        "lr_schedule": [Options(("cosine", "constant"))],
        "weight_decay": [Interval(float, 0, None)],
        "grad_clip": [Interval(float, 0, None, closed="neither"), None],
        "time_unit": [Check(lambda v: isinstance(v, (str, int, float, pd.Timedelta)) and not isinstance(v, bool),
                            "a duration ('D', '7D', pd.Timedelta) or a positive number"), None],
        "detrend": [Options(("auto", True, False))],
        "seasonal_period": [Options(("auto",)), Check(_period_spec, "a duration, a number or a list of them"), None],
        "fourier_order": [Options(("auto",)), Check(_order_spec, "an int in [1, 50] or a list of them")],
        "seasonal_lag": [Options((True, False))],
        "trend_halflife": [Options(("auto",)), Check(
            lambda v: isinstance(v, (str, int, float, pd.Timedelta)) and not isinstance(v, bool),
            "a duration or a positive number"), None],
        "past_covariates": [InstanceOf((list, tuple), "a list of column names"), None],
        "calibration_fraction": [Interval(float, 0, 0.5, closed="left")],
        "early_stopping": [Options((True, False))],
        "validation_fraction": [Interval(float, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(int, 1, None)],
        "tol": [Interval(float, 0, None)],
        "solver": [InstanceOf((Solver,), "an odernn.Solver"), None],
        "method": [InstanceOf((str,), "a solver method name"), None],
        "rtol": [Interval(float, 0, None, closed="neither"), None],
        "atol": [Interval(float, 0, None, closed="neither"), None],
        "step_size": [Interval(float, 0, 1, closed="right"), None],
        "adjoint": [Options((True, False)), None],
        "max_steps": [Interval(int, 1, None), None],
        "max_forecast_steps": [Interval(int, 1, None)],
        "num_threads": [Interval(int, 1, None), None],
        "random_state": [Interval(int, 0, 2**32 - 1), InstanceOf((np.random.RandomState,), "a RandomState"), None],
        "device": [Check(_device_ok, "a torch device such as 'cpu' or 'cuda'")],
        "verbose": [Options((True, False))],
    }

    def __init__(self, dynamics: str = "hbnode", *, hidden_size: int = 16, ode_width: Optional[int] = None,
                 dynamics_kwargs: Optional[dict] = None, context_length: int = 24, horizon: Optional[int] = None,
                 window_stride: int = 1, windows_per_epoch: Optional[int] = 128, batch_size: int = 16,
                 max_epochs: int = 30, lr: float = 1e-2, lr_schedule: str = "cosine", weight_decay: float = 0.0,
                 grad_clip: Optional[float] = 1.0, time_unit: Any = None, detrend: Any = "auto",
                 seasonal_period: Any = "auto", fourier_order: Any = "auto", seasonal_lag: bool = False,
                 trend_halflife: Any = "auto",
                 past_covariates: Optional[Sequence] = None, calibration_fraction: float = 0.15,
                 early_stopping: bool = False, validation_fraction: float = 0.1, n_iter_no_change: int = 10,
                 tol: float = 1e-4, solver: Optional[Solver] = None, method: Optional[str] = None,
                 rtol: Optional[float] = None, atol: Optional[float] = None, step_size: Optional[float] = None,
                 adjoint: Optional[bool] = None, max_steps: Optional[int] = None, max_forecast_steps: int = 10_000,
                 num_threads: Optional[int] = 1, random_state: Any = None, device: Union[str, torch.device] = "cpu",
                 verbose: bool = False) -> None:
        self.dynamics = dynamics
        self.hidden_size = hidden_size
        self.ode_width = ode_width
        self.dynamics_kwargs = dynamics_kwargs
        self.context_length = context_length
        self.horizon = horizon
        self.window_stride = window_stride
        self.windows_per_epoch = windows_per_epoch
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.time_unit = time_unit
        self.detrend = detrend
        self.seasonal_period = seasonal_period
        self.fourier_order = fourier_order
        self.seasonal_lag = seasonal_lag
        self.trend_halflife = trend_halflife
        self.past_covariates = past_covariates
        self.calibration_fraction = calibration_fraction
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.solver = solver
        self.method = method
        self.rtol = rtol
        self.atol = atol
        self.step_size = step_size
        self.adjoint = adjoint
        self.max_steps = max_steps
        self.max_forecast_steps = max_forecast_steps
        self.num_threads = num_threads
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # ==============================================================================================================
    # validation
    # ==============================================================================================================
    def _validate_params(self) -> Solver:
        """Check every parameter against ``_parameter_constraints``; return the solver to use."""
        validate_params(self.get_params(deep=False), self._parameter_constraints, owner=type(self).__name__)
        base = DEFAULT_SOLVER if self.solver is None else self.solver
        changes = {k: v for k, v in dict(method=self.method, rtol=self.rtol, atol=self.atol, adjoint=self.adjoint,
                                         max_steps=self.max_steps, step_fraction=self.step_size).items()
                   if v is not None}
        if "rtol" in changes:
            changes["rtol"] = float(changes["rtol"])
        if "atol" in changes:
            changes["atol"] = float(changes["atol"])
        if "step_fraction" in changes:
            changes["step_fraction"] = float(changes["step_fraction"])
        solver = base.replace(**changes) if changes else base  # Solver validates (unknown method: ValueError)
        if not solver.adaptive and solver.step_fraction is None:
            solver = solver.replace(step_fraction=1.0)
        return solver

    # ==============================================================================================================
    # fit = validate -> preprocess -> train -> calibrate
    # ==============================================================================================================
    def fit(self, y: Any, X: Any = None) -> "ODERNNForecaster":
        """Learn to forecast ``y``.

        Args:
            y: a DataFrame indexed by time (``DatetimeIndex``, naive or tz-aware, or numeric; irregular, strictly
                increasing stamps; NaN where a variable was not observed), a Series, a list of them (a panel), or a
                long frame with columns ``unique_id``, ``ds`` and the variables (a panel).
            X: covariates in the same layout (a frame, a list of frames in the order of ``y``, or a long frame), on
                their own stamps; see ``past_covariates``.

        Returns:
            ``self``.

        Raises:
            TypeError, ValueError: bad input or parameters (the message says which and what to do).
            odernn.SolverError: training diverged.
        """
        start = time.perf_counter()
        solver = self._validate_params()
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]:
            delattr(self, name)  # a failed refit leaves the estimator unfitted, not half-updated
        with training.threads(self.num_threads):
            data = self._preprocess(y, X)
            self.solver_ = solver
            try:
                self._train(data)
                self._calibrate(data)
            except BaseException:
                self.__dict__.pop("model_", None)
                raise
        self.fit_time_ = time.perf_counter() - start
        return self

    # ==============================================================================================================
    # update, score
    # ==============================================================================================================
    def score(self, y: Any, X: Any = None) -> float:
        """R² of the forecast of ``y``'s stamps (later observations, in the training layout), per column over the
        observed entries of all series, averaged over columns (:func:`sklearn.metrics.r2_score`)."""
        self._check_fitted()
        panel = self._read_like_fit(y)
        lookup = {sid: k for k, sid in enumerate(self.series_ids_)}
        true, pred = [], []
        for sid, df, v in zip(panel.ids, panel.frames, panel.values):
            if sid not in lookup:
                raise ValueError(f"y has series {sid!r}, which the forecaster does not know")
            ids = [sid] if self.layout_ in ("list", "long") else None
            xx = X
            out = self.predict(df.index, xx, relative=False, ids=ids)
            if self.layout_ == "list":
                out = out[0]
            elif self.layout_ == "long":
                out = out.set_index("ds")[self.columns_]
            elif self.layout_ == "series":
                out = out.to_frame()
            true.append(v)
            pred.append(out.to_numpy())
        yt, yp = np.concatenate(true), np.concatenate(pred)
        scores = []
        for j in range(yt.shape[1]):
            ok = ~np.isnan(yt[:, j])
            if ok.sum() < 2:
                raise ValueError(f"column {self.columns_[j]!r} has {int(ok.sum())} observed value(s) in y; R² needs "
                                 f"at least 2")
            scores.append(r2_score(yt[ok, j], yp[ok, j]))
        return float(np.mean(scores))

    # ==============================================================================================================
    # sklearn, pickling, saving
    # ==============================================================================================================
    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = True
        tags.target_tags.required = True
        tags.input_tags.allow_nan = True
        tags.non_deterministic = str(self.device).split(":")[0] != "cpu"
        return tags

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        if "model_" in state:
            state["model_"] = {k: v.detach().cpu().clone() for k, v in state["model_"].state_dict().items()}
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        if "model_" in state and "_history_" not in state:
            raise ValueError("this is a fitted ODERNNForecaster pickled by odernn 0.1, whose fitted state (one trend "
                             "line, the last context only) the current forecaster cannot use; refit it (its "
                             "parameters still apply)")
        weights = state.pop("model_", None)
        super().__setstate__(state)
        if weights is not None:
            model = self._build_model(self._model_config_, self.solver_)
            model.load_state_dict(weights)
            model.eval()
            self.model_ = model

    def save(self, path: Any) -> None:
        """Write the estimator to ``path`` atomically, without pickle: weights as tensors, everything else as JSON
        (see :func:`odernn.forecasting.save_forecaster`). :meth:`load` reads it without running code."""
        from ._persist import save_forecaster

        save_forecaster(self, path)

    @classmethod
    def load(cls, path: Any, *, trusted: bool = False) -> "ODERNNForecaster":
        """Read a file written by :meth:`save` (``torch.load(weights_only=True)``: no code is run).

        Args:
            path: the file.
            trusted: also accept a pickle written by odernn 0.1's ``save`` (unpickling can run code: only for files
                you trust).

        Raises:
            ValueError: a corrupted or truncated file, a file that is not an odernn forecaster, or an old pickle
                without ``trusted=True``.
        """
        from ._persist import load_forecaster

        return load_forecaster(cls, path, trusted=trusted)
