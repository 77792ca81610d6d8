"""Solve a model's ODEs with other settings for a while: :func:`solving_with` and :func:`paper_solver`.

::

    with odernn.paper_solver(model), odernn.nfe_counter(model) as nfe:   # the paper's per-gap solver design
        loss = loss_fn(model(x, t))
        torch.autograd.grad(loss, list(model.parameters()))
    print(nfe.forward, nfe.backward)                                      # NFEs as the paper's code counts them
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Union

from torch import nn

from ._odernn import check_warm_start
from ._solver import Solver

__all__ = ["solving_with", "paper_solver"]


@contextlib.contextmanager
def solving_with(model: nn.Module, solver: Union[Solver, Callable[[Solver], Solver]], *,
                 warm_start: Optional[Union[bool, str]] = None) -> Iterator[nn.Module]:
    """Within the block, every odernn layer inside ``model`` (``ODERNN``, ``ODEBlock``: any module whose ``solver``
    is an :class:`odernn.Solver`) solves with ``solver``; on exit the original settings are restored, also after an
    exception. Weights, gradients and random states are not touched.

    Args:
        model: the model (the layers are found with ``model.modules()``).
        solver: a :class:`Solver`, or a function of each layer's own solver (e.g. :meth:`Solver.paper_design`).
        warm_start: if given, sets ``ODERNN.warm_start``: True (the previous gap's last accepted step), False (every
            gap starts from the initial-step heuristic) or ``"gap"`` (a first trial step of the whole gap).

    Raises:
        ValueError: if ``model`` holds no odernn layer (nothing would change).
        TypeError: if ``solver`` is neither a Solver nor callable, or the callable does not return a Solver.
    """
    check_warm_start(warm_start, allow_none=True)
    if not isinstance(solver, Solver) and not callable(solver):
        raise TypeError(f"solver must be an odernn.Solver or a function Solver -> Solver, got {type(solver).__name__}")
    layers = [m for m in model.modules() if isinstance(getattr(m, "solver", None), Solver)]
    if not layers:
        raise ValueError(f"{type(model).__name__} holds no odernn layer with a solver (ODERNN, ODEBlock): nothing "
                         f"to solve differently")
    saved = [(m, m.solver, getattr(m, "warm_start", None)) for m in layers]
    try:
        for m, old, _ in saved:
            new = solver if isinstance(solver, Solver) else solver(old)
            if not isinstance(new, Solver):
                raise TypeError(f"the solver function returned {type(new).__name__}, not an odernn.Solver")
            m.solver = new
            if warm_start is not None and hasattr(m, "warm_start"):
                m.warm_start = warm_start
        yield model
    finally:
        for m, old, warm in saved:
            m.solver = old
            if warm is not None:
                m.warm_start = warm


def paper_solver(model: nn.Module) -> contextlib.AbstractContextManager:
    """Within the block, ``model`` solves as the HBNODE paper's code did: :meth:`Solver.paper_design` of each
    layer's solver (one torchdiffeq solve per gap, RMS norm over the batch, no seminorm, not compiled) and no warm
    start (each gap starts from torchdiffeq's initial-step heuristic). For NFE figures comparable with the paper's."""
    return solving_with(model, Solver.paper_design, warm_start=False)
