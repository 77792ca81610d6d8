"""A lean Dormand-Prince 5(4) step for torchdiffeq: same tableau, controller and results, less Python overhead.

torchdiffeq's generic Runge-Kutta step keeps times and step sizes as 0-d tensors and forms each stage as a sum over a
strided ``(..., 7)`` stage buffer. On the small states of ODE-RNNs (a batch of a few dozen vectors) that bookkeeping
costs several times more than the vector field itself. :class:`LeanDopri5` is a subclass of torchdiffeq's
:class:`~torchdiffeq._impl.rk_common.RKAdaptiveStepsizeODESolver` that keeps time and step size as Python floats,
forms stages with fused ``add(..., alpha=...)`` calls, and fits the dense-output polynomial only for a step that an
output time actually falls in. Accepted steps, rejections, NFE and results are those of torchdiffeq's ``"dopri5"``
(checked to round-off in ``tests/test_lean_dopri5.py``). One deliberate difference: step sizes are constants
for autograd. torchdiffeq's direct backpropagation also differentiates through the step-size heuristics (a term of
the order of the local error that is not part of the ODE's gradient); with the adjoint method the two agree to
round-off. It is registered in torchdiffeq's solver table as
``"odernn_dopri5"``, so ``odeint`` and ``odeint_adjoint`` (forward and adjoint solves) both use it; options it does
not implement (``step_t``, ``jump_t``, events) are delegated to torchdiffeq's own step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchdiffeq._impl.dopri5 import Dopri5Solver
from torchdiffeq._impl.misc import _select_initial_step
from torchdiffeq._impl.odeint import SOLVERS

from ._errors import SolverError

__all__ = ["LeanDopri5", "LEAN_DOPRI5"]

LEAN_DOPRI5 = "odernn_dopri5"

# Dormand-Prince 5(4) tableau (Dormand & Prince 1980), as Python floats.
_A = (1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_B = (
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_C_SOL = _B[-1] + (0.0,)
_C_ERR = (
    35 / 384 - 1951 / 21600,
    0.0,
    500 / 1113 - 22642 / 50085,
    125 / 192 - 451 / 720,
    -2187 / 6784 - -12231 / 42400,
    11 / 84 - 649 / 6300,
    -1.0 / 60.0,
)
_C_MID = (
    6025192743 / 30085553152 / 2,
    0.0,
    51252292925 / 65400821598 / 2,
    -2691868925 / 45128329728 / 2,
    187940372067 / 1594534317056 / 2,
    -1776094331 / 19743644256 / 2,
    11237099 / 235043384 / 2,
)


def _combine(base: Tensor, ks: list, coeffs: tuple, scale: float) -> Tensor:
    """``base + scale * sum_j coeffs[j] * ks[j]`` with fused multiply-adds, skipping zero coefficients."""
    out = None
    for c, k in zip(coeffs, ks):
        if c == 0.0:
            continue
        if out is None:
            out = torch.add(base, k, alpha=scale * c)
        else:
            out = out.add(k, alpha=scale * c)
    return base if out is None else out


class LeanDopri5(Dopri5Solver):
    """Dormand-Prince 5(4) with torchdiffeq's step-size controller and dense output, Python-float bookkeeping."""

    def _before_integrate(self, t: Tensor) -> None:
        if self.step_t is not None or self.jump_t is not None:
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
        # state: y, f, t0 of the last step, t1 (= current time), proposed dt, and what the dense output needs
        self._y, self._f, self._t0, self._t1 = self.y0, f0, float(t0), float(t0)
        self._dt = float(first.detach()) if isinstance(first, Tensor) else float(first)
        self._last = None  # (y0, y1, ks, dt) of the last accepted step, for lazy interpolation
        self._interp = None

    def _advance(self, next_t: Tensor) -> Tensor:
        if self._delegate:
            return super()._advance(next_t)
        target = float(next_t)
        n_steps = 0
        while target > self._t1:
            if n_steps >= self._max_num_steps:
                raise SolverError(f"the solve needed more than max_steps={self._max_num_steps} steps between two "
                                  f"output times (t={self._t1:.6g}, target {target:.6g}); loosen rtol/atol or raise "
                                  f"max_steps")
            self._step()
            n_steps += 1
        if target == self._t1:
            return self._y
        return self._dense(target)

    def _tensor_time(self, value: float) -> Tensor:
        return torch.tensor(value, dtype=self._time_dtype, device=self._y.device)

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
        if not bool(torch.isfinite(y0).all()):
            raise SolverError(f"the state became non-finite (NaN or inf) at t={t0:.6g}: the dynamics blew up")
        ks = [f0]
        yi = y0
        for alpha, beta in zip(_A, _B):
            yi = _combine(y0, ks, beta, dt)
            ks.append(f(self._tensor_time(t0 + alpha * dt), yi))
        y1 = yi  # first same as last: the last stage is the 5th-order solution
        with torch.no_grad():  # step-size control is not differentiated
            err = _error(ks, dt)
            tol = torch.maximum(y0.abs(), y1.abs()).mul_(self._rtol).add_(self._atol)
            error_ratio = float(self.norm(err.div_(tol)))
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

    def _dense(self, target: float) -> Tensor:
        """torchdiffeq's quartic dense output on the last accepted step, fitted on first use."""
        y0, y1, ks, dt, t0 = self._last
        if self._interp is None:
            y_mid = _combine(y0, ks, _C_MID, dt)
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
        return e + x * d + (x * x) * c + (x * x * x) * b + (x * x * x * x) * a


def _error(ks: list, dt: float) -> Tensor:
    """The embedded error estimate ``dt * sum_j c_err[j] k_j``."""
    out = ks[0] * (dt * _C_ERR[0])
    for c, k in zip(_C_ERR[1:], ks[1:]):
        if c != 0.0:
            out = out.add_(k, alpha=dt * c)
    return out


SOLVERS.setdefault(LEAN_DOPRI5, LeanDopri5)
