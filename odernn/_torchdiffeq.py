"""The torchdiffeq backend: the only module of odernn that imports torchdiffeq's internals (``torchdiffeq._impl``).

It holds

* :class:`LeanDopri5`, a Dormand-Prince 5(4) step registered in torchdiffeq's solver table as ``"odernn_dopri5"``, so
  ``torchdiffeq.odeint`` and ``torchdiffeq.odeint_adjoint`` (forward and adjoint solves) both use it;
* :func:`odeint_options`, the torchdiffeq keyword arguments that an :class:`odernn.Solver` stands for;
* :func:`integrate`, one solve through torchdiffeq's public ``odeint`` / ``odeint_adjoint`` that turns every way a solve
  can fail (too many steps, a step size that underflows, a non-finite state forward or backward) into
  :class:`odernn.SolverError`.

The lean step. torchdiffeq's generic Runge-Kutta step keeps times and step sizes as 0-d tensors and forms each stage as
a sum over a strided ``(..., 7)`` stage buffer. On the small states of ODE-RNNs (a batch of a few dozen vectors) that
bookkeeping costs several times more than the vector field itself. :class:`LeanDopri5` keeps time and step size as
Python floats, forms stages with fused ``add(..., alpha=...)`` calls, and fits the dense-output polynomial only for a
step that an output time actually falls in. Accepted steps, rejections, NFE and results are those of torchdiffeq's
``"dopri5"`` (checked to round-off in ``tests/test_lean_dopri5.py``). Differences, all deliberate:

* Step sizes are constants for autograd. torchdiffeq's direct backpropagation also differentiates through its
  initial-step heuristic (a term of the order of the local error that is not part of the ODE's gradient); with the
  adjoint method the two agree to round-off.
* Gradients with respect to the integration times flow as if the step grid were anchored at ``t[0]``: the evaluation
  times move with ``t[0]``, and an output time ``t[i]`` enters through the dense output, whose slope there
  approximates ``f(t[i], y(t[i]))``. The forward values are untouched (the time dependence is attached as an exact
  zero that carries the derivative).
* A non-finite state or error estimate rejects the step and shrinks it by ``dfactor`` (torchdiffeq's step turns the
  NaN step size into zero and fails with an underflow assertion); after eight such rejections in a row, or 32 in one
  solve, it raises :class:`odernn.SolverError`. The finiteness test is folded into the error-ratio reduction, so a
  step costs one host synchronisation, as before.

Options the lean step does not implement (``step_t``, ``jump_t``, events) are delegated to torchdiffeq's own step.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
import torchdiffeq
from torchdiffeq._impl.dopri5 import Dopri5Solver
from torchdiffeq._impl.misc import _select_initial_step
from torchdiffeq._impl.odeint import SOLVERS

from ._errors import SolverError, guard_backward
from ._rk import DOPRI5, DOPRI5_MID, combine
from ._solver import Solver

__all__ = ["LeanDopri5", "LEAN_DOPRI5", "odeint_options", "integrate"]

LEAN_DOPRI5 = "odernn_dopri5"

# Dormand-Prince 5(4): the tableau, error weights and dense-output weights of odernn._rk (one definition).
_A, _B, _C_ERR, _C_MID = DOPRI5.nodes, DOPRI5.rows, DOPRI5.err, DOPRI5_MID


#: Non-finite error estimates (each rejected, the step shrunk by ``dfactor``) before a SolverError: in a row (as the
#: fused ODE-RNN loop, odernn._fused), and in all of one solve (a solution running into a region where the field is
#: NaN would otherwise creep towards it until max_steps).
_MAX_NONFINITE = 8
_MAX_NONFINITE_TOTAL = 32


def _error(ks: list, dt: float) -> Tensor:
    """The embedded error estimate ``dt * sum_j c_err[j] k_j``."""
    out = ks[0] * (dt * _C_ERR[0])
    for c, k in zip(_C_ERR[1:], ks[1:]):
        if c != 0.0:
            out = out.add_(k, alpha=dt * c)
    return out


def _zero_with_grad(x: Tensor) -> Tensor:
    """``x - x.detach()``: exactly zero, with derivative one with respect to ``x``."""
    return x - x.detach()


class LeanDopri5(Dopri5Solver):
    """Dormand-Prince 5(4) with torchdiffeq's step-size controller and dense output, Python-float bookkeeping."""

    _events = False

    def integrate_until_event(self, t0: Tensor, event_fn):  # type: ignore[override]
        self._events = True  # torchdiffeq's event search reads its own step state: delegate the whole solve
        return super().integrate_until_event(t0, event_fn)

    def _before_integrate(self, t: Tensor) -> None:
        if self.step_t is not None or self.jump_t is not None or self._events:
            self._delegate = True
            return super()._before_integrate(t)
        self._delegate = False
        t0 = t[0]
        f0 = self.func(t0, self.y0)
        if self.first_step is None:
            first = _select_initial_step(self.func, t0, self.y0, self.order - 1, self.rtol, self.atol, self.norm,
                                         f0=f0)
        else:
            first = self.first_step
        self._rtol, self._atol = float(self.rtol), float(self.atol)
        self._safety, self._ifactor, self._dfactor = float(self.safety), float(self.ifactor), float(self.dfactor)
        self._min_step, self._max_step = float(self.min_step), float(self.max_step)
        self._max_num_steps = int(self.max_num_steps)
        # Evaluate the wrapped function directly: torchdiffeq's perturbation wrapper only casts t to the state's
        # real dtype (computing |y| to find it) and handles jump_t perturbations, which this path does not use.
        self._f_eval = getattr(self.func, "base_func", self.func)
        self._time_dtype = self.y0.real.dtype if self.y0.is_complex() else self.y0.dtype
        start = float(t0.detach())
        self._dt = float(first.detach()) if isinstance(first, Tensor) else float(first)
        if not math.isfinite(self._dt):
            raise SolverError(f"the initial step size is {self._dt} at t={start:.6g}: the initial state or the vector "
                              f"field near it is non-finite (NaN or inf); check the initial state and the network")
        # Time gradients: the step grid is anchored at t[0]; `_shift` is an exact zero carrying d/dt[0] = 1.
        self._shift: Optional[Tensor] = None
        self._shift_state: Optional[Tensor] = None
        if t.requires_grad and torch.is_grad_enabled():
            self._shift = _zero_with_grad(t0)
            self._shift_state = self._shift.to(self._time_dtype)
        # state: y, f, t0 of the last step, t1 (= current time), proposed dt, and what the dense output needs
        self._y, self._f, self._t0, self._t1 = self.y0, f0, start, start
        self._bad = self._bad_total = 0  # consecutive and all non-finite error estimates
        self._last = None  # (y0, y1, ks, dt, t0) of the last accepted step, for lazy interpolation
        self._interp = None

    def _advance(self, next_t: Tensor) -> Tensor:
        if self._delegate:
            return super()._advance(next_t)
        target = float(next_t.detach())
        n_steps = 0
        while target > self._t1:
            if n_steps >= self._max_num_steps:
                raise SolverError(f"the solve needed more than max_steps={self._max_num_steps} steps between two "
                                  f"output times (t={self._t1:.6g}, target {target:.6g}); loosen rtol/atol or raise "
                                  f"max_steps")
            self._step()
            n_steps += 1
        if target == self._t1:
            y, slope = self._y, self._f
        else:
            y, slope = self._dense(target, self._shift is not None)
        if self._shift is not None:
            # d y(t_i) / d t_i = slope, d y(t_i) / d t[0] = -slope (plus what flows through the evaluation times)
            y = y + (_zero_with_grad(next_t) - self._shift) * slope
        return y

    def _tensor_time(self, value: float) -> Tensor:
        out = torch.tensor(value, dtype=self._time_dtype, device=self._y.device)
        return out if self._shift_state is None else out + self._shift_state

    def _step(self) -> None:
        y0, f0, t0 = self._y, self._f, self._t1
        dt = self._dt
        if not math.isfinite(dt):
            dt = self._min_step
        dt = min(max(dt, self._min_step), self._max_step)
        func = self.func
        f = self._f_eval
        func.callback_step(t0, y0, dt)
        if not t0 + dt > t0:
            raise SolverError(f"the step size underflowed (dt={dt:.3g} at t={t0:.6g}): the dynamics are too stiff "
                              f"or blowing up at rtol={self._rtol}, atol={self._atol}")
        ks = [f0]
        yi = y0
        for alpha, beta in zip(_A, _B):
            yi = combine(y0, ks, beta, dt)
            ks.append(f(self._tensor_time(t0 + alpha * dt), yi))
        y1 = yi  # first same as last: the last stage is the 5th-order solution
        with torch.no_grad():  # step-size control is not differentiated
            err = _error(ks, dt)
            tol = torch.maximum(y0.abs(), y1.abs()).mul_(self._rtol).add_(self._atol)
            # NaN or inf anywhere in the new state, the last stage or the error (including channels that a seminorm
            # leaves out) makes this sum non-finite; times zero it is added to the ratio: one synchronisation.
            probe = torch.add(err, tol).sum().mul_(0.0)
            error_ratio = float(self.norm(err.div_(tol)) + probe)
        if not math.isfinite(error_ratio):
            # Reject and shrink the step: a NaN from too large a trial step goes away; a persistent one is an error.
            self._bad += 1
            self._bad_total += 1
            if self._bad > _MAX_NONFINITE or self._bad_total > _MAX_NONFINITE_TOTAL:
                raise SolverError(f"the state became non-finite (NaN or inf) in the step from solver time {t0:.6g} "
                                  f"with step size {dt:.3g} ({self._bad} times in a row, {self._bad_total} in this "
                                  f"solve; in a backward pass: the adjoint state): the dynamics blew up or the network "
                                  f"returned NaN/inf. Check the network's outputs, regularise the model or shorten the "
                                  f"time span")
            func.callback_reject_step(t0, y0, dt)
            self._dt = max(dt * self._dfactor, self._min_step)
            return
        self._bad = 0
        accept = error_ratio <= 1
        if dt > self._max_step:
            accept = False
        if dt <= self._min_step:
            accept = True
        if accept:
            func.callback_accept_step(t0, y0, dt)
            self._last = (y0, y1, ks, dt, t0)
            self._interp = None
            self._y, self._f, self._t0, self._t1 = y1, ks[-1], t0, t0 + dt
        else:
            func.callback_reject_step(t0, y0, dt)
        # torchdiffeq's _optimal_step_size
        if error_ratio == 0:
            factor = self._ifactor
        else:
            dfactor = 1.0 if error_ratio < 1 else self._dfactor
            factor = min(self._ifactor, max(self._safety / error_ratio ** (1.0 / self.order), dfactor))
        self._dt = min(max(dt * factor, self._min_step), self._max_step)

    def _dense(self, target: float, with_slope: bool) -> tuple[Tensor, Optional[Tensor]]:
        """torchdiffeq's quartic dense output on the last accepted step (fitted on first use) at ``target``, and,
        if asked, its time derivative there."""
        y0, y1, ks, dt, t0 = self._last
        if self._interp is None:
            y_mid = combine(y0, ks, _C_MID, dt)
            f0, f1 = ks[0], ks[-1]
            a = (f1 - f0).mul_(2 * dt).add_(y1 + y0, alpha=-8.0).add_(y_mid, alpha=16.0)
            b = torch.add(f0 * (5 * dt), f1, alpha=-3 * dt).add_(y0, alpha=18.0).add_(y1, alpha=14.0) \
                .add_(y_mid, alpha=-32.0)
            c = torch.add(f1 * dt, f0, alpha=-4 * dt).add_(y0, alpha=-11.0).add_(y1, alpha=-5.0) \
                .add_(y_mid, alpha=16.0)
            d = f0 * dt
            self._interp = (y0, d, c, b, a)
        x = (target - t0) / dt
        e, d, c, b, a = self._interp
        # e + x d + x^2 c + x^3 b + x^4 a, in torchdiffeq's order of summation
        y = e + x * d + (x * x) * c + (x * x * x) * b + (x * x * x * x) * a
        if not with_slope:
            return y, None
        slope = torch.add(d, c, alpha=2 * x).add_(b, alpha=3 * x * x).add_(a, alpha=4 * x * x * x).div_(dt)
        return y, slope


SOLVERS.setdefault(LEAN_DOPRI5, LeanDopri5)


def odeint_options(cfg: Solver, first_step: Optional[float] = None, *, in_gaps: bool = False) -> dict:
    """Keyword arguments for ``torchdiffeq.odeint`` / ``odeint_adjoint`` (fresh dicts: torchdiffeq mutates them).

    Args:
        cfg: the solver settings.
        first_step: (adaptive methods only) replaces torchdiffeq's initial-step heuristic in the forward and the
            adjoint solve.
        in_gaps: a time-rescaled ODE-RNN gap, where a fixed step is ``cfg.step_fraction`` (else ``cfg.step_size``).
    """
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


def _translate(e: AssertionError, cfg: Solver) -> Optional[SolverError]:
    """torchdiffeq signals step failures with assertions; say what they mean."""
    msg = str(e)
    if "max_num_steps" in msg:
        return SolverError(f"the solve needed more than max_steps={cfg.max_steps} steps ({msg}); loosen rtol/atol or "
                           f"raise max_steps")
    if "underflow" in msg:
        return SolverError(f"the step size underflowed ({msg}): the dynamics are too stiff for {cfg.method!r} at "
                           f"rtol={cfg.rtol}, atol={cfg.atol}, or they produced NaN/inf")
    if "non-finite" in msg:
        return SolverError("the state became non-finite (NaN or inf) during the solve: the dynamics blew up or the "
                           "network returned NaN/inf")
    return None


def _check_output(out: Tensor, s: Tensor, cfg: Solver, in_gaps: bool) -> None:
    """One check per solve: fixed-grid (and torchdiffeq's) steps return non-finite states without complaint."""
    if bool(torch.isfinite(out).all()):
        return
    i = int((~torch.isfinite(out.reshape(out.shape[0], -1))).any(dim=1).nonzero()[0])
    step = ""
    if not cfg.adaptive:
        step = f" with step_fraction={cfg.step_fraction}" if in_gaps else f" with step_size={cfg.step_size}"
    raise SolverError(f"the {cfg.method!r} solve{step} returned a non-finite state (NaN or inf) at output {i} "
                      f"({float(s[i] - s[0]):.6g} time units after the start): the dynamics blew up or the network "
                      f"returned NaN/inf. Use a smaller step, an adaptive method, or check the network's outputs")


def _check_adjoint_step(method: str, t0: Tensor, y0, dt: Tensor) -> None:
    parts = y0 if isinstance(y0, (tuple, list)) else (y0,)  # the adjoint state: (t, y, adj_y, *adj_params)
    if not bool(torch.stack([torch.isfinite(p).all() for p in parts]).all()):
        raise SolverError(f"the adjoint (backward) solve of {method!r} reached a non-finite state (NaN or inf) at "
                          f"t={float(t0):.6g}: the adjoint blew up. Check the loss and the network, clip the adjoint "
                          f"(odernn.clip_adjoint) or shorten the time span")
    if not bool(t0 + dt > t0):
        raise SolverError(f"the adjoint (backward) solve of {method!r} could not take a step at t={float(t0):.6g} "
                          f"(step size {float(dt):.3g}): the adjoint dynamics are too stiff or produced NaN/inf")


def integrate(func: nn.Module, z0: Tensor, s: Tensor, cfg: Solver, *, adjoint_params: Sequence[Tensor] = (),
              first_step: Optional[float] = None, in_gaps: bool = False) -> Tensor:
    """Solve ``dz/ds = func(s, z)`` from ``z0`` and return the states at ``s``, shape ``(len(s), *z0.shape)``.

    Args:
        func: the vector field, ``func(s, z) -> dz/ds``.
        z0: (batch, ...) the initial state.
        s: (S,) strictly monotone solve times.
        cfg: the solver settings (``adjoint`` chooses ``odeint_adjoint``).
        adjoint_params: tensors that ``func`` depends on and that need gradients (with ``cfg.adjoint``).
        first_step, in_gaps: see :func:`odeint_options`.

    Raises:
        SolverError: too many steps, an underflowing step size, or a non-finite state in the forward solve or in the
            gradient that backpropagation brings back to ``z0``.
    """
    kw = odeint_options(cfg, first_step, in_gaps=in_gaps)
    watched = [p for p in adjoint_params if p.requires_grad]
    if s.requires_grad:
        watched.append(s)
    if torch.is_grad_enabled() and (z0.requires_grad or watched):
        z0 = guard_backward(z0, cfg.method, watched)
    if cfg.adjoint and cfg.adaptive and kw["method"] != LEAN_DOPRI5:
        # torchdiffeq's own steps assert on a non-finite state; in the adjoint solve that assertion would surface
        # from backward() untranslated, so check at the start of each adjoint step (they synchronise anyway)
        func.callback_step_adjoint = functools.partial(_check_adjoint_step, cfg.method)
    try:
        if cfg.adjoint:
            out = torchdiffeq.odeint_adjoint(func, z0, s, adjoint_params=tuple(adjoint_params), **kw)
        else:
            out = torchdiffeq.odeint(func, z0, s, **kw)
    except AssertionError as e:
        err = _translate(e, cfg)
        if err is None:
            raise
        raise err from e
    if kw["method"] != LEAN_DOPRI5 or "step_t" in kw["options"] or "jump_t" in kw["options"]:
        _check_output(out, s, cfg, in_gaps)  # the lean step checks every step itself
    return out
