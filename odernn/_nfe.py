"""Counting vector-field evaluations (NFEs), forward and backward separately."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

from torch import nn

from ._dynamics import Dynamics

__all__ = ["NFECount", "nfe_counter"]


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


@contextlib.contextmanager
def nfe_counter(model: nn.Module) -> Iterator[NFECount]:
    """Count the evaluations of every :class:`odernn.Dynamics` inside ``model`` while the context is open.

    Example::

        with odernn.nfe_counter(model) as nfe:
            loss = loss_fn(model(x, t), y)
            loss.backward()
        print(nfe.forward, nfe.backward)

    Counters nest and are independent: each context counts what happens while it is open (run ``backward()``
    inside the context to count the backward pass). Nothing is stored on the model after the context closes.

    Raises:
        TypeError: if ``model`` is not a module; ValueError: if it contains no odernn dynamics.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"nfe_counter expects a torch.nn.Module, got {type(model).__name__}")
    dyns = [m for m in model.modules() if isinstance(m, Dynamics)]
    if not dyns:
        raise ValueError(f"{type(model).__name__} contains no odernn dynamics (NODE, ANODE, SONODE, HBNODE, GHBNODE)")
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
