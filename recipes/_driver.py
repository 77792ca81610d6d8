"""The recipe driver: a recipe says *what* to train in a :class:`RecipeSpec`; :func:`run_recipe` does the rest.

::

    parser = base_parser("Walker2D", models=("node", "hbnode"), defaults={"batch_size": 256, "lr": 3e-3})
    run_recipe(spec, parser.parse_args())   # trains each model into DIR/<model>/, compares them for --model all

Files per model, in ``DIR/<model>/`` (``DIR`` = ``--out``), written by rank 0 only and always atomically:

- ``config.json``: the settings, the parameter count, the exact command line (``argv``), the torch version, the
  machine and the date, written before training starts (a resume adds an entry to ``resumed``).
- ``metrics.csv``: one row per epoch (see :data:`recipes._report.METRIC_COLUMNS`), rewritten after every epoch.
- ``checkpoint.pt`` (in ``--checkpoint-dir``/<model>/ when given): model, optimizer, epoch and every random state,
  written after every epoch (:mod:`recipes._checkpoint`); ``--resume`` continues from it and reproduces an
  uninterrupted run with the same seed exactly (same device and thread count; on CUDA as far as its kernels are
  deterministic), and refuses when the settings differ from the checkpoint's.
- ``summary.json``: model, number of parameters, final metrics and the configuration, at the end.

While a run writes, its folder is locked (:class:`recipes._rundir.RunLock`); a folder that already holds a run is
only continued with ``--resume`` or replaced with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

import odernn

from ._checkpoint import (CHECKPOINT_NAME, check_resume_settings, checkpoint_owner, load_checkpoint, owner_record,
                          save_checkpoint, settings_of)
from ._cli import RecipeError, expand_models, parse_lr_schedule, solver_settings
from ._distributed import DistContext, close_distributed, init_distributed, make_loader, set_epoch
from ._files import atomic_write_json
from ._loops import (PAPER_NFE_COLUMNS, LossFn, TrainingDiverged, count_parameters, evaluate, first_batch,
                     paper_solver_nfe, train_epoch)
from ._random import seed_everything
from ._report import MetricsWriter, compare_models, write_summary
from ._rundir import RUN_FILES, RunFolderError, RunLock, plan_run, run_record

__all__ = ["RecipeSpec", "run_recipe", "fit_model", "checkpoint_path", "lr_schedule_of", "OPTIMIZER_AT_BOUNDARY"]

#: What happens to the optimizer where a learning-rate schedule changes the rate (recorded in ``config.json``).
OPTIMIZER_AT_BOUNDARY = "a new Adam (fresh moment estimates), as the official code does"


@dataclasses.dataclass
class RecipeSpec:
    """What a recipe trains; :func:`run_recipe` does the rest.

    Attributes:
        name: recipe name (default output folder ``runs/<name>``).
        models: model names offered (``--model all`` runs them in this order).
        build_model: ``build_model(model_name, args) -> nn.Module`` (built after seeding; moved to the device here).
        datasets: ``datasets(args) -> {"train": ..., "valid": ..., "test": ...}`` (called once per run).
        train_loss: ``train_loss(model, batch) -> Tensor | {"loss": Tensor, ...}``, the batch-mean objective.
        eval_loss: ``eval_loss(model, batch) -> Tensor | {"loss": Tensor, ...}``, the reported metric (batch mean).
        collate_fn: DataLoader collate function (default: torch's).
        describe: ``describe(model_name, args) -> dict`` architecture facts stored in config/summary (sizes, ...).
        all_models: what ``--model all`` trains (default: ``models``); e.g. the paper's models without a baseline
            that is offered separately. The comparison also includes any model of ``models`` that already has
            metrics in the output folder.
        resume_safe: settings of this recipe that a ``--resume`` may change, besides
            :data:`recipes._cli.RESUME_SAFE_FLAGS`.
        official_lr_schedules: ``{model_name: "E:LR,..."}``, the official code's learning-rate schedule of each
            model (what ``--lr-schedule official`` picks).

    The optional flag ``--grad-clip`` (a recipe adds it to its parser) clips the parameter-gradient norm after each
    backward pass (``0`` or absent: no clip).
    """

    name: str
    models: Sequence[str]
    build_model: Callable[[str, argparse.Namespace], nn.Module]
    datasets: Callable[[argparse.Namespace], Mapping[str, Dataset]]
    train_loss: LossFn
    eval_loss: LossFn
    collate_fn: Optional[Callable] = None
    describe: Optional[Callable[[str, argparse.Namespace], Mapping[str, Any]]] = None
    all_models: Optional[Sequence[str]] = None
    resume_safe: Sequence[str] = ()
    official_lr_schedules: Optional[Mapping[str, str]] = None


def _log(ctx: DistContext, msg: str) -> None:
    if ctx.is_main:
        print(msg, flush=True)


def checkpoint_path(args: argparse.Namespace, folder: Path) -> Path:
    """Where the checkpoint of the run in ``folder`` lives: ``folder`` itself, or with ``--checkpoint-dir CKPT`` the
    same place relative to ``CKPT`` as ``folder`` is relative to ``--out`` (``CKPT/<model>/``)."""
    base = getattr(args, "checkpoint_dir", None)
    if not base:
        return folder / CHECKPOINT_NAME
    try:
        rel = Path(folder).relative_to(Path(args.out))
    except (TypeError, ValueError):  # --out not given, or the folder is elsewhere
        rel = Path(Path(folder).name)
    return Path(base) / rel / CHECKPOINT_NAME


def check_checkpoint_owner(folder: Path, ckpt_path: Path) -> None:
    """Refuse to use or replace a checkpoint that belongs to another run folder (two runs given the same
    ``--checkpoint-dir`` and model but different ``--out``).

    Raises:
        RunFolderError: the checkpoint records another run folder, or (kept apart from its run folder) it records
            none while ``folder`` holds no run of its own, so whose it is cannot be told.
    """
    if not ckpt_path.is_file():
        return
    owner = checkpoint_owner(ckpt_path)
    mine = owner_record(folder, ckpt_path)
    if owner == mine:
        return
    if owner is None:
        if ckpt_path.parent.resolve() == folder.resolve() or any((folder / f).exists() for f in RUN_FILES):
            return  # a checkpoint of an earlier odernn, next to (or with) its own run's files
        raise RunFolderError(f"the checkpoint {ckpt_path} does not say which run it belongs to and {folder} holds no "
                             f"run: it may be another run's (a --checkpoint-dir shared by runs with different --out). "
                             f"It is left alone; give this run its own --checkpoint-dir")
    other = (ckpt_path.parent / owner)
    raise RunFolderError(f"the checkpoint {ckpt_path} belongs to the run in {os.path.normpath(other)}, not to "
                         f"{folder}: runs with different --out must not share a --checkpoint-dir. Neither --resume "
                         f"nor --overwrite touches it; give this run its own --checkpoint-dir")


def lr_schedule_of(spec: RecipeSpec, name: str, args: argparse.Namespace) -> tuple[tuple[int, float], ...]:
    """The learning-rate schedule of model ``name``: ``((0, lr), (E, lr), ...)``, the rate ``lr`` applying once
    ``E`` epochs are done. Without ``--lr-schedule``: the constant ``--lr`` (Table 1).

    Raises:
        RecipeError: ``--lr-schedule official`` for a model without an official schedule.
    """
    given = getattr(args, "lr_schedule", None)
    if not given:
        return ((0, float(args.lr)),)
    if given == "official":
        official = dict(spec.official_lr_schedules or {})
        if name not in official:
            raise RecipeError(f"--lr-schedule official: the official code has no schedule for {spec.name} model "
                              f"{name!r} (it has one for {sorted(official) or 'no model'}); give the schedule "
                              f"explicitly, e.g. --lr-schedule 0:{args.lr:g}")
        given = official[name]
    return parse_lr_schedule(given)


def run_recipe(spec: RecipeSpec, args: argparse.Namespace) -> dict[str, dict]:
    """Train every model that ``args.model`` names, write its files, and with ``--model all`` compare them.

    Returns:
        ``{model_name: summary dict}`` (on every rank; only rank 0 writes files).

    Raises:
        RunFolderError: before any data is loaded, when a model's folder holds a run and neither ``--resume`` nor
            ``--overwrite`` was given (and again, under the folder's lock, when another run holds it).
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = init_distributed(args.device)
    try:
        out = Path(args.out or Path("runs") / spec.name)
        every = tuple(spec.all_models or spec.models)
        names = every if args.model == "all" else expand_models(args.model, spec.models)
        for name in names:
            lr_schedule_of(spec, name, args)  # an impossible schedule fails before anything is loaded
        if ctx.is_main:  # fail before loading data rather than after the first models
            for name in names:
                with RunLock(out / name, command=getattr(args, "argv", None)):
                    check_checkpoint_owner(out / name, checkpoint_path(args, out / name))
                    plan_run(out / name, checkpoint_path(args, out / name), resume=args.resume,
                             overwrite=getattr(args, "overwrite", False))
        data = spec.datasets(args)
        missing = {"train", "valid", "test"} - set(data)
        if missing:
            raise ValueError(f"datasets() must return train, valid and test; missing {sorted(missing)}")
        summaries = {}
        for name in names:
            try:
                summaries[name] = fit_model(spec, name, args, data, out, ctx)
            except (odernn.SolverError, TrainingDiverged) as e:
                if ctx.enabled or args.model != "all":
                    raise
                # With --model all, one model blowing up (the paper's SONODE on Walker2D) is a result, not a crash.
                _log(ctx, f"[{spec.name}/{name}] FAILED: {e}")
                summaries[name] = {"model": name, "failed": True, "error": str(e)}
                atomic_write_json({**summaries[name], "config": vars(args)}, out / name / "summary.json")
        if args.model == "all" and ctx.is_main:
            compare_models(out, list(dict.fromkeys([*names, *spec.models])), title=spec.name)
            _log(ctx, f"comparison written to {out / 'comparison.md'} and {out / 'comparison.png'}")
        return summaries
    finally:
        close_distributed(ctx)


def _config(spec: RecipeSpec, name: str, args: argparse.Namespace, ctx: DistContext, num_params: int, folder: Path,
            resumed_after: Optional[int]) -> dict:
    config = {k: v for k, v in vars(args).items()}
    config.update(model=name, recipe=spec.name, world_size=ctx.world_size, device=str(ctx.device),
                  num_params=num_params)
    config["lr_schedule"] = {"given": getattr(args, "lr_schedule", None) or "constant --lr",
                             "after_epochs": [[e, r] for e, r in lr_schedule_of(spec, name, args)],
                             "at_boundary": OPTIMIZER_AT_BOUNDARY}
    if hasattr(args, "method"):
        config["solver"] = solver_settings(args)
    if spec.describe is not None:
        config["architecture"] = dict(spec.describe(name, args))
    record = run_record(getattr(args, "argv", None))
    old_path = folder / "config.json"
    if resumed_after is not None and old_path.exists():
        with contextlib.suppress(ValueError, OSError):
            old = json.loads(old_path.read_text())
            config.update({k: old[k] for k in ("argv", "command", "torch", "machine", "date") if k in old})
            config["resumed"] = [*old.get("resumed", []), {"after_epoch": resumed_after, **record}]
            return config
    config.update(record)
    return config


def fit_model(spec: RecipeSpec, name: str, args: argparse.Namespace, data: Mapping[str, Dataset], out: Path,
              ctx: DistContext) -> dict:
    """Train one model for ``args.epochs`` epochs (resuming if asked), writing its folder ``out/name``.

    Raises:
        RunFolderError: the folder is locked by another run, or holds a run not to be replaced (see
            :func:`recipes._rundir.plan_run`).
        CheckpointError: ``--resume`` from a damaged or foreign checkpoint, or with settings that differ from it.
    """
    folder = out / name
    ckpt_path = checkpoint_path(args, folder)
    command = getattr(args, "argv", None)
    lock = RunLock(folder, command=command) if ctx.is_main else contextlib.nullcontext()
    apart = ctx.is_main and ckpt_path.parent.resolve() != folder.resolve()
    # a checkpoint kept apart is locked too: two runs sharing a --checkpoint-dir cannot write one file at once
    ckpt_lock = RunLock(ckpt_path.parent, command=command) if apart else contextlib.nullcontext()
    with lock, ckpt_lock:
        if ctx.is_main:
            if lock.stale:
                _log(ctx, f"[{spec.name}/{name}] took over the lock left by a process that no longer runs "
                          f"(pid {lock.stale.get('pid')}, started {lock.stale.get('started')})")
            check_checkpoint_owner(folder, ckpt_path)
            plan = plan_run(folder, ckpt_path, resume=args.resume, overwrite=getattr(args, "overwrite", False))
            if plan == "overwrite":
                for path in [folder / f for f in RUN_FILES] + [ckpt_path]:
                    path.unlink(missing_ok=True)
                _log(ctx, f"[{spec.name}/{name}] --overwrite: removed the previous run's files")
        else:  # other ranks only need to know whether to load; rank 0 has refused already if it must
            plan = "resume" if args.resume and ckpt_path.exists() else "fresh"
        return _train(spec, name, args, data, folder, ckpt_path, plan == "resume", ctx)


def _train(spec: RecipeSpec, name: str, args: argparse.Namespace, data: Mapping[str, Dataset], folder: Path,
           ckpt_path: Path, resume: bool, ctx: DistContext) -> dict:
    device = ctx.device
    seed_everything(args.seed)
    model = spec.build_model(name, args).to(device)
    num_params = count_parameters(model)
    _log(ctx, f"[{spec.name}/{name}] {num_params:,} trainable parameters")
    schedule = lr_schedule_of(spec, name, args)
    rates = dict(schedule)
    optimizer = torch.optim.Adam(model.parameters(), lr=schedule[0][1])
    eval_bs = args.eval_batch_size or args.batch_size
    train_loader = make_loader(data["train"], batch_size=args.batch_size, train=True, seed=args.seed, ctx=ctx,
                               collate_fn=spec.collate_fn, workers=args.workers)
    eval_loaders = {s: make_loader(data[s], batch_size=eval_bs, train=False, seed=args.seed, ctx=ctx,
                                   collate_fn=spec.collate_fn, workers=args.workers) for s in ("valid", "test")}
    settings = dict(settings_of(args), model=name)
    start, resumed_after = 1, None
    metrics = None
    if resume:
        ckpt = load_checkpoint(ckpt_path, model=model, optimizer=optimizer, generator=train_loader.generator)
        if ckpt["extra"].get("model") not in (None, name):
            raise RecipeError(f"cannot use the checkpoint {ckpt_path}: it holds model {ckpt['extra'].get('model')!r}, "
                              f"not {name!r}; resume with --model {ckpt['extra'].get('model')}, or start again")
        check_resume_settings(ckpt_path, ckpt["extra"].get("settings", {}), settings, spec.resume_safe)
        start = resumed_after = ckpt["epoch"]
        start += 1
        _log(ctx, f"[{spec.name}/{name}] resuming after epoch {ckpt['epoch']} from {ckpt_path}")
        if ctx.is_main:
            metrics = MetricsWriter(folder, resume_epoch=ckpt["epoch"])
    elif ctx.is_main:
        if args.resume:
            _log(ctx, f"[{spec.name}/{name}] --resume: no checkpoint at {ckpt_path}, starting from scratch")
        metrics = MetricsWriter(folder)
    config = _config(spec, name, args, ctx, num_params, folder, resumed_after)
    if ctx.is_main:
        atomic_write_json(config, folder / "config.json")
    train_model: nn.Module = model
    if ctx.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    max_eval = args.max_eval_batches or args.max_batches
    grad_clip = getattr(args, "grad_clip", None) or None
    shown = getattr(args, "progress", None)
    every = getattr(args, "paper_nfe_every", 0) or 0
    probes = None
    if every and ctx.is_main:  # fixed batches: the first samples of each set, in order (no random state used)
        probes = (first_batch(data["train"], args.batch_size, spec.collate_fn),
                  first_batch(data["test"], eval_bs, spec.collate_fn))
    for epoch in range(start, args.epochs + 1):
        if epoch > 1 and epoch - 1 in rates:  # a boundary of the schedule: a new optimizer (also right after resume)
            optimizer = torch.optim.Adam(model.parameters(), lr=rates[epoch - 1])
            _log(ctx, f"[{spec.name}/{name}] epoch {epoch}: learning rate {rates[epoch - 1]:g} (a new Adam)")
        set_epoch(train_loader, epoch)
        tr = train_epoch(train_model, train_loader, optimizer, spec.train_loss, device=device, ctx=ctx,
                         max_batches=args.max_batches, desc=f"{name} {epoch}/{args.epochs} train",
                         grad_clip=grad_clip, show_progress=shown)
        t0 = time.perf_counter()
        va, te = (evaluate(model, eval_loaders[s], spec.eval_loss, device=device, ctx=ctx, max_batches=max_eval,
                           desc=f"{name} {epoch} {s}", show_progress=shown) for s in ("valid", "test"))
        row = {"epoch": epoch, "train_loss": tr["loss"], "valid_loss": va["loss"], "test_loss": te["loss"],
               "forward_nfe": tr["forward_nfe"], "backward_nfe": tr["backward_nfe"], "valid_nfe": va["nfe"],
               "test_nfe": te["nfe"], "seconds": tr["seconds"], "eval_seconds": time.perf_counter() - t0}
        row.update({k: v for k, v in tr.items() if k.startswith("train_")})
        row.update({f"valid_{k}": v for k, v in va.items() if k not in ("loss", "nfe", "batches", "seconds")})
        row.update({f"test_{k}": v for k, v in te.items() if k not in ("loss", "nfe", "batches", "seconds")})
        if probes is not None:
            row.update(dict.fromkeys(PAPER_NFE_COLUMNS))
            if epoch == 1 or epoch % every == 0:
                row.update(paper_solver_nfe(model, *probes, spec.train_loss, spec.eval_loss, device=device))
                if "paper_error" in row:
                    _log(ctx, f"[{spec.name}/{name}] epoch {epoch}: the paper-solver probe failed: "
                              f"{row.pop('paper_error')}")
                else:
                    _log(ctx, f"[{spec.name}/{name}] epoch {epoch}: paper solver NFE fwd "
                              f"{row['paper_forward_nfe']:.0f} bwd {row['paper_backward_nfe']:.0f} test "
                              f"{row['paper_test_nfe']:.0f} ({row['paper_probe_seconds']:.1f}s)")
        _log(ctx, f"[{spec.name}/{name}] epoch {epoch}/{args.epochs}  train {row['train_loss']:.5g}  "
                  f"valid {row['valid_loss']:.5g}  test {row['test_loss']:.5g}  NFE fwd {row['forward_nfe']:.1f} "
                  f"bwd {row['backward_nfe']:.1f} test {row['test_nfe']:.1f}  {row['seconds']:.1f}s")
        if ctx.is_main:
            metrics.append(row)  # first the row, then the checkpoint: a resume drops rows after the checkpoint
            save_checkpoint(ckpt_path, model=model, optimizer=optimizer, epoch=epoch, generator=train_loader.generator,
                            extra={"model": name, "recipe": spec.name, "settings": settings,
                                   "run_folder": owner_record(folder, ckpt_path)})
        ctx.barrier()
    final = None
    if ctx.is_main:
        final = metrics.last
        write_summary(folder, model=name, num_params=num_params, final=final, config=config)
    return {"model": name, "num_params": num_params, **(final or {})}
