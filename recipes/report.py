"""Report of finished (or running) sequence runs: a markdown table and Fig. 7/8-style curves, from the run folders.

Usage::

    python -m recipes.report benchmarks/reproduction/plane_vibration          # one task: DIR/<model>/metrics.csv
    python -m recipes.report benchmarks/reproduction                          # every task folder below it

For each task folder (a folder whose sub-folders hold ``metrics.csv``) it writes:

- ``report.md``: per model the parameter count, epochs run, the best-validation epoch and the test loss at that
  epoch, forward and backward NFE per training batch at epochs 1, 10%, 50% and 100% of the run, training seconds per
  epoch (median), total hours (training and evaluation), and the status (``failed: ...`` from ``summary.json``); then
  each run's exact command, torch version, machine and date from its ``config.json``.
- ``report.png``: forward, backward and test NFE per batch (ours, and the paper's solver design where the run measured
  it, ``--paper-nfe-every``), cumulative training time, training and test loss against the epoch, one curve per
  model (the panels of the paper's Figs. 7 and 8).

Only files are read; nothing is trained. A run still in progress is reported up to its last written epoch.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

from ._cli import RecipeError, run_cli
from ._files import FileContentError, atomic_write_text, read_csv, read_json_object
from ._report import fmt, plot_curves, read_metrics

__all__ = ["FRACTIONS", "LABELS", "find_tasks", "load_task", "row_at_fraction", "model_row", "write_report", "main"]

#: Points of the run at which NFEs are reported (1 = the last epoch).
FRACTIONS = (0.1, 0.5, 1.0)
#: Display names of the sequence models, in the paper's order.
LABELS = {"node": "ODE-RNN", "anode": "ANODE-RNN", "sonode": "SONODE-RNN", "hbnode": "HBNODE-RNN",
          "ghbnode": "GHBNODE-RNN", "ncde": "Neural CDE"}
PANELS = (("forward_nfe", "forward NFE / training batch", False),
          ("backward_nfe", "backward NFE / training batch", False),
          ("test_nfe", "forward NFE / test batch", False),
          ("paper_forward_nfe", "paper solver: forward NFE / batch", False),
          ("paper_backward_nfe", "paper solver: backward NFE / batch", False),
          ("paper_test_nfe", "paper solver: forward NFE / test batch", False),
          ("train_hours", "cumulative training time (hours)", False), ("train_loss", "training loss", True),
          ("test_loss", "test loss", True))


def find_tasks(root: Path) -> list[Path]:
    """``root`` itself if a sub-folder of it holds ``metrics.csv``, else every such folder one level below."""
    def listing(p: Path) -> list[Path]:
        try:
            return sorted(p.iterdir())
        except OSError as e:
            raise RecipeError(f"cannot list {p}: {e.strerror or e}; make it readable or give another folder") from None

    def is_task(p: Path) -> bool:
        return any((d / "metrics.csv").is_file() for d in listing(p) if d.is_dir())

    if not root.is_dir():
        raise RecipeError(f"{root} is not a folder; give a task folder (holding <model>/metrics.csv) or its parent")
    if is_task(root):
        return [root]
    tasks = sorted(d for d in listing(root) if d.is_dir() and is_task(d))
    if not tasks:
        raise RecipeError(f"found no run folders (<model>/metrics.csv) in {root} or the folders below it")
    return tasks


def _order(name: str) -> tuple[int, str]:
    keys = list(LABELS)
    return (keys.index(name) if name in keys else len(keys), name)


def load_task(task: Path) -> dict[str, dict[str, Any]]:
    """``{model: {"rows": metrics rows, "summary": dict, "config": dict}}`` for every ``task/<model>/metrics.csv``,
    in the paper's model order (others after, by name). ``train_hours`` (cumulative training time) is added to the
    rows."""
    runs = {}
    for d in sorted((d for d in task.iterdir() if (d / "metrics.csv").is_file()), key=lambda d: _order(d.name)):
        rows = read_metrics(d / "metrics.csv", filled=("epoch", "forward_nfe", "backward_nfe"),
                            todo="fix that line, or move the run folder out of the task folder")
        total = 0.0
        for r in rows:
            total += r.get("seconds") or 0.0
            r["train_hours"] = total / 3600
        info = {}
        for name in ("summary", "config"):
            path = d / f"{name}.json"
            info[name] = read_json_object(path, todo="fix or remove it (only the report reads it)") \
                if path.is_file() else {}
        _check_fields(d / "config.json", info["config"], {"machine": dict, "resumed": list})
        runs[d.name] = {"rows": rows, **info}
    return runs


def _check_fields(path: Path, record: dict, types: dict[str, type]) -> None:
    """``FileContentError`` naming the file and field when a field of ``record`` has another JSON type."""
    for key, kind in types.items():
        if key in record and not isinstance(record[key], kind):
            raise FileContentError(f"{path}: field {key!r} is {record[key]!r}, expected a JSON "
                                   f"{'object' if kind is dict else 'array'}; fix or remove it (only the report "
                                   f"reads it)")


def row_at_fraction(rows: Sequence[dict], fraction: float) -> Optional[dict]:
    """The row of epoch ``ceil(fraction * last epoch)`` (at least 1), or the last row before it if that one is
    missing; None for no rows."""
    if not rows:
        return None
    target = max(1, math.ceil(fraction * rows[-1]["epoch"] - 1e-9))
    before = [r for r in rows if r["epoch"] <= target]
    return before[-1] if before else rows[0]


def model_row(name: str, run: dict) -> dict[str, Any]:
    """The table's values for one run (see the module docstring)."""
    rows, summary, config = run["rows"], run["summary"], run["config"]
    valid = [r for r in rows if isinstance(r.get("valid_loss"), float) and not math.isnan(r["valid_loss"])]
    best = min(valid, key=lambda r: r["valid_loss"]) if valid else None
    out: dict[str, Any] = {"model": name, "label": LABELS.get(name, name),
                           "params": summary.get("num_params", config.get("num_params")),
                           "epochs": rows[-1]["epoch"] if rows else 0,
                           "best_epoch": best["epoch"] if best else None,
                           "test_at_best": best["test_loss"] if best else None}
    for f in (0.0, *FRACTIONS):
        r = row_at_fraction(rows, f)
        out[f"nfe_{f:g}"] = (r["forward_nfe"], r["backward_nfe"], r["epoch"]) if r else None
    probed = [r for r in rows if isinstance(r.get("paper_forward_nfe"), (int, float))]
    first, last = (probed[0], probed[-1]) if probed else (None, None)
    out["paper_first"] = (first["paper_forward_nfe"], first["paper_backward_nfe"], first.get("paper_test_nfe"),
                          first["epoch"]) if first else None
    out["paper_last"] = (last["paper_forward_nfe"], last["paper_backward_nfe"], last.get("paper_test_nfe"),
                         last["epoch"]) if last else None
    out["ours_at_paper_last"] = next(((r["forward_nfe"], r["backward_nfe"], r.get("test_nfe"), r["epoch"])
                                      for r in rows if last and r["epoch"] == last["epoch"]), None)
    secs = sorted(r["seconds"] for r in rows if r.get("seconds") is not None)
    out["s_per_epoch"] = (secs[(len(secs) - 1) // 2] + secs[len(secs) // 2]) / 2 if secs else None  # median
    out["hours"] = sum((r.get("seconds") or 0) + (r.get("eval_seconds") or 0) for r in rows) / 3600
    out["status"] = f"failed: {summary.get('error', '?')}" if summary.get("failed") else (
        "finished" if summary else
        f"partial: {out['epochs']} of {config['epochs']} epochs" if isinstance(config.get("epochs"), int) else
        "running or stopped")
    return out


def _nfe(cell: Optional[tuple]) -> str:
    return "-" if cell is None else f"{cell[0]:.1f} / {cell[1]:.1f} (ep {cell[2]})"


def _nfe3(cell: Optional[tuple]) -> str:
    if cell is None:
        return "-"
    return " / ".join("-" if v is None else f"{v:.0f}" for v in cell[:3]) + f" (ep {cell[3]})"


def write_report(task: Path, *, title: Optional[str] = None) -> tuple[Path, Path]:
    """Write ``task/report.md`` and ``task/report.png``; returns both paths."""
    runs = load_task(task)
    title = title or task.name
    table = [model_row(m, r) for m, r in runs.items()]
    heads = ["model", "params", "epochs", "best-valid epoch", "test loss @ best valid",
             *[f"fwd / bwd NFE @ {'epoch 1' if f == 0 else f'{f:.0%}'}" for f in (0.0, *FRACTIONS)],
             "train s / epoch", "total hours", "status"]
    lines = [f"# {title}: reproduction report", "",
             "Written by `python -m recipes.report` from the run folders' metrics.csv, summary.json and config.json. "
             "NFEs are means per training batch (forward / backward) at the epoch shown; seconds per epoch are "
             "training seconds (median over epochs: the first epoch of a run with --compile includes about 20-40 s "
             "of compiling); total hours include evaluation and compiling.", "",
             "| " + " | ".join(heads) + " |", "| --- " + "| ---: " * (len(heads) - 2) + "| --- |"]
    for t in table:
        cells = [f"{t['label']} (`{t['model']}`)", fmt(t["params"]), fmt(t["epochs"]), fmt(t["best_epoch"]),
                 fmt(t["test_at_best"]), *[_nfe(t[f"nfe_{f:g}"]) for f in (0.0, *FRACTIONS)],
                 fmt(t["s_per_epoch"], 3), fmt(t["hours"], 3), t["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    if any(t["paper_last"] for t in table):
        lines += ["", "NFEs under the paper's own solver design (`odernn.paper_solver`: one torchdiffeq solve per "
                  "gap, torchdiffeq's initial-step heuristic on every gap, RMS norm over the batch, no seminorm, no "
                  "warm start), measured on one fixed training batch (forward / backward) and one fixed test batch "
                  "(forward) every few epochs (`--paper-nfe-every`), next to ours (means over the epoch's training "
                  "batches and test batches) at the same epoch:", "",
                  "| model | paper solver fwd / bwd / test NFE, first probe | paper solver, last probe | "
                  "ours (fused, warm-started), same epoch |", "| --- | ---: | ---: | ---: |"]
        for t in table:
            if t["paper_last"]:
                lines.append(f"| {t['label']} (`{t['model']}`) | {_nfe3(t['paper_first'])} | "
                             f"{_nfe3(t['paper_last'])} | {_nfe3(t['ours_at_paper_last'])} |")
    lines += ["", "![Fig. 7/8-style curves](report.png)", "", "## How each run was made", ""]
    for m, r in runs.items():
        c = r["config"]
        machine = c.get("machine", {})
        lines.append(f"- `{m}`: `{c.get('command', '(no command recorded)')}`; torch {c.get('torch', '?')}, "
                     f"device {c.get('device', '?')}, {machine.get('processor', '?')} ({machine.get('cpus', '?')} "
                     f"CPUs, {machine.get('platform', '?')}), started {c.get('date', '?')}"
                     + (f", resumed {len(c['resumed'])} time(s)" if c.get("resumed") else ""))
    md = atomic_write_text("\n".join(lines) + "\n", task / "report.md")
    png = plot_curves({LABELS.get(m, m): r["rows"] for m, r in runs.items()}, PANELS, task / "report.png",
                      title=title, columns=3)
    return md, png


def main(argv: Optional[Sequence[str]] = None) -> list[Path]:
    p = argparse.ArgumentParser(prog="python -m recipes.report", description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path, help="task folders (DIR/<model>/metrics.csv) or their parents")
    args = p.parse_args(argv)
    written = []
    for folder in args.folders:
        for task in find_tasks(folder):
            written += write_report(task)
            print(f"wrote {task / 'report.md'} and {task / 'report.png'}", flush=True)
    return written


if __name__ == "__main__":
    run_cli(main, prog="python -m recipes.report")
