"""Errors raised by odernn's solvers."""

__all__ = ["SolverError"]


class SolverError(RuntimeError):
    """A solve that could not finish: too many steps, a step size that underflowed, or a non-finite state."""
