"""Clipping the adjoint state itself (paper Sec. 4), not the parameter gradients."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["clip_adjoint", "clip_rows"]


class _ClipAdjoint(torch.autograd.Function):
    """Identity forward; backward rescales each sample's gradient to an l2 norm of at most ``c``."""

    @staticmethod
    def forward(ctx, z: Tensor, c: float) -> Tensor:  # type: ignore[override]
        ctx.c = c
        return z.view_as(z)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        return clip_rows(g, ctx.c), None


def clip_rows(g: Tensor, c: float) -> Tensor:
    """``g`` with each sample's (dim 0) l2 norm rescaled to at most ``c`` (the rule of :func:`clip_adjoint`)."""
    norms = g.reshape(g.shape[0], -1).norm(dim=1)
    scale = (c / norms.clamp_min(torch.finfo(g.dtype).tiny)).clamp(max=1.0)
    return g * scale.reshape((-1,) + (1,) * (g.dim() - 1))


def clip_adjoint(z: Tensor, max_norm: float) -> Tensor:
    """Return ``z`` unchanged; during backpropagation, clip the per-sample l2 norm of ``dL/dz`` to ``max_norm``.

    The norm is taken over everything but the batch dimension, i.e. over the whole ODE state ([h, m] for heavy-ball
    models). Samples whose adjoint norm is already at most ``max_norm`` are untouched; the others are rescaled (the
    direction is kept).

    Args:
        z: (batch, ...) a state.
        max_norm: the bound ``c > 0``.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm!r}")
    if not z.requires_grad:
        return z
    return _ClipAdjoint.apply(z, float(max_norm))
