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

from ._cli import RecipeError

__all__ = ["atomic_save", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_write_csv",
           "read_csv", "read_json_object", "jsonable", "FileContentError"]

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


class FileContentError(RecipeError, ValueError):
    """A file the recipes wrote (a CSV, a JSON record) whose content cannot be read back as written: the message
    names the file, the line and what to do."""


def _text(path: PathLike, todo: str) -> str:
    """The file's UTF-8 text; a byte-order mark (what spreadsheets add) is dropped."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise FileContentError(f"{path}, line {line}: not UTF-8 text (byte {data[e.start]:#04x} at offset "
                               f"{e.start}); {todo}") from None


def read_csv(path: PathLike, *, todo: str = "fix or remove the file") -> list[dict[str, Any]]:
    """Read a CSV written by :func:`atomic_write_csv`; numbers come back as int/float, empty cells as None.

    A UTF-8 byte-order mark (a file re-saved by a spreadsheet) is harmless. Anything that cannot be read exactly is
    refused rather than skipped.

    Args:
        path: the file.
        todo: what the user should do, appended to error messages.

    Raises:
        FileContentError: for text that is not UTF-8, a header with an empty or repeated column name (an empty
            column with no values is dropped), or a row with more or fewer cells than the header, naming the file
            and the line.
    """
    text = _text(path, todo)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return []
        parsed = [(reader.line_num, row) for row in reader]
    except csv.Error as e:
        raise FileContentError(f"{path}, line {reader.line_num}: not valid CSV ({e}); {todo}") from None
    rows = []
    for line, cells in parsed:
        if not cells:  # a blank line
            continue
        if len(cells) != len(header):
            raise FileContentError(f"{path}, line {line}: {len(cells)} cell(s) but the header (line 1) has "
                                   f"{len(header)} columns; {todo}")
        rows.append((line, cells))
    keep = []
    for j, name in enumerate(header):
        if name.strip() == "":
            used = [line for line, cells in rows if cells[j].strip() != ""]
            if used:
                raise FileContentError(f"{path}, line {used[0]}: a value in column {j + 1}, which has no name in "
                                       f"the header; {todo}")
            continue  # an empty, unnamed column (a trailing comma): nothing to read
        keep.append(j)
    names = [header[j] for j in keep]
    if len(set(names)) != len(names):
        dup = sorted({c for c in names if names.count(c) > 1})
        raise FileContentError(f"{path}, line 1: column(s) {dup} appear more than once in the header; {todo}")
    out = []
    for line, cells in rows:
        row = {header[j]: _parse_cell(cells[j]) for j in keep}
        out.append(_Row(row, line))
    return out


class _Row(dict):
    """A CSV row (a plain dict) that remembers its line in the file, for error messages."""

    __slots__ = ("line",)

    def __init__(self, values: Mapping[str, Any], line: int) -> None:
        super().__init__(values)
        self.line = line


def read_json_object(path: PathLike, *, todo: str = "fix or remove the file") -> dict[str, Any]:
    """Read a JSON object (``summary.json``, ``config.json``, ...).

    Raises:
        FileContentError: for text that is not UTF-8, invalid JSON (with the line and column) or JSON that is not
            an object, naming the file.
    """
    text = _text(path, todo)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise FileContentError(f"{path}, line {e.lineno}, column {e.colno}: not valid JSON ({e.msg}); {todo}") from None
    if not isinstance(value, dict):
        raise FileContentError(f"{path}: expected a JSON object ({{...}}), found a {type(value).__name__}; {todo}")
    return value


def _parse_cell(s: Optional[str]) -> Any:
    if s is None or s == "":
        return None
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return s
