"""Issue 14, solve layer: no silent wrong result, no crash, a clear error, for odesolve / ODEBlock and every method.

One test (or property) per failure class: times of large magnitude, non-finite states forward and backward for every
method, the NaN error estimate of the lean dopri5, time gradients under direct backpropagation, empty batches and
malformed dynamics outputs, bad ODEBlock bounds."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import odernn
from odernn._integrate import solve_gaps
from odernn._solver import ADAPTIVE_METHODS, FIXED_METHODS

F64 = torch.float64
ALL_METHODS = sorted(ADAPTIVE_METHODS | FIXED_METHODS)
HYP = settings(max_examples=20, deadline=None, derandomize=True)


def _method(method):
    return dict(method=method, step_size=0.1) if method in FIXED_METHODS else dict(method=method)


class Scale(nn.Module):
    """x -> k * x (float32 by default)."""

    def __init__(self, k=-1.0):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k))

    def forward(self, x):
        return self.k * x


# -- times of large magnitude --------------------------------------------------------------------------------------
@HYP
@given(exponent=st.integers(0, 10), gaps=st.lists(st.floats(0.05, 2.0), min_size=1, max_size=4),
       adjoint=st.booleans())
def test_large_times_keep_their_gaps(exponent, gaps, adjoint):
    """float64 stamps of any magnitude with a float32 state: the same result as the same gaps near zero, and the
    closed form exp(-(t - t0))."""
    base = 1.7 * 10.0 ** exponent
    rel = torch.tensor([0.0] + gaps, dtype=F64).cumsum(0)
    dyn = odernn.NODE(Scale(-1.0))
    z0 = torch.tensor([[1.0, -2.0]])
    tol = dict(rtol=1e-6, atol=1e-8, adjoint=adjoint)
    far = odernn.odesolve(dyn, z0, base + rel, **tol)
    near = odernn.odesolve(dyn, z0, rel, **tol)
    exact = z0.unsqueeze(1) * torch.exp(-(rel - rel[0])).float().reshape(1, -1, 1)
    assert far.dtype == torch.float32
    torch.testing.assert_close(far, near, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(far, exact, rtol=1e-4, atol=1e-6)


class Clock(nn.Module):
    """A time-dependent field z' = -(t - ref) z that records the dtype of the time it is given."""

    def __init__(self, ref):
        super().__init__()
        self.ref = ref
        self.seen = set()

    def forward(self, t, x):
        self.seen.add(t.dtype)
        age = (t - self.ref).to(x.dtype)
        return -(age.unsqueeze(1) if age.dim() == 1 else age) * x  # t: 0-d (odesolve) or (batch,) (per-sample gaps)


@HYP
@given(exponent=st.integers(0, 10), span=st.floats(0.1, 2.0), integer=st.booleans())
def test_time_dependent_dynamics_see_the_absolute_time_in_full_precision(exponent, span, integer):
    base = float(round(1.3 * 10.0 ** exponent))
    t = torch.tensor([base, base + span], dtype=F64)
    if integer:
        t = torch.tensor([int(base), int(base) + 2])
        span = 2.0
    clock = Clock(base)
    dyn = odernn.NODE(clock, time_dependent=True)
    out = odernn.odesolve(dyn, torch.ones(2, 3), t, rtol=1e-7, atol=1e-9)
    assert clock.seen == {F64}
    torch.testing.assert_close(out[:, -1], torch.full((2, 3), math.exp(-span ** 2 / 2)), rtol=1e-5, atol=1e-6)


@HYP
@given(exponent=st.integers(0, 10), gaps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=5))
def test_per_sample_gaps_in_float64_with_a_float32_state(exponent, gaps):
    """solve_gaps (the ODE-RNN's per-gap solve) takes float64 start times and gaps with a float32 state: the state
    stays float32 and each sample moves exactly by its gap; a time-dependent field sees t0 + s * dt in float64."""
    base = 1.7 * 10.0 ** exponent
    dt = torch.tensor(gaps, dtype=F64)
    t0 = base + torch.arange(len(gaps), dtype=F64)
    z0 = torch.ones(len(gaps), 2)
    solver = odernn.Solver(rtol=1e-7, atol=1e-9)
    z1, _ = solve_gaps(odernn.NODE(Scale(-1.0)), z0, t0, dt, solver)
    assert z1.dtype == torch.float32
    torch.testing.assert_close(z1, torch.exp(-dt).float().unsqueeze(1).expand(-1, 2), rtol=1e-5, atol=1e-6)
    clock = Clock(base)
    z1, _ = solve_gaps(odernn.NODE(clock, time_dependent=True), z0, t0, dt, solver)
    assert clock.seen == {F64}
    expected = torch.exp(-((t0 - base + dt) ** 2 - (t0 - base) ** 2) / 2).float().unsqueeze(1).expand(-1, 2)
    torch.testing.assert_close(z1, expected, rtol=1e-4, atol=1e-6)


def test_times_given_as_a_python_list_are_taken_in_double_precision():
    dyn = odernn.NODE(Scale(-1.0))
    out = odernn.odesolve(dyn, torch.ones(1, 1), [1.7e9, 1.7e9 + 0.5], rtol=1e-7, atol=1e-9)
    assert out[0, -1, 0].item() == pytest.approx(math.exp(-0.5), rel=1e-6)


def test_a_dtype_mismatch_of_time_in_the_network_gets_a_hint():
    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, t, x):
            return self.lin(torch.cat([x, t.expand(x.shape[0], 1)], dim=1))

    dyn = odernn.NODE(Concat(), time_dependent=True)
    with pytest.raises(ValueError, match=r"receives t as a 0-d torch.float64 tensor.*cast t inside the network"):
        odernn.odesolve(dyn, torch.ones(2, 2), torch.tensor([0.0, 1.0], dtype=F64))
    out = odernn.odesolve(dyn, torch.ones(2, 2), torch.tensor([0.0, 1.0]))  # float32 times: no cast needed
    assert out.shape == (2, 2, 2)


# -- non-finite states, forward, every method ---------------------------------------------------------------------
class Cliff(nn.Module):
    """h' = h^2 below 2, NaN above (a network that breaks when the state grows)."""

    def forward(self, h):
        return torch.where(h < 2, h * h, torch.full_like(h, float("nan")))


class Square(nn.Module):
    """h' = h^2: finite-time blow-up at t = 1/h0."""

    def forward(self, h):
        return h * h


NONFINITE_FORWARD = {
    "fixed": r"solve with step_size=0\.1 returned a non-finite state \(NaN or inf\) at output 1",
    "lean": r"the state became non-finite \(NaN or inf\) in the step from solver time .* in a row, .* in this solve",
    "torchdiffeq": r"NaN",
}


def _kind(method, lean=True):
    if method in FIXED_METHODS:
        return "fixed"
    return "lean" if method == "dopri5" and lean else "torchdiffeq"


@pytest.mark.filterwarnings("ignore:Functional iteration did not converge")
@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_a_network_returning_nan_raises_for_every_method(method, dtype):
    dyn = odernn.NODE(Cliff())
    with pytest.raises(odernn.SolverError, match=NONFINITE_FORWARD[_kind(method)]):
        odernn.odesolve(dyn, torch.ones(1, 2, dtype=dtype), torch.tensor([0.0, 3.0], dtype=dtype), adjoint=False,
                        **_method(method))


@pytest.mark.filterwarnings("ignore:Functional iteration did not converge")
@pytest.mark.parametrize("method", sorted(FIXED_METHODS))
def test_fixed_grid_blow_up_to_inf_raises(method):
    """Euler & co. used to return inf (or NaN) silently when the state overflows."""
    with pytest.raises(odernn.SolverError, match=NONFINITE_FORWARD["fixed"]):
        odernn.odesolve(odernn.NODE(Square()), torch.ones(1, 2), torch.tensor([0.0, 3.0]), method=method,
                        step_size=0.1)


def test_dopri5_reference_path_also_raises_solver_error():
    with pytest.raises(odernn.SolverError, match="NaN"):
        odernn.odesolve(odernn.NODE(Cliff()), torch.ones(1, 2), torch.tensor([0.0, 3.0]), lean=False)


@HYP
@given(h0=st.floats(0.05, 1.0), span=st.floats(5.0, 1e3), rtol=st.sampled_from([1e-2, 1e-3, 1e-6]))
def test_lean_dopri5_rejects_a_nan_error_estimate_promptly(h0, span, rtol):
    """h' = -sqrt(h) reaches 0 at t = 2 sqrt(h0); a step beyond makes NaN. The lean dopri5 used to grow the step
    after each NaN rejection until it crashed with 'value cannot be converted to type float without overflow'. Now a
    NaN rejects the step and shrinks it; the solve ends with a SolverError (the step underflows at the root, or NaN
    persists) after a bounded number of evaluations."""
    class Drain(nn.Module):
        def forward(self, h):
            return -torch.sqrt(h)

    dyn = odernn.NODE(Drain())
    with odernn.nfe_counter(dyn) as nfe:
        with pytest.raises(odernn.SolverError, match=r"became non-finite \(NaN or inf\)|step size underflowed"):
            odernn.odesolve(dyn, torch.full((1, 1), h0), torch.tensor([0.0, span]), rtol=rtol, atol=rtol / 10)
    assert nfe.forward < 2000


@HYP
@given(first=st.floats(5.0, 1e4), h0=st.floats(0.5, 4.0))
def test_lean_dopri5_recovers_from_a_nan_trial_step(first, h0):
    """h' = 1/2 - sqrt(h) relaxes to 1/4; a huge first step overshoots below 0 (NaN) in its stages. The lean step
    rejects it, shrinks, and finds the same solution as a normal start (torchdiffeq's dopri5 underflows here)."""
    class Relax(nn.Module):
        def forward(self, h):
            return 0.5 - torch.sqrt(h)

    dyn = odernn.NODE(Relax())
    z0, t = torch.full((1, 1), h0, dtype=F64), torch.tensor([0.0, 1.0, 10.0], dtype=F64)
    tol = dict(rtol=1e-8, atol=1e-10)
    rescued = odernn.odesolve(dyn, z0, t, options={"first_step": first}, **tol)
    torch.testing.assert_close(rescued, odernn.odesolve(dyn, z0, t, **tol), rtol=1e-6, atol=1e-8)


def test_a_nan_initial_derivative_is_reported_as_such():
    class Nan(nn.Module):
        def forward(self, h):
            return h * float("nan")

    with pytest.raises(odernn.SolverError, match=r"initial step size is nan.*non-finite"):
        odernn.odesolve(odernn.NODE(Nan()), torch.ones(1, 2), torch.tensor([0.0, 1.0]))


def test_nan_in_the_initial_state_is_rejected_before_solving():
    with pytest.raises(ValueError, match="z0 contains NaN or inf"):
        odernn.odesolve(odernn.NODE(Scale()), torch.tensor([[1.0, float("inf")]]), torch.tensor([0.0, 1.0]))


# -- non-finite states, backward, every method --------------------------------------------------------------------
class _NaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


class PoisonedBackward(nn.Module):
    """A finite forward whose vector-Jacobian products are NaN."""

    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(-0.5))

    def forward(self, x):
        return _NaNGrad.apply(self.k * x)


@pytest.mark.filterwarnings("ignore:Functional iteration did not converge")
@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("adjoint", [False, True])
def test_a_non_finite_backward_raises_for_every_method(method, adjoint):
    dyn = odernn.NODE(PoisonedBackward())
    out = odernn.odesolve(dyn, torch.ones(2, 2), torch.tensor([0.0, 1.0]), adjoint=adjoint, **_method(method))
    assert torch.isfinite(out).all()
    with pytest.raises(odernn.SolverError, match=r"(backward|adjoint).*non-finite|non-finite.*(backward|adjoint)"
                                                 r"|became non-finite"):
        out.pow(2).sum().backward()


def test_block_backward_nan_with_only_parameters_requiring_gradients():
    """z0 needs no gradient: the check still runs (it watches the parameters)."""
    block = odernn.ODEBlock(odernn.NODE(PoisonedBackward()), adjoint=False)
    with pytest.raises(odernn.SolverError, match="produced a non-finite gradient"):
        block(torch.ones(3, 2)).sum().backward()


# -- time gradients ------------------------------------------------------------------------------------------------
@HYP
@given(T=st.floats(0.1, 3.0), t0=st.floats(-2.0, 2.0), seed=st.integers(0, 2 ** 16))
def test_end_and_start_time_gradients_under_direct_backpropagation(T, t0, seed):
    """dL/dT = f(y(T)) . dL/dy(T); for an autonomous field dL/dt0 = -dL/dT (a shift of both changes nothing). The
    lean dopri5 used to leave t.grad None under adjoint=False."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=F64))
    dyn = odernn.NODE(net)
    z0 = torch.randn(2, 3, generator=g, dtype=F64)
    w = torch.randn(2, 3, generator=g, dtype=F64)
    grads = {}
    for adjoint in (False, True):
        t = torch.tensor([t0, t0 + T], dtype=F64, requires_grad=True)
        yT = odernn.odesolve(dyn, z0, t, rtol=1e-10, atol=1e-12, adjoint=adjoint)[:, -1]
        (grads[adjoint],) = torch.autograd.grad((w * yT).sum(), t)
        with torch.no_grad():
            expected = (w * dyn(t[-1], yT)).sum()
        assert grads[adjoint][1].item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-8)
        assert grads[adjoint][0].item() == pytest.approx(-expected.item(), rel=1e-6, abs=1e-8)
    torch.testing.assert_close(grads[False], grads[True], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("time_dependent", [False, True])
def test_interior_time_gradients_match_the_adjoint(time_dependent):
    class Forced(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2).double()

        def forward(self, *args):
            if time_dependent:
                t, x = args
                return self.lin(x) * torch.cos(t)
            return self.lin(args[0])

    torch.manual_seed(4)
    dyn = odernn.NODE(Forced(), time_dependent=time_dependent)
    z0 = torch.randn(3, 2, dtype=F64)
    grads = []
    for adjoint in (False, True):
        t = torch.tensor([0.3, 0.9, 1.4, 2.5], dtype=F64, requires_grad=True)
        out = odernn.odesolve(dyn, z0, t, rtol=1e-10, atol=1e-12, adjoint=adjoint)
        grads.append(torch.autograd.grad(out.sin().sum(), t)[0])
    assert grads[0].abs().min() > 1e-3
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-8)


# -- malformed inputs --------------------------------------------------------------------------------------------
def test_empty_batch_is_a_clear_error():
    dyn = odernn.NODE(Scale())
    with pytest.raises(ValueError, match=r"z0 is empty \(shape \(0, 3\)\): a solve needs at least one sample"):
        odernn.odesolve(dyn, torch.zeros(0, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"z0 is empty \(shape \(0, 3\)\)"):
        odernn.ODEBlock(dyn)(torch.zeros(0, 3))


class Pair(odernn.Dynamics):
    def forward(self, t, z):
        return self.net(z), self.net(z)


class Listy(odernn.Dynamics):
    def forward(self, t, z):
        return z.tolist()


class Double(odernn.Dynamics):
    def forward(self, t, z):
        return z.double()


def test_dynamics_returning_a_tuple_or_non_tensor_is_a_clear_error():
    z0, t = torch.ones(2, 3), torch.tensor([0.0, 1.0])
    with pytest.raises(TypeError, match=r"the dynamics returned a tuple of length 2; expected a single torch.Tensor "
                                        r"dz/dt of the state's shape \(2, 3\)"):
        odernn.odesolve(Pair(Scale()), z0, t)
    with pytest.raises(TypeError, match=r"the dynamics returned a list of length 2; expected a single torch.Tensor"):
        odernn.odesolve(Listy(Scale()), z0, t)
    with pytest.raises(TypeError, match=r"returned dtype torch.float64, whilst the state has dtype torch.float32"):
        odernn.odesolve(Double(Scale()), z0, t)
    with pytest.raises(TypeError, match=r"the dynamics returned a tuple of length 2"):
        odernn.ODEBlock(Pair(Scale()))(z0)


@pytest.mark.parametrize("bad", [[0.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.5, 2.0]])
def test_repeated_or_unsorted_times_are_rejected(bad):
    with pytest.raises(ValueError, match="strictly monotone with no repeated times"):
        odernn.odesolve(odernn.NODE(Scale()), torch.ones(1, 1), torch.tensor(bad))


@HYP
@given(bad=st.sampled_from([float("nan"), float("inf"), float("-inf")]), which=st.sampled_from(["t0", "t1"]),
       other=st.floats(-1e6, 1e6))
def test_odeblock_rejects_non_finite_bounds_at_construction(bad, which, other):
    kw = {which: bad, ("t1" if which == "t0" else "t0"): other}
    with pytest.raises(ValueError, match=rf"ODEBlock: {which} must be a finite number, got {bad}"):
        odernn.ODEBlock(odernn.NODE(Scale()), **kw)


@HYP
@given(v=st.floats(-1e6, 1e6))
def test_odeblock_rejects_equal_bounds(v):
    with pytest.raises(ValueError, match=r"ODEBlock: t0 and t1 must differ"):
        odernn.ODEBlock(odernn.NODE(Scale()), t0=v, t1=v)


@pytest.mark.parametrize("bad", ["1", None, True, 1j, [1.0]])
def test_odeblock_rejects_non_numbers(bad):
    with pytest.raises(TypeError, match=r"ODEBlock: t1 must be a real number, got"):
        odernn.ODEBlock(odernn.NODE(Scale()), t1=bad)
