"""Recipes on hostile inputs and faults (issue 14): one run folder per writer, no silent replacement or mixing of
runs, checkpoints that never execute code, clear errors for damaged checkpoints and bad flags, verified image files.

Most checks drive the point-cloud recipe (no data files, a run takes about a second) through the shared driver that
every training recipe uses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from odernn.data import ChecksumError, DataFile
from recipes import _image_data, plane_vibration, point_cloud, walker2d
from recipes._checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from recipes._cli import RecipeError
from recipes._files import read_csv
from recipes._rundir import LOCK_NAME, RunFolderError, RunLock

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ODERNN_DATA", "/nonexistent"))


def _pc(out: Path, *extra: str) -> dict:
    return point_cloud.main(["--model", "hbnode", "--runs", "1", "--rtol", "1e-3", "--atol", "1e-4", "--device", "cpu",
                             "--out", str(out), *extra])


def _run_dir(out: Path) -> Path:
    return out / "hbnode" / "run_000"


# ---------------------------------------------------------------------------------------------------------------
# One writer per run folder
# ---------------------------------------------------------------------------------------------------------------

def _hold_lock(folder: Path) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from recipes._rundir import RunLock
        RunLock({str(folder)!r}, command=["python", "-m", "recipes.point_cloud", "--out", "x"]).acquire()
        print("ready", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path):
    folder = _run_dir(tmp_path / "pc")
    holder = _hold_lock(folder)
    try:
        with pytest.raises(RunFolderError, match=rf"in use by process {holder.pid} on .*recipes.point_cloud"):
            RunLock(folder).acquire()
        with pytest.raises(RunFolderError, match=rf"in use by process {holder.pid}.*choose another --out"):
            _pc(tmp_path / "pc", "--epochs", "1")
        assert not (folder / "metrics.csv").exists()  # the refused run wrote nothing
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # the holder died without releasing: its lock file stays, but it no longer holds the lock
    assert (folder / LOCK_NAME).exists()
    _pc(tmp_path / "pc", "--epochs", "1")
    assert not (folder / LOCK_NAME).exists()  # released at the end of the run
    assert [r["epoch"] for r in read_csv(folder / "metrics.csv")] == [1]


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tmp_path.joinpath(LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": "h", "started": "t"}))
    lock = RunLock(tmp_path).acquire()
    try:
        assert lock.stale == {"pid": dead.pid, "host": "h", "started": "t"}
        info = json.loads((tmp_path / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid()
        with pytest.raises(RunFolderError, match=f"in use by process {os.getpid()}"):
            RunLock(tmp_path).acquire()  # a second lock object in the same process is refused too
    finally:
        lock.release()
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path) as again:
        assert again.stale is None


# ---------------------------------------------------------------------------------------------------------------
# An existing run is continued or replaced only when asked
# ---------------------------------------------------------------------------------------------------------------

def test_an_existing_run_is_refused_without_resume_or_overwrite(tmp_path):
    out = tmp_path / "pc"
    _pc(out, "--epochs", "2")
    before = (_run_dir(out) / "metrics.csv").read_bytes()
    ckpt = (_run_dir(out) / "checkpoint.pt").read_bytes()
    with pytest.raises(RunFolderError, match=r"already holds a run \(metrics.csv, summary.json, config.json, "
                                             r"checkpoint.pt\): rerun with --resume .* --overwrite"):
        _pc(out, "--epochs", "1")
    assert (_run_dir(out) / "metrics.csv").read_bytes() == before
    assert (_run_dir(out) / "checkpoint.pt").read_bytes() == ckpt
    _pc(out, "--epochs", "1", "--overwrite")
    assert [r["epoch"] for r in read_csv(_run_dir(out) / "metrics.csv")] == [1]
    assert load_checkpoint(_run_dir(out) / "checkpoint.pt", model=point_cloud.build_model("hbnode"),
                           restore_rng=False)["epoch"] == 1
    with pytest.raises(SystemExit):
        point_cloud.main(["--resume", "--overwrite", "--out", str(out)])


def test_resume_without_a_checkpoint_does_not_restart_a_run(tmp_path):
    out = tmp_path / "pc"
    _pc(out, "--epochs", "1")
    (_run_dir(out) / "checkpoint.pt").unlink()
    with pytest.raises(RunFolderError, match="no checkpoint at .*nothing to continue from.*--overwrite"):
        _pc(out, "--epochs", "2", "--resume")
    assert [r["epoch"] for r in read_csv(_run_dir(out) / "metrics.csv")] == [1]


def test_resume_with_different_settings_is_refused_naming_the_flags(tmp_path):
    out = tmp_path / "pc"
    _pc(out, "--epochs", "1")
    with pytest.raises(CheckpointError, match=r"--lr \(checkpoint: 0.01, now: 0.02\), --rtol \(checkpoint: 0.001, "
                                              r"now: 0.0001\).*only .*--epochs"):
        _pc(out, "--epochs", "2", "--resume", "--lr", "0.02", "--rtol", "1e-4")
    assert [r["epoch"] for r in read_csv(_run_dir(out) / "metrics.csv")] == [1]
    # what may change: the number of epochs, threads, progress bars
    _pc(out, "--epochs", "2", "--resume", "--threads", "1", "--no-progress")
    assert [r["epoch"] for r in read_csv(_run_dir(out) / "metrics.csv")] == [1, 2]
    cfg = json.loads((_run_dir(out) / "config.json").read_text())
    assert cfg["argv"][:3] == ["python", "-m", "recipes.point_cloud"] and "--resume" not in cfg["argv"]
    assert cfg["resumed"][0]["after_epoch"] == 1 and "--resume" in cfg["resumed"][0]["argv"]


@pytest.mark.skipif(not (DATA / "walker2d").is_dir(), reason="no Walker2D data")
def test_resume_refuses_a_changed_recipe_flag(tmp_path):
    base = ["--model", "hbnode", "--epochs", "1", "--max-batches", "1", "--batch-size", "2", "--rtol", "1e-2",
            "--atol", "1e-2", "--threads", "1", "--compile", "off", "--out", str(tmp_path)]
    walker2d.main(base)
    with pytest.raises(CheckpointError, match=r"--time-scale \(checkpoint: 0.015625, now: 0.5\)"):
        walker2d.main([*base[:2], "--epochs", "2", *base[4:], "--resume", "--time-scale", "0.5"])


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: no code from a file, clear errors for damaged ones
# ---------------------------------------------------------------------------------------------------------------

class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))  # would run on unpickling


def test_checkpoints_load_without_executing_code(tmp_path):
    model, opt = torch.nn.Linear(3, 2), None
    opt = torch.optim.Adam(model.parameters())
    path = save_checkpoint(tmp_path / "ck.pt", model=model, optimizer=opt, epoch=3, extra={"settings": {"lr": 0.1}})
    plain = torch.load(path, weights_only=True)  # tensors, numbers and strings only
    assert plain["epoch"] == 3 and json.loads(plain["meta"])["extra"] == {"settings": {"lr": 0.1}}
    evil = tmp_path / "evil.pt"
    torch.save({"format": 2, "epoch": 1, "model": {}, "payload": _Payload(str(tmp_path / "pwned"))}, evil)
    with pytest.raises(CheckpointError, match="can only be loaded by executing code.*not loaded"):
        load_checkpoint(evil, model=model)
    assert not (tmp_path / "pwned").exists()


def test_a_legacy_pickled_checkpoint_loads_only_when_trusted(tmp_path):
    import random

    import numpy as np

    model = torch.nn.Linear(3, 2)
    old = {"format": 1, "epoch": 4, "model": model.state_dict(), "optimizer": {}, "generator": None,
           "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
           "extra": {"model": "hbnode"}}
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="format 1"):
        load_checkpoint(tmp_path / "old.pt", model=model)
    assert load_checkpoint(tmp_path / "old.pt", model=model, trusted=True)["epoch"] == 4


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pc") / "pc"
    _pc(out, "--epochs", "1")
    return out


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(b""), r"the file is empty \(0 bytes\)"),
    (lambda p: p.write_bytes(p.read_bytes()[:1000]), r"not a readable PyTorch file of 1,000 bytes"),
    (lambda p: p.write_bytes(b"not a checkpoint at all\n" * 10), r"not a readable PyTorch file"),
    (lambda p: torch.save({"weights": torch.zeros(3)}, p), r"not an odernn recipe checkpoint"),
    (lambda p: torch.save([1, 2, 3], p), r"not an odernn recipe checkpoint \(expected a dict"),
])
def test_resume_from_a_damaged_checkpoint_says_what_is_wrong(finished_run, tmp_path, damage, message):
    out = tmp_path / "pc"
    shutil.copytree(finished_run, out)
    damage(_run_dir(out) / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=f"cannot use the checkpoint .*checkpoint.pt: .*{message}.*--overwrite"):
        _pc(out, "--epochs", "2", "--resume")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(0.0, 0.999))
def test_any_truncation_of_a_checkpoint_gives_a_checkpoint_error(tmp_path, fraction):
    model = torch.nn.Linear(4, 3)
    path = save_checkpoint(tmp_path / "ck.pt", model=model, optimizer=torch.optim.Adam(model.parameters()), epoch=1)
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[:int(fraction * len(data))])
    with pytest.raises(CheckpointError, match="cannot use the checkpoint"):
        load_checkpoint(cut, model=model)


def test_the_command_line_prints_the_error_without_a_traceback(finished_run, tmp_path):
    out = tmp_path / "pc"
    shutil.copytree(finished_run, out)
    (_run_dir(out) / "checkpoint.pt").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "recipes.point_cloud", "--model", "hbnode", "--runs", "1",
                           "--epochs", "2", "--resume", "--device", "cpu", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert "python -m recipes.point_cloud: error: cannot use the checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], r"--epochs: expected a positive integer \(1 or more\), got '0'"),
    (["--epochs", "ten"], r"--epochs: expected a positive integer, got 'ten'"),
    (["--workers", "-3"], r"--workers: expected a non-negative integer \(0 or more\), got '-3'"),
    (["--lr", "nan"], r"--lr: expected a positive finite number, got 'nan'"),
    (["--out", "{file}"], r"--out: expected a folder, but '.*' is an existing file"),
    (["--out", "{file}/sub"], r"--out: expected a folder, but '.*' lies below '.*', which is a file"),
    (["--checkpoint-dir", "{file}"], r"--checkpoint-dir: expected a folder"),
])
@pytest.mark.parametrize("make_parser", [walker2d.make_parser, plane_vibration.make_parser])
def test_bad_flags_get_clear_argparse_errors(tmp_path, capsys, make_parser, argv, message):
    file = tmp_path / "a_file"
    file.write_text("x")
    with pytest.raises(SystemExit) as e:
        make_parser().parse_args([a.replace("{file}", str(file)) for a in argv])
    assert e.value.code == 2
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)


def test_recipe_errors_are_recipe_errors():
    assert issubclass(RunFolderError, RecipeError) and issubclass(CheckpointError, RecipeError)
    assert issubclass(CheckpointError, ValueError)


# ---------------------------------------------------------------------------------------------------------------
# Image readers read only verified files
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not (DATA / "mnist" / "MNIST" / "raw").is_dir(), reason="no MNIST copy")
def test_mnist_reader_refuses_a_flipped_label(tmp_path):
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    os.symlink(DATA / "mnist" / "MNIST" / "raw" / "t10k-images-idx3-ubyte", raw / "t10k-images-idx3-ubyte")
    labels = bytearray((DATA / "mnist" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes())
    labels[100] = (labels[100] + 1) % 10
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(labels))
    with pytest.raises(ChecksumError, match="t10k-labels-idx1-ubyte"):
        _image_data.load_mnist("test", root=str(tmp_path), download=False)


def test_cifar_reader_refuses_an_archive_that_is_not_the_registered_one(tmp_path):
    from PIL import Image
    import io
    import tarfile

    archive = tmp_path / "cifar10" / "cifar10_jpeg_q75" / "test.tar.gz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (1, 2, 3)).save(buf, format="JPEG")
        info = tarfile.TarInfo("test/cat/0001.jpg")
        info.size = buf.tell()
        buf.seek(0)
        tar.addfile(info, buf)
    with pytest.raises(ChecksumError, match="test.tar.gz"):
        _image_data.load_cifar10("test", root=str(tmp_path), download=False, cache=tmp_path / "cache")
    wrong = [DataFile("cifar10/cifar10_jpeg_q75/test.tar.gz", "0" * 64)]
    with pytest.raises(ChecksumError):
        _image_data.load_cifar10("test", root=str(tmp_path), download=False, cache=tmp_path / "cache", files=wrong)
    assert not (tmp_path / "cache").exists()  # nothing decoded from an unverified file


def test_settings_added_later_resume_with_their_old_value():
    from recipes._checkpoint import settings_differences

    saved = {"lr": 0.01, "rtol": 1e-3}  # a checkpoint written before --method and --step-fraction existed
    assert settings_differences(saved, {"lr": 0.01, "rtol": 1e-3, "method": "dopri5", "step": None}) == {}
    assert settings_differences(saved, {"lr": 0.01, "rtol": 1e-3, "method": "rk4", "step": 0.5}) == {
        "method": ("dopri5", "rk4"), "step": (None, 0.5)}
    assert settings_differences(saved, {"lr": 0.01, "rtol": 1e-3, "seed": 1}) == {"seed": ("<absent>", 1)}


@pytest.mark.skipif(not (DATA / "plane_vibration").is_dir(), reason="no plane vibration data")
def test_a_recipe_refuses_a_folder_in_use_before_loading_data(tmp_path, monkeypatch):
    holder = _hold_lock(tmp_path / "hbnode")
    monkeypatch.setattr(plane_vibration, "datasets", lambda args: pytest.fail("data loaded for a refused run"))
    try:
        with pytest.raises(RunFolderError, match=f"in use by process {holder.pid}"):
            plane_vibration.main(["--model", "hbnode", "--epochs", "1", "--out", str(tmp_path)])
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()


def test_a_run_folder_that_cannot_be_created_is_a_clear_error(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(RunFolderError, match="cannot create the lock file .*a_file/hbnode/.lock.*must be writable"):
        RunLock(tmp_path / "a_file" / "hbnode").acquire()
