"""Declarative parameter validation (the style of scikit-learn's ``_parameter_constraints``).

An estimator lists, per parameter, the constraints any one of which a valid value satisfies::

    _parameter_constraints = {"hidden_size": [Interval(int, 1, None)], "horizon": [Interval(int, 1, None), None]}

and calls :func:`validate_params` at the start of ``fit``. ``__init__`` only stores its arguments (scikit-learn's
rule), so invalid values are reported when they are used, with the parameter's name, the value and what is expected.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

__all__ = ["Interval", "Options", "InstanceOf", "Check", "validate_params"]


@dataclass(frozen=True)
class Interval:
    """A real or integral number in ``[left, right]`` (``closed`` says which ends are included; None = unbounded)."""

    kind: type  # int or float (float accepts ints too)
    left: Optional[float]
    right: Optional[float]
    closed: str = "both"  # "both" | "left" | "right" | "neither"

    def accepts(self, v: Any) -> bool:
        if isinstance(v, bool):
            return False
        if self.kind is int and not isinstance(v, numbers.Integral):
            return False
        if not isinstance(v, numbers.Real) or v != v:  # NaN
            return False
        if self.left is not None:
            if v < self.left or (v == self.left and self.closed in ("right", "neither")):
                return False
        if self.right is not None:
            if v > self.right or (v == self.right and self.closed in ("left", "neither")):
                return False
        return True

    def describe(self) -> str:
        name = "an int" if self.kind is int else "a number"
        lo = "(" if self.closed in ("right", "neither") else "["
        hi = ")" if self.closed in ("left", "neither") else "]"
        left = "-inf" if self.left is None else f"{self.left:g}"
        right = "inf" if self.right is None else f"{self.right:g}"
        if self.right is None and self.closed in ("both", "left"):
            return f"{name} >= {left}"
        if self.right is None:
            return f"{name} > {left}"
        return f"{name} in {lo}{left}, {right}{hi}"


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values (strings, booleans)."""

    values: tuple

    def accepts(self, v: Any) -> bool:
        return any(v is o or (type(v) is type(o) and v == o) for o in self.values)

    def describe(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.values)


@dataclass(frozen=True)
class InstanceOf:
    """An instance of one of the given types."""

    types: tuple
    name: str

    def accepts(self, v: Any) -> bool:
        return isinstance(v, self.types) and not isinstance(v, bool)

    def describe(self) -> str:
        return self.name


@dataclass(frozen=True)
class Check:
    """A value accepted by a predicate (for what the other constraints cannot say)."""

    predicate: Callable[[Any], bool]
    name: str

    def accepts(self, v: Any) -> bool:
        try:
            return bool(self.predicate(v))
        except (TypeError, ValueError, RuntimeError):
            return False

    def describe(self) -> str:
        return self.name


def _describe(c: Any) -> str:
    return "None" if c is None else c.describe()


def validate_params(params: Mapping[str, Any], constraints: Mapping[str, Sequence[Any]], *, owner: str) -> None:
    """Raise ``ValueError`` for the first parameter whose value satisfies none of its constraints.

    Args:
        params: ``get_params(deep=False)`` of the estimator.
        constraints: parameter name -> list of constraints (``Interval``, ``Options``, ``InstanceOf``, ``Check`` or
            ``None`` meaning "None is allowed").
        owner: class name used in the message.
    """
    missing = sorted(set(params) - set(constraints))
    if missing:  # a programming error: every parameter must be declared
        raise RuntimeError(f"{owner}: no constraint declared for parameter(s) {missing}")
    for name, allowed in constraints.items():
        v = params[name]
        if any((c is None and v is None) or (c is not None and c.accepts(v)) for c in allowed):
            continue
        expected = " or ".join(_describe(c) for c in allowed)
        raise ValueError(f"{owner}: parameter {name} must be {expected}, got {v!r}")
