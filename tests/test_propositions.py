"""The paper's propositions, checked numerically on real solves."""

import pytest
import torch
from torch import nn

import odernn

DT = torch.float64


def hbnode(n=3, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(n, 8), nn.Tanh(), nn.Linear(8, n)).to(DT)
    return odernn.HBNODE(net, omega=-1.0).to(DT)


def test_prop2_adjoint_of_hbnode_satisfies_eq13():
    """a_h' = -a_m df/dh and a_m' = -a_h + gamma a_m, with a = dL/d[h, m] obtained by autograd along the solve."""
    n, T = 3, 1.0
    dyn = hbnode(n)
    z0 = torch.randn(2, 2 * n, dtype=DT)
    tol = dict(rtol=1e-12, atol=1e-12, adjoint=False)

    def state(t):
        if t == 0:
            return z0.clone()
        return odernn.odesolve(dyn, z0, torch.tensor([0.0, t], dtype=DT), **tol)[:, -1].detach()

    def adjoint(t):
        z = state(t).requires_grad_()
        zT = odernn.odesolve(dyn, z, torch.tensor([t, T], dtype=DT), **tol)[:, -1]
        loss = (zT[:, :n].sin().sum() + 0.3 * zT[:, n:].pow(2).sum())
        (a,) = torch.autograd.grad(loss, z)
        return a

    gamma = dyn.gamma.detach()
    delta = 1e-3
    for t in (0.25, 0.5, 0.75):
        a = adjoint(t)
        da = (adjoint(t + delta) - adjoint(t - delta)) / (2 * delta)
        a_h, a_m = a[:, :n], a[:, n:]
        h = state(t)[:, :n].requires_grad_()
        f = dyn.net(h)
        (am_J,) = torch.autograd.grad(f, h, a_m)  # a_m df/dh (row vector times Jacobian)
        rhs_h = -am_J
        rhs_m = -a_h + gamma * a_m
        torch.testing.assert_close(da[:, :n], rhs_h, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(da[:, n:], rhs_m, rtol=1e-5, atol=1e-6)
        # eq. (14): with a~_m = da_m/dt, a_h = gamma a_m - a~_m
        torch.testing.assert_close(a_h, gamma * a_m - da[:, n:], rtol=1e-5, atol=1e-6)


def _pair_error(eig, gamma):
    """Greedily pair each eigenvalue with its partner -gamma - lambda; return the largest mismatch."""
    left = list(eig.tolist())
    worst = 0.0
    while left:
        lam = left.pop(0)
        target = -gamma - lam
        j = min(range(len(left)), key=lambda k: abs(left[k] - target))
        worst = max(worst, abs(left[j] - target))
        left.pop(j)
    return worst


@pytest.mark.parametrize("kind", ["hbnode", "ghbnode"])
def test_prop4_eigenvalues_pair_up_with_sum_minus_gamma(kind):
    """The Jacobian of the (G)HBNODE field is [[0, J], [F, -gamma I]] (eq. 18, Appendix D); along a real solve its
    eigenvalues, at one time and averaged over the trajectory, come in pairs summing to -gamma."""
    n = 4
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(n, 16), nn.Tanh(), nn.Linear(16, n)).to(DT)
    dyn = (odernn.HBNODE(net, omega=0.5) if kind == "hbnode" else odernn.GHBNODE(net, omega=0.5, chi=0.3)).to(DT)
    gamma = float(dyn.gamma.detach())
    z0 = torch.randn(1, 2 * n, dtype=DT)
    ts = torch.linspace(0, 2, 9, dtype=DT)
    traj = odernn.odesolve(dyn, z0, ts, rtol=1e-10, atol=1e-10)[0]  # (T, 2n)
    t0 = torch.zeros((), dtype=DT)
    jacs = [torch.autograd.functional.jacobian(lambda z: dyn(t0, z[None])[0], z) for z in traj]
    for M in jacs + [torch.stack(jacs).mean(0)]:
        torch.testing.assert_close(M[:n, :n], torch.zeros(n, n, dtype=DT))  # block structure
        torch.testing.assert_close(M[n:, n:], -gamma * torch.eye(n, dtype=DT))
        eig = torch.linalg.eigvals(M)
        assert _pair_error(eig, gamma) < 1e-8
    # and a NODE Jacobian has no such structure (the check can fail)
    node = odernn.NODE(nn.Sequential(nn.Linear(2 * n, 2 * n), nn.Tanh()).to(DT))
    M = torch.autograd.functional.jacobian(lambda z: node(t0, z[None])[0], traj[0])
    assert _pair_error(torch.linalg.eigvals(M), gamma) > 1e-3
