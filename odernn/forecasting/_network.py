"""The network of a forecaster: its configuration, construction, and training on rolling-origin windows.

:class:`NetworkMixin` is a part of :class:`odernn.forecasting.ODERNNForecaster`.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch
from sklearn.utils import check_random_state

from .. import ODERNN, Solver
from . import _training as training

__all__ = ["NetworkMixin", "MAX_VAL_WINDOWS", "MIN_ROLLING"]

MAX_VAL_WINDOWS = 64
MIN_ROLLING = 32  # fewest rolling-origin windows for rolling detrending


class NetworkMixin:
    """Building and training the ODE-RNN of :class:`odernn.forecasting.ODERNNForecaster`."""

    # -- train ------------------------------------------------------------------------------------------------------
    def _model_config(self, solver: Solver) -> dict:
        k, p, kl = self.n_features_in_, len(self.covariate_columns_), self._n_lag
        kwargs = copy.deepcopy(self.dynamics_kwargs) if self.dynamics_kwargs is not None else (
            {"omega": 0.0} if self.dynamics in ("hbnode", "ghbnode") else None)
        extra = p + kl + 1 if p or kl else 0  # covariates, lags, the query channel
        return dict(dynamics=self.dynamics, input_size=k + extra, hidden_size=int(self.hidden_size),
                    output_size=k, ode_width=None if self.ode_width is None else int(self.ode_width),
                    dynamics_kwargs=kwargs, lag_channels=[k + p, k + p + kl] if kl else None)

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
        if config.get("lag_channels"):
            training.add_seasonal_skip(model, tuple(config["lag_channels"]))
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
        self._first_rows_ = first
        spans = [(s, e) for s in range(len(n_fit)) for e in range(max(L, int(first[s])), int(n_fit[s]) - H + 1,
                                                                  self.window_stride_)]
        self._rolling_ = len(spans) >= MIN_ROLLING
        if not self._rolling_:
            spans = [(s, e) for s in range(len(n_fit)) for e in range(L, int(n_fit[s]) - H + 1, self.window_stride_)]
        if not spans:
            raise ValueError(f"no series is long enough for a training window of {L} + {H} rows")
        self.n_windows_ = len(spans)
        per_epoch = len(spans) if self.windows_per_epoch is None else min(len(spans), int(self.windows_per_epoch))
        known = self._input_known()
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
