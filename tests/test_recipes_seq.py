"""Sequence recipes (plane vibration, Walker2D) and the shared recipe machinery they run on.

Checked: Table 4's parameter counts, the files a run writes, exact resume, crash-safe checkpoints, 2-process DDP.
Everything runs at a loose tolerance on a couple of tiny batches so the file stays well under a minute and a half.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import odernn
from odernn.data import MissingDataError, ensure_dataset
from recipes import plane_vibration, walker2d
from recipes._checkpoint import load_checkpoint, save_checkpoint
from recipes._files import atomic_write_csv
from recipes._loops import count_parameters
from recipes._ncde import NeuralCDE, ncde_num_params

REPO = Path(__file__).resolve().parents[1]
TINY = ["--rtol", "1e-3", "--atol", "1e-3", "--batch-size", "4", "--max-batches", "2", "--threads", "1",
        "--compile", "off"]


def _have(name: str) -> bool:
    try:
        ensure_dataset(name, download=False)
    except (MissingDataError, FileNotFoundError, OSError):
        return False
    return True


needs_walker = pytest.mark.skipif(not _have("walker2d"), reason="Walker2D data not available (set ODERNN_DATA)")
needs_pv = pytest.mark.skipif(not _have("plane_vibration"), reason="plane vibration data not available")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(plane_vibration.TABLE4_PARAMS))
def test_plane_vibration_param_counts_match_table4(name):
    args = plane_vibration.make_parser().parse_args([])
    n = count_parameters(plane_vibration.build_model(name, args))
    assert abs(n / plane_vibration.TABLE4_PARAMS[name] - 1) <= 0.02, (name, n)


@pytest.mark.parametrize("name", sorted(walker2d.TABLE4_PARAMS))
def test_walker2d_param_counts_match_table4(name):
    args = walker2d.make_parser().parse_args([])
    n = count_parameters(walker2d.build_model(name, args))
    assert abs(n / walker2d.TABLE4_PARAMS[name] - 1) <= 0.02, (name, n)


def test_architectures_follow_appendix_e():
    pv = plane_vibration.build_odernn("hbnode")
    assert pv.state_size == 40 and pv.initial_state.dense.in_features == 320  # d n = 2 x 20, 64 x 5 window
    assert isinstance(pv.dynamics, odernn.HBNODE) and not pv.feed_mask
    so = plane_vibration.build_odernn("sonode")
    assert so.dynamics.net[0].in_features == 38  # SONODE's f sees [h, v]
    an = walker2d.build_odernn("anode")
    assert an.state_size == 24 and an.dynamics.augment_dim == 19
    wk = walker2d.build_odernn("ghbnode")
    assert wk.initial_state is None and wk.cell.net[0].in_features == 2 * 24 + 17  # dn + k
    assert sum(p.numel() for p in wk.dynamics.parameters() if p.dim() == 0) == 2  # omega and chi


def test_ncde_is_sized_like_the_hybrids_and_causal():
    for mod in (plane_vibration, walker2d):
        args = mod.make_parser().parse_args([])
        n = count_parameters(mod.build_model("ncde", args)) if mod is plane_vibration else \
            ncde_num_params(17, walker2d.NCDE_HIDDEN, walker2d._ncde_width(), 17)
        assert abs(n / mod.TABLE4_PARAMS["hbnode"] - 1) <= 0.02
    torch.manual_seed(0)
    m = NeuralCDE(3, 8, 16, 2, rtol=1e-6, atol=1e-6)
    x, t = torch.randn(2, 9, 3), torch.cumsum(torch.rand(2, 9) + 0.5, 1)
    x2 = x.clone()
    x2[:, 6] += 3.0
    with torch.no_grad():
        d = (m(x2, t) - m(x, t)).abs().amax(dim=(0, 2))
    assert d[:6].max() < 1e-5 < d[6]  # outputs before observation 6 do not see it (knots are solver stops)


# ---------------------------------------------------------------------------------------------------------------
# A run's files
# ---------------------------------------------------------------------------------------------------------------

@needs_pv
def test_plane_vibration_all_writes_metrics_summary_and_comparison(tmp_path, capsys):
    out = tmp_path / "pv"
    res = plane_vibration.main(["--model", "all", "--epochs", "1", "--max-batches", "1", "--batch-size", "2",
                                "--rtol", "1e-3", "--atol", "1e-3", "--threads", "1", "--compile", "off",
                                "--out", str(out)])
    assert set(res) == set(plane_vibration.PAPER_MODELS)
    printed = capsys.readouterr().out
    for name in plane_vibration.PAPER_MODELS:
        rows = _rows(out / name / "metrics.csv")
        assert len(rows) == 1
        for col in ("epoch", "train_loss", "valid_loss", "test_loss", "forward_nfe", "backward_nfe", "test_nfe",
                    "seconds", "train_forecast", "train_penalty"):
            assert rows[0][col] != "", col
        assert float(rows[0]["forward_nfe"]) > 0 and float(rows[0]["backward_nfe"]) > 0
        # train loss = forecast + 0.1 x penalty
        r = {k: float(v) for k, v in rows[0].items()}
        assert r["train_loss"] == pytest.approx(r["train_forecast"] + 0.1 * r["train_penalty"], rel=1e-5)
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["model"] == name and summary["num_params"] == res[name]["num_params"]
        assert summary["test_loss"] == pytest.approx(float(rows[0]["test_loss"]))
        assert summary["config"]["lr"] == 1e-4 and summary["config"]["model"] == name
        assert f"{summary['num_params']:,} trainable parameters" in printed
    table = (out / "comparison.md").read_text()
    assert all(f"| {m} |" in table for m in plane_vibration.PAPER_MODELS)
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"


@needs_walker
def test_walker2d_ncde_baseline_runs_and_counts_nfe(tmp_path):
    res = walker2d.main(["--model", "ncde", "--epochs", "1", "--max-batches", "1", "--batch-size", "2",
                         "--rtol", "1e-3", "--atol", "1e-3", "--threads", "1", "--out", str(tmp_path)])
    row = _rows(tmp_path / "ncde" / "metrics.csv")[0]
    assert float(row["forward_nfe"]) > 0 and float(row["backward_nfe"]) > 0 and float(row["test_nfe"]) > 0
    assert abs(res["ncde"]["num_params"] / walker2d.TABLE4_PARAMS["hbnode"] - 1) <= 0.02


# ---------------------------------------------------------------------------------------------------------------
# Resume and crash safety
# ---------------------------------------------------------------------------------------------------------------

@needs_walker
def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    base = ["--model", "hbnode", *TINY]
    walker2d.main([*base, "--epochs", "2", "--out", str(tmp_path / "a")])
    walker2d.main([*base, "--epochs", "1", "--out", str(tmp_path / "b")])
    # a row written after the checkpoint (as if killed between the two writes) must be dropped on resume
    mpath = tmp_path / "b" / "hbnode" / "metrics.csv"
    rows = _rows(mpath)
    atomic_write_csv(rows + [{**rows[0], "epoch": "2", "train_loss": "123.0"}], mpath)
    walker2d.main([*base, "--epochs", "2", "--resume", "--out", str(tmp_path / "b")])
    ra, rb = _rows(tmp_path / "a" / "hbnode" / "metrics.csv"), _rows(mpath)
    assert [r["epoch"] for r in rb] == ["1", "2"]
    timing = {"seconds", "eval_seconds"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in ra] == \
        [{k: v for k, v in r.items() if k not in timing} for r in rb]
    ca = torch.load(tmp_path / "a" / "hbnode" / "checkpoint.pt", weights_only=False)
    cb = torch.load(tmp_path / "b" / "hbnode" / "checkpoint.pt", weights_only=False)
    assert ca["epoch"] == cb["epoch"] == 2
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k


def test_checkpoint_survives_a_crash_during_save(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model=model, optimizer=opt, epoch=1)
    before = path.read_bytes()

    def torn_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # e.g. Ctrl-C / a kill in the middle of writing

    monkeypatch.setattr(torch, "save", torn_save)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model=model, optimizer=opt, epoch=2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name != "checkpoint.pt"]  # temporary file removed
    fresh = torch.nn.Linear(3, 2)
    assert load_checkpoint(path, model=fresh, restore_rng=False)["epoch"] == 1


def test_killing_a_writer_never_leaves_a_torn_checkpoint(tmp_path):
    """SIGKILL a process that rewrites a large checkpoint in a loop; the file always loads (old or new)."""
    path = tmp_path / "ck.pt"
    code = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(REPO)!r})
        from recipes._files import atomic_save
        i = 0
        while True:
            atomic_save({{"i": i, "w": torch.full((300_000,), float(i))}}, {str(path)!r})
            i += 1
            if i == 1:
                print("ready", flush=True)
    """)
    for delay in (0.1,):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(delay)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        obj = torch.load(path, weights_only=False)
        assert torch.equal(obj["w"], torch.full((300_000,), float(obj["i"])))


# ---------------------------------------------------------------------------------------------------------------
# Multi-process training
# ---------------------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_walker
def test_ddp_two_cpu_processes(tmp_path):
    """torchrun, 2 gloo processes: the recipe runs, only rank 0 writes, and DDP keeps the replicas identical."""
    out = tmp_path / "ddp"
    script = tmp_path / "ddp_check.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        from recipes import walker2d
        from recipes._distributed import init_distributed, make_loader
        from recipes._loops import train_epoch
        argv = ["--model", "hbnode", "--epochs", "1", "--max-batches", "1", "--batch-size", "4",
                "--rtol", "1e-3", "--atol", "1e-3", "--device", "cpu", "--compile", "off", "--out", {str(out)!r}]
        args = walker2d.make_parser().parse_args(argv)
        # replicas in sync: start from different seeds, train one step on different shards, compare
        ctx = init_distributed("cpu")
        torch.manual_seed(100 + ctx.rank)
        model = walker2d.build_model("hbnode", args)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        loader = make_loader(walker2d.datasets(args)["train"], batch_size=4, train=True, seed=0, ctx=ctx)
        stats = train_epoch(ddp, loader, opt, walker2d.step_mse, device=ctx.device, ctx=ctx, max_batches=1)
        idx = list(loader.sampler)[:4]
        torch.save({{"state": model.state_dict(), "idx": idx, "stats": stats}}, {str(tmp_path)!r} + f"/rank{{ctx.rank}}.pt")
        walker2d.main(argv)  # the CLI path (reuses the process group, closes it): DDP, sampler, rank-0 files
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("trainable parameters") == 1  # rank 0 prints
    rows = _rows(out / "hbnode" / "metrics.csv")
    assert len(rows) == 1 and float(rows[0]["forward_nfe"]) > 0
    summary = json.loads((out / "hbnode" / "summary.json").read_text())
    assert summary["config"]["world_size"] == 2
    assert sorted(p.name for p in (out / "hbnode").iterdir()) == ["checkpoint.pt", "config.json", "metrics.csv",
                                                                  "summary.json"]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert not set(r0["idx"]) & set(r1["idx"])  # each rank saw different windows
    assert r0["stats"] == {**r1["stats"], "seconds": r0["stats"]["seconds"]}  # metrics all-reduced
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), k
