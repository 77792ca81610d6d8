"""Run the paper's full-length protocols (issues 13 and 17) with our recipes, on whatever device is given.

::

    python -m recipes.reproduce --dry-run                 # print the commands
    python -m recipes.reproduce                           # CPU: two runs side by side, one thread each
    python -m recipes.reproduce --device cuda --jobs 1    # a GPU machine
    make reproduce DEVICE=cuda                            # the same through make

The tasks (``--tasks``; all by default, in this order):

1. ``walker2d`` (Sec. 5.4, Fig. 8): ODE-RNN, ANODE-RNN, HBNODE-RNN, GHBNODE-RNN and SONODE-RNN (which the paper could
   not run), 500 epochs (``--walker-epochs``), the official code's per-model learning-rate schedules
   (``--lr-schedule official``), batch 256, rtol = atol = 1e-7, adjoint, seed 0.
2. ``point_cloud`` (Sec. 5.1, Fig. 4): 100 independent runs per model (``--pc-runs``), split into processes of
   ``--pc-chunk`` runs (``--first-run``), at the paper's settings (Table 1: Adam 0.01, batch 50; tolerance 1e-7;
   the recipe's 40 epochs); a last step aggregates them (``point_cloud/runs.csv``, ``point_cloud_runs.md``, the
   distribution figure). A finished run keeps only its text files and ``result.json``.
3. ``plane_vibration_seed1``: HBNODE-RNN and ODE-RNN with seed 1, otherwise as task 4.
4. ``plane_vibration`` (Sec. 5.3): the five hybrids, 500 epochs, Table 1 batch size (64) and constant learning rate
   (1e-4), rtol = atol = 1e-7, adjoint, seed 0 (``--ncde`` adds the Neural CDE baseline).
5. ``plane_vibration_official``: the five hybrids under the official plane-vibration trainer's schedule (1e-3 for
   50 epochs, then a new Adam at 1e-4).

The sequence runs also measure NFEs under the paper's own solver design every ``--paper-nfe-every`` epochs (columns
``paper_*_nfe``; :func:`odernn.paper_solver`).

**Runs that survive a new machine.** Each run writes its small text files (``metrics.csv``, ``summary.json``,
``config.json`` with the exact command) *and its checkpoint* (``checkpoint.pt``: weights, optimizer and random
states, well under 1 MB for these models) to ``OUT/<task>/<model>/`` (default ``benchmarks/reproduction``), so that
committing that folder is all a later session needs: running this command again on a fresh clone continues every
unfinished run from its last committed epoch, with the rows an uninterrupted run would have written, and skips
finished runs. When a run finishes, its checkpoint is deleted (``--keep-checkpoints`` keeps it). Logs go to
``--log-dir`` (default ``runs/reproduction``, ignored by git). ``--overwrite`` starts every run again. At the end
:mod:`recipes.report` writes ``OUT/<task>/report.md`` and ``report.png``. A run that fails (diverges, the solver
stalls) is recorded as it happened and the others go on.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from ._checkpoint import CHECKPOINT_NAME
from ._cli import RecipeError, folder_path, nonnegative_int, positive_float, positive_int, run_cli
from ._files import read_csv

__all__ = ["HYBRIDS", "TASKS", "Run", "protocol", "finished", "rerun_argv", "main"]

HYBRIDS = ("node", "anode", "sonode", "hbnode", "ghbnode")
#: The order in which the Walker2D runs start: the models of Fig. 8 first, SONODE-RNN (not in the paper) last.
WALKER_ORDER = ("hbnode", "node", "ghbnode", "anode", "sonode")
TASKS = ("walker2d", "point_cloud", "plane_vibration_seed1", "plane_vibration", "plane_vibration_official")
_TOL = "1e-7"


@dataclasses.dataclass(frozen=True)
class Run:
    """One recipe run of the protocol: ``task`` (the output sub-folder), ``model`` and the recipe's arguments.
    ``name`` is the run folder below ``OUT/<task>`` (default ``model``); ``epochs`` the length of a finished run
    (None: the recipe decides when it is finished)."""

    task: str
    model: str
    argv: tuple[str, ...]
    name: Optional[str] = None
    epochs: Optional[int] = None

    @property
    def module(self) -> str:
        return "recipes." + self.task.split("_seed")[0].split("_official")[0]

    @property
    def label(self) -> str:
        return f"{self.task}/{self.name or self.model}"

    def command(self, python: str = sys.executable) -> list[str]:
        return [python, "-m", self.module, *self.argv]


def protocol(args: argparse.Namespace) -> list[Run]:
    """The runs of the protocol for the parsed command line (see the module docstring), in the order they start."""
    out = Path(args.out)
    ckpt = Path(args.checkpoint_dir) if args.checkpoint_dir else None
    again = ["--overwrite"] if args.overwrite else ["--resume"]
    extra_args = shlex.split(args.run_args or "")

    def files(task: str) -> list[str]:
        return ["--out", str(out / task), *(["--checkpoint-dir", str(ckpt / task)] if ckpt else [])]

    def run(task: str, model: str, epochs: int, *extra: str, seed: int = 0, tol: str = _TOL,
            probe: bool = True) -> Run:
        argv = ["--model", model, "--rtol", tol, "--atol", tol, "--adjoint", "--seed", str(seed),
                "--device", args.device, "--threads", str(args.threads), "--epochs", str(epochs), *extra,
                *(["--paper-nfe-every", str(args.paper_nfe_every)] if probe and args.paper_nfe_every else []),
                *files(task), *again, "--no-progress", *extra_args]
        return Run(task, model, tuple(argv), epochs=epochs)

    runs: list[Run] = []
    for task in [t for t in TASKS if t in args.tasks]:
        if task == "walker2d":
            runs += [run(task, m, args.walker_epochs, "--lr-schedule", "official")
                     for m in WALKER_ORDER if m in args.models]
        elif task == "plane_vibration_seed1":
            runs += [run(task, m, args.pv_epochs, seed=1) for m in ("hbnode", "node") if m in args.models]
        elif task == "plane_vibration":
            runs += [run(task, m, args.pv_epochs, probe=False) for m in args.models]  # finished before probes
            if args.ncde:
                runs.append(run(task, "ncde", args.ncde_epochs, tol=f"{args.ncde_tol:g}", probe=False))
        elif task == "plane_vibration_official":
            runs += [run(task, m, args.pv_epochs, "--lr-schedule", "official") for m in args.models]
        elif task == "point_cloud":
            size = min(args.pc_chunk, args.pc_runs)
            for m in args.models:
                for first in range(0, args.pc_runs, size):
                    n = min(size, args.pc_runs - first)
                    argv = ["--model", m, "--runs", str(n), "--first-run", str(first), "--device", args.device,
                            "--threads", str(args.threads), *files(task), *again, "--no-progress", "--no-aggregate",
                            "--drop-checkpoints", *extra_args]
                    runs.append(Run(task, m, tuple(argv), name=f"{m}/runs_{first:03d}-{first + n - 1:03d}"))
    return runs


def _flag(argv: tuple[str, ...], flag: str, default: int) -> int:
    return int(argv[argv.index(flag) + 1]) if flag in argv else default


def finished(run: Run, out: Path) -> bool:
    """Whether ``run`` already finished: its ``summary.json`` exists and its ``metrics.csv`` reaches ``run.epochs``;
    for a chunk of point-cloud runs, every run of the chunk is finished by the recipe's own rule
    (:func:`recipes.point_cloud.run_finished`). Runs without a fixed length and no such rule: never (the recipe
    itself skips what is done)."""
    if run.task == "point_cloud":
        from .point_cloud import EPOCHS, run_finished

        first, n = _flag(run.argv, "--first-run", 0), _flag(run.argv, "--runs", 1)
        epochs = _flag(run.argv, "--epochs", EPOCHS)
        folder = out / run.task / run.model
        try:
            return all(run_finished(folder / f"run_{k:03d}" / "result.json", epochs) for k in range(first, first + n))
        except RecipeError:  # an unreadable result: the recipe reports it when the chunk runs
            return False
    if run.epochs is None:
        return False
    folder = out / run.task / (run.name or run.model)
    if not (folder / "summary.json").is_file() or not (folder / "metrics.csv").is_file():
        return False
    try:
        rows = read_csv(folder / "metrics.csv")
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    epochs = [r.get("epoch") for r in rows if isinstance(r.get("epoch"), int)]
    return bool(epochs) and max(epochs) >= run.epochs


def rerun_argv(config: dict, *, epochs: int, out: str, checkpoint_dir: Optional[str] = None) -> list[str]:
    """The recipe arguments of a recorded run (``config.json``'s ``argv``) for a fresh rerun: the same settings with
    ``epochs``, ``out`` and ``checkpoint_dir`` replaced and without ``--resume`` / ``--overwrite``."""
    argv = list(config["argv"])
    if len(argv) < 3 or argv[1] != "-m":
        raise ValueError(f"config.json argv does not start with 'python -m recipes.<name>': {argv[:3]}")
    rest, out_argv, i = argv[3:], [], 0
    replaced = {"--epochs": str(epochs), "--out": out, "--checkpoint-dir": checkpoint_dir}
    while i < len(rest):
        flag = rest[i]
        if flag in ("--resume", "--overwrite"):
            i += 1
            continue
        if flag in replaced:
            i += 2
            continue
        out_argv.append(flag)
        i += 1
    return out_argv + [x for k, v in replaced.items() if v is not None for x in (k, v)]


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recipes.reproduce", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", help="passed to every run: auto, cpu, cuda or cuda:N")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="which tasks to run")
    p.add_argument("--models", nargs="+", choices=HYBRIDS, default=list(HYBRIDS), help="which models to run")
    p.add_argument("--pv-epochs", type=positive_int, default=500, help="plane-vibration epochs (paper: 500)")
    p.add_argument("--walker-epochs", type=positive_int, default=500, help="Walker2D epochs (paper: 500)")
    p.add_argument("--paper-nfe-every", type=nonnegative_int, default=10,
                   help="measure NFEs under the paper's solver design every N epochs (0: never)")
    p.add_argument("--ncde", action=argparse.BooleanOptionalAction, default=False,
                   help="also run the Neural CDE baseline on plane vibration (about 10 h for 500 epochs at 1e-7 on "
                        "a 2-core CPU)")
    p.add_argument("--ncde-epochs", type=positive_int, default=500, help="Neural CDE epochs")
    p.add_argument("--ncde-tol", type=positive_float, default=1e-7, help="Neural CDE rtol = atol")
    p.add_argument("--pc-runs", type=positive_int, default=100, help="point-cloud runs per model (paper: 100)")
    p.add_argument("--pc-chunk", type=positive_int, default=25, help="point-cloud runs per process")
    p.add_argument("--run-args", default="", metavar="'FLAGS'",
                   help="extra recipe flags appended to every run (they override the protocol's), e.g. "
                        "'--max-batches 2 --rtol 1e-3' for a smoke test of the whole protocol")
    p.add_argument("--jobs", type=positive_int, default=2, help="runs side by side")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads per run")
    p.add_argument("--out", type=folder_path, default="benchmarks/reproduction",
                   help="run folders: small text files and the checkpoints of unfinished runs (commit this)")
    p.add_argument("--checkpoint-dir", type=folder_path, default=None,
                   help="keep checkpoints here instead of in the run folders (they then do not travel with a commit)")
    p.add_argument("--log-dir", type=folder_path, default="runs/reproduction", help="one log per run")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep a finished run's checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start every run again instead of resuming")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                   help="write OUT/<task>/report.md and report.png at the end")
    return p


def _launch(run: Run, args: argparse.Namespace) -> tuple[subprocess.Popen, Path]:
    log = Path(args.log_dir) / run.task / f"{(run.name or run.model).replace('/', '_')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    with open(log, "ab") as f:
        f.write(f"\n$ {shlex.join(run.command('python'))}\n".encode())
        proc = subprocess.Popen(run.command(), stdout=f, stderr=subprocess.STDOUT, env=env)
    return proc, log


#: Largest checkpoint that is committed with a run folder without a warning.
COMMIT_LIMIT = 1 << 20


def _after(run: Run, code: int, args: argparse.Namespace) -> str:
    """What to say (and do) after a run exits: a finished run's checkpoint is deleted; a large one is flagged."""
    if run.epochs is None:
        return ""
    folder = Path(args.out) / run.task / run.model
    ckpt = (Path(args.checkpoint_dir) / run.task / run.model if args.checkpoint_dir else folder) / CHECKPOINT_NAME
    if code == 0 and finished(run, Path(args.out)) and ckpt.is_file() and not args.keep_checkpoints:
        ckpt.unlink()
        return f"; deleted its checkpoint {ckpt}"
    if ckpt.is_file() and ckpt.stat().st_size > COMMIT_LIMIT and not args.checkpoint_dir:
        return f"; WARNING: its checkpoint {ckpt} has {ckpt.stat().st_size:,} bytes (over 1 MB) to commit"
    return ""


def main(argv: Optional[Sequence[str]] = None) -> dict[str, int]:
    """Run the protocol; returns ``{"<task>/<run>": exit status}`` (finished runs are skipped and not listed)."""
    args = make_parser().parse_args(argv)
    runs = protocol(args)
    if args.dry_run:
        for r in runs:
            print(shlex.join(r.command("python")))
        return {}
    out = Path(args.out)
    done = [r for r in runs if not args.overwrite and finished(r, out)]
    for r in done:
        print(f"{r.label}: finished earlier ({r.epochs} epochs), skipped", flush=True)
    pending, running, status = [r for r in runs if r not in done], {}, {}
    print(f"{len(pending)} runs, {args.jobs} at a time; logs in {args.log_dir}/<task>/", flush=True)
    while pending or running:
        while pending and len(running) < args.jobs:
            r = pending.pop(0)
            proc, log = _launch(r, args)
            running[proc] = (r, time.monotonic(), log)
            print(f"started {r.label} (pid {proc.pid})", flush=True)
        time.sleep(0.5)
        for proc in [p for p in running if p.poll() is not None]:
            r, started, log = running.pop(proc)
            status[r.label] = proc.returncode
            what = "finished" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}; see {log})"
            hours = (time.monotonic() - started) / 3600
            print(f"{r.label} {what} after {hours:.2f} h{_after(r, proc.returncode, args)}", flush=True)
    if "point_cloud" in args.tasks and not any(v for k, v in status.items() if k.startswith("point_cloud/")):
        _aggregate_point_cloud(args)
    if args.report:
        from .report import find_tasks, write_report

        for task in sorted({r.task for r in runs} - {"point_cloud"}):
            folder = out / task
            if not folder.is_dir():
                continue
            try:
                found = find_tasks(folder)
            except RecipeError as e:  # no run got through its first epoch
                print(f"no report for {task}: {e}", flush=True)
                continue
            if found == [folder]:
                write_report(folder)
                print(f"wrote {folder / 'report.md'} and {folder / 'report.png'}", flush=True)
    failed = [k for k, v in status.items() if v != 0]
    print(f"done: {len(status) - len(failed)} of {len(status)} runs exited cleanly"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return status


def _aggregate_point_cloud(args: argparse.Namespace) -> None:
    """The last step of the point-cloud task: one call of the recipe over all runs, which trains nothing (every
    run has its result) and writes the tables and figures."""
    models = [m for m in HYBRIDS if m in args.models]
    out = Path(args.out) / "point_cloud"
    for chosen in (["all"] if len(models) == len(HYBRIDS) else models):
        argv = ["--model", chosen, "--runs", str(args.pc_runs), "--first-run", "0", "--device", args.device,
                "--threads", str(args.threads), "--out", str(out), "--resume", "--no-progress",
                *shlex.split(args.run_args or "")]
        run = Run("point_cloud", chosen, tuple(argv), name=f"aggregate_{chosen}")
        proc, log = _launch(run, args)
        code = proc.wait()
        print(f"point_cloud: aggregated {chosen} (exit {code}; log {log})", flush=True)


if __name__ == "__main__":
    run_cli(main, prog="python -m recipes.reproduce")
