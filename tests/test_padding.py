"""Padding never changes a result: fully masked rows (any stamps, any values; leading, inner or trailing) are skipped
by every path (fused and per-gap, direct and adjoint), by ``encode``/``forecast``/``extrapolate`` and by the
diagnostics' probe (issue 18, item 4)."""

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import odernn
from odernn.diagnostics import adjoint_norms

NAMES = ["node", "anode", "sonode", "hbnode", "ghbnode"]


def _model(name, *, fixed, fused, adjoint, time_dependent=False):
    torch.manual_seed(0)
    kw = dict(method="rk4", step_fraction=0.25) if fixed else dict(rtol=1e-7, atol=1e-7)
    solver = odernn.Solver(fused=fused, adjoint=adjoint, **kw)
    if time_dependent:  # a field that reads t: padding stamps must not reach it either
        dyn = odernn.make_dynamics(name, _TimeNet(name, 3), time_dependent=True)
        return odernn.ODERNN(dyn, 2, 3, 2, solver=solver).double()
    return odernn.ODERNN(name, 2, 3, 2, solver=solver).double()


class _TimeNet(torch.nn.Module):
    def __init__(self, name, n):
        super().__init__()
        self.lin = torch.nn.Linear(odernn._dynamics.net_input_size(name, n, 0),
                                   odernn._dynamics.net_output_size(name, n, 0))

    def forward(self, t, h):
        return torch.tanh(self.lin(h)) * torch.cos(t).reshape(-1, 1)


@st.composite
def padded_batches(draw):
    """Real rows (every one with an observed feature) and the same rows with fully masked rows inserted."""
    B = draw(st.integers(1, 3))
    T = draw(st.integers(1, 4))
    n_pad = draw(st.integers(1, 4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    x = torch.randn(B, T, 2, generator=g, dtype=torch.float64)
    t = torch.cumsum(0.1 + torch.rand(B, T, generator=g, dtype=torch.float64), dim=1) + draw(
        st.sampled_from([0.0, -3.0, 1e3]))
    mask = torch.rand(B, T, 2, generator=g) < 0.7
    mask[..., 0] |= ~mask.any(dim=-1)  # every real row has an observed feature
    Tp = T + n_pad
    xp = torch.empty(B, Tp, 2, dtype=torch.float64)
    tp = torch.empty(B, Tp, dtype=torch.float64)
    mp = torch.zeros(B, Tp, 2, dtype=torch.bool)
    real = []  # (B, T) slot of each real row
    junk = st.sampled_from([float("nan"), float("inf"), -1e300, 0.0, 7.5])
    for b in range(B):
        slots = sorted(draw(st.lists(st.integers(0, Tp - 1), min_size=T, max_size=T, unique=True)))
        real.append(slots)
        xp[b, slots], tp[b, slots], mp[b, slots] = x[b], t[b], mask[b]
        pads = [i for i in range(Tp) if i not in slots]
        # stamps: anywhere strictly between the neighbouring real rows (up to 1e3 before the first / after the last)
        for lo_slot, group in _groups(slots, pads):
            lo = t[b, lo_slot].item() if lo_slot is not None else t[b, 0].item() - draw(st.floats(1e-3, 1e3))
            nxt = sum(1 for s in slots if s < group[0])
            hi = t[b, nxt].item() if nxt < T else lo + draw(st.floats(1e-3, 1e3))
            fr = sorted(draw(st.lists(st.floats(0.01, 0.99), min_size=len(group), max_size=len(group),
                                      unique=True)))
            for i, f in zip(group, fr):
                tp[b, i] = lo + f * (hi - lo)
            for i in group:
                xp[b, i] = torch.tensor([draw(junk), draw(junk)], dtype=torch.float64)
    t_start = None
    if draw(st.booleans()):
        t_start = t[:, 0] - torch.rand(B, generator=g, dtype=torch.float64) - 0.05
    assume(bool((tp.diff(dim=1) > 0).all()))  # rounding can merge stamps in a tiny interval
    return x, t, mask, xp, tp, mp, torch.tensor(real), t_start


def _groups(slots, pads):
    """Padding slots grouped by the real row before them (None: leading)."""
    out = {}
    for p in pads:
        before = [j for j, s in enumerate(slots) if s < p]
        key = before[-1] if before else None
        out.setdefault(key, []).append(p)
    return list(out.items())


def _take(y, real):
    return torch.stack([y[b, real[b]] for b in range(y.shape[0])])


def _check_same(a, b, exact):
    if exact:
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    else:
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(padded_batches(), st.sampled_from(NAMES), st.booleans(), st.booleans(), st.booleans(), st.booleans())
def test_padding_never_changes_a_result(batch, name, fixed, fused, adjoint, time_dependent):
    x, t, mask, xp, tp, mp, real, t_start = batch
    if not fixed:  # adaptive steps are controlled by the worst sample: compare sample by sample
        for b in range(x.shape[0]):
            one = (x[b:b + 1], t[b:b + 1], mask[b:b + 1], xp[b:b + 1], tp[b:b + 1], mp[b:b + 1], real[b:b + 1],
                   None if t_start is None else t_start[b:b + 1])
            _compare(one, name, fixed, fused, adjoint, time_dependent)
    else:
        _compare(batch, name, fixed, fused, adjoint, time_dependent)


def _compare(batch, name, fixed, fused, adjoint, time_dependent):
    x, t, mask, xp, tp, mp, real, t_start = batch
    m = _model(name, fixed=fixed, fused=fused, adjoint=adjoint, time_dependent=time_dependent)
    tf = t[:, -1:] + torch.tensor([[0.3, 1.1]], dtype=torch.float64)
    params = list(m.parameters())

    ref = m.encode(x, t, mask, t_start)
    pad = m.encode(xp, tp, mp, t_start)
    _check_same(_take(pad.outputs, real), ref.outputs, True)
    _check_same(_take(pad.priors, real), ref.priors, True)
    torch.testing.assert_close(pad.t_last, ref.t_last, rtol=0, atol=0)
    f_ref, f_pad = m.extrapolate(ref, tf), m.extrapolate(pad, tf)
    _check_same(f_pad, f_ref, fixed or x.shape[0] == 1)
    g_ref = torch.autograd.grad(ref.outputs.pow(2).sum() + f_ref.pow(2).sum(), params)
    g_pad = torch.autograd.grad(_take(pad.outputs, real).pow(2).sum() + f_pad.pow(2).sum(), params)
    for a, b in zip(g_pad, g_ref):
        _check_same(a, b, False)

    def loss_at(idx):
        return lambda out, y: _take(out, idx).pow(2).sum()

    n_ref = adjoint_norms(m, x, t, x, loss_at(torch.arange(x.shape[1]).expand(x.shape[0], -1)), mask=mask,
                          t0=t_start, reduction="none")
    n_pad = adjoint_norms(m, xp, tp, xp, loss_at(real), mask=mp, t0=t_start, reduction="none")
    _check_same(_take(n_pad, real), n_ref, False)


@pytest.mark.parametrize("fused", [True, False])
def test_the_issue_example_a_leading_padding_stamp_no_longer_moves_the_result(fused):
    torch.manual_seed(0)
    m = odernn.ODERNN("hbnode", 2, 4, 1, solver=odernn.Solver(fused=fused)).double()
    x = torch.randn(1, 4, 2, dtype=torch.float64)
    mask = torch.tensor([[False, True, True, True]])
    outs = []
    for stamp in (-0.05, 0.42, -9.3):
        t = torch.tensor([[stamp, 0.7, 1.5, 2.0]], dtype=torch.float64)
        with torch.no_grad():
            outs.append((m(x, t, mask)[:, 1:], m.forecast(x, t, torch.tensor([[3.0]], dtype=torch.float64), mask)))
    for o, f in outs[1:]:
        assert torch.equal(o, outs[0][0]) and torch.equal(f, outs[0][1])
    with torch.no_grad():
        alone = m(x[:, 1:], torch.tensor([[0.7, 1.5, 2.0]], dtype=torch.float64))
    assert torch.equal(outs[0][0], alone)


def test_t_start_is_checked_against_the_first_observed_row():
    torch.manual_seed(0)
    m = odernn.ODERNN("node", 1, 2, 1).double()
    x = torch.zeros(1, 3, 1, dtype=torch.float64)
    t = torch.tensor([[5.0, 1.0 + 5, 2.0 + 5]], dtype=torch.float64)
    mask = torch.tensor([[False, True, True]])
    with torch.no_grad():
        m(x, t, mask, t_start=torch.tensor([5.5], dtype=torch.float64))  # after the padding stamp: fine
    with pytest.raises(ValueError, match=r"sample 0 has t_start=6\.0 and its first observed row at t=6\.0"):
        m(x, t, mask, t_start=torch.tensor([6.0], dtype=torch.float64))
    for bad in (-math.inf, math.nan):
        with pytest.raises(ValueError, match="t_start contains NaN or inf"):
            m(x, t, mask, t_start=torch.tensor([bad], dtype=torch.float64))


@pytest.mark.parametrize("fused", [True, False])
def test_a_sample_with_no_observed_row_keeps_its_initial_state(fused):
    torch.manual_seed(0)
    m = odernn.ODERNN("ghbnode", 2, 3, 2, solver=odernn.Solver(fused=fused)).double()
    x, t = torch.randn(2, 3, 2, dtype=torch.float64), torch.tensor([[0.0, 1.0, 2.0], [-4.0, 9.0, 70.0]],
                                                                 dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [False, False, False]])
    with torch.no_grad():
        enc = m.encode(x, t, mask)
        first = m.encode(x[:1], t[:1])
        z0 = m._read(m._hidden(torch.zeros(1, 1, m.state_size, dtype=torch.float64)))
    torch.testing.assert_close(enc.outputs[:1], first.outputs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(enc.outputs[1], z0[0].expand(3, -1), rtol=0, atol=0)  # initial state, every step
    assert enc.t_last[0] == t[0, -1] and math.isnan(enc.t_last[1])
    with pytest.raises(ValueError, match="sample 1 has no observed row and was encoded without t_start"):
        m.extrapolate(enc, torch.tensor([80.0], dtype=torch.float64))
    # with t_start it starts (and can be continued) from there, whatever its padding stamps
    ts = torch.tensor([-1.0, 100.0], dtype=torch.float64)
    with torch.no_grad():
        a = m.forecast(x, t, torch.tensor([200.0], dtype=torch.float64), mask, t_start=ts)
        t2 = t.clone()
        t2[1] = torch.tensor([-50.0, 0.0, 150.0])
        b = m.forecast(x, t2, torch.tensor([200.0], dtype=torch.float64), mask, t_start=ts)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert m.encode(x, t, mask, t_start=ts).t_last[1] == 100.0


def test_times_that_require_gradients_take_the_per_gap_path_and_ignore_padding_too():
    torch.manual_seed(0)
    m = odernn.ODERNN("hbnode", 2, 3, 1, rtol=1e-9, atol=1e-9).double()
    x = torch.randn(1, 3, 2, dtype=torch.float64)
    t = torch.tensor([[0.2, 0.9, 1.7]], dtype=torch.float64, requires_grad=True)
    ref = m(x, t)
    ref.sum().backward()
    xp = torch.cat([torch.full((1, 2, 2), float("nan"), dtype=torch.float64), x], dim=1)
    tp = torch.cat([torch.tensor([[-5.0, 0.1]], dtype=torch.float64), t.detach()], dim=1).requires_grad_(True)
    mask = torch.tensor([[False, False, True, True, True]])
    out = m(xp, tp, mask)
    out[:, 2:].sum().backward()
    torch.testing.assert_close(out[:, 2:], ref, rtol=0, atol=0)
    torch.testing.assert_close(tp.grad, torch.cat([torch.zeros(1, 2, dtype=torch.float64), t.grad], dim=1))
