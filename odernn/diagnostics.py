r"""Diagnostics for the paper's gradient claims: adjoint norms over observations (Fig. 3) and the spectrum of the
linearised heavy-ball adjoint (Prop. 4).

* :func:`adjoint_norms` measures, for an :class:`odernn.ODERNN`, the l2 norm of the adjoint
  :math:`\partial L / \partial z_i^-` at every observation ``i`` (the whole ODE state ``[h, m]`` for heavy-ball
  models), exactly as backpropagation carries it, including the model's adjoint clipping.
* :func:`adjoint_spectrum` returns the eigenvalues of the matrix that drives the linearised (G)HBNODE adjoint and
  pairs them so that every pair sums to :math:`-\gamma` (Prop. 4, Appendix D).

Neither function changes the model: parameters, their ``.grad`` and the train/eval mode are left as they were.
"""

from __future__ import annotations

import copy
import itertools
from typing import Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor
import torch.nn.functional as F

from ._clip import clip_adjoint
from ._dynamics import HBNODE, Dynamics
from ._odernn import ODERNN

__all__ = ["adjoint_norms", "adjoint_spectrum", "AdjointSpectrum"]


def _default_loss(outputs: Tensor, y: Tensor) -> Tensor:
    return F.mse_loss(outputs[:, -1], y[:, -1])


def adjoint_norms(model: ODERNN, x: Tensor, t: Tensor, y: Tensor,
                  loss: Optional[Callable[[Tensor, Tensor], Tensor]] = None, *, mask: Optional[Tensor] = None,
                  t0: Optional[Tensor] = None, reduction: str = "mean") -> Tensor:
    r"""The l2 norm of the adjoint state at every observation of an ODE-RNN (the paper's Fig. 3).

    For observation ``i`` the measured state is :math:`z_i^-`: the whole ODE state (``h`` for NODE, ``[h, m]`` for
    HBNODE/GHBNODE, ``[h, v]`` for SONODE, ``[h, aug]`` for ANODE) *arriving* at observation ``i``, i.e. the end of
    the solve over the gap before ``t_i`` and before the RNN cell folds ``x_i`` in. Entry ``i`` is the norm of the
    adjoint that backpropagation feeds into the backward solve of that gap: :math:`\partial L / \partial z_i^-`
    computed from the adjoints actually carried downstream, then clipped to ``model.adjoint_clip`` per sample when
    the model clips (so with ``adjoint_clip=c`` no entry exceeds ``c``). Without clipping it is the plain gradient
    :math:`\partial L / \partial z_i^-`. With ``adjoint=True`` the upstream entries come from the adjoint solves,
    with ``adjoint=False`` from backpropagation through the solver; both agree up to the solver tolerance.

    The model is run in eval mode (restored afterwards); gradients are taken with :func:`torch.autograd.grad`, so
    parameters and their ``.grad`` are untouched. The adjoints are read from a zero ``probe`` added to every arriving
    state (:meth:`odernn.ODERNN.encode`), so every state has one, even outside the parameters' graph (the zero
    initial state, or all states when every parameter is frozen).

    Args:
        model: any :class:`odernn.ODERNN`.
        x: (B, T, input_size) values; NaN allowed where ``mask`` is False.
        t: (B, T) (or (T,)) strictly increasing observation times.
        y: targets; with the default loss (B, T, output_size) (or (B, output_size) for the last step only).
        loss: ``loss(outputs (B, T, output_size), y) -> scalar``. Default: the mean squared error of the last
            step's output against ``y[:, -1]`` (the paper's setting).
        mask: None, (B, T) or (B, T, input_size) bool, True where observed (as in :meth:`odernn.ODERNN.forward`).
        t0: (B,) optional start times before ``t[:, 0]``.
        reduction: ``"mean"`` (batch mean of the per-sample norms) or ``"none"`` (the per-sample norms).

    Returns:
        (T,) with ``reduction="mean"``, (B, T) with ``reduction="none"``; entry ``i`` belongs to observation ``i``
        (so ``T - 1 - i`` steps before the last one). Detached, on the model's device and dtype.

    Raises:
        TypeError: if ``model`` is not an :class:`odernn.ODERNN`, ``loss`` is not callable or does not return a
            tensor.
        ValueError: on bad ``x``/``t``/``mask``/``t0`` (as in ``forward``), a ``y`` of the wrong shape for the
            default loss, a non-scalar loss or an unknown ``reduction``.
    """
    if not isinstance(model, ODERNN):
        raise TypeError(f"model must be an odernn.ODERNN, got {type(model).__name__}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if loss is None:
        loss = _default_loss
    elif not callable(loss):
        raise TypeError(f"loss must be a callable loss(outputs, y) -> scalar tensor, got {type(loss).__name__}")
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a (batch, time, input_size) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    B, T, _ = x.shape
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if loss is _default_loss:
        O = model.output_size
        if y.dim() == 2 and y.shape == (B, O):
            y = y.unsqueeze(1)
        elif y.dim() != 3 or y.shape[0] != B or y.shape[2] != O:
            raise ValueError(f"with the default loss y must have shape (batch={B}, time, output_size={O}) or "
                             f"({B}, {O}), got {tuple(y.shape)}")
        y = y.to(x.dtype)

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            # A zero probe added to every arriving state: its gradient is dL/dz_i^- as backpropagation carries it
            # into each gap's backward solve (after the model's adjoint clipping).
            probe = torch.zeros(B, T, model.state_size, dtype=x.dtype, device=x.device, requires_grad=True)
            value = loss(model.encode(x, t, mask, t0, probe=probe).outputs, y)
            if not isinstance(value, Tensor):
                raise TypeError(f"loss must return a tensor, got {type(value).__name__}")
            if value.numel() != 1:
                raise ValueError(f"loss must return a scalar, got a tensor of shape {tuple(value.shape)}")
            value = value.reshape(())
            if value.requires_grad:
                (g,) = torch.autograd.grad(value, probe, allow_unused=True)
            else:  # the loss does not depend on the model (e.g. a constant)
                g = None
            if g is None:
                g = torch.zeros_like(probe)
            norms = []
            for i in range(T):
                gi = g[:, i]
                if model.adjoint_clip is not None:
                    gi = _clipped(gi, model.adjoint_clip)
                norms.append(gi.detach().reshape(B, -1).norm(dim=1))
    finally:
        model.train(was_training)
    out = torch.stack(norms, dim=1)  # (B, T)
    return out.mean(dim=0) if reduction == "mean" else out


def _clipped(g: Tensor, c: float) -> Tensor:
    """``g`` as :func:`odernn.clip_adjoint` passes it on during backpropagation (per-sample l2 norm at most ``c``).

    The probe sits *before* the clip, so its gradient is already clipped and this changes nothing (the clip is
    idempotent). It is applied anyway so that the guarantee "no entry exceeds ``adjoint_clip``" does not hinge on
    where the probe sits relative to the clip. It runs the library's own clip, so the rule has a single definition.
    """
    leaf = torch.zeros_like(g, requires_grad=True)
    (out,) = torch.autograd.grad(clip_adjoint(leaf, c), leaf, grad_outputs=g)
    return out


class AdjointSpectrum(NamedTuple):
    r"""Result of :func:`adjoint_spectrum`.

    Attributes:
        matrix: (2N, 2N) the matrix :math:`H` whose eigenvalues are paired (N = numel of ``h``).
        eigenvalues: (2N,) complex eigenvalues of ``matrix``.
        pairs: (N, 2) long indices into ``eigenvalues``; every index appears once.
        pair_sums: (N,) complex, ``eigenvalues[pairs[:, 0]] + eigenvalues[pairs[:, 1]]``.
        gamma: the damping :math:`\gamma` (Prop. 4 says every pair sums to :math:`-\gamma`).
        max_pair_error: :math:`\max_k |\mathrm{pair\_sums}_k + \gamma|`.
    """

    matrix: Tensor
    eigenvalues: Tensor
    pairs: Tensor
    pair_sums: Tensor
    gamma: float
    max_pair_error: float


def adjoint_spectrum(dynamics: Union[Dynamics, ODERNN], z: Tensor, t: Union[float, Tensor] = 0.0) -> AdjointSpectrum:
    r"""Eigenvalues of the linearised (G)HBNODE adjoint system and their pairing (Prop. 4, Appendix D).

    With :math:`z = [h, m]` and vector field :math:`F(t, z)`, the adjoint obeys
    :math:`[\partial L/\partial z_t] = [\partial L/\partial z_T]\,\exp\{-\int_T^t \partial F/\partial z\,ds\}`
    (eq. 18, 75). This function forms

    .. math::
        H = \frac{\partial F}{\partial z} = \begin{bmatrix} 0 & \partial\sigma/\partial m \\
        \partial f/\partial h - \xi I & -\gamma I \end{bmatrix}

    (``sigma`` the identity and :math:`\xi = 0` for HBNODE) with :func:`torch.autograd.functional.jacobian` of the
    dynamics itself, takes its eigenvalues and pairs them by matching :math:`\lambda` with
    :math:`-\gamma - \lambda` (a greedy minimum-error perfect matching). Prop. 4 states that such a pairing exists
    with zero error; ``max_pair_error`` shows how close the computed spectrum comes (rounding error only).

    For a trajectory segment pass several states: ``z`` of shape (K, 2N) gives the averaged matrix
    :math:`\bar H = \frac{1}{t - T}\int_T^t H\,ds` of Appendix D (the averages F and J), approximated by the mean of
    ``H`` over the K states, or by the trapezoidal rule when ``t`` holds the K times. The pairing holds for
    :math:`\bar H` as well, since averaging keeps the block structure.

    Args:
        dynamics: an :class:`odernn.HBNODE` or :class:`odernn.GHBNODE` (or an :class:`odernn.ODERNN` using one).
        z: the state ``[h, m]``: (2N,) or (1, 2N) for one state, (K, 2N) for K states along a segment. Image states
            (1, 2C, H, W) are flattened (the matrix is dense: keep them small).
        t: the time (only matters for time-dependent networks): a float or scalar tensor, or (K,) increasing times of
            the K states (trapezoidal average).

    The computation runs in ``z``'s dtype and device: a float64 ``z`` on a float32 model evaluates a float64 copy of
    the dynamics (the model itself is left as it is).

    Returns:
        :class:`AdjointSpectrum`.

    Raises:
        TypeError: for a dynamics without heavy-ball structure (NODE, ANODE, SONODE) or a non-tensor ``z``.
        ValueError: for a state of the wrong size or bad times.
    """
    if isinstance(dynamics, ODERNN):
        dynamics = dynamics.dynamics
    if not isinstance(dynamics, HBNODE):
        raise TypeError(f"adjoint_spectrum needs an HBNODE or GHBNODE dynamics (Prop. 4 is about heavy-ball "
                        f"models), got {type(dynamics).__name__}")
    if not isinstance(z, Tensor) or not z.is_floating_point():
        raise TypeError(f"z must be a floating-point torch.Tensor, got {type(z).__name__}")
    if z.dim() == 1:
        z = z.unsqueeze(0)
    if z.dim() < 2 or z.shape[0] == 0 or z.shape[1] == 0 or z.shape[1] % 2:
        raise ValueError(f"z must be a state [h, m] of shape (2N,), (1, 2N) or (K, 2N, ...) with an even size along "
                         f"dim 1; got {tuple(z.shape)}")
    K = z.shape[0]
    if isinstance(t, Tensor):
        t = t.to(dtype=z.dtype, device=z.device)
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, K)):
            raise ValueError(f"t must be a scalar or have shape ({K},) like z's first dimension, got {tuple(t.shape)}")
        if t.dim() == 1 and t.shape[0] == 1:
            t = t.reshape(())
    else:
        t = torch.tensor(float(t), dtype=z.dtype, device=z.device)
    if t.dim() == 1:
        if K > 1 and not (t.diff() > 0).all():
            raise ValueError("the times of a segment must be strictly increasing")
        times = list(t.unbind())
    else:
        times = [t] * K

    shape = z.shape[1:]
    D = shape.numel()
    z = z.detach()
    if any(p.dtype != z.dtype or p.device != z.device for p in itertools.chain(dynamics.parameters(),
                                                                              dynamics.buffers())):
        dynamics = copy.deepcopy(dynamics).to(device=z.device, dtype=z.dtype)  # the caller's module is not touched
    mats = []
    for k in range(K):
        def field(v: Tensor, tk: Tensor = times[k]) -> Tensor:
            return dynamics(tk, v.reshape(1, *shape)).reshape(D)
        mats.append(torch.autograd.functional.jacobian(field, z[k].reshape(D)).detach())  # (D, D)
    if K == 1:
        H = mats[0]
    elif t.dim() == 1:
        w = torch.zeros(K, dtype=z.dtype, device=z.device)
        dt = t.diff()
        w[:-1] += dt / 2
        w[1:] += dt / 2
        w = w / (t[-1] - t[0])
        H = sum(wk * m for wk, m in zip(w, mats))
    else:
        H = torch.stack(mats).mean(dim=0)

    gamma = float(dynamics.gamma.detach())
    eig = torch.linalg.eigvals(H)  # (D,) complex
    pairs = _pair(eig, gamma)
    sums = eig[pairs[:, 0]] + eig[pairs[:, 1]]
    err = float((sums + gamma).abs().max()) if sums.numel() else 0.0
    return AdjointSpectrum(H, eig, pairs, sums, gamma, err)


def _pair(eig: Tensor, gamma: float) -> Tensor:
    """Greedy perfect matching of the eigenvalues, cheapest ``|lambda_i + lambda_j + gamma|`` first."""
    D = eig.shape[0]
    cost = (eig[:, None] + eig[None, :] + gamma).abs()
    iu = torch.triu_indices(D, D, offset=1, device=eig.device)
    order = cost[iu[0], iu[1]].argsort()
    used = torch.zeros(D, dtype=torch.bool)
    pairs = []
    for i, j in iu[:, order].t().tolist():
        if used[i] or used[j]:
            continue
        used[i] = used[j] = True
        pairs.append((i, j))
        if len(pairs) == D // 2:
            break
    return torch.tensor(pairs, dtype=torch.long, device=eig.device).reshape(-1, 2)
