r"""One solver loop over all gaps of an ODE-RNN batch, and its sequence-level adjoint.

The reference path (:func:`odernn._integrate.solve_gaps`) calls ``torchdiffeq.odeint_adjoint`` once per gap: every
call validates its inputs, builds a solver, flattens the adjoint's augmented state into one tensor on every
evaluation and re-flattens the parameters. Here one loop crosses the whole sequence:

* forward: for each observation ``i``, an explicit Runge-Kutta solve moves every sample through its own gap
  (time rescaling ``t = t_{i-1} + s \Delta t``, ``dz/ds = \Delta t f(t, z)``, ``s \in [0, 1]``) and the RNN cell folds
  ``x_i`` in; adaptive steps are warm-started from the previous gap's last accepted step;
* ``adjoint=True``: :class:`_SequenceAdjoint`, one :class:`torch.autograd.Function` for the sequence. Its backward walks
  the observations in reverse: the cell's vector-Jacobian product, adjoint-state clipping, then the reverse solve of
  the gap's augmented system ``[z, a, g_\theta]`` (``a`` the adjoint state, ``g_\theta`` the parameter gradient) with
  the seminorm (the parameter channels are left out of step-size control and are only summed on accepted steps);
* ``adjoint=False``: the same forward loop recorded by autograd (step sizes are constants for autograd).

The arithmetic is that of the reference path: the same tableau, controller, initial-step rule, dense output and
warm start, so accepted steps, NFE and results agree to round-off (``tests/test_fused.py``).

Host synchronisations: one per adaptive step (the accept/reject decision reads the error ratio, into which the
finiteness of the new state is folded), one per sequence to plan the gaps, and, for fixed-grid methods, one per
sequence to check the result is finite.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import time
import types
import warnings
import weakref
from typing import Callable, List, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from ._clip import clip_adjoint
from ._errors import SolverError
from ._solver import Solver

__all__ = ["FUSED_METHODS", "fused_supported", "Plan", "make_plan", "run_sequence", "compile_log"]


# -- tableaus -------------------------------------------------------------------------------------------------------
class _Tableau(NamedTuple):
    nodes: tuple      # c_2 .. c_s
    rows: tuple       # a_{i,j}, one row per stage after the first
    weights: tuple    # b (for FSAL methods the last row, whose stage is then evaluated at the new state)
    err: Optional[tuple]  # b - b_hat (adaptive methods)
    order: int
    fsal: bool


_DOPRI5 = _Tableau(
    nodes=(1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    rows=((1 / 5,),
          (3 / 40, 9 / 40),
          (44 / 45, -56 / 15, 32 / 9),
          (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
          (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
          (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)),
    weights=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    err=(35 / 384 - 1951 / 21600, 0.0, 500 / 1113 - 22642 / 50085, 125 / 192 - 451 / 720,
         -2187 / 6784 - -12231 / 42400, 11 / 84 - 649 / 6300, -1.0 / 60.0),
    order=5, fsal=True)
# Dormand-Prince's midpoint weights (dense output, halved as the quartic fit uses them)
_DOPRI5_MID = (6025192743 / 30085553152 / 2, 0.0, 51252292925 / 65400821598 / 2, -2691868925 / 45128329728 / 2,
               187940372067 / 1594534317056 / 2, -1776094331 / 19743644256 / 2, 11237099 / 235043384 / 2)

_TABLEAUS = {
    "dopri5": _DOPRI5,
    "euler": _Tableau((), (), (1.0,), None, 1, False),
    "midpoint": _Tableau((0.5,), ((0.5,),), (0.0, 1.0), None, 2, False),
    # torchdiffeq's "rk4" is Kutta's 3/8 rule
    "rk4": _Tableau((1 / 3, 2 / 3, 1.0), ((1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)), (1 / 8, 3 / 8, 3 / 8, 1 / 8),
                    None, 4, False),
}
FUSED_METHODS = frozenset(_TABLEAUS)

_SAFETY, _IFACTOR, _DFACTOR = 0.9, 10.0, 0.2  # torchdiffeq's controller constants
_MAX_NONFINITE = 8  # consecutive non-finite error estimates (each shrinks the step 5x) before giving up
_MAX_NONFINITE_TOTAL = 32  # ... and in all of one solve (a solution creeping into a region where f is NaN)


def fused_supported(cfg: Solver) -> bool:
    """Whether the fused loop implements these settings (else the per-gap reference path runs)."""
    if not cfg.fused or cfg.method not in FUSED_METHODS or cfg.options:
        return False
    if cfg.method == "dopri5" and not cfg.lean:
        return False
    return not (cfg.adjoint and cfg.adaptive and not cfg.seminorm)


def _combine(base: Tensor, ks: Sequence[Tensor], coeffs: tuple, scale: float) -> Tensor:
    """``base + scale * sum_j coeffs[j] ks[j]`` by fused multiply-adds, zero coefficients skipped."""
    out = None
    for c, k in zip(coeffs, ks):
        if c == 0.0:
            continue
        out = torch.add(base, k, alpha=scale * c) if out is None else out.add(k, alpha=scale * c)
    return base if out is None else out


def _combine_list(base: List[Tensor], ks: Sequence[List[Tensor]], coeffs: tuple, scale: float) -> List[Tensor]:
    """:func:`_combine` over lists of tensors (the adjoint's parameter channels), one dispatch per stage."""
    out = None
    for c, k in zip(coeffs, ks):
        if c == 0.0:
            continue
        if out is None:
            out = list(torch._foreach_add(base, k, alpha=scale * c))
        else:
            torch._foreach_add_(out, k, alpha=scale * c)
    return list(base) if out is None else out


# -- the plan of a sequence -----------------------------------------------------------------------------------------
class Plan(NamedTuple):
    """Per-step inputs of a sequence, built once (one host synchronisation).

    ``dt`` (B, T) gaps in the state dtype (0 where a sample does not move), ``t_from`` (B, T) start times (only read
    by time-dependent fields), ``active`` (B, T) bool or None (which samples the cell updates), ``moves[i]`` whether
    any sample moves before observation ``i``, ``spans[i]`` the largest gap there, ``update`` whether the cell runs.
    """

    dt: Tensor
    t_from: Tensor
    active: Optional[Tensor]
    moves: List[bool]
    spans: List[float]
    update: bool


def make_plan(dt: Tensor, t_from: Tensor, active: Optional[Tensor], update: bool) -> Plan:
    span = dt.max(dim=0).values.tolist() if dt.shape[0] else []
    return Plan(dt, t_from, active, [s > 0 for s in span], span, update)


# -- solving one gap ------------------------------------------------------------------------------------------------
Field = Callable[[float, List[Tensor]], List[Tensor]]


class _Solve:
    """An explicit Runge-Kutta solve of a list of tensors over ``[t_start, t_end]``.

    The first ``n_active`` tensors are integrated at every stage and steer the step size (their norm is the max of
    ``norm`` over them); the rest (*passive*: the adjoint's parameter channels) never feed the field, so they are only
    summed on accepted steps and interpolated at the end. ``field(t, active) -> derivatives of all tensors``.
    """

    def __init__(self, tab: _Tableau, cfg: Solver, norm: Callable[[Tensor], Tensor], field: Field, n_active: int,
                 phase: str) -> None:
        self.tab, self.cfg, self.norm, self.field, self.n_active, self.phase = tab, cfg, norm, field, n_active, phase

    stepper: Optional[Callable] = None  # a compiled replacement of _step (Solver(compile=True))

    def _step(self, t: float, dt: float, y: List[Tensor], f: List[Tensor]):
        """One trial step: the stages ``ks``, the new active state and the error ratio (a 0-d tensor, NaN when the
        new state is not finite)."""
        tab, n = self.tab, self.n_active
        ks = [f]
        yi = y[:n]
        for alpha, row in zip(tab.nodes, tab.rows):
            yi = [_combine(y[c], [k[c] for k in ks], row, dt) for c in range(n)]
            ks.append(self.field(t + alpha * dt, yi))
        with torch.no_grad():
            errs = []
            for c in range(n):
                err = _combine(torch.zeros((), dtype=y[c].dtype, device=y[c].device), [k[c] for k in ks], tab.err,
                               dt)
                tol = torch.maximum(y[c].abs(), yi[c].abs()).mul_(self.cfg.rtol).add_(self.cfg.atol)
                errs.append(err / tol)
            ratio_t = self._ratio(errs)
            for c in range(n):  # a non-finite new state makes the ratio NaN
                ratio_t = ratio_t + yi[c].sum() * 0.0
        return ks, yi, ratio_t  # first same as last: the last stage was evaluated at the new state

    def _ratio(self, ts: Sequence[Tensor]) -> Tensor:
        r = self.norm(ts[0])
        for x in ts[1:]:
            r = torch.maximum(r, self.norm(x))
        return r

    def initial_step(self, t0: float, y0: List[Tensor], f0: List[Tensor]) -> float:
        """Hairer, Norsett & Wanner's rule (Sec. II.4), as torchdiffeq applies it; costs one evaluation."""
        n = self.n_active
        rtol, atol = self.cfg.rtol, self.cfg.atol
        scale = [torch.abs(y) * rtol + atol for y in y0[:n]]
        d0 = self._ratio([y / s for y, s in zip(y0[:n], scale)]).abs()
        d1 = self._ratio([f / s for f, s in zip(f0[:n], scale)]).abs()
        if not bool(torch.isfinite(d0 + d1)):
            raise SolverError(f"the {self.phase} solve started from a non-finite (NaN or inf) state or derivative: "
                              f"the dynamics returned NaN/inf or the state had already blown up")
        if d0 < 1e-5 or d1 < 1e-5:
            h0 = torch.tensor(1e-6, dtype=y0[0].dtype, device=y0[0].device)
        else:
            h0 = 0.01 * d0 / d1
        h0 = h0.abs()
        y1 = [y + h0 * f for y, f in zip(y0[:n], f0[:n])]
        f1 = self.field(t0 + float(h0), y1)
        d2 = torch.abs(self._ratio([(b - a) / s for a, b, s in zip(f0[:n], f1[:n], scale)]) / h0)
        if d1 <= 1e-15 and d2 <= 1e-15:
            h1 = torch.clamp_min(h0 * 1e-3, 1e-6)
        else:
            h1 = (0.01 / torch.maximum(d1, d2)) ** (1.0 / float(self.tab.order))
        return float(torch.minimum(100 * h0, h1.abs()))

    def adaptive(self, y0: List[Tensor], t_start: float, t_end: float, first: Optional[float]):
        """Adaptive solve with dense output at ``t_end``. Returns ``(y(t_end), last accepted step)``."""
        tab, n = self.tab, self.n_active
        rtol, atol, max_steps = self.cfg.rtol, self.cfg.atol, self.cfg.max_steps
        f = self.field(t_start, y0[:n])
        dt = self.initial_step(t_start, y0, f) if first is None else first
        t, y = t_start, y0
        last = None
        n_steps = bad = bad_total = 0
        while t_end > t:
            if n_steps >= max_steps:
                raise SolverError(f"the {self.phase} solve needed more than max_steps={max_steps} steps in one gap; "
                                  f"loosen rtol/atol, raise max_steps or regularise the model")
            n_steps += 1
            if not math.isfinite(dt):
                dt = 0.0
            if not t + dt > t:
                raise SolverError(f"the step size underflowed in the {self.phase} solve (dt={dt:.3g}): the dynamics "
                                  f"are too stiff or blowing up at rtol={rtol}, atol={atol}")
            ks, y1, ratio_t = (self.stepper or self._step)(t, dt, y, f)
            ratio = float(ratio_t.detach())  # the one host synchronisation of a step
            if not math.isfinite(ratio):
                bad += 1
                bad_total += 1
                if bad > _MAX_NONFINITE or bad_total > _MAX_NONFINITE_TOTAL:
                    raise SolverError(f"the {self.phase} solve produced a non-finite (NaN or inf) state or error "
                                      f"estimate {bad_total} times ({bad} in a row, the last with a {5 ** bad}x "
                                      f"smaller step): the "
                                      f"dynamics blew up or returned NaN")
                dt *= _DFACTOR
                continue
            bad = 0
            if ratio <= 1:
                passive = y[n:]
                if passive:
                    passive = _combine_list(passive, [k[n:] for k in ks], tab.weights, dt)
                last = (y, y1 + passive, ks, dt, t)
                y, f, t = last[1], ks[-1], t + dt
            if ratio == 0:
                factor = _IFACTOR
            else:
                factor = min(_IFACTOR, max(_SAFETY / ratio ** (1.0 / tab.order), 1.0 if ratio < 1 else _DFACTOR))
            dt = dt * factor
        step = last[3] if last is not None else None
        if t == t_end:
            return y, step
        return _dense(last, t_end, n), step

    def fixed(self, y0: List[Tensor], grid: List[float]) -> List[Tensor]:
        """Fixed-grid solve over ``grid`` (which ends exactly at the end time)."""
        tab, n = self.tab, self.n_active
        y = y0
        for t0, t1 in zip(grid[:-1], grid[1:]):
            dt = t1 - t0
            ks = [self.field(t0, y[:n])]
            for alpha, row in zip(tab.nodes, tab.rows):
                yi = [_combine(y[c], [k[c] for k in ks], row, dt) for c in range(n)]
                ks.append(self.field(t0 + alpha * dt, yi))
            y = [_combine(y[c], [k[c] for k in ks], tab.weights, dt) for c in range(n)] + \
                (_combine_list(y[n:], [k[n:] for k in ks], tab.weights, dt) if len(y) > n else [])
        return y


def _dense(last, target: float, n_active: Optional[int] = None) -> List[Tensor]:
    """Dormand-Prince's quartic dense output on the last accepted step, at ``target``.

    The first ``n_active`` tensors are interpolated in the reference path's order of operations; the rest (the
    adjoint's parameter channels) as one linear combination of ``y0``, ``y1`` and the stages, a few list-wide
    operations instead of about twenty per tensor."""
    y0, y1, ks, dt, t0 = last
    n = len(y0) if n_active is None else n_active
    x = (target - t0) / dt
    out = []
    for c in range(n):
        kc = [k[c] for k in ks]
        y_mid = _combine(y0[c], kc, _DOPRI5_MID, dt)
        f0, f1 = kc[0], kc[-1]
        a = (f1 - f0).mul_(2 * dt).add_(y1[c] + y0[c], alpha=-8.0).add_(y_mid, alpha=16.0)
        b = torch.add(f0 * (5 * dt), f1, alpha=-3 * dt).add_(y0[c], alpha=18.0).add_(y1[c], alpha=14.0) \
            .add_(y_mid, alpha=-32.0)
        cc = torch.add(f1 * dt, f0, alpha=-4 * dt).add_(y0[c], alpha=-11.0).add_(y1[c], alpha=-5.0) \
            .add_(y_mid, alpha=16.0)
        d = f0 * dt
        out.append(y0[c] + x * d + (x * x) * cc + (x * x * x) * b + (x * x * x * x) * a)
    if n < len(y0):
        # e + x d + x^2 c + x^3 b + x^4 a expanded: y_mid = y0 + dt sum_j mid_j k_j enters with weight mu
        x2, x3, x4 = x * x, x * x * x, x * x * x * x
        mu = 16 * x2 - 32 * x3 + 16 * x4
        w0 = 1 - 11 * x2 + 18 * x3 - 8 * x4 + mu
        w1 = -5 * x2 + 14 * x3 - 8 * x4
        coeffs = [mu * m for m in _DOPRI5_MID]
        coeffs[0] += x - 4 * x2 + 5 * x3 - 2 * x4
        coeffs[-1] += x2 - 3 * x3 + 2 * x4
        rest = list(torch._foreach_mul(y0[n:], w0))
        torch._foreach_add_(rest, y1[n:], alpha=w1)
        out += _combine_list(rest, [k[n:] for k in ks], tuple(coeffs), dt)
    return out


_GRIDS: dict = {}


def _grid(step: float, start: float, end: float, dtype: torch.dtype) -> List[float]:
    """torchdiffeq's fixed grid from a step size: ``start + k * step``, the last point moved onto ``end``."""
    key = (step, start, end, dtype)
    g = _GRIDS.get(key)
    if g is None:
        s, e = torch.tensor(start, dtype=dtype), torch.tensor(end, dtype=dtype)
        n = torch.ceil((e - s) / step + 1).item()
        grid = torch.arange(0, n, dtype=dtype) * step + s
        grid[-1] = e
        g = _GRIDS[key] = grid.tolist()
    return g


# -- compiled evaluations (Solver(compile=True)) -------------------------------------------------------------------
def _eval_field(dyn: nn.Module, t: Tensor, z: Tensor, scale: Tensor) -> Tensor:
    return dyn(t, z) * scale


def _aug_field(dyn: nn.Module, t: Tensor, z: Tensor, a: Tensor, scale: Tensor, params: dict):
    def g(z, params):
        return torch.func.functional_call(dyn, params, (t, z)) * scale

    out, pull = torch.func.vjp(g, z, params)
    gz, gp = pull(a)
    return out, gz, gp


def _graph_norm(x: Tensor, rms: bool) -> Tensor:
    if rms:
        return x.pow(2).mean().sqrt()
    return x.reshape(x.shape[0], -1).pow(2).mean(dim=1).sqrt().max()


def _stage_sum(base: Tensor, ks: List[Tensor], row: tuple, dt: Tensor) -> Tensor:
    for c, k in zip(row, ks):
        if c != 0.0:
            base = base + (dt * c) * k
    return base


def _dopri5_step(dyn: nn.Module, t: Tensor, y0: Tensor, f0: Tensor, dt: Tensor, scale: Tensor, rtol: float,
                 atol: float, rms: bool):
    """One Dormand-Prince trial step of ``dz/ds = scale * f(t, z)`` in one graph (compiled as a whole)."""
    ks = [f0]
    yi = y0
    for row in _DOPRI5.rows:
        yi = _stage_sum(y0, ks, row, dt)
        ks.append(dyn(t, yi) * scale)
    err = _stage_sum(torch.zeros_like(y0), ks, _DOPRI5.err, dt)
    tol = torch.maximum(y0.abs(), yi.abs()) * rtol + atol
    return ks[1:], yi, _graph_norm(err / tol, rms) + yi.sum() * 0.0


def _dopri5_adjoint_step(dyn: nn.Module, t: Tensor, z0: Tensor, a0: Tensor, fz0: Tensor, fa0: Tensor, dt: Tensor,
                         scale: Tensor, params: dict, rtol: float, atol: float, rms: bool):
    """One Dormand-Prince trial step of the adjoint system (reversed time) in one graph: stages of ``z`` and ``a``,
    the parameter-gradient stages, the new ``z, a`` and the seminorm error ratio."""
    def g(z, params):
        return torch.func.functional_call(dyn, params, (t, z)) * scale

    kz, ka, kp = [fz0], [fa0], []
    zi, ai = z0, a0
    for row in _DOPRI5.rows:
        zi = _stage_sum(z0, kz, row, dt)
        ai = _stage_sum(a0, ka, row, dt)
        out, pull = torch.func.vjp(g, zi, params)
        gz, gp = pull(ai)
        kz.append(-out)
        ka.append(gz)
        kp.append(gp)
    ez = _stage_sum(torch.zeros_like(z0), kz, _DOPRI5.err, dt)
    ea = _stage_sum(torch.zeros_like(a0), ka, _DOPRI5.err, dt)
    rz = _graph_norm(ez / (torch.maximum(z0.abs(), zi.abs()) * rtol + atol), rms)
    ra = _graph_norm(ea / (torch.maximum(a0.abs(), ai.abs()) * rtol + atol), rms)
    return kz[1:], ka[1:], kp, zi, ai, torch.maximum(rz, ra) + zi.sum() * 0.0 + ai.sum() * 0.0


_BASES = {"field": _eval_field, "aug": _aug_field, "step": _dopri5_step, "adjoint step": _dopri5_adjoint_step}
_KIND_NAMES = {"field": "field", "aug": "adjoint field", "step": "dopri5 step", "adjoint step": "adjoint dopri5 step"}

_COMPILED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_LOG: List[dict] = []
_WARNED: set = set()


def compile_log() -> List[dict]:
    """What ``Solver(compile=True)`` compiled in this process: one entry per first call of a compiled evaluation
    (``kind`` "field" or "adjoint field", the dynamics class, state shape, dtype, device, grad mode) with
    ``seconds``, the wall time of that first call (tracing and compiling included)."""
    return [dict(e) for e in _LOG]


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


@functools.lru_cache(maxsize=None)
def _compiler_available_for(device_type: str) -> bool:
    if device_type == "cpu":
        return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c)
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return False


def _compiler_available(device: torch.device) -> bool:
    return _compiler_available_for(device.type)


def _fresh(fn: Callable, tag: str) -> Callable:
    """A copy of ``fn`` with its own code object: dynamo keeps its compile cache per code object, so each dynamics
    gets its own cache instead of sharing (and exhausting) one."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def _compiled(dyn: nn.Module, kind: str, z: Tensor) -> Optional[Callable]:
    """The compiled evaluation ``kind`` for ``dyn`` (built on first use), or ``None`` to run eagerly."""
    entry = _COMPILED.get(dyn)
    if entry is None:
        entry = _COMPILED[dyn] = {"eager": False, "seen": set()}
    if entry["eager"]:
        return None
    fn = entry.get(kind)
    if fn is not None:
        return fn
    if not _compiler_available(z.device):
        entry["eager"] = True
        _warn_once(f"nocompiler-{z.device.type}",
                   f"Solver(compile=True): no compiler for {z.device.type} was found (a C++ compiler such as g++ on "
                   f"the CPU, triton on CUDA); running the solver loop eagerly")
        return None
    # static shapes: far less per-call overhead than dynamic ones; a new batch size compiles once more
    fn = entry[kind] = torch.compile(_fresh(_BASES[kind], f"{len(_LOG)}_{id(dyn):x}"), dynamic=False)
    return fn


def _call_compiled(dyn: nn.Module, kind: str, z: Tensor, args: tuple, eager: Callable):
    """Call the compiled ``kind`` of ``dyn`` (timing its first call per shape), or ``eager(*args)`` without one."""
    fn = _compiled(dyn, kind, z)
    if fn is None:
        return eager(*args)
    entry = _COMPILED[dyn]
    key = (kind, tuple(z.shape[1:]), z.dtype, z.device.type, torch.is_grad_enabled())
    if key in entry["seen"]:
        return fn(dyn, *args)
    start = time.perf_counter()
    try:
        out = fn(dyn, *args)
    except Exception as e:  # a backend failure: say so once and go on eagerly (eager re-raises genuine errors)
        entry["eager"] = True
        _warn_once(f"fail-{type(dyn).__name__}", f"Solver(compile=True): compiling {type(dyn).__name__} failed "
                                                 f"({type(e).__name__}: {e}); running the solver loop eagerly")
        return eager(*args)
    entry["seen"].add(key)
    _LOG.append(dict(kind=_KIND_NAMES[kind], dynamics=type(dyn).__name__, state_shape=tuple(z.shape),
                     dtype=str(z.dtype), device=str(z.device), grad=torch.is_grad_enabled(),
                     seconds=time.perf_counter() - start))
    return out


# -- the sequence ---------------------------------------------------------------------------------------------------
class Sequence_(NamedTuple):
    """What a run needs besides tensors (kept out of autograd's inputs)."""

    dynamics: nn.Module
    cell: Optional[nn.Module]
    cfg: Solver
    plan: Plan
    clip: Optional[float]
    warm_start: bool
    needs_time: bool
    state_dim: int = 2


class _Gap:
    """The time-rescaled field of one gap, ``g(s, z) = dt_b f(t_b + s dt_b, z)``, with NFE accounting."""

    def __init__(self, seq: Sequence_, i: int, phase: str) -> None:
        self.dyn = seq.dynamics
        plan = seq.plan
        dt = plan.dt[:, i]
        self.scale = dt.reshape((-1,) + (1,) * (seq.state_dim - 1))
        self.dt = dt
        self.t_from = plan.t_from[:, i] if seq.needs_time else None
        self.max_evals = 20 * seq.cfg.max_steps
        self.n = 0
        self.phase = phase
        self.counters = getattr(self.dyn, "_nfe_counters", ())
        self._s0 = None
        self.compile = seq.cfg.compile

    def _eager(self, t: Tensor, z: Tensor, scale: Tensor) -> Tensor:
        return self.dyn(t, z) * scale

    def time(self, s: float) -> Tensor:
        if self.t_from is None:  # the built-in dynamics ignore t unless their net is time-dependent
            if self._s0 is None:
                self._s0 = torch.zeros((), dtype=self.dt.dtype, device=self.dt.device)
            return self._s0
        return (self.t_from + s * self.dt.to(self.t_from.dtype)).to(self.dt.dtype)

    def count(self, backward: bool) -> None:
        self.n += 1
        if self.n > self.max_evals:
            raise SolverError(f"the {self.phase} solve evaluated the vector field more than {self.max_evals} times "
                              f"in one gap without finishing; the dynamics may be stiff or blowing up. Loosen "
                              f"rtol/atol, raise max_steps, or regularise the model")
        for c in self.counters:
            if backward:
                c.backward += 1
            else:
                c.forward += 1

    def __call__(self, s: float, ys: List[Tensor]) -> List[Tensor]:
        self.count(False)
        if self.compile:
            out = _call_compiled(self.dyn, "field", ys[0], (self.time(s), ys[0], self.scale), self._eager)
        else:
            out = self.dyn(self.time(s), ys[0]) * self.scale
        if self.counters and out.requires_grad:
            out.register_hook(_BackwardCount(self.counters))
        return [out]


class _BackwardCount:
    def __init__(self, counters: tuple, n: int = 1) -> None:
        self.counters, self.n = counters, n

    def __call__(self, grad: Tensor) -> None:
        for c in self.counters:
            c.backward += self.n


def _no_compiler(*args):
    return None


def _compiled_stepper(gap: "_Gap", solve: "_Solve", adjoint: bool) -> Callable:
    """A whole Dormand-Prince trial step compiled with the field (Solver(compile=True), time-independent fields)."""
    cfg = solve.cfg
    rms = cfg.norm == "rms"
    stages = len(_DOPRI5.rows)

    def step(t: float, dt: float, y: List[Tensor], f: List[Tensor]):
        z = y[0]
        dt_t = torch.tensor(dt, dtype=z.dtype, device=z.device)
        if adjoint:
            params = dict(zip(gap.names, gap.params))
            out = _call_compiled(gap.dyn, "adjoint step", z, (gap.time(0.0), z, y[1], f[0], f[1], dt_t, gap.scale,
                                                              params, cfg.rtol, cfg.atol, rms), _no_compiler)
        else:
            out = _call_compiled(gap.dyn, "step", z, (gap.time(0.0), z, f[0], dt_t, gap.scale, cfg.rtol, cfg.atol,
                                                      rms), _no_compiler)
        if out is None:
            return solve._step(t, dt, y, f)
        for _ in range(stages):
            gap.count(adjoint)
        if adjoint:
            kz, ka, kp, z1, a1, ratio = out
            ks = [f] + [[kz[j], ka[j], *(kp[j][n] for n in gap.names)] for j in range(stages)]
            return ks, [z1, a1], ratio
        ks1, y1, ratio = out
        if gap.counters and y1.requires_grad:
            y1.register_hook(_BackwardCount(gap.counters, stages))
        return [f] + [[k] for k in ks1], [y1], ratio

    return step


class _AugmentedGap(_Gap):
    """The adjoint system of one gap in reversed time ``tau = -s``: ``[z, a]`` active, parameter gradients passive."""

    def __init__(self, seq: Sequence_, i: int, params: List[Tensor], names: List[str]) -> None:
        super().__init__(seq, i, "adjoint (backward)")
        self.params = params
        self.names = names

    def _eager_aug(self, t: Tensor, z: Tensor, a: Tensor, scale: Tensor, params: dict):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            g = self.dyn(t, z) * scale
            grads = torch.autograd.grad(g, (z, *self.params), a, allow_unused=True)
        return g.detach(), grads[0], dict(zip(self.names, grads[1:]))

    def __call__(self, tau: float, ys: List[Tensor]) -> List[Tensor]:
        self.count(True)
        z, a = ys
        if self.compile:
            params = dict(zip(self.names, self.params))
            g, gz, gp = _call_compiled(self.dyn, "aug", z, (self.time(-tau), z, a, self.scale, params),
                                       self._eager_aug)
            grads = [gz, *(gp[n] for n in self.names)]
            grads = [torch.zeros_like(x) if gx is None else gx for x, gx in zip((z, *self.params), grads)]
            return [torch.neg(g), *grads]
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            g = self.dyn(self.time(-tau), z) * self.scale
            grads = torch.autograd.grad(g, (z, *self.params), a, allow_unused=True)
        grads = [torch.zeros_like(x) if gx is None else gx for x, gx in zip((z, *self.params), grads)]
        return [torch.neg(g.detach()), *grads]


def _solve_forward(seq: Sequence_, z: Tensor, i: int, step: Optional[float], firsts: Optional[list]):
    cfg = seq.cfg
    tab = _TABLEAUS[cfg.method]
    gap = _Gap(seq, i, "forward")
    solve = _Solve(tab, cfg, cfg.norm_function, gap, 1, "forward")
    if cfg.compile and cfg.method == "dopri5" and not seq.needs_time:
        solve.stepper = _compiled_stepper(gap, solve, adjoint=False)
    if tab.err is None:
        (z,) = solve.fixed([z], _grid(cfg.step_fraction, 0.0, 1.0, z.dtype))
        return z, step
    span = seq.plan.spans[i]
    first = None if step is None or not seq.warm_start else min(1.0, step / span)
    if firsts is not None:
        firsts[i] = first
    (z,), last = solve.adaptive([z], 0.0, 1.0, first)
    return z, (step if last is None else last * span)


def _forward_loop(seq: Sequence_, z: Tensor, cell_x: Optional[Tensor], probe: Optional[Tensor],
                  step: Optional[float], differentiable: bool, firsts: Optional[list] = None):
    """Zpre (B, T, S): states arriving at each observation (plus ``probe``); Zpost: after the cell; last step."""
    plan = seq.plan
    T = plan.dt.shape[1]
    active = plan.active
    pre, post = [], []
    for i in range(T):
        if plan.moves[i]:
            z, step = _solve_forward(seq, z, i, step, firsts)
        if probe is not None:
            z = z + probe[:, i]
        pre.append(z)
        if plan.update:
            if differentiable and seq.clip is not None:
                z = clip_adjoint(z, seq.clip)
            zn = seq.cell(cell_x[:, i], z)
            z = zn if active is None else torch.where(active[:, i].unsqueeze(-1), zn, z)
        post.append(z)
    zpre = torch.stack(pre, dim=1)
    zpost = zpre if not plan.update else torch.stack(post, dim=1)
    if not _TABLEAUS[seq.cfg.method].err and not bool(torch.isfinite(zpost).all()):
        raise SolverError(f"the forward solve ({seq.cfg.method!r}) produced a non-finite (NaN or inf) state: the "
                          f"dynamics blew up; use a smaller step_fraction, an adaptive method, or regularise the model")
    return zpre, zpost, step


def _clip_rows(g: Tensor, c: float) -> Tensor:
    norms = g.reshape(g.shape[0], -1).norm(dim=1)
    scale = (c / norms.clamp_min(torch.finfo(g.dtype).tiny)).clamp(max=1.0)
    return g * scale.reshape((-1,) + (1,) * (g.dim() - 1))


class _SequenceAdjoint(torch.autograd.Function):
    """Forward: the fused loop without a graph. Backward: cell VJPs, clipping and reverse adjoint solves."""

    @staticmethod
    def forward(ctx, seq: Sequence_, state: dict, n_dyn: int, z0: Tensor, cell_x: Optional[Tensor],
                probe: Optional[Tensor], *params: Tensor):
        firsts = [None] * seq.plan.dt.shape[1]
        zpre, zpost, step = _forward_loop(seq, z0, cell_x, probe, state["step"], False, firsts)
        state["step"] = step
        ctx.seq, ctx.firsts, ctx.n_dyn = seq, firsts, n_dyn
        ctx.param_names = state["names"]
        ctx.has_x, ctx.has_probe = cell_x is not None, probe is not None
        ctx.save_for_backward(zpre, zpost, cell_x, probe, *params)
        return zpre, zpost

    @staticmethod
    def backward(ctx, g_pre: Optional[Tensor], g_post: Optional[Tensor]):
        seq: Sequence_ = ctx.seq
        plan, cfg = seq.plan, seq.cfg
        zpre, zpost, cell_x, probe, *params = ctx.saved_tensors
        dyn_params, cell_params = params[:ctx.n_dyn], params[ctx.n_dyn:]
        need_x = ctx.has_x and ctx.needs_input_grad[4]
        need_probe = ctx.has_probe and ctx.needs_input_grad[5]
        grads = [torch.zeros_like(p) for p in params]
        gx = torch.zeros_like(cell_x) if need_x else None
        gprobe = torch.zeros_like(probe) if need_probe else None
        tab = _TABLEAUS[cfg.method]
        B, T = plan.dt.shape
        a = torch.zeros_like(zpost[:, -1])
        for i in range(T - 1, -1, -1):
            g = a if g_post is None else a + g_post[:, i]
            if plan.update:
                act = None if plan.active is None else plan.active[:, i].unsqueeze(-1)
                with torch.enable_grad():
                    zp = zpre[:, i].detach().requires_grad_(True)
                    xi = cell_x[:, i].detach().requires_grad_(need_x)
                    zn = seq.cell(xi, zp)
                g_new = g if act is None else torch.where(act, g, torch.zeros((), dtype=g.dtype, device=g.device))
                inputs = (zp, xi, *cell_params) if need_x else (zp, *cell_params)
                vjp = torch.autograd.grad(zn, inputs, g_new, allow_unused=True)
                gz = vjp[0] if vjp[0] is not None else torch.zeros_like(zp)
                if act is not None:
                    gz = gz + torch.where(act, torch.zeros((), dtype=g.dtype, device=g.device), g)
                off = 1
                if need_x:
                    if vjp[1] is not None:
                        gx[:, i] = vjp[1]
                    off = 2
                for j, gp in enumerate(vjp[off:]):
                    if gp is not None:
                        grads[ctx.n_dyn + j] += gp
                g = gz
                if seq.clip is not None:
                    g = _clip_rows(g, seq.clip)
            if g_pre is not None:
                g = g + g_pre[:, i]
            if need_probe:
                gprobe[:, i] = g
            if plan.moves[i]:
                z_end = zpre[:, i] if probe is None else zpre[:, i] - probe[:, i]
                aug = _AugmentedGap(seq, i, list(dyn_params), ctx.param_names)
                solve = _Solve(tab, cfg, cfg.norm_function, aug, 2, "adjoint (backward)")
                if cfg.compile and cfg.method == "dopri5" and not seq.needs_time:
                    solve.stepper = _compiled_stepper(aug, solve, adjoint=True)
                y0 = [z_end, g, *[torch.zeros_like(p) for p in dyn_params]]
                if tab.err is None:
                    ys = solve.fixed(y0, _grid(cfg.step_fraction, -1.0, 0.0, z_end.dtype))
                else:
                    ys, _ = solve.adaptive(y0, -1.0, -0.0, ctx.firsts[i])
                if tab.err is None and not bool(torch.isfinite(ys[1]).all()):
                    raise SolverError(f"the adjoint (backward) solve ({cfg.method!r}) produced a non-finite state: "
                                      f"the dynamics blew up backwards; use a smaller step_fraction or an adaptive "
                                      f"method")
                g = ys[1]
                for j, gp in enumerate(ys[2:]):
                    grads[j] += gp
            a = g
        return (None, None, None, a, gx, gprobe, *grads)


def run_sequence(seq: Sequence_, z0: Tensor, cell_x: Optional[Tensor], probe: Optional[Tensor],
                 step: Optional[float]):
    """Run the sequence. Returns ``(Zpre, Zpost, last accepted step)``; Zpre/Zpost are (B, T, S)."""
    if not seq.cfg.adjoint or not torch.is_grad_enabled():
        return _forward_loop(seq, z0, cell_x, probe, step, True)
    seen = set()
    named = [(n, p) for n, p in seq.dynamics.named_parameters() if p.requires_grad]
    dyn_params = [p for _, p in named]
    seen.update(id(p) for p in dyn_params)
    cell_params = [] if seq.cell is None or not seq.plan.update else \
        [p for p in seq.cell.parameters() if p.requires_grad and not (id(p) in seen or seen.add(id(p)))]
    state = {"step": step, "names": [n for n, _ in named]}
    zpre, zpost = _SequenceAdjoint.apply(seq, state, len(dyn_params), z0, cell_x, probe, *dyn_params, *cell_params)
    return zpre, zpost, state["step"]
