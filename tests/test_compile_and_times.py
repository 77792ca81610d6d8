"""What ``Solver(compile=True)`` tells the user (every compile listed, the recompile limit announced), and what a
time-dependent field sees with a float32 model and float64 epoch times."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
from torch import nn

import odernn

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                    reason="needs a C++ compiler")


@needs_compiler
def test_every_compile_is_listed_and_reaching_the_recompile_limit_warns_once():
    """New batch sizes recompile: each compile is in compile_log(); past torch's recompile limit one warning says the
    dynamics now runs eagerly, and results stay right."""
    from odernn._compile import call_compiled

    torch.manual_seed(0)
    dyn = odernn.NODE(nn.Linear(3, 3))

    def eager(t, z, scale):
        return dyn(t, z) * scale

    start = len(odernn.compile_log())
    with torch._dynamo.config.patch(recompile_limit=2), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for b in (1, 2, 3, 4, 3):
            z = torch.randn(b, 3)
            args = (torch.zeros(()), z, torch.full((b, 1), 0.5))
            with torch.no_grad():
                out = call_compiled(dyn, "field", z, args, eager)
                torch.testing.assert_close(out, eager(*args))
    log = odernn.compile_log()[start:]
    assert [e["state_shape"] for e in log] == [(1, 3), (2, 3)]  # batch sizes included, recompiles listed
    assert [e["recompile"] for e in log] == [False, True]
    assert all(e["kind"] == "field" and e["seconds"] > 0 for e in log)
    limit = [w for w in caught if "recompile limit" in str(w.message)]
    assert len(limit) == 1 and issubclass(limit[0].category, RuntimeWarning)
    assert "runs eagerly" in str(limit[0].message) and "NODE" in str(limit[0].message)


class _Clock(nn.Module):
    """A time-dependent net: ``sin(t / 60) * w + lin(h)`` (a minute-scale cycle in absolute seconds)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.lin = nn.Linear(n, n)

    def forward(self, t, h):
        s = torch.sin(t / 60.0).to(h.dtype)  # t: 0-d, or (B,) per sample in an ODE-RNN
        return self.lin(h) + (s.unsqueeze(-1) if s.dim() == 1 else s)


def _epoch_data(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 2, generator=g)
    t = 1.7e9 + torch.cumsum(30.0 + 10 * torch.rand(2, 4, generator=g, dtype=dtype), dim=1)
    return x, t


@pytest.mark.parametrize("fused", [True, False])
def test_time_dependent_field_refuses_epoch_times_a_float32_model_cannot_resolve(fused):
    """float32 resolves 1.7e9 s only in steps of 128 s: a time-dependent field would read wrong times. Refused, with
    what to do; the same data relative to an origin run and agree with the float64 model."""
    torch.manual_seed(0)
    dyn = odernn.NODE(_Clock(3), time_dependent=True)
    m = odernn.ODERNN(dyn, 2, 3, 1, rtol=1e-6, atol=1e-7)
    m.solver = m.solver.replace(fused=fused)
    x, t = _epoch_data()
    with pytest.raises(ValueError, match=r"resolves only steps of 128.*Subtract an origin"):
        m(x, t)
    origin = t[:, :1]
    out32 = m(x, t - origin)  # relative times: resolved
    m64 = odernn.ODERNN(odernn.NODE(_Clock(3), time_dependent=True), 2, 3, 1, rtol=1e-6, atol=1e-7).double()
    m64.load_state_dict(m.state_dict())
    m64.solver = m.solver
    out64 = m64(x.double(), t - origin)
    torch.testing.assert_close(out32.double(), out64, rtol=1e-4, atol=1e-5)


def test_time_independent_models_keep_taking_epoch_times_with_float32():
    """Built-in dynamics without time dependence never read t: epoch seconds stay fine (no error, no warning)."""
    torch.manual_seed(0)
    m = odernn.ODERNN("hbnode", 2, 3, 1, rtol=1e-6, atol=1e-7)
    x, t = _epoch_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = m(x, t)
    torch.testing.assert_close(a, m(x, t - t[:, :1]), rtol=1e-5, atol=1e-6)


def test_a_custom_forward_gets_a_warning_not_an_error():
    """A dynamics with its own forward may not read t: warned, not refused."""

    class Mine(odernn.NODE):
        def forward(self, t, z):
            return self.net(z)

    torch.manual_seed(0)
    m = odernn.ODERNN(Mine(nn.Linear(3, 3)), 2, 3, 1, rtol=1e-6, atol=1e-7)
    x, t = _epoch_data()
    with pytest.warns(RuntimeWarning, match="if your forward ignores t"):
        m(x, t)
