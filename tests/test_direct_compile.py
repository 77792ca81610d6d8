"""Direct compiled calls (``odernn._compile._DIRECT``): the gap blocks, adjoint steps and cell products that autograd
does not record run code traced with make_fx and compiled by inductor, without ``torch.compile``'s frame evaluation.
They must give what ``torch.compile`` gives, bit for bit, and see every change of the module that ``torch.compile``'s
guards would have seen."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

import odernn
from odernn import _compile

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="needs a C++ compiler")

B, T, K, H, O = 3, 5, 2, 3, 2


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, K, generator=g, dtype=torch.float64)
    t = torch.cumsum(0.2 + torch.rand(B, T, generator=g, dtype=torch.float64), dim=1)
    return x, t


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    m = odernn.ODERNN("hbnode", K, H, O, rtol=1e-7, atol=1e-8, **kw).double()
    m.solver = m.solver.replace(compile=True)
    return m


def _step(m, x, t):
    m.zero_grad()
    with odernn.nfe_counter(m) as nfe:
        out = m(x, t)
        out.pow(2).sum().backward()
    return out.detach(), [p.grad.clone() for p in m.parameters()], (nfe.forward, nfe.backward)


def _direct_calls(monkeypatch):
    """Counts the direct calls that ran compiled code, in all (``"n"``) and per module class name."""
    calls = {"n": 0}
    build = _compile._build_direct

    def counting_build(dyn, *a, **k):
        (fn, spec, keep), compiled = build(dyn, *a, **k)
        name = type(dyn).__name__

        def fn_counted(*xs):
            calls["n"] += 1
            calls[name] = calls.get(name, 0) + 1
            return fn(*xs)
        return (fn_counted, spec, keep), compiled
    monkeypatch.setattr(_compile, "_build_direct", counting_build)
    return calls


@pytest.mark.parametrize("warm_start", [True, "gap"])
def test_direct_calls_equal_torch_compile_bit_for_bit(warm_start, monkeypatch):
    """The same accepted steps, NFE, outputs and gradients as the torch.compile path, bitwise (the same graphs, the
    same inductor kernels), and the direct path did run."""
    calls = _direct_calls(monkeypatch)
    x, t = _data(1)
    res = []
    for direct in (False, True):
        monkeypatch.setattr(_compile, "_DIRECT", direct)
        res.append(_step(_model(warm_start=warm_start), x, t))
    (o0, g0, n0), (o1, g1, n1) = res
    assert n1 == n0
    assert torch.equal(o1, o0)
    assert all(torch.equal(a, b) for a, b in zip(g1, g0))
    assert calls["n"] > 0


def test_optimizer_updates_and_replaced_parameters_are_seen(monkeypatch):
    """In-place updates (an optimizer step) and a parameter replaced by a new tensor both reach the compiled code:
    results equal an eager model with the same weights."""
    monkeypatch.setattr(_compile, "_DIRECT", True)
    x, t = _data(2)
    m, ref = _model(), _model()
    ref.solver = ref.solver.replace(compile=False)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    _step(m, x, t)
    opt.step()
    lin = next(mod for mod in m.dynamics.modules() if isinstance(mod, nn.Linear))
    lin.weight = nn.Parameter(lin.weight.detach() * 1.5)
    ref.load_state_dict(m.state_dict())
    (o, g, n), (oe, ge, ne) = _step(m, x, t), _step(ref, x, t)
    assert n == ne
    torch.testing.assert_close(o, oe, rtol=1e-10, atol=1e-12)
    for a, b in zip(g, ge):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_a_changed_plain_attribute_compiles_again(monkeypatch):
    """A plain attribute that the traced code baked in (HBNODE's ``epsilon``) changed between passes: a new compile
    (listed by compile_log), and results that follow the new value."""
    monkeypatch.setattr(_compile, "_DIRECT", True)
    x, t = _data(3)
    m = _model()
    before = _step(m, x, t)
    start = len(odernn.compile_log())
    m.dynamics.epsilon = 0.5
    after = _step(m, x, t)
    assert len(odernn.compile_log()) > start
    ref = _model()
    ref.solver = ref.solver.replace(compile=False)
    ref.dynamics.epsilon = 0.5
    expect = _step(ref, x, t)
    assert after[2] == expect[2]
    torch.testing.assert_close(after[0], expect[0], rtol=1e-10, atol=1e-12)
    assert not torch.allclose(after[0], before[0])


@pytest.mark.filterwarnings("ignore:Solver.compile=True.. torch's recompile limit")
def test_modules_with_forward_hooks_go_through_torch_compile(monkeypatch):
    """A hook's side effects would run only while tracing: a module with forward hooks is not traced directly, and
    its hook runs on every call (as under torch.compile)."""
    monkeypatch.setattr(_compile, "_DIRECT", True)
    calls = _direct_calls(monkeypatch)
    x, t = _data(4)
    m = _model()
    seen = []
    handle = m.dynamics.register_forward_hook(lambda mod, inp, out: seen.append(1))
    m(x, t).sum().backward()  # the adjoint's forward and backward: no direct call of the dynamics
    handle.remove()
    assert calls.get("HBNODE", 0) == 0 and calls.get("GRUCell", 0) > 0  # the cell's products, without hooks, are
    assert len(seen) > 5


def test_eval_mode_reuses_the_compiled_code_when_the_graph_is_the_same(monkeypatch):
    """``model.eval()`` is part of what a direct call is keyed on (a dynamics may read ``training``); when the traced
    graph is the same, the compiled code is reused: nothing compiles again and nothing counts towards the recompile
    limit."""
    monkeypatch.setattr(_compile, "_DIRECT", True)
    x, t = _data(5)
    m = _model()
    with torch.no_grad():
        train_out = m(x, t)
        start = len(odernn.compile_log())
        m.eval()
        eval_out = m(x, t)
    assert len(odernn.compile_log()) == start
    assert torch.equal(train_out, eval_out)
    assert len(_compile._COMPILED[m.dynamics]["direct"]) > len(_compile._COMPILED[m.dynamics]["graphs"])

