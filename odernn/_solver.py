"""Solver settings: one validated object, :class:`Solver`, accepted by every solving entry point.

``odesolve``, ``ODEBlock``, ``ODERNN``, the forecaster and the recipes all take ``solver=odernn.Solver(...)``; their
old keyword arguments (``rtol=``, ``method=``, ...) remain as shorthands that override the corresponding fields.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor

__all__ = ["Solver", "SolverConfig", "ADAPTIVE_METHODS", "FIXED_METHODS", "METHODS", "sample_rms_norm", "rms_norm",
           "resolve_solver"]

ADAPTIVE_METHODS = frozenset({"dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun"})
FIXED_METHODS = frozenset({"euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams",
                           "fixed_adams"})
METHODS = ADAPTIVE_METHODS | FIXED_METHODS


@torch.no_grad()
def sample_rms_norm(x: Tensor) -> Tensor:
    """Max over the batch (dim 0) of each sample's RMS: step-size control driven by the worst sample, so a sample's
    accuracy does not depend on what else is in the batch.

    Norms only steer step sizes, so they are never differentiated (a differentiated sqrt at 0, e.g. a sample with a
    zero gap, would turn direct-backpropagation gradients into NaN)."""
    if x.dim() < 2:
        return x.abs().max() if x.numel() else x.new_zeros(())
    return x.reshape(x.shape[0], -1).pow(2).mean(dim=1).sqrt().max()


@torch.no_grad()
def rms_norm(x: Tensor) -> Tensor:
    """RMS over all elements (torchdiffeq's default norm)."""
    return x.pow(2).mean().sqrt()


NORMS: Mapping[str, Callable[[Tensor], Tensor]] = {"sample": sample_rms_norm, "rms": rms_norm}


@dataclasses.dataclass(frozen=True)
class Solver:
    """How every ODE in odernn is solved and differentiated. Validated once, at construction.

    One set of defaults serves every entry point (:func:`odernn.odesolve`, :class:`odernn.ODEBlock`,
    :class:`odernn.ODERNN`, the forecaster, the recipes); pass ``solver=Solver(...)`` or the shorthand keywords.

    Args:
        method: ``"dopri5"`` (default) or any torchdiffeq method name.
        rtol, atol: tolerances of adaptive methods (default 1e-3, 1e-4).
        adjoint: differentiate with the adjoint method (``True``, default) or by direct backpropagation through the
            accepted steps (step sizes are constants for autograd).
        seminorm: on the adjoint solve, leave the parameter-gradient channels out of step-size control (Kidger et
            al. 2021). Only used with ``adjoint=True``.
        norm: ``"sample"`` (default: max over the batch of per-sample RMS, so results do not depend on how a batch
            is composed) or ``"rms"`` (torchdiffeq's RMS over all elements).
        max_steps: most steps of one adaptive solve (one gap of an ODE-RNN); more raises
            :class:`odernn.SolverError`. Any solve that evaluates the field more than ``20 * max_steps`` times raises
            too.
        step_size: step of fixed-grid methods in the solve's own time units (:func:`odesolve`, :class:`ODEBlock`).
        step_fraction: step of fixed-grid methods inside an ODE-RNN, as a fraction of each sample's gap (every gap
            is crossed in ``ceil(1 / step_fraction)`` steps, the last one shorter if needed).
        options: further torchdiffeq options (a mapping; stored as a sorted tuple so the object stays hashable).
        lean: for ``"dopri5"``, use odernn's lean Dormand-Prince step (same steps and results as torchdiffeq's, less
            overhead). ``False`` runs torchdiffeq's own step: the reference path.
        fused: :class:`odernn.ODERNN` crosses all gaps of a batch in one solver loop with a sequence-level adjoint
            (default). ``False`` runs one torchdiffeq solve per gap: the reference path.
        compile: compile the fused loop's Runge-Kutta step together with the vector field with ``torch.compile``
            (fused path only; falls back to eager with one warning when no C++ compiler is found).

    Raises:
        ValueError: on an unknown method or norm, non-positive tolerances, steps or step sizes.
    """

    method: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-4
    adjoint: bool = True
    seminorm: bool = True
    norm: str = "sample"
    max_steps: int = 10_000
    step_size: Optional[float] = None
    step_fraction: Optional[float] = None
    options: tuple = ()
    lean: bool = True
    fused: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown solver method {self.method!r}; expected one of {sorted(METHODS)}")
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {sorted(NORMS)}, got {self.norm!r}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {self.max_steps!r}")
        for name in ("step_size", "step_fraction"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
                raise ValueError(f"{name} must be None or a positive number, got {v!r}")
        if self.step_fraction is not None and self.step_fraction > 1:
            raise ValueError(f"step_fraction is a fraction of a gap and must be in (0, 1], got {self.step_fraction!r}")
        if isinstance(self.options, Mapping):
            object.__setattr__(self, "options", tuple(sorted(self.options.items())))
        for name in ("adjoint", "seminorm", "lean", "fused", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @classmethod
    def make(cls, *, options: Optional[Mapping] = None, **kwargs: Any) -> "Solver":
        """Build from keyword arguments, ``options`` as a dict (kept for backwards compatibility)."""
        return cls(options=tuple(sorted((options or {}).items())), **kwargs)

    def replace(self, **changes: Any) -> "Solver":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def paper_design(self) -> "Solver":
        """This solver as the HBNODE paper's code solved its ODE-RNNs: one torchdiffeq solve per gap
        (``fused=False``), step-size control by the RMS over the whole batch (``norm="rms"``), and an adjoint whose
        step size is also controlled by the parameter-gradient channels (``seminorm=False``); not compiled. Method,
        tolerances, adjoint and step settings are kept.

        The paper's NFE figures come from this design; use it to compare with them (with
        :func:`odernn.solving_with` and ``warm_start=False``, each gap also starts from torchdiffeq's initial-step
        heuristic, as in the paper's code). Steps differ from the default design, so results agree only to the
        solver's tolerance.
        """
        return self.replace(fused=False, norm="rms", seminorm=False, compile=False)

    @property
    def adaptive(self) -> bool:
        """Whether the method controls its step size (rtol/atol apply)."""
        return self.method in ADAPTIVE_METHODS

    @functools.cached_property
    def norm_function(self) -> Callable[[Tensor], Tensor]:
        """The norm used for step-size control (never differentiated)."""
        return NORMS[self.norm]

    def check_fixed_step(self, *, in_gaps: bool) -> None:
        """Fixed-grid methods need a step: ``step_fraction`` inside an ODE-RNN (``in_gaps``), else ``step_size``."""
        if self.adaptive or "grid_constructor" in dict(self.options):
            return
        if in_gaps and self.step_fraction is None:
            raise ValueError(f"fixed-grid method {self.method!r} in an ODE-RNN needs step_fraction=... (a fraction of "
                             f"each gap, e.g. 0.25 for four steps per gap)" +
                             ("; step_size is in time units and only applies to odesolve/ODEBlock"
                              if self.step_size is not None else ""))
        if not in_gaps and self.step_size is None:
            raise ValueError(f"fixed-grid method {self.method!r} needs step_size=... (in the solve's time units)")


#: Backwards-compatible name.
SolverConfig = Solver

_FIELDS = frozenset(f.name for f in dataclasses.fields(Solver))


def resolve_solver(solver: Optional[Solver], overrides: Mapping[str, Any], *, where: str) -> Solver:
    """The solver an entry point uses: ``solver`` (default ``Solver()``) with shorthand keywords applied on top.

    ``overrides`` holds only the shorthands the caller actually passed (not ``None``)."""
    if solver is not None and not isinstance(solver, Solver):
        raise TypeError(f"{where}: solver must be an odernn.Solver, got {type(solver).__name__}")
    unknown = set(overrides) - _FIELDS
    if unknown:
        raise TypeError(f"{where}: unknown solver settings {sorted(unknown)}; expected fields of odernn.Solver")
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "options" in changes and isinstance(changes["options"], Mapping):
        changes["options"] = tuple(sorted(changes["options"].items()))
    base = Solver() if solver is None else solver
    return dataclasses.replace(base, **changes) if changes else base
