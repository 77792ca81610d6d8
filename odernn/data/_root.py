"""Where data files live, what they must contain, and how a missing one is fetched.

One registry maps each dataset name to the files its loader reads, each with the SHA-256 of the exact bytes
and an ordered list of public sources. :func:`ensure_dataset` resolves the data root, verifies every file and,
if allowed, downloads what is missing. A download is written to a temporary file in the destination folder and
renamed onto its final name with :func:`os.replace` only after its checksum matched, so an interrupted or wrong
download never leaves a half-written data file behind.

Resolution order of the data root: the ``root=`` argument, else the ``ODERNN_DATA`` environment variable, else a
per-user cache folder (:func:`default_cache_dir`). Nothing here runs on import: no folder is created, nothing is
downloaded and nothing is printed.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Mapping, Sequence

__all__ = [
    "ENV_VAR",
    "ChecksumError",
    "DataFile",
    "MissingDataError",
    "Source",
    "data_root",
    "default_cache_dir",
    "ensure_dataset",
    "registered_datasets",
    "registered_files",
    "sha256_file",
]

ENV_VAR = "ODERNN_DATA"
"""Name of the environment variable that points at the data root."""

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0


class MissingDataError(FileNotFoundError):
    """Data files are missing and could not (or were not allowed to) be downloaded.

    The message names the missing files, the folder that was searched and the ``ODERNN_DATA`` variable.
    """


class ChecksumError(ValueError):
    """A data file's SHA-256 differs from the registered one."""


@dataclass(frozen=True)
class Source:
    """One place a data file can be fetched from.

    Attributes:
        url: Location of the bytes (``https://``, ``http://`` or ``file://``).
        member: If set, ``url`` is a ZIP archive and the file is the member whose path ends with ``member``
            (compared on ``/``-separated components, so ``"walker/rollout_000.npy"`` matches
            ``"data/walker/rollout_000.npy"``).
        transform: Optional change applied to the fetched bytes before the checksum is verified:
            ``"gunzip"`` (the source is gzip-compressed) or ``"strip_trailing_newlines"`` (the source is the
            same file with extra line breaks at its end).
    """

    url: str
    member: str | None = None
    transform: str | None = None


@dataclass(frozen=True)
class DataFile:
    """A file a loader reads, relative to the data root.

    Attributes:
        path: Path relative to the data root, ``/``-separated (e.g. ``"plane_vibration/pv.csv"``).
        sha256: Hex SHA-256 of the exact bytes the loader expects.
        sources: Where to fetch it, tried in order. Empty when no public source reproduces the bytes.
    """

    path: str
    sha256: str
    sources: tuple[Source, ...] = field(default_factory=tuple)


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------

_SONODE = "https://raw.githubusercontent.com/a-norcliffe/sonode/d373ebf7f8ce43aba91ab1c78e88a3a43e89875b"
_HBNODE = "https://raw.githubusercontent.com/hedixia/HeavyBallNODE/e8e32e1e3f5ed41a9d66745b299e6230c205cb32"
_CFC = "https://raw.githubusercontent.com/raminmh/CfC/59f6e01fd4809331f6dd3ddf0f8bf5890c9e71a7"
_WALKER_ZIP = "https://pub.ist.ac.at/~mlechner/datasets/walker.zip"
_F16_ZIP = "http://www.nonlinearbenchmark.org/FILES/BENCHMARKS/F16/F16GVT_Files.zip"
_SILVERBOX_ZIP = "http://www.nonlinearbenchmark.org/FILES/BENCHMARKS/SILVERBOX/SilverboxFiles.zip"
_MNIST = ("https://ossci-datasets.s3.amazonaws.com/mnist", "http://yann.lecun.com/exdb/mnist")

def _walker_files() -> tuple[DataFile, ...]:
    from ._walker_sums import WALKER_SHA256

    files = []
    for i, digest in enumerate(WALKER_SHA256):
        name = f"rollout_{i:03d}.npy"
        files.append(
            DataFile(
                f"walker2d/{name}",
                digest,
                (Source(f"{_CFC}/data/walker/{name}"), Source(_WALKER_ZIP, member=f"walker/{name}")),
            )
        )
    return tuple(files)


def _static_registry() -> dict[str, tuple[DataFile, ...]]:
    mnist = []
    for name, digest in (
        ("train-images-idx3-ubyte", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        ("train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        ("t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        ("t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    ):
        sources = tuple(Source(f"{base}/{name}.gz", transform="gunzip") for base in _MNIST)
        mnist.append(DataFile(f"mnist/MNIST/raw/{name}", digest, sources))
    return {
        "plane_vibration": (
            DataFile(
                "plane_vibration/pv.csv",
                "b72a9d063e392570bb20c26f4763232e30262e5914d946e475e67df40880db6d",
                (
                    Source(f"{_SONODE}/experiments/plane_vibrations/F16Data_FullMSine_Level1.csv"),
                    Source(_F16_ZIP, member="F16Data_FullMSine_Level1.csv"),
                ),
            ),
        ),
        "silverbox": (
            DataFile(
                "silverbox/sb.csv",
                "e7076735427b0b9bbc18a2a43b78022219a76623b15b494be559dc58b0224279",
                (
                    Source(f"{_HBNODE}/data/sb.csv"),
                    Source(f"{_SONODE}/experiments/silverbox/SNLS80mV.csv", transform="strip_trailing_newlines"),
                    Source(_SILVERBOX_ZIP, member="SNLS80mV.csv", transform="strip_trailing_newlines"),
                ),
            ),
        ),
        "mnist": tuple(mnist),
        # The JPEG copy of CIFAR-10 was re-encoded for this project; no public source reproduces its bytes.
        "cifar10": (
            DataFile(
                "cifar10/cifar10_jpeg_q75/train.tar.gz",
                "45a63b9dd7542b37404b94f3e6f0269562f89fe2ff16ed505e6a327bb8c68449",
            ),
            DataFile(
                "cifar10/cifar10_jpeg_q75/test.tar.gz",
                "f225cabdd5279430dd56749e356119671fe0cd2bf543e78d20c27af441d80951",
            ),
        ),
    }


_REGISTRY: dict[str, tuple[DataFile, ...]] | None = None


def _registry() -> dict[str, tuple[DataFile, ...]]:
    global _REGISTRY
    if _REGISTRY is None:
        reg = _static_registry()
        reg["walker2d"] = _walker_files()
        _REGISTRY = dict(sorted(reg.items()))
    return _REGISTRY


def registered_datasets() -> tuple[str, ...]:
    """Names of the datasets the registry knows, sorted."""
    return tuple(_registry())


def registered_files(name: str) -> tuple[DataFile, ...]:
    """The files a dataset's loader reads, with their SHA-256 and sources.

    Args:
        name: A dataset name from :func:`registered_datasets`.

    Raises:
        ValueError: If ``name`` is not registered.
    """
    reg = _registry()
    if name not in reg:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(reg)}")
    return reg[name]


# --------------------------------------------------------------------------------------------------------------
# Root resolution
# --------------------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Per-user cache folder used when neither ``root=`` nor ``ODERNN_DATA`` is given.

    ``$XDG_CACHE_HOME/odernn`` (default ``~/.cache/odernn``) on Linux, ``~/Library/Caches/odernn`` on macOS and
    ``%LOCALAPPDATA%\\odernn\\Cache`` on Windows. The folder is not created here.
    """
    if sys.platform.startswith("win"):
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "odernn" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "odernn"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "odernn"


def _resolve(root: str | os.PathLike[str] | None) -> tuple[Path, str]:
    if root is not None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a str or os.PathLike, got {type(root).__name__}")
        return Path(root).expanduser(), "the root= argument"
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser(), f"the {ENV_VAR} environment variable"
    return default_cache_dir(), f"the default cache folder ({ENV_VAR} is not set)"


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the data root: ``root`` if given, else ``$ODERNN_DATA``, else :func:`default_cache_dir`.

    Args:
        root: Explicit data root. ``~`` is expanded.

    Returns:
        The folder that holds one sub-folder per dataset (``walker2d/``, ``plane_vibration/``, ...). It may not
        exist yet.
    """
    return _resolve(root)[0]


# --------------------------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------------------------

_VERIFIED: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _cached_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    digest = _VERIFIED.get(key)
    if digest is None:
        digest = sha256_file(path)
        _VERIFIED[key] = digest
    return digest


def _checksum_message(path: Path, expected: str, found: str) -> str:
    return (
        f"checksum mismatch for {path}: expected SHA-256 {expected}, found {found}. The file is corrupt, "
        "truncated or a different version. Delete it and call the loader again with download=True to fetch "
        f"a verified copy, or point {ENV_VAR} / root= at a folder holding the published file."
    )


# --------------------------------------------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------------------------------------------


def _open_url(url: str) -> BinaryIO:
    """Open ``url`` for reading (module-level so tests can replace it)."""
    request = urllib.request.Request(url, headers={"User-Agent": "odernn-data"})
    return urllib.request.urlopen(request, timeout=_TIMEOUT_S)  # noqa: S310 - URLs come from the registry


def _download_to(url: str, dest: BinaryIO) -> None:
    with _open_url(url) as response:
        shutil.copyfileobj(response, dest, _CHUNK)


def _zip_member(archive: zipfile.ZipFile, member: str) -> zipfile.ZipInfo:
    want = [p for p in member.split("/") if p]
    for info in archive.infolist():
        parts = [p for p in info.filename.replace("\\", "/").split("/") if p]
        if not info.is_dir() and parts[-len(want):] == want:
            return info
    raise ValueError(f"archive has no member ending with {member!r}")


def _transform(raw: Path, transform: str | None, out: BinaryIO) -> None:
    if transform is None:
        with open(raw, "rb") as fh:
            shutil.copyfileobj(fh, out, _CHUNK)
    elif transform == "gunzip":
        with gzip.open(raw, "rb") as fh:
            shutil.copyfileobj(fh, out, _CHUNK)
    elif transform == "strip_trailing_newlines":
        data = raw.read_bytes()
        out.write(data.rstrip(b"\r\n"))
    else:  # pragma: no cover - registry invariant
        raise ValueError(f"unknown transform {transform!r}")


class _Fetcher:
    """Fetches files into one dataset folder; an archive is downloaded at most once per call."""

    def __init__(self, tmpdir: Path) -> None:
        self.tmpdir = tmpdir
        self.archives: dict[str, Path] = {}
        self.failed_urls: dict[str, str] = {}
        self.dead_hosts: dict[str, str] = {}

    def _raw(self, url: str) -> Path:
        host = urllib.parse.urlsplit(url).netloc
        if url in self.failed_urls:
            raise OSError(self.failed_urls[url])
        if host and host in self.dead_hosts:
            raise OSError(self.dead_hosts[host])
        if url in self.archives:
            return self.archives[url]
        fd, name = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=self.tmpdir)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                _download_to(url, fh)
        except BaseException as exc:
            path.unlink(missing_ok=True)
            self.failed_urls[url] = f"{type(exc).__name__}: {exc}"
            if host and isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
                # The host is unreachable (offline, DNS): do not try its other files one by one.
                self.dead_hosts[host] = f"host {host} unreachable: {exc}"
            raise
        self.archives[url] = path
        return path

    def fetch(self, item: DataFile, dest: Path) -> list[str]:
        """Try every source of ``item``; return the reasons of failed attempts (empty on success)."""
        errors: list[str] = []
        for src in item.sources:
            tmp: Path | None = None
            try:
                raw = self._raw(src.url)
                fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
                tmp = Path(name)
                with os.fdopen(fd, "wb") as out:
                    if src.member is None:
                        _transform(raw, src.transform, out)
                    else:
                        with zipfile.ZipFile(raw) as archive:
                            info = _zip_member(archive, src.member)
                            member_fd, member_name = tempfile.mkstemp(suffix=".part", dir=self.tmpdir)
                            member_tmp = Path(member_name)
                            try:
                                with archive.open(info) as zf, os.fdopen(member_fd, "wb") as mf:
                                    shutil.copyfileobj(zf, mf, _CHUNK)
                                _transform(member_tmp, src.transform, out)
                            finally:
                                member_tmp.unlink(missing_ok=True)
                digest = sha256_file(tmp)
                if digest != item.sha256:
                    raise ChecksumError(f"SHA-256 {digest} != expected {item.sha256}")
                os.replace(tmp, dest)
                tmp = None
                return []
            except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
                errors.append(f"{src.url}{' [' + src.member + ']' if src.member else ''}: {exc}")
            finally:
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
                if src.member is None:  # a plain file is used once; only archives are kept for other members
                    raw_path = self.archives.pop(src.url, None)
                    if raw_path is not None:
                        raw_path.unlink(missing_ok=True)
        if not item.sources:
            errors.append("no public source reproduces this file's bytes (see its dataset card)")
        return errors

    def close(self) -> None:
        for path in self.archives.values():
            path.unlink(missing_ok=True)
        self.archives.clear()


def _missing_message(
    name: str, folder: Path, how: str, missing: Sequence[DataFile], reason: str, errors: Mapping[str, list[str]]
) -> str:
    names = [Path(f.path).name for f in missing]
    shown = ", ".join(names[:5]) + (f", ... ({len(names)} files in all)" if len(names) > 5 else "")
    lines = [
        f"{name}: {len(missing)} data file(s) missing: {shown}.",
        f"Searched folder {folder} (data root chosen from {how}). {reason}",
    ]
    for path, errs in list(errors.items())[:3]:
        lines.append(f"  {path}: " + "; ".join(errs))
    lines.append(
        f"Fix: set {ENV_VAR}=/path/to/data (or pass root=) to a folder that contains "
        f"{missing[0].path}, or call again with download=True where the network is reachable."
    )
    return "\n".join(lines)


def ensure_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    files: Iterable[DataFile] | None = None,
) -> Path:
    """Make sure every file of a dataset is present and verified; return the dataset's folder.

    Present files are checked against their SHA-256 (once per process for an unchanged file). Missing files are
    downloaded from their registered sources when ``download`` is true, each into a temporary file in the
    destination folder that is renamed onto its final name only after its checksum matched.

    Args:
        name: Dataset name (``"walker2d"``, ``"plane_vibration"``, ``"silverbox"``, ``"mnist"``, ``"cifar10"``).
        root: Data root; default ``$ODERNN_DATA``, else :func:`default_cache_dir`.
        download: Whether missing files may be downloaded.
        files: Override of the registered files (used by tests and by users with private mirrors).

    Returns:
        ``<root>/<name>``.

    Raises:
        MissingDataError: Files are missing and ``download`` is false, or every source failed (offline).
        ChecksumError: A present file's SHA-256 differs from the registered one.
    """
    entries = tuple(files) if files is not None else registered_files(name)
    base, how = _resolve(root)
    folder = base / name
    missing: list[DataFile] = []
    for item in entries:
        path = base / item.path
        if path.is_file():
            digest = _cached_sha256(path)
            if digest != item.sha256:
                raise ChecksumError(_checksum_message(path, item.sha256, digest))
        else:
            missing.append(item)
    if not missing:
        return folder
    if not download:
        reason = "download=False, so nothing was fetched."
        raise MissingDataError(_missing_message(name, folder, how, missing, reason, {}))

    errors: dict[str, list[str]] = {}
    created: list[Path] = []
    try:
        for item in missing:
            parent = (base / item.path).parent
            new_dirs = [d for d in (parent, *parent.parents) if not d.exists()]
            parent.mkdir(parents=True, exist_ok=True)
            created.extend(reversed(new_dirs))
    except OSError as exc:
        _remove_empty(created)
        raise MissingDataError(
            _missing_message(name, folder, how, missing, f"Could not create the folder: {exc}.", {})
        ) from exc
    fetcher = _Fetcher(folder)
    still: list[DataFile] = []
    try:
        for item in missing:
            errs = fetcher.fetch(item, base / item.path)
            if errs:
                errors[item.path] = errs
                still.append(item)
    finally:
        fetcher.close()
    if still:
        _remove_empty(created)
        reason = "Downloading failed (offline, or the sources changed)."
        raise MissingDataError(_missing_message(name, folder, how, still, reason, errors))
    return folder


def _remove_empty(created: Sequence[Path]) -> None:
    """Remove folders this call created, deepest first, if they stayed empty."""
    for d in sorted(set(created), key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:
            pass
