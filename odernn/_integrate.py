"""How a dynamics is integrated: NFE accounting, relative time, per-sample gaps, bounded solves.

Two entry points:

* :func:`odesolve` / :class:`ODEBlock`: a plain solve of a dynamics over a shared time grid (continuous-depth
  layers, trajectories). The solve runs in time relative to ``t[0]`` (differences taken in the precision of ``t``), so
  epoch-second stamps keep their gaps with a float32 state; a time-dependent dynamics still sees absolute times.
* :func:`solve_gaps` (private, used by :class:`odernn.ODERNN`): one batched solve in which every sample ``b`` moves
  from its own time ``t0[b]`` through its own gap ``dt[b]``. Time is rescaled, ``t = t0 + s * dt`` with
  ``s in [0, 1]`` and ``dz/ds = dt * f(t, z)``, so a single solve serves different gaps; a zero gap leaves that
  sample's state unchanged.

The solves themselves go through :mod:`odernn._torchdiffeq`, the torchdiffeq backend.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ._errors import SolverError
from ._dynamics import BUILTIN_FORWARDS, Dynamics
from ._nfe import BackwardCount
from ._fused import Plan, Sequence_, fused_supported, run_sequence
from ._solver import ADAPTIVE_METHODS, Solver, SolverConfig, resolve_solver
from ._solver import FIXED_METHODS, METHODS  # noqa: F401  (re-exported: odernn.estimators imports them from here)
from ._torchdiffeq import integrate

__all__ = ["SolverConfig", "SolverError", "odesolve", "ODEBlock", "solve_gaps"]



class _Field(nn.Module):
    """The function torchdiffeq integrates: the dynamics in solve time ``s``, with NFE accounting.

    Time: with ``t0`` alone, ``t = t0 + s`` (a plain solve relative to its first time); with ``t0`` and ``dt``,
    ``t = t0 + s * dt`` and the field is scaled by ``dt`` (per-sample gaps). The absolute time is formed (in the dtype
    of ``t0``, then cast to ``time_dtype`` if given) only when the dynamics reads it.

    Counting happens here because here the phase is known: with the adjoint method the forward solve runs with
    gradients disabled and the adjoint solve evaluates the field with gradients enabled; with direct
    backpropagation every evaluation is a forward one and a hook on its output counts its backward pass.
    """

    def __init__(self, dynamics: Dynamics, adjoint: bool, max_evals: int, t0: Optional[Tensor] = None,
                 dt: Optional[Tensor] = None, adaptive: bool = False, state_dim: int = 2,
                 time_dtype: Optional[torch.dtype] = None, state_dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.dynamics = dynamics
        self.adjoint = adjoint
        self.max_evals = max_evals
        self.n_forward = 0
        self.n_backward = 0
        self.t0 = t0
        self.dt = dt
        self.time_dtype = None if t0 is None or time_dtype == t0.dtype else time_dtype
        # The built-in dynamics read t only through a time-dependent net: skip forming the absolute time otherwise.
        self.needs_time = dynamics.time_dependent or type(dynamics).forward not in BUILTIN_FORWARDS
        # dt broadcast over the state's non-batch dimensions, in the state's dtype (gaps may come in float64)
        self.scale = None if dt is None else dt.reshape((-1,) + (1,) * (state_dim - 1)).to(state_dtype or dt.dtype)
        self.last_step: Optional[Union[Tensor, float]] = None
        if adaptive:
            # torchdiffeq calls this after each accepted forward step; fixed-grid solvers would warn about it
            self.callback_accept_step = self._accept

    def _accept(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.last_step = dt

    def absolute_time(self, s: Tensor) -> Tensor:
        """The dynamics' time at solve time ``s``."""
        if self.t0 is None:
            return s
        if self.dt is None:
            t = self.t0 + s.to(self.t0.dtype)
        else:
            t = self.t0 + s.to(self.dt.dtype) * self.dt
        return t if self.time_dtype is None else t.to(self.time_dtype)

    def forward(self, s: Tensor, z: Tensor) -> Tensor:
        t = self.absolute_time(s) if self.needs_time else s
        out = self.dynamics(t, z)
        if self.scale is not None:
            out = out * self.scale
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
                out.register_hook(BackwardCount(counters))
        return out


def _run(field: _Field, z0: Tensor, s: Tensor, cfg: Solver, first_step: Optional[float] = None,
         in_gaps: bool = False) -> Tensor:
    """One solve of ``field`` through the torchdiffeq backend; gradients reach the dynamics' parameters and the
    field's time tensors (``t0``, ``dt``) that require them."""
    params = [p for p in field.dynamics.parameters() if p.requires_grad]
    params += [x for x in (field.t0, field.dt) if x is not None and x.requires_grad]
    return integrate(field, z0, s, cfg, adjoint_params=params, first_step=first_step, in_gaps=in_gaps)


def _check_state(z0: Tensor, name: str = "z0") -> None:
    if not isinstance(z0, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z0).__name__}")
    if not z0.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {z0.dtype}")
    if z0.dim() < 2:
        raise ValueError(f"{name} must be batch-first with at least 2 dims (batch, channels, ...), got shape "
                         f"{tuple(z0.shape)}")
    if z0.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(z0.shape)}): a solve needs at least one sample with at least "
                         f"one state entry; skip the solve for an empty batch")


def _check_times(t, z0: Tensor) -> Tensor:
    """``t`` as a 1-D floating tensor on ``z0``'s device, validated. Integer tensors and Python numbers become
    float64 (exact for the magnitudes of epoch seconds); floating tensors keep their dtype."""
    if isinstance(t, Tensor):
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"t must hold real times, got dtype {t.dtype}")
        t = t.to(z0.device) if t.is_floating_point() else t.to(device=z0.device, dtype=torch.float64)
    else:
        try:
            t = torch.as_tensor(t, dtype=torch.float64, device=z0.device)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"t must be a 1-D tensor or sequence of times, got {type(t).__name__}: {e}") from e
    if t.dim() != 1 or t.numel() < 2:
        raise ValueError(f"t must be a 1-D tensor of at least 2 times, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"t contains NaN or inf: {t.tolist()}")
    d = t.diff()
    if not (bool((d > 0).all()) or bool((d < 0).all())):
        raise ValueError(f"t must be strictly monotone with no repeated times (in its dtype {t.dtype}), got "
                         f"{t.tolist()}")
    return t


def _check_start(field: _Field, z0: Tensor, s0: Tensor) -> None:
    """The boundary checks of a solve's start (after :func:`_check_state`): a finite ``z0``, and one evaluation of the
    dynamics whose output is explained in plain words if it is wrong."""
    if not bool(torch.isfinite(z0).all()):
        raise ValueError("z0 contains NaN or inf")
    _check_dynamics_output(field, z0, s0)


def _check_dynamics_output(field: _Field, z0: Tensor, s0: Tensor) -> None:
    """Evaluate once before solving and explain a wrong output in plain words."""
    t = field.absolute_time(s0) if field.needs_time else s0
    with torch.no_grad():
        try:
            out = field.dynamics(t, z0)
        except RuntimeError as e:
            hint = ""
            if field.needs_time and t.dtype != z0.dtype:
                hint = (f" (a time-dependent dynamics receives t as a 0-d {t.dtype} tensor, the dtype of the given "
                        f"times, while the state is {z0.dtype}: cast t inside the network)")
            raise ValueError(f"evaluating the dynamics on a state of shape {tuple(z0.shape)} failed{hint}: {e}") from e
    _explain_output(out, z0)


def _explain_output(out, z0: Tensor) -> None:
    """Raise a plain-words error unless ``out`` is a tensor of the state's shape and dtype."""
    if not isinstance(out, Tensor):
        what = f"a {type(out).__name__} of length {len(out)}" if isinstance(out, (tuple, list)) else \
            f"a {type(out).__name__}"
        raise TypeError(f"the dynamics returned {what}; expected a single torch.Tensor dz/dt of the state's shape "
                        f"{tuple(z0.shape)} (concatenate the parts of a multi-part state along dim 1)")
    if out.shape != z0.shape:
        raise ValueError(f"the dynamics returned shape {tuple(out.shape)}, whilst the state has shape "
                         f"{tuple(z0.shape)}; check the network's input/output sizes")
    if out.dtype != z0.dtype:
        raise TypeError(f"the dynamics returned dtype {out.dtype}, whilst the state has dtype {z0.dtype}; convert the "
                        f"network (e.g. dynamics.to({z0.dtype})) or the state")


def odesolve(dynamics: Dynamics, z0: Tensor, t: Union[Tensor, Sequence[float]], *, solver: Optional[Solver] = None,
             method: Optional[str] = None, rtol: Optional[float] = None, atol: Optional[float] = None,
             adjoint: Optional[bool] = None, seminorm: Optional[bool] = None, norm: Optional[str] = None,
             max_steps: Optional[int] = None, step_size: Optional[float] = None, options: Optional[dict] = None,
             lean: Optional[bool] = None) -> Tensor:
    """Solve ``dz/dt = dynamics(t, z)`` from ``z0`` over a shared, strictly monotone time grid.

    The solve runs in time relative to ``t[0]``, with the differences taken in the dtype of ``t``: float64 times of
    any magnitude (epoch seconds) keep their gaps with a float32 state. A time-dependent dynamics
    (``time_dependent=True`` or your own ``forward``) receives the absolute time ``t[0] + s`` as a 0-d tensor in the
    dtype of ``t`` (float64 for integer times or Python numbers).

    Args:
        dynamics: an :class:`odernn.Dynamics` (NODE, ANODE, SONODE, HBNODE, GHBNODE or your own subclass).
        z0: initial state, shape (batch, state, ...), batch >= 1. Build it with ``dynamics.initial_state(h0, v0)``.
        t: times, shape (T,), T >= 2, strictly increasing or strictly decreasing. May require gradients.
        solver: an :class:`odernn.Solver` (default ``Solver()``: dopri5, rtol 1e-3, atol 1e-4, adjoint).
        method, rtol, atol, adjoint, seminorm, norm, max_steps, step_size, options, lean: shorthands that override the
            corresponding fields of ``solver``.

    Returns:
        The states at ``t``, batch-first: shape (batch, T, state, ...).

    Raises:
        TypeError, ValueError: on bad input (the message says what was received and what was expected).
        SolverError: when the solve does not finish within ``max_steps``, the step size underflows, or a state
            (forward) or the gradient reaching ``z0`` (backward) becomes NaN or inf, for every method.
    """
    cfg = resolve_solver(solver, dict(method=method, rtol=rtol, atol=atol, adjoint=adjoint, seminorm=seminorm,
                                      norm=norm, max_steps=max_steps, step_size=step_size, options=options, lean=lean),
                         where="odesolve")
    return _odesolve(dynamics, z0, t, cfg)


def _odesolve(dynamics: Dynamics, z0: Tensor, t, cfg: Solver, time_dtype: Optional[torch.dtype] = None) -> Tensor:
    """:func:`odesolve` with resolved settings; ``time_dtype``: the dtype of the time a dynamics receives (default:
    the dtype of ``t``)."""
    if not isinstance(dynamics, Dynamics):
        raise TypeError(f"dynamics must be an odernn.Dynamics module, got {type(dynamics).__name__}")
    _check_state(z0)
    t = _check_times(t, z0)
    cfg.check_fixed_step(in_gaps=False)
    origin = t[0]
    s = t - origin  # relative solve times, in the precision of t
    field = _Field(dynamics, cfg.adjoint, 20 * cfg.max_steps, t0=origin, time_dtype=time_dtype)
    _check_start(field, z0, s[0])
    out = _run(field, z0, s, cfg)  # (T, B, ...)
    return out.movedim(0, 1)


def _check_bound(name: str, value) -> float:
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"ODEBlock: {name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"ODEBlock: {name} must be a finite number, got {value}")
    return value


class ODEBlock(nn.Module):
    """A continuous-depth layer: ``z(t1)`` from ``z(t0) = z0`` under a dynamics (the paper's image and point-cloud
    models).

    Args:
        dynamics: an :class:`odernn.Dynamics`.
        t0, t1: integration interval (default [0, 1]); finite real numbers, ``t1 != t0`` (``t1 < t0`` integrates
            backwards). A time-dependent dynamics receives times in the state's dtype.
        solver: an :class:`odernn.Solver` (default ``Solver()``).
        method, rtol, atol, adjoint, seminorm, norm, max_steps, step_size, options, lean: shorthands that override the
            corresponding fields of ``solver``.

    Raises:
        TypeError, ValueError: at construction, on a bad dynamics, bounds or solver settings.

    Shapes:
        ``forward(z0)``: (batch, state, ...) -> (batch, state, ...).
    """

    def __init__(self, dynamics: Dynamics, *, t0: float = 0.0, t1: float = 1.0, solver: Optional[Solver] = None,
                 method: Optional[str] = None, rtol: Optional[float] = None, atol: Optional[float] = None,
                 adjoint: Optional[bool] = None, seminorm: Optional[bool] = None, norm: Optional[str] = None,
                 max_steps: Optional[int] = None, step_size: Optional[float] = None, options: Optional[dict] = None,
                 lean: Optional[bool] = None) -> None:
        super().__init__()
        if not isinstance(dynamics, Dynamics):
            raise TypeError(f"dynamics must be an odernn.Dynamics module, got {type(dynamics).__name__}")
        t0, t1 = _check_bound("t0", t0), _check_bound("t1", t1)
        if t0 == t1:
            raise ValueError(f"ODEBlock: t0 and t1 must differ, got t0={t0}, t1={t1}")
        self.dynamics = dynamics
        self.t0, self.t1 = t0, t1
        self.solver = resolve_solver(solver, dict(method=method, rtol=rtol, atol=atol, adjoint=adjoint,
                                                  seminorm=seminorm, norm=norm, max_steps=max_steps,
                                                  step_size=step_size, options=options, lean=lean),
                                     where="ODEBlock")
        self.solver.check_fixed_step(in_gaps=False)
        self._times: dict = {}
        self._checked: set = set()

    def extra_repr(self) -> str:
        return f"t0={self.t0}, t1={self.t1}, solver={self.solver}"

    def forward(self, z0: Tensor) -> Tensor:
        device = z0.device if isinstance(z0, Tensor) else torch.device("cpu")
        t = self._times.get(device)
        if t is None:
            t = self._times[device] = torch.tensor([self.t0, self.t1], dtype=torch.float64, device=device)
        dtype = z0.dtype if isinstance(z0, Tensor) else None
        if self.t1 > self.t0 and self.solver.adaptive and fused_supported(self.solver) and isinstance(z0, Tensor):
            return self._fused(z0)
        return _odesolve(self.dynamics, z0, t, self.solver, time_dtype=dtype)[:, -1]

    def _fused(self, z0: Tensor) -> Tensor:
        """The solve as one gap of odernn's fused loop (lean adjoint, optional compiled steps); same steps."""
        _check_state(z0)
        key = (tuple(z0.shape[1:]), z0.dtype, z0.device)
        if key not in self._checked:  # evaluate once per input kind and explain a shape mismatch in plain words
            start = torch.tensor(self.t0, dtype=torch.float64, device=z0.device)
            field = _Field(self.dynamics, self.solver.adjoint, 0, t0=start, time_dtype=z0.dtype)
            _check_start(field, z0, torch.zeros((), dtype=torch.float64, device=z0.device))
            self._checked.add(key)
        B = z0.shape[0]
        dyn = self.dynamics
        dt = torch.full((B, 1), self.t1 - self.t0, dtype=z0.dtype, device=z0.device)
        t_from = torch.full((B, 1), self.t0, dtype=torch.float64, device=z0.device)
        plan = Plan(dt, t_from, None, [True], [self.t1 - self.t0], False, dt.t().contiguous())
        needs_time = dyn.time_dependent or type(dyn).forward not in BUILTIN_FORWARDS
        seq = Sequence_(dyn, None, self.solver, plan, None, False, needs_time, z0.dim())
        zpre, _, _ = run_sequence(seq, z0, None, None, None)
        return zpre[:, 0]

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
        dt: (batch,) non-negative gaps; 0 leaves the sample unchanged. ``t0`` and ``dt`` may be float64 with a
            float32 state: the field is scaled by ``dt`` in the state's dtype, and a time-dependent dynamics receives
            ``t0 + s * dt`` in the dtype of ``dt``.
        cfg: solver settings.
        first_step: initial step in real time units (e.g. the last accepted step of the previous gap), used by
            adaptive methods instead of the initial-step heuristic; ``None`` for the heuristic.

    Returns:
        ``(z1, last_step)``: (batch, state, ...) states at ``t0 + dt``, and the last accepted step in real time units
        (``None`` for fixed-grid methods), to warm-start the next solve.

    Raises:
        SolverError: as :func:`odesolve` (too many steps, an underflowing step, a non-finite state forward or
            backward).
    """
    adaptive = cfg.method in ADAPTIVE_METHODS
    field = _Field(dynamics, cfg.adjoint, 20 * cfg.max_steps, t0, dt, adaptive=adaptive, state_dim=z0.dim(),
                   state_dtype=z0.dtype)
    span = None
    s_first = None
    if adaptive:
        span = float(dt.detach().max())
        if first_step is not None:
            s_first = min(1.0, first_step / span)
    z1 = _run(field, z0, _unit_interval(z0.dtype, z0.device), cfg, s_first, in_gaps=True)[-1]
    last = None if field.last_step is None or span is None else float(field.last_step) * span
    return z1, last
