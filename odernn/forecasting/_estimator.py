"""The estimator: :class:`ODERNNForecaster`. ``fit`` = validate -> preprocess -> train -> calibrate."""

from __future__ import annotations

import copy
import time
from typing import Any, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import r2_score
from sklearn.utils import check_random_state

from .. import ODERNN, Solver
from ._base import BaseForecaster
from ._covariates import KNOWN_LEAD, merge_rows, read_covariates
from ._forecast import ForecastMixin
from ._params import Check, InstanceOf, Interval, Options, validate_params
from ._preprocess import Deterministic, Scaler, resolve_periods
from . import _training as training

__all__ = ["ODERNNForecaster", "DEFAULT_SOLVER", "DYNAMICS"]

DYNAMICS = ("node", "anode", "sonode", "hbnode", "ghbnode")

#: The forecaster's solver unless ``solver=`` says otherwise: classical Runge-Kutta, one step per gap, direct
#: backpropagation (measured faster than dopri5 and than the adjoint for these small models, docs/forecaster.md).
DEFAULT_SOLVER = Solver(method="rk4", step_fraction=1.0, adjoint=False, max_steps=1000)

MAX_VAL_WINDOWS = 64
MIN_ROLLING = 32  # fewest rolling-origin windows for rolling detrending


def _period_spec(v: Any) -> bool:
    items = list(v) if isinstance(v, (list, tuple)) else [v]
    return bool(items) and all(isinstance(p, (str, int, float, pd.Timedelta)) and not isinstance(p, bool)
                               for p in items)


def _device_ok(v: Any) -> bool:
    torch.device(v)
    return True


class ODERNNForecaster(ForecastMixin, BaseForecaster):
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

    **Intervals.** The last ``calibration_fraction`` of every series is held out of training; forecasts of it from
    origins inside it (with :math:`d` refitted up to each origin) give signed errors per forecast distance, and
    :meth:`predict_interval` / :meth:`predict_quantiles` add their split-conformal quantiles to the point forecast.

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
        detrend: fit and remove a least-squares trend (a line).
        seasonal_period: ``"auto"`` (a year for a DatetimeIndex whose series span two years, else none), None, a
            duration / number, or a list; Fourier terms of these periods join the trend.
        fourier_order: harmonics per seasonal period.
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
        "detrend": [Options((True, False))],
        "seasonal_period": [Options(("auto",)), Check(_period_spec, "a duration, a number or a list of them"), None],
        "fourier_order": [Interval(int, 1, None)],
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
                 grad_clip: Optional[float] = 1.0, time_unit: Any = None, detrend: bool = True,
                 seasonal_period: Any = "auto", fourier_order: int = 3, trend_halflife: Any = "auto",
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

    # -- preprocess -----------------------------------------------------------------------------------------------
    def _preprocess(self, y: Any, X: Any) -> dict:
        panel, axis = self._read_fit(y, self.time_unit)
        values_all = np.concatenate(panel.values, axis=0)
        empty = [c for c, ok in zip(panel.columns, (~np.isnan(values_all)).any(axis=0)) if not ok]
        if empty:
            raise ValueError(f"column(s) {empty} have no observed (non-NaN) value; drop them before fitting")
        times = [axis.from_raw(t) for t in panel.times]
        self._typical_gap_ = float(np.median(np.concatenate([np.diff(t) for t in times])))
        span = max(float(t[-1] - t[0]) for t in times)
        self._periods_ = resolve_periods(self.seasonal_period, axis, span, "seasonal_period")
        if isinstance(self.trend_halflife, str) and self.trend_halflife == "auto":
            self._halflife_ = 3 * max(self._periods_) if self._periods_ else None
        elif self.trend_halflife is None:
            self._halflife_ = None
        else:
            self._halflife_ = axis.duration(self.trend_halflife, "trend_halflife")
            if not self._halflife_ > 0:
                raise ValueError(f"trend_halflife must be a positive duration, got {self.trend_halflife!r}")
        # covariates
        if X is not None:
            origin = axis.origin if axis.kind == "datetime" else None
            cols, xs = read_covariates(X, layout=panel.layout, ids=panel.ids, kind=panel.kind, axis_origin=origin,
                                       columns=None)
            clash = [c for c in cols if c in panel.columns]
            if clash:
                raise ValueError(f"X has column(s) {clash} that are also in y; rename the covariates")
            past = list(self.past_covariates or [])
            unknown = [c for c in past if c not in cols]
            if unknown:
                raise ValueError(f"past_covariates names {unknown}, which are not columns of X ({cols})")
            self.covariate_columns_ = cols
            self.known_covariates_ = [c for c in cols if c not in past]
            self._known_ = np.array([c not in past for c in cols], dtype=bool)
            xs = {sid: (axis.from_raw(t), v) for sid, (t, v) in xs.items()}
        else:
            if self.past_covariates:
                raise ValueError("past_covariates is set but fit got no X; pass the covariates as X")
            self.covariate_columns_, self.known_covariates_ = [], []
            self._known_ = np.zeros(0, dtype=bool)
            xs = {}
        p = len(self.covariate_columns_)
        hist = []
        for sid, t, v in zip(panel.ids, times, panel.values):
            tx, cx = xs.get(sid, (None, None))
            hist.append(merge_rows(t, v, tx, cx, self._known_, KNOWN_LEAD * self._typical_gap_))
        self._history_ = [dict(t=t, y=yy, c=c) for t, yy, c in hist]
        if p:
            self.covariate_scaler_ = Scaler().fit(np.concatenate([h["c"] for h in self._history_]))
        else:
            self.covariate_scaler_ = None
        self.series_end_ = [df.index[-1] for df in panel.frames]
        self.regression_ = [self._fit_regression(h["t"], h["y"]) for h in self._history_]
        self.scale_ = np.stack([self._residual_scale(h, d) for h, d in zip(self._history_, self.regression_)])
        self._end_model_time_ = np.array([h["t"][-1] for h in self._history_])
        return dict(panel=panel)

    def _fit_regression(self, t: np.ndarray, y: np.ndarray) -> Deterministic:
        degree = 1 if self.detrend else 0
        return Deterministic(degree, self._periods_, int(self.fourier_order), self._halflife_).fit(t, y)

    def _first_complete_rows(self) -> np.ndarray:
        """Per series, the first origin (row count) whose history spans every seasonal period twice."""
        need = 2 * max(self._periods_) if self._periods_ else 0.0
        out = []
        for h in self._history_:
            span = h["t"] - h["t"][0]
            k = int(np.searchsorted(span, need - 1e-9)) + 1  # rows [0, k) span at least `need`
            out.append(max(k, 2))
        return np.array(out)

    @staticmethod
    def _residual_scale(h: dict, d: Deterministic) -> np.ndarray:
        r = h["y"] - d.predict(h["t"])
        out = np.ones(r.shape[1])
        for j in range(r.shape[1]):
            col = r[:, j][~np.isnan(r[:, j])]
            if len(col) >= 2 and np.std(col) > 0:
                out[j] = np.std(col)
        return out

    def _channels(self, s: int, t: np.ndarray, y: np.ndarray, c: np.ndarray, d: Deterministic) -> np.ndarray:
        """Model channels (n, k + p): standardised residuals of ``y`` w.r.t. ``d``, standardised covariates."""
        z = (y - d.predict(t)) / self.scale_[s]
        if self.covariate_scaler_ is None:
            return z
        return np.concatenate([z, self.covariate_scaler_.transform(c)], axis=1)

    def _origin_channels(self, s: int, lo: int, hi: int, e: int, cache: Optional[dict] = None) -> np.ndarray:
        """Channels of rows [lo, hi) of series ``s`` with ``d`` fitted on the rows before the origin ``e``."""
        h = self._history_[s]
        if not self._rolling_:
            return self._channels(s, h["t"][lo:hi], h["y"][lo:hi], h["c"][lo:hi], self.regression_[s])
        key = (s, e)
        d = cache.get(key) if cache is not None else None
        if d is None:
            d = self._fit_regression(h["t"][:e], h["y"][:e])
            if cache is not None:
                cache[key] = d
        return self._channels(s, h["t"][lo:hi], h["y"][lo:hi], h["c"][lo:hi], d)

    # -- train ------------------------------------------------------------------------------------------------------
    def _model_config(self, solver: Solver) -> dict:
        k, p = self.n_features_in_, len(self.covariate_columns_)
        kwargs = copy.deepcopy(self.dynamics_kwargs) if self.dynamics_kwargs is not None else (
            {"omega": 0.0} if self.dynamics in ("hbnode", "ghbnode") else None)
        return dict(dynamics=self.dynamics, input_size=k + (p + 1 if p else 0), hidden_size=int(self.hidden_size),
                    output_size=k, ode_width=None if self.ode_width is None else int(self.ode_width),
                    dynamics_kwargs=kwargs)

    @staticmethod
    def _build_model(config: dict, solver: Solver) -> ODERNN:
        """The ODE-RNN for a config. The last layer of the ODE's network starts at zero, so an untrained model's
        forecast stays near its last state instead of drifting (quadratically, for second-order dynamics)."""
        model = ODERNN(config["dynamics"], config["input_size"], config["hidden_size"], config["output_size"],
                       solver=solver, ode_width=config["ode_width"], dynamics_kwargs=config["dynamics_kwargs"])
        last = model.dynamics.net[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
        return model

    def _train(self, data: dict) -> None:
        n_rows = np.array([len(h["t"]) for h in self._history_])
        frac = float(self.calibration_fraction)
        n_cal = np.array([int(round(frac * n)) if frac > 0 and n >= 20 else 0 for n in n_rows])
        self._n_cal_ = n_cal
        n_tr = n_rows - n_cal
        if self.early_stopping:
            n_val = np.array([max(1, int(round(self.validation_fraction * n))) if n >= 4 else 0 for n in n_tr])
            if n_val.sum() == 0:
                raise ValueError("early_stopping needs a series with at least 4 observations to hold out its end")
        else:
            n_val = np.zeros_like(n_tr)
        n_fit = n_tr - n_val
        n_max = int(n_fit.max())
        if n_max < 3:
            raise ValueError(f"the longest training series has {n_max} rows; need at least 3 (a window of 2 "
                             f"observations and 1 target)")
        L = int(self.context_length)
        H = int(self.horizon) if self.horizon is not None else max(1, min(L, n_max // 3))
        H = min(H, n_max - 2)
        L = min(L, n_max - H)
        self.context_length_, self.horizon_ = L, H
        self.window_stride_ = int(self.window_stride)
        # Rolling origins: the deterministic part of a window is refitted on the rows before its origin, once the
        # history spans every seasonal period twice; with fewer than MIN_ROLLING such windows (short series) the
        # fit on the whole history is used for every window instead.
        first = self._first_complete_rows()
        spans = [(s, e) for s in range(len(n_fit)) for e in range(max(L, int(first[s])), int(n_fit[s]) - H + 1,
                                                                  self.window_stride_)]
        self._rolling_ = len(spans) >= MIN_ROLLING
        if not self._rolling_:
            spans = [(s, e) for s in range(len(n_fit)) for e in range(L, int(n_fit[s]) - H + 1, self.window_stride_)]
        if not spans:
            raise ValueError(f"no series is long enough for a training window of {L} + {H} rows")
        self.n_windows_ = len(spans)
        per_epoch = len(spans) if self.windows_per_epoch is None else min(len(spans), int(self.windows_per_epoch))
        known = self._known_ if len(self.covariate_columns_) else None
        device = torch.device(self.device)
        cache: dict = {}
        k = self.n_features_in_

        def rows(s: int, e: int, h: int) -> tuple[np.ndarray, np.ndarray]:
            return self._history_[s]["t"][e - L:e + h], self._origin_channels(s, e - L, e + h, e, cache)

        def batches(idx: list) -> training.Batch:
            return training.make_batch([rows(*spans[i], H) for i in idx], L, k, known, device)

        val = None
        if self.early_stopping:
            vspans = [(s, e) for s in range(len(n_tr)) for e in range(max(L, int(n_fit[s])), int(n_tr[s]) - H + 1)]
            if not vspans:
                raise ValueError(f"early_stopping: the validation part ({self.validation_fraction:.0%} of the rows) "
                                 f"is shorter than the horizon ({H} rows); raise validation_fraction or lower horizon")
            pick = np.unique(np.linspace(0, len(vspans) - 1, min(len(vspans), MAX_VAL_WINDOWS)).round().astype(int))
            val = training.make_batch([rows(*vspans[i], H) for i in pick], L, k, known, device)

        rng = check_random_state(self.random_state)
        seed = int(rng.randint(0, 2**31 - 1))
        self._model_config_ = self._model_config(self.solver_)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self._build_model(self._model_config_, self.solver_)
        model = model.to(device)
        gen = torch.Generator().manual_seed(seed)
        settings = training.TrainSettings(
            batch_size=int(self.batch_size), max_epochs=int(self.max_epochs), per_epoch=per_epoch, lr=float(self.lr),
            lr_schedule=self.lr_schedule, weight_decay=float(self.weight_decay),
            grad_clip=None if self.grad_clip is None else float(self.grad_clip),
            n_iter_no_change=int(self.n_iter_no_change), tol=float(self.tol), verbose=bool(self.verbose))
        hist, best = training.train(model, batches, len(spans), val, settings, gen, training.window_loss)
        self.model_ = model
        self.history_ = pd.DataFrame(hist, columns=["epoch", "steps", "train_loss", "val_loss", "nfe_forward",
                                                    "nfe_backward", "seconds"])
        self.n_epochs_ = len(hist)
        self.nfe_forward_ = float(hist[-1]["nfe_forward"]) if hist else 0.0
        self.nfe_backward_ = float(hist[-1]["nfe_backward"]) if hist else 0.0
        self.best_val_loss_ = best

    # ==============================================================================================================
    # update, score
    # ==============================================================================================================
    def update(self, y: Any, X: Any = None, *, replace: bool = False) -> "ODERNNForecaster":
        """Add new observations to the history that forecasts condition on, without retraining the network.

        By default (sktime's meaning) the rows of ``y`` are *appended* to each series' history; they must lie after
        the series' last stamp. The deterministic part (trend, seasonality) is refitted on the longer history, as
        during training; weights and scales stay as fitted. With a long frame, an id not seen before adds a new
        series (a global model forecasts it). ``replace=True`` swaps in ``y`` as the whole history instead.

        Args:
            y: new observations in the layout of ``fit``.
            X: their covariates (same layout), if the forecaster uses covariates.
            replace: replace the histories instead of appending.

        Returns:
            ``self``.

        Raises:
            NotFittedError: before :meth:`fit`.
            TypeError, ValueError: frames that do not match the fit, or stamps not after a series' end.
        """
        self._check_fitted()
        if not isinstance(replace, bool):
            raise TypeError(f"replace must be True or False, got {replace!r}")
        panel = self._read_like_fit(y)
        if self.layout_ != "long" and not replace and len(panel.ids) != len(self.series_ids_):
            raise ValueError(f"update got {len(panel.ids)} series but the forecaster has {len(self.series_ids_)}; "
                             f"pass one frame per series (or replace=True)")
        xs = {}
        if X is not None:
            if not len(self.covariate_columns_):
                raise ValueError("update got X but the forecaster was fitted without covariates; pass X=None")
            origin = self._axis_.origin if self.index_kind_ == "datetime" else None
            _, raw = read_covariates(X, layout=self.layout_, ids=panel.ids, kind=self.index_kind_,
                                     axis_origin=origin, columns=self.covariate_columns_)
            xs = {sid: (self._axis_.from_raw(t), v) for sid, (t, v) in raw.items()}
        hist, regs = list(self._history_), list(self.regression_)
        ids, ends, scales = list(self.series_ids_), list(self.series_end_), list(self.scale_)
        if replace and self.layout_ != "long":  # series i of the new list replaces series i
            n = len(panel.ids)
            hist, regs, ids, ends, scales = hist[:n], regs[:n], ids[:n], ends[:n], scales[:n]
        lookup = {sid: k for k, sid in enumerate(ids)}
        for sid, t_raw, v, df in zip(panel.ids, panel.times, panel.values, panel.frames):
            t = self._axis_.from_raw(t_raw)
            tx, cx = xs.get(sid, (None, None))
            rt, ry, rc = merge_rows(t, v, tx, cx, self._known_, KNOWN_LEAD * self._typical_gap_)
            s = lookup.get(sid)
            if s is not None and not replace:
                old = hist[s]
                if rt[0] <= old["t"][-1] + 1e-9:
                    raise ValueError(f"update: series {sid!r} has new rows from {df.index[0]}, at or before its last "
                                     f"stamp {ends[s]}; update appends later observations (pass replace=True to "
                                     f"replace the history)")
                h = dict(t=np.concatenate([old["t"], rt]), y=np.concatenate([old["y"], ry]),
                         c=np.concatenate([old["c"], rc]))
            else:
                h = dict(t=rt, y=ry, c=rc)
            d = self._fit_regression(h["t"], h["y"])
            if s is None:
                lookup[sid] = len(hist)
                hist.append(h)
                regs.append(d)
                ids.append(sid)
                ends.append(df.index[-1])
                scales.append(self._residual_scale(h, d))
            else:
                hist[s], regs[s], ends[s] = h, d, df.index[-1]
        self._history_, self.regression_, self.series_ids_, self.series_end_ = hist, regs, ids, ends
        self.scale_ = np.stack(scales)
        self._end_model_time_ = np.array([h["t"][-1] for h in self._history_])
        return self

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
