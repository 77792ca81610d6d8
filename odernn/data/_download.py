"""Fetching registered files: every source in order, archives once per call, each file verified before it is
renamed onto its final name, and a bounded wait for a network that does not answer.

Timeouts: each file gets ``ODERNN_DOWNLOAD_TIMEOUT`` seconds (default 15) of silence at most, shared between its
sources (a file with two sources waits at most about 7.5 s on each). A host that timed out or could not be
reached is not tried again for the other files of the same call, so a dead network fails a dataset of 400 files
in about one file's timeout.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import BinaryIO

from ._checksum import CHUNK, ChecksumError, sha256_file
from ._registry import DataFile

__all__ = ["DEFAULT_TIMEOUT_S", "TIMEOUT_ENV_VAR", "Fetcher", "download_timeout"]

TIMEOUT_ENV_VAR = "ODERNN_DOWNLOAD_TIMEOUT"
"""Environment variable: seconds a download may wait for data, per file, before it fails."""

DEFAULT_TIMEOUT_S = 15.0


def download_timeout(timeout: float | None = None) -> float:
    """Seconds a file's download may wait: ``timeout`` if given, else ``$ODERNN_DOWNLOAD_TIMEOUT``, else 15.

    Raises:
        ValueError: A value that is not a positive finite number (naming where it came from).
    """
    where = "timeout="
    if timeout is None:
        env = os.environ.get(TIMEOUT_ENV_VAR)
        if not env:
            return DEFAULT_TIMEOUT_S
        where = f"{TIMEOUT_ENV_VAR}={env!r}"
        try:
            timeout = float(env)
        except ValueError:
            raise ValueError(f"{where} is not a number of seconds; set it to e.g. 15") from None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < float(timeout) < float("inf"):
        raise ValueError(f"{where} must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _open_url(url: str, timeout: float) -> BinaryIO:
    """Open ``url`` for reading, waiting at most ``timeout`` seconds for each answer (module-level so tests can
    replace it)."""
    request = urllib.request.Request(url, headers={"User-Agent": "odernn-data"})
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - URLs come from the registry


def _is_timeout(exc: BaseException) -> bool:
    reason = getattr(exc, "reason", None)
    return isinstance(exc, (TimeoutError, socket.timeout)) or isinstance(reason, (TimeoutError, socket.timeout))


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
            shutil.copyfileobj(fh, out, CHUNK)
    elif transform == "gunzip":
        with gzip.open(raw, "rb") as fh:
            shutil.copyfileobj(fh, out, CHUNK)
    elif transform == "strip_trailing_newlines":
        out.write(raw.read_bytes().rstrip(b"\r\n"))
    else:  # pragma: no cover - the registry parser rejects other names
        raise ValueError(f"unknown transform {transform!r}")


class Fetcher:
    """Fetches files into one dataset folder; an archive is downloaded at most once per call.

    Args:
        tmpdir: Folder for downloads in progress (the dataset folder, so that renames stay on one file system).
        timeout: Seconds of silence allowed per file (see :func:`download_timeout`).
    """

    def __init__(self, tmpdir: Path, timeout: float) -> None:
        self.tmpdir = tmpdir
        self.timeout = timeout
        self.archives: dict[str, Path] = {}
        self.failed_urls: dict[str, str] = {}
        self.dead_hosts: dict[str, str] = {}

    def _raw(self, url: str, timeout: float) -> Path:
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
            with os.fdopen(fd, "wb") as fh, _open_url(url, timeout) as response:
                shutil.copyfileobj(response, fh, CHUNK)
        except BaseException as exc:
            path.unlink(missing_ok=True)
            if _is_timeout(exc):
                message = (f"no answer from {host or url} within {timeout:g} s (the network accepts the connection "
                           f"but sends nothing; check a proxy or firewall, or raise {TIMEOUT_ENV_VAR})")
                self.failed_urls[url] = message
                if host:
                    self.dead_hosts[host] = message
                raise TimeoutError(message) from exc
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
        per_source = self.timeout / max(1, len(item.sources))
        for src in item.sources:
            tmp: Path | None = None
            try:
                raw = self._raw(src.url, per_source)
                fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
                tmp = Path(name)
                with os.fdopen(fd, "wb") as out:
                    if src.member is None:
                        _transform(raw, src.transform, out)
                    else:
                        self._extract(raw, src.member, src.transform, out)
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

    def _extract(self, raw: Path, member: str, transform: str | None, out: BinaryIO) -> None:
        with zipfile.ZipFile(raw) as archive:
            info = _zip_member(archive, member)
            member_fd, member_name = tempfile.mkstemp(suffix=".part", dir=self.tmpdir)
            member_tmp = Path(member_name)
            try:
                with archive.open(info) as zf, os.fdopen(member_fd, "wb") as mf:
                    shutil.copyfileobj(zf, mf, CHUNK)
                _transform(member_tmp, transform, out)
            finally:
                member_tmp.unlink(missing_ok=True)

    def close(self) -> None:
        """Remove the archives kept for this call."""
        for path in self.archives.values():
            path.unlink(missing_ok=True)
        self.archives.clear()
