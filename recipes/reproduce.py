"""Run the paper's full-length sequence protocol (issue 13) with our recipes, on whatever device is given.

::

    python -m recipes.reproduce --dry-run                 # print the commands
    python -m recipes.reproduce                           # CPU: two runs side by side, one thread each
    python -m recipes.reproduce --device cuda --jobs 1    # a GPU machine
    make reproduce DEVICE=cuda                            # the same through make

The protocol:

1. Plane vibration (Sec. 5.3): ODE-RNN, ANODE-RNN, SONODE-RNN, HBNODE-RNN and GHBNODE-RNN, 500 epochs, rtol = atol =
   1e-7, adjoint, Table 1 batch size (64) and learning rate (1e-4), seed 0; plus the Neural CDE baseline
   (``--ncde-epochs`` epochs at ``--ncde-tol``). ``--second-seed`` adds HBNODE-RNN and ODE-RNN with seed 1 (task
   ``plane_vibration_seed1``).
2. Walker2D (Sec. 5.4): the five hybrids (SONODE-RNN included, which the paper could not run), the same number of
   full epochs for every model (``--walker-epochs``, default 10; batch 256, lr 3e-3), rtol = atol = 1e-7, adjoint.

Each run is ``python -m recipes.<task> --model <m> ... --out OUT/<task> --checkpoint-dir CKPT/<task> --resume``:
the small text files (``metrics.csv``, ``summary.json``, ``config.json`` with the exact command) go to
``OUT/<task>/<model>/`` (default ``benchmarks/reproduction``), checkpoints and logs to ``CKPT/<task>/``
(default ``runs/reproduction``, ignored by git). Because every run passes ``--resume``, running this command again
continues interrupted runs and skips finished ones; ``--overwrite`` starts them all again. At the end
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

from ._cli import RecipeError, folder_path, positive_float, positive_int, run_cli

__all__ = ["HYBRIDS", "Run", "protocol", "rerun_argv", "main"]

HYBRIDS = ("node", "anode", "sonode", "hbnode", "ghbnode")
_TOL = "1e-7"


@dataclasses.dataclass(frozen=True)
class Run:
    """One recipe run of the protocol: ``task`` (the output sub-folder), ``model`` and the recipe's arguments."""

    task: str
    model: str
    argv: tuple[str, ...]

    @property
    def module(self) -> str:
        return "recipes." + self.task.split("_seed")[0]

    def command(self, python: str = sys.executable) -> list[str]:
        return [python, "-m", self.module, *self.argv]


def protocol(args: argparse.Namespace) -> list[Run]:
    """The runs of the protocol for the parsed command line (see the module docstring), in the order they start."""
    out, ckpt = Path(args.out), Path(args.checkpoint_dir)
    again = ["--overwrite"] if args.overwrite else ["--resume"]

    def run(task: str, model: str, *extra: str, seed: int = 0, tol: str = _TOL) -> Run:
        argv = ["--model", model, "--rtol", tol, "--atol", tol, "--adjoint", "--seed", str(seed),
                "--device", args.device, "--threads", str(args.threads), *extra,
                "--out", str(out / task), "--checkpoint-dir", str(ckpt / task), *again, "--no-progress"]
        return Run(task, model, tuple(argv))

    runs: list[Run] = []
    if "plane_vibration" in args.tasks:
        runs += [run("plane_vibration", m, "--epochs", str(args.pv_epochs)) for m in args.models]
        if args.ncde:
            runs.append(run("plane_vibration", "ncde", "--epochs", str(args.ncde_epochs), tol=f"{args.ncde_tol:g}"))
        if args.second_seed:
            runs += [run("plane_vibration_seed1", m, "--epochs", str(args.pv_epochs), seed=1)
                     for m in ("hbnode", "node") if m in args.models]
    if "walker2d" in args.tasks:
        runs += [run("walker2d", m, "--epochs", str(args.walker_epochs)) for m in args.models]
    return runs


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
    p.add_argument("--tasks", nargs="+", choices=("plane_vibration", "walker2d"),
                   default=["plane_vibration", "walker2d"], help="which tasks to run")
    p.add_argument("--models", nargs="+", choices=HYBRIDS, default=list(HYBRIDS), help="which hybrids to run")
    p.add_argument("--pv-epochs", type=positive_int, default=500, help="plane-vibration epochs (paper: 500)")
    p.add_argument("--walker-epochs", type=positive_int, default=10,
                   help="Walker2D epochs, the same for every model (issue 13: as many as fit, at least 10)")
    p.add_argument("--ncde", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the Neural CDE baseline on plane vibration")
    p.add_argument("--ncde-epochs", type=positive_int, default=500, help="Neural CDE epochs")
    p.add_argument("--ncde-tol", type=positive_float, default=1e-7, help="Neural CDE rtol = atol")
    p.add_argument("--second-seed", action="store_true",
                   help="also HBNODE-RNN and ODE-RNN with seed 1 (plane vibration)")
    p.add_argument("--jobs", type=positive_int, default=2, help="runs side by side")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads per run")
    p.add_argument("--out", type=folder_path, default="benchmarks/reproduction", help="small text files")
    p.add_argument("--checkpoint-dir", type=folder_path, default="runs/reproduction", help="checkpoints and logs")
    p.add_argument("--overwrite", action="store_true", help="start every run again instead of resuming")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                   help="write OUT/<task>/report.md and report.png at the end")
    return p


def _launch(run: Run, args: argparse.Namespace) -> tuple[subprocess.Popen, Path]:
    log = Path(args.checkpoint_dir) / run.task / f"{run.model}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    with open(log, "ab") as f:
        f.write(f"\n$ {shlex.join(run.command('python'))}\n".encode())
        proc = subprocess.Popen(run.command(), stdout=f, stderr=subprocess.STDOUT, env=env)
    return proc, log


def main(argv: Optional[Sequence[str]] = None) -> dict[str, int]:
    """Run the protocol; returns ``{"<task>/<model>": exit status}``."""
    args = make_parser().parse_args(argv)
    runs = protocol(args)
    if args.dry_run:
        for r in runs:
            print(shlex.join(r.command("python")))
        return {}
    pending, running, status = list(runs), {}, {}
    print(f"{len(runs)} runs, {args.jobs} at a time; logs in {args.checkpoint_dir}/<task>/<model>.log", flush=True)
    while pending or running:
        while pending and len(running) < args.jobs:
            r = pending.pop(0)
            proc, log = _launch(r, args)
            running[proc] = (r, time.monotonic(), log)
            print(f"started {r.task}/{r.model} (pid {proc.pid})", flush=True)
        time.sleep(0.5)
        for proc in [p for p in running if p.poll() is not None]:
            r, started, log = running.pop(proc)
            status[f"{r.task}/{r.model}"] = proc.returncode
            what = "finished" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}; see {log})"
            print(f"{r.task}/{r.model} {what} after {(time.monotonic() - started) / 3600:.2f} h", flush=True)
    if args.report:
        from .report import find_tasks, write_report

        for task in sorted({r.task for r in runs}):
            folder = Path(args.out) / task
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


if __name__ == "__main__":
    run_cli(main, prog="python -m recipes.reproduce")
