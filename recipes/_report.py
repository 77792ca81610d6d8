"""Metrics and reporting: the per-epoch ``metrics.csv``, ``summary.json``, figures, and the model comparison.

Figures are drawn with matplotlib's non-interactive Agg backend (:func:`pyplot`) and written atomically
(:func:`save_figure`). :func:`plot_curves` draws one panel per metric against the epoch, one line per model; the
comparison of a ``--model all`` run (:func:`compare_models`) and the reproduction report (:mod:`recipes.report`) both
use it.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ._files import (FileContentError, atomic_write_bytes, atomic_write_csv, atomic_write_json, atomic_write_text,
                     read_csv, read_json_object)

__all__ = ["METRIC_COLUMNS", "MetricsWriter", "write_summary", "pyplot", "save_figure", "plot_curves", "load_runs",
           "compare_models", "fmt", "read_metrics"]

#: Columns every recipe writes to ``metrics.csv`` (recipes may add more after these).
METRIC_COLUMNS = ("epoch", "train_loss", "valid_loss", "test_loss", "forward_nfe", "backward_nfe", "valid_nfe",
                  "test_nfe", "seconds", "eval_seconds")

PathLike = Union[str, os.PathLike]


def read_metrics(path: PathLike, *, columns: Sequence[str] = METRIC_COLUMNS, filled: Sequence[str] = ("epoch",),
                 todo: str = "fix that line or remove the file") -> list[dict[str, Any]]:
    """The rows of a ``metrics.csv``, read exactly or refused (see :func:`recipes._files.read_csv`).

    Args:
        path: the file.
        columns: columns the header must hold (what :class:`MetricsWriter` always writes); their cells must be
            numbers or empty.
        filled: columns that must not be empty in any row.
        todo: what the user should do, appended to error messages.

    Returns:
        The rows, ``epoch`` an int (an integral float such as ``3.0`` is read as 3), epochs strictly increasing.

    Raises:
        FileContentError: naming the file, the line and the column: a missing column (renamed or deleted), an epoch
            that is not a positive integer or not after the previous row's, a text cell in a numeric column, an
            empty cell in a ``filled`` column, or anything :func:`read_csv` refuses.
    """
    rows = read_csv(path, todo=todo)
    if rows:
        missing = [c for c in ("epoch", *columns) if c not in rows[0]]
        if missing:
            raise FileContentError(f"{path}, line 1: the header has no column(s) {sorted(set(missing))} (renamed or "
                                   f"deleted?); it has {list(rows[0])}; {todo}")
    prev = None
    for r in rows:
        line = getattr(r, "line", "?")
        e = r.get("epoch")
        if isinstance(e, float) and math.isfinite(e) and e == int(e):
            e = r["epoch"] = int(e)
        if not (isinstance(e, int) and e >= 1):
            raise FileContentError(f"{path}, line {line}: epoch is {'empty' if e is None else repr(e)}, expected a "
                                   f"positive integer; {todo}")
        if prev is not None and e <= prev:
            raise FileContentError(f"{path}, line {line}: epoch {e} does not follow epoch {prev} of the row before "
                                   f"(rows must be in increasing epoch order, each epoch once); {todo}")
        prev = e
        for c in columns:
            v = r.get(c)
            if v is not None and not isinstance(v, (int, float)):
                raise FileContentError(f"{path}, line {line}: column {c!r} holds {v!r}, expected a number (or an "
                                       f"empty cell); {todo}")
        for c in filled:
            if r.get(c) is None:
                raise FileContentError(f"{path}, line {line}: column {c!r} is empty; {todo}")
    return rows


def _epochs(epochs: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` as ``"1-3, 7"``."""
    out, start = [], None
    for i, e in enumerate(epochs):
        if start is None:
            start = e
        if i + 1 == len(epochs) or epochs[i + 1] != e + 1:
            out.append(str(start) if start == e else f"{start}-{e}")
            start = None
    return ", ".join(out)


class MetricsWriter:
    """Per-epoch rows of ``<folder>/metrics.csv``; the whole file is rewritten atomically on every append.

    Args:
        folder: the model's output folder.
        columns: leading columns, in order (default :data:`METRIC_COLUMNS`); other keys follow in order of first
            appearance.
        resume_epoch: ``None`` starts a fresh file (existing rows are discarded); an int keeps the existing rows with
            ``epoch <= resume_epoch`` (rows written after the checkpoint that a resumed run starts from are dropped,
            and a note on stderr says so, as it does for epochs up to ``resume_epoch`` that have no row).

    Raises:
        FileContentError: (a :class:`recipes._cli.RecipeError`) on resume, for a ``metrics.csv`` that cannot be read
            exactly (see :func:`read_metrics`): nothing is dropped silently.
    """

    def __init__(self, folder: PathLike, *, columns: Sequence[str] = METRIC_COLUMNS,
                 resume_epoch: Optional[int] = None) -> None:
        self.path = Path(folder) / "metrics.csv"
        self.columns = list(columns)
        self.rows: list[dict[str, Any]] = []
        if resume_epoch is None:
            return
        rows = []
        if self.path.exists():
            rows = read_metrics(self.path, columns=self.columns,
                                todo=f"fix that line (or restore the file) and resume again, or start the run again "
                                     f"with --overwrite; the checkpoint is after epoch {resume_epoch}")
        self.rows = [r for r in rows if r["epoch"] <= resume_epoch]
        notes = []
        if len(rows) > len(self.rows):
            notes.append(f"dropping the rows of epoch(s) {_epochs([r['epoch'] for r in rows[len(self.rows):]])}, "
                         f"written after the checkpoint (epoch {resume_epoch}); they are computed again")
        have = {r["epoch"] for r in self.rows}
        lost = [e for e in range(1, resume_epoch + 1) if e not in have]
        if lost:
            notes.append(f"{'the file is missing: ' if not self.path.exists() else ''}epoch(s) {_epochs(lost)}, "
                         f"before the checkpoint (epoch {resume_epoch}), have no row; the history keeps that gap")
        for n in notes:
            print(f"note: {self.path}: {n}", file=sys.stderr, flush=True)

    def append(self, row: Mapping[str, Any]) -> None:
        """Add a row (must hold ``epoch``) and rewrite the file."""
        if "epoch" not in row:
            raise ValueError(f"a metrics row needs an 'epoch', got keys {sorted(row)}")
        self.rows.append(dict(row))
        self.flush()

    def flush(self) -> None:
        cols = list(self.columns)
        for r in self.rows:
            cols += [k for k in r if k not in cols]
        atomic_write_csv(self.rows, self.path, cols)

    @property
    def last(self) -> Optional[dict[str, Any]]:
        return self.rows[-1] if self.rows else None


def write_summary(folder: PathLike, *, model: str, num_params: int, final: Optional[Mapping[str, Any]],
                  config: Mapping[str, Any], extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``<folder>/summary.json``: model, num_params, the final metrics row (flattened) and the configuration."""
    data: dict[str, Any] = {"model": model, "num_params": int(num_params)}
    data.update(dict(final or {}))
    if extra:
        data.update(extra)
    data["config"] = dict(config)
    return atomic_write_json(data, Path(folder) / "summary.json")


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (recipes never open windows)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: PathLike, *, dpi: int = 110) -> Path:
    """Render ``fig`` to PNG and write it atomically to ``path``; closes the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    return atomic_write_bytes(buf.getvalue(), path)


def fmt(v: Any, digits: int = 4) -> str:
    """A table cell: ``-`` for missing/NaN, ``digits`` significant digits for floats, thousands separators for ints."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def plot_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], panels: Sequence[tuple[str, str, bool]],
                path: PathLike, *, title: str = "", columns: int = 3) -> Path:
    """One panel per ``(column, label, log_y)`` of ``panels``: the column against ``epoch``, one line per run.

    Args:
        runs: ``{label: metrics rows}`` (rows as :func:`recipes._files.read_csv` returns them).
        panels: what to draw; a column missing from a run's rows is skipped for that run.
        path: the PNG to write.
        title: figure title.
        columns: panels per row.
    """
    plt = pyplot()
    n_rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(n_rows, columns, figsize=(4.4 * columns, 3.5 * n_rows), constrained_layout=True,
                             squeeze=False)
    for ax, (key, label, logy) in zip(axes.ravel(), panels):
        for name, rows in runs.items():
            pts = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), label=name, marker="." if len(pts) < 30 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if logy and any(ax.get_lines()):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    if any(axes[0, 0].get_lines()):
        axes[0, 0].legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def load_runs(out_dir: PathLike, models: Sequence[str]) -> dict[str, tuple[list[dict], dict]]:
    """``{model: (metrics rows, info)}`` for each ``out_dir/<model>/metrics.csv`` that exists; ``info`` is
    ``summary.json`` (else ``config.json``, else empty)."""
    out_dir = Path(out_dir)
    runs: dict[str, tuple[list[dict], dict]] = {}
    for m in models:
        mpath = out_dir / m / "metrics.csv"
        if not mpath.exists():
            continue
        info: dict = {}
        for name in ("summary.json", "config.json"):
            if (out_dir / m / name).exists():
                info = read_json_object(out_dir / m / name, todo="fix or remove it (it is only read for the report)")
                break
        runs[m] = (read_metrics(mpath, todo="fix that line or remove the file"), info)
    return runs


def compare_models(out_dir: PathLike, models: Sequence[str], *, title: str = "") -> tuple[Path, Path]:
    """Write ``out_dir/comparison.md`` (one row per model) and ``out_dir/comparison.png`` (Fig. 7/8-like panels:
    train loss, valid loss, test loss, forward NFE, backward NFE and seconds per epoch, one line per model).

    Reads ``out_dir/<model>/metrics.csv`` and ``summary.json`` (``config.json`` if there is no summary yet); models
    without metrics are skipped. Returns the two paths.
    """
    out_dir = Path(out_dir)
    runs = load_runs(out_dir, models)
    lines = [f"# {title} comparison".strip() if title else "# Comparison", "",
             "Final epoch values; NFEs are means per training batch (forward, backward) and per test batch; "
             "seconds are training seconds per epoch (mean).", "",
             "| model | params | epochs | train loss | valid loss | test loss | test loss @ best valid | "
             "forward NFE | backward NFE | test NFE | s/epoch |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m, (rows, info) in runs.items():
        if not rows:
            continue
        last = rows[-1]
        valid = [r for r in rows if isinstance(r.get("valid_loss"), float) and not math.isnan(r["valid_loss"])]
        best = min(valid, key=lambda r: r["valid_loss"])["test_loss"] if valid else None
        mean = lambda key: float(np.mean([r[key] for r in rows if r.get(key) is not None]))  # noqa: E731
        lines.append(f"| {m} | {fmt(info.get('num_params'))} | {last['epoch']} | {fmt(last['train_loss'])} | "
                     f"{fmt(last['valid_loss'])} | {fmt(last['test_loss'])} | {fmt(best)} | "
                     f"{fmt(mean('forward_nfe'), 4)} | {fmt(mean('backward_nfe'), 4)} | "
                     f"{fmt(mean('test_nfe'), 4)} | {fmt(mean('seconds'), 3)} |")
    md = atomic_write_text("\n".join(lines) + "\n", out_dir / "comparison.md")
    panels = [("train_loss", "train loss", True), ("valid_loss", "valid loss", True), ("test_loss", "test loss", True),
              ("forward_nfe", "forward NFE / batch", False), ("backward_nfe", "backward NFE / batch", False),
              ("seconds", "seconds / epoch", False)]
    png = plot_curves({m: rows for m, (rows, _) in runs.items()}, panels, out_dir / "comparison.png", title=title)
    return md, png
