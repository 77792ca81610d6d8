"""Issue 17: learning-rate schedules, NFEs under the paper's solver design, checkpoints that belong to one run, and
runs that continue exactly on a fresh clone holding only the committed run folders."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import odernn
from recipes import reproduce, walker2d
from recipes._checkpoint import load_checkpoint
from recipes._cli import lr_schedule_arg, parse_lr_schedule
from recipes._files import read_csv

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "hbnode", "--rtol", "1e-3", "--atol", "1e-3", "--batch-size", "4", "--max-batches", "2",
        "--threads", "1", "--compile", "off", "--no-progress"]
TIMING = {"seconds", "eval_seconds", "paper_probe_seconds"}


# the suite's one check that a dataset is there (tests/ is on sys.path while pytest collects)
from test_recipes_seq import needs_walker  # noqa: E402


def _rows(folder: Path, drop=TIMING) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in drop} for r in read_csv(folder / "metrics.csv")]


# ---------------------------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------------------------

def test_lr_schedule_parsing():
    assert parse_lr_schedule("0:1e-3,50:3e-3") == ((0, 1e-3), (50, 3e-3))
    assert parse_lr_schedule(" 0:0.01 ") == ((0, 0.01),)
    assert lr_schedule_arg("0:1e-3, 50:3e-3") == lr_schedule_arg("0:0.001,50:0.003") == "0:0.001,50:0.003"
    assert lr_schedule_arg("OFFICIAL") == "official"
    for bad, why in [("", "EPOCH:LR"), ("1e-3", "EPOCH:LR"), ("5:1e-3", "starts at epoch 0"),
                     ("0:1e-3,0:2e-3", "strictly increase"), ("0:1e-3,50:-1", "positive"), ("0:nan", "positive"),
                     ("0:1e-3,x:2", "cannot read"), ("-1:1e-3", "0 or more")]:
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            lr_schedule_arg(bad)


def test_official_schedules_per_model():
    spec = walker2d.make_spec()
    args = walker2d.make_parser().parse_args(["--lr-schedule", "official"])
    from recipes._driver import lr_schedule_of

    assert lr_schedule_of(spec, "node", args) == lr_schedule_of(spec, "anode", args) == ((0, 3e-3),)
    for m in ("sonode", "hbnode", "ghbnode"):
        assert lr_schedule_of(spec, m, args) == ((0, 1e-3), (50, 3e-3))
    assert lr_schedule_of(spec, "hbnode", walker2d.make_parser().parse_args([])) == ((0, 3e-3),)  # Table 1
    with pytest.raises(odernn_recipe_error(), match="no schedule for walker2d model 'ncde'"):
        lr_schedule_of(spec, "ncde", args)


def odernn_recipe_error():
    from recipes._cli import RecipeError

    return RecipeError


@needs_walker
def test_schedule_recreates_adam_and_resume_crosses_the_boundary_exactly(tmp_path):
    sched = ["--lr-schedule", "0:1e-3,2:3e-3"]
    walker2d.main([*TINY, *sched, "--epochs", "3", "--out", str(tmp_path / "a")])
    # interrupted exactly at the boundary: the checkpoint holds the first Adam, the next epoch needs a new one
    walker2d.main([*TINY, *sched, "--epochs", "2", "--out", str(tmp_path / "b")])
    walker2d.main([*TINY, *sched, "--epochs", "3", "--resume", "--out", str(tmp_path / "b")])
    assert _rows(tmp_path / "a" / "hbnode") == _rows(tmp_path / "b" / "hbnode")
    model = walker2d.build_model("hbnode", walker2d.make_parser().parse_args(TINY))
    opt = torch.optim.Adam(model.parameters())
    load_checkpoint(tmp_path / "a" / "hbnode" / "checkpoint.pt", model=model, optimizer=opt, restore_rng=False)
    assert opt.param_groups[0]["lr"] == 3e-3
    steps = {int(s["step"]) for s in opt.state_dict()["state"].values()}
    assert steps == {2}  # a new Adam at epoch 3: only that epoch's 2 batches, not 6
    config = json.loads((tmp_path / "a" / "hbnode" / "config.json").read_text())
    assert config["lr_schedule"]["after_epochs"] == [[0, 1e-3], [2, 3e-3]]
    assert "new Adam" in config["lr_schedule"]["at_boundary"]
    # a resume with another schedule is refused: it would not continue the same run
    with pytest.raises(odernn_recipe_error(), match="--lr-schedule"):
        walker2d.main([*TINY, "--lr-schedule", "0:1e-3", "--epochs", "4", "--resume", "--out", str(tmp_path / "b")])


# ---------------------------------------------------------------------------------------------------------------
# NFEs under the paper's solver design
# ---------------------------------------------------------------------------------------------------------------

def _odernn(**kw) -> odernn.ODERNN:
    torch.manual_seed(0)
    return odernn.ODERNN("hbnode", 3, 6, 3, rtol=1e-6, atol=1e-6, **kw).double()


def test_paper_solver_is_the_per_gap_design_and_restores_the_model():
    model = _odernn()
    x = torch.randn(5, 12, 3, dtype=torch.float64)
    t = torch.cumsum(0.05 + torch.rand(5, 12, dtype=torch.float64), dim=1)
    reference = _odernn(warm_start=False, solver=odernn.Solver(rtol=1e-6, atol=1e-6, fused=False, norm="rms",
                                                               seminorm=False))
    with odernn.nfe_counter(reference) as want:
        torch.autograd.grad(reference(x, t).pow(2).mean(), list(reference.parameters()))
    before = (model.solver, model.warm_start)
    with odernn.paper_solver(model), odernn.nfe_counter(model) as got:
        assert model.solver == odernn.Solver(rtol=1e-6, atol=1e-6).paper_design() and not model.warm_start
        y = model(x, t)
        torch.autograd.grad(y.pow(2).mean(), list(model.parameters()))
    assert (got.forward, got.backward) == (want.forward, want.backward) and got.forward > 0
    assert (model.solver, model.warm_start) == before
    with odernn.nfe_counter(model) as ours:
        torch.autograd.grad(model(x, t).pow(2).mean(), list(model.parameters()))
    assert ours.forward < got.forward  # the warm-started fused loop needs fewer evaluations
    with pytest.raises(RuntimeError, match="boom"), odernn.paper_solver(model):
        raise RuntimeError("boom")
    assert (model.solver, model.warm_start) == before  # restored after an exception too
    with pytest.raises(ValueError, match="no odernn layer"):
        with odernn.solving_with(nn.Linear(2, 2), odernn.Solver()):
            pass
    with pytest.raises(TypeError, match="Solver"):
        with odernn.solving_with(model, "dopri5"):
            pass
    with pytest.raises(ValueError, match="warm_start must be None .*, True .*, False .* or \"gap\".*'yes'"):
        with odernn.solving_with(model, odernn.Solver(), warm_start="yes"):
            pass
    with odernn.solving_with(model, odernn.Solver(rtol=1e-6, atol=1e-6), warm_start="gap"):
        assert model.warm_start == "gap"
    assert model.warm_start is True


@needs_walker
def test_paper_nfe_probe_never_changes_training(tmp_path):
    walker2d.main([*TINY, "--epochs", "3", "--paper-nfe-every", "2", "--out", str(tmp_path / "p")])
    walker2d.main([*TINY, "--epochs", "3", "--out", str(tmp_path / "q")])
    probed = read_csv(tmp_path / "p" / "hbnode" / "metrics.csv")
    paper = ("paper_forward_nfe", "paper_backward_nfe", "paper_test_nfe", "paper_probe_seconds")
    assert _rows(tmp_path / "q" / "hbnode") == _rows(tmp_path / "p" / "hbnode", TIMING | set(paper))
    assert [r["paper_forward_nfe"] is not None for r in probed] == [True, True, False]  # epoch 1, then every 2
    for r in probed[:2]:
        # the paper's design starts every gap from the initial-step heuristic: more evaluations than ours
        assert r["paper_forward_nfe"] > r["forward_nfe"] and r["paper_backward_nfe"] > 0 and r["paper_test_nfe"] > 0
    # the probe may be switched on when resuming: it only measures
    walker2d.main([*TINY, "--epochs", "4", "--paper-nfe-every", "1", "--resume", "--out", str(tmp_path / "q")])
    assert read_csv(tmp_path / "q" / "hbnode" / "metrics.csv")[-1]["paper_forward_nfe"] > 0


# ---------------------------------------------------------------------------------------------------------------
# A checkpoint belongs to one run (issue 18, item 1)
# ---------------------------------------------------------------------------------------------------------------

@needs_walker
def test_runs_sharing_a_checkpoint_dir_never_take_each_others_checkpoint(tmp_path):
    ck = ["--checkpoint-dir", str(tmp_path / "ck")]
    walker2d.main([*TINY, "--epochs", "1", "--out", str(tmp_path / "one"), *ck])
    path = tmp_path / "ck" / "hbnode" / "checkpoint.pt"
    before = path.read_bytes()
    for again in ("--overwrite", "--resume"):
        with pytest.raises(odernn_recipe_error(), match=r"belongs to the run in .*one/hbnode"):
            walker2d.main([*TINY, "--epochs", "2", again, "--out", str(tmp_path / "two"), *ck])
        assert path.read_bytes() == before  # neither replaced nor continued from
    walker2d.main([*TINY, "--epochs", "2", "--resume", "--out", str(tmp_path / "one"), *ck])  # its own run: fine
    assert [r["epoch"] for r in read_csv(tmp_path / "one" / "hbnode" / "metrics.csv")] == [1, 2]


# ---------------------------------------------------------------------------------------------------------------
# Runs that survive a new machine
# ---------------------------------------------------------------------------------------------------------------

def _committed_copy(src: Path, dst: Path) -> None:
    """What a fresh clone holds of a run folder: what git would commit (no lock, no logs)."""
    ignore = shutil.ignore_patterns(".lock", "*.log")
    shutil.copytree(src, dst, ignore=ignore)


@needs_walker
def test_reproduce_continues_a_committed_run_exactly_on_a_fresh_clone(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    tiny = " ".join(TINY[2:]) + " --paper-nfe-every 1"
    common = ["--tasks", "walker2d", "--models", "hbnode", "--jobs", "1", "--no-report", "--run-args", tiny]
    # the uninterrupted run
    assert reproduce.main([*common, "--walker-epochs", "3", "--out", str(tmp_path / "whole"),
                           "--log-dir", str(tmp_path / "logs")]) == {"walker2d/hbnode": 0}
    # an interrupted one: one epoch done, its folder (with its checkpoint) committed and cloned elsewhere
    assert reproduce.main([*common, "--walker-epochs", "1", "--keep-checkpoints", "--out", str(tmp_path / "here"),
                           "--log-dir", str(tmp_path / "logs")]) == {"walker2d/hbnode": 0}
    assert (tmp_path / "here" / "walker2d" / "hbnode" / "checkpoint.pt").stat().st_size < 1 << 20
    _committed_copy(tmp_path / "here", tmp_path / "clone")
    assert reproduce.main([*common, "--walker-epochs", "3", "--out", str(tmp_path / "clone"),
                           "--log-dir", str(tmp_path / "logs2")]) == {"walker2d/hbnode": 0}
    whole, clone = tmp_path / "whole" / "walker2d" / "hbnode", tmp_path / "clone" / "walker2d" / "hbnode"
    assert [r["epoch"] for r in read_csv(clone / "metrics.csv")] == [1, 2, 3]
    assert _rows(whole) == _rows(clone)
    # finished: the checkpoint is gone, a summary is there, and running the protocol again skips the run
    assert not (clone / "checkpoint.pt").exists() and not (whole / "checkpoint.pt").exists()
    assert (clone / "summary.json").is_file()
    assert reproduce.main([*common, "--walker-epochs", "3", "--out", str(tmp_path / "clone"),
                           "--log-dir", str(tmp_path / "logs2")]) == {}


@needs_walker
def test_resume_of_a_run_stopped_before_its_first_epoch_starts_it(tmp_path):
    """A run folder committed while its first epoch ran holds only config.json: --resume starts that run."""
    walker2d.main([*TINY, "--epochs", "1", "--out", str(tmp_path / "a")])
    folder = tmp_path / "b" / "hbnode"
    folder.mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "hbnode" / "config.json", folder / "config.json")
    walker2d.main([*TINY, "--epochs", "1", "--resume", "--out", str(tmp_path / "b")])
    assert _rows(tmp_path / "a" / "hbnode") == _rows(folder)


def test_point_cloud_chunks_are_finished_by_the_recipes_own_rule(tmp_path):
    """One rule decides whether a point-cloud run is done (its result.json holds the epochs, or a failure), for the
    recipe's --resume and for the reproduce driver, which then skips a chunk whose runs are all done."""
    from recipes import point_cloud

    folder = tmp_path / "point_cloud" / "hbnode"
    chunk = reproduce.Run("point_cloud", "hbnode", ("--model", "hbnode", "--runs", "3", "--first-run", "2"),
                          name="hbnode/runs_002-004")

    def write(run, **row):
        (folder / f"run_{run:03d}").mkdir(parents=True, exist_ok=True)
        (folder / f"run_{run:03d}" / "result.json").write_text(json.dumps({"run": run, **row}))

    write(2, failed=0, epochs=point_cloud.EPOCHS)
    write(3, failed=1, epochs=None)  # a blown-up run is a result
    assert not reproduce.finished(chunk, tmp_path)  # run 4 missing
    write(4, failed=0, epochs=point_cloud.EPOCHS - 1)  # stopped early: not finished
    assert not reproduce.finished(chunk, tmp_path)
    assert not point_cloud.run_finished(folder / "run_004" / "result.json", point_cloud.EPOCHS)
    write(4, failed=0, epochs=point_cloud.EPOCHS)
    assert reproduce.finished(chunk, tmp_path)
    longer = dataclasses.replace(chunk, argv=chunk.argv + ("--epochs", str(point_cloud.EPOCHS + 1)))
    assert not reproduce.finished(longer, tmp_path)  # an explicit --epochs is the length to reach
    (folder / "run_003" / "result.json").write_text("[1, 2]")  # unreadable: left to the recipe, which says so
    assert not reproduce.finished(chunk, tmp_path)
    with pytest.raises(point_cloud.RecipeError, match="not a point-cloud run result"):
        point_cloud.run_finished(folder / "run_003" / "result.json", point_cloud.EPOCHS)
