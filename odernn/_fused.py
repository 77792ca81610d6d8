r"""One solver loop over all gaps of an ODE-RNN batch, and its sequence-level adjoint.

The reference path (:func:`odernn._integrate.solve_gaps`) calls ``torchdiffeq.odeint_adjoint`` once per gap: every
call validates its inputs, builds a solver, flattens the adjoint's augmented state into one tensor on every
evaluation and re-flattens the parameters. Here one loop crosses the whole sequence:

* forward: for each observation ``i``, an explicit Runge-Kutta solve moves every sample through its own gap
  (time rescaling ``t = t_{i-1} + s \Delta t``, ``dz/ds = \Delta t f(t, z)``, ``s \in [0, 1]``) and the RNN cell folds
  ``x_i`` in; adaptive steps are warm-started from the previous gap's last accepted step (or, with
  ``warm_start="gap"``, start from a trial step equal to the whole gap);
* ``adjoint=True``: :class:`_SequenceAdjoint`, one :class:`torch.autograd.Function` for the sequence. Its backward walks
  the observations in reverse: the cell's vector-Jacobian product, adjoint-state clipping, then the reverse solve of
  the gap's augmented system ``[z, a, g_\theta]`` (``a`` the adjoint state, ``g_\theta`` the parameter gradient) with
  the seminorm (the parameter channels are left out of step-size control and are only summed on accepted steps);
* ``adjoint=False``: the same forward loop recorded by autograd (step sizes are constants for autograd).

The arithmetic is that of the reference path: the same tableau, controller, initial-step rule, dense output and
warm start, so accepted steps, NFE and results agree to round-off (``tests/test_fused.py``).

With ``Solver(compile=True)`` (dopri5, time-independent fields), every solve that autograd does not record (the
adjoint's forward, its backward, inference) runs as compiled *gap blocks* (:func:`odernn._compile.compiled_gap`):
trial steps, controller, dense output and the adjoint's parameter sums in one graph; the cell's vector-Jacobian
products in the backward pass are compiled too. The same steps and NFE; a block that meets a non-finite estimate, an
underflowing step or too many steps hands its gap back to the general loop, which then takes exactly the old path.
The reference path (one torchdiffeq solve per gap) is this loop with that solve injected (:func:`run_per_gap`).

Host synchronisations: one per sequence to plan the gaps; per gap, one per compiled gap block, else one per adaptive
step (the accept/reject decision reads the error ratio, into which the finiteness of the new state is folded); and,
for fixed-grid methods, one per sequence to check the result is finite.
"""

from __future__ import annotations

import math
import sys
import warnings
from typing import Callable, List, NamedTuple, Optional, Union

import torch
from torch import Tensor, nn

from ._clip import clip_adjoint, clip_rows
from ._compile import begin_pass, cached_zeros, call_compiled, compiled_gap, compiled_stepper, no_compiler
from ._errors import SolverError, guard_backward
from ._nfe import BackwardCount
from ._rk import TABLEAUS, RKSolve, fixed_grid
from ._solver import Solver

__all__ = ["FUSED_METHODS", "fused_supported", "Plan", "make_plan", "Sequence_", "run_sequence", "run_per_gap",
           "check_time_resolution"]

FUSED_METHODS = frozenset(TABLEAUS)



def fused_supported(cfg: Solver) -> bool:
    """Whether the fused loop implements these settings (else the per-gap reference path runs)."""
    if not cfg.fused or cfg.method not in FUSED_METHODS or cfg.options:
        return False
    if cfg.method == "dopri5" and not cfg.lean:
        return False
    return not (cfg.adjoint and cfg.adaptive and not cfg.seminorm)


# -- the plan of a sequence -----------------------------------------------------------------------------------------
class Plan(NamedTuple):
    """Per-step inputs of a sequence, built once (one host synchronisation).

    ``dt`` (B, T) gaps in the state dtype (0 where a sample does not move), ``t_from`` (B, T) start times (only read
    by time-dependent fields), ``active`` (B, T) bool or None (which samples the cell updates), ``moves[i]`` whether
    any sample moves before observation ``i``, ``spans[i]`` the largest gap there, ``update`` whether the cell runs;
    ``dt_rows`` (T, B) the gaps transposed and contiguous (each gap's column without a copy per gap).
    """

    dt: Tensor
    t_from: Tensor
    active: Optional[Tensor]
    moves: List[bool]
    spans: List[float]
    update: bool
    dt_rows: Tensor


def make_plan(dt: Tensor, t_from: Tensor, active: Optional[Tensor], update: bool) -> Plan:
    span = dt.max(dim=0).values.tolist() if dt.shape[0] else []
    return Plan(dt, t_from, active, [s > 0 for s in span], span, update, dt.t().contiguous())


# -- the sequence ---------------------------------------------------------------------------------------------------
class Sequence_(NamedTuple):
    """What a run needs besides tensors (kept out of autograd's inputs)."""

    dynamics: nn.Module
    cell: Optional[nn.Module]
    cfg: Solver
    plan: Plan
    clip: Optional[float]
    warm_start: Union[bool, str]  # True, False or "gap" (see ODERNN's warm_start)
    needs_time: bool
    state_dim: int = 2


class _Gap:
    """The time-rescaled field of one gap, ``g(s, z) = dt_b f(t_b + s dt_b, z)``, with NFE accounting."""

    def __init__(self, seq: Sequence_, i: int, phase: str) -> None:
        self.dyn = seq.dynamics
        plan = seq.plan
        dt = plan.dt_rows[i]
        self.scale = dt.reshape((-1,) + (1,) * (seq.state_dim - 1)).contiguous()  # one stride for compiled code
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

    def count(self, backward: bool, n: int = 1) -> None:
        """Count ``n`` evaluations of the field (NFE counters; the per-gap budget ``max_evals``)."""
        self.n += n
        if self.n > self.max_evals:
            raise SolverError(f"the {self.phase} solve evaluated the vector field more than {self.max_evals} times "
                              f"in one gap without finishing; the dynamics may be stiff or blowing up. Loosen "
                              f"rtol/atol, raise max_steps, or regularise the model")
        for c in self.counters:
            if backward:
                c.backward += n
            else:
                c.forward += n

    def __call__(self, s: float, ys: List[Tensor]) -> List[Tensor]:
        self.count(False)
        if self.compile:
            out = call_compiled(self.dyn, "field", ys[0], (self.time(s), ys[0], self.scale), self._eager)
        else:
            out = self.dyn(self.time(s), ys[0]) * self.scale
        if self.counters and out.requires_grad:
            out.register_hook(BackwardCount(self.counters))
        return [out]


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
            g, gz, gp = call_compiled(self.dyn, "aug", z, (self.time(-tau), z, a, self.scale, params),
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


def _compiled_steps(seq: Sequence_) -> bool:
    """Whether whole Dormand-Prince steps (and gap blocks) run compiled."""
    return seq.cfg.compile and seq.cfg.method == "dopri5" and not seq.needs_time


def _solve_blocks(gap: _Gap, solve: RKSolve, y0: List[Tensor], s0: float, s1: float, first: Optional[float],
                  adjoint: bool):
    """One gap's adaptive solve as compiled gap blocks (:func:`odernn._compile.compiled_gap`), or ``None`` when the
    general loop must run it. Without a warm start the initial-step rule runs first (eagerly; its two evaluations
    are counted only if the blocks finish the gap, since the general loop would repeat and count them)."""
    extra = 0
    if first is None:
        saved = gap.compile
        gap.compile = False
        gap.count = lambda backward, n=1: None  # an instance attribute shadowing the method: counted on success below
        try:
            first = solve.initial_step(s0, y0, gap(s0, y0[:solve.n_active]))
        except SolverError:  # the general loop repeats the rule, counts its evaluations and raises
            return None
        finally:
            gap.compile = saved
            del gap.count
        extra = 1  # the initial-step rule's trial evaluation (its f0 is the block's first evaluation)
    return compiled_gap(gap, solve, y0, s0, s1, first, adjoint, extra)


def _solve_forward(seq: Sequence_, z: Tensor, i: int, step: Optional[float], firsts: Optional[list]):
    cfg = seq.cfg
    tab = TABLEAUS[cfg.method]
    gap = _Gap(seq, i, "forward")
    solve = RKSolve(tab, cfg, cfg.norm_function, gap, 1, "forward")
    compiled = _compiled_steps(seq)  # dopri5 only: never with the fixed grid below
    if tab.err is None:
        (z,) = solve.fixed([z], fixed_grid(cfg.step_fraction, 0.0, 1.0, z.dtype))
        return z, step
    span = seq.plan.spans[i]
    if seq.warm_start == "gap":  # a first trial step equal to the whole gap (s in [0, 1]); the adjoint reuses it
        first = 1.0
    else:
        first = None if step is None or not seq.warm_start else min(1.0, step / span)
    if firsts is not None:
        firsts[i] = first
    # nothing recorded for autograd (adjoint forward, inference): whole gaps as compiled blocks
    done = _solve_blocks(gap, solve, [z], 0.0, 1.0, first, False) if compiled and not torch.is_grad_enabled() \
        else None
    if done is None:
        if compiled:  # the general loop with compiled steps
            solve.stepper = compiled_stepper(gap, solve, adjoint=False)
        done = solve.adaptive([z], 0.0, 1.0, first)
    (z,), last = done
    return z, (step if last is None else last * span)


def _forward_loop(seq: Sequence_, z: Tensor, cell_x: Optional[Tensor], probe: Optional[Tensor],
                  step: Optional[float], differentiable: bool, firsts: Optional[list] = None,
                  solve_gap: Optional[Callable] = None):
    """Zpre (B, T, S): states arriving at each observation (plus ``probe``); Zpost: after the cell; last step.

    ``solve_gap(seq, z, i, step, firsts) -> (z, step)`` moves the batch through gap ``i`` (default: the fused loop's
    explicit Runge-Kutta solve; the reference path injects one torchdiffeq solve per gap)."""
    plan = seq.plan
    T = plan.dt.shape[1]
    active = plan.active
    solve = _solve_forward if solve_gap is None else solve_gap
    begin_pass()
    pre, post = [], []
    for i in range(T):
        if plan.moves[i]:
            z, step = solve(seq, z, i, step, firsts)
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
    if solve_gap is None and not TABLEAUS[seq.cfg.method].err and not bool(torch.isfinite(zpost).all()):
        raise SolverError(f"the forward solve ({seq.cfg.method!r}) produced a non-finite (NaN or inf) state: the "
                          f"dynamics blew up; use a smaller step_fraction, an adaptive method, or regularise the model")
    return zpre, zpost, step


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
        begin_pass()
        dyn_params, cell_params = params[:ctx.n_dyn], params[ctx.n_dyn:]
        need_x = ctx.has_x and ctx.needs_input_grad[4]
        need_probe = ctx.has_probe and ctx.needs_input_grad[5]
        grads = [torch.zeros_like(p) for p in params]
        gx = torch.zeros_like(cell_x) if need_x else None
        gprobe = torch.zeros_like(probe) if need_probe else None
        tab = TABLEAUS[cfg.method]
        B, T = plan.dt.shape
        a = torch.zeros_like(zpost[:, -1])
        compiled = _compiled_steps(seq)
        # the parameter channels start every gap at zero; the compiled solves only read them: one cached set
        p_zeros = [cached_zeros(p, 1000 + c) for c, p in enumerate(dyn_params)] if compiled else None
        cell_names = None  # compiled cell vector-Jacobian products (Solver(compile=True)): the parameters' names
        if plan.update and cfg.compile and cell_params:
            ids = {id(p): n for n, p in seq.cell.named_parameters()}
            cell_names = [ids.get(id(p)) for p in cell_params]
            if None in cell_names:  # not the module's own parameters: the eager product
                cell_names = None
            else:  # per observation contiguous rows without a copy each, one parameter dict
                x_rows, z_rows = cell_x.transpose(0, 1).contiguous(), zpre.transpose(0, 1).contiguous()
                cell_dict = dict(zip(cell_names, cell_params))
        for i in range(T - 1, -1, -1):
            g = a if g_post is None else a + g_post[:, i]
            if plan.update:
                act = None if plan.active is None else plan.active[:, i].unsqueeze(-1)
                g_new = g if act is None else torch.where(act, g, torch.zeros((), dtype=g.dtype, device=g.device))
                if cell_names is not None:  # compiled: one call, no autograd graph
                    vjp = call_compiled(seq.cell, "cell vjp", g, (x_rows[i], z_rows[i], g_new.contiguous(), cell_dict),
                                        no_compiler)
                    if vjp is not None:
                        gz, gxi, gps = vjp
                        vjp = (gz, gxi, *(gps[n] for n in cell_names)) if need_x else \
                            (gz, *(gps[n] for n in cell_names))
                if cell_names is None or vjp is None:
                    with torch.enable_grad():
                        zp = zpre[:, i].detach().requires_grad_(True)
                        xi = cell_x[:, i].detach().requires_grad_(need_x)
                        zn = seq.cell(xi, zp)
                    inputs = (zp, xi, *cell_params) if need_x else (zp, *cell_params)
                    vjp = torch.autograd.grad(zn, inputs, g_new, allow_unused=True)
                gz = vjp[0] if vjp[0] is not None else torch.zeros_like(g)
                if act is not None:
                    gz = gz + torch.where(act, torch.zeros((), dtype=g.dtype, device=g.device), g)
                off = 1
                if need_x:
                    if vjp[1] is not None:
                        gx[:, i] = vjp[1]
                    off = 2
                pairs = [(grads[ctx.n_dyn + j], gp) for j, gp in enumerate(vjp[off:]) if gp is not None]
                if pairs:  # one dispatch for all the cell's parameter gradients
                    torch._foreach_add_([d for d, _ in pairs], [gp for _, gp in pairs])
                g = gz
                if seq.clip is not None:
                    g = clip_rows(g, seq.clip)
            if g_pre is not None:
                g = g + g_pre[:, i]
            if need_probe:
                gprobe[:, i] = g
            if plan.moves[i]:
                z_end = zpre[:, i] if probe is None else zpre[:, i] - probe[:, i]
                aug = _AugmentedGap(seq, i, list(dyn_params), ctx.param_names)
                solve = RKSolve(tab, cfg, cfg.norm_function, aug, 2, "adjoint (backward)")
                y0 = [z_end, g, *(p_zeros if compiled else [torch.zeros_like(p) for p in dyn_params])]
                if tab.err is None:
                    ys = solve.fixed(y0, fixed_grid(cfg.step_fraction, -1.0, 0.0, z_end.dtype))
                else:
                    done = _solve_blocks(aug, solve, y0, -1.0, -0.0, ctx.firsts[i], True) if compiled else None
                    if done is None:
                        if compiled:  # the general loop with compiled steps
                            solve.stepper = compiled_stepper(aug, solve, adjoint=True)
                        ys, _ = solve.adaptive(y0, -1.0, -0.0, ctx.firsts[i])
                    else:
                        ys, _ = done
                if tab.err is None and not bool(torch.isfinite(ys[1]).all()):
                    raise SolverError(f"the adjoint (backward) solve ({cfg.method!r}) produced a non-finite state: "
                                      f"the dynamics blew up backwards; use a smaller step_fraction or an adaptive "
                                      f"method")
                g = ys[1]
                if len(ys) > 2:
                    torch._foreach_add_(grads[:len(ys) - 2], list(ys[2:]))
            a = g
        if not bool(torch.isfinite(torch.stack([a.sum()] + [x.sum() for x in grads]).sum())):
            raise SolverError(f"the backward pass of the {cfg.method!r} solve produced a non-finite gradient (NaN or "
                              f"inf): the adjoint blew up. Check the loss and the network, clip the adjoint "
                              f"(adjoint_clip=...) or shorten the time span")
        return (None, None, None, a, gx, gprobe, *grads)


#: A time-dependent field is refused times whose spacing in the model's dtype exceeds this fraction of the smallest gap.
TIME_RESOLUTION = 1e-3


def check_time_resolution(seq: Sequence_) -> None:
    """Refuse (``time_dependent=True``) or warn about (a dynamics with its own ``forward``, which may not read ``t``)
    absolute times that the model's dtype cannot resolve.

    A time-dependent field receives ``t_from + s * dt``, formed in the precision of the given times and then cast to
    the model's dtype. The gaps themselves are always kept (they are taken before the cast); only the time the field
    reads is rounded: a float32 model reading epoch seconds (~1.7e9) sees time in steps of 128 s.

    Raises:
        ValueError: when the dynamics is time-dependent and the spacing of the model's dtype at the largest time
            exceeds :data:`TIME_RESOLUTION` times the smallest gap.
    """
    plan = seq.plan
    dtype = plan.dt.dtype
    if not seq.needs_time or torch.finfo(plan.t_from.dtype).eps >= torch.finfo(dtype).eps:
        return
    moving = plan.dt > 0
    if not bool(moving.any()):
        return
    t_max = float((plan.t_from.abs() + plan.dt.to(plan.t_from.dtype)).max())
    gap = float(plan.dt[moving].min())
    spacing = math.ulp(t_max) * torch.finfo(dtype).eps / sys.float_info.epsilon if t_max > 0 else 0.0
    if spacing <= TIME_RESOLUTION * gap:
        return
    message = (f"the dynamics reads absolute time, which it receives in the model's dtype {dtype}: at |t| = "
               f"{t_max:.6g} that dtype resolves only steps of {spacing:.3g}, coarser than {TIME_RESOLUTION:g} x the "
               f"smallest gap ({gap:.3g}), so the field would see wrong times. Subtract an origin from the times "
               f"(e.g. t - t[:, :1], and the same origin from t_start and t_future) or use a float64 model "
               f"(model.double())")
    if seq.dynamics.time_dependent:
        raise ValueError(message)
    warnings.warn(message + " (if your forward ignores t, this does not affect you)", RuntimeWarning, stacklevel=4)


def run_per_gap(seq: Sequence_, z0: Tensor, cell_x: Optional[Tensor], probe: Optional[Tensor],
                step: Optional[float], solve_gap: Callable):
    """The reference path: the fused loop's recurrence with ``solve_gap`` (one torchdiffeq solve per gap) injected.
    Returns what :func:`run_sequence` returns."""
    check_time_resolution(seq)
    return _forward_loop(seq, z0, cell_x, probe, step, True, solve_gap=solve_gap)


def run_sequence(seq: Sequence_, z0: Tensor, cell_x: Optional[Tensor], probe: Optional[Tensor],
                 step: Optional[float]):
    """Run the sequence. Returns ``(Zpre, Zpost, last accepted step)``; Zpre/Zpost are (B, T, S).

    Raises:
        ValueError: a time-dependent field given times its dtype cannot resolve (:func:`check_time_resolution`).
        SolverError: a solve cannot finish.
    """
    check_time_resolution(seq)
    if not torch.is_grad_enabled():
        return _forward_loop(seq, z0, cell_x, probe, step, True)
    if not seq.cfg.adjoint:
        watched = [p for m in (seq.dynamics, seq.cell) if m is not None for p in m.parameters() if p.requires_grad]
        if z0.requires_grad or watched:  # a non-finite backward pass raises SolverError (one check per sequence)
            z0 = guard_backward(z0, seq.cfg.method, watched)
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
