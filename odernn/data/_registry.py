"""The registry of data files: which files each loader reads, their SHA-256 and where to fetch them.

The registry is package data, ``odernn/data/registry.txt`` (its format is described at its top), read once per
process with :mod:`importlib.resources`; :func:`registered_datasets` and :func:`registered_files` expose it.
"""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import PurePosixPath

__all__ = ["DataFile", "Source", "TRANSFORMS", "parse_registry", "registered_datasets", "registered_files"]

TRANSFORMS = ("gunzip", "strip_trailing_newlines")
_SHA = re.compile(r"^[0-9a-f]{64}$")


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


def _source(fields: list[str], where: str) -> Source:
    url, opts = fields[0], {}
    for item in fields[1:]:
        key, sep, value = item.partition("=")
        if not sep or key not in ("member", "transform") or key in opts:
            raise ValueError(f"{where}: bad source option {item!r}; expected member=... or transform=...")
        opts[key] = value
    if opts.get("transform") not in (None, *TRANSFORMS):
        raise ValueError(f"{where}: unknown transform {opts['transform']!r}; expected one of {list(TRANSFORMS)}")
    return Source(url, opts.get("member"), opts.get("transform"))


def _named(src: Source, name: str) -> Source:
    member = src.member.replace("{name}", name) if src.member else None
    return Source(src.url.replace("{name}", name), member, src.transform)


def parse_registry(text: str, origin: str = "registry.txt") -> dict[str, tuple[DataFile, ...]]:
    """Parse registry text (the format at the top of ``registry.txt``) into ``{dataset: files}``, sorted.

    Raises:
        ValueError: A malformed line, naming its number.
    """
    out: dict[str, list[DataFile]] = {}
    templates: list[Source] = []
    current: str | None = None
    files: list[tuple[str, str, list[Source]]] = []

    def close() -> None:
        if current is not None:
            out[current] = [DataFile(p, d, tuple(own) or tuple(_named(s, PurePosixPath(p).name) for s in templates))
                            for p, d, own in files]

    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{origin} line {number}"
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        if line.startswith("[") and line.endswith("]"):
            close()
            current, templates, files = line[1:-1].strip(), [], []
            if not current or current in out:
                raise ValueError(f"{where}: empty or repeated dataset name {line!r}")
        elif current is None:
            raise ValueError(f"{where}: {line.strip()!r} comes before any [dataset] line")
        elif fields[0] == "source" and len(fields) >= 2:
            if raw[:1].isspace():
                if not files:
                    raise ValueError(f"{where}: an indented source must follow a file line")
                files[-1][2].append(_source(fields[1:], where))
            elif files:
                raise ValueError(f"{where}: dataset-wide sources must come before the first file; indent it to "
                                 "make it the source of the file above")
            else:
                templates.append(_source(fields[1:], where))
        elif len(fields) == 2 and _SHA.match(fields[0]):
            if not fields[1].startswith(current + "/"):
                raise ValueError(f"{where}: file {fields[1]!r} is not under its dataset folder {current + '/'!r}")
            files.append((fields[1], fields[0], []))
        else:
            raise ValueError(f"{where}: cannot read {line.strip()!r}; expected '[dataset]', 'source URL ...' or "
                             "'SHA256  PATH'")
    close()
    return {name: tuple(entries) for name, entries in sorted(out.items())}


@lru_cache(maxsize=1)
def _registry() -> dict[str, tuple[DataFile, ...]]:
    text = importlib.resources.files("odernn.data").joinpath("registry.txt").read_text(encoding="utf-8")
    return parse_registry(text)


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
