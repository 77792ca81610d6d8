"""Explicit Runge-Kutta solves of one interval: tableaus, the adaptive controller, dense output, fixed grids.

:class:`RKSolve` integrates a list of tensors; the first ``n_active`` are integrated at every stage and steer the step
size, the rest (*passive*: the adjoint's parameter channels) are only summed on accepted steps. The arithmetic (tableau,
controller constants, initial-step rule, dense output, fixed grids) is torchdiffeq's, so the fused loop built on it
(:mod:`odernn._fused`) takes the same steps as the per-gap reference path.
"""

from __future__ import annotations

import math
from typing import Callable, List, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from ._errors import SolverError
from ._solver import Solver

__all__ = ["Tableau", "TABLEAUS", "DOPRI5", "RKSolve", "combine", "combine_list", "dense_output", "fixed_grid"]


class Tableau(NamedTuple):
    nodes: tuple      # c_2 .. c_s
    rows: tuple       # a_{i,j}, one row per stage after the first
    weights: tuple    # b (for FSAL methods the last row, whose stage is then evaluated at the new state)
    err: Optional[tuple]  # b - b_hat (adaptive methods)
    order: int
    fsal: bool


DOPRI5 = Tableau(
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
DOPRI5_MID = (6025192743 / 30085553152 / 2, 0.0, 51252292925 / 65400821598 / 2, -2691868925 / 45128329728 / 2,
               187940372067 / 1594534317056 / 2, -1776094331 / 19743644256 / 2, 11237099 / 235043384 / 2)

TABLEAUS = {
    "dopri5": DOPRI5,
    "euler": Tableau((), (), (1.0,), None, 1, False),
    "midpoint": Tableau((0.5,), ((0.5,),), (0.0, 1.0), None, 2, False),
    # torchdiffeq's "rk4" is Kutta's 3/8 rule
    "rk4": Tableau((1 / 3, 2 / 3, 1.0), ((1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)), (1 / 8, 3 / 8, 3 / 8, 1 / 8),
                    None, 4, False),
}

SAFETY, IFACTOR, DFACTOR = 0.9, 10.0, 0.2  # torchdiffeq's controller constants
MAX_NONFINITE = 8  # consecutive non-finite error estimates (each shrinks the step 5x) before giving up
MAX_NONFINITE_TOTAL = 32  # ... and in all of one solve (a solution creeping into a region where f is NaN)


def combine(base: Tensor, ks: Sequence[Tensor], coeffs: tuple, scale: float) -> Tensor:
    """``base + scale * sum_j coeffs[j] ks[j]`` by fused multiply-adds, zero coefficients skipped."""
    out = None
    for c, k in zip(coeffs, ks):
        if c == 0.0:
            continue
        out = torch.add(base, k, alpha=scale * c) if out is None else out.add(k, alpha=scale * c)
    return base if out is None else out


def combine_list(base: List[Tensor], ks: Sequence[List[Tensor]], coeffs: tuple, scale: float) -> List[Tensor]:
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


# -- solving one interval ---------------------------------------------------------------------------------------------
Field = Callable[[float, List[Tensor]], List[Tensor]]


class RKSolve:
    """An explicit Runge-Kutta solve of a list of tensors over ``[t_start, t_end]``.

    The first ``n_active`` tensors are integrated at every stage and steer the step size (their norm is the max of
    ``norm`` over them); the rest (*passive*: the adjoint's parameter channels) never feed the field, so they are only
    summed on accepted steps and interpolated at the end. ``field(t, active) -> derivatives of all tensors``.
    """

    def __init__(self, tab: Tableau, cfg: Solver, norm: Callable[[Tensor], Tensor], field: Field, n_active: int,
                 phase: str) -> None:
        self.tab, self.cfg, self.norm, self.field, self.n_active, self.phase = tab, cfg, norm, field, n_active, phase

    stepper: Optional[Callable] = None  # a compiled replacement of _step (Solver(compile=True))

    def trial_step(self, t: float, dt: float, y: List[Tensor], f: List[Tensor]):
        """One trial step: the stages ``ks``, the new active state and the error ratio (a 0-d tensor, NaN when the
        new state is not finite)."""
        tab, n = self.tab, self.n_active
        ks = [f]
        yi = y[:n]
        for alpha, row in zip(tab.nodes, tab.rows):
            yi = [combine(y[c], [k[c] for k in ks], row, dt) for c in range(n)]
            ks.append(self.field(t + alpha * dt, yi))
        with torch.no_grad():
            errs = []
            for c in range(n):
                err = combine(torch.zeros((), dtype=y[c].dtype, device=y[c].device), [k[c] for k in ks], tab.err,
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
            ks, y1, ratio_t = (self.stepper or self.trial_step)(t, dt, y, f)
            ratio = float(ratio_t.detach())  # the one host synchronisation of a step
            if not math.isfinite(ratio):
                bad += 1
                bad_total += 1
                if bad > MAX_NONFINITE or bad_total > MAX_NONFINITE_TOTAL:
                    raise SolverError(f"the {self.phase} solve produced a non-finite (NaN or inf) state or error "
                                      f"estimate {bad_total} times ({bad} in a row, the last with a {5 ** bad}x "
                                      f"smaller step): the "
                                      f"dynamics blew up or returned NaN")
                dt *= DFACTOR
                continue
            bad = 0
            if ratio <= 1:
                passive = y[n:]
                if passive:
                    passive = combine_list(passive, [k[n:] for k in ks], tab.weights, dt)
                last = (y, y1 + passive, ks, dt, t)
                y, f, t = last[1], ks[-1], t + dt
            if ratio == 0:
                factor = IFACTOR
            else:
                factor = min(IFACTOR, max(SAFETY / ratio ** (1.0 / tab.order), 1.0 if ratio < 1 else DFACTOR))
            dt = dt * factor
        step = last[3] if last is not None else None
        if t == t_end:
            return y, step
        return dense_output(last, t_end, n), step

    def fixed(self, y0: List[Tensor], grid: List[float]) -> List[Tensor]:
        """Fixed-grid solve over ``grid`` (which ends exactly at the end time)."""
        tab, n = self.tab, self.n_active
        y = y0
        for t0, t1 in zip(grid[:-1], grid[1:]):
            dt = t1 - t0
            ks = [self.field(t0, y[:n])]
            for alpha, row in zip(tab.nodes, tab.rows):
                yi = [combine(y[c], [k[c] for k in ks], row, dt) for c in range(n)]
                ks.append(self.field(t0 + alpha * dt, yi))
            y = [combine(y[c], [k[c] for k in ks], tab.weights, dt) for c in range(n)] + \
                (combine_list(y[n:], [k[n:] for k in ks], tab.weights, dt) if len(y) > n else [])
        return y


def dense_output(last, target: float, n_active: Optional[int] = None) -> List[Tensor]:
    """Dormand-Prince's quartic dense output on the last accepted step, at ``target``.

    The first ``n_active`` tensors are interpolated one by one; the rest (the adjoint's parameter channels) with the
    same operations in the same order, each one list-wide call (``torch._foreach_*``) instead of one per tensor."""
    y0, y1, ks, dt, t0 = last
    n = len(y0) if n_active is None else n_active
    x = (target - t0) / dt
    out = []
    for c in range(n):
        kc = [k[c] for k in ks]
        y_mid = combine(y0[c], kc, DOPRI5_MID, dt)
        f0, f1 = kc[0], kc[-1]
        a = (f1 - f0).mul_(2 * dt).add_(y1[c] + y0[c], alpha=-8.0).add_(y_mid, alpha=16.0)
        b = torch.add(f0 * (5 * dt), f1, alpha=-3 * dt).add_(y0[c], alpha=18.0).add_(y1[c], alpha=14.0) \
            .add_(y_mid, alpha=-32.0)
        cc = torch.add(f1 * dt, f0, alpha=-4 * dt).add_(y0[c], alpha=-11.0).add_(y1[c], alpha=-5.0) \
            .add_(y_mid, alpha=16.0)
        d = f0 * dt
        out.append(y0[c] + x * d + (x * x) * cc + (x * x * x) * b + (x * x * x * x) * a)
    if n < len(y0):
        # the same operations in the same order, one list-wide call each (bitwise equal to the loop above)
        y0p, y1p, kp = y0[n:], y1[n:], [k[n:] for k in ks]
        y_mid = combine_list(y0p, kp, DOPRI5_MID, dt)
        f0, f1 = kp[0], kp[-1]
        a = list(torch._foreach_sub(f1, f0))
        torch._foreach_mul_(a, 2 * dt)
        torch._foreach_add_(a, list(torch._foreach_add(y1p, y0p)), alpha=-8.0)
        torch._foreach_add_(a, y_mid, alpha=16.0)
        b = list(torch._foreach_add(list(torch._foreach_mul(f0, 5 * dt)), f1, alpha=-3 * dt))
        torch._foreach_add_(b, y0p, alpha=18.0)
        torch._foreach_add_(b, y1p, alpha=14.0)
        torch._foreach_add_(b, y_mid, alpha=-32.0)
        cc = list(torch._foreach_add(list(torch._foreach_mul(f1, dt)), f0, alpha=-4 * dt))
        torch._foreach_add_(cc, y0p, alpha=-11.0)
        torch._foreach_add_(cc, y1p, alpha=-5.0)
        torch._foreach_add_(cc, y_mid, alpha=16.0)
        d = torch._foreach_mul(f0, dt)
        rest = list(torch._foreach_add(y0p, list(torch._foreach_mul(d, x))))
        torch._foreach_add_(rest, list(torch._foreach_mul(cc, x * x)))
        torch._foreach_add_(rest, list(torch._foreach_mul(b, x * x * x)))
        torch._foreach_add_(rest, list(torch._foreach_mul(a, x * x * x * x)))
        out += rest
    return out


GRIDS: dict = {}


def fixed_grid(step: float, start: float, end: float, dtype: torch.dtype) -> List[float]:
    """torchdiffeq's fixed grid from a step size: ``start + k * step``, the last point moved onto ``end``."""
    key = (step, start, end, dtype)
    g = GRIDS.get(key)
    if g is None:
        s, e = torch.tensor(start, dtype=dtype), torch.tensor(end, dtype=dtype)
        n = torch.ceil((e - s) / step + 1).item()
        grid = torch.arange(0, n, dtype=dtype) * step + s
        grid[-1] = e
        g = GRIDS[key] = grid.tolist()
    return g
