"""NFE accounting: counts equal hand-counted evaluations, phases are separated, the seminorm helps."""

import pytest
import torch
from torch import nn

import odernn


class CountingNet(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.lin = nn.Linear(n, n)
        self.calls = 0

    def forward(self, h):
        self.calls += 1
        return torch.tanh(self.lin(h))


def data(B=4, T=5, k=2):
    x = torch.randn(B, T, k)
    t = torch.cumsum(0.2 + torch.rand(B, T), 1)
    return x, t


@pytest.mark.parametrize("name", ["node", "hbnode", "ghbnode"])
def test_adjoint_counts_equal_hand_counted_evaluations(name):
    net = CountingNet(3)
    m = odernn.ODERNN(odernn.make_dynamics(name, net), 2, 3, 1, rtol=1e-6, atol=1e-6)
    x, t = data()
    with odernn.nfe_counter(m) as nfe:
        loss = m(x, t).pow(2).mean()
        assert nfe.forward == net.calls > 0 and nfe.backward == 0
        before = net.calls
        loss.backward()
    assert nfe.backward == net.calls - before > 0
    assert nfe.total == net.calls


def test_direct_backprop_counts_the_evaluations_backpropagated_through():
    net = CountingNet(3)
    m = odernn.ODERNN(odernn.HBNODE(net), 2, 3, 1, rtol=1e-6, atol=1e-6, adjoint=False)
    x, t = data()
    with odernn.nfe_counter(m) as nfe:
        loss = m(x, t).pow(2).mean()
        fwd = nfe.forward
        loss.backward()
    assert fwd == net.calls
    assert nfe.forward == fwd  # backprop evaluates no new fields
    assert 0 < nfe.backward <= fwd  # rejected steps are not backpropagated


def test_counters_are_scoped_nested_and_leave_no_state():
    net = CountingNet(3)
    dyn = odernn.NODE(net)
    m = odernn.ODERNN(dyn, 2, 3, 1)
    x, t = data()
    with odernn.nfe_counter(m) as outer:
        m(x, t)
        with odernn.nfe_counter(m) as inner:
            m(x, t)
        first_inner = inner.forward
    assert outer.forward == 2 * first_inner > 0
    assert "_nfe_counters" not in dyn.__dict__ and dyn._nfe_counters == ()
    m(x, t)
    assert inner.forward == first_inner  # closed counters stop counting
    with pytest.raises(ValueError, match="no odernn dynamics"):
        with odernn.nfe_counter(nn.Linear(2, 2)):
            pass
    with pytest.raises(TypeError, match="torch.nn.Module"):
        with odernn.nfe_counter("model"):
            pass


def test_seminorm_reduces_backward_nfe():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 4))
    dyn = odernn.NODE(net)
    z0 = torch.randn(16, 4)
    res = {}
    for semi in (False, True):
        with odernn.nfe_counter(dyn) as nfe:
            out = odernn.odesolve(dyn, z0, torch.tensor([0.0, 3.0]), rtol=1e-6, atol=1e-6, seminorm=semi)
            out[:, -1].pow(2).sum().backward()
        res[semi] = nfe
    assert res[True].forward == res[False].forward
    assert res[True].backward < res[False].backward, res


def test_counted_field_counts_a_solve_odernn_does_not_run():
    """A field integrated directly with torchdiffeq is counted through odernn.CountedField, forward and backward."""
    import torchdiffeq

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)
            self.calls = 0

        def forward(self, t, z):
            self.calls += 1
            return torch.tanh(self.lin(z))

    for adjoint in (True, False):
        inner = Counting()
        field = odernn.CountedField(inner, adjoint=adjoint)
        z0 = torch.randn(4, 3)
        solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
        kw = dict(adjoint_params=tuple(field.parameters())) if adjoint else {}
        with odernn.nfe_counter(field) as nfe:
            out = solve(field, z0, torch.tensor([0.0, 1.0]), rtol=1e-6, atol=1e-6, **kw)
            n_fwd = inner.calls
            out[-1].sum().backward()
        assert nfe.forward == n_fwd > 0
        if adjoint:  # every adjoint evaluation happens during backward
            assert nfe.backward == inner.calls - n_fwd > 0
        else:  # the evaluations backpropagation went through (not the initial-step probe)
            assert 0 < nfe.backward < n_fwd and inner.calls == n_fwd
    with pytest.raises(ValueError, match="CountedField"):
        with odernn.nfe_counter(torch.nn.Linear(2, 2)):
            pass
