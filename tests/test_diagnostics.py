"""odernn.diagnostics: adjoint norms (Fig. 3) and the paired adjoint spectrum (Prop. 4)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import odernn
from odernn import diagnostics

B, T, K, H, O = 4, 6, 3, 4, 2


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, K, generator=g, dtype=torch.float64)
    t = torch.cumsum(0.5 + torch.rand(B, T, generator=g, dtype=torch.float64), dim=1)
    y = torch.randn(B, T, O, generator=g, dtype=torch.float64)
    return x, t, y


def _model(name: str = "hbnode", *, adjoint: bool = True, clip=None, seed: int = 0, **kw) -> odernn.ODERNN:
    torch.manual_seed(seed)
    m = odernn.ODERNN(name, K, H, O, adjoint=adjoint, adjoint_clip=clip, rtol=1e-9, atol=1e-10, **kw)
    return m.double()


def _by_retain_grad(model, x, t, y, t0):
    """Norms by hand, independently of ODERNN's loop: the recurrence written out with ``odernn.odesolve`` per sample
    and gap (direct backpropagation), ``retain_grad`` on every arriving state and a plain ``.backward()``."""
    m = copy.deepcopy(model)
    rows = []
    for b in range(B):
        z = torch.zeros(1, m.state_size, dtype=x.dtype)
        t_prev = t0[b]
        rec = []
        for i in range(T):
            z = odernn.odesolve(m.dynamics, z, torch.stack([t_prev, t[b, i]]), rtol=1e-12, atol=1e-12,
                                adjoint=False)[:, -1]
            z.retain_grad()
            rec.append(z)
            z = m.cell(torch.cat([x[b:b + 1, i], torch.ones(1, K, dtype=x.dtype)], dim=-1), z)
            t_prev = t[b, i]
        out = m.readout(m.dynamics.hidden(z))
        ((out - y[b:b + 1, -1]).pow(2).sum() / (B * O)).backward()  # sample b's share of the batch MSE
        rows.append(torch.stack([r.grad.reshape(-1).norm() for r in rec]))
    return torch.stack(rows)  # (B, T)


class _PerturbedCell(nn.Module):
    """Wraps a cell and adds a zero perturbation p_i to the state it receives at call i: dL/dp_i = dL/dz_i^-,
    computed without the model's record hook."""

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell
        self.perturbations: list = []

    def forward(self, inp, z):
        p = torch.zeros_like(z, requires_grad=True)
        self.perturbations.append(p)
        return self.cell(inp, z + p)


def _by_perturbation(model, x, t, y):
    m = copy.deepcopy(model)
    wrapped = _PerturbedCell(m.cell)
    m.cell = wrapped
    out = m(x, t)
    grads = torch.autograd.grad(nn.functional.mse_loss(out[:, -1], y[:, -1]), wrapped.perturbations)
    return torch.stack([g.reshape(B, -1).norm(dim=1) for g in grads], dim=1)  # (B, T)


@pytest.mark.parametrize("adjoint", [True, False])
@pytest.mark.parametrize("name", ["node", "hbnode", "ghbnode"])
def test_matches_retain_grad(name, adjoint):
    x, t, y = _data()
    t0 = t[:, 0] - 0.7
    model = _model(name, adjoint=adjoint)
    expected = _by_retain_grad(model, x, t, y, t0)
    got = diagnostics.adjoint_norms(model, x, t, y, t0=t0, reduction="none")
    assert got.shape == (B, T)
    # an independent solver (per-sample odesolve at 1e-12) against the model's own at 1e-9
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12)
    mean = diagnostics.adjoint_norms(model, x, t, y, t0=t0)
    assert mean.shape == (T,)
    torch.testing.assert_close(mean, got.mean(dim=0), rtol=1e-12, atol=1e-14)
    assert (mean > 0).all()


def test_matches_perturbation_including_zero_initial_state():
    # Without t0 the first state is the zero initial state (no graph): it must still get its adjoint.
    x, t, y = _data(1)
    model = _model("ghbnode", adjoint=False)
    expected = _by_perturbation(model, x, t, y)
    got = diagnostics.adjoint_norms(model, x, t, y, reduction="none")
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-14)
    assert (got[:, 0] > 0).all()


@pytest.mark.parametrize("adjoint", [True, False])
def test_frozen_parameters(adjoint):
    x, t, y = _data(7)
    model = _model("ghbnode", adjoint=adjoint)
    expected = diagnostics.adjoint_norms(model, x, t, y)
    for p in model.parameters():
        p.requires_grad_(False)
    torch.testing.assert_close(diagnostics.adjoint_norms(model, x, t, y), expected, rtol=1e-10, atol=1e-14)
    assert not any(p.requires_grad for p in model.parameters())


def test_adjoint_agrees_with_direct():
    x, t, y = _data(2)
    a = diagnostics.adjoint_norms(_model("hbnode", adjoint=True), x, t, y)
    d = diagnostics.adjoint_norms(_model("hbnode", adjoint=False), x, t, y)
    torch.testing.assert_close(a, d, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("adjoint", [True, False])
def test_clipping_bounds_the_norms(adjoint):
    x, t, y = _data(3)
    free = diagnostics.adjoint_norms(_model("node", adjoint=adjoint), x, t, y, reduction="none")
    c = 0.5 * float(free.max())
    assert (free > c).any()  # the setup really needs clipping
    clipped_model = _model("node", adjoint=adjoint, clip=c)
    got = diagnostics.adjoint_norms(clipped_model, x, t, y, reduction="none")
    assert float(got.max()) <= c + 1e-6
    # What is carried is the clip of the adjoint arriving from (clipped) downstream, per sample.
    if not adjoint:
        arriving = _by_perturbation(clipped_model, x, t, y)
        assert (arriving > c).any()
        torch.testing.assert_close(got, arriving.clamp(max=c), rtol=1e-10, atol=1e-14)


def test_clip_rule_is_the_library_clip_and_idempotent():
    from odernn.diagnostics import _clipped
    g = torch.randn(5, 3, 2, dtype=torch.float64) * torch.tensor([0.1, 1.0, 3.0, 10.0, 0.01],
                                                                  dtype=torch.float64)[:, None, None]
    once = _clipped(g, 1.0)
    norms = g.reshape(5, -1).norm(dim=1)
    torch.testing.assert_close(once.reshape(5, -1).norm(dim=1), norms.clamp(max=1.0))
    torch.testing.assert_close(once[norms <= 1.0], g[norms <= 1.0])  # small ones untouched
    torch.testing.assert_close(_clipped(once, 1.0), once)


@pytest.mark.parametrize("adjoint", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_model_unchanged(adjoint, training):
    x, t, y = _data(4)
    model = _model("ghbnode", adjoint=adjoint, clip=0.1)
    model.train(training)
    g = torch.Generator().manual_seed(5)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    diagnostics.adjoint_norms(model, x, t, y)
    assert model.training is training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, p in model.named_parameters():
        assert torch.equal(p.grad, grads[k]), k
    # Parameters without a .grad keep having none.
    for p in model.parameters():
        p.grad = None
    diagnostics.adjoint_norms(model, x, t, y)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("adjoint", [True, False])
def test_custom_loss_and_mask(adjoint):
    x, t, y = _data(6)
    model = _model("hbnode", adjoint=adjoint)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 2] = False
    x_nan = x.clone()
    x_nan[0, 2] = float("nan")
    every_step = diagnostics.adjoint_norms(model, x_nan, t, y, lambda o, yy: ((o - yy) ** 2).mean(), mask=mask)
    last_step = diagnostics.adjoint_norms(model, x_nan, t, y, mask=mask)
    assert torch.isfinite(every_step).all() and every_step.shape == (T,)
    # Losses on earlier outputs add direct contributions there, so the early adjoints differ from the last-step loss.
    assert not torch.allclose(every_step[:-1], last_step[:-1])
    # A (B, O) target is the last step's target.
    torch.testing.assert_close(diagnostics.adjoint_norms(model, x, t, y[:, -1]),
                               diagnostics.adjoint_norms(model, x, t, y))


def test_bad_input():
    x, t, y = _data()
    model = _model("node")
    with pytest.raises(TypeError, match="odernn.ODERNN"):
        diagnostics.adjoint_norms(model.dynamics, x, t, y)
    with pytest.raises(ValueError, match="y must have shape"):
        diagnostics.adjoint_norms(model, x, t, y[:, :, :1])
    with pytest.raises(ValueError, match="scalar"):
        diagnostics.adjoint_norms(model, x, t, y, lambda o, yy: (o - yy) ** 2)
    with pytest.raises(ValueError, match="reduction"):
        diagnostics.adjoint_norms(model, x, t, y, reduction="sum")
    with pytest.raises(ValueError, match="strictly increasing"):
        diagnostics.adjoint_norms(model, x, t.flip(1), y)


# -- Prop. 4 --------------------------------------------------------------------------------------------------------

def _heavy_ball(cls, n, seed, **kw):
    torch.manual_seed(seed)
    net = odernn.MLP(n, n, (3 * n,))
    return cls(net, **kw).double()


@pytest.mark.parametrize("cls,kw", [(odernn.HBNODE, {}), (odernn.HBNODE, {"gamma": 0.8}),
                                    (odernn.GHBNODE, {}), (odernn.GHBNODE, {"omega": 1.0, "chi": 0.5})])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spectrum_pairs_sum_to_minus_gamma(cls, kw, seed):
    n = 7
    dyn = _heavy_ball(cls, n, seed, **kw)
    z = torch.randn(2 * n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    spec = diagnostics.adjoint_spectrum(dyn, z)
    gamma = float(dyn.gamma.detach())
    assert spec.gamma == pytest.approx(gamma)
    assert spec.matrix.shape == (2 * n, 2 * n) and spec.eigenvalues.shape == (2 * n,)
    assert sorted(spec.pairs.flatten().tolist()) == list(range(2 * n))
    assert spec.max_pair_error < 1e-8
    torch.testing.assert_close(spec.pair_sums, torch.full((n,), -gamma, dtype=spec.pair_sums.dtype), atol=1e-8, rtol=0)
    # The matrix has the block structure of eq. 18 / 74.
    M = spec.matrix
    assert torch.equal(M[:n, :n], torch.zeros(n, n, dtype=M.dtype))
    torch.testing.assert_close(M[n:, n:], -gamma * torch.eye(n, dtype=M.dtype))
    if cls is odernn.HBNODE:
        torch.testing.assert_close(M[:n, n:], torch.eye(n, dtype=M.dtype))
    # The eigenvalues are the roots of lambda (lambda + gamma) = mu, mu in the spectrum of J F (Appendix D, eq. 80).
    mu = torch.linalg.eigvals(M[:n, n:] @ M[n:, :n])
    disc = torch.sqrt(gamma ** 2 + 4 * mu)
    roots = torch.cat([(-gamma + disc) / 2, (-gamma - disc) / 2])
    dist = (spec.eigenvalues[:, None] - roots[None, :]).abs().min(dim=1).values
    assert float(dist.max()) < 1e-7


def test_spectrum_pairing_is_not_trivial():
    # A matrix without the structure is paired as well as possible, and the error says it does not satisfy Prop. 4.
    from odernn.diagnostics import _pair
    eig = torch.tensor([0.0, 1.0, 5.0, -2.0], dtype=torch.complex128)
    pairs = _pair(eig, 0.5)
    sums = eig[pairs[:, 0]] + eig[pairs[:, 1]]
    assert float((sums + 0.5).abs().max()) > 1.0


def test_spectrum_segment_and_model():
    n = 5
    dyn = _heavy_ball(odernn.GHBNODE, n, 3)
    g = torch.Generator().manual_seed(3)
    zs = torch.randn(4, 2 * n, dtype=torch.float64, generator=g)
    times = torch.tensor([0.0, 0.1, 0.3, 0.6], dtype=torch.float64)
    seg = diagnostics.adjoint_spectrum(dyn, zs, times)
    singles = torch.stack([diagnostics.adjoint_spectrum(dyn, z).matrix for z in zs])
    w = torch.tensor([0.05, 0.15, 0.25, 0.15], dtype=torch.float64) / 0.6
    torch.testing.assert_close(seg.matrix, (w[:, None, None] * singles).sum(0))
    assert seg.max_pair_error < 1e-8
    mean = diagnostics.adjoint_spectrum(dyn, zs)
    torch.testing.assert_close(mean.matrix, singles.mean(0))
    model = odernn.ODERNN(dyn, K, n, O).double()
    assert diagnostics.adjoint_spectrum(model, zs[:1]).max_pair_error < 1e-8


def test_spectrum_in_the_states_dtype():
    torch.manual_seed(0)
    dyn = odernn.GHBNODE(odernn.MLP(4, 4, (8,)))  # float32
    z = torch.randn(8, dtype=torch.float64)
    spec = diagnostics.adjoint_spectrum(dyn, z)
    assert spec.matrix.dtype == torch.float64 and spec.max_pair_error < 1e-8
    assert all(p.dtype == torch.float32 for p in dyn.parameters())


def test_spectrum_rejects_first_order_and_bad_states():
    for dyn in (odernn.NODE(odernn.MLP(3, 3)), odernn.SONODE(odernn.MLP(6, 3)), odernn.ANODE(odernn.MLP(4, 4), 1)):
        with pytest.raises(TypeError, match="HBNODE or GHBNODE"):
            diagnostics.adjoint_spectrum(dyn, torch.zeros(6))
    dyn = _heavy_ball(odernn.HBNODE, 3, 0)
    with pytest.raises(ValueError, match="even size"):
        diagnostics.adjoint_spectrum(dyn, torch.zeros(5, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point"):
        diagnostics.adjoint_spectrum(dyn, [0.0] * 6)
    with pytest.raises(ValueError, match="strictly increasing"):
        diagnostics.adjoint_spectrum(dyn, torch.zeros(3, 6, dtype=torch.float64), torch.tensor([0.0, 0.2, 0.1]))


# -- the Fig. 3 recipe ----------------------------------------------------------------------------------------------

def _walker_available() -> bool:
    import os
    from pathlib import Path
    root = os.environ.get("ODERNN_DATA")
    return bool(root) and (Path(root) / "walker2d").is_dir()


def test_recipe_models_flag():
    an = pytest.importorskip("recipes.adjoint_norms")
    parse = lambda *argv: an.parse_models(an.make_parser().parse_args(list(argv)))  # noqa: E731
    assert parse() == ["node", "hbnode", "ghbnode"]
    assert parse("--models", "ghbnode, node") == ["ghbnode", "node"]
    assert parse("--model", "hbnode") == ["hbnode"]
    assert parse("--models", "all") == ["node", "anode", "sonode", "hbnode", "ghbnode"]
    for bad in ("ncde", "node,node", "node,lstm", ","):
        with pytest.raises(ValueError, match="--models"):
            parse("--models", bad)


@pytest.mark.skipif(not _walker_available(), reason="needs ODERNN_DATA with walker2d/")
def test_recipe_smoke(tmp_path):
    an = pytest.importorskip("recipes.adjoint_norms")
    from recipes._files import read_csv
    from recipes._loops import TrainingDiverged

    summary = an.main(["--models", "node,hbnode", "--epochs", "1", "--max-batches", "1", "--batch-size", "4",
                       "--eval-batch-size", "4", "--rtol", "1e-2", "--atol", "1e-2", "--threads", "1",
                       "--device", "cpu", "--out", str(tmp_path)])
    rows = read_csv(tmp_path / "adjoint_norms.csv")
    assert list(rows[0]) == ["model", "step", "norm"]
    assert len(rows) == 2 * 64
    assert (tmp_path / "adjoint_norms.png").stat().st_size > 0
    for name in ("node", "hbnode"):
        norms = [r["norm"] for r in rows if r["model"] == name]
        assert [r["step"] for r in rows if r["model"] == name] == list(range(64))
        assert all(v > 0 for v in norms)  # float64 measurement: no underflow to exact zeros
        info = summary["models"][name]
        assert info["decay_first_over_last"] == pytest.approx(norms[0] / norms[-1], rel=1e-12)
        assert all(math.isfinite(info[k]) for k in ("log10_per_step_cell", "log10_per_step_gap"))
    # The paper's claim, by many orders of magnitude even after one batch.
    assert summary["models"]["node"]["decay_first_over_last"] < 1e-6 < summary["models"]["hbnode"]["decay_first_over_last"]


@pytest.mark.skipif(not _walker_available(), reason="needs ODERNN_DATA with walker2d/")
def test_recipe_records_a_failed_model_and_goes_on(tmp_path, monkeypatch):
    an = pytest.importorskip("recipes.adjoint_norms")
    from recipes._files import read_csv
    from recipes._loops import TrainingDiverged

    real = an._train_and_measure

    def flaky(name, *a, **kw):
        if name == "node":
            raise TrainingDiverged("non-finite training loss inf at batch 0")
        return real(name, *a, **kw)

    monkeypatch.setattr(an, "_train_and_measure", flaky)
    summary = an.main(["--models", "node,ghbnode", "--max-batches", "1", "--batch-size", "4", "--eval-batch-size",
                       "4", "--rtol", "1e-2", "--atol", "1e-2", "--device", "cpu", "--out", str(tmp_path)])
    assert summary["models"]["node"]["failed"] is True
    assert summary["models"]["ghbnode"]["decay_first_over_last"] > 0
    rows = read_csv(tmp_path / "adjoint_norms.csv")
    assert {r["model"] for r in rows} == {"ghbnode"} and len(rows) == 64
    assert (tmp_path / "adjoint_norms.png").exists()
