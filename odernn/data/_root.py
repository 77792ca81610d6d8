"""Where data files live, and making sure the registered ones are there and verified.

:func:`ensure_dataset` resolves the data root, verifies every registered file of a dataset by SHA-256 and, if
allowed, downloads what is missing (:mod:`._download`): each download is written to a temporary file in the
destination folder and renamed onto its final name with :func:`os.replace` only after its checksum matched, so an
interrupted or wrong download never leaves a half-written data file behind. :func:`verify_files` returns the
verified paths themselves, for readers outside the loaders (the image recipes).

Resolution order of the data root: the ``root=`` argument, else the ``ODERNN_DATA`` environment variable, else a
per-user cache folder (:func:`default_cache_dir`). Nothing here runs on import: no folder is created, nothing is
downloaded and nothing is printed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping, Sequence

from ._checksum import ENV_VAR, ChecksumError, MissingDataError, cached_sha256, checksum_message
from ._download import Fetcher, download_timeout
from ._registry import DataFile, registered_files

__all__ = ["data_root", "default_cache_dir", "ensure_dataset", "verify_files"]


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


def _remove_empty(created: Sequence[Path]) -> None:
    """Remove folders this call created, deepest first, if they stayed empty."""
    for d in sorted(set(created), key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:
            pass


def ensure_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    files: Iterable[DataFile] | None = None,
    timeout: float | None = None,
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
        timeout: Seconds a file's download may wait for an answer, shared by its sources (default
            ``$ODERNN_DOWNLOAD_TIMEOUT``, else 15).

    Returns:
        ``<root>/<name>``.

    Raises:
        MissingDataError: Files are missing and ``download`` is false, or every source failed (offline, or a
            network that does not answer within the timeout).
        ChecksumError: A present file's SHA-256 differs from the registered one.
    """
    entries = tuple(files) if files is not None else registered_files(name)
    base, how = _resolve(root)
    folder = base / name
    missing: list[DataFile] = []
    for item in entries:
        path = base / item.path
        if path.is_file():
            digest = cached_sha256(path)
            if digest != item.sha256:
                raise ChecksumError(checksum_message(path, item.sha256, digest))
        else:
            missing.append(item)
    if not missing:
        return folder
    if not download:
        reason = "download=False, so nothing was fetched."
        raise MissingDataError(_missing_message(name, folder, how, missing, reason, {}))
    wait = download_timeout(timeout)

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
    fetcher = Fetcher(folder, wait)
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
        reason = "Downloading failed (offline, no answer, or the sources changed)."
        raise MissingDataError(_missing_message(name, folder, how, still, reason, errors))
    return folder


def verify_files(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    timeout: float | None = None,
) -> dict[str, Path]:
    """Every registered file of a dataset, verified by SHA-256: for readers that open the files themselves.

    Args:
        name: A registered dataset (``"mnist"``, ``"cifar10"``, ``"walker2d"``, ...).
        root: Data root; default ``$ODERNN_DATA``, else :func:`default_cache_dir`.
        download: Download missing files (default False: report them).
        timeout: See :func:`ensure_dataset`.

    Returns:
        ``{path relative to the dataset folder: absolute path}``, in registry order, e.g.
        ``verify_files("mnist")["MNIST/raw/train-images-idx3-ubyte"]``.

    Raises:
        ValueError: Unknown dataset.
        MissingDataError: A file is missing and could not be downloaded.
        ChecksumError: A file's bytes differ from the registered ones.

    Example:
        >>> paths = verify_files("cifar10")
        >>> paths["cifar10_jpeg_q75/train.tar.gz"].name
        'train.tar.gz'
    """
    folder = ensure_dataset(name, root=root, download=download, timeout=timeout)
    out = {}
    for item in registered_files(name):
        rel = PurePosixPath(item.path).relative_to(name)
        out[str(rel)] = folder.joinpath(*rel.parts)
    return out
