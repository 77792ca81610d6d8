"""A run folder: one writer at a time, no silent replacement of a finished run, and a record of how it was made.

* :class:`RunLock`: ``<folder>/.lock`` holds the writer's pid, host and command, and an exclusive ``flock`` on it
  while the run writes. A second writer is refused with a message naming the first. A lock left behind by a process
  that died (killed, machine crash) holds no ``flock`` any more and is taken over, with a note.
* :func:`plan_run`: what a run may do with what is already in its folder: start, resume from the checkpoint, replace
  the old run (``--overwrite``), or refuse.
* :func:`run_record`: what ``config.json`` records besides the settings: the exact command line (``argv``), the
  torch version, the machine and the date.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shlex
import socket
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ._cli import RecipeError

try:
    import fcntl
except ImportError:  # Windows: fall back to "the recorded pid is alive"
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RUN_FILES", "RunFolderError", "RunLock", "plan_run", "run_record", "machine"]

LOCK_NAME = ".lock"
#: Files a run writes into its folder (a checkpoint may live in a separate folder, see ``--checkpoint-dir``).
RUN_FILES = ("metrics.csv", "summary.json", "config.json")


class RunFolderError(RecipeError):
    """A run folder that this run may not write to (in use by another run, or holding a run not to be replaced)."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder_text(info: dict) -> str:
    cmd = info.get("command")
    return (f"process {info.get('pid', '?')} on {info.get('host', '?')} (since {info.get('started', '?')}"
            + (f", command: {cmd}" if cmd else "") + ")")


class RunLock:
    """An exclusive lock on a run folder while one run writes to it (a context manager).

    Args:
        folder: the run folder (created if missing).
        command: the command line to record in the lock file (shown to a refused second writer).

    Attributes:
        stale: after :meth:`acquire`, the contents of a lock left behind by a dead process that was taken over
            (``None`` if there was none).
    """

    def __init__(self, folder: os.PathLike | str, *, command: Optional[Sequence[str]] = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = shlex.join(command) if command else None
        self.stale: Optional[dict] = None
        self._fd: Optional[int] = None

    def _info(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), "command": self.command}

    @staticmethod
    def _read(fd: int) -> Optional[dict]:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 65536)
        if not data.strip():
            return None
        try:
            info = json.loads(data)
        except ValueError:
            return {"pid": "?", "host": "?", "started": "?", "command": data[:200].decode("utf-8", "replace")}
        return info if isinstance(info, dict) else None

    def _busy(self, info: Optional[dict]) -> RunFolderError:
        return RunFolderError(f"the run folder {self.folder} is in use by {_holder_text(info or {})}: two runs "
                              f"writing to one folder would overwrite each other's files. Wait for it to finish, "
                              f"stop it, or choose another --out")

    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`RunFolderError` naming the process that holds it."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        for _ in range(20):
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise RunFolderError(f"cannot create the lock file {self.path} ({e.strerror or e}): "
                                     f"the run folder must be writable; choose another --out") from None
            try:
                held = self._try_lock(fd)
                if held is not None:
                    raise self._busy(held)
                try:  # a releasing holder may have unlinked the file between our open and our lock: retry then
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                self.stale = self._read(fd)
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, (json.dumps(self._info()) + "\n").encode())
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return self
        raise RunFolderError(f"could not lock {self.path}: it kept being replaced by other processes")

    def _try_lock(self, fd: int) -> Optional[dict]:
        """Lock ``fd``; return the holder's info if another live process holds it, else None."""
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return self._read(fd) or {}
            return None
        info = self._read(fd)  # no flock: trust a recorded pid on this host that is still alive
        if info and info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) \
                and info["pid"] != os.getpid() and _pid_alive(info["pid"]):
            return info
        return None

    def release(self) -> None:
        """Remove the lock file and release the lock (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def plan_run(folder: Path, checkpoint: Path, *, resume: bool, overwrite: bool) -> str:
    """Decide what a run does with what its folder already holds.

    Returns:
        ``"resume"`` (``resume`` and a checkpoint exists), ``"fresh"`` (nothing there, or ``--resume`` into a folder
        that is empty or holds only the ``config.json`` of a run stopped before its first epoch ended) or
        ``"overwrite"`` (``overwrite`` and an old run exists: the caller removes :data:`RUN_FILES` and the
        checkpoint).

    Raises:
        RunFolderError: the folder holds a run and neither ``resume`` nor ``overwrite`` was asked for; or ``resume``
            was asked for and the folder holds a run but no checkpoint; or ``checkpoint`` is not a file.
    """
    if checkpoint.exists() and not checkpoint.is_file():
        raise RunFolderError(f"the checkpoint path {checkpoint} exists but is not a file; move it away")
    existing = [name for name in RUN_FILES if (folder / name).exists()]
    if checkpoint.exists():
        existing.append(str(checkpoint) if checkpoint.parent != folder else checkpoint.name)
    if resume:
        if checkpoint.exists():
            return "resume"
        if existing == ["config.json"]:
            return "fresh"  # stopped before its first epoch ended: nothing was trained, nothing is lost
        if existing:
            raise RunFolderError(f"--resume: {folder} holds a run ({', '.join(existing)}) but no checkpoint at "
                                 f"{checkpoint}, so there is nothing to continue from (a different --checkpoint-dir?). "
                                 f"Use --overwrite to start the run again")
        return "fresh"
    if not existing:
        return "fresh"
    if overwrite:
        return "overwrite"
    raise RunFolderError(f"{folder} already holds a run ({', '.join(existing)}): rerun with --resume to continue "
                         f"it, --overwrite to replace it, or choose another --out")


def machine() -> dict[str, Any]:
    """The machine a run ran on: host, OS, processor, CPU count, Python, and the CUDA device if one is used."""
    info = {"host": socket.gethostname(), "platform": platform.platform(), "processor": platform.processor() or
            platform.machine(), "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def run_record(argv: Optional[Sequence[str]]) -> dict[str, Any]:
    """What ``config.json`` records about how the run was made: ``argv`` (the exact command line as a list),
    ``command`` (the same, shell-quoted), ``torch``, ``machine`` and ``date`` (UTC, ISO 8601)."""
    argv = list(argv) if argv else [sys.executable, *sys.argv]
    return {"argv": argv, "command": shlex.join(argv), "torch": torch.__version__, "machine": machine(),
            "date": _now()}
