"""Data files are read exactly as registered, verified, and fetched in bounded time (issue 14), from a registry
kept as package data (issue 11)."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import odernn.data as D
from odernn.data import _download, _registry

DATA = Path(os.environ.get("ODERNN_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_data = pytest.mark.skipif(not (DATA / "SHA256SUMS").is_file(), reason=f"no data folder at {DATA}")


# ----------------------------------------------------------------------------------------------------------------
# Walker2D reads exactly the registered files
# ----------------------------------------------------------------------------------------------------------------


@needs_data
def test_walker2d_ignores_a_stray_npy_file(tmp_path):
    folder = tmp_path / "walker2d"
    folder.mkdir()
    for p in (DATA / "walker2d").glob("*.npy"):
        (folder / p.name).symlink_to(p)
    np.save(folder / "rollout_400.npy", np.zeros((1001, 17)))  # sorts after the real ones and would be shuffled in
    np.save(folder / "aaa.npy", np.ones((500, 17)))
    splits = {s: D.walker2d(s, root=tmp_path, download=False) for s in ("train", "valid", "test")}
    assert {s: len(ds) for s, ds in splits.items()} == {"train": 9684, "valid": 1272, "test": 1937}
    shared = {s: D.walker2d(s, download=False) for s in ("train", "valid", "test")}
    assert all(splits[s].files == shared[s].files for s in splits)
    assert "rollout_400.npy" not in set().union(*(ds.files for ds in splits.values()))
    np.testing.assert_array_equal(splits["test"][7]["x"].numpy(), shared["test"][7]["x"].numpy())


@needs_data
def test_walker2d_refuses_a_changed_registered_file(tmp_path):
    folder = tmp_path / "walker2d"
    folder.mkdir()
    for p in (DATA / "walker2d").glob("*.npy"):
        (folder / p.name).symlink_to(p)
    target = folder / "rollout_123.npy"
    arr = np.load(target.resolve())
    target.unlink()
    arr[5, 3] += 1.0
    np.save(target, arr)
    with pytest.raises(D.ChecksumError, match=r"checksum mismatch for .*rollout_123\.npy: expected SHA-256"):
        D.walker2d("train", root=tmp_path, download=False)


def test_walker2d_names_the_registered_files_it_misses(tmp_path):
    folder = tmp_path / "walker2d"
    folder.mkdir()
    np.save(folder / "rollout_000.npy", np.zeros((3, 17)))
    with pytest.raises(D.ChecksumError, match="rollout_000.npy"):
        D.walker2d("train", root=tmp_path, download=False)
    (folder / "rollout_000.npy").unlink()
    with pytest.raises(D.MissingDataError, match=r"400 data file\(s\) missing: rollout_000\.npy"):
        D.walker2d("train", root=tmp_path, download=False)


# ----------------------------------------------------------------------------------------------------------------
# Verified files for readers outside the loaders (the image recipes)
# ----------------------------------------------------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("name, key", [("mnist", "MNIST/raw/t10k-labels-idx1-ubyte"),
                                       ("cifar10", "cifar10_jpeg_q75/test.tar.gz")])
def test_verify_files_returns_every_registered_path(name, key):
    paths = D.verify_files(name)
    assert len(paths) == len(D.registered_files(name))
    assert paths[key] == DATA / name / key and paths[key].is_file()
    assert all(p.is_file() for p in paths.values())


@needs_data
def test_verify_files_rejects_a_flipped_label(tmp_path):
    src = DATA / "mnist" / "MNIST" / "raw"
    dst = tmp_path / "mnist" / "MNIST" / "raw"
    dst.mkdir(parents=True)
    for p in src.iterdir():
        (dst / p.name).symlink_to(p)
    labels = dst / "t10k-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    labels.unlink()
    data[8 + 17] = (data[8 + 17] + 1) % 10  # one label of the test set
    labels.write_bytes(bytes(data))
    with pytest.raises(D.ChecksumError, match=r"t10k-labels-idx1-ubyte: expected SHA-256 ff7bcfd4"):
        D.verify_files("mnist", root=tmp_path)
    labels.unlink()
    with pytest.raises(D.MissingDataError, match=r"(?s)mnist: 1 data file\(s\) missing: t10k-labels-idx1-ubyte.*"
                                                 r"download=False"):
        D.verify_files("mnist", root=tmp_path)


def test_verify_files_unknown_dataset():
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'; expected one of \['cifar10', 'mnist'"):
        D.verify_files("imagenet")


# ----------------------------------------------------------------------------------------------------------------
# A network that accepts connections and never answers
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def silent_server():
    """A TCP server on localhost that accepts every connection and never sends a byte."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held, stop = [], threading.Event()

    def accept():
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    srv.close()


def test_silent_network_fails_each_file_within_its_timeout_and_says_so(tmp_path, silent_server):
    files = [D.DataFile(f"toy/part{i}.bin", "2" * 64, (D.Source(f"{silent_server}/a/part{i}.bin"),
                                                       D.Source(f"{silent_server}/b/part{i}.bin")))
             for i in range(3)]
    start = time.monotonic()
    with pytest.raises(D.MissingDataError, match=r"(?s)3 data file\(s\) missing.*no answer from 127\.0\.0\.1:\d+ "
                                                 r"within 0\.4 s.*ODERNN_DOWNLOAD_TIMEOUT"):
        D.ensure_dataset("toy", root=tmp_path, files=files, timeout=0.8)
    elapsed = time.monotonic() - start
    assert elapsed < 3.0  # one file's 0.8 s (two sources of 0.4 s), then the silent host is not retried
    assert [p for p in tmp_path.rglob("*")] == []


def test_silent_network_timeout_comes_from_the_environment(tmp_path, silent_server, monkeypatch):
    monkeypatch.setenv("ODERNN_DOWNLOAD_TIMEOUT", "0.3")
    files = [D.DataFile("toy/x.bin", "3" * 64, (D.Source(f"{silent_server}/x.bin"),))]
    start = time.monotonic()
    with pytest.raises(D.MissingDataError, match=r"within 0\.3 s"):
        D.ensure_dataset("toy", root=tmp_path, files=files)
    assert time.monotonic() - start < 2.0


def test_download_timeout_default_and_validation(monkeypatch):
    monkeypatch.delenv("ODERNN_DOWNLOAD_TIMEOUT", raising=False)
    assert D.download_timeout() == 15.0 == _download.DEFAULT_TIMEOUT_S
    assert D.download_timeout(2) == 2.0
    monkeypatch.setenv("ODERNN_DOWNLOAD_TIMEOUT", "4.5")
    assert D.download_timeout() == 4.5
    monkeypatch.setenv("ODERNN_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(ValueError, match=r"ODERNN_DOWNLOAD_TIMEOUT='soon' is not a number of seconds"):
        D.download_timeout()
    with pytest.raises(ValueError, match=r"timeout= must be a positive number of seconds, got -1"):
        D.download_timeout(-1)


def test_registered_walker_download_waits_at_most_the_default_per_file(monkeypatch, tmp_path):
    waits = []

    def silent(url, timeout):
        waits.append(timeout)
        raise TimeoutError("timed out")

    monkeypatch.delenv("ODERNN_DOWNLOAD_TIMEOUT", raising=False)
    monkeypatch.setattr(_download, "_open_url", silent)
    with pytest.raises(D.MissingDataError, match=r"(?s)400 data file\(s\) missing.*no answer from "
                                                 r"raw\.githubusercontent\.com within 7\.5 s"):
        D.walker2d("train", root=tmp_path)
    assert waits == [7.5, 7.5]  # two sources share the default 15 s; both hosts are then known to be silent


# ----------------------------------------------------------------------------------------------------------------
# The registry is package data
# ----------------------------------------------------------------------------------------------------------------


def test_registry_is_package_data_with_every_walker_rollout():
    import importlib.resources

    text = importlib.resources.files("odernn.data").joinpath("registry.txt").read_text()
    assert _registry.parse_registry(text) == {n: D.registered_files(n) for n in D.registered_datasets()}
    walker = D.registered_files("walker2d")
    assert [f.path for f in walker] == [f"walker2d/rollout_{i:03d}.npy" for i in range(400)]
    assert walker[7].sources[1] == D.Source("https://pub.ist.ac.at/~mlechner/datasets/walker.zip",
                                            member="walker/rollout_007.npy")
    assert D.registered_files("cifar10")[0].sources == ()
    assert D.registered_files("mnist")[0].sources[0].transform == "gunzip"
    assert not (Path(D.__file__).parent / "_walker_sums.py").exists()


@pytest.mark.parametrize("text, message", [
    ("abc  x/y\n", r"line 1: 'abc  x/y' comes before any \[dataset\] line"),
    ("[a]\n" + "0" * 64 + "  b/file\n", r"line 2: file 'b/file' is not under its dataset folder 'a/'"),
    ("[a]\n  source http://x\n", r"line 2: an indented source must follow a file line"),
    ("[a]\n" + "0" * 64 + "  a/f\nsource http://x\n", r"line 3: dataset-wide sources must come before"),
    ("[a]\nsource http://x transform=unzip\n", r"line 2: unknown transform 'unzip'"),
    ("[a]\nsource http://x colour=red\n", r"line 2: bad source option 'colour=red'"),
    ("[a]\n[a]\n", r"line 2: empty or repeated dataset name"),
    ("[a]\nnonsense here now\n", r"line 2: cannot read 'nonsense here now'"),
])
def test_registry_parser_names_the_bad_line(text, message):
    with pytest.raises(ValueError, match=message):
        _registry.parse_registry(text, "reg.txt")
