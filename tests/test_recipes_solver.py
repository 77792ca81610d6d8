"""One odernn.Solver per run, from the shared command line (--method, --rtol, --atol, --adjoint, the fixed step,
--compile), used by every model a recipe builds."""

from __future__ import annotations

import json

import pytest
import torch

import odernn
from recipes import _image_recipe, plane_vibration, point_cloud, walker2d
from recipes._checkpoint import CheckpointError
from recipes._cli import solver_from_args
from recipes._ncde import NeuralCDE


@pytest.mark.parametrize("mode, compiled", [("auto", True), ("on", True), ("off", False)])
def test_the_command_line_makes_one_solver(mode, compiled):
    args = walker2d.make_parser().parse_args(["--method", "rk4", "--step-fraction", "0.25", "--rtol", "1e-4",
                                              "--no-adjoint", "--compile", mode])
    solver = solver_from_args(args)
    assert solver == odernn.Solver(method="rk4", step_fraction=0.25, rtol=1e-4, atol=1e-7, adjoint=False,
                                   compile=compiled)
    model = walker2d.build_model("hbnode", args)
    assert model.core.solver == solver  # the ODE-RNN runs with exactly that solver


def test_defaults_are_the_papers_protocol():
    for mod in (plane_vibration, walker2d):
        solver = solver_from_args(mod.make_parser().parse_args([]))
        assert (solver.method, solver.rtol, solver.atol, solver.adjoint) == ("dopri5", 1e-7, 1e-7, True)
    image = solver_from_args(_image_recipe.image_parser("mnist", "x").parse_args([]))
    assert (image.rtol, image.atol) == (1e-5, 1e-5)


def test_continuous_depth_recipes_take_a_step_size_in_time_units():
    args = _image_recipe.image_parser("mnist", "x").parse_args(["--method", "euler", "--step-size", "0.1"])
    net = _image_recipe.image_spec("mnist").build_model("hbnode", args)
    assert net.block.solver.method == "euler" and net.block.solver.step_size == 0.1


@pytest.mark.parametrize("argv, message", [
    (["--method", "rk4"], r"solver flags: .*rk4"),
    (["--method", "nonsense"], r"solver flags: unknown solver method 'nonsense'"),
    (["--compile", "maybe"], r"--compile: invalid choice: 'maybe'"),
])
def test_bad_solver_flags_are_refused_by_argparse(capsys, argv, message):
    with pytest.raises(SystemExit):
        walker2d.make_parser().parse_args(argv)
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)


def test_the_neural_cde_takes_the_solver_and_its_norm():
    torch.manual_seed(0)
    x, t = torch.randn(2, 6, 3), torch.cumsum(torch.rand(2, 6) + 0.5, 1)
    m = NeuralCDE(3, 4, 8, 2, solver=odernn.Solver(method="rk4", step_fraction=0.5))
    with odernn.nfe_counter(m) as nfe:
        m(x, t).sum().backward()
    assert nfe.forward == 4 * 2 * 5  # rk4: 4 evaluations per step, 2 steps per gap, 5 gaps
    assert 4 * 2 * 5 <= nfe.backward <= 4 * 2 * 5 + 1  # the same steps back (torchdiffeq may add one evaluation)
    with pytest.raises(ValueError, match="needs step_fraction"):
        NeuralCDE(3, 4, 8, 2, method="rk4")
    adaptive = NeuralCDE(3, 4, 8, 2, rtol=1e-5)
    assert adaptive.solver.rtol == 1e-5 and adaptive.solver.norm_function is odernn.Solver().norm_function


@pytest.mark.slow  # resuming with --compile on compiles the model: about 30 s on 2 cores
def test_config_records_the_solver_and_resume_may_change_compile_only(tmp_path):
    base = ["--model", "hbnode", "--runs", "1", "--rtol", "1e-3", "--atol", "1e-4", "--device", "cpu",
            "--out", str(tmp_path)]
    point_cloud.main([*base, "--epochs", "1", "--compile", "off"])
    cfg = json.loads((tmp_path / "hbnode" / "run_000" / "config.json").read_text())
    assert cfg["solver"]["method"] == "dopri5" and cfg["solver"]["rtol"] == 1e-3 and cfg["solver"]["compile"] is False
    with pytest.raises(CheckpointError, match=r"--method \(checkpoint: 'dopri5', now: 'bosh3'\)"):
        point_cloud.main([*base, "--epochs", "2", "--resume", "--method", "bosh3"])
    point_cloud.main([*base, "--epochs", "2", "--resume", "--compile", "on"])


def test_neural_cde_adjoint_gradients_survive_interleaved_forwards():
    """Two forwards, then one backward through both: each adjoint solve must use its own control path, so the
    gradients equal those of two separate forward/backward passes."""
    torch.manual_seed(0)
    m = NeuralCDE(3, 4, 8, 2, rtol=1e-6, atol=1e-6).double()
    x1, x2 = torch.randn(2, 5, 3, dtype=torch.float64), 3 * torch.randn(2, 5, 3, dtype=torch.float64)
    t = torch.cumsum(torch.rand(2, 5, dtype=torch.float64) + 0.5, 1)
    m(x1, t).pow(2).sum().backward()
    m(x2, t).pow(2).sum().backward()
    separate = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    (m(x1, t).pow(2).sum() + m(x2, t).pow(2).sum()).backward()
    for a, b in zip(separate, [p.grad for p in m.parameters()]):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
