"""Errors raised by odernn's solvers, and the check that turns a non-finite backward pass into one."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["SolverError", "guard_backward"]


class SolverError(RuntimeError):
    """A solve that could not finish: too many steps, a step size that underflowed, or a non-finite state."""


class _GuardBackward(torch.autograd.Function):
    """Identity on the initial state; during backpropagation, raise :class:`SolverError` if the gradient reaching the
    initial state (the adjoint state at the start of the solve) is non-finite. The other inputs only make the output
    require gradients whenever anything of the solve does, so the check runs for every backward pass."""

    @staticmethod
    def forward(ctx, z0: Tensor, method: str, *watched: Tensor) -> Tensor:  # type: ignore[override]
        ctx.method = method
        ctx.n_watched = len(watched)
        return z0.view_as(z0)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        if grad is not None and not bool(torch.isfinite(grad).all()):
            raise SolverError(f"the backward pass of the {ctx.method!r} solve produced a non-finite gradient (NaN or "
                              f"inf) with respect to the initial state: the adjoint blew up. Check the loss and the "
                              f"network, clip the adjoint (odernn.clip_adjoint) or shorten the time span")
        return (grad, None) + (None,) * ctx.n_watched


def guard_backward(z0: Tensor, method: str, watched: Sequence[Tensor]) -> Tensor:
    """``z0`` unchanged; during backpropagation, :class:`SolverError` if the gradient reaching it is non-finite.

    ``watched`` (parameters, times) make the check run even when ``z0`` itself needs no gradient."""
    return _GuardBackward.apply(z0, method, *watched)
