"""ODE-RNN: gradients, irregular batches, masks, forecasting, clipping and input validation."""

import pytest
import torch

import odernn

NAMES = ["node", "anode", "sonode", "hbnode", "ghbnode"]


def irregular_batch(B=3, T=5, k=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, k, generator=g, dtype=dtype)
    t = torch.cumsum(0.1 + torch.rand(B, T, generator=g, dtype=dtype), dim=1)
    return x, t


def model(name, tol=1e-9, **kw):
    torch.manual_seed(0)
    return odernn.ODERNN(name, 2, 3, 2, rtol=tol, atol=tol, **kw).double()


@pytest.mark.parametrize("name", NAMES)
def test_adjoint_equals_direct_backprop(name):
    x, t = irregular_batch()
    grads = []
    for adjoint in (False, True):
        m = model(name, tol=1e-10, adjoint=adjoint)
        loss = m(x, t).pow(2).mean()
        grads.append(torch.autograd.grad(loss, list(m.parameters())))
    num = sum((a - b).pow(2).sum() for a, b in zip(*grads)).sqrt()
    den = sum(b.pow(2).sum() for b in grads[0]).sqrt()
    assert num / den < 1e-4, (name, float(num / den))


def test_gradients_match_finite_differences():
    x, t = irregular_batch(B=2, T=4)
    m = model("ghbnode", tol=1e-11)
    p = m.cell.weight_ih
    loss = lambda: m(x, t).pow(2).mean()
    (g,) = torch.autograd.grad(loss(), [p])
    eps = 1e-6
    with torch.no_grad():
        for idx in [(0, 0), (5, 1), (8, 3)]:
            old = p[idx].item()
            p[idx] = old + eps
            lp = loss()
            p[idx] = old - eps
            lm = loss()
            p[idx] = old
            fd = (lp - lm) / (2 * eps)
            assert abs(fd - g[idx]) < 1e-6 + 1e-5 * abs(g[idx]), (idx, fd, g[idx])


@pytest.mark.parametrize("name", ["node", "hbnode", "ghbnode"])
def test_each_sample_matches_solving_it_alone(name):
    x, t = irregular_batch(B=4, T=6, seed=1)
    t[2] = t[2] * 3.0  # very different gaps in one batch
    m = model(name, tol=1e-6)
    with torch.no_grad():
        together = m(x, t)
        for b in range(4):
            alone = m(x[b:b + 1], t[b:b + 1])
            torch.testing.assert_close(together[b:b + 1], alone, rtol=1e-5, atol=1e-5)


def test_shared_time_grid_and_time_shift_invariance():
    x, t = irregular_batch(B=2, T=4)
    m = model("hbnode", tol=1e-10)
    with torch.no_grad():
        a = m(x, t[0])  # (T,) shared grid
        b = m(x, t[0].expand(2, -1))
        c = m(x, t[0] + 100.0)  # autonomous dynamics: only the gaps matter
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c, rtol=1e-7, atol=1e-7)


def test_padded_steps_leave_the_state_unchanged():
    x, t = irregular_batch(B=1, T=4)
    m = model("hbnode")
    xp = torch.cat([x, torch.full((1, 2, 2), float("nan"), dtype=x.dtype)], dim=1)
    tp = torch.cat([t, t[:, -1:] + torch.tensor([[1.0, 2.0]], dtype=t.dtype)], dim=1)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    with torch.no_grad():
        ref = m(x, t)
        out = m(xp, tp, mask)
    torch.testing.assert_close(out[:, :4], ref)
    torch.testing.assert_close(out[:, 4], ref[:, -1])
    torch.testing.assert_close(out[:, 5], ref[:, -1])


def test_fully_masked_middle_step_is_skipped():
    x, t = irregular_batch(B=1, T=5)
    m = model("ghbnode")
    keep = [0, 1, 3, 4]
    mask = torch.tensor([[True, True, False, True, True]])
    with torch.no_grad():
        ref = m(x[:, keep], t[:, keep])
        out = m(x, t, mask)
    torch.testing.assert_close(out[:, keep], ref, rtol=1e-6, atol=1e-6)


def test_per_feature_mask_ignores_unobserved_values():
    x, t = irregular_batch(B=2, T=4)
    mask = torch.ones(2, 4, 2, dtype=torch.bool)
    mask[0, 1, 0] = False
    x2 = x.clone()
    x2[0, 1, 0] = float("nan")
    x3 = x.clone()
    x3[0, 1, 0] = 123.0
    m = model("hbnode")
    with torch.no_grad():
        a, b = m(x2, t, mask), m(x3, t, mask)
        c = m(x, t)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)  # the mask is seen by the cell


def test_forecast_matches_forward_and_continues_the_ode():
    x, t = irregular_batch(B=2, T=4)
    m = model("hbnode", tol=1e-10)
    tf = t[:, -1:] + torch.tensor([[0.3, 0.9, 1.4]], dtype=t.dtype)
    with torch.no_grad():
        enc = m.encode(x, t)
        out, fut = enc.outputs, m.extrapolate(enc, tf)
        torch.testing.assert_close(out, m(x, t))
        torch.testing.assert_close(fut, m.forecast(x, t, tf))
        fut2 = m.forecast(x, t, tf[:, [1]])
    assert fut.shape == (2, 3, 2)
    torch.testing.assert_close(fut[:, 1:2], fut2, rtol=1e-7, atol=1e-7)  # chaining = one longer solve
    with pytest.raises(ValueError, match="after each sample's last"):
        m.forecast(x, t, t[:, -2:-1])


def test_t0_evolves_to_the_first_observation():
    x, t = irregular_batch(B=2, T=3)
    m = model("hbnode")
    with torch.no_grad():
        a = m(x, t)
        b = m(x, t, t0=t[:, 0] - 0.5)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="t0 must be strictly before"):
        m(x, t, t0=t[:, 0])


def test_adjoint_clip_bounds_every_observation_and_is_inactive_when_large():
    x, t = irregular_batch(B=3, T=6)
    x = 3 * x

    def observation_grads(clip):
        m = model("hbnode", tol=1e-8, adjoint_clip=clip)
        probe = torch.zeros(x.shape[0], x.shape[1], m.state_size, dtype=x.dtype, requires_grad=True)
        loss = 1e3 * m.encode(x, t, probe=probe).outputs[:, -1].pow(2).sum()
        gs = torch.autograd.grad(loss, [probe] + list(m.parameters()))
        return [gs[0][:, i].norm(dim=1) for i in range(x.shape[1])], gs[1:]

    norms, _ = observation_grads(None)
    c = 0.5 * min(float(n.max()) for n in norms[1:])
    assert max(float(n.max()) for n in norms) > c  # the setting makes clipping bite
    clipped, pg = observation_grads(c)
    assert all(float(n.max()) <= c * (1 + 1e-9) for n in clipped)
    _, g_none = observation_grads(None)
    _, g_big = observation_grads(1e12)
    for a, b in zip(g_none, g_big):
        torch.testing.assert_close(a, b)
    assert any(not torch.allclose(a, b) for a, b in zip(g_none, pg))


def test_clip_adjoint_function():
    z = torch.randn(4, 3, requires_grad=True)
    g = torch.tensor([[3.0, 4.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 10.0], [0.0, 0.0, 0.0]])
    (out,) = torch.autograd.grad(odernn.clip_adjoint(z, 1.0), z, g)
    torch.testing.assert_close(out[0], torch.tensor([0.6, 0.8, 0.0]))
    torch.testing.assert_close(out[1], g[1])
    torch.testing.assert_close(out[2], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(out[3], g[3])
    with pytest.raises(ValueError, match="positive"):
        odernn.clip_adjoint(z, 0.0)


@pytest.mark.parametrize("bad, kind, match", [
    (lambda x, t: (x, t.flip(1)), ValueError, "strictly increasing"),
    (lambda x, t: (x, torch.cat([t[:, :1], t[:, :-1]], 1)), ValueError, "strictly increasing"),
    (lambda x, t: (x, t.clone().index_fill_(1, torch.tensor([2]), float("nan"))), ValueError, "NaN or inf"),
    (lambda x, t: (x.clone().index_fill_(1, torch.tensor([1]), float("nan")), t), ValueError, "NaN or inf"),
    (lambda x, t: (x.clone().index_fill_(1, torch.tensor([1]), float("inf")), t), ValueError, "NaN or inf"),
    (lambda x, t: (x[..., :1], t), ValueError, r"input_size=2"),
    (lambda x, t: (x[0], t), ValueError, r"shape \(batch, time"),
    (lambda x, t: (x, t[:2]), ValueError, "batch sizes differ"),
    (lambda x, t: (x, t[:, :3]), ValueError, "must have shape"),
    (lambda x, t: (x.long(), t), TypeError, "floating-point"),
    (lambda x, t: (x, t.long()), TypeError, "floating-point"),
    (lambda x, t: (x.numpy(), t), TypeError, "torch.Tensor"),
    (lambda x, t: (x[:, :0], t[:, :0]), ValueError, "empty"),
])
def test_bad_input_is_rejected_with_a_clear_message(bad, kind, match):
    x, t = irregular_batch(B=3, T=5)
    m = model("hbnode")
    x, t = bad(x, t)
    with pytest.raises(kind, match=match):
        m(x, t)


def test_bad_masks_and_constructor_arguments():
    x, t = irregular_batch(B=3, T=5)
    m = model("hbnode")
    with pytest.raises(TypeError, match="bool"):
        m(x, t, torch.ones(3, 5))
    with pytest.raises(ValueError, match="mask must have shape"):
        m(x, t, torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown dynamics"):
        odernn.ODERNN("lstm", 2, 3, 2)
    with pytest.raises(TypeError, match="name or an odernn.Dynamics"):
        odernn.ODERNN(42, 2, 3, 2)
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        odernn.ODERNN("node", 2, 0, 2)
    with pytest.raises(ValueError, match="unknown solver method"):
        odernn.ODERNN("node", 2, 3, 2, method="rk45")
    with pytest.raises(ValueError, match="rtol must be a positive"):
        odernn.ODERNN("node", 2, 3, 2, rtol=-1.0)
    with pytest.raises(ValueError, match="adjoint_clip"):
        odernn.ODERNN("node", 2, 3, 2, adjoint_clip=0.0)
    with pytest.raises(ValueError, match="augment_dim only applies"):
        odernn.ODERNN("node", 2, 3, 2, augment_dim=2)


def test_runaway_solve_fails_fast_with_a_clear_error():
    """An exploding field: the solver hits max_steps and raises SolverError instead of hanging."""
    class Explode(torch.nn.Module):
        def forward(self, h):
            return 50.0 * h.pow(3) + 100.0

    dyn = odernn.NODE(Explode())
    with pytest.raises(odernn.SolverError, match="max_steps|underflow|non-finite"):
        odernn.odesolve(dyn, torch.ones(1, 2), torch.tensor([0.0, 10.0]), max_steps=200, adjoint=False)
    m = odernn.ODERNN(dyn, 2, 2, 1, max_steps=50, feed_mask=False)
    x, t = irregular_batch(B=1, T=3, dtype=torch.float32)
    with pytest.raises(odernn.SolverError):
        m(x, 10 * t)


def test_fixed_grid_methods_and_float32():
    x, t = irregular_batch(B=2, T=4, dtype=torch.float32)
    for method, extra in (("rk4", dict(step_size=0.25)), ("euler", dict(step_size=0.1)), ("bosh3", {})):
        m = odernn.ODERNN("ghbnode", 2, 3, 2, method=method, **extra)
        out = m(x, t)
        out.sum().backward()
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="needs step_fraction"):
        odernn.ODERNN("node", 2, 3, 2, method="rk4")


def test_stiff_solve_with_adjoint_fails_fast():
    """A stiff field over a long span exceeds max_steps and raises SolverError instead of hanging; the same field
    over a short span solves fine."""
    class Stiff(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(1.0))

        def forward(self, h):
            return -1e4 * self.w * h  # stiff: explicit steps must be tiny over a long gap

    dyn = odernn.NODE(Stiff())
    z0 = torch.ones(1, 2, requires_grad=True)
    out = odernn.odesolve(dyn, z0, torch.tensor([0.0, 1e-3]), max_steps=50, rtol=1e-6, atol=1e-8)
    with pytest.raises(odernn.SolverError):
        odernn.odesolve(dyn, z0, torch.tensor([0.0, 50.0]), max_steps=50, rtol=1e-6, atol=1e-8).sum().backward()
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("method", ["bosh3", "dopri5"])
def test_zero_gap_samples_give_finite_direct_gradients(method):
    """A padded (zero-gap) sample next to a moving one: step-size norms must not leak NaN into gradients."""
    x, t = irregular_batch(B=2, T=4)
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[1, 2:] = False
    m = odernn.ODERNN("hbnode", 2, 3, 2, method=method, adjoint=False, lean=False).double()
    m(x, t, mask).pow(2).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_step_size_norms_are_not_differentiated():
    x = torch.zeros(3, 4, requires_grad=True)
    for name in ("sample", "rms"):
        assert not odernn.Solver(norm=name).norm_function(x * 1.0).requires_grad


def test_forecast_returns_one_step_priors():
    """priors[:, i] is the readout of the state evolved to t_i before the cell folds x_i in."""
    x, t = irregular_batch(B=2, T=4)
    m = model("hbnode", tol=1e-10)
    tf = t[:, -1:] + 0.5
    with torch.no_grad():
        enc = m.encode(x, t)
        out, priors, fut = enc.outputs, enc.priors, m.extrapolate(enc, tf)
        fut_prefix = m.forecast(x[:, :2], t[:, :2], t[:, 2:3])  # state after obs 0..1, evolved to t_2
        alone = m.forecast(x, t, tf)
    assert priors.shape == out.shape == (2, 4, 2)
    torch.testing.assert_close(priors[:, 2:3], fut_prefix, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(fut, alone)
    torch.testing.assert_close(priors[:, 0], m.readout(torch.zeros(2, 3, dtype=x.dtype)))
