"""Counting vector-field evaluations (NFEs), forward and backward separately."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

import torch
from torch import Tensor, nn

from ._dynamics import Dynamics

__all__ = ["NFECount", "nfe_counter", "CountedField", "BackwardCount"]


@dataclasses.dataclass
class NFECount:
    """Evaluations of the vector field counted inside an :func:`nfe_counter` context.

    Attributes:
        forward: evaluations during forward solves (including rejected steps and the initial-step heuristic).
        backward: evaluations during backpropagation: the adjoint solves' evaluations (each one evaluation of ``f``
            and its vector-Jacobian product) with ``adjoint=True``; with direct backpropagation, the number of forward
            evaluations that backpropagation went through.
    """

    forward: int = 0
    backward: int = 0

    @property
    def total(self) -> int:
        return self.forward + self.backward


class CountedField(nn.Module):
    """Wrap a vector field that you integrate yourself (e.g. with torchcde or torchdiffeq) so that
    :func:`nfe_counter` counts its evaluations like those of odernn's own solves.

    ``forward(t, z)`` returns ``func(t, z)``. An evaluation counts as *backward* when ``adjoint=True`` and gradients
    are enabled (an adjoint solve evaluates the field with gradients on, a forward solve under ``no_grad``), else as
    *forward*; with ``adjoint=False`` each forward evaluation whose output backpropagation passes through also
    counts once as backward.

    Args:
        func: the vector field, a module called as ``func(t, z)``.
        adjoint: whether it is solved with an adjoint method.
    """

    _nfe_counters: tuple = ()

    def __init__(self, func: nn.Module, *, adjoint: bool) -> None:
        super().__init__()
        self.func = func
        self.adjoint = bool(adjoint)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        out = self.func(t, z)
        counters = self._nfe_counters
        if counters:
            backward = self.adjoint and torch.is_grad_enabled()
            for c in counters:
                if backward:
                    c.backward += 1
                else:
                    c.forward += 1
            if not self.adjoint and isinstance(out, Tensor) and out.requires_grad:
                out.register_hook(BackwardCount(counters))
        return out


class BackwardCount:
    """A gradient hook that adds ``n`` backward evaluations to every counter (direct backpropagation through ``n``
    evaluations that produced the hooked tensor)."""

    def __init__(self, counters: tuple, n: int = 1) -> None:
        self.counters, self.n = counters, n

    def __call__(self, grad: Tensor) -> None:
        for c in self.counters:
            c.backward += self.n


@contextlib.contextmanager
def nfe_counter(model: nn.Module) -> Iterator[NFECount]:
    """Count the evaluations of every :class:`odernn.Dynamics` inside ``model`` while the context is open.

    Example::

        with odernn.nfe_counter(model) as nfe:
            loss = loss_fn(model(x, t), y)
            loss.backward()
        print(nfe.forward, nfe.backward)

    Counts cover every :class:`odernn.Dynamics` and :class:`odernn.CountedField` inside ``model``. Counters nest and are
    independent: each context counts what happens while it is open (run ``backward()``
    inside the context to count the backward pass). Nothing is stored on the model after the context closes.

    Raises:
        TypeError: if ``model`` is not a module; ValueError: if it contains no odernn dynamics.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"nfe_counter expects a torch.nn.Module, got {type(model).__name__}")
    dyns = [m for m in model.modules() if isinstance(m, (Dynamics, CountedField))]
    if not dyns:
        raise ValueError(f"{type(model).__name__} contains no odernn dynamics (NODE, ANODE, SONODE, HBNODE, GHBNODE) "
                         f"and no odernn.CountedField")
    count = NFECount()
    for d in dyns:
        d._nfe_counters = d._nfe_counters + (count,)
    try:
        yield count
    finally:
        for d in dyns:
            rest = tuple(c for c in d._nfe_counters if c is not count)
            if rest:
                d._nfe_counters = rest
            else:
                d.__dict__.pop("_nfe_counters", None)
