"""The fused ODE-RNN loop (odernn._fused) against the per-gap reference path, finite differences and bad input."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

import odernn

B, T, K, H, O = 3, 5, 2, 3, 2
needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                    reason="needs a C++ compiler")
NAMES = ["node", "anode", "sonode", "hbnode", "ghbnode"]


def _data(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, K, generator=g, dtype=dtype)
    t = torch.cumsum(0.2 + torch.rand(B, T, generator=g, dtype=dtype), dim=1)
    mask = torch.rand(B, T, K, generator=g) > 0.3
    mask[:, 0] = True
    return x, t, mask


def _model(name, *, fused=True, seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("rtol", 1e-8)
    kw.setdefault("atol", 1e-9)
    m = odernn.ODERNN(name, K, H, O, **kw).double()
    m.solver = m.solver.replace(fused=fused)
    return m


def _run(m, x, t, mask=None, t_start=None, tf=None):
    with odernn.nfe_counter(m) as nfe:
        enc = m.encode(x, t, mask, t_start)
        out = enc.outputs
        loss = out.pow(2).sum() + enc.priors.sum()
        if tf is not None:
            loss = loss + m.extrapolate(enc, tf).pow(2).sum()
        loss.backward()
    return out.detach(), [p.grad.clone() for p in m.parameters()], (nfe.forward, nfe.backward)


@pytest.mark.parametrize("adjoint", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_same_steps_nfe_results_and_gradients_as_per_gap(name, adjoint):
    """dopri5, masks, a start time, clipping and a forecast: the fused loop reproduces the per-gap path."""
    x, t, mask = _data()
    tf = t[:, -1:] + torch.tensor([[0.4, 1.1]], dtype=t.dtype)
    t_start = t[:, 0] - 0.3
    kw = dict(adjoint=adjoint, adjoint_clip=0.3)
    fo, fg, fn = _run(_model(name, **kw), x, t, mask, t_start, tf)
    ro, rg, rn = _run(_model(name, fused=False, **kw), x, t, mask, t_start, tf)
    assert fn == rn  # forward and backward NFE: the same accepted and rejected steps
    torch.testing.assert_close(fo, ro, rtol=1e-13, atol=1e-13)
    for a, b in zip(fg, rg):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("adjoint", [True, False])
def test_rms_norm_takes_the_per_gap_steps(adjoint):
    """Solver(norm="rms") (the RMS over the whole batch steers the steps): the fused loop takes the per-gap path's
    steps and gives its values and gradients."""
    x, t, mask = _data(3)
    tf = t[:, -1:] + torch.tensor([[0.4, 1.1]], dtype=t.dtype)
    kw = dict(adjoint=adjoint, norm="rms")
    fo, fg, fn = _run(_model("hbnode", **kw), x, t, mask, None, tf)
    ro, rg, rn = _run(_model("hbnode", fused=False, **kw), x, t, mask, None, tf)
    so, _, sn = _run(_model("hbnode", adjoint=adjoint), x, t, mask, None, tf)
    assert fn == rn
    assert fn != sn  # the norm does steer: the worst sample's RMS takes other steps
    torch.testing.assert_close(fo, ro, rtol=1e-13, atol=1e-13)
    for a, b in zip(fg, rg):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("method,fraction", [("rk4", 0.3), ("midpoint", 0.25), ("euler", 0.5)])
@pytest.mark.parametrize("adjoint", [True, False])
def test_fixed_grid_methods_match_per_gap(method, fraction, adjoint):
    x, t, mask = _data(1)
    kw = dict(method=method, step_size=fraction, adjoint=adjoint)
    fo, fg, fn = _run(_model("ghbnode", **kw), x, t, mask)
    ro, rg, rn = _run(_model("ghbnode", fused=False, **kw), x, t, mask)
    assert fn == rn
    torch.testing.assert_close(fo, ro, rtol=1e-12, atol=1e-12)
    for a, b in zip(fg, rg):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("adjoint", [True, False])
@pytest.mark.parametrize("name", ["node", "hbnode", "ghbnode"])
def test_first_step_equal_to_the_gap_matches_per_gap(name, adjoint):
    """warm_start="gap": every gap's first trial step is the whole gap, in the fused loop (forward and the adjoint's
    reverse solves) as in the per-gap path (torchdiffeq's first_step): the same steps, NFE, values and gradients.
    It steers the steps: the NFE differ from both the warm start and the initial-step heuristic."""
    x, t, mask = _data(4)
    tf = t[:, -1:] + torch.tensor([[0.4, 1.1]], dtype=t.dtype)
    t_start = t[:, 0] - 0.3
    kw = dict(adjoint=adjoint, adjoint_clip=0.3, rtol=1e-6, atol=1e-7)
    fo, fg, fn = _run(_model(name, warm_start="gap", **kw), x, t, mask, t_start, tf)
    ro, rg, rn = _run(_model(name, fused=False, warm_start="gap", **kw), x, t, mask, t_start, tf)
    assert fn == rn
    torch.testing.assert_close(fo, ro, rtol=1e-13, atol=1e-13)
    for a, b in zip(fg, rg):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)
    for other in (True, False):
        _, _, on = _run(_model(name, warm_start=other, **kw), x, t, mask, t_start, tf)
        assert on != fn


def test_first_step_equal_to_the_gap_adjoint_equals_direct():
    """warm_start="gap" with the sequence-level adjoint gives direct backpropagation's gradients (float64)."""
    x, t, mask = _data(2)
    kw = dict(warm_start="gap", rtol=1e-11, atol=1e-12, adjoint_clip=0.5)
    _, ga, _ = _run(_model("hbnode", adjoint=True, **kw), x, t, mask)
    _, gd, _ = _run(_model("hbnode", adjoint=False, **kw), x, t, mask)
    for a, b in zip(ga, gd):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_warm_start_default_and_bad_values():
    """The default is today's warm start (the same steps as an explicit True); anything but True, False or "gap" is
    refused with a message naming the choices."""
    x, t, mask = _data(5)
    default, explicit = _model("hbnode"), _model("hbnode", warm_start=True)
    assert default.warm_start is True
    do, dg, dn = _run(default, x, t, mask)
    eo, eg, en = _run(explicit, x, t, mask)
    assert dn == en
    assert torch.equal(do, eo) and all(torch.equal(a, b) for a, b in zip(dg, eg))
    for bad in ("yes", "Gap", 1, None):
        with pytest.raises(ValueError, match="warm_start must be True .* False .* or \"gap\""):
            odernn.ODERNN("hbnode", K, H, O, warm_start=bad)


def test_adjoint_equals_direct_and_finite_differences():
    x, t, mask = _data(2)
    ma, md = _model("hbnode", adjoint=True, rtol=1e-11, atol=1e-12), _model("hbnode", adjoint=False,
                                                                            rtol=1e-11, atol=1e-12)
    _, ga, _ = _run(ma, x, t, mask)
    _, gd, _ = _run(md, x, t, mask)
    for a, b in zip(ga, gd):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    # central differences on every parameter of the field's first layer
    p = ma.dynamics.net[0].weight
    g = ma.dynamics.net[0].weight.grad.clone()
    eps = 1e-6
    fd = torch.zeros_like(p)
    for idx in [(0, 0), (1, 2), (3, 1)]:
        with torch.no_grad():
            p[idx] += eps
            up = ma.encode(x, t, mask)
            up = up.outputs.pow(2).sum() + up.priors.sum()
            p[idx] -= 2 * eps
            dn = ma.encode(x, t, mask)
            dn = dn.outputs.pow(2).sum() + dn.priors.sum()
            p[idx] += eps
        fd[idx] = (up - dn) / (2 * eps)
        assert float(fd[idx]) == pytest.approx(float(g[idx]), rel=1e-5, abs=1e-8)


def test_gradcheck_inputs_through_the_sequence_adjoint():
    x, t, mask = _data(3)
    m = _model("ghbnode", rtol=1e-12, atol=1e-12)
    m.initial_state = nn.Sequential(nn.Flatten(), nn.Linear(T * K, m.state_size)).double()

    def f(xx):
        return m(xx, t, mask)[:, -1]

    assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(),), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_probe_gradient_is_the_clipped_adjoint_at_every_observation():
    x, t, mask = _data(4)
    grads = []
    for fused in (True, False):
        m = _model("hbnode", fused=fused, adjoint_clip=0.05)
        probe = torch.zeros(B, T, m.state_size, dtype=x.dtype, requires_grad=True)
        (1e2 * m.encode(x, t, mask, probe=probe).outputs[:, -1].pow(2).sum()).backward()
        grads.append(probe.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-13)
    assert float(grads[0].norm(dim=2).max()) <= 0.05 + 1e-12
    assert float(grads[0].norm(dim=2)[:, -1].max()) > 0


def test_time_gradients_fall_back_to_the_per_gap_path():
    x, t, _ = _data(5)
    m = _model("node", rtol=1e-10, atol=1e-10)
    tt = t.clone().requires_grad_()
    m(x, tt)[:, -1].sum().backward()
    assert tt.grad is not None and torch.isfinite(tt.grad).all() and tt.grad.abs().sum() > 0
    eps = 1e-6
    with torch.no_grad():
        t2 = t.clone()
        t2[0, 2] += eps
        up = m(x, t2)[:, -1].sum()
        t2[0, 2] -= 2 * eps
        dn = m(x, t2)[:, -1].sum()
    assert float(tt.grad[0, 2]) == pytest.approx(float((up - dn) / (2 * eps)), rel=1e-4, abs=1e-7)


def test_epoch_second_times_keep_their_gaps_with_a_float32_model():
    """float64 absolute stamps near 1.7e9 with a float32 model give the outputs of the same data in relative time."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 6, K, generator=g)
    rel = torch.cumsum(0.5 + torch.rand(2, 6, generator=g, dtype=torch.float64), dim=1)
    torch.manual_seed(0)
    m = odernn.ODERNN("hbnode", K, H, O, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        a = m(x, rel + 1.7e9)
        b = m(x, rel)
        fa = m.forecast(x, rel + 1.7e9, rel[:, -1:] + 1.7e9 + 1.0)
        fb = m.forecast(x, rel, rel[:, -1:] + 1.0)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fa, fb, rtol=1e-5, atol=1e-6)


def test_input_dtype_mismatch_is_explained():
    m = odernn.ODERNN("node", K, H, O)
    x, t, _ = _data()
    with pytest.raises(TypeError, match=r"x has dtype torch.float64 but the model's parameters are torch.float32"):
        m(x, t)
    with pytest.raises(TypeError, match="float16"):
        m(x.half(), t.float())


@pytest.mark.parametrize("method,extra", [("dopri5", {}), ("rk4", {"step_size": 0.5})])
@pytest.mark.parametrize("adjoint", [True, False])
def test_blow_up_raises_solver_error(method, extra, adjoint):
    class Explode(nn.Module):
        def forward(self, h):
            return 50.0 * h * h.abs() + 1.0

    dyn = odernn.NODE(Explode())
    m = odernn.ODERNN(dyn, K, 2, O, method=method, adjoint=adjoint, max_steps=200, **extra).double()
    x, t, _ = _data()
    with pytest.raises(odernn.SolverError, match="non-finite|max_steps|underflow|evaluated the vector field"):
        m(x, 10 * t).sum().backward()


@needs_compiler
def test_compiled_direct_backpropagation_matches_eager():
    """Solver(compile=True, adjoint=False): compiled single steps recorded by autograd give the eager loop's NFE,
    values and gradients. (The error ratio is computed off the graph: a sample whose error estimate is exactly zero
    made the compiled step's backward NaN before.)"""
    x, t, mask = _data(7)
    res = []
    for compile_ in (False, True):
        m = _model("hbnode", rtol=1e-7, atol=1e-8, adjoint=False)
        m.solver = m.solver.replace(compile=compile_)
        res.append(_run(m, x, t, mask))
    (eo, eg, en), (co, cg, cn) = res
    assert cn == en
    torch.testing.assert_close(co, eo, rtol=1e-11, atol=1e-12)
    for a, b in zip(cg, eg):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


class _NaNNet(nn.Module):
    def forward(self, h):
        return h * float("nan")


def test_nan_field_raises_promptly():
    m = odernn.ODERNN(odernn.NODE(_NaNNet()), K, 2, O).double()
    x, t, _ = _data()
    with odernn.nfe_counter(m) as nfe, pytest.raises(odernn.SolverError, match="non-finite"):
        m(x, t)
    assert nfe.forward < 100  # a few rejected steps, not a runaway


class _BlowUp(nn.Module):
    def forward(self, h):
        return 100 * h * h + 10  # h' = 100 h^2 + 10 blows up within 0.05 time units


@needs_compiler
@pytest.mark.parametrize("net", [_NaNNet, _BlowUp])
def test_compiled_blocks_hand_a_failing_gap_to_the_general_loop(net):
    """A NaN field, or a state blowing up inside a compiled block (a non-finite error estimate): the gap is solved
    again by the general loop, which raises exactly as without compiling (the same message, the same evaluations)."""
    counts, messages = [], []
    for compile_ in (False, True):
        torch.manual_seed(0)
        m = odernn.ODERNN(odernn.NODE(net()), K, 2, O, solver=odernn.Solver(compile=compile_)).double()
        x, t, _ = _data()
        with odernn.nfe_counter(m) as nfe, pytest.raises(odernn.SolverError) as err, torch.no_grad():
            m(x, t)
        counts.append(nfe.forward)
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert counts[0] == counts[1]


@needs_compiler
@pytest.mark.parametrize("warm_start,steps,norm", [(True, 1, "sample"), (False, 1, "sample"), (True, 3, "sample"),
                                                    (True, 1, "rms"), (False, 3, "rms"), ("gap", 1, "sample"),
                                                    ("gap", 3, "rms")])
def test_compiled_gap_blocks_take_the_same_steps_as_the_eager_loop(warm_start, steps, norm, monkeypatch):
    """Solver(compile=True) runs whole gaps as compiled blocks (controller, dense output and adjoint parameter sums in
    the graph): the same accepted steps and NFE, forward and backward, as the eager fused loop, and the same values
    to round-off (float64), with masks, a start time, clipping, a forecast and inference without a graph. ``steps``
    trial steps per block: 1 on the CPU; 3 exercises the masked speculative steps that a GPU's blocks hold, and
    cold starts (no warm start) exercise the initial-step rule and continued blocks; ``"gap"`` starts every gap
    (forward and adjoint) with a trial step of the whole gap. ``norm``: the worst sample's
    RMS (default) or the RMS over the whole batch steers the steps, in the blocks as in the eager loop."""
    from odernn import _compile

    monkeypatch.setitem(_compile.GAP_BLOCK_STEPS, "cpu", steps)
    x, t, mask = _data(7)
    t_start = t[:, 0] - 0.3
    tf = t[:, -1:] + torch.tensor([[0.4, 1.1]], dtype=t.dtype)
    res, inference = [], []
    for compile_ in (False, True):
        m = _model("hbnode", rtol=1e-7, atol=1e-8, adjoint_clip=0.3, warm_start=warm_start, norm=norm)
        m.solver = m.solver.replace(compile=compile_)
        res.append(_run(m, x, t, mask, t_start, tf))
        with torch.no_grad(), odernn.nfe_counter(m) as nfe:
            inference.append((m(x, t, mask, t_start), nfe.forward))
    (eo, eg, en), (co, cg, cn) = res
    assert cn == en  # forward and backward NFE: the same accepted and rejected steps
    torch.testing.assert_close(co, eo, rtol=1e-11, atol=1e-12)
    for a, b in zip(cg, eg):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert inference[0][1] == inference[1][1]
    torch.testing.assert_close(inference[1][0], inference[0][0], rtol=1e-11, atol=1e-12)
    kinds = {e["kind"] for e in odernn.compile_log()}
    assert {"dopri5 gap block", "adjoint dopri5 gap block", "cell vector-Jacobian product"} <= kinds


def _block_step(block, z0):
    """An ODEBlock's output, parameter gradients of ``sum(out^2)`` and (forward, backward) NFE."""
    with odernn.nfe_counter(block) as nfe:
        out = block(z0)
        out.pow(2).sum().backward()
    return out.detach(), [p.grad for p in block.parameters()], (nfe.forward, nfe.backward)


def _assert_same_steps(got, expected, *, rtol, atol):
    """The same NFE (the same accepted and rejected steps), outputs and gradients within (output, gradient)
    tolerances."""
    (o, g, n), (eo, eg, en) = got, expected
    assert n == en
    torch.testing.assert_close(o, eo, rtol=rtol[0], atol=atol[0])
    for a, b in zip(g, eg):
        torch.testing.assert_close(a, b, rtol=rtol[1], atol=atol[1])


@pytest.mark.parametrize("adjoint", [True, False])
@pytest.mark.parametrize("name", ["node", "anode", "sonode", "hbnode", "ghbnode"])
def test_odeblock_runs_the_fused_solve_with_the_same_steps(name, adjoint):
    """ODEBlock on image-shaped states: the fused solve gives the torchdiffeq path's results, gradients and NFE."""
    C = 3
    res = []
    for fused in (True, False):
        torch.manual_seed(0)
        cin = {"sonode": 2 * C, "anode": C + 2}.get(name, C)
        net = nn.Sequential(nn.Conv2d(cin, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, C + 2 if name == "anode" else C,
                                                                                 3, padding=1))
        dyn = odernn.make_dynamics(name, net, **({"augment_dim": 2} if name == "anode" else {}))
        block = odernn.ODEBlock(dyn, t0=0.0, t1=1.0, rtol=1e-6, atol=1e-7, adjoint=adjoint).double()
        block.solver = block.solver.replace(fused=fused)
        z0 = torch.randn(2, dyn.state_size(C), 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        res.append(_block_step(block, z0))
    _assert_same_steps(*res, rtol=(1e-13, 1e-11), atol=(1e-13, 1e-13))


@needs_compiler
def test_odeblock_compiled_gap_blocks_on_image_states():
    """ODEBlock(compile=True) on (B, C, H, W) states runs the solve as compiled gap blocks: the same NFE as eager,
    values and gradients to round-off (float64)."""
    res = []
    for compile_ in (False, True):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 3, 3, padding=1))
        solver = odernn.Solver(rtol=1e-6, atol=1e-7, compile=compile_)
        block = odernn.ODEBlock(odernn.HBNODE(net), solver=solver).double()
        z0 = torch.randn(2, 6, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        res.append(_block_step(block, z0))
    _assert_same_steps(*res, rtol=(1e-11, 1e-10), atol=(1e-12, 1e-12))
    assert {"dopri5 gap block", "adjoint dopri5 gap block"} <= {e["kind"] for e in odernn.compile_log()}


def test_odeblock_fused_on_another_interval_agrees_to_tolerance():
    """On [0.5, 1.7] the fused solve runs in rescaled time s in [0, 1]: the same solution to the tolerance (the last
    step may land on the other side of the end point, so NFE can differ by one step)."""
    outs = []
    for fused in (True, False):
        torch.manual_seed(0)
        dyn = odernn.HBNODE(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3)))
        block = odernn.ODEBlock(dyn, t0=0.5, t1=1.7, rtol=1e-9, atol=1e-10).double()
        block.solver = block.solver.replace(fused=fused)
        z0 = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        out = block(z0)
        out.pow(2).sum().backward()
        outs.append((out.detach(), [p.grad for p in block.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-7, atol=1e-9)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_list_wide_dense_output_is_bitwise_the_per_tensor_one():
    """The adjoint's parameter channels are interpolated with list-wide operations: the very same numbers."""
    from odernn._rk import dense_output
    g = torch.Generator().manual_seed(0)
    for dt, x in [(0.37, 0.61), (1.3, 0.02), (0.05, 1.0)]:
        y0 = [torch.randn(5, 3, generator=g) for _ in range(4)]
        y1 = [torch.randn(5, 3, generator=g) for _ in range(4)]
        ks = [[torch.randn(5, 3, generator=g) for _ in range(4)] for _ in range(7)]
        last = (y0, y1, ks, dt, 0.1)
        wide, one_by_one = dense_output(last, 0.1 + x * dt, 1), dense_output(last, 0.1 + x * dt, 4)
        assert all(torch.equal(a, b) for a, b in zip(wide, one_by_one))
