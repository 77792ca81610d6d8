"""The ODE-RNN: an ODE evolves the state between irregular observations, an RNN cell folds each one in."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn

from ._clip import clip_adjoint
from ._dynamics import Dynamics, check_name, make_dynamics, net_input_size, net_output_size
from ._integrate import solve_gaps
from ._solver import Solver, resolve_solver

__all__ = ["ODERNN", "MLP"]


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
    the cell moves the state, and the next gap is measured from the sample's last active observation.

    Args:
        dynamics: ``"node" | "anode" | "sonode" | "hbnode" | "ghbnode"`` or an :class:`odernn.Dynamics` module
            (whose ``net`` maps the hidden width it was built for).
        input_size: features ``k`` per observation.
        hidden_size: hidden channels ``n``; the state has ``dynamics.state_size(n)`` channels (``2n`` for
            SONODE/HBNODE/GHBNODE, ``n + augment_dim`` for ANODE).
        output_size: outputs per step.
        method, rtol, atol, adjoint, seminorm, norm, max_steps, step_size, options, lean: solver settings, see
            :class:`odernn.SolverConfig`. ``step_size`` of fixed-grid methods is in rescaled time (fraction of a gap).
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
            state (batch, state); default a zero state.
        warm_start: start each gap's adaptive solve (forward and adjoint) with the last accepted step size of the
            previous gap instead of torchdiffeq's initial-step heuristic (which costs an extra evaluation and usually
            starts far too small on short gaps). Accuracy is still controlled by rtol/atol.

    Shapes:
        ``forward(x, t, mask=None, t0=None)``: ``x`` (B, T, k), ``t`` (B, T) (or (T,), shared), ``mask`` None,
        (B, T) or (B, T, k) bool, ``t0`` None or (B,) -> (B, T, output_size).
    """

    def __init__(self, dynamics: Union[str, Dynamics], input_size: int, hidden_size: int, output_size: int, *,
                 solver: Optional[Solver] = None, adjoint_clip: Optional[float] = None,
                 net: Optional[nn.Module] = None, ode_width: Optional[int] = None, augment_dim: Optional[int] = None,
                 dynamics_kwargs: Optional[dict] = None, cell: Optional[nn.Module] = None, feed_mask: bool = True,
                 readout: Optional[nn.Module] = None, initial_state: Optional[nn.Module] = None,
                 warm_start: bool = True, method: Optional[str] = None, rtol: Optional[float] = None,
                 atol: Optional[float] = None, adjoint: Optional[bool] = None, seminorm: Optional[bool] = None,
                 norm: Optional[str] = None, max_steps: Optional[int] = None, step_size: Optional[float] = None,
                 options: Optional[dict] = None, lean: Optional[bool] = None) -> None:
        super().__init__()
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
        self.warm_start = bool(warm_start)

    # -- validation -----------------------------------------------------------------------------------------------
    def _check(self, x: Tensor, t: Tensor, mask: Optional[Tensor], t0: Optional[Tensor]):
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}; convert with x.float()")
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
                raise ValueError(f"times must be strictly increasing per sample (no repeats); sample {b} has "
                                 f"t[{i + 1}]={t[b, i + 1].item()} after t[{i}]={t[b, i].item()}")
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
        if t0 is not None:
            if not isinstance(t0, Tensor) or not t0.is_floating_point():
                raise TypeError("t0 must be a floating-point tensor of shape (batch,)")
            t0 = t0.reshape(-1).expand(B) if t0.numel() == 1 else t0
            if t0.shape != (B,):
                raise ValueError(f"t0 must have shape ({B},), got {tuple(t0.shape)}")
            if not (t0 < t[:, 0]).all():
                raise ValueError("t0 must be strictly before each sample's first observation time")
        return x, t.to(x.dtype), mask, t0

    # -- core loop ------------------------------------------------------------------------------------------------
    def _evolve(self, z: Tensor, t_from: Tensor, dt: Tensor, step: Optional[float]) -> tuple[Tensor, Optional[float]]:
        """Solve one gap per sample; ``step`` warm-starts the step size from the previous gap (real time units)."""
        if not bool((dt > 0).any()):
            return z, step
        z, last = solve_gaps(self.dynamics, z, t_from, dt, self.solver, step if self.warm_start else None)
        return z, (step if last is None else last)

    def _encode(self, x: Tensor, t: Tensor, mask: Optional[Tensor], t0: Optional[Tensor],
                record: Optional[list] = None, step_out: Optional[list] = None) -> tuple[Tensor, Tensor, Tensor]:
        """Run the recurrence. Returns the per-step hidden readout inputs (B, T, H), the final state and each
        sample's last active time. ``step_out``, if given, receives the last accepted step size. ``record``, if given, receives the state ``z_i^-`` at every observation."""
        B, T, _ = x.shape
        if mask is None:
            x_in = x
            active = None
            cell_x = torch.cat([x, torch.ones_like(x)], dim=-1) if self.feed_mask else x
        else:
            x_in = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
            active = mask.any(dim=-1)  # (B, T)
            cell_x = torch.cat([x_in, mask.to(x.dtype)], dim=-1) if self.feed_mask else x_in
        if self.initial_state is not None:
            z = self.initial_state(x_in)
            if z.shape != (B, self.state_size):
                raise ValueError(f"initial_state returned shape {tuple(z.shape)}, expected ({B}, {self.state_size})")
        else:
            z = x.new_zeros(B, self.state_size)
        if t0 is None:
            t_last = t[:, 0]
        else:
            t_last = t0.to(x.dtype)
        clip = self.adjoint_clip
        step = None
        hiddens = []
        for i in range(T):
            ti = t[:, i]
            if active is None:
                z, step = self._evolve(z, t_last, ti - t_last, step)
            else:
                a = active[:, i]
                dt = torch.where(a, ti - t_last, torch.zeros((), dtype=x.dtype, device=x.device))
                z, step = self._evolve(z, t_last, dt, step)
            if record is not None:
                if not z.requires_grad and torch.is_grad_enabled():
                    z = z.detach().requires_grad_()  # e.g. the constant zero initial state: still differentiable
                record.append(z)  # its gradient is what flows into the solve segment ending here (after clipping)
            if clip is not None:
                z = clip_adjoint(z, clip)
            z_new = self.cell(cell_x[:, i], z)
            if active is None:
                z = z_new
                t_last = ti
            else:
                z = torch.where(a.unsqueeze(-1), z_new, z)
                t_last = torch.where(a, ti, t_last)
            hiddens.append(self.dynamics.hidden(z))
        if step_out is not None:
            step_out.append(step)
        return torch.stack(hiddens, dim=1), z, t_last

    def _readout(self, h: Tensor) -> Tensor:
        B, T = h.shape[:2]
        return self.readout(h.reshape(B * T, *h.shape[2:])).reshape(B, T, -1)

    def forward(self, x: Tensor, t: Tensor, mask: Optional[Tensor] = None, t0: Optional[Tensor] = None) -> Tensor:
        """Outputs after each observation.

        Args:
            x: (B, T, input_size) values; NaN allowed where ``mask`` is False.
            t: (B, T) absolute, strictly increasing observation times per sample (or (T,) shared by all).
            mask: None (all observed), (B, T) or (B, T, input_size) bool, True where observed.
            t0: (B,) optional start times before ``t[:, 0]``: the initial state is evolved to the first observation.

        Returns:
            (B, T, output_size).

        Raises:
            TypeError, ValueError: on bad input; :class:`odernn.SolverError` when a solve cannot finish.
        """
        x, t, mask, t0 = self._check(x, t, mask, t0)
        h = self._encode(x, t, mask, t0)[0]
        return self._readout(h)

    def forecast(self, x: Tensor, t: Tensor, t_future: Tensor, mask: Optional[Tensor] = None,
                 t0: Optional[Tensor] = None, *, return_outputs: bool = False, return_priors: bool = False):
        """Condition on the observations, then continue the ODE (no cell updates) to future times.

        Args:
            x, t, mask, t0: as in :meth:`forward`.
            t_future: (B, F) (or (F,) shared) strictly increasing times, each after the sample's last active
                observation.
            return_outputs: also return the in-sample outputs of :meth:`forward` (read after each update).
            return_priors: also return the one-step-ahead predictions: the readout of the state arriving at each
                observation *before* the cell sees it (entry ``i`` predicts observation ``i`` from observations
                ``< i``; entry 0 reads the initial state).

        Returns:
            (B, F, output_size) alone, or a tuple ``(outputs, priors, forecast)`` holding only the parts asked for,
            in that order; ``outputs`` and ``priors`` are (B, T, output_size).
        """
        x, t, mask, t0 = self._check(x, t, mask, t0)
        B = x.shape[0]
        if not isinstance(t_future, Tensor) or not t_future.is_floating_point():
            raise TypeError("t_future must be a floating-point tensor of shape (batch, n_future)")
        if t_future.dim() == 1:
            t_future = t_future.unsqueeze(0).expand(B, -1)
        if t_future.dim() != 2 or t_future.shape[0] != B or t_future.shape[1] == 0:
            raise ValueError(f"t_future must have shape ({B}, n_future >= 1), got {tuple(t_future.shape)}")
        t_future = t_future.to(x.dtype)
        if not torch.isfinite(t_future).all():
            raise ValueError("t_future contains NaN or inf")
        if t_future.shape[1] > 1 and not (t_future.diff(dim=1) > 0).all():
            raise ValueError("t_future must be strictly increasing per sample")
        steps: list = []
        record: Optional[list] = [] if return_priors else None
        h, z, t_last = self._encode(x, t, mask, t0, record=record, step_out=steps)
        step = steps[0]
        if not (t_future[:, 0] > t_last).all():
            raise ValueError("t_future must lie after each sample's last observed time")
        future = []
        for j in range(t_future.shape[1]):
            tj = t_future[:, j]
            z, step = self._evolve(z, t_last, tj - t_last, step)
            t_last = tj
            future.append(self.dynamics.hidden(z))
        fut = self._readout(torch.stack(future, dim=1))
        parts = []
        if return_outputs:
            parts.append(self._readout(h))
        if return_priors:
            parts.append(self._readout(torch.stack([self.dynamics.hidden(zi) for zi in record], dim=1)))
        return tuple(parts) + (fut,) if parts else fut
