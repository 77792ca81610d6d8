"""How a dynamics is integrated: torchdiffeq underneath, NFE accounting, per-sample gaps, bounded solves.

Two entry points:

* :func:`odesolve` / :class:`ODEBlock`: a plain solve of a dynamics over a shared time grid (continuous-depth
  layers, trajectories).
* :func:`solve_gaps` (private, used by :class:`odernn.ODERNN`): one batched solve in which every sample ``b`` moves
  from its own time ``t0[b]`` through its own gap ``dt[b]``. Time is rescaled, ``t = t0 + s * dt`` with
  ``s in [0, 1]`` and ``dz/ds = dt * f(t, z)``, so a single solve serves different gaps; a zero gap leaves that
  sample's state unchanged.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import torch
from torch import Tensor, nn
import torchdiffeq

from ._errors import SolverError
from ._dynamics import ANODE, GHBNODE, HBNODE, NODE, SONODE, Dynamics
from ._lean_dopri5 import LEAN_DOPRI5
from ._solver import ADAPTIVE_METHODS, FIXED_METHODS, METHODS, Solver, SolverConfig

__all__ = ["SolverConfig", "SolverError", "odesolve", "ODEBlock", "solve_gaps"]

def _odeint_kwargs(cfg: Solver, first_step: Optional[float] = None, *, in_gaps: bool = False) -> dict:
    """Keyword arguments for ``torchdiffeq.odeint`` / ``odeint_adjoint`` (fresh dicts: torchdiffeq mutates them).

    ``first_step`` (adaptive methods only) replaces torchdiffeq's initial-step heuristic in the forward and the
    adjoint solve. ``in_gaps``: a time-rescaled ODE-RNN gap, where a fixed step is ``cfg.step_fraction``."""
    opts = dict(cfg.options)
    if cfg.adaptive:
        opts["norm"] = cfg.norm_function
        opts.setdefault("max_num_steps", cfg.max_steps)
        if first_step is not None:
            opts["first_step"] = first_step
    else:
        step = cfg.step_fraction if in_gaps else cfg.step_size
        if step is not None:
            opts.setdefault("step_size", step)
    method = LEAN_DOPRI5 if cfg.lean and cfg.method == "dopri5" else cfg.method
    kw: dict = dict(rtol=cfg.rtol, atol=cfg.atol, method=method, options=opts)
    if cfg.adjoint:
        adj = dict(opts)
        if cfg.adaptive:
            if cfg.seminorm:
                adj["norm"] = "seminorm"  # torchdiffeq wraps the forward norm and drops the parameter channels
            else:
                del adj["norm"]  # torchdiffeq's default: forward norm on states, mixed norm over parameters
        kw["adjoint_options"] = adj
    return kw


_BUILTIN_FORWARDS = frozenset(c.forward for c in (NODE, ANODE, SONODE, HBNODE, GHBNODE))


class _Field(nn.Module):
    """The function torchdiffeq integrates: the dynamics, optionally time-rescaled per sample, with NFE accounting.

    Counting happens here because here the phase is known: with the adjoint method the forward solve runs with
    gradients disabled and the adjoint solve evaluates the field with gradients enabled; with direct
    backpropagation every evaluation is a forward one and a hook on its output counts its backward pass.
    """

    def __init__(self, dynamics: Dynamics, adjoint: bool, max_evals: int, t0: Optional[Tensor] = None,
                 dt: Optional[Tensor] = None, adaptive: bool = False, state_dim: int = 2) -> None:
        super().__init__()
        self.dynamics = dynamics
        self.adjoint = adjoint
        self.max_evals = max_evals
        self.n_forward = 0
        self.n_backward = 0
        self.t0 = t0
        self.dt = dt
        # The built-in dynamics read t only through a time-dependent net: skip forming t = t0 + s * dt otherwise.
        self.needs_time = dynamics.time_dependent or type(dynamics).forward not in _BUILTIN_FORWARDS
        # dt broadcast over the state's non-batch dimensions
        self.scale = None if dt is None else dt.reshape((-1,) + (1,) * (state_dim - 1))
        self.last_step: Optional[Tensor] = None
        if adaptive:
            # torchdiffeq calls this after each accepted forward step; fixed-grid solvers would warn about it
            self.callback_accept_step = self._accept

    def _accept(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.last_step = dt

    def forward(self, s: Tensor, z: Tensor) -> Tensor:
        if self.dt is None:
            out = self.dynamics(s, z)
        elif self.needs_time:
            out = self.dynamics(self.t0 + s.to(self.dt.dtype) * self.dt, z) * self.scale
        else:
            out = self.dynamics(s, z) * self.scale
        backward = self.adjoint and torch.is_grad_enabled()
        if backward:
            self.n_backward += 1
            n = self.n_backward
        else:
            self.n_forward += 1
            n = self.n_forward
        if n > self.max_evals:
            phase = "adjoint (backward)" if backward else "forward"
            raise SolverError(f"the {phase} solve evaluated the vector field more than {self.max_evals} times without "
                              f"finishing; the dynamics may be stiff or blowing up. Loosen rtol/atol, raise max_steps, "
                              f"or regularise the model")
        counters = self.dynamics._nfe_counters
        if counters:
            for c in counters:
                if backward:
                    c.backward += 1
                else:
                    c.forward += 1
            if not self.adjoint and out.requires_grad:
                out.register_hook(functools.partial(_count_backward, counters))
        return out


def _count_backward(counters: tuple, grad: Tensor) -> None:
    for c in counters:
        c.backward += 1


def _run(field: _Field, z0: Tensor, s: Tensor, cfg: Solver, first_step: Optional[float] = None,
         in_gaps: bool = False) -> Tensor:
    kw = _odeint_kwargs(cfg, first_step, in_gaps=in_gaps)
    try:
        if cfg.adjoint:
            params = [p for p in field.dynamics.parameters() if p.requires_grad]
            params += [x for x in (field.t0, field.dt) if x is not None and x.requires_grad]
            return torchdiffeq.odeint_adjoint(field, z0, s, adjoint_params=tuple(params), **kw)
        return torchdiffeq.odeint(field, z0, s, **kw)
    except AssertionError as e:  # torchdiffeq signals step failures with assertions
        msg = str(e)
        if "max_num_steps" in msg:
            raise SolverError(f"the solve needed more than max_steps={cfg.max_steps} steps ({msg}); loosen rtol/atol "
                              f"or raise max_steps") from e
        if "underflow" in msg:
            raise SolverError(f"the step size underflowed ({msg}): the dynamics are too stiff for {cfg.method!r} at "
                              f"rtol={cfg.rtol}, atol={cfg.atol}") from e
        if "non-finite" in msg:
            raise SolverError("the state became non-finite (NaN or inf) during the solve: the dynamics blew up") from e
        raise


def _check_state(z0: Tensor, name: str = "z0") -> None:
    if not isinstance(z0, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z0).__name__}")
    if not z0.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {z0.dtype}")
    if z0.dim() < 2:
        raise ValueError(f"{name} must be batch-first with at least 2 dims (batch, channels, ...), got shape "
                         f"{tuple(z0.shape)}")


def _check_output_shape(dynamics: Dynamics, t: Tensor, z0: Tensor) -> None:
    """Evaluate once before solving and explain a shape mismatch in plain words."""
    with torch.no_grad():
        try:
            out = dynamics(t, z0)
        except RuntimeError as e:
            raise ValueError(f"evaluating the dynamics on a state of shape {tuple(z0.shape)} failed: {e}") from e
    if out.shape != z0.shape:
        raise ValueError(f"the dynamics returned shape {tuple(out.shape)}, whilst the state has shape "
                         f"{tuple(z0.shape)}; check the network's input/output sizes")


def odesolve(dynamics: Dynamics, z0: Tensor, t: Tensor, *, method: str = "dopri5", rtol: float = 1e-7,
             atol: float = 1e-9, adjoint: bool = True, seminorm: bool = True, norm: str = "sample",
             max_steps: int = 10_000, step_size: Optional[float] = None, options: Optional[dict] = None,
             lean: bool = True) -> Tensor:
    """Solve ``dz/dt = dynamics(t, z)`` from ``z0`` over a shared, strictly monotone time grid.

    Args:
        dynamics: an :class:`odernn.Dynamics` (NODE, ANODE, SONODE, HBNODE, GHBNODE or your own subclass).
        z0: initial state, shape (batch, state, ...). Build it with ``dynamics.initial_state(h0, v0)``.
        t: times, shape (T,), T >= 2, strictly increasing or strictly decreasing.
        method, rtol, atol, adjoint, seminorm, norm, max_steps, step_size, options, lean: see :class:`SolverConfig`.

    Returns:
        The states at ``t``, batch-first: shape (batch, T, state, ...).

    Raises:
        TypeError, ValueError: on bad input (message says what was received and what was expected).
        SolverError: when the solve does not finish within ``max_steps``.
    """
    cfg = SolverConfig.make(method=method, rtol=rtol, atol=atol, adjoint=adjoint, seminorm=seminorm, norm=norm,
                            max_steps=max_steps, step_size=step_size, options=options, lean=lean)
    return _odesolve(dynamics, z0, t, cfg)


def _odesolve(dynamics: Dynamics, z0: Tensor, t: Tensor, cfg: SolverConfig) -> Tensor:
    if not isinstance(dynamics, Dynamics):
        raise TypeError(f"dynamics must be an odernn.Dynamics module, got {type(dynamics).__name__}")
    _check_state(z0)
    t = torch.as_tensor(t, device=z0.device)
    if not t.is_floating_point():
        t = t.to(z0.dtype)
    if t.dim() != 1 or t.numel() < 2:
        raise ValueError(f"t must be a 1-D tensor of at least 2 times, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("t contains NaN or inf")
    d = t.diff()
    if not ((d > 0).all() or (d < 0).all()):
        raise ValueError(f"t must be strictly monotone with no repeated times, got {t.tolist()}")
    if not torch.isfinite(z0).all():
        raise ValueError("z0 contains NaN or inf")
    _check_output_shape(dynamics, t[0], z0)
    cfg.check_fixed_step(in_gaps=False)
    field = _Field(dynamics, cfg.adjoint, 20 * cfg.max_steps)
    out = _run(field, z0, t, cfg)  # (T, B, ...)
    return out.movedim(0, 1)


class ODEBlock(nn.Module):
    """A continuous-depth layer: ``z(t1)`` from ``z(t0) = z0`` under a dynamics (the paper's image and point-cloud
    models).

    Args:
        dynamics: an :class:`odernn.Dynamics`.
        t0, t1: integration interval (default [0, 1]).
        method, rtol, atol, adjoint, seminorm, norm, max_steps, step_size, options, lean: see
            :class:`SolverConfig`.

    Shapes:
        ``forward(z0)``: (batch, state, ...) -> (batch, state, ...).
    """

    def __init__(self, dynamics: Dynamics, *, t0: float = 0.0, t1: float = 1.0, method: str = "dopri5",
                 rtol: float = 1e-3, atol: float = 1e-4, adjoint: bool = True, seminorm: bool = True,
                 norm: str = "sample", max_steps: int = 10_000, step_size: Optional[float] = None,
                 options: Optional[dict] = None, lean: bool = True) -> None:
        super().__init__()
        if not isinstance(dynamics, Dynamics):
            raise TypeError(f"dynamics must be an odernn.Dynamics module, got {type(dynamics).__name__}")
        if not t1 != t0:
            raise ValueError(f"t0 and t1 must differ, got t0={t0}, t1={t1}")
        self.dynamics = dynamics
        self.register_buffer("t", torch.tensor([float(t0), float(t1)]), persistent=False)
        self.solver = SolverConfig.make(method=method, rtol=rtol, atol=atol, adjoint=adjoint, seminorm=seminorm,
                                        norm=norm, max_steps=max_steps, step_size=step_size, options=options,
                                        lean=lean)

    def forward(self, z0: Tensor) -> Tensor:
        return _odesolve(self.dynamics, z0, self.t.to(z0.dtype), self.solver)[:, -1]


_S01: dict = {}


def _unit_interval(dtype: torch.dtype, device: torch.device) -> Tensor:
    key = (dtype, device)
    s = _S01.get(key)
    if s is None:
        s = _S01[key] = torch.tensor([0.0, 1.0], dtype=dtype, device=device)
    return s


def solve_gaps(dynamics: Dynamics, z0: Tensor, t0: Tensor, dt: Tensor, cfg: SolverConfig,
               first_step: Optional[float] = None) -> tuple[Tensor, Optional[float]]:
    """Move each sample ``b`` from time ``t0[b]`` to ``t0[b] + dt[b]`` in one batched, time-rescaled solve.

    Inputs are assumed validated by the caller (the hot path of :class:`odernn.ODERNN`).

    Args:
        dynamics: the dynamics.
        z0: (batch, state, ...) states at ``t0``.
        t0: (batch,) start times.
        dt: (batch,) non-negative gaps; 0 leaves the sample unchanged.
        cfg: solver settings.
        first_step: initial step in real time units (e.g. the last accepted step of the previous gap), used by
            adaptive methods instead of the initial-step heuristic; ``None`` for the heuristic.

    Returns:
        ``(z1, last_step)``: (batch, state, ...) states at ``t0 + dt``, and the last accepted step in real time units
        (``None`` for fixed-grid methods), to warm-start the next solve.
    """
    adaptive = cfg.method in ADAPTIVE_METHODS
    field = _Field(dynamics, cfg.adjoint, 20 * cfg.max_steps, t0, dt, adaptive=adaptive, state_dim=z0.dim())
    span = None
    s_first = None
    if adaptive:
        span = float(dt.max())
        if first_step is not None:
            s_first = min(1.0, first_step / span)
    z1 = _run(field, z0, _unit_interval(z0.dtype, z0.device), cfg, s_first, in_gaps=True)[-1]
    last = None if field.last_step is None or span is None else float(field.last_step) * span
    return z1, last
