"""Checkpoints that load without executing code, and the check that a resume continues the same run.

A checkpoint (format 2) is one file written atomically by :func:`save_checkpoint` and read by :func:`load_checkpoint`
with ``torch.load(weights_only=True)``: it holds only tensors, numbers and strings::

    {"format": 2, "epoch": int, "model": state_dict, "optimizer": state_dict, "generator": ByteTensor | None,
     "rng": {name: Tensor | [Tensor]}, "meta": "<JSON text>"}

``meta`` is JSON: the epoch, the scalar parts of the random state, what the recipe stored (``extra``: the model name,
the settings, the configuration), the torch version and the time of writing. An empty, truncated or foreign file, or
one that could only be read by unpickling arbitrary objects, raises :class:`CheckpointError` with what was found and
what to do, never a traceback from pickle. Checkpoints of format 1 (pickled, before this module) load only with
``trusted=True``.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import torch
from torch import nn

from ._cli import ADDED_SETTINGS, RESUME_SAFE_FLAGS, RecipeError
from ._distributed import unwrap
from ._files import atomic_save, jsonable
from ._random import rng_state, set_rng_state

__all__ = ["CHECKPOINT_NAME", "FORMAT", "CheckpointError", "save_checkpoint", "load_checkpoint", "settings_of",
           "settings_differences", "check_resume_settings", "owner_record", "checkpoint_owner"]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 2
_KEYS = ("format", "epoch", "model", "optimizer", "generator", "rng", "meta")


class CheckpointError(RecipeError, ValueError):
    """A checkpoint that cannot be used: empty, truncated, foreign, unsafe to load, or from different settings."""


def save_checkpoint(path: Union[str, os.PathLike], *, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                    generator: Optional[torch.Generator] = None, extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Atomically save model, optimizer, epoch, every global random state and the DataLoader generator's state.

    Args:
        path: checkpoint file.
        model: the model (a DDP wrapper is unwrapped).
        optimizer: its optimizer.
        epoch: the last *completed* epoch.
        generator: the training DataLoader's generator (its state decides the next shuffles).
        extra: JSON-able facts to store with it (model name, settings, configuration).
    """
    rng = rng_state()
    meta = {"format": FORMAT, "epoch": int(epoch), "rng": rng["numbers"], "extra": jsonable(dict(extra or {})),
            "torch": torch.__version__,
            "saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    ckpt = {"format": FORMAT, "epoch": int(epoch), "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(), "generator": None if generator is None else generator.get_state(),
            "rng": rng["tensors"], "meta": json.dumps(meta)}
    return atomic_save(ckpt, path)


def _fail(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"cannot use the checkpoint {path}: {what}. Delete or move it and start again (with "
                           f"--overwrite), or resume from an intact copy")


def _read(path: Path, trusted: bool) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    size = path.stat().st_size
    if size == 0:
        raise _fail(path, "the file is empty (0 bytes)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as e:  # noqa: BLE001 - every reader failure becomes one clear error
        text = (str(e).strip().splitlines() or [""])[0].split(". ")[0]  # torch's first sentence says what failed
        if "weights only load failed" in str(e).lower() and "global" in str(e).lower():  # a pickled object
            raise _fail(path, "it holds Python objects that can only be loaded by executing code (an odernn "
                              "checkpoint of format 1 or a foreign file); it is not loaded, for safety. A format-1 "
                              "checkpoint you wrote yourself loads with load_checkpoint(..., trusted=True)") from None
        raise _fail(path, f"it is not a readable PyTorch file of {size:,} bytes (truncated or damaged?): "
                          f"{type(e).__name__}: {text}") from None
    if not isinstance(ckpt, dict) or "format" not in ckpt:
        found = f"a dict with keys {sorted(map(str, ckpt))[:10]}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise _fail(path, f"it is not an odernn recipe checkpoint (expected a dict with keys {list(_KEYS)}, found "
                          f"{found})")
    if ckpt["format"] == 1 and trusted:
        return ckpt
    if ckpt["format"] != FORMAT or not all(k in ckpt for k in _KEYS):
        raise _fail(path, f"it is not an odernn recipe checkpoint of format {FORMAT} (format {ckpt.get('format')!r}, "
                          f"keys {sorted(map(str, ckpt))})")
    try:
        ckpt["meta"] = json.loads(ckpt["meta"])
    except (TypeError, ValueError) as e:
        raise _fail(path, f"its metadata is not valid JSON ({e})") from None
    _check_content(path, ckpt)
    return ckpt


#: What a format-2 checkpoint's random state holds: ``rng`` tensors (name: dtype, number of entries or None) and
#: ``meta["rng"]`` numbers (name: accepted JSON types), as :func:`recipes._random.rng_state` writes them.
_RNG_TENSORS = {"python": (torch.int64, 625), "numpy": (torch.int64, 624), "torch": (torch.uint8, None)}
_RNG_NUMBERS = {"python_version": (int,), "python_gauss": (float, int, type(None)), "numpy_name": (str,),
                "numpy_pos": (int,), "numpy_has_gauss": (int,), "numpy_gauss": (float, int)}


_MISSING = object()


def _kind(v: Any) -> str:
    if v is _MISSING:
        return "missing"
    if isinstance(v, torch.Tensor):
        return f"a {v.dtype} tensor of shape {tuple(v.shape)}"
    return f"{v!r} ({type(v).__name__})" if len(repr(v)) < 60 else f"a {type(v).__name__}"


def _check_content(path: Path, ckpt: dict) -> None:
    """Refuse a readable format-2 checkpoint whose fields were removed or edited, naming the field."""
    def bad(field: str, found: Any, expected: str) -> CheckpointError:
        return _fail(path, f"field {field} is {_kind(found)}, expected {expected} (the file was edited or damaged)")

    epoch = ckpt["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise bad("'epoch'", epoch, "a non-negative integer (the last completed epoch)")
    model = ckpt["model"]
    if not isinstance(model, dict) or not model:
        raise bad("'model'", model, "a non-empty state dict (parameter name -> tensor)")
    for k, v in model.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise bad(f"'model'[{k!r}]", v, "a tensor under a parameter name")
    opt = ckpt["optimizer"]
    if not isinstance(opt, dict):
        raise bad("'optimizer'", opt, "an optimizer state dict")
    for key, kind in (("state", dict), ("param_groups", list)):
        if not isinstance(opt.get(key), kind):
            raise bad(f"'optimizer'[{key!r}]", opt.get(key, _MISSING), f"a {kind.__name__}")
    for i, g in enumerate(opt["param_groups"]):
        if not isinstance(g, dict) or not isinstance(g.get("params"), list):
            raise bad(f"'optimizer'['param_groups'][{i}]", g, "a dict with a 'params' list")
    gen = ckpt["generator"]
    if gen is not None and not (isinstance(gen, torch.Tensor) and gen.dtype == torch.uint8 and gen.dim() == 1):
        raise bad("'generator'", gen, "None or a torch.uint8 generator state")
    rng = ckpt["rng"]
    if not isinstance(rng, dict):
        raise bad("'rng'", rng, f"a dict of random states {sorted(_RNG_TENSORS)}")
    for name, (dtype, n) in _RNG_TENSORS.items():
        v = rng.get(name, _MISSING)
        if not (isinstance(v, torch.Tensor) and v.dtype == dtype and v.dim() == 1 and (n is None or v.numel() == n)):
            raise bad(f"'rng'[{name!r}]", v, f"a {dtype} tensor" + (f" of {n} entries" if n else ""))
    cuda = rng.get("cuda", [])
    if not (isinstance(cuda, list) and all(isinstance(c, torch.Tensor) and c.dtype == torch.uint8 for c in cuda)):
        raise bad("'rng'['cuda']", cuda, "a list of torch.uint8 tensors")
    meta = ckpt["meta"]
    if not isinstance(meta, dict):
        raise bad("'meta'", meta, "a JSON object")
    numbers = meta.get("rng", _MISSING)
    if not isinstance(numbers, dict):
        raise bad("'meta' -> 'rng'", numbers, f"a JSON object with {sorted(_RNG_NUMBERS)}")
    for name, kinds in _RNG_NUMBERS.items():
        v = numbers.get(name, _MISSING)
        if not isinstance(v, kinds) or isinstance(v, bool):
            raise bad(f"'meta' -> 'rng' -> {name!r}", v, " or ".join(k.__name__ for k in kinds))
    if "epoch" in meta and meta["epoch"] != epoch:
        raise _fail(path, f"field 'epoch' is {epoch} but 'meta' -> 'epoch' is {meta['epoch']!r}: one of them was "
                          f"edited")
    extra = meta.get("extra", {})
    if not isinstance(extra, dict):
        raise bad("'meta' -> 'extra'", extra, "a JSON object")
    for key, kind in (("settings", dict), ("model", str), ("recipe", str), ("run_folder", str)):
        if key in extra and not isinstance(extra[key], kind):
            raise bad(f"'meta' -> 'extra' -> {key!r}", extra[key], "a JSON " + ("object" if kind is dict else "string"))


def load_checkpoint(path: Union[str, os.PathLike], *, model: nn.Module,
                    optimizer: Optional[torch.optim.Optimizer] = None, generator: Optional[torch.Generator] = None,
                    restore_rng: bool = True, trusted: bool = False) -> dict:
    """Load what :func:`save_checkpoint` wrote into ``model`` / ``optimizer`` / ``generator`` and restore the random
    states, without executing code from the file.

    Args:
        path: the checkpoint.
        model, optimizer, generator: what to load into (``optimizer``/``generator`` optional).
        restore_rng: restore python's, numpy's and torch's global random states.
        trusted: also read format-1 checkpoints, which are pickles: only for files you wrote yourself.

    Returns:
        ``{"epoch": int, "extra": dict, "meta": dict}``.

    Raises:
        FileNotFoundError: if there is no checkpoint. CheckpointError (a ValueError): for an empty, truncated, foreign
        or unsafe file, one whose fields were removed or edited (naming the field), or one whose model does not fit
        ``model``.
    """
    path = Path(path)
    ckpt = _read(path, trusted)
    if ckpt["format"] == 1:  # trusted legacy pickle
        meta = {"epoch": ckpt["epoch"], "extra": ckpt.get("extra", {}), "rng": None}
    else:
        meta = ckpt["meta"]
    try:
        unwrap(model).load_state_dict(ckpt["model"])
        if optimizer is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise _fail(path, f"it holds a different model or optimizer than this run builds ({' '.join(str(e).split())})"
                    ) from None
    if generator is not None and ckpt.get("generator") is not None:
        try:
            generator.set_state(ckpt["generator"])
        except (RuntimeError, TypeError, ValueError) as e:
            raise _fail(path, f"field 'generator' is not a state of this run's data-loader generator ({e})") from None
    if restore_rng:
        if ckpt["format"] == 1:
            import random

            import numpy as np
            random.setstate(ckpt["rng"]["python"])
            np.random.set_state(ckpt["rng"]["numpy"])
            torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        else:
            try:
                set_rng_state({"tensors": ckpt["rng"], "numbers": meta["rng"]})
            except (RuntimeError, TypeError, ValueError, KeyError, OverflowError) as e:
                raise _fail(path, f"fields 'rng' / 'meta' -> 'rng' do not form a random state that can be restored "
                                  f"({type(e).__name__}: {e})") from None
    return {"epoch": int(ckpt["epoch"]), "extra": dict(meta.get("extra") or {}), "meta": meta}


def settings_of(args: Any) -> dict[str, Any]:
    """The settings of a run as JSON values: ``vars(args)`` (an ``argparse.Namespace`` or a mapping)."""
    return jsonable(dict(args) if isinstance(args, Mapping) else dict(vars(args)))


def settings_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                         safe: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
    """``{name: (saved, current)}`` for every setting that differs, except :data:`RESUME_SAFE_FLAGS` and ``safe``.

    A setting present on one side only counts as a difference (its other value shown as ``"<absent>"``), except a
    setting of :data:`recipes._cli.ADDED_SETTINGS` missing from ``saved``, which counts as its old value.
    """
    skip = RESUME_SAFE_FLAGS | set(safe)
    saved = {**{k: v for k, v in ADDED_SETTINGS.items() if k not in saved and k in current}, **saved}
    out = {}
    for key in sorted(set(saved) | set(current)):
        if key in skip:
            continue
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if jsonable(a) != jsonable(b):
            out[key] = (a, b)
    return out


def check_resume_settings(path: Union[str, os.PathLike], saved: Mapping[str, Any], current: Mapping[str, Any],
                          safe: Iterable[str] = ()) -> None:
    """Refuse to resume from ``path`` when the settings differ from those the checkpoint was written with.

    Raises:
        CheckpointError: naming each differing flag with the checkpoint's value and the value given now.
    """
    diff = settings_differences(saved, current, safe)
    if diff:
        flags = ", ".join(f"--{k.replace('_', '-')} (checkpoint: {a!r}, now: {b!r})" for k, (a, b) in diff.items())
        may = ", ".join(f"--{k.replace('_', '-')}" for k in sorted(RESUME_SAFE_FLAGS | set(safe))
                        if k not in ("argv", "model", "resume", "overwrite", "step_kind"))
        raise CheckpointError(f"--resume refused: the settings differ from those of the checkpoint {path}: {flags}. "
                              f"A resumed run must continue the same run; only {may} may change. Rerun with the "
                              f"checkpoint's values, or start a new run with --overwrite or another --out")


def owner_record(folder: Union[str, os.PathLike], checkpoint: Union[str, os.PathLike]) -> str:
    """How a checkpoint names the run folder it belongs to: the folder's path relative to the checkpoint's own folder
    (``"."`` when it lies in the run folder). Relative, so a copy of both (a fresh clone elsewhere) still matches."""
    return Path(os.path.relpath(Path(folder).resolve(), Path(checkpoint).resolve().parent)).as_posix()


def checkpoint_owner(path: Union[str, os.PathLike]) -> Optional[str]:
    """The run folder a checkpoint belongs to (its :func:`owner_record`), or None for a checkpoint written before
    checkpoints recorded it.

    Raises:
        CheckpointError: for a file that is not a readable odernn checkpoint.
    """
    ckpt = _read(Path(path), trusted=False)
    extra = ckpt["meta"].get("extra") if isinstance(ckpt.get("meta"), dict) else None
    owner = extra.get("run_folder") if isinstance(extra, dict) else None
    return owner if isinstance(owner, str) else None
