"""The five right-hand sides: equations, state layout, parameters, gradients through the solver."""

import math

import pytest
import torch
from torch import nn

import odernn

torch.set_default_dtype(torch.float32)


def _net(i, o, width=6):
    return nn.Sequential(nn.Linear(i, width), nn.Tanh(), nn.Linear(width, o)).double()


def make(name, n=3):
    if name == "node":
        return odernn.NODE(_net(n, n))
    if name == "anode":
        return odernn.ANODE(_net(n + 2, n + 2), 2)
    if name == "sonode":
        return odernn.SONODE(_net(2 * n, n))
    if name == "hbnode":
        return odernn.HBNODE(_net(n, n)).double()
    return odernn.GHBNODE(_net(n, n)).double()


NAMES = ["node", "anode", "sonode", "hbnode", "ghbnode"]


def test_equations_match_the_paper():
    n = 3
    torch.manual_seed(1)
    f = _net(n, n)
    h, m = torch.randn(4, n, dtype=torch.float64), torch.randn(4, n, dtype=torch.float64)
    z = torch.cat([h, m], 1)
    t = torch.zeros((), dtype=torch.float64)
    hb = odernn.HBNODE(f).double()
    gamma = 1.0 / (1.0 + math.exp(3.0))  # eps * sigmoid(-3)
    torch.testing.assert_close(hb(t, z), torch.cat([m, f(h) - gamma * m], 1))
    g = odernn.GHBNODE(f).double()
    xi = math.log(2.0)
    torch.testing.assert_close(g(t, z), torch.cat([torch.tanh(m), f(h) - gamma * m - xi * h], 1))
    so = odernn.SONODE(_net(2 * n, n))
    torch.testing.assert_close(so(t, z), torch.cat([m, so.net(z)], 1))
    # fixed damping and gate
    g2 = odernn.GHBNODE(f, gamma=0.5, xi=0.25, sigma=nn.Hardtanh(-5, 5)).double()
    torch.testing.assert_close(g2(t, z), torch.cat([m.clamp(-5, 5), f(h) - 0.5 * m - 0.25 * h], 1))
    assert sum(p.numel() for p in g2.parameters()) == sum(p.numel() for p in f.parameters())


def test_learnable_damping_parameters():
    f = _net(2, 2)
    assert [n for n, _ in odernn.HBNODE(f).named_parameters() if "net" not in n] == ["omega"]
    assert sorted(n for n, _ in odernn.GHBNODE(f).named_parameters() if "net" not in n) == ["chi", "omega"]
    fixed = odernn.GHBNODE(f, learn_gamma=False, learn_xi=False)
    assert [n for n, _ in fixed.named_parameters() if "net" not in n] == []
    assert torch.isclose(fixed.gamma, torch.sigmoid(torch.tensor(-3.0)))
    assert torch.isclose(odernn.HBNODE(f, epsilon=2.0, omega=0.0).gamma, torch.tensor(1.0))


def test_state_layout():
    h = torch.randn(5, 3)
    assert odernn.ANODE(_net(5, 5), 2).initial_state(h).shape == (5, 5)
    hb = odernn.HBNODE(_net(3, 3))
    z = hb.initial_state(h)
    assert z.shape == (5, 6) and torch.equal(hb.hidden(z), h) and torch.equal(z[:, 3:], torch.zeros(5, 3))
    with pytest.raises(ValueError, match="even size"):
        hb(torch.zeros(()), torch.zeros(5, 5))
    with pytest.raises(ValueError, match="first order"):
        odernn.NODE(_net(3, 3)).initial_state(h, h)
    with pytest.raises(ValueError, match="unknown dynamics"):
        odernn.make_dynamics("lstm", _net(3, 3))
    with pytest.raises(TypeError, match="callable"):
        odernn.NODE(3)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        odernn.HBNODE(_net(3, 3), gamma=-1.0)


def test_image_states_split_on_channels():
    net = nn.Conv2d(2, 2, 3, padding=1)
    dyn = odernn.GHBNODE(net)
    z = dyn.initial_state(torch.randn(2, 2, 5, 5))
    assert z.shape == (2, 4, 5, 5)
    assert dyn(torch.zeros(()), z).shape == z.shape
    out = odernn.ODEBlock(dyn, rtol=1e-4, atol=1e-5)(z)
    assert out.shape == z.shape


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("adjoint", [False, True])
def test_gradcheck_through_the_solver(name, adjoint):
    """torch.autograd.gradcheck in float64 with respect to the initial state and the network's first weight."""
    torch.manual_seed(2)
    dyn = make(name)
    n_state = dyn.state_size(3)
    z0 = (0.5 * torch.randn(2, n_state, dtype=torch.float64)).requires_grad_()
    t = torch.tensor([0.0, 0.7], dtype=torch.float64)
    w = dyn.net[0].weight

    # gradient w.r.t. z0 via gradcheck; gradient w.r.t. parameters checked against finite differences below
    assert torch.autograd.gradcheck(lambda z: odernn.odesolve(dyn, z, t, rtol=1e-11, atol=1e-12,
                                                              adjoint=adjoint)[:, -1], (z0,), eps=1e-6, atol=1e-6)
    # parameter gradient vs central finite differences
    loss = odernn.odesolve(dyn, z0.detach(), t, rtol=1e-11, atol=1e-12, adjoint=adjoint)[:, -1].pow(2).sum()
    (g,) = torch.autograd.grad(loss, [w])
    fd = torch.zeros_like(w)
    eps = 1e-6
    with torch.no_grad():
        for idx in [(0, 0), (1, 2), (3, 1)]:
            old = w[idx].item()
            w[idx] = old + eps
            lp = odernn.odesolve(dyn, z0.detach(), t, rtol=1e-11, atol=1e-12).pow(2)[:, -1].sum()
            w[idx] = old - eps
            lm = odernn.odesolve(dyn, z0.detach(), t, rtol=1e-11, atol=1e-12).pow(2)[:, -1].sum()
            w[idx] = old
            fd[idx] = (lp - lm) / (2 * eps)
            assert abs(fd[idx] - g[idx]) <= 1e-5 * max(1.0, abs(g[idx].item())), (name, idx, fd[idx], g[idx])


@pytest.mark.parametrize("name", NAMES)
def test_adjoint_equals_direct_backprop(name):
    torch.manual_seed(3)
    dyn = make(name)
    z0 = torch.randn(3, dyn.state_size(3), dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.2], dtype=torch.float64)
    grads = []
    for adjoint in (False, True):
        out = odernn.odesolve(dyn, z0, t, rtol=1e-10, atol=1e-12, adjoint=adjoint)
        loss = out[:, 1:].sin().sum()
        grads.append(torch.autograd.grad(loss, [z0, *dyn.parameters()]))
    for a, b in zip(*grads):
        assert (a - b).norm() <= 1e-4 * b.norm().clamp_min(1e-12), name


def test_dynamics_base_class_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        odernn.Dynamics(_net(2, 2))

    class Decay(odernn.Dynamics):
        def forward(self, t, z):
            return -self._f(t, z)

    out = odernn.odesolve(Decay(nn.Identity()), torch.ones(1, 2, dtype=torch.float64),
                          torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out[0, -1], torch.full((2,), float(torch.exp(torch.tensor(-1.0))), dtype=torch.float64),
                               rtol=1e-8, atol=1e-8)
