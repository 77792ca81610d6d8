"""The lean Dormand-Prince step reproduces torchdiffeq's dopri5: same steps, same NFE, same results."""

import pytest
import torch
import torchdiffeq
from torch import nn

import odernn
from odernn._torchdiffeq import LEAN_DOPRI5

DT = torch.float64


class Field(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4)).to(DT)
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return self.net(y) * torch.cos(t) - 0.1 * y


@pytest.mark.parametrize("first_step", [None, 0.3])
@pytest.mark.parametrize("grid", [[0.0, 2.5], [0.0, 0.3, 1.1, 4.0], [1.0, -2.0]])
def test_matches_torchdiffeq_dopri5_forward(grid, first_step):
    torch.manual_seed(0)
    f = Field()
    y0 = torch.randn(8, 4, dtype=DT)
    t = torch.tensor(grid, dtype=DT)
    opts = {} if first_step is None else {"first_step": first_step}
    res = {}
    for method in ("dopri5", LEAN_DOPRI5):
        f.calls = 0
        accepted, rejected = [], []
        f.callback_accept_step = lambda t0, y, dt: accepted.append(float(dt))
        f.callback_reject_step = lambda t0, y, dt: rejected.append(float(dt))
        with torch.no_grad():
            out = torchdiffeq.odeint(f, y0, t, rtol=1e-7, atol=1e-9, method=method, options=dict(opts))
        res[method] = (out, f.calls, accepted, rejected)
    ref, lean = res["dopri5"], res[LEAN_DOPRI5]
    torch.testing.assert_close(lean[0], ref[0], rtol=1e-12, atol=1e-12)
    assert lean[1] == ref[1]  # NFE
    assert len(lean[2]) == len(ref[2]) and len(lean[3]) == len(ref[3])
    torch.testing.assert_close(torch.tensor(lean[2]), torch.tensor(ref[2]), rtol=1e-10, atol=0)


@pytest.mark.parametrize("adjoint", [False, True])
def test_matches_torchdiffeq_dopri5_gradients(adjoint):
    torch.manual_seed(1)
    f = Field()
    y0 = torch.randn(8, 4, dtype=DT, requires_grad=True)
    t = torch.tensor([0.0, 0.7, 2.0], dtype=DT)
    grads = {}
    solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
    for method in ("dopri5", LEAN_DOPRI5):
        kw = dict(adjoint_options={"norm": "seminorm"}) if adjoint else {}
        out = solve(f, y0, t, rtol=1e-8, atol=1e-9, method=method, **kw)
        grads[method] = torch.autograd.grad(out.sin().sum(), [y0, *f.parameters()])
    # Direct backprop through torchdiffeq also differentiates its step-size heuristics (a term of the order of the
    # local error); the lean solver treats step sizes as constants. The adjoint agrees to round-off.
    tol = dict(rtol=1e-9, atol=1e-11) if adjoint else dict(rtol=1e-6, atol=1e-8)
    for a, b in zip(grads["dopri5"], grads[LEAN_DOPRI5]):
        torch.testing.assert_close(a, b, **tol)


def test_odernn_uses_the_lean_solver_and_can_opt_out():
    x = torch.randn(4, 6, 2, dtype=DT)
    t = torch.cumsum(0.1 + torch.rand(4, 6, dtype=DT), 1)
    outs = []
    for lean in (True, False):
        torch.manual_seed(0)
        m = odernn.ODERNN("hbnode", 2, 3, 2, rtol=1e-8, atol=1e-8, lean=lean).double()
        with odernn.nfe_counter(m) as nfe:
            outs.append((m(x, t), nfe.forward))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-10, atol=1e-10)
    assert outs[0][1] == outs[1][1]
