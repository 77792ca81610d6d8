"""Benchmark loaders, data root, registry, checksums and downloads of :mod:`odernn.data`.

Data come from ``$ODERNN_DATA``; when it is unset this module points it at ``../shared/data`` next to the
repository, and the data-dependent tests skip cleanly when that folder does not exist.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

if not os.environ.get("ODERNN_DATA"):
    os.environ["ODERNN_DATA"] = str(Path(__file__).resolve().parents[2] / "shared" / "data")

import odernn  # noqa: E402
import odernn.data as D  # noqa: E402
from odernn.data import _download  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ["ODERNN_DATA"])
SUMS = DATA / "SHA256SUMS"
needs_data = pytest.mark.skipif(not (DATA / "SHA256SUMS").is_file(), reason=f"no data folder at {DATA}")
needs_odernn = pytest.mark.skipif(not hasattr(odernn, "ODERNN"), reason="odernn.ODERNN is not there yet")


def _sums() -> dict[str, str]:
    out = {}
    for line in SUMS.read_text().splitlines():
        if line.strip():
            digest, path = line.split(maxsplit=1)
            out[path.strip().removeprefix("./")] = digest
    return out


# ----------------------------------------------------------------------------------------------------------------
# Fixtures (module-scoped: every loader is read once)
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def walker():
    return {s: D.walker2d(s) for s in ("train", "valid", "test")}


@pytest.fixture(scope="module")
def pv():
    return {s: D.plane_vibration(s, normalize=True) for s in ("train", "valid", "test")}


@pytest.fixture(scope="module")
def pv_raw():
    return D._plane_vibration.read_pv_csv(DATA / "plane_vibration" / "pv.csv")


def _reference_walker_kept() -> dict[str, list[tuple[str, np.ndarray]]]:
    """The ODE-LSTM protocol written as a plain loop: one rand() per step, train then valid then test."""
    names = sorted(p.name for p in (DATA / "walker2d").glob("*.npy"))
    np.random.RandomState(125487).shuffle(names)
    n_test, n_tv = int(0.15 * len(names)), int(0.25 * len(names))
    groups = {"train": names[n_tv:], "valid": names[n_test:n_tv], "test": names[:n_test]}
    rng = np.random.RandomState(891374)
    out = {}
    for split in ("train", "valid", "test"):
        out[split] = []
        for name in groups[split]:
            rows = np.load(DATA / "walker2d" / name, mmap_mode="r").shape[0] - 1
            kept = [r for r in range(rows) if rng.rand() < 0.9]
            out[split].append((name, np.array(kept)))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Registry, cards, checksums
# ----------------------------------------------------------------------------------------------------------------


@needs_data
def test_registry_matches_shipped_checksums():
    sums = _sums()
    registered = {f.path: f.sha256 for name in D.registered_datasets() for f in D.registered_files(name)}
    assert registered == sums
    assert set(D.registered_datasets()) == {"walker2d", "plane_vibration", "silverbox", "mnist", "cifar10"}


@needs_data
@pytest.mark.parametrize("name", ["walker2d", "plane_vibration", "silverbox", "mnist", "cifar10"])
def test_dataset_card_lists_every_file_with_its_sha256(name):
    card = (REPO / "datasets" / name / "README.md").read_text()
    for section in ("Source", "License", "Citation", "Files", "Preparation"):
        assert re.search(rf"^#+ .*{section}", card, re.M | re.I), f"card {name} lacks a {section} section"
    listed = {}
    for digest, path in re.findall(r"([0-9a-f]{64})\W+(?:\./)?([\w./-]+)", card):
        listed[path] = digest
    expected = {p: d for p, d in _sums().items() if p.startswith(name + "/")}
    assert {p: listed.get(p) for p in expected} == expected
    assert not [p for p in listed if p not in expected], "the card lists files that are not shipped"


def test_datasets_folder_is_not_a_package():
    assert not list((REPO / "datasets").rglob("__init__.py"))


def test_import_creates_and_prints_nothing(tmp_path, capfd):
    import importlib
    import subprocess
    import sys

    env = {**os.environ, "ODERNN_DATA": str(tmp_path / "never"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    code = "import odernn.data as d; print(len(d.__all__))"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(len(D.__all__))
    assert not (tmp_path / "never").exists() and not (tmp_path / "cache").exists()
    assert importlib.import_module("odernn.data") is D


def test_all_names_exist():
    for name in D.__all__:
        assert hasattr(D, name), name


# ----------------------------------------------------------------------------------------------------------------
# Walker2D
# ----------------------------------------------------------------------------------------------------------------


@needs_data
def test_walker2d_exact_window_counts(walker):
    assert {s: len(ds) for s, ds in walker.items()} == {"train": 9684, "valid": 1272, "test": 1937}


@needs_data
def test_walker2d_split_files_are_disjoint_and_cover_all_rollouts(walker):
    files = {s: set(ds.files) for s, ds in walker.items()}
    assert [len(files[s]) for s in ("train", "valid", "test")] == [300, 40, 60]
    assert not (files["train"] & files["valid"]) and not (files["train"] & files["test"])
    assert not (files["valid"] & files["test"])
    assert len(set().union(*files.values())) == 400


@needs_data
def test_walker2d_items_follow_the_ode_lstm_protocol(walker):
    ref = _reference_walker_kept()
    for split, ds in walker.items():
        assert tuple(n for n, _ in ref[split]) == ds.files
        # first window of the first rollout and last window of the last rollout of the split
        for k, (name, kept) in ((0, ref[split][0]), (len(ds) - 1, ref[split][-1])):
            raw = np.load(DATA / "walker2d" / name)
            start = 0 if k == 0 else list(range(0, len(kept) - 64, 16))[-1]
            rows = kept[start:start + 64]
            item = ds[k]
            np.testing.assert_array_equal(item["x"].numpy(), raw[rows].astype(np.float32))
            np.testing.assert_array_equal(item["x_next"].numpy(), raw[rows + 1].astype(np.float32))
            prev = np.concatenate([[kept[start - 1] if start else -1], rows[:-1]])
            np.testing.assert_array_equal(item["dt"].numpy(), (rows - prev).astype(np.float32))
        total = sum(len(range(0, len(kept) - 64, 16)) for _, kept in ref[split])
        assert total == len(ds)


@needs_data
def test_walker2d_item_shapes_and_times(walker):
    ds = walker["train"]
    for k in (0, 1, 500, len(ds) - 1):
        item = ds[k]
        assert item["x"].shape == (64, 17) and item["x_next"].shape == (64, 17)
        assert item["t"].shape == (64,) and item["dt"].shape == (64,)
        assert all(v.dtype == (torch.bool if k.startswith("mask") else torch.float32) for k, v in item.items())
        assert bool((item["t"][1:] > item["t"][:-1]).all())
        assert torch.equal(item["t"], torch.cumsum(item["dt"], 0))
        assert bool((item["dt"] >= 1).all()) and torch.equal(item["dt"], item["dt"].round())


@needs_data
def test_walker2d_is_raw_by_default_and_normalises_with_training_statistics(walker):
    raw = walker["valid"]
    assert not raw.normalize
    train_x = np.concatenate([walker["train"][k]["x"].numpy() for k in range(0, len(walker["train"]), 4)])
    assert np.abs(train_x.mean(0)).max() > 0.05  # not standardised
    norm = D.walker2d("valid", normalize=True)
    np.testing.assert_allclose(norm.mean, raw.mean)
    stacked = np.concatenate(walker["train"]._data.x).astype(np.float64)
    np.testing.assert_allclose(norm.mean, stacked.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm.std, stacked.std(0), rtol=1e-5)
    expected = (raw[3]["x"].numpy() - norm.mean) / norm.std
    np.testing.assert_allclose(norm[3]["x"].numpy(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.denormalize(norm[3]["x_next"]), raw[3]["x_next"], rtol=1e-5, atol=1e-4)


@needs_data
def test_walker2d_batches_with_default_dataloader(walker):
    batch = next(iter(torch.utils.data.DataLoader(walker["train"], batch_size=256, shuffle=False)))
    assert batch["x"].shape == (256, 64, 17) and batch["t"].shape == (256, 64) and batch["x_next"].shape == (256, 64, 17)


@needs_data
def test_walker2d_rejects_unknown_split():
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'valid', 'test'\], got 'validation'"):
        D.walker2d("validation")


# ----------------------------------------------------------------------------------------------------------------
# Plane vibration
# ----------------------------------------------------------------------------------------------------------------


@needs_data
def test_plane_vibration_exact_segment_counts(pv):
    assert {s: len(ds) for s, ds in pv.items()} == {"train": 509, "valid": 254, "test": 254}


@needs_data
def test_plane_vibration_kept_stamps_reproduce_the_official_draws(pv_raw):
    # The official code: np.random.seed(1); noise = randn(*data.shape) (multiplied by 0);
    # choice(range(len - 100), int((len - 100) * 0.9), replace=False), sorted; split 2:1:1 with floors.
    rng = np.random.RandomState(1)
    rng.randn(*pv_raw.shape)
    full = pv_raw.shape[0] - 100
    labels = np.sort(rng.choice(range(full), int(full * (1 - 0.1)), replace=False))
    assert pv_raw.shape == (73728, 5) and labels.size == 66265
    np.testing.assert_array_equal(D._plane_vibration.kept_stamps(pv_raw.shape[0]), labels)
    parts = D._plane_vibration.split_stamps(labels)
    assert [parts[s].size for s in ("train", "valid", "test")] == [33132, 16566, 16567]


@needs_data
def test_plane_vibration_items_inputs_targets_and_forecasts(pv, pv_raw):
    raw = {s: D.plane_vibration(s) for s in ("train", "valid", "test")}
    bounds = []
    for split, ds in pv.items():
        segs = ds.segments
        assert segs.shape == (len(ds), 65)
        assert bool((np.diff(segs.reshape(-1)) > 0).all())  # consecutive, non-overlapping, ordered
        bounds.append((segs.min(), segs.max()))
        assert segs.max() + 7 < 73728 - 100 + 8
        for k in (0, len(ds) // 2, len(ds) - 1):
            item, r = ds[k], raw[split][k]
            s = segs[k]
            assert item["x"].shape == (64, 5) and item["x_next"].shape == (64, 5)
            assert item["x_future"].shape == (8, 5) and item["t_future"].shape == (8,)
            np.testing.assert_array_equal(item["t"].numpy(), s[:-1].astype(np.float32))
            np.testing.assert_array_equal(item["t_next"].numpy(), s[1:].astype(np.float32))
            np.testing.assert_array_equal(item["t_future"].numpy(), (s[-1] + np.arange(8)).astype(np.float32))
            assert bool((item["t"][1:] > item["t"][:-1]).all())
            assert float(item["t_future"][0]) > float(item["t"][-1])
            np.testing.assert_array_equal(r["x"].numpy(), pv_raw[s[:-1]].astype(np.float32))
            np.testing.assert_array_equal(r["x_next"].numpy(), pv_raw[s[1:]].astype(np.float32))
            np.testing.assert_array_equal(r["x_future"].numpy(), pv_raw[s[-1] + np.arange(8)].astype(np.float32))
            torch.testing.assert_close(item["x_future"][0], item["x_next"][-1])
    assert bounds[0][1] < bounds[1][0] and bounds[1][1] < bounds[2][0]  # train < valid < test in time


@needs_data
def test_plane_vibration_normalises_with_training_statistics_only(pv, pv_raw):
    train_stamps = D._plane_vibration.split_stamps(D._plane_vibration.kept_stamps(73728))["train"]
    for ds in pv.values():
        np.testing.assert_allclose(ds.mean, pv_raw[train_stamps].mean(0))
        np.testing.assert_allclose(ds.std, pv_raw[train_stamps].std(0))
    assert not np.allclose(pv["train"].mean, pv_raw.mean(0), rtol=1e-3, atol=0)  # not whole-series statistics
    x = np.concatenate([pv["train"][k]["x"].numpy() for k in range(len(pv["train"]))])
    assert np.abs(x.mean(0)).max() < 0.05 and np.abs(x.std(0) - 1).max() < 0.05


# ----------------------------------------------------------------------------------------------------------------
# Silverbox
# ----------------------------------------------------------------------------------------------------------------


@needs_data
def test_silverbox_single_item_and_windows():
    sb = D.silverbox()
    assert len(sb) == 1
    item = sb[0]
    assert item["t"].shape == (131072,) and item["x"].shape == (131072, 1) and item["y"].shape == (131072, 1)
    assert torch.equal(item["t"], torch.arange(131072, dtype=torch.float32))
    raw = np.loadtxt(DATA / "silverbox" / "sb.csv", delimiter=",", skiprows=1, usecols=(0, 1), max_rows=5)
    np.testing.assert_array_equal(item["x"][:5, 0].numpy(), raw[:, 0].astype(np.float32))
    np.testing.assert_array_equal(item["y"][:5, 0].numpy(), raw[:, 1].astype(np.float32))
    win = D.silverbox(window=64, stride=32, time_unit="s")
    assert len(win) == (131072 - 64) // 32 + 1
    np.testing.assert_allclose(win[1]["t"].numpy(), (32 + np.arange(64)) / 610.3515625, rtol=1e-6)
    ref = D.silverbox(normalize=D.Normalization(center=True, scale=100.0))
    np.testing.assert_allclose(ref.v1, 100 * (sb.v1 - sb.v1.mean()))
    with pytest.raises(ValueError, match="stride= needs window="):
        D.silverbox(stride=3)


# ----------------------------------------------------------------------------------------------------------------
# Data root, missing files, checksums, downloads
# ----------------------------------------------------------------------------------------------------------------


def test_data_root_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("ODERNN_DATA", str(tmp_path / "env"))
    assert D.data_root(tmp_path / "arg") == tmp_path / "arg"
    assert D.data_root() == tmp_path / "env"
    monkeypatch.delenv("ODERNN_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if os.name == "posix" and os.uname().sysname == "Linux":
        assert D.data_root() == tmp_path / "xdg" / "odernn"
    assert D.data_root() == D.default_cache_dir()


def test_missing_root_without_download_names_files_folder_and_env(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(D.MissingDataError, match=r"(?s)400 data file\(s\) missing: rollout_000\.npy.*"
                       + re.escape(str(missing / "walker2d")) + r".*ODERNN_DATA"):
        D.walker2d("train", root=missing, download=False)
    assert not missing.exists()
    with pytest.raises(FileNotFoundError, match=r"(?s)pv\.csv.*root= argument.*download=False"):
        D.plane_vibration("test", root=missing, download=False)


def test_missing_files_under_env_var_root(tmp_path, monkeypatch):
    monkeypatch.setenv("ODERNN_DATA", str(tmp_path))
    with pytest.raises(D.MissingDataError, match=r"(?s)sb\.csv.*ODERNN_DATA environment variable"):
        D.silverbox(download=False)


def test_offline_download_error_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def offline(url, timeout):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(_download, "_open_url", offline)
    with pytest.raises(D.MissingDataError, match=r"(?s)pv\.csv.*Downloading failed.*name resolution.*ODERNN_DATA"):
        D.plane_vibration("train", root=tmp_path / "new")
    assert list(tmp_path.iterdir()) == []  # no file, no temporary file, not even the folders it made
    assert len(calls) == 2  # the mirror, then the benchmark archive


def test_offline_walker_gives_up_on_an_unreachable_host_at_once(tmp_path, monkeypatch):
    calls = []

    def offline(url, timeout):
        calls.append(url)
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(_download, "_open_url", offline)
    with pytest.raises(D.MissingDataError, match="400 data file"):
        D.walker2d("train", root=tmp_path)
    assert len(calls) == 2  # one per host, not 800


@needs_data
def test_checksum_mismatch_of_a_present_file(tmp_path):
    folder = tmp_path / "plane_vibration"
    folder.mkdir()
    data = bytearray((DATA / "plane_vibration" / "pv.csv").read_bytes())
    data[200] = ord("7") if data[200] != ord("7") else ord("8")
    (folder / "pv.csv").write_bytes(bytes(data))
    with pytest.raises(D.ChecksumError, match=r"checksum mismatch for .*pv\.csv: expected SHA-256 b72a9d06.*Delete it"):
        D.plane_vibration("train", root=tmp_path)
    assert isinstance(D.ChecksumError("x"), ValueError)


def _file_url(path: Path) -> str:
    return path.resolve().as_uri()


def test_download_from_file_url_is_verified_and_atomic(tmp_path):
    payload = b"t,v\n0,1\n1,2\n"
    src = tmp_path / "src" / "series.csv"
    src.parent.mkdir()
    src.write_bytes(payload)
    digest = D.sha256_file(src)
    entry = D.DataFile("toy/series.csv", digest, (D.Source(_file_url(tmp_path / "src" / "absent.csv")),
                                                  D.Source(_file_url(src))))
    root = tmp_path / "root"
    folder = D.ensure_dataset("toy", root=root, files=[entry])
    assert folder == root / "toy"
    assert (folder / "series.csv").read_bytes() == payload
    assert sorted(p.name for p in folder.iterdir()) == ["series.csv"]  # no temporary file left
    assert D.ensure_dataset("toy", root=root, files=[entry], download=False) == folder


def test_download_with_wrong_checksum_writes_nothing(tmp_path):
    src = tmp_path / "bad.csv"
    src.write_bytes(b"not the published bytes")
    entry = D.DataFile("toy/good.csv", "0" * 64, (D.Source(_file_url(src)),))
    with pytest.raises(D.MissingDataError, match=r"(?s)good\.csv.*SHA-256 [0-9a-f]{64} != expected 0{64}"):
        D.ensure_dataset("toy", root=tmp_path / "root", files=[entry])
    assert not (tmp_path / "root").exists()


def test_interrupted_download_leaves_no_partial_file(tmp_path, monkeypatch):
    class Broken(io.BytesIO):
        def read(self, *args):
            if self.tell() > 4:
                raise ConnectionResetError("connection reset by peer")
            return super().read(5)

    monkeypatch.setattr(_download, "_open_url", lambda url, timeout: Broken(b"0123456789" * 100))
    entry = D.DataFile("toy/big.bin", "1" * 64, (D.Source("https://example.invalid/big.bin"),))
    with pytest.raises(D.MissingDataError, match="connection reset by peer"):
        D.ensure_dataset("toy", root=tmp_path, files=[entry])
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_archive_members_and_transforms_are_extracted_and_verified(tmp_path, monkeypatch):
    a, b, c = b"first file\n", b"second file\n", b"V1,V2\n1,2"
    zpath = tmp_path / "bundle.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("bundle/walker/rollout_000.npy", a)
        zf.writestr("bundle/walker/rollout_001.npy", b)
        zf.writestr("bundle/other/SNLS80mV.csv", c + b"\r\n\n")
    gz = tmp_path / "d.gz"
    gz.write_bytes(gzip.compress(b"idx bytes"))
    sha = {k: D.sha256_file(_write(tmp_path / k, v)) for k, v in (("a", a), ("b", b), ("c", c), ("d", b"idx bytes"))}
    url = _file_url(zpath)
    files = [
        D.DataFile("toy/rollout_000.npy", sha["a"], (D.Source(url, member="walker/rollout_000.npy"),)),
        D.DataFile("toy/rollout_001.npy", sha["b"], (D.Source(url, member="walker/rollout_001.npy"),)),
        D.DataFile("toy/sb.csv", sha["c"],
                   (D.Source(url, member="SNLS80mV.csv", transform="strip_trailing_newlines"),)),
        D.DataFile("toy/raw/d", sha["d"], (D.Source(_file_url(gz), transform="gunzip"),)),
    ]
    opened = []
    real = _download._open_url
    monkeypatch.setattr(_download, "_open_url", lambda u, timeout: (opened.append(u), real(u, timeout))[1])
    folder = D.ensure_dataset("toy", root=tmp_path / "root", files=files)
    assert (folder / "rollout_000.npy").read_bytes() == a and (folder / "rollout_001.npy").read_bytes() == b
    assert (folder / "sb.csv").read_bytes() == c and (folder / "raw" / "d").read_bytes() == b"idx bytes"
    assert opened.count(url) == 1  # the archive is fetched once for all its members
    assert not [p for p in (tmp_path / "root").rglob("*.part")]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match=r"unknown dataset 'walker'; expected one of \['cifar10'"):
        D.registered_files("walker")


@needs_data
def test_shipped_folder_verifies_without_writing(tmp_path):
    # A read-only, complete data root is used in place: nothing is created or downloaded.
    for name in ("plane_vibration", "silverbox", "walker2d"):
        assert D.ensure_dataset(name, download=False) == DATA / name


@needs_data
def test_copied_root_is_found_via_root_argument(tmp_path):
    shutil.copytree(DATA / "silverbox", tmp_path / "silverbox")
    assert len(D.silverbox(root=tmp_path, download=False)) == 1


# ----------------------------------------------------------------------------------------------------------------
# Straight into odernn.ODERNN
# ----------------------------------------------------------------------------------------------------------------


def _one_step(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, mask=None) -> float:
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    out = model(x, t) if mask is None else model(x, t, mask=mask)
    assert out.shape == y.shape
    loss = torch.nn.functional.mse_loss(out, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss.detach())
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    return loss.item()


@needs_data
@needs_odernn
def test_walker2d_batch_trains_odernn_for_one_step(walker):
    torch.manual_seed(0)
    batch = next(iter(torch.utils.data.DataLoader(walker["train"], batch_size=4, shuffle=True)))
    model = odernn.ODERNN("hbnode", 17, 8, 17, rtol=1e-3, atol=1e-4)
    _one_step(model, batch["x"], batch["t"], batch["x_next"])


@needs_data
@needs_odernn
def test_plane_vibration_batch_trains_odernn_for_one_step(pv):
    torch.manual_seed(0)
    batch = next(iter(torch.utils.data.DataLoader(pv["train"], batch_size=4)))
    model = odernn.ODERNN("hbnode", 5, 8, 5, rtol=1e-3, atol=1e-4)
    # the first 16 of the 64 stamps keep this test quick; the times are the loader's absolute sample indices
    _one_step(model, batch["x"][:, :16], batch["t"][:, :16], batch["x_next"][:, :16])
