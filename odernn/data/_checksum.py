"""SHA-256 of data files, the error raised when a file differs from the registered one, and a per-process cache
so that an unchanged file is hashed once."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["CHUNK", "ENV_VAR", "ChecksumError", "MissingDataError", "cached_sha256", "checksum_message",
           "sha256_file"]

ENV_VAR = "ODERNN_DATA"
"""Name of the environment variable that points at the data root."""

CHUNK = 1 << 20


class MissingDataError(FileNotFoundError):
    """Data files are missing and could not (or were not allowed to) be downloaded.

    The message names the missing files, the folder that was searched and the ``ODERNN_DATA`` variable.
    """


class ChecksumError(ValueError):
    """A data file's SHA-256 differs from the registered one."""


_VERIFIED: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def cached_sha256(path: Path) -> str:
    """:func:`sha256_file`, remembered per process for a file whose path, size and modification time are
    unchanged."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    digest = _VERIFIED.get(key)
    if digest is None:
        digest = sha256_file(path)
        _VERIFIED[key] = digest
    return digest


def checksum_message(path: Path, expected: str, found: str) -> str:
    """What went wrong and what to do, for a file whose SHA-256 is ``found`` instead of ``expected``."""
    return (
        f"checksum mismatch for {path}: expected SHA-256 {expected}, found {found}. The file is corrupt, "
        "truncated or a different version. Delete it and call the loader again with download=True to fetch "
        f"a verified copy, or point {ENV_VAR} / root= at a folder holding the published file."
    )
