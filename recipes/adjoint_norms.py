r"""Adjoint norms over the observations of Walker2D ODE-RNNs: do gradients vanish over long gaps? (paper Fig. 3)

Each model (the Walker2D hybrids of Table 4, built by :func:`recipes.walker2d.build_model`) is trained briefly
(``--epochs``, ``--max-batches``, Adam, per-time-step MSE, as :mod:`recipes.walker2d`), then
:func:`odernn.diagnostics.adjoint_norms` measures, over the first ``--norm-batches`` test batches, the batch mean of
:math:`\|\partial L / \partial z_i^-\|_2` at every observation ``i`` of the 64-step windows, with ``L`` the MSE of the
*last* step's prediction (the paper's setting) and ``z_i^-`` the whole ODE state arriving at observation ``i``
(``h`` for ODE-RNN, ``[h, m]`` for (G)HBNODE-RNN). The paper's claim (Sec. 4): ODE-RNN's adjoint vanishes quickly as
``T - t`` grows, (G)HBNODE-RNN's does not.

Writes, in ``--out`` (default ``runs/adjoint_norms``):

- ``adjoint_norms.csv``: columns ``model, step, norm`` (``step`` = observation index ``i``, 0 ... 63; ``T - t``
  in the figure is ``63 - i``, observations before the last one);
- ``adjoint_norms.png``: :math:`\log_{10}` norm against ``T - t``, one line per model (like Fig. 3);
- ``summary.json``: per model the decay ``norm[first] / norm[last]``, where it happens (mean log10 change of the
  norm per step across the RNN update and across the backward solve over a gap, see :func:`measure`), the training
  loss and NFEs, the parameter count, and the configuration.

The trained model is measured on a float64 copy (``--norm-dtype``): ODE-RNN's adjoint falls below float32's range
within a window, where float32 backpropagation carries exact zeros.

Usage::

    python -m recipes.adjoint_norms --models node,hbnode,ghbnode --epochs 1 --max-batches 20 --out runs/adj
"""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn
import torch.nn.functional as F

import odernn
from odernn.diagnostics import adjoint_norms

from ._cli import run_cli
from ._distributed import DistContext, make_loader, select_device
from ._files import atomic_write_csv, atomic_write_json
from ._loops import TrainingDiverged, count_parameters, to_device, train_epoch
from ._random import seed_everything
from ._report import pyplot, save_figure
from . import walker2d

__all__ = ["DEFAULT_MODELS", "make_parser", "parse_models", "core_inputs", "measure", "plot", "run", "main"]

#: The models of the paper's Fig. 3.
DEFAULT_MODELS = ("node", "hbnode", "ghbnode")


def make_parser() -> argparse.ArgumentParser:
    """The Walker2D recipe's flags (``--out``, ``--seed``, ``--device``, solver, ``--time-scale``, ...) with defaults
    for a short run, plus ``--models`` and ``--norm-batches``."""
    p = walker2d.make_parser()
    p.prog = "python -m recipes.adjoint_norms"
    p.description = ("Train Walker2D ODE-RNN hybrids briefly and plot the l2 norm of the adjoint state at every "
                     "observation against T - t (HBNODE paper Fig. 3).")
    # a short run: compiling the solver loop (about 20 s per model) would not pay off
    p.set_defaults(epochs=1, max_batches=20, rtol=1e-3, atol=1e-4, out="runs/adjoint_norms", model=None,
                   compile="off")
    p.add_argument("--models", default=None,
                   help=f"comma-separated models to compare (default {','.join(DEFAULT_MODELS)}; 'all' = "
                        f"{','.join(walker2d.PAPER_MODELS)}); --model NAME is the same as --models NAME")
    p.add_argument("--norm-dtype", choices=("float32", "float64"), default="float64",
                   help="dtype of the copy of each trained model on which the norms are measured (float32 "
                        "underflows to 0 below about 1e-38)")
    p.add_argument("--norm-batches", type=int, default=1,
                   help="test batches (of --eval-batch-size windows) over which the norms are averaged")
    return p


def parse_models(args: argparse.Namespace) -> list[str]:
    """The model names asked for by ``--models`` (or ``--model``), validated; ODE-RNN hybrids only."""
    spec = args.models if args.models is not None else args.model
    if spec is None:
        return list(DEFAULT_MODELS)
    names = [s.strip().lower() for s in spec.split(",") if s.strip()]
    if names == ["all"]:
        return list(walker2d.PAPER_MODELS)
    bad = [n for n in names if n not in walker2d.PAPER_MODELS]
    if not names or bad:
        raise ValueError(f"--models must be a comma-separated list of {list(walker2d.PAPER_MODELS)} (ODE-RNN hybrids "
                         f"have an ODE state whose adjoint can be measured) or 'all', got {spec!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"--models lists a model twice: {spec!r}")
    return names


def core_inputs(model: walker2d.StepPredictor, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
    """The ``(x, t, t0)`` that :class:`recipes.walker2d.StepPredictor` hands its ODE-RNN for ``batch``.

    :func:`measure` checks once per batch that the ODE-RNN given these inputs reproduces the predictor's output, so
    a change in the predictor cannot silently make the measured graph differ from the trained one.
    """
    x, t, dt = batch["x"], batch["t"], batch["dt"]
    t_rel = (t - (t[:, :1] - dt[:, :1])) * model.time_scale  # (B, T); the kept step before the window is at 0
    return x, t_rel, t_rel.new_zeros(t_rel.shape[0])


class _AfterCellProbe(nn.Module):
    """Wraps an RNN cell and adds a zero tensor ``p_i`` to its output at call ``i``: ``dL/dp_i = dL/dz_i^+``, the
    adjoint right after the update at observation ``i`` (where the backward solve over the next gap ends)."""

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell
        self.probes: list[Tensor] = []

    def forward(self, inp: Tensor, z: Tensor) -> Tensor:
        out = self.cell(inp, z)
        p = torch.zeros_like(out, requires_grad=True)
        self.probes.append(p)
        return out + p


def measure(model: walker2d.StepPredictor, batches: Sequence[dict], *,
            dtype: torch.dtype = torch.float64) -> dict[str, Any]:
    r"""Adjoint norms of a trained Walker2D ODE-RNN over ``batches``, measured on a copy of its ODE-RNN in ``dtype``.

    float64 (the default) resolves norms far below float32's smallest normal number (about 1e-38): ODE-RNN's adjoint
    can fall below it within a 64-step window, where a float32 backward pass carries exact zeros.

    Returns:
        ``norms``: (T,) the sample-weighted mean over ``batches`` of :func:`odernn.diagnostics.adjoint_norms`
        (default loss: MSE of the last step). ``log10_cell`` and ``log10_gap``: where the change happens, as the
        mean over samples and observations of :math:`\log_{10}` of the norm ratio across one RNN update
        (:math:`\|\partial L/\partial z_i^-\| / \|\partial L/\partial z_i^+\|`) and across one backward solve
        over a gap (:math:`\|\partial L/\partial z_i^+\| / \|\partial L/\partial z_{i+1}^-\|`); positive means the
        adjoint grows going back in time. (With ``--adjoint-clip`` the clip is part of the gap factor.)
    """
    if not isinstance(model.core, odernn.ODERNN):
        raise TypeError(f"adjoint norms need an ODE-RNN, got {type(model.core).__name__}")
    core = copy.deepcopy(model.core).to(dtype)
    probed = copy.deepcopy(core)
    # The cell probes must be part of the autograd graph: the per-gap path calls the cell in it (the fused path runs
    # the whole sequence inside one autograd function)
    probed.solver = probed.solver.replace(fused=False)
    probe = _AfterCellProbe(probed.cell)
    probed.cell = probe
    total: Optional[Tensor] = None
    cell_logs, gap_logs = [], []
    count = 0
    for batch in batches:
        x, t, t0 = core_inputs(model, batch)
        with torch.no_grad():
            was = model.training
            model.eval()
            ref = model(batch)
            model.train(was)
            mine = model.core(x, t, t_start=t0)
        if not torch.allclose(ref, mine, rtol=1e-5, atol=1e-6):
            raise RuntimeError("recipes.walker2d.StepPredictor no longer feeds its ODE-RNN the inputs that "
                               "core_inputs() reproduces; update core_inputs()")
        x, t, t0, y = x.to(dtype), t.to(dtype), t0.to(dtype), batch["x_next"].to(dtype)
        before = adjoint_norms(core, x, t, y, t0=t0, reduction="none")  # (B, T): dL/dz_i^-
        probe.probes.clear()
        out = probed(x, t, t_start=t0)
        grads = torch.autograd.grad(F.mse_loss(out[:, -1], y[:, -1]), probe.probes)
        after = torch.stack([g.reshape(g.shape[0], -1).norm(dim=1) for g in grads], dim=1)  # (B, T): dL/dz_i^+
        ok = (before[:, :-1] > 0) & (after[:, :-1] > 0) & (before[:, 1:] > 0)
        cell_logs.append(torch.log10(before[:, :-1] / after[:, :-1])[ok])
        gap_logs.append(torch.log10(after[:, :-1] / before[:, 1:])[ok])
        total = before.sum(dim=0) if total is None else total + before.sum(dim=0)
        count += x.shape[0]
    if total is None:
        raise ValueError("no test batches to measure")
    cell, gap = torch.cat(cell_logs), torch.cat(gap_logs)
    return {"norms": total / count,
            "log10_cell": float(cell.mean()) if cell.numel() else math.nan,
            "log10_gap": float(gap.mean()) if gap.numel() else math.nan}


def plot(curves: dict[str, Tensor], path: Path, *, title: str) -> Path:
    """Write the Fig. 3-like figure: log10 of each model's norms against ``T - t`` (observations before the last)."""
    plt = pyplot()

    labels = {"node": "ODE-RNN", "anode": "ANODE-RNN", "sonode": "SONODE-RNN", "hbnode": "HBNODE-RNN",
              "ghbnode": "GHBNODE-RNN"}
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for name, norms in curves.items():
        T = norms.shape[0]
        gap = torch.arange(T - 1, -1, -1)
        ax.plot(gap.numpy(), torch.log10(norms.clamp_min(1e-300)).numpy(), label=labels.get(name, name))
    ax.set_xlabel("T - t (observations before the last)")
    ax.set_ylabel(r"$\log_{10} \|\partial L / \partial z_t\|_2$")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def _train_and_measure(name: str, args: argparse.Namespace, data: dict, device: torch.device,
                       ctx: DistContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """Seed, build and briefly train one model, then :func:`measure` it on the first test batches."""
    seed_everything(args.seed)
    model = walker2d.build_model(name, args).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loader = make_loader(data["train"], batch_size=args.batch_size, train=True, seed=args.seed, ctx=ctx,
                                workers=args.workers)
    train: dict[str, Any] = {}
    for epoch in range(1, args.epochs + 1):
        train = train_epoch(model, loader, optimizer, walker2d.step_mse, device=device, ctx=ctx,
                                   max_batches=args.max_batches, desc=f"{name} {epoch}/{args.epochs}",
                                   grad_clip=args.grad_clip or None)
        print(f"[adjoint_norms/{name}] epoch {epoch}/{args.epochs}  train MSE {train['loss']:.5g}  "
              f"NFE fwd {train['forward_nfe']:.1f} bwd {train['backward_nfe']:.1f}  {train['seconds']:.1f}s",
              flush=True)
    test = make_loader(data["test"], batch_size=args.eval_batch_size or args.batch_size, train=False,
                              seed=args.seed, ctx=ctx, workers=args.workers)
    batches = []
    for batch in test:
        batches.append(to_device(batch, device))
        if len(batches) == args.norm_batches:
            break
    measured = measure(model, batches, dtype=getattr(torch, args.norm_dtype))
    info = {"num_params": count_parameters(model), "train_loss": train.get("loss"),
            "forward_nfe": train.get("forward_nfe"), "backward_nfe": train.get("backward_nfe"),
            "norm_windows": sum(int(b["x"].shape[0]) for b in batches)}
    return measured, info


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train each model briefly, measure its adjoint norms, write CSV, figure and summary. Returns the summary."""
    names = parse_models(args)
    if args.norm_batches < 1:
        raise ValueError(f"--norm-batches must be >= 1, got {args.norm_batches}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    device = select_device(args.device)
    ctx = DistContext(device=device)
    data = walker2d.datasets(args)
    rows: list[dict[str, Any]] = []
    curves: dict[str, Tensor] = {}
    results: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for name in names:
        try:
            measured, info = _train_and_measure(name, args, data, device, ctx)
        except (odernn.SolverError, TrainingDiverged) as e:
            # As in the other recipes: a model that blows up is recorded as failed, the others still run.
            print(f"[adjoint_norms/{name}] FAILED: {e}", flush=True)
            results[name] = {"failed": True, "error": str(e)}
        else:
            norms = measured["norms"].detach().cpu().double()
            curves[name] = norms
            rows += [{"model": name, "step": i, "norm": float(v)} for i, v in enumerate(norms)]
            decay = float(norms[0] / norms[-1]) if norms[-1] > 0 else math.nan
            results[name] = {"decay_first_over_last": decay, "norm_first": float(norms[0]),
                             "norm_last": float(norms[-1]), **info,
                             "log10_per_step_cell": measured["log10_cell"],
                             "log10_per_step_gap": measured["log10_gap"]}
            print(f"[adjoint_norms/{name}] norm at first step {float(norms[0]):.3e}, at last {float(norms[-1]):.3e}, "
                  f"first/last {decay:.3e}; mean log10 change per step going back: across the RNN update "
                  f"{measured['log10_cell']:+.3f}, across the ODE gap {measured['log10_gap']:+.3f}", flush=True)
        # Rewrite the files after every model, so a long run leaves usable partial results.
        atomic_write_csv(rows, out / "adjoint_norms.csv", ["model", "step", "norm"])
        if curves:
            plot(curves, out / "adjoint_norms.png",
                 title=f"Walker2D, {args.epochs} epoch(s) x {args.max_batches or 'all'} batches, rtol {args.rtol:g}")
        summary = {"models": results, "config": dict(vars(args), models=names, device=str(device),
                                                     torch=torch.__version__)}
        atomic_write_json(summary, out / "summary.json")
    figure = f", {out / 'adjoint_norms.png'}" if curves else " (no figure: every model failed)"
    print(f"wrote {out / 'adjoint_norms.csv'}{figure} and {out / 'summary.json'}")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        parse_models(args)
    except ValueError as e:
        parser.error(str(e))
    return run(args)


if __name__ == "__main__":
    run_cli(main, prog="python -m recipes.adjoint_norms")
