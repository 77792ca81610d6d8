"""torchdiffeq's own test classes (odeint accuracy, gradients incl. time points, norms, collection states), written anew
for the solver odernn registers: every check runs on odernn's lean step ("odernn_dopri5") and, as a control, on
torchdiffeq's "dopri5", with the same tolerances torchdiffeq's suite uses for "dopri5"."""

import math

import pytest
import torch
import torchdiffeq
from torch import nn

from odernn._torchdiffeq import LEAN_DOPRI5

METHODS = ["dopri5", LEAN_DOPRI5]
F64 = torch.float64


# -- test problems with closed-form solutions ------------------------------------------------------------------------
class Drift(nn.Module):
    """y' = a + (y - (a t + b))^5: the line y = a t + b is a solution (unstable off it, so errors show)."""

    def __init__(self, dtype=F64):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.2, dtype=dtype))
        self.b = nn.Parameter(torch.tensor(3.0, dtype=dtype))

    def forward(self, t, y):
        return self.a + (y - (self.a * t + self.b)) ** 5

    def exact(self, t):
        return (self.a * t + self.b).unsqueeze(-1)


class Rotation(nn.Module):
    """y' = A y with A = U - U^T: a rotation, y(t) = expm(A t) 1."""

    def __init__(self, dtype=F64, n=10):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        u = 0.1 * torch.randn(n, n, generator=g, dtype=F64)
        self.A = nn.Parameter((u - u.T).to(dtype))

    def forward(self, t, y):
        return self.A @ y

    def exact(self, t):
        with torch.no_grad():
            a = self.A.to(F64)
            return torch.stack([torch.linalg.matrix_exp(a * ti) @ torch.ones(a.shape[0], dtype=F64)
                                for ti in t.to(F64)]).to(t.dtype)


class Polynomial(nn.Module):
    """y' = 2y/t + t^4 sin 2t - t^2 + 4t^3, time-dependent, y(t) in closed form."""

    def forward(self, t, y):
        return 2 * y / t + t ** 4 * torch.sin(2 * t) - t ** 2 + 4 * t ** 3

    def exact(self, t):
        c, s = torch.cos(2 * t), torch.sin(2 * t)
        y = -0.5 * t ** 4 * c + 0.5 * t ** 3 * s + 0.25 * t ** 2 * c - t ** 3 + 2 * t ** 4 + (math.pi - 0.25) * t ** 2
        return y.unsqueeze(-1)


PROBLEMS = {"drift": Drift, "rotation": Rotation, "polynomial": Polynomial}


def problem(name, dtype=F64, reverse=False, n=10):
    f = PROBLEMS[name]() if name == "polynomial" else PROBLEMS[name](dtype)
    t = torch.linspace(1.0, 8.0, n, dtype=dtype)
    if reverse:
        t = t.flip(0)
    sol = f.exact(t).detach()
    return f, sol[0].clone().requires_grad_(), t.requires_grad_(), sol


def rel_error(exact, approx):
    return ((exact - approx) / exact).abs().max().item()


# -- odeint ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("adjoint", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_solution_matches_the_closed_form(name, reverse, dtype, adjoint, method):
    f, y0, t, sol = problem(name, dtype, reverse)
    solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
    with torch.no_grad():
        y = solve(f, y0.detach(), t.detach(), method=method)
    assert y.shape == sol.shape and y.dtype == dtype
    assert rel_error(sol, y) < (2e-3 if name == "rotation" else 3e-4 if not adjoint else 1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_a_single_time_returns_the_initial_state(method):
    for reverse in (False, True):
        f, y0, t, sol = problem("rotation", reverse=reverse)
        y = torchdiffeq.odeint(f, y0, t[:1], method=method)
        assert y.shape == (1,) + y0.shape and torch.equal(y[0], y0)


class _Switch:
    """y' = -y/2 before t = 0.5 and y^2 after: a jump in the field."""

    def __init__(self):
        self.nfe = 0

    def __call__(self, t, x):
        self.nfe += 1
        return -0.5 * x if t < 0.5 else x ** 2


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("adjoint", [False, True])
def test_declared_jumps_save_evaluations(method, adjoint):
    x0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    nfe, outs = {}, {}
    for jumps in (False, True):
        f = _Switch()
        kw = dict(adjoint_params=()) if adjoint else {}
        opts = dict(jump_t=torch.tensor([0.5], dtype=F64)) if jumps else {}
        solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
        outs[jumps] = solve(f, x0, t, rtol=1e-6, atol=1e-6, method=method, options=opts, **kw)
        nfe[jumps] = f.nfe
        if adjoint:
            f.nfe = 0
            outs[jumps].sum().backward()
            nfe[jumps, "backward"] = f.nfe
    assert nfe[True] < nfe[False]
    if adjoint:
        assert nfe[True, "backward"] < nfe[False, "backward"]
    # both reach the same, exact, end state: x(0.5) = x0 e^{-1/4}, then x' = x^2 for half a unit
    xh = x0.detach() * math.exp(-0.25)
    torch.testing.assert_close(outs[True][-1].detach(), xh / (1 - 0.5 * xh), rtol=1e-5, atol=0)


@pytest.mark.parametrize("method", METHODS)
def test_event_handling_finds_the_event_time(method):
    """Events are delegated to torchdiffeq's own step: y' = -y from 1 crosses 1/2 at t = ln 2."""
    event_t, ys = torchdiffeq.odeint_event(lambda t, y: -y, torch.ones(3, dtype=F64), torch.tensor(0.0, dtype=F64),
                                           event_fn=lambda t, y: y[0] - 0.5, method=method, rtol=1e-9, atol=1e-10)
    assert event_t.item() == pytest.approx(math.log(2.0), abs=1e-7)
    torch.testing.assert_close(ys[-1], torch.full((3,), 0.5, dtype=F64), rtol=0, atol=1e-7)


# -- gradients -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_initial_state_and_time_points(method, reverse):
    """The failure of issue 14: direct backpropagation must give d/dy0 and d/dt of every time point."""
    f, y0, t, _ = problem("drift", reverse=reverse)
    if reverse:
        t = t.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda y, tt: torchdiffeq.odeint(f, y, tt, method=method), (y0, t))


@pytest.mark.parametrize("method", METHODS)
def test_gradcheck_time_dependent_field(method):
    """d/dt[0] also flows through the evaluation times of a time-dependent field."""
    f = Polynomial()
    t = torch.tensor([1.0, 1.7, 2.2], dtype=F64, requires_grad=True)
    y0 = torch.tensor([0.3], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y, tt: torchdiffeq.odeint(f, y, tt, method=method, rtol=1e-10,
                                                                       atol=1e-12), (y0, t), atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("t_grad", [False, True])
@pytest.mark.parametrize("name,eps", [("drift", 1e-12), ("rotation", 1e-5), ("polynomial", 5e-3)])
def test_direct_backpropagation_equals_the_adjoint(name, eps, t_grad, method):
    grads = {}
    for adjoint in (False, True):
        f, y0, t, _ = problem(name)
        t.requires_grad_(t_grad)
        solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
        ys = solve(f, y0, t, rtol=1e-9, atol=1e-12, method=method)
        g = torch.rand(ys.shape, dtype=ys.dtype, generator=torch.Generator().manual_seed(0))
        ys.backward(g)
        grads[adjoint] = [y0.grad] + ([t.grad] if t_grad else []) + [p.grad for p in f.parameters()]
    for direct, adj in zip(grads[False], grads[True]):
        assert (direct - adj).abs().max().item() < eps


class Cubic(nn.Module):
    def __init__(self):
        super().__init__()
        self.A = nn.Parameter(torch.tensor([[-0.1, 2.0], [-2.0, -0.1]]))
        self.unused = nn.Linear(2, 5)

    def forward(self, t, y):
        return (y ** 3) @ self.A


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("t_grad", [False, True])
def test_adjoint_against_direct_on_a_float32_oscillator(method, t_grad):
    grads = {}
    g = torch.rand(10, 1, 2, generator=torch.Generator().manual_seed(1)) * 0.1
    for adjoint in (True, False):
        torch.manual_seed(0)
        f = Cubic()
        y0 = torch.tensor([[2.0, 0.0]], requires_grad=True)
        t = torch.linspace(0.0, 25.0, 10, requires_grad=t_grad)
        solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
        solve(f, y0, t, method=method).backward(g)
        grads[adjoint] = (y0.grad, t.grad, f.A.grad)
        if adjoint:
            assert f.unused.weight.grad.abs().max() == 0 and f.unused.bias.grad.abs().max() == 0
    for k, eps in enumerate((3e-4, 1e-4, 2e-3)):
        if k == 1 and not t_grad:
            assert grads[True][1] is None and grads[False][1] is None
            continue
        assert (grads[True][k] - grads[False][k]).abs().max().item() < eps


def test_lean_time_gradients_match_torchdiffeq_dopri5():
    """Same time gradients as torchdiffeq's dopri5 (which also differentiates its first-step heuristic: a term of
    the order of the local error)."""
    out = {}
    for method in METHODS:
        f, y0, t, _ = problem("polynomial")
        ys = torchdiffeq.odeint(f, y0, t, rtol=1e-9, atol=1e-12, method=method)
        out[method] = torch.autograd.grad(ys.pow(2).sum(), (y0, t))
    for a, b in zip(out["dopri5"], out[LEAN_DOPRI5]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# -- norms -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_a_custom_norm_sees_the_state_as_given(method):
    t = torch.tensor([0.0, 1.0])
    seen = []

    def norm(state):
        seen.append(state if isinstance(state, torch.Tensor) else tuple(s.shape for s in state))
        x = state if isinstance(state, torch.Tensor) else state[0]
        return x.pow(2).mean().sqrt()

    torchdiffeq.odeint(lambda t, x: x, torch.tensor(1.0), t, method=method, options=dict(norm=norm))
    assert seen and all(isinstance(s, torch.Tensor) and s.shape == () for s in seen)
    seen.clear()
    torchdiffeq.odeint(lambda t, x: x, (torch.tensor(1.0), torch.full((2, 2), 0.5)), t,
                       method=method, options=dict(norm=norm))
    assert seen and all(s == ((), (2, 2)) for s in seen)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("adjoint_options", [None, {}, {"norm": "seminorm"}])
@pytest.mark.parametrize("shape", [(), (1,), (2, 2)])
def test_adjoint_norm_sees_time_state_adjoint_and_parameters(method, adjoint_options, shape):
    params = (torch.rand(7, requires_grad=True), torch.rand((), requires_grad=True))
    kw = {} if adjoint_options is None else dict(adjoint_options=adjoint_options)
    xs = torchdiffeq.odeint_adjoint(lambda t, x: x, torch.ones(shape), torch.tensor([0.0, 1.0]),
                                    adjoint_params=params, method=method, **kw)
    built = xs.grad_fn.adjoint_options["norm"]
    seminorm = adjoint_options == {"norm": "seminorm"}
    calls = []

    def spy(parts):
        t, y, adj_y, p1, p2 = parts
        assert t.shape == () and y.shape == shape and adj_y.shape == shape
        assert p1.shape == (7,) and p2.shape == ()
        rms = lambda x: x.pow(2).mean().sqrt()
        expected = max(t.abs(), rms(y), rms(adj_y))
        if not seminorm:
            expected = max(expected, rms(p1), p2.abs())
        got = built(parts)
        assert abs(float(got) - float(expected)) < 1e-6
        calls.append(1)
        return got

    xs.grad_fn.adjoint_options["norm"] = spy
    xs.sum().backward()
    assert calls


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_a_larger_norm_takes_no_fewer_steps(method, dtype):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.w1 = nn.Parameter(torch.randn(10, 2, generator=g, dtype=dtype))
            self.w2 = nn.Parameter(torch.randn(2, 10, generator=g, dtype=dtype) / 3)
            self.nfe = 0

        def forward(self, t, x):
            self.nfe += 1
            return torch.tanh(self.w2 @ torch.tanh(self.w1 @ x)) * torch.sin(2 * t)

    x0 = torch.tensor([1.0, 2.0], dtype=dtype)
    t = torch.tensor([0.0, 1.0], dtype=dtype)
    nfe = []
    for scale in (1.0, 10.0):
        f = Net()
        torchdiffeq.odeint(f, x0, t, method=method, options=dict(norm=lambda x, s=scale: s * x.abs().max()))
        nfe.append(f.nfe)
    assert nfe[0] <= nfe[1]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_seminorm_takes_no_more_backward_evaluations(method, dtype):
    tol = 1e-6 if dtype == torch.float32 else 1e-8
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 256), nn.Tanh(), nn.Linear(256, 2), nn.Tanh()).to(dtype)
    nfe = [0]

    def f(t, x):
        nfe[0] += 1
        return net(x) * torch.sin(2 * t)

    x0 = torch.tensor([1.0, 2.0], dtype=dtype)
    t = torch.tensor([0.0, 1.0], dtype=dtype)
    backward = []
    for opts in ({}, dict(norm="seminorm")):
        out = torchdiffeq.odeint_adjoint(f, x0, t, rtol=tol, atol=tol, method=method, adjoint_options=opts,
                                         adjoint_params=tuple(net.parameters()))
        nfe[0] = 0
        out.sum().backward()
        backward.append(nfe[0])
    assert backward[1] <= backward[0]


# -- states as tuples of tensors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_tuple_state_forward(method, dtype):
    f, y0, t, sol = problem("drift", dtype)
    ya, yb = torchdiffeq.odeint(lambda t, y: (f(t, y[0]), f(t, y[1])), (y0, y0), t, method=method)
    eps = 1e-5 if dtype == torch.float32 else 1e-12
    assert (sol - ya).max().item() < eps and (sol - yb).max().item() < eps


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("part", [0, 1])
def test_tuple_state_gradcheck(method, part):
    f, y0, t, _ = problem("drift")
    pair = lambda t, y: (f(t, y[0]), f(t, y[1]))
    assert torch.autograd.gradcheck(lambda y, tt: torchdiffeq.odeint(pair, (y, y), tt, method=method)[part], (y0, t))
