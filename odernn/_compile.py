"""``Solver(compile=True)``: the vector field, its adjoint and whole Dormand-Prince steps compiled with
``torch.compile``.

Compiled functions are built per dynamics (each with its own code object, hence its own dynamo cache) with static
shapes: a new batch size compiles once more. Every first call per shape is timed and listed by :func:`compile_log`.
Where no compiler is available (no C++ compiler on the CPU, no triton on CUDA) or compiling fails, the loop runs
eagerly after one warning.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
import types
import warnings
import weakref
from typing import Callable, List, Optional

import torch
from torch import Tensor, nn

from ._nfe import BackwardCount
from ._rk import DOPRI5

__all__ = ["compile_log", "call_compiled", "compiled_stepper"]


def _eval_field(dyn: nn.Module, t: Tensor, z: Tensor, scale: Tensor) -> Tensor:
    return dyn(t, z) * scale


def _aug_field(dyn: nn.Module, t: Tensor, z: Tensor, a: Tensor, scale: Tensor, params: dict):
    def g(z, params):
        return torch.func.functional_call(dyn, params, (t, z)) * scale

    out, pull = torch.func.vjp(g, z, params)
    gz, gp = pull(a)
    return out, gz, gp


def _graph_norm(x: Tensor, rms: bool) -> Tensor:
    if rms:
        return x.pow(2).mean().sqrt()
    return x.reshape(x.shape[0], -1).pow(2).mean(dim=1).sqrt().max()


def _stage_sum(base: Tensor, ks: List[Tensor], row: tuple, dt: Tensor) -> Tensor:
    for c, k in zip(row, ks):
        if c != 0.0:
            base = base + (dt * c) * k
    return base


def _dopri5_step(dyn: nn.Module, t: Tensor, y0: Tensor, f0: Tensor, dt: Tensor, scale: Tensor, rtol: float,
                 atol: float, rms: bool):
    """One Dormand-Prince trial step of ``dz/ds = scale * f(t, z)`` in one graph (compiled as a whole)."""
    ks = [f0]
    yi = y0
    for row in DOPRI5.rows:
        yi = _stage_sum(y0, ks, row, dt)
        ks.append(dyn(t, yi) * scale)
    err = _stage_sum(torch.zeros_like(y0), ks, DOPRI5.err, dt)
    tol = torch.maximum(y0.abs(), yi.abs()) * rtol + atol
    return ks[1:], yi, _graph_norm(err / tol, rms) + yi.sum() * 0.0


def _dopri5_adjoint_step(dyn: nn.Module, t: Tensor, z0: Tensor, a0: Tensor, fz0: Tensor, fa0: Tensor, dt: Tensor,
                         scale: Tensor, params: dict, rtol: float, atol: float, rms: bool):
    """One Dormand-Prince trial step of the adjoint system (reversed time) in one graph: stages of ``z`` and ``a``,
    the parameter-gradient stages, the new ``z, a`` and the seminorm error ratio."""
    def g(z, params):
        return torch.func.functional_call(dyn, params, (t, z)) * scale

    kz, ka, kp = [fz0], [fa0], []
    zi, ai = z0, a0
    for row in DOPRI5.rows:
        zi = _stage_sum(z0, kz, row, dt)
        ai = _stage_sum(a0, ka, row, dt)
        out, pull = torch.func.vjp(g, zi, params)
        gz, gp = pull(ai)
        kz.append(-out)
        ka.append(gz)
        kp.append(gp)
    ez = _stage_sum(torch.zeros_like(z0), kz, DOPRI5.err, dt)
    ea = _stage_sum(torch.zeros_like(a0), ka, DOPRI5.err, dt)
    rz = _graph_norm(ez / (torch.maximum(z0.abs(), zi.abs()) * rtol + atol), rms)
    ra = _graph_norm(ea / (torch.maximum(a0.abs(), ai.abs()) * rtol + atol), rms)
    return kz[1:], ka[1:], kp, zi, ai, torch.maximum(rz, ra) + zi.sum() * 0.0 + ai.sum() * 0.0


_BASES = {"field": _eval_field, "aug": _aug_field, "step": _dopri5_step, "adjoint step": _dopri5_adjoint_step}
_KIND_NAMES = {"field": "field", "aug": "adjoint field", "step": "dopri5 step", "adjoint step": "adjoint dopri5 step"}

_COMPILED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_LOG: List[dict] = []
_WARNED: set = set()


def compile_log() -> List[dict]:
    """What ``Solver(compile=True)`` compiled in this process: one entry per first call of a compiled evaluation
    (``kind`` "field" or "adjoint field", the dynamics class, state shape, dtype, device, grad mode) with
    ``seconds``, the wall time of that first call (tracing and compiling included)."""
    return [dict(e) for e in _LOG]


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


@functools.lru_cache(maxsize=None)
def _compiler_available_for(device_type: str) -> bool:
    if device_type == "cpu":
        return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c)
    if device_type == "cuda":
        try:
            import triton  # noqa: F401  (only its presence matters)
        except ImportError:
            return False
        return True
    return False


def _compiler_available(device: torch.device) -> bool:
    return _compiler_available_for(device.type)


def _fresh(fn: Callable, tag: str) -> Callable:
    """A copy of ``fn`` with its own code object: dynamo keeps its compile cache per code object, so each dynamics
    gets its own cache instead of sharing (and exhausting) one."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def _compiled(dyn: nn.Module, kind: str, z: Tensor) -> Optional[Callable]:
    """The compiled evaluation ``kind`` for ``dyn`` (built on first use), or ``None`` to run eagerly."""
    entry = _COMPILED.get(dyn)
    if entry is None:
        entry = _COMPILED[dyn] = {"eager": False, "seen": set()}
    if entry["eager"]:
        return None
    fn = entry.get(kind)
    if fn is not None:
        return fn
    if not _compiler_available(z.device):
        entry["eager"] = True
        _warn_once(f"nocompiler-{z.device.type}",
                   f"Solver(compile=True): no compiler for {z.device.type} was found (a C++ compiler such as g++ on "
                   f"the CPU, triton on CUDA); running the solver loop eagerly")
        return None
    # static shapes: far less per-call overhead than dynamic ones; a new batch size compiles once more
    fn = entry[kind] = torch.compile(_fresh(_BASES[kind], f"{len(_LOG)}_{id(dyn):x}"), dynamic=False)
    return fn


def call_compiled(dyn: nn.Module, kind: str, z: Tensor, args: tuple, eager: Callable):
    """Call the compiled ``kind`` of ``dyn`` (timing its first call per shape), or ``eager(*args)`` without one."""
    fn = _compiled(dyn, kind, z)
    if fn is None:
        return eager(*args)
    entry = _COMPILED[dyn]
    key = (kind, tuple(z.shape[1:]), z.dtype, z.device.type, torch.is_grad_enabled())
    if key in entry["seen"]:
        return fn(dyn, *args)
    start = time.perf_counter()
    try:
        out = fn(dyn, *args)
    except Exception as e:  # a backend failure: say so once and go on eagerly (eager re-raises genuine errors)
        entry["eager"] = True
        _warn_once(f"fail-{type(dyn).__name__}", f"Solver(compile=True): compiling {type(dyn).__name__} failed "
                                                 f"({type(e).__name__}: {e}); running the solver loop eagerly")
        return eager(*args)
    entry["seen"].add(key)
    _LOG.append(dict(kind=_KIND_NAMES[kind], dynamics=type(dyn).__name__, state_shape=tuple(z.shape),
                     dtype=str(z.dtype), device=str(z.device), grad=torch.is_grad_enabled(),
                     seconds=time.perf_counter() - start))
    return out


def no_compiler(*args):
    return None


def compiled_stepper(gap, solve, adjoint: bool) -> Callable:
    """A whole Dormand-Prince trial step compiled with the field (Solver(compile=True), time-independent fields).

    ``gap`` is the fused loop's gap field (``dyn``, ``scale``, ``time``, ``count``, ``counters`` and, for the adjoint,
    ``params`` and ``names``); ``solve`` the :class:`odernn._rk.RKSolve` whose ``trial_step`` runs without a
    compiler."""
    cfg = solve.cfg
    rms = cfg.norm == "rms"
    stages = len(DOPRI5.rows)

    def step(t: float, dt: float, y: List[Tensor], f: List[Tensor]):
        z = y[0]
        dt_t = torch.tensor(dt, dtype=z.dtype, device=z.device)
        if adjoint:
            params = dict(zip(gap.names, gap.params))
            out = call_compiled(gap.dyn, "adjoint step", z, (gap.time(0.0), z, y[1], f[0], f[1], dt_t, gap.scale,
                                                              params, cfg.rtol, cfg.atol, rms), no_compiler)
        else:
            out = call_compiled(gap.dyn, "step", z, (gap.time(0.0), z, f[0], dt_t, gap.scale, cfg.rtol, cfg.atol,
                                                      rms), no_compiler)
        if out is None:
            return solve.trial_step(t, dt, y, f)
        for _ in range(stages):
            gap.count(adjoint)
        if adjoint:
            kz, ka, kp, z1, a1, ratio = out
            ks = [f] + [[kz[j], ka[j], *(kp[j][n] for n in gap.names)] for j in range(stages)]
            return ks, [z1, a1], ratio
        ks1, y1, ratio = out
        if gap.counters and y1.requires_grad:
            y1.register_hook(BackwardCount(gap.counters, stages))
        return [f] + [[k] for k in ks1], [y1], ratio

    return step
