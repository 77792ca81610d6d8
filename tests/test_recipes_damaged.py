"""Recipes on edited and damaged files (issue 18, items 2 and 9): ``--resume`` reads metrics.csv exactly or refuses
naming the file and line, never drops history silently; a checkpoint whose fields were edited or removed, and garbage
in a folder given to ``recipes.report``, end in ``error: ...`` (exit status 2) naming the file and field.

The end-to-end checks drive the point-cloud recipe (about a second per run) through the shared driver.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from recipes import point_cloud, report
from recipes._checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from recipes._cli import RecipeError
from recipes._files import FileContentError, atomic_write_csv, atomic_write_json, read_csv, read_json_object
from recipes._random import rng_state, set_rng_state
from recipes._report import MetricsWriter, load_runs, read_metrics

REPO = Path(__file__).resolve().parents[1]


def _pc(out: Path, *extra: str) -> dict:
    return point_cloud.main(["--model", "hbnode", "--runs", "1", "--rtol", "1e-3", "--atol", "1e-4", "--device", "cpu",
                             "--out", str(out), *extra])


def _run_dir(out: Path) -> Path:
    return out / "hbnode" / "run_000"


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory):
    out = tmp_path_factory.mktemp("pc3") / "pc"
    _pc(out, "--epochs", "3")
    return out


@pytest.fixture
def run(three_epochs, tmp_path):
    out = tmp_path / "pc"
    shutil.copytree(three_epochs, out)
    return out


@pytest.fixture(autouse=True)
def _keep_rng():
    state = rng_state()  # a successful load_checkpoint restores the file's random state
    yield
    set_rng_state(state)


# ---------------------------------------------------------------------------------------------------------------
# Item 2: --resume and metrics.csv
# ---------------------------------------------------------------------------------------------------------------

def _text(fn):
    return lambda p: p.write_text(fn(p.read_text()))


READABLE = {
    "byte-order mark": lambda p: p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes()),
    "CRLF line ends": lambda p: p.write_bytes(p.read_bytes().replace(b"\n", b"\r\n")),
    "an extra column": _text(lambda t: "\n".join(line + (",note" if i == 0 else ",kept")
                                                 for i, line in enumerate(t.splitlines())) + "\n"),
    "a trailing empty column": _text(lambda t: "\n".join(line + "," for line in t.splitlines()) + "\n"),
    "epoch written 2.0": _text(lambda t: t.replace("\n2,", "\n2.0,", 1)),
    "a blank line": _text(lambda t: t + "\n"),
}


@pytest.mark.parametrize("damage", list(READABLE), ids=list(READABLE))
def test_resume_keeps_every_row_of_a_file_it_can_read_exactly(run, damage):
    path = _run_dir(run) / "metrics.csv"
    before = read_csv(path)
    READABLE[damage](path)
    _pc(run, "--epochs", "4", "--resume")
    after = read_csv(path)
    assert [r["epoch"] for r in after] == [1, 2, 3, 4]
    for old, new in zip(before, after[:3]):
        assert {k: repr(new[k]) for k in old} == {k: repr(v) for k, v in old.items()}  # bit-exact values
    if damage == "an extra column":
        assert [r["note"] for r in after] == ["kept"] * 3 + [None]


def _replace_first_loss(p: Path, cell: str) -> None:
    lines = p.read_text().splitlines()
    cells = lines[1].split(",")
    cells[1] = cell
    lines[1] = ",".join(cells)
    p.write_text("\n".join(lines) + "\n")


REFUSED = {
    "renamed epoch column": (_text(lambda t: t.replace("epoch", "Epoch", 1)),
                             r"line 1: the header has no column\(s\) \['epoch'\]"),
    "renamed loss column": (_text(lambda t: t.replace("train_loss", "loss", 1)),
                            r"line 1: the header has no column\(s\) \['train_loss'\] \(renamed or deleted\?\)"),
    "a row with an extra cell": (_text(lambda t: t.replace("\n2,", "\n2,5,", 1)),
                                 r"line 3: 13 cell\(s\) but the header \(line 1\) has 12 columns"),
    "a row with a missing cell": (_text(lambda t: t.replace("\n2,", "\n", 1)),
                                  r"line 3: 11 cell\(s\) but the header"),
    "a non-numeric epoch": (_text(lambda t: t.replace("\n2,", "\ntwo,", 1)),
                            r"line 3: epoch is 'two', expected a positive integer"),
    "an empty epoch": (_text(lambda t: t.replace("\n3,", "\n,", 1)), r"line 4: epoch is empty"),
    "epochs out of order": (_text(lambda t: t.replace("\n3,", "\n1,", 1)),
                            r"line 4: epoch 1 does not follow epoch 2"),
    "text in a metric": (lambda p: _replace_first_loss(p, "abc"),
                         r"line 2: column 'train_loss' holds 'abc', expected a number"),
    "a decimal comma": (lambda p: _replace_first_loss(p, '"0,5"'),
                        r"line 2: column 'train_loss' holds '0,5', expected a number"),
    "latin-1 bytes": (lambda p: p.write_bytes(p.read_bytes().replace(b"\n2,", b"\n2\xe9,", 1)),
                      r"line 3: not UTF-8 text \(byte 0xe9"),
    "a repeated column": (_text(lambda t: t.replace("valid_loss", "test_loss", 1)),
                          r"line 1: column\(s\) \['test_loss'\] appear more than once"),
    "a value under no header": (_text(lambda t: "\n".join(line + ("," if i == 0 else ",7")
                                                          for i, line in enumerate(t.splitlines())) + "\n"),
                                r"line 2: a value in column 13, which has no name"),
}


@pytest.mark.parametrize("damage", list(REFUSED), ids=list(REFUSED))
def test_resume_refuses_a_metrics_file_it_cannot_read_naming_file_and_line(run, damage):
    path = _run_dir(run) / "metrics.csv"
    REFUSED[damage][0](path)
    text = path.read_bytes()
    with pytest.raises(FileContentError, match=rf"metrics.csv, {REFUSED[damage][1]}.*--overwrite"):
        _pc(run, "--epochs", "4", "--resume")
    assert path.read_bytes() == text  # nothing was rewritten or truncated


def test_resume_says_which_rows_it_drops_and_which_are_missing(tmp_path, capsys):
    rows = [{"epoch": e, "train_loss": 0.5 / e} for e in (1, 2, 4, 5, 6)]
    atomic_write_csv(rows, tmp_path / "metrics.csv")
    cols = ("epoch", "train_loss")
    w = MetricsWriter(tmp_path, columns=cols, resume_epoch=4)
    assert [r["epoch"] for r in w.rows] == [1, 2, 4]
    err = capsys.readouterr().err
    assert "metrics.csv: dropping the rows of epoch(s) 5-6, written after the checkpoint (epoch 4)" in err
    assert "metrics.csv: epoch(s) 3, before the checkpoint (epoch 4), have no row" in err
    (tmp_path / "metrics.csv").unlink()
    MetricsWriter(tmp_path, columns=cols, resume_epoch=2)
    assert "the file is missing: epoch(s) 1-2, before the checkpoint (epoch 2), have no row" in capsys.readouterr().err
    atomic_write_csv(rows[:2], tmp_path / "metrics.csv")
    MetricsWriter(tmp_path, columns=cols, resume_epoch=2)
    assert capsys.readouterr().err == ""  # nothing dropped, nothing missing: nothing to say


def test_the_resume_refusal_is_an_error_line_with_exit_status_2(run):
    path = _run_dir(run) / "metrics.csv"
    path.write_text(path.read_text().replace("\n2,", "\ntwo,", 1))
    proc = subprocess.run([sys.executable, "-m", "recipes.point_cloud", "--model", "hbnode", "--runs", "1",
                           "--epochs", "4", "--resume", "--device", "cpu", "--rtol", "1e-3", "--atol", "1e-4",
                           "--out", str(run)], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert f"error: {path}, line 3: epoch is 'two'" in proc.stderr and "Traceback" not in proc.stderr


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=400))
def test_any_metrics_file_is_read_exactly_or_refused_by_name(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("m") / "metrics.csv"
    path.write_bytes(b"epoch,train_loss,valid_loss,test_loss,forward_nfe,backward_nfe,valid_nfe,test_nfe,seconds,"
                     b"eval_seconds\n1,0.5,0.5,0.5,1,1,1,1,1,1\n" + data)
    try:
        rows = read_metrics(path)
    except FileContentError as e:
        assert str(e).startswith(f"{path}")
    else:
        assert all(isinstance(r["epoch"], int) for r in rows)


# ---------------------------------------------------------------------------------------------------------------
# Item 9: damaged checkpoint content
# ---------------------------------------------------------------------------------------------------------------

def _edit(fn):
    def damage(p: Path) -> None:
        d = torch.load(p, weights_only=True)
        fn(d)
        torch.save(d, p)
    return damage


def _meta(fn):
    def change(d: dict) -> None:
        m = json.loads(d["meta"])
        fn(m)
        d["meta"] = json.dumps(m)
    return _edit(change)


CHECKPOINT_DAMAGE = {
    "epoch as a string": (_edit(lambda d: d.update(epoch="3")), r"field 'epoch' is '3' \(str\), expected a non-neg"),
    "epoch as a float": (_edit(lambda d: d.update(epoch=2.5)), r"field 'epoch' is 2.5 \(float\)"),
    "negative epoch": (_edit(lambda d: d.update(epoch=-1)), r"field 'epoch' is -1"),
    "epoch differs from meta": (_edit(lambda d: d.update(epoch=2)), r"field 'epoch' is 2 but 'meta' -> 'epoch' is 3"),
    "a missing model key": (_edit(lambda d: d["model"].pop(next(iter(d["model"])))),
                            r"it holds a different model or optimizer than this run builds \(.*Missing key"),
    "model not a dict": (_edit(lambda d: d.update(model=[1, 2])), r"field 'model' is \[1, 2\] \(list\)"),
    "a model entry not a tensor": (_edit(lambda d: d["model"].update({next(iter(d["model"])): 3})),
                                   r"field 'model'\['.*'\] is 3 \(int\), expected a tensor"),
    "optimizer without state": (_edit(lambda d: d["optimizer"].pop("state")),
                                r"field 'optimizer'\['state'\] is missing, expected a dict"),
    "optimizer without param_groups": (_edit(lambda d: d["optimizer"].pop("param_groups")),
                                       r"field 'optimizer'\['param_groups'\] is missing"),
    "a foreign generator state": (_edit(lambda d: d.update(generator=torch.zeros(3, dtype=torch.uint8))),
                                  r"field 'generator' is not a state of this run's data-loader generator"),
    "generator of another type": (_edit(lambda d: d.update(generator="abc")), r"field 'generator' is 'abc'"),
    "rng without python": (_edit(lambda d: d["rng"].pop("python")), r"field 'rng'\['python'\] is missing"),
    "a short python state": (_edit(lambda d: d["rng"].update(python=d["rng"]["python"][:10])),
                             r"field 'rng'\['python'\] is a torch.int64 tensor of shape \(10,\), expected .* 625"),
    "rng not a dict": (_edit(lambda d: d.update(rng=3)), r"field 'rng' is 3 \(int\)"),
    "meta without rng": (_meta(lambda m: m.pop("rng")), r"field 'meta' -> 'rng' is missing"),
    "meta rng without numpy_pos": (_meta(lambda m: m["rng"].pop("numpy_pos")),
                                   r"field 'meta' -> 'rng' -> 'numpy_pos' is missing, expected int"),
    "meta rng numpy_pos as text": (_meta(lambda m: m["rng"].update(numpy_pos="7")),
                                   r"field 'meta' -> 'rng' -> 'numpy_pos' is '7' \(str\)"),
    "meta rng out of range": (_meta(lambda m: m["rng"].update(python_version=99)),
                              r"fields 'rng' / 'meta' -> 'rng' do not form a random state that can be restored"),
    "meta not an object": (_edit(lambda d: d.update(meta="[1, 2]")), r"field 'meta' is \[1, 2\] \(list\)"),
    "extra not an object": (_meta(lambda m: m.update(extra=[1])), r"field 'meta' -> 'extra' is \[1\]"),
    "settings not an object": (_meta(lambda m: m["extra"].update(settings=[1])),
                               r"field 'meta' -> 'extra' -> 'settings' is \[1\]"),
    "model name not a string": (_meta(lambda m: m["extra"].update(model=3)),
                                r"field 'meta' -> 'extra' -> 'model' is 3 \(int\), expected a JSON string"),
}


@pytest.mark.parametrize("damage", list(CHECKPOINT_DAMAGE), ids=list(CHECKPOINT_DAMAGE))
def test_resume_from_a_checkpoint_with_edited_fields_names_the_field(run, damage):
    fn, message = CHECKPOINT_DAMAGE[damage]
    fn(_run_dir(run) / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=rf"cannot use the checkpoint .*checkpoint.pt: {message}.*--overwrite"):
        _pc(run, "--epochs", "4", "--resume")


def test_a_checkpoint_of_another_model_is_a_recipe_error(run):
    _meta(lambda m: m["extra"].update(model="node"))(_run_dir(run) / "checkpoint.pt")
    with pytest.raises(RecipeError, match=r"checkpoint.pt: it holds model 'node', not '.*'; resume with --model node"):
        _pc(run, "--epochs", "4", "--resume")


_JUNK = st.sampled_from([None, "3", 3, -1, 2.5, True, [], {}, [1], {"a": 1}, torch.zeros(2),
                         torch.zeros(3, dtype=torch.uint8), torch.zeros(625, dtype=torch.int64)])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["epoch", "model", "optimizer", "generator", "rng", "rng.python", "rng.numpy",
                              "rng.torch", "optimizer.state", "optimizer.param_groups", "meta.rng", "meta.extra",
                              "meta.epoch", "meta.rng.numpy_gauss", "meta.rng.python_gauss",
                              "meta.extra.settings"]),
       junk=_JUNK, drop=st.booleans())
def test_any_edited_field_gives_a_checkpoint_error_or_loads(tmp_path, field, junk, drop):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(0)
    path = save_checkpoint(tmp_path / "ck.pt", model=model, optimizer=opt, epoch=3, generator=gen,
                           extra={"model": "m", "settings": {"lr": 0.1}})
    d = torch.load(path, weights_only=True)
    parts = field.split(".")
    if parts[0] == "meta":
        meta = json.loads(d["meta"])
        target, parts = meta, parts[1:]
    else:
        target = d
    for p in parts[:-1]:
        target = target[p]
    if isinstance(junk, torch.Tensor) and field.startswith("meta"):
        junk = junk.tolist()
    if drop:
        target.pop(parts[-1], None)
    else:
        target[parts[-1]] = junk
    if field.startswith("meta"):
        d["meta"] = json.dumps(meta)
    torch.save(d, path)
    try:
        info = load_checkpoint(path, model=torch.nn.Linear(3, 2), optimizer=torch.optim.Adam(model.parameters()),
                               generator=torch.Generator())
    except CheckpointError as e:
        assert str(e).startswith(f"cannot use the checkpoint {path}: ")
    else:
        assert isinstance(info["epoch"], int) and info["epoch"] >= 0


# ---------------------------------------------------------------------------------------------------------------
# Item 9: garbage in a folder given to recipes.report
# ---------------------------------------------------------------------------------------------------------------

def _fake_run(folder: Path, epochs: int = 3) -> None:
    rows = [{"epoch": e, "train_loss": 1.0 / e, "valid_loss": 0.5, "test_loss": 2.0, "forward_nfe": 10.0 + e,
             "backward_nfe": 20.0, "valid_nfe": 5.0, "test_nfe": 5.0, "seconds": 36.0, "eval_seconds": 3.6}
            for e in range(1, epochs + 1)]
    atomic_write_csv(rows, folder / "metrics.csv")
    atomic_write_json({"model": folder.name, "num_params": 1}, folder / "summary.json")
    atomic_write_json({"command": "python -m recipes.walker2d", "machine": {"cpus": 2}, "resumed": []},
                      folder / "config.json")


REPORT_GARBAGE = {
    "text in seconds": ("metrics.csv", lambda p: p.write_text(p.read_text().replace(",36.0,", ",abc,", 1)),
                        r"metrics.csv, line 2: column 'seconds' holds 'abc', expected a number"),
    "an empty NFE cell": ("metrics.csv", lambda p: p.write_text(p.read_text().replace(",11.0,", ",,", 1)),
                          r"metrics.csv, line 2: column 'forward_nfe' is empty"),
    "binary metrics": ("metrics.csv", lambda p: p.write_bytes(b"\x80\x81\x82" * 30),
                       r"metrics.csv, line 1: not UTF-8 text"),
    "a truncated summary": ("summary.json", lambda p: p.write_text(p.read_text()[:10]),
                            r"summary.json, line \d+, column \d+: not valid JSON"),
    "a summary that is a list": ("summary.json", lambda p: p.write_text("[1, 2]"),
                                 r"summary.json: expected a JSON object \(\{...\}\), found a list"),
    "binary config": ("config.json", lambda p: p.write_bytes(b"\xff\xfe{}"), r"config.json, line 1: not UTF-8"),
    "machine as text": ("config.json", lambda p: p.write_text('{"machine": "x86"}'),
                        r"config.json: field 'machine' is 'x86', expected a JSON object"),
    "resumed as a number": ("config.json", lambda p: p.write_text('{"resumed": 2}'),
                            r"config.json: field 'resumed' is 2, expected a JSON array"),
}


@pytest.mark.parametrize("case", list(REPORT_GARBAGE), ids=list(REPORT_GARBAGE))
def test_report_on_garbage_names_the_file_and_field(tmp_path, case):
    name, damage, message = REPORT_GARBAGE[case]
    (tmp_path / "task" / "hbnode").mkdir(parents=True)
    _fake_run(tmp_path / "task" / "hbnode")
    damage(tmp_path / "task" / "hbnode" / name)
    with pytest.raises(FileContentError, match=message + r".*fix"):
        report.main([str(tmp_path)])
    if name != "config.json" and case != "an empty NFE cell":  # load_runs (the --model all comparison) reads metrics and summary the same way
        with pytest.raises(FileContentError, match=message):
            load_runs(tmp_path / "task", ["hbnode"])


def test_report_on_garbage_exits_with_an_error_line(tmp_path):
    (tmp_path / "task" / "hbnode").mkdir(parents=True)
    _fake_run(tmp_path / "task" / "hbnode")
    (tmp_path / "task" / "hbnode" / "summary.json").write_text("{oops")
    proc = subprocess.run([sys.executable, "-m", "recipes.report", str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "python -m recipes.report: error: " in proc.stderr and "summary.json, line 1, column 2" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_unreadable_folder_is_a_recipe_error(tmp_path, monkeypatch):
    (tmp_path / "locked").mkdir()
    real = Path.iterdir

    def iterdir(self):
        if self.name == "locked":  # what a folder without read permission does (root reads every folder)
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(RecipeError, match="cannot list .*locked: Permission denied; make it readable"):
        report.find_tasks(tmp_path)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["metrics.csv", "summary.json", "config.json"]), data=st.binary(max_size=300))
def test_any_bytes_in_a_run_folder_give_a_report_or_a_named_error(tmp_path_factory, name, data):
    root = tmp_path_factory.mktemp("rep")
    (root / "hbnode").mkdir()
    _fake_run(root / "hbnode")
    (root / "hbnode" / name).write_bytes(data)
    try:
        runs = report.load_task(root)
        for m, r in runs.items():
            report.model_row(m, r)
    except FileContentError as e:
        assert str(e).startswith(str(root / "hbnode" / name))


def test_read_json_object_accepts_a_byte_order_mark(tmp_path):
    (tmp_path / "a.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"a": 1}).encode())
    assert read_json_object(tmp_path / "a.json") == {"a": 1}
