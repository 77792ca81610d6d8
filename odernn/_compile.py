"""``Solver(compile=True)``: whole gaps of the fused loop, single Dormand-Prince steps, the vector field and its
adjoint compiled with ``torch.compile``.

The fused loop's hot path is :func:`compiled_gap`: a *gap block* holds the trial steps of a gap with the adaptive
controller, the dense output at the gap's end and (adjoint) the parameter-gradient sums in one graph, so a gap costs
one compiled call and one host synchronisation when its first trial step is accepted (most gaps, with warm starts);
the single-step and field kinds serve the general loop (direct backpropagation, the rare gap that the blocks hand
back).

Compiled functions are built per dynamics (each with its own code object, hence its own dynamo cache) with static
shapes: a new batch size compiles once more. Every call that compiles is timed and listed by :func:`compile_log`,
recompiles included. Where no compiler is available (no C++ compiler on the CPU, no triton on CUDA), compiling
fails, or torch's recompile limit is reached, the loop runs eagerly after one warning. Compiled code is cached on
disk by torch (inductor's FX-graph cache), so a second process compiles the same model much faster.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
import types
import warnings
import weakref
from typing import Callable, List, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch._dynamo.exc import FailOnRecompileLimitHit
from torch._dynamo.utils import counters as _DYNAMO_COUNTERS

from ._nfe import BackwardCount
from ._rk import DFACTOR, DOPRI5, DOPRI5_MID, IFACTOR, SAFETY

__all__ = ["compile_log", "call_compiled", "compiled_stepper", "begin_pass"]


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
    # the error ratio steers the step size only: computed off autograd's graph (with direct backpropagation a
    # zero error would otherwise send the square root's infinite slope, times a zero cotangent, as NaN into yi)
    kd, y0d, yid = [k.detach() for k in ks], y0.detach(), yi.detach()
    err = _stage_sum(torch.zeros_like(y0d), kd, DOPRI5.err, dt)
    tol = torch.maximum(y0d.abs(), yid.abs()) * rtol + atol
    return ks[1:], yi, _graph_norm(err / tol, rms) + yid.sum() * 0.0


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


def _cell_vjp(cell: nn.Module, x: Tensor, z: Tensor, g: Tensor, params: dict):
    """The RNN cell's vector-Jacobian product ``g^T d cell(x, z) / d(z, x, params)`` in one graph (the sequence
    adjoint's step at an observation)."""
    def f(zz, xx, prm):
        return torch.func.functional_call(cell, prm, (xx, zz))

    _, pull = torch.func.vjp(f, z, x, params)
    gz, gx, gp = pull(g)
    return gz, gx, gp


_BASES = {"field": _eval_field, "aug": _aug_field, "step": _dopri5_step, "adjoint step": _dopri5_adjoint_step}
_KIND_NAMES = {"field": "field", "aug": "adjoint field", "step": "dopri5 step", "adjoint step": "adjoint dopri5 step"}

#: inductor options of every compiled function: a C++ wrapper calls the kernels of a graph without going back to
#: Python between them (on these small states that bookkeeping costs more than the arithmetic).
_OPTIONS: dict = {"cpp_wrapper": True}
_COMPILED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_LOG: List[dict] = []
_WARNED: set = set()


def compile_log() -> List[dict]:
    """Every compile that ``Solver(compile=True)`` caused in this process, recompiles included (a new batch size,
    shape, dtype, device or grad mode, or a changed attribute of the dynamics that its compiled code depends on).

    Each entry: ``kind`` (``"dopri5 gap block"``, ``"adjoint dopri5 gap block"``, ``"dopri5 step"``,
    ``"adjoint dopri5 step"``, ``"field"``, ``"adjoint field"``, ``"cell vector-Jacobian product"``), ``dynamics``
    (the class name of the compiled module: the dynamics, or the ODE-RNN's cell for the last kind), ``state_shape``
    (the full shape, batch included), ``dtype``, ``device``, ``grad`` (grad mode), ``recompile`` (``False`` for the
    first compile of this kind for this dynamics) and ``seconds``, the wall time of the call that compiled (tracing
    and compiling included; a compile found in torch's on-disk cache is fast).

    Calls that autograd does not record are traced once per input signature (shapes, strides, dtypes, device,
    constants) and per state of the module (parameter and buffer shapes, training flags, plain attributes, read once
    per forward or backward pass); the others go through ``torch.compile`` and its guards."""
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


def _entry(dyn: nn.Module) -> dict:
    """The compile state of ``dyn`` (created on first use)."""
    entry = _COMPILED.get(dyn)
    if entry is None:
        entry = _COMPILED[dyn] = {"eager": False, "seen": set()}
    return entry


def _can_compile(entry: dict, device: torch.device) -> bool:
    """Whether a compiler for ``device`` exists; without one, ``entry`` runs eagerly from now on (one warning)."""
    if _compiler_available(device):
        return True
    entry["eager"] = True
    _warn_once(f"nocompiler-{device.type}",
               f"Solver(compile=True): no compiler for {device.type} was found (a C++ compiler such as g++ on "
               f"the CPU, triton on CUDA); running the solver loop eagerly")
    return False


def _compiled(dyn: nn.Module, kind: str, z: Tensor) -> Optional[Callable]:
    """The compiled evaluation ``kind`` for ``dyn`` (built on first use), or ``None`` to run eagerly."""
    entry = _entry(dyn)
    if entry["eager"]:
        return None
    fn = entry.get(kind)
    if fn is not None:
        return fn
    if not _can_compile(entry, z.device):
        return None
    # static shapes: far less per-call overhead than dynamic ones; a new batch size compiles once more
    # fullgraph: a graph break would put host synchronisations back into a step; it (and reaching torch's
    # recompile limit) raises, and call_compiled then warns once and runs eagerly
    fn = entry[kind] = torch.compile(_fresh(_BASES[kind], f"{len(_LOG)}_{id(dyn):x}"), dynamic=False,
                                     fullgraph=True, options=dict(_OPTIONS) or None)
    return fn


# -- direct compiled calls (autograd not recording) -----------------------------------------------------------------
#: Calls that autograd does not record (the gap blocks, the adjoint's steps and fields, the cell's vector-Jacobian
#: products) bypass ``torch.compile``'s frame evaluation: each (module, kind, input signature) is traced once with
#: ``make_fx`` into one graph over flat inputs (the module's parameters and buffers, then the call's tensors) and
#: compiled by inductor; a call then costs a dictionary lookup and the compiled code. ``torch.compile``'s entry
#: (guards, argument flattening, wrappers) cost 80-600 us per call on the plane-vibration model, several times the
#: arithmetic of a gap block (benchmarks/peers.md). Set to ``False`` to route every call through ``torch.compile``.
_DIRECT = True
_PASS = [0]
_PRIMITIVE = (bool, int, float, str, type(None))


def begin_pass() -> None:
    """Mark the start of a forward or backward pass of a sequence: direct calls re-read each module's parameters,
    buffers and plain attributes at their first call after this (once per pass, not per call)."""
    _PASS[0] += 1


class _ModuleState:
    """What a direct call of a module reads besides its arguments: its parameters and buffers (detached aliases, so
    in-place optimizer updates are seen) and ``sig``, a number that changes when anything the traced code baked in
    changes (parameter/buffer names, shapes, dtypes, devices; training flags and plain attributes)."""

    __slots__ = ("names", "tensors", "sig", "pass_", "subsets")

    def __init__(self, names, tensors, sig, pass_) -> None:
        self.names, self.tensors, self.sig, self.pass_ = names, tensors, sig, pass_
        self.subsets: dict = {}

    def subset(self, keep: Optional[tuple]) -> tuple:
        """The tensors at positions ``keep`` (all for ``None``), cached for this pass."""
        if keep is None:
            return self.tensors
        out = self.subsets.get(keep)
        if out is None:
            out = self.subsets[keep] = tuple(self.tensors[i] for i in keep)
        return out


def _has_hooks(dyn: nn.Module) -> bool:
    from torch.nn.modules import module as _m
    if _m._global_forward_hooks or _m._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in dyn.modules())


def _module_state(dyn: nn.Module, entry: dict) -> Optional[_ModuleState]:
    """The module's state for direct calls (cached for the current pass), or ``None`` when the module has forward
    hooks (their side effects would run only while tracing: those calls go through ``torch.compile``)."""
    state = entry.get("state")
    if state is not None and state.pass_ == _PASS[0]:
        return state
    if _has_hooks(dyn):
        entry["state"] = None
        return None
    named = list(dyn.named_parameters()) + list(dyn.named_buffers())
    names = tuple(n for n, _ in named)
    tensors = tuple(t.detach() for _, t in named)
    finger = [names, tuple((t.shape, t.stride(), t.dtype, t.device) for t in tensors)]
    for m in dyn.modules():
        finger.append(m.training)
        for k, v in m.__dict__.items():
            if k.startswith("_") or isinstance(v, (Tensor, nn.Module)):
                continue
            if isinstance(v, _PRIMITIVE) or (type(v) is tuple and all(isinstance(x, _PRIMITIVE) for x in v)):
                finger.append((k, v))
            else:  # functions, lists, other objects: by identity
                finger.append((k, id(v)))
    sigs = entry.setdefault("sigs", {})
    sig = sigs.setdefault(tuple(finger), len(sigs))
    state = entry["state"] = _ModuleState(names, tensors, sig, _PASS[0])
    return state


def _flatten(args: tuple, with_sig: bool):
    """Tensors of ``args`` (tensors, lists of tensors, dicts of tensors and constants) in order, the structure, and
    (``with_sig``) the signature: shape, stride, dtype and device of every tensor, and the constants."""
    tensors: list = []
    struct: list = []
    sig: list = []
    for a in args:
        if isinstance(a, Tensor):
            tensors.append(a)
            struct.append(None)
        elif type(a) is list:
            tensors.extend(a)
            struct.append(len(a))
        elif type(a) is dict:
            tensors.extend(a.values())
            struct.append(("dict", tuple(a)))
        else:
            struct.append(("const", a))
    if with_sig:
        sig = [(t.shape, t.stride(), t.dtype, t.device) for t in tensors]
    return tensors, tuple(struct), sig


def _unflatten(tensors, struct) -> list:
    it = iter(tensors)
    out = []
    for s in struct:
        if s is None:
            out.append(next(it))
        elif type(s) is int:
            out.append([next(it) for _ in range(s)])
        elif s[0] == "const":
            out.append(s[1])
        else:
            out.append({k: next(it) for k in s[1]})
    return out


def _out_spec(out):
    """The structure of a compiled function's result: a tensor, or (nested) tuples/lists/dicts of tensors."""
    if isinstance(out, Tensor):
        return None
    if isinstance(out, dict):
        return ("d", tuple(out), tuple(_out_spec(v) for v in out.values()))
    return ("t" if isinstance(out, tuple) else "l", tuple(_out_spec(v) for v in out))


def _out_flat(out, acc: list) -> list:
    if isinstance(out, Tensor):
        acc.append(out)
    else:
        for v in (out.values() if isinstance(out, dict) else out):
            _out_flat(v, acc)
    return acc


def _builder(spec) -> Callable:
    """A function that rebuilds the structure ``spec`` (:func:`_out_spec`) from the flat list of a compiled call's
    outputs: one expression generated once per compiled function (no recursion per call)."""
    counter = iter(range(1 << 30))

    def expr(sp) -> str:
        if sp is None:
            return f"x[{next(counter)}]"
        if sp[0] == "d":
            return "{" + ", ".join(f"{k!r}: {expr(v)}" for k, v in zip(sp[1], sp[2])) + "}"
        items = "".join(expr(v) + ", " for v in sp[1])
        return f"({items})" if sp[0] == "t" else f"[{items}]"

    return eval(f"lambda x: {expr(spec)}", {})  # noqa: S307 (keys are the module's own parameter names, via repr)


class _Runner(nn.Module):
    """Holds the module while tracing, so that ``functional_call`` can swap in the traced parameters and buffers."""

    def __init__(self, dyn: nn.Module, base: Callable) -> None:
        super().__init__()
        self.dyn = dyn
        self.base = base

    def forward(self, *args):
        return self.base(self.dyn, *args)


def _build_direct(dyn: nn.Module, kind: str, state: _ModuleState, struct: tuple, tensors: list, graphs: dict):
    """Trace ``kind`` of ``dyn`` over flat inputs with make_fx and compile it with inductor. A traced graph equal to
    one compiled before for this module (code and input layouts; e.g. after ``model.eval()`` for a dynamics that
    never reads ``training``) reuses that compiled code. Returns ``(fn, output builder, kept parameters)`` and
    whether it compiled."""
    from torch._inductor.compile_fx import compile_fx
    from torch.fx.experimental.proxy_tensor import make_fx

    runner = _Runner(dyn, _BASES[kind])
    # parameters that the call passes itself (the adjoint's and the cell product's ``params``) are not passed twice
    given = {k for s in struct if type(s) is tuple and s[0] == "dict" for k in s[1]}
    keep = tuple(i for i, k in enumerate(state.names) if k not in given)
    keys = ["dyn." + state.names[i] for i in keep]
    n = len(keep)
    spec: list = []

    def flat(*xs):
        args = _unflatten(xs[n:], struct)
        params = dict(zip(keys, xs[:n]))
        for a in args:  # every parameter the traced code reads is an input: none is baked in as a constant
            if type(a) is dict:
                params.update(("dyn." + k, v) for k, v in a.items())
        out = torch.func.functional_call(runner, params, tuple(args))
        spec.append(_out_spec(out))
        return _out_flat(out, [])

    keep = None if n == len(state.names) else keep
    inputs = [*state.subset(keep), *tensors]
    gm = make_fx(flat, tracing_mode="fake")(*inputs)
    same = None
    if not any(True for _ in gm.named_buffers()) and not any(n.op == "get_attr" for n in gm.graph.nodes):
        same = (kind, gm.code, keep, tuple((t.shape, t.stride(), t.dtype, t.device) for t in inputs))
        if same in graphs:
            return graphs[same], False
    hit = (compile_fx(gm, inputs, config_patches=dict(_OPTIONS)), _builder(spec[0]), keep)
    if same is not None:
        graphs[same] = hit
    return hit, True


def _call_direct(dyn: nn.Module, kind: str, z: Tensor, args: tuple, eager: Callable, key: Optional[tuple]):
    """:func:`call_compiled` for calls autograd does not record (see ``_DIRECT``)."""
    entry = _entry(dyn)
    if entry["eager"]:
        return eager(*args)
    state = _module_state(dyn, entry)
    if state is None:
        return _call_dynamo(dyn, kind, z, args, eager)
    tensors, struct, sig = _flatten(args, key is None)
    full = (kind, state.sig, struct, *(sig if key is None else key))
    direct = entry.setdefault("direct", {})
    hit = direct.get(full)
    if hit is None:
        if not _can_compile(entry, z.device):
            return eager(*args)
        counts = entry.setdefault("direct counts", {})
        if counts.get(kind, 0) >= torch._dynamo.config.recompile_limit:
            _limit_warning(dyn, kind, z)
            return eager(*args)
        start = time.perf_counter()
        try:
            hit, compiled = _build_direct(dyn, kind, state, struct, tensors, entry.setdefault("graphs", {}))
        except Exception as e:  # a backend failure: say so once and go on eagerly (eager re-raises genuine errors)
            _compile_failed(dyn, e)
            return eager(*args)
        direct[full] = hit
        if compiled:
            counts[kind] = counts.get(kind, 0) + 1
            _log_compile(dyn, kind, z, time.perf_counter() - start)
    fn, build, keep = hit
    return build(fn(*state.subset(keep), *tensors))


def _graphs_compiled() -> int:
    return _DYNAMO_COUNTERS["stats"]["unique_graphs"]


def _limit_warning(dyn: nn.Module, kind: str, z: Tensor) -> None:
    _COMPILED[dyn]["eager"] = True
    limit = torch._dynamo.config.recompile_limit
    _warn_once(f"limit-{id(dyn):x}",
               f"Solver(compile=True): torch's recompile limit ({limit} compiles per function) was reached for "
               f"the {_KIND_NAMES[kind]} of {type(dyn).__name__} (state {tuple(z.shape)}, {z.dtype}): each new "
               f"batch size, shape, dtype or grad mode, and each change of an attribute the compiled code reads, "
               f"compiles once more. This dynamics now runs eagerly (slower, same results). Keep batch sizes "
               f"fixed (e.g. drop_last=True), or raise torch._dynamo.config.recompile_limit; odernn.compile_log() "
               f"lists the compiles")


def _compile_failed(dyn: nn.Module, e: Exception) -> None:
    _COMPILED[dyn]["eager"] = True
    _warn_once(f"fail-{type(dyn).__name__}", f"Solver(compile=True): compiling {type(dyn).__name__} failed "
                                             f"({type(e).__name__}: {e}); running the solver loop eagerly")


def _log_compile(dyn: nn.Module, kind: str, z: Tensor, seconds: float) -> None:
    entry = _COMPILED[dyn]
    recompile = kind in entry["seen"]
    entry["seen"].add(kind)
    _LOG.append(dict(kind=_KIND_NAMES[kind], dynamics=type(dyn).__name__, state_shape=tuple(z.shape),
                     dtype=str(z.dtype), device=str(z.device), grad=torch.is_grad_enabled(),
                     recompile=recompile, seconds=seconds))


def call_compiled(dyn: nn.Module, kind: str, z: Tensor, args: tuple, eager: Callable,
                  key: Optional[tuple] = None):
    """Call the compiled ``kind`` of ``dyn`` (logging every call that compiled), or ``eager(*args)`` without one.

    Calls that autograd does not record (grad mode off: the gap blocks, the adjoint's steps, the cell's
    vector-Jacobian products) run *direct* compiled code (:func:`_call_direct`); recorded ones go through
    ``torch.compile``. When torch's recompile limit (``torch._dynamo.config.recompile_limit``) is reached for ``dyn``,
    or compiling fails, one ``RuntimeWarning`` says so and ``dyn`` runs eagerly from then on.

    ``key``: for direct calls, a tuple from which the shape, stride, dtype and device of every tensor in ``args``
    follow (given the module's parameters); without it they are read from each tensor."""
    if _DIRECT and not torch.is_grad_enabled():
        return _call_direct(dyn, kind, z, args, eager, key)
    return _call_dynamo(dyn, kind, z, args, eager)


def _call_dynamo(dyn: nn.Module, kind: str, z: Tensor, args: tuple, eager: Callable):
    fn = _compiled(dyn, kind, z)
    if fn is None:
        return eager(*args)
    before = _graphs_compiled()
    start = time.perf_counter()
    try:
        out = fn(dyn, *args)
    except FailOnRecompileLimitHit:
        _limit_warning(dyn, kind, z)
        return eager(*args)
    except Exception as e:  # a backend failure: say so once and go on eagerly (eager re-raises genuine errors)
        _compile_failed(dyn, e)
        return eager(*args)
    if _graphs_compiled() != before:
        _log_compile(dyn, kind, z, time.perf_counter() - start)
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

    buffer: dict = {}

    def step(t: float, dt: float, y: List[Tensor], f: List[Tensor]):
        z = y[0]
        if torch.is_grad_enabled():  # autograd may keep the step size for the backward pass: a fresh tensor
            dt_t = torch.tensor(dt, dtype=z.dtype, device=z.device)
        else:  # one 0-d tensor per solve, refilled (a host-to-device copy, no allocation)
            dt_t = buffer.get(z.dtype)
            if dt_t is None or dt_t.device != z.device:
                dt_t = buffer[z.dtype] = torch.empty((), dtype=z.dtype, device=z.device)
            dt_t.fill_(dt)
        if adjoint:
            params = dict(zip(gap.names, gap.params))
            out = call_compiled(gap.dyn, "adjoint step", z, (gap.time(0.0), z, y[1], f[0], f[1], dt_t, gap.scale,
                                                              params, cfg.rtol, cfg.atol, rms), no_compiler)
        else:
            out = call_compiled(gap.dyn, "step", z, (gap.time(0.0), z, f[0], dt_t, gap.scale, cfg.rtol, cfg.atol,
                                                      rms), no_compiler)
        if out is None:
            return solve.trial_step(t, dt, y, f)
        gap.count(adjoint, stages)
        if adjoint:
            kz, ka, kp, z1, a1, ratio = out
            ks = [f] + [[kz[j], ka[j], *(kp[j][n] for n in gap.names)] for j in range(stages)]
            return ks, [z1, a1], ratio
        ks1, y1, ratio = out
        if gap.counters and y1.requires_grad:
            y1.register_hook(BackwardCount(gap.counters, stages))
        return [f] + [[k] for k in ks1], [y1], ratio

    return step


# -- whole gaps: a block of trial steps with the controller in the graph ----------------------------------------------
#: Trial steps one compiled gap block holds, per device type. A block computes all of them (the ones after the gap's
#: end are masked), so more steps cost arithmetic and save host synchronisations. On the CPU, where a synchronisation is
#: only a read, one step per block measured fastest (plane-vibration HBNODE-RNN, benchmarks/peers.md: 0.117 s with 1,
#: 0.126 s with 2); a GPU waits for every synchronisation, so there a block holds two steps: with warm starts about
#: 98% of gaps finish within two (PV, Walker2D), i.e. one synchronisation per gap. Not measured on a GPU.
GAP_BLOCK_STEPS = {"cpu": 1}
GAP_BLOCK_STEPS_OTHER = 2


def gap_block_steps(device: torch.device) -> int:
    return GAP_BLOCK_STEPS.get(device.type, GAP_BLOCK_STEPS_OTHER)


_F64 = torch.float64


def _dense_at(y0: Tensor, y1: Tensor, ks: List[Tensor], dt: Tensor, x: Tensor) -> Tensor:
    """Dormand-Prince's quartic dense output on one step (the arithmetic of :func:`odernn._rk.dense_output`);
    ``dt`` in the state dtype, ``x`` the float64 fraction of the step."""
    y_mid = _stage_sum(y0, ks, DOPRI5_MID, dt)
    f0, f1 = ks[0], ks[-1]
    a = (f1 - f0) * (2 * dt) + (y1 + y0) * -8.0 + y_mid * 16.0
    b = f0 * (5 * dt) + f1 * (-3 * dt) + y0 * 18.0 + y1 * 14.0 + y_mid * -32.0
    cc = f1 * dt + f0 * (-4 * dt) + y0 * -11.0 + y1 * -5.0 + y_mid * 16.0
    d = f0 * dt
    dtype = y0.dtype
    x2 = x * x
    return y0 + x.to(dtype) * d + x2.to(dtype) * cc + (x2 * x).to(dtype) * b + (x2 * x2).to(dtype) * a


class _Control(NamedTuple):
    """One trial step's decision in a gap block (float64 / bool 0-d tensors): accepted, reached the gap's end, the
    new solve time if accepted, whether it lands exactly on the end, the fraction of the step at the end (for the
    dense output), the next step size, and the carried ``problem`` flag and trial count."""

    accept: Tensor
    ends: Tensor
    s_new: Tensor
    exact: Tensor
    x: Tensor
    dt_next: Tensor
    problem: Tensor
    trials: Tensor


def _control(s: Tensor, dt: Tensor, ratio: Tensor, active: Tensor, problem: Tensor, trials: Tensor,
             s_end: float) -> _Control:
    """The adaptive controller (:meth:`odernn._rk.RKSolve.adaptive`) for one trial step of a gap block: whether it
    counts, whether it is accepted, the next step size, and whether something needs the host (a non-finite error
    estimate or step size, an underflowing step), plus where the step ends relative to ``s_end``."""
    trials = trials + active.to(torch.int64)
    problem = problem | (active & ~(torch.isfinite(dt) & (s + dt > s))) | (active & ~torch.isfinite(ratio))
    ok = active & ~problem
    accept = ok & (ratio <= 1)
    lower = torch.where(ratio < 1, torch.ones_like(ratio), torch.full_like(ratio, DFACTOR))
    factor = torch.clamp(torch.maximum(SAFETY / ratio ** (1.0 / DOPRI5.order), lower), max=IFACTOR)
    factor = torch.where(ratio == 0, torch.full_like(ratio, IFACTOR), factor)
    s_new = s + dt
    return _Control(accept, accept & (s_new >= s_end), s_new, s_new == s_end, (s_end - s) / dt,
                    torch.where(ok, dt * factor, dt), problem, trials)


def _at_end(c: _Control, y0: Tensor, y1: Tensor, ks: List[Tensor], dts: Tensor, y_end: Tensor) -> Tensor:
    """``y_end`` updated where the step reached the gap's end: the new state if it lands exactly there, else the
    dense output at the end."""
    return torch.where(c.ends, torch.where(c.exact, y1, _dense_at(y0, y1, ks, dts, c.x)), y_end)


def _dopri5_gap(dyn: nn.Module, t: Tensor, y: Tensor, f: Tensor, fresh: Tensor, s: Tensor, dt: Tensor,
                y_end: Tensor, last: Tensor, scale: Tensor, rtol: float, atol: float, rms: bool, steps: int,
                s_end: float):
    """Up to ``steps`` adaptive Dormand-Prince trial steps of ``dz/ds = scale * f(t, z)`` towards ``s_end``, with the
    controller and the dense output at ``s_end`` in the graph (no host synchronisation inside).

    ``fresh`` (bool 0-d): evaluate ``f`` at the start (a new gap) instead of using the given one (a continuation).
    ``s``, ``dt``, ``last`` (float64 0-d): solve time, proposed step, last accepted step. Trials after the end is
    reached are computed and discarded (masked). Returns the new carry ``(y, f, s, dt, y_end, last)`` and
    ``stats`` (float64: reached the end, needs the host, counted trials, last accepted step)."""
    f = torch.where(fresh, dyn(t, y) * scale, f)
    done = s >= s_end
    problem = torch.zeros((), dtype=torch.bool, device=y.device)
    trials = torch.zeros((), dtype=torch.int64, device=y.device)
    for _ in range(steps):
        active = ~(done | problem)
        dts = dt.to(y.dtype)
        ks = [f]
        yi = y
        for row in DOPRI5.rows:
            yi = _stage_sum(y, ks, row, dts)
            ks.append(dyn(t, yi) * scale)
        err = _stage_sum(torch.zeros_like(y), ks, DOPRI5.err, dts)
        tol = torch.maximum(y.abs(), yi.abs()) * rtol + atol
        ratio = (_graph_norm(err / tol, rms) + yi.sum() * 0.0).to(_F64)
        c = _control(s, dt, ratio, active, problem, trials, s_end)
        y_end = _at_end(c, y, yi, ks, dts, y_end)
        last = torch.where(c.accept, dt, last)
        y = torch.where(c.accept, yi, y)
        f = torch.where(c.accept, ks[-1], f)
        s, dt, problem, trials, done = torch.where(c.accept, c.s_new, s), c.dt_next, c.problem, c.trials, done | c.ends
    stats = torch.stack([done.to(_F64), problem.to(_F64), trials.to(_F64), last])
    return y, f, s, dt, y_end, last, stats


def _dopri5_adjoint_gap(dyn: nn.Module, t: Tensor, z: Tensor, a: Tensor, p: List[Tensor], fz: Tensor, fa: Tensor,
                        fp: List[Tensor], fresh: Tensor, s: Tensor, dt: Tensor, z_end: Tensor, a_end: Tensor,
                        p_end: List[Tensor], scale: Tensor, params: dict, rtol: float, atol: float, rms: bool,
                        steps: int, s_end: float):
    """:func:`_dopri5_gap` for the adjoint system in reversed time: ``[z, a]`` steer the step (seminorm), the
    parameter-gradient channels ``p`` (one tensor per parameter, in the order of ``params``) are summed on accepted
    steps and interpolated at the end."""
    names = list(params)

    def g(zz, prm):
        return torch.func.functional_call(dyn, prm, (t, zz)) * scale

    def field(zz, aa):
        out, pull = torch.func.vjp(g, zz, params)
        gz, gp = pull(aa)
        return -out, gz, [gp[n] for n in names]

    fz0, fa0, fp0 = field(z, a)
    fz = torch.where(fresh, fz0, fz)
    fa = torch.where(fresh, fa0, fa)
    fp = [torch.where(fresh, x0, x) for x0, x in zip(fp0, fp)]
    done = s >= s_end
    problem = torch.zeros((), dtype=torch.bool, device=z.device)
    trials = torch.zeros((), dtype=torch.int64, device=z.device)
    for _ in range(steps):
        active = ~(done | problem)
        dts = dt.to(z.dtype)
        kz, ka, kp = [fz], [fa], [fp]
        zi, ai = z, a
        for row in DOPRI5.rows:
            zi = _stage_sum(z, kz, row, dts)
            ai = _stage_sum(a, ka, row, dts)
            oz, oa, op = field(zi, ai)
            kz.append(oz)
            ka.append(oa)
            kp.append(op)
        ez = _stage_sum(torch.zeros_like(z), kz, DOPRI5.err, dts)
        ea = _stage_sum(torch.zeros_like(a), ka, DOPRI5.err, dts)
        rz = _graph_norm(ez / (torch.maximum(z.abs(), zi.abs()) * rtol + atol), rms)
        ra = _graph_norm(ea / (torch.maximum(a.abs(), ai.abs()) * rtol + atol), rms)
        ratio = (torch.maximum(rz, ra) + zi.sum() * 0.0 + ai.sum() * 0.0).to(_F64)
        c = _control(s, dt, ratio, active, problem, trials, s_end)
        pi = [_stage_sum(p[j], [k[j] for k in kp], DOPRI5.weights, dts) for j in range(len(p))]
        z_end = _at_end(c, z, zi, kz, dts, z_end)
        a_end = _at_end(c, a, ai, ka, dts, a_end)
        p_end = [_at_end(c, p[j], pi[j], [k[j] for k in kp], dts, p_end[j]) for j in range(len(p))]
        z = torch.where(c.accept, zi, z)
        a = torch.where(c.accept, ai, a)
        p = [torch.where(c.accept, n1, n0) for n1, n0 in zip(pi, p)]
        fz = torch.where(c.accept, kz[-1], fz)
        fa = torch.where(c.accept, ka[-1], fa)
        fp = [torch.where(c.accept, n1, n0) for n1, n0 in zip(kp[-1], fp)]
        s, dt, problem, trials, done = torch.where(c.accept, c.s_new, s), c.dt_next, c.problem, c.trials, done | c.ends
    stats = torch.stack([done.to(_F64), problem.to(_F64), trials.to(_F64)])
    return z, a, p, fz, fa, fp, s, dt, z_end, a_end, p_end, stats


_BASES.update({"gap": _dopri5_gap, "adjoint gap": _dopri5_adjoint_gap, "cell vjp": _cell_vjp})
_KIND_NAMES.update({"gap": "dopri5 gap block", "adjoint gap": "adjoint dopri5 gap block",
                    "cell vjp": "cell vector-Jacobian product"})

_CONST: dict = {}


def _const(value, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A cached 0-d constant (the blocks' flags and start times; never written to)."""
    key = (value, dtype, device)
    c = _CONST.get(key)
    if c is None:
        c = _CONST[key] = torch.tensor(value, dtype=dtype, device=device)
    return c


_ZEROS: dict = {}
_CACHE_ZEROS = True


def cached_zeros(x: Tensor, slot: int) -> Tensor:
    """Zeros shaped like ``x`` for input ``slot`` of a gap block: what a first block computes itself (or carries
    until the gap's end) is passed in as these placeholders, and the adjoint's parameter channels start from them
    (slots from 1000). Cached per slot, shape, dtype and device: the solves only read their inputs and return new
    tensors, so nothing writes to them; never hand one to code that may. One tensor per slot, since dynamo guards on
    inputs aliasing each other."""
    if not _CACHE_ZEROS:
        return torch.zeros_like(x)
    key = (slot, x.shape, x.dtype, x.device)
    out = _ZEROS.get(key)
    if out is None:
        out = _ZEROS[key] = torch.zeros(x.shape, dtype=x.dtype, device=x.device)
    return out


_PLACEHOLDERS: dict = {}


def _placeholders(z: Tensor, a: Tensor, p: List[Tensor]) -> tuple:
    """The adjoint block's placeholders (:func:`cached_zeros`) for ``fz, fa, fp, z_end, a_end, p_end``, cached per
    shapes, dtypes and device."""
    key = (z.shape, z.dtype, z.device, a.shape, a.dtype, *((x.shape, x.dtype, x.device) for x in p))
    out = _PLACEHOLDERS.get(key)
    if out is None or not _CACHE_ZEROS:
        n = len(p)
        out = _PLACEHOLDERS[key] = (cached_zeros(z, 0), cached_zeros(a, 1),
                                    [cached_zeros(x, 2 + c) for c, x in enumerate(p)],
                                    cached_zeros(z, 2 + n), cached_zeros(a, 3 + n),
                                    [cached_zeros(x, 4 + n + c) for c, x in enumerate(p)])
    return out


def compiled_gap(gap, solve, y0: List[Tensor], s_start: float, s_end: float, first: float, adjoint: bool,
                 extra_evals: int = 0):
    """The adaptive solve of one gap as compiled blocks of :func:`gap_block_steps` trial steps
    (``Solver(compile=True)``, dopri5, time-independent fields, no autograd recording).

    Every block runs the controller, the dense output and (for the adjoint) the parameter-gradient sums in one graph;
    the host reads three integers per block (one synchronisation) to learn whether the gap is done. The arithmetic is
    that of :meth:`odernn._rk.RKSolve.adaptive` (same accepted steps and NFE; values to round-off).

    Args:
        gap: the fused loop's gap field (``dyn``, ``scale``, ``time``, ``count``; ``params``, ``names`` for the
            adjoint).
        solve: the :class:`odernn._rk.RKSolve` of the gap (its settings).
        y0: ``[z]`` forward, ``[z, a, *parameter channels]`` adjoint.
        s_start, s_end: the solve interval in rescaled time.
        first: the first trial step.
        adjoint: the adjoint system (reversed time) instead of the forward one.
        extra_evals: evaluations already spent on this gap (the initial-step rule), counted on success.

    Returns:
        ``(ys at s_end, last accepted step)``, or ``None`` when the general loop must solve the gap from its start:
        no compiler, a non-finite error estimate or step size, an underflowing step or more than ``max_steps``
        trials (the general loop then retries, counts and raises exactly as it would have).
    """
    cfg = solve.cfg
    # static shapes and strides: contiguous, detached inputs (views into the sequence's states would otherwise
    # compile once per stride, and a state that requires grad once more)
    y0 = [x.detach().contiguous() for x in y0]
    z = y0[0]
    dev = z.device
    rms = cfg.norm == "rms"
    kind = "adjoint gap" if adjoint else "gap"
    steps = gap_block_steps(dev)
    s = _const(float(s_start), _F64, dev)
    dt = _const(1.0, _F64, dev) if first == 1.0 else torch.tensor(first, dtype=_F64, device=dev)
    fresh = _const(True, torch.bool, dev)
    t = gap.time(0.0)
    total = 0
    # placeholders for what a first block computes itself, each its own tensor: dynamo guards on inputs aliasing
    # each other, so passing one tensor twice would compile the block a second time for continuations
    if adjoint:
        params = dict(zip(gap.names, gap.params))
        z, a, p = y0[0], y0[1], list(y0[2:])
        fz, fa, fp, z_end, a_end, p_end = _placeholders(z, a, p)
    else:
        y, f, y_end, last = z, cached_zeros(z, 0), cached_zeros(z, 1), _const(-1.0, _F64, dev)
    # every tensor input's shape, stride, dtype and device follows from these (and the module's parameters): the
    # signature of a direct call, without reading each input's
    key = (z.shape, z.dtype, dev, gap.scale.shape, gap.scale.dtype, t.shape, t.dtype)
    while True:
        if adjoint:
            out = call_compiled(gap.dyn, kind, z, (t, z, a, p, fz, fa, fp, fresh, s, dt, z_end, a_end, p_end,
                                                   gap.scale, params, cfg.rtol, cfg.atol, rms, steps,
                                                   s_end), no_compiler, key)
        else:
            out = call_compiled(gap.dyn, kind, z, (t, y, f, fresh, s, dt, y_end, last, gap.scale, cfg.rtol,
                                                   cfg.atol, rms, steps, s_end), no_compiler, key)
        if out is None:
            return None
        stats = out[-1].tolist()  # the one host synchronisation of a block
        done, problem = stats[0] != 0, stats[1] != 0
        total += int(stats[2])
        if problem or total > cfg.max_steps:
            return None
        if adjoint:
            z, a, p, fz, fa, fp, s, dt, z_end, a_end, p_end, _ = out
        else:
            y, f, s, dt, y_end, last, _ = out
        if done:
            break
        fresh = _const(False, torch.bool, dev)
    gap.count(adjoint, extra_evals + 1 + len(DOPRI5.rows) * total)
    if adjoint:
        return [z_end, a_end, *p_end], None
    return [y_end], stats[3]
