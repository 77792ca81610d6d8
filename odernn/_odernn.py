"""The ODE-RNN: an ODE evolves the state between irregular observations, an RNN cell folds each one in."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor, nn

from ._dynamics import (BUILTIN_FORWARDS, Dynamics, check_name, make_dynamics, net_input_size,
                        net_output_size)
from ._fused import Plan, Sequence_, fused_supported, make_plan, run_per_gap, run_sequence
from ._integrate import solve_gaps
from ._solver import Solver, resolve_solver

__all__ = ["ODERNN", "MLP", "Encoding"]


@dataclasses.dataclass(frozen=True, eq=False)
class Encoding:
    """What :meth:`ODERNN.encode` returns: the recurrence run over a batch of irregular sequences.

    Attributes:
        states: (B, T, S) the whole ODE state after each observation's cell update.
        prior_states: (B, T, S) the state *arriving* at each observation, before the cell sees it.
        t_last: (B,) each sample's last active observation time (or its ``t_start`` if it has none), in the dtype of
            the given times; NaN for a sample with no observed row and no ``t_start`` (it cannot be extrapolated).
        step: the last accepted step size in time units (warm start for :meth:`ODERNN.extrapolate`), or ``None``.

    The derived views are computed on first access: ``outputs`` (B, T, output_size), the readout after each update
    (what ``forward`` returns); ``priors`` (B, T, output_size), the one-step-ahead predictions (entry ``i`` predicts
    observation ``i`` from the observations before it); ``hidden`` (B, T, H) the hidden part of ``states``;
    ``state`` (B, S), each sample's final state.
    """

    states: Tensor
    prior_states: Tensor
    t_last: Tensor
    step: Optional[float]
    read: Callable[[Tensor], Tensor] = dataclasses.field(repr=False)
    hidden_of: Callable[[Tensor], Tensor] = dataclasses.field(repr=False)

    @functools.cached_property
    def hidden(self) -> Tensor:
        return self.hidden_of(self.states)

    @functools.cached_property
    def outputs(self) -> Tensor:
        return self.read(self.hidden)

    @functools.cached_property
    def priors(self) -> Tensor:
        return self.read(self.hidden_of(self.prior_states))

    @property
    def state(self) -> Tensor:
        return self.states[:, -1]


class _Inputs(NamedTuple):
    x: Tensor                  # (B, T, k) in the model's dtype
    t: Tensor                  # (B, T) in the dtype the times were given in
    mask: Optional[Tensor]     # (B, T, k) bool or None
    t_start: Optional[Tensor]  # (B,) in the dtype of t, or None


def _first_active(t: Tensor, active: Tensor) -> tuple[Tensor, Tensor]:
    """(B,) each sample's first active time (its first stamp where it has none) and (B,) whether it has one."""
    has = active.any(dim=1)
    first = torch.where(active, t, torch.full_like(t, torch.inf)).min(dim=1).values
    return torch.where(has, first, t[:, 0]), has


def _gaps(t: Tensor, active: Optional[Tensor], t_start: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Plan the gaps of a batch, in the precision of ``t``.

    Each step starts where the sample's last active observation was; without ``t_start`` a sample starts at its
    first *active* observation, so fully masked rows (padding), leading ones included, neither move the state nor
    set a time. A sample with no active row and no ``t_start`` never moves; its ``t_last`` is NaN (it has no time to
    continue from, see :meth:`ODERNN.extrapolate`).

    Args:
        t: (B, T) times; active: (B, T) bool or None (all active); t_start: (B,) or None.

    Returns:
        ``t_prev`` (B, T) where each step's solve starts (finite everywhere), ``dt`` (B, T) the gaps (0 where the
        sample does not move), ``t_last`` (B,) the last active time (or ``t_start``).
    """
    if active is None:
        start = t[:, 0] if t_start is None else t_start
        t_prev = torch.cat([start.unsqueeze(1), t[:, :-1]], dim=1)
        return t_prev, t - t_prev, t[:, -1]
    if t_start is None:
        start, has = _first_active(t, active)
    else:
        start, has = t_start, None
    seen = torch.where(active, t, torch.full_like(t, -torch.inf)).cummax(dim=1).values
    t_prev = torch.maximum(torch.cat([start.unsqueeze(1), seen[:, :-1]], dim=1), start.unsqueeze(1))
    t_last = torch.maximum(seen[:, -1], start)
    if has is not None:
        t_last = torch.where(has, t_last, torch.full_like(t_last, torch.nan))
    dt = torch.where(active, t - t_prev, torch.zeros((), dtype=t.dtype, device=t.device))
    return t_prev, dt, t_last


class MLP(nn.Sequential):
    """A plain multilayer perceptron ``in -> width -> act -> ... -> out``.

    Args:
        in_size, out_size: input and output widths.
        widths: hidden widths (empty: a single linear layer).
        activation: module class put after every hidden layer.
    """

    def __init__(self, in_size: int, out_size: int, widths: tuple[int, ...] = (), *,
                 activation: type[nn.Module] = nn.Tanh) -> None:
        layers: list[nn.Module] = []
        sizes = (in_size, *widths)
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), activation()]
        layers.append(nn.Linear(sizes[-1], out_size))
        super().__init__(*layers)


def check_warm_start(warm_start, *, allow_none: bool = False) -> None:
    """Refuse a ``warm_start`` other than True, False or ``"gap"`` (and ``None`` where ``allow_none``: no change)."""
    if (allow_none and warm_start is None) or isinstance(warm_start, bool) or warm_start == "gap":
        return
    raise ValueError(f"warm_start must be {'None (unchanged), ' if allow_none else ''}True (start from the previous "
                     f"gap's last accepted step), False (the initial-step heuristic) or \"gap\" (a first trial step "
                     f"equal to the whole gap), got {warm_start!r}")


class ODERNN(nn.Module):
    r"""ODE-RNN (Rubanova et al. 2019) with pluggable NODE / ANODE / SONODE / HBNODE / GHBNODE dynamics.

    For every sample, with observations :math:`(t_i, x_i)` and state :math:`z` (the whole ODE state, ``[h, m]`` for
    heavy-ball models):

    .. math::
        z_i^- = \mathrm{ODESolve}(z_{i-1}, t_{i-1} \to t_i), \qquad z_i = \mathrm{cell}(x_i, z_i^-),
        \qquad y_i = \mathrm{readout}(\mathrm{hidden}(z_i)).

    Each sample moves through its *own* gap in one batched solve (time rescaling: ``dz/ds = dt_b f(t, z)``,
    ``s in [0, 1]``), and step-size control uses the worst sample by default, so results do not depend on how a batch
    is composed. A step whose features are all masked (padding, or nothing observed) is skipped: neither the ODE nor
    the cell moves the state, and the next gap is measured from the sample's last active observation. Without
    ``t_start`` a sample starts at its first observed row, so masked rows never set a time: their stamps and values,
    leading, inner or trailing, do not change any result. A sample with no observed row keeps its initial state at
    every step; without ``t_start`` it has no time to continue from, and ``extrapolate``/``forecast`` refuse it.

    Args:
        dynamics: ``"node" | "anode" | "sonode" | "hbnode" | "ghbnode"`` or an :class:`odernn.Dynamics` module
            (whose ``net`` maps the hidden width it was built for).
        input_size: features ``k`` per observation.
        hidden_size: hidden channels ``n``; the state has ``dynamics.state_size(n)`` channels (``2n`` for
            SONODE/HBNODE/GHBNODE, ``n + augment_dim`` for ANODE).
        output_size: outputs per step.
        adjoint_clip: if set to ``c``, during backpropagation the per-sample l2 norm of the adjoint state
            :math:`\partial L / \partial z_i^-` (the gradient with respect to the whole ODE state where a solve
            segment ends, i.e. at every observation, before the cell) is clipped to at most ``c`` (paper Sec. 4). This
            bounds what enters each backward solve segment; it is not a clip of the parameter gradients.
        net: the network ``f`` when ``dynamics`` is a name (default: ``MLP(n*, n_out, (ode_width,))`` with tanh).
        ode_width: hidden width of the default network (default ``2 * hidden_size``).
        augment_dim: zero channels of ANODE (default ``hidden_size // 2``); only with ``dynamics="anode"``.
        dynamics_kwargs: passed to the dynamics' constructor (``omega``, ``chi``, ``sigma``, ...).
        cell: the update ``cell(inp, z) -> z`` (``torch.nn.RNNCell`` convention), ``inp`` of width ``2k`` with
            ``feed_mask`` (values with unobserved ones zeroed, then the mask as 0/1) else ``k``. Default
            ``torch.nn.GRUCell``.
        feed_mask: append the observation mask to the cell's input.
        readout: module mapping ``hidden(z)`` (batch, H) to (batch, output_size); default ``nn.Linear``.
        initial_state: module mapping the values ``x`` (batch, time, k), unobserved entries zeroed, to the initial
            state (batch, state); default a zero state. It sees padded rows as zeros at their positions, so the
            padding-invariance above holds for it only if it ignores where the zeros are.
        warm_start: how each gap's adaptive solve (forward and adjoint) picks its first trial step. ``True``
            (default): the last accepted step size of the previous gap, instead of the initial-step heuristic (which
            costs an extra evaluation and usually starts far too small on short gaps). ``False``: the initial-step
            heuristic on every gap. ``"gap"``: a first trial step equal to the whole gap (as diffrax's and
            torchode's fastest settings do); the controller shrinks it if it is rejected. Accuracy is controlled by
            rtol/atol in all three; the steps (and so NFE and round-off) differ.
        solver: an :class:`odernn.Solver`; ``method``, ``rtol``, ``atol``, ``adjoint``, ``seminorm``, ``norm``,
            ``max_steps``, ``options``, ``lean`` are shorthands for its fields, and ``step_size`` for its
            ``step_fraction`` (a fixed step as a fraction of each gap). By default (``Solver.fused``) one solver loop
            crosses all gaps of a batch, with a sequence-level adjoint; ``fused=False`` or settings the loop does not
            implement (methods other than dopri5, rk4, midpoint, euler; ``lean=False``; extra ``options``;
            ``seminorm=False`` with the adjoint; times that require gradients) run one torchdiffeq solve per gap.

    Shapes:
        ``forward(x, t, mask=None, t_start=None)``: ``x`` (B, T, k), ``t`` (B, T) (or (T,), shared), ``mask``
        None, (B, T) or (B, T, k) bool, ``t_start`` None or (B,) -> (B, T, output_size). ``encode`` returns an
        :class:`Encoding`; ``extrapolate(encoding, t_future)`` and ``forecast(x, t, t_future)`` return
        (B, F, output_size).

    Times may be given in a wider dtype than the model (e.g. float64 epoch seconds with a float32 model): gaps are
    taken in the precision of the times before they are cast, so large absolute times keep their gaps.
    """

    def __init__(self, dynamics: Union[str, Dynamics], input_size: int, hidden_size: int, output_size: int, *,
                 solver: Optional[Solver] = None, adjoint_clip: Optional[float] = None,
                 net: Optional[nn.Module] = None, ode_width: Optional[int] = None, augment_dim: Optional[int] = None,
                 dynamics_kwargs: Optional[dict] = None, cell: Optional[nn.Module] = None, feed_mask: bool = True,
                 readout: Optional[nn.Module] = None, initial_state: Optional[nn.Module] = None,
                 warm_start: Union[bool, str] = True, method: Optional[str] = None, rtol: Optional[float] = None,
                 atol: Optional[float] = None, adjoint: Optional[bool] = None, seminorm: Optional[bool] = None,
                 norm: Optional[str] = None, max_steps: Optional[int] = None, step_size: Optional[float] = None,
                 options: Optional[dict] = None, lean: Optional[bool] = None) -> None:
        super().__init__()
        check_warm_start(warm_start)
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size), ("output_size", output_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if adjoint_clip is not None and not adjoint_clip > 0:
            raise ValueError(f"adjoint_clip must be None or positive, got {adjoint_clip!r}")
        if isinstance(dynamics, Dynamics):
            if net is not None or ode_width is not None or augment_dim is not None or dynamics_kwargs:
                raise ValueError("net, ode_width, augment_dim and dynamics_kwargs only apply when dynamics is a name")
            dyn = dynamics
        else:
            key = check_name(dynamics)
            if augment_dim is not None and key != "anode":
                raise ValueError(f"augment_dim only applies to dynamics='anode', got dynamics={dynamics!r}")
            aug = (hidden_size // 2 if augment_dim is None else augment_dim) if key == "anode" else 0
            if net is None:
                width = 2 * hidden_size if ode_width is None else ode_width
                net = MLP(net_input_size(key, hidden_size, aug), net_output_size(key, hidden_size, aug), (width,))
            elif ode_width is not None:
                raise ValueError("give either net or ode_width, not both")
            dyn = make_dynamics(key, net, augment_dim=aug, **(dynamics_kwargs or {}))
        self.dynamics = dyn
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, output_size
        self.state_size = dyn.state_size(hidden_size)
        self.adjoint_clip = None if adjoint_clip is None else float(adjoint_clip)
        self.feed_mask = bool(feed_mask)
        # step_size: the pre-Solver shorthand for a fixed step as a fraction of each gap
        self.solver = resolve_solver(solver, dict(method=method, rtol=rtol, atol=atol, adjoint=adjoint,
                                                  seminorm=seminorm, norm=norm, max_steps=max_steps,
                                                  step_fraction=step_size, options=options, lean=lean),
                                     where="ODERNN")
        self.solver.check_fixed_step(in_gaps=True)
        cell_in = 2 * input_size if self.feed_mask else input_size
        self.cell = nn.GRUCell(cell_in, self.state_size) if cell is None else cell
        readout_in = dyn.hidden(torch.zeros(1, self.state_size)).shape[1]
        self.readout = nn.Linear(readout_in, output_size) if readout is None else readout
        self.initial_state = initial_state
        self.warm_start: Union[bool, str] = warm_start

    # -- validation -----------------------------------------------------------------------------------------------
    def _model_dtype(self) -> Optional[torch.dtype]:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return None

    def _check(self, x: Tensor, t: Tensor, mask: Optional[Tensor], t_start: Optional[Tensor],
               start_name: str = "t_start") -> _Inputs:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}; convert with x.float()")
        dtype = self._model_dtype()
        if dtype is not None and x.dtype != dtype:
            raise TypeError(f"x has dtype {x.dtype} but the model's parameters are {dtype}; convert the input with "
                            f"x.to({dtype}) or the model with model.to({x.dtype})")
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"x must have shape (batch, time, input_size={self.input_size}), got {tuple(x.shape)}")
        B, T, _ = x.shape
        if B == 0 or T == 0:
            raise ValueError(f"x is empty: shape {tuple(x.shape)}; need at least one sample and one observation")
        if not isinstance(t, Tensor):
            raise TypeError(f"t must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"t must be a floating-point tensor of absolute times, got dtype {t.dtype}")
        if t.dim() == 1:
            t = t.unsqueeze(0).expand(B, -1)
        if t.dim() != 2 or t.shape[1] != T:
            raise ValueError(f"t must have shape (batch={B}, time={T}) (or ({T},) shared), got {tuple(t.shape)}")
        if t.shape[0] != B:
            raise ValueError(f"batch sizes differ: x has {B} samples, t has {t.shape[0]}")
        if not torch.isfinite(t).all():
            raise ValueError("t contains NaN or inf; times must be finite")
        if T > 1:
            bad = t.diff(dim=1) <= 0
            if bad.any():
                b, i = (int(v) for v in bad.nonzero()[0])
                raise ValueError(f"times must be strictly increasing per sample (no repeats, in the precision of "
                                 f"t's dtype {t.dtype}); sample {b} has t[{i + 1}]={t[b, i + 1].item()!r} after "
                                 f"t[{i}]={t[b, i].item()!r}")
        if mask is not None:
            if not isinstance(mask, Tensor):
                raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
            if mask.dtype != torch.bool:
                raise TypeError(f"mask must be a bool tensor (True = observed), got dtype {mask.dtype}")
            if mask.dim() == 2:
                if mask.shape != (B, T):
                    raise ValueError(f"mask must have shape ({B}, {T}) or ({B}, {T}, {self.input_size}), "
                                     f"got {tuple(mask.shape)}")
                mask = mask.unsqueeze(-1).expand(B, T, self.input_size)
            elif mask.shape != x.shape:
                raise ValueError(f"mask must have shape ({B}, {T}) or ({B}, {T}, {self.input_size}), "
                                 f"got {tuple(mask.shape)}")
            finite = torch.isfinite(x) | ~mask
        else:
            finite = torch.isfinite(x)
        if not finite.all():
            b, i, f = (int(v) for v in (~finite).nonzero()[0])
            raise ValueError(f"x contains NaN or inf at an observed entry (sample {b}, step {i}, feature {f}); "
                             f"mark unobserved values with mask=False")
        if t_start is not None:
            if not isinstance(t_start, Tensor) or not t_start.is_floating_point():
                raise TypeError(f"{start_name} must be a floating-point tensor of shape (batch,)")
            t_start = t_start.reshape(-1).expand(B) if t_start.numel() == 1 else t_start
            if t_start.shape != (B,):
                raise ValueError(f"{start_name} must have shape ({B},), got {tuple(t_start.shape)}")
            t_start = t_start.to(t.dtype) if t_start.dtype != t.dtype else t_start
            if not torch.isfinite(t_start).all():
                raise ValueError(f"{start_name} contains NaN or inf; start times must be finite")
            # before the first *observed* row: fully masked rows (padding) set no time, whatever their stamps
            if mask is None:
                first = t[:, 0]
            else:
                first, has = _first_active(t, mask.any(dim=-1))
                first = torch.where(has, first, torch.full_like(first, torch.inf))
            bad = ~(t_start < first)
            if bad.any():
                b = int(bad.nonzero()[0])
                raise ValueError(f"{start_name} must be strictly before each sample's first observation time; "
                                 f"sample {b} has {start_name}={t_start[b].item()!r} and its first observed row at "
                                 f"t={first[b].item()!r}")
        return _Inputs(x, t, mask, t_start)

    @staticmethod
    def _start(t_start: Optional[Tensor], t0: Optional[Tensor]) -> tuple[Optional[Tensor], str]:
        if t0 is not None:
            if t_start is not None:
                raise TypeError("give t_start (or its older name t0), not both")
            return t0, "t0"
        return t_start, "t_start"

    # -- the recurrence -------------------------------------------------------------------------------------------
    def _sequence(self, plan: Plan, update: bool) -> Sequence_:
        dyn = self.dynamics
        needs_time = dyn.time_dependent or type(dyn).forward not in BUILTIN_FORWARDS
        return Sequence_(dyn, self.cell if update else None, self.solver, plan,
                         self.adjoint_clip if update else None, self.warm_start, needs_time)

    def _run(self, plan: Plan, z: Tensor, cell_x: Optional[Tensor], probe: Optional[Tensor],
             step: Optional[float], times_need_grad: bool):
        seq = self._sequence(plan, plan.update)
        if fused_supported(self.solver) and not times_need_grad:
            return run_sequence(seq, z, cell_x, probe, step)
        return self._run_per_gap(seq, z, cell_x, probe, step)

    def _run_per_gap(self, seq: Sequence_, z: Tensor, cell_x: Optional[Tensor], probe: Optional[Tensor],
                     step: Optional[float]):
        """The reference path: the fused loop's recurrence with one torchdiffeq solve per gap."""
        def solve_gap(seq: Sequence_, z: Tensor, i: int, step: Optional[float], firsts) -> tuple:
            if seq.warm_start == "gap":  # the whole gap: solve_gaps rescales it to a first step of 1.0
                first = seq.plan.spans[i]
            else:
                first = step if seq.warm_start else None
            z, last = solve_gaps(self.dynamics, z, seq.plan.t_from[:, i].to(z.dtype), seq.plan.dt[:, i],
                                 self.solver, first)
            return z, (step if last is None else last)

        return run_per_gap(seq, z, cell_x, probe, step, solve_gap)

    def _encoding(self, zpre: Tensor, zpost: Tensor, t_last: Tensor, step: Optional[float]) -> Encoding:
        return Encoding(zpost, zpre, t_last, step, self._read, self._hidden)

    def _hidden(self, z: Tensor) -> Tensor:
        B, T = z.shape[:2]
        h = self.dynamics.hidden(z.reshape(B * T, *z.shape[2:]))
        return h.reshape(B, T, *h.shape[1:])

    def _read(self, h: Tensor) -> Tensor:
        B, T = h.shape[:2]
        return self.readout(h.reshape(B * T, *h.shape[2:])).reshape(B, T, -1)

    def encode(self, x: Tensor, t: Tensor, mask: Optional[Tensor] = None, t_start: Optional[Tensor] = None, *,
               probe: Optional[Tensor] = None, t0: Optional[Tensor] = None) -> Encoding:
        r"""Run the recurrence over the observations.

        Args:
            x: (B, T, input_size) values in the model's dtype; NaN allowed where ``mask`` is False.
            t: (B, T) absolute, strictly increasing observation times per sample (or (T,) shared by all), in any
                floating dtype (gaps are taken in that precision).
            mask: None (all observed), (B, T) or (B, T, input_size) bool, True where observed. A step whose
                features are all masked is skipped (neither the ODE nor the cell moves that sample), whatever its
                stamp and values, leading and trailing steps included.
            t_start: (B,) optional finite start times before each sample's first observed row: the initial state is
                evolved to that observation (``t0`` is the older name of this argument). Without it the first
                observed row's time is the start (stamps of fully masked rows before it are ignored). A sample with
                no observed row keeps its initial state; its ``t_last`` is ``t_start``, or NaN without one.
            probe: optional (B, T, S) tensor added to the state arriving at each observation. Zeros with
                ``requires_grad=True`` leave the result unchanged and make ``probe.grad`` the adjoint
                :math:`\partial L / \partial z_i^-` that backpropagation carries into each gap's backward solve
                (clipping included); see :func:`odernn.diagnostics.adjoint_norms`.

        Returns:
            An :class:`Encoding`.

        Raises:
            TypeError, ValueError: on bad input; :class:`odernn.SolverError` when a solve cannot finish.
        """
        t_start, name = self._start(t_start, t0)
        inp = self._check(x, t, mask, t_start, name)
        x, t, mask = inp.x, inp.t, inp.mask
        B, T, _ = x.shape
        if probe is not None:
            if not isinstance(probe, Tensor) or probe.shape != (B, T, self.state_size) or probe.dtype != x.dtype:
                raise ValueError(f"probe must be a {x.dtype} tensor of shape ({B}, {T}, {self.state_size}), got "
                                 f"{getattr(probe, 'dtype', type(probe).__name__)} "
                                 f"{tuple(getattr(probe, 'shape', ()))}")
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        if mask is None:
            x_in, active = x, None
            cell_x = torch.cat([x, torch.ones_like(x)], dim=-1) if self.feed_mask else x
        else:
            x_in = torch.where(mask, x, zero)
            active = mask.any(dim=-1)  # (B, T)
            cell_x = torch.cat([x_in, mask.to(x.dtype)], dim=-1) if self.feed_mask else x_in
        t_prev, dt, t_last = _gaps(t, active, inp.t_start)
        plan = make_plan(dt.to(x.dtype), t_prev, active, update=True)
        if self.initial_state is not None:
            z = self.initial_state(x_in)
            if z.shape != (B, self.state_size):
                raise ValueError(f"initial_state returned shape {tuple(z.shape)}, expected ({B}, {self.state_size})")
        else:
            z = x.new_zeros(B, self.state_size)
        times_grad = t.requires_grad or (inp.t_start is not None and inp.t_start.requires_grad)
        zpre, zpost, step = self._run(plan, z, cell_x, probe, None, times_grad)
        return self._encoding(zpre, zpost, t_last, step)

    def extrapolate(self, encoding: Encoding, t_future: Tensor) -> Tensor:
        """Continue each sample's ODE (no cell updates) from its encoding to future times.

        Args:
            encoding: what :meth:`encode` returned.
            t_future: (B, F) (or (F,) shared) strictly increasing times, each after the sample's ``t_last``.

        Returns:
            (B, F, output_size): the readout at each future time.
        """
        if not isinstance(encoding, Encoding):
            raise TypeError(f"encoding must be an odernn.Encoding (from model.encode), got {type(encoding).__name__}")
        z, t_last = encoding.state, encoding.t_last
        B = z.shape[0]
        if not isinstance(t_future, Tensor) or not t_future.is_floating_point():
            raise TypeError("t_future must be a floating-point tensor of shape (batch, n_future)")
        if t_future.dim() == 1:
            t_future = t_future.unsqueeze(0).expand(B, -1)
        if t_future.dim() != 2 or t_future.shape[0] != B or t_future.shape[1] == 0:
            raise ValueError(f"t_future must have shape ({B}, n_future >= 1), got {tuple(t_future.shape)}")
        if not torch.isfinite(t_future).all():
            raise ValueError("t_future contains NaN or inf")
        unset = torch.isnan(t_last)
        if unset.any():
            b = int(unset.nonzero()[0])
            raise ValueError(f"sample {b} has no observed row and was encoded without t_start, so it has no time to "
                             f"continue from; pass t_start to encode (or forecast) for it, or drop the sample")
        tdt = torch.promote_types(t_future.dtype, t_last.dtype)
        t_future, t_last = t_future.to(tdt), t_last.to(tdt)
        if t_future.shape[1] > 1 and not (t_future.diff(dim=1) > 0).all():
            raise ValueError("t_future must be strictly increasing per sample")
        if not (t_future[:, 0] > t_last).all():
            raise ValueError("t_future must lie after each sample's last observed time")
        t_prev = torch.cat([t_last.unsqueeze(1), t_future[:, :-1]], dim=1)
        plan = make_plan((t_future - t_prev).to(z.dtype), t_prev, None, update=False)
        zpre, _, _ = self._run(plan, z, None, None, encoding.step, t_future.requires_grad)
        return self._read(self._hidden(zpre))

    def forward(self, x: Tensor, t: Tensor, mask: Optional[Tensor] = None, t_start: Optional[Tensor] = None, *,
                t0: Optional[Tensor] = None) -> Tensor:
        """Outputs after each observation: ``encode(x, t, mask, t_start).outputs``, shape (B, T, output_size).

        Raises:
            TypeError, ValueError: on bad input; :class:`odernn.SolverError` when a solve cannot finish.
        """
        return self.encode(x, t, mask, t_start, t0=t0).outputs

    def forecast(self, x: Tensor, t: Tensor, t_future: Tensor, mask: Optional[Tensor] = None,
                 t_start: Optional[Tensor] = None, *, t0: Optional[Tensor] = None) -> Tensor:
        """Condition on the observations, then continue the ODE (no cell updates) to future times:
        ``extrapolate(encode(x, t, mask, t_start), t_future)``.

        For the in-sample outputs or the one-step-ahead predictions as well, call :meth:`encode` and
        :meth:`extrapolate` yourself (``Encoding.outputs``, ``Encoding.priors``).

        Returns:
            (B, F, output_size).
        """
        return self.extrapolate(self.encode(x, t, mask, t_start, t0=t0), t_future)
