"""Files that are never torn: atomic writes of bytes, text, JSON, CSV and tensors, and the CSV reader.

Every writer goes through a temporary file in the target's folder, flushed, fsynced and moved into place with
:func:`os.replace`, so a crash or a kill at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["atomic_save", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_write_csv",
           "read_csv", "jsonable"]

PathLike = Union[str, os.PathLike]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone would leave 0600


def _atomic(path: PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with contextlib.suppress(OSError, AttributeError):
            os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj, path)`` through a temporary file in the same folder, fsync and :func:`os.replace`.

    A crash or kill at any moment leaves ``path`` either as it was or complete; never torn. Returns the path.
    """
    return _atomic(path, lambda f: torch.save(obj, f))


def atomic_write_bytes(data: bytes, path: PathLike) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_save`)."""
    return _atomic(path, lambda f: f.write(data))


def atomic_write_text(text: str, path: PathLike) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(text.encode("utf-8"), path)


def jsonable(v: Any) -> Any:
    """``v`` with paths, devices, dtypes, numpy scalars and tensors turned into JSON values (others by ``repr``)."""
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, Tensor):
        return v.tolist()
    if isinstance(v, (Path, torch.device, torch.dtype)):
        return str(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return repr(v)


def atomic_write_json(obj: Any, path: PathLike) -> Path:
    """Write ``obj`` as indented JSON atomically (converted with :func:`jsonable`)."""
    return atomic_write_text(json.dumps(jsonable(obj), indent=2, sort_keys=False) + "\n", path)


def _fmt_cell(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)  # exact round trip
    return "" if v is None else str(v)


def atomic_write_csv(rows: Sequence[Mapping[str, Any]], path: PathLike,
                     fieldnames: Optional[Sequence[str]] = None) -> Path:
    """Write ``rows`` (dicts) as CSV atomically; floats are written with ``repr`` so they read back exactly.

    Args:
        rows: the rows.
        path: target file.
        fieldnames: column order (default: keys in order of first appearance).
    """
    if fieldnames is None:
        fieldnames = []
        for r in rows:
            fieldnames += [k for k in r if k not in fieldnames]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fieldnames), extrasaction="raise", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt_cell(r.get(k)) for k in fieldnames})
    return atomic_write_text(buf.getvalue(), path)


def read_csv(path: PathLike) -> list[dict[str, Any]]:
    """Read a CSV written by :func:`atomic_write_csv`; numbers come back as int/float, empty cells as None."""
    with open(path, newline="") as f:
        return [{k: _parse_cell(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _parse_cell(s: Optional[str]) -> Any:
    if s is None or s == "":
        return None
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return s
