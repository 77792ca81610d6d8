r"""Neural CDE baseline (Kidger et al. 2020) for the sequence recipes, built on torchcde.

.. math::
    z(s) = z(s_0) + \int_{s_0}^{s} f_\theta(z(u))\, dX(u), \qquad z(s_0) = \zeta_\theta(X(s_0)),
    \qquad y_i = \ell_\theta(z(s_i)).

The control path ``X`` interpolates the irregular observations *with their time as an extra channel*,
``X(s_i) = [\tau\,(t_i - t_0), x_i]``, over the observation index ``s_i = i``. Because a CDE is invariant to
reparametrising its control, integrating over the index with time as a channel is the same model as integrating over
time itself, and lets one batched solve serve samples whose observation times differ. The interpolation is torchcde's
Hermite cubic with backward differences, so ``X`` on ``[s_{i-1}, s_i]`` depends only on observations up to ``i``:
the output read at ``s_i`` never sees later observations.

Forecasting (plane vibration): future stamps are appended to the path with their times and the *last observed
values held constant*, so after the last observation only the time channel moves and the CDE continues as an ODE in
time, without seeing any future value.

The CDE is an :class:`odernn.Dynamics` (:class:`CDEField`, ``dz/ds = f(z) dX/ds``) solved by
:func:`odernn.odesolve` with the run's :class:`odernn.Solver`, like every other model of the recipes: the same step-size
control (``Solver.norm_function``, the seminorm on the adjoint), the same errors (:class:`odernn.SolverError`), and NFEs
counted by :func:`odernn.nfe_counter`. torchcde provides the interpolation of the control path.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import torch
from torch import Tensor, nn
import torchcde

import odernn

__all__ = ["CDEField", "NeuralCDE", "ncde_width_for", "ncde_num_params"]


class CDEField(odernn.Dynamics):
    r"""The CDE as an ODE in the control's parameter: ``dz/ds = f(z) dX/ds``, with ``f``: (B, H) -> (B, H, C),
    ``H -> width -> ReLU -> H*C -> tanh`` (tanh bounds the field, as usual for Neural CDEs).

    The control path ``X`` (a torchcde spline with ``C`` channels) is set per solve in :attr:`path`; the adjoint
    (backward) solve reads it again, so :class:`NeuralCDE` restores its own path when the backward pass reaches it.

    Shapes:
        ``forward(s, z)``: ``s`` a 0-d tensor, ``z`` (B, H) -> (B, H).
    """

    def __init__(self, hidden_size: int, channels: int, width: int) -> None:
        super().__init__(nn.Sequential(nn.Linear(hidden_size, width), nn.ReLU(),
                                       nn.Linear(width, hidden_size * channels), nn.Tanh()))
        self.hidden_size, self.channels = hidden_size, channels
        self.path: Optional[torchcde.CubicSpline] = None

    def forward(self, s: Tensor, z: Tensor) -> Tensor:
        if self.path is None:
            raise RuntimeError("CDEField has no control path: set field.path to a torchcde spline before solving")
        dx = self.path.derivative(s).to(z.dtype)  # (B, C)
        f = self.net(z).view(z.shape[0], self.hidden_size, self.channels)
        return (f @ dx.unsqueeze(-1)).squeeze(-1)


def _restore_path(field: CDEField, path: torchcde.CubicSpline, grad: Tensor) -> None:
    field.path = path


def ncde_num_params(input_size: int, hidden_size: int, width: int, output_size: int) -> int:
    """Parameters of :class:`NeuralCDE` (``C = input_size + 1`` channels)."""
    c = input_size + 1
    return (c * hidden_size + hidden_size) + (hidden_size * width + width) + (width * hidden_size * c +
                                                                               hidden_size * c) + \
        (hidden_size * output_size + output_size)


def ncde_width_for(target: int, *, input_size: int, hidden_size: int, output_size: int) -> int:
    """The vector-field width that brings :class:`NeuralCDE` closest to ``target`` parameters (at least 1)."""
    fixed = ncde_num_params(input_size, hidden_size, 0, output_size)
    per = ncde_num_params(input_size, hidden_size, 1, output_size) - fixed
    return max(1, round((target - fixed) / per))


class NeuralCDE(nn.Module):
    """Neural CDE over irregular observations (see the module docstring).

    Args:
        input_size: features ``k`` per observation (the path has ``k + 1`` channels with time).
        hidden_size: CDE state size ``H``.
        width: hidden width of the vector field.
        output_size: outputs per step.
        solver: how the CDE is solved, as an :class:`odernn.Solver` (default ``Solver()``: dopri5, rtol 1e-3,
            atol 1e-4, adjoint with the seminorm, the per-sample norm); ``solver_changes`` (``rtol=``, ...) override
            its fields. Fixed-grid methods take ``step_fraction`` (or ``step_size``) in units of the observation
            index, i.e. a fraction of each gap. ``fused``/``compile`` do not apply (they serve the ODE-RNN loop).
        time_scale: factor ``tau`` on the time channel (times are taken relative to each sample's first observation).
        input_mean, input_std: optional (k,) statistics (e.g. of the training inputs) that standardise the values
            before they enter the path (fixed buffers, not learned). A path that moves by several units per step
            makes the CDE stiff and its NFEs explode; standardising keeps the increments of order one.

    Shapes:
        ``forward(x, t, t_future=None)``: ``x`` (B, T, k), ``t`` (B, T) strictly increasing per sample,
        ``t_future`` None or (B, F) after ``t[:, -1]`` -> (B, T, output_size), or with ``t_future`` a pair
        ``(outputs (B, T, output_size), forecast (B, F, output_size))``.
    """

    def __init__(self, input_size: int, hidden_size: int, width: int, output_size: int, *,
                 solver: Optional[odernn.Solver] = None, time_scale: float = 1.0, input_mean: Optional[Tensor] = None,
                 input_std: Optional[Tensor] = None, **solver_changes: Any) -> None:
        super().__init__()
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size), ("width", width),
                        ("output_size", output_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not time_scale > 0:
            raise ValueError(f"time_scale must be positive, got {time_scale!r}")
        self.solver = (solver or odernn.Solver()).replace(**solver_changes)
        if not self.solver.adaptive and (self.solver.step_fraction or self.solver.step_size) is None:
            raise ValueError(f"fixed-grid method {self.solver.method!r} needs step_fraction= (a fraction of each gap)")
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, output_size
        channels = input_size + 1
        self.initial = nn.Linear(channels, hidden_size)
        self.field = CDEField(hidden_size, channels, width)
        self.readout = nn.Linear(hidden_size, output_size)
        self.time_scale = float(time_scale)
        mean = torch.zeros(input_size) if input_mean is None else torch.as_tensor(input_mean, dtype=torch.float32)
        std = torch.ones(input_size) if input_std is None else torch.as_tensor(input_std, dtype=torch.float32)
        if mean.shape != (input_size,) or std.shape != (input_size,) or not bool((std > 0).all()):
            raise ValueError(f"input_mean/input_std must have shape ({input_size},) with positive std, got "
                             f"{tuple(mean.shape)} and {tuple(std.shape)}")
        self.register_buffer("input_mean", mean.clone())
        self.register_buffer("input_std", std.clone())

    def _path(self, x: Tensor, t: Tensor) -> Tensor:
        rel = (t - t[:, :1]) * self.time_scale
        x = (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)
        return torch.cat([rel.unsqueeze(-1), x], dim=-1)  # (B, T, k + 1)

    def forward(self, x: Tensor, t: Tensor, t_future: Optional[Tensor] = None):
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"x must have shape (batch, time, {self.input_size}), got {tuple(x.shape)}")
        B, T, _ = x.shape
        if t.dim() == 1:
            t = t.unsqueeze(0).expand(B, -1)
        if t.shape != (B, T):
            raise ValueError(f"t must have shape ({B}, {T}), got {tuple(t.shape)}")
        t = t.to(x.dtype)
        values = x
        n_future = 0
        if t_future is not None:
            if t_future.dim() == 1:
                t_future = t_future.unsqueeze(0).expand(B, -1)
            if t_future.dim() != 2 or t_future.shape[0] != B:
                raise ValueError(f"t_future must have shape ({B}, n_future), got {tuple(t_future.shape)}")
            if not (t_future[:, 0] > t[:, -1]).all():
                raise ValueError("t_future must lie after each sample's last observation")
            n_future = t_future.shape[1]
            t = torch.cat([t, t_future.to(x.dtype)], dim=1)
            values = torch.cat([x, x[:, -1:].expand(B, n_future, self.input_size)], dim=1)  # hold the last value
        path = self._path(values, t)
        coeffs = torchcde.hermite_cubic_coefficients_with_backward_differences(path)
        X = torchcde.CubicSpline(coeffs)
        z0 = self.initial(X.evaluate(X.interval[0]))
        knots, cfg = X.grid_points, self.solver
        if cfg.adaptive:
            # the path is a cubic polynomial between knots but only C1 across them: restarting the step at every knot
            # (jump_t) keeps adaptive steps long inside each piece instead of shrinking them around every knot
            cfg = cfg.replace(options={**dict(cfg.options), "jump_t": knots - knots[0]})
        else:  # fixed grid: the step is a fraction of each gap, i.e. of one unit of the observation index
            cfg = cfg.replace(step_size=cfg.step_fraction or cfg.step_size, step_fraction=None)
        self.field.path = X
        z = odernn.odesolve(self.field, z0, knots, solver=cfg)  # (B, S, H)
        if cfg.adjoint and z.requires_grad:
            # another forward may run before this one's backward: give the adjoint solve this call's path back
            z.register_hook(functools.partial(_restore_path, self.field, X))
        y = self.readout(z)
        if t_future is None:
            return y
        return y[:, :T], y[:, T:]
