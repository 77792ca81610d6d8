"""Two-dimensional point-cloud separation (paper Sec. 5.1, Fig. 4, Appendix E.2).

120 points in the plane: 40 drawn uniformly from the disc ``||r|| < 0.5`` (label -1) and 80 from the annulus
``0.85 < ||r|| < 1`` (label +1). Each model moves the points with a continuous-depth layer over t in [0, 1] and a
dense layer with tanh reads the class from the final position; the loss is the mean squared error to the labels
(as in the augmented-NODE experiments the paper follows). NODE cannot separate the two clouds (its flow is a
homeomorphism of the plane); the paper reports that HBNODE and GHBNODE drive the training loss to zero with fewer
NFEs while ANODE and SONODE often get stuck.

Models (Appendix E.2, Table 3 sizes; parameter counts 525 / 567 / 527 / 568 / 569 against the paper's
525 / 567 / 528 / 568 / 568):

* ODE field ``n* -> fc_h -> ELU -> fc_h -> ELU -> fc_n`` (``n* = 2n`` for SONODE, ``n + 1`` for ANODE whose field
  also returns its augmented dimension);
* SONODE, HBNODE, GHBNODE: initial velocity ``2 -> fc_h -> HardTanh(-5, 5) -> fc_h -> HardTanh -> fc_n``;
* output ``n -> fc_1 -> tanh`` on the position (ANODE: on all 3 dimensions).

Each of ``--runs`` independent runs draws its own data and initial weights (seed ``--seed + run``) and trains with
Adam (lr 0.01, batch 50; Table 1) at tolerance 1e-7 for ``--epochs`` epochs. Runs are independent and can be spread
over processes with ``--first-run K --runs M`` (then one final ``--runs N --resume`` call skips the finished runs
and aggregates them all). Files, per model:

* ``DIR/<model>/run_NNN/``: ``metrics.csv``, ``summary.json``, ``checkpoint.pt`` of each run (``--resume``
  continues unfinished runs and skips finished ones);
* ``DIR/<model>/runs.csv``: one row per run: final training loss and accuracy of the trained model on its 120
  points, test accuracy on 120 fresh points, whether it separated the clouds (training accuracy 100%), NFEs;
* ``DIR/<model>/metrics.csv``: per epoch, the mean over runs (``*_std``: standard deviation);
* ``DIR/<model>/summary.json``: model, num_params, forward/backward NFE, final metrics, separation rate, config.

With ``--model all``: ``DIR/comparison.md``/``.png`` (per-epoch means), ``DIR/point_cloud_runs.md`` (the per-run
aggregate table), ``DIR/point_cloud_distributions.png`` (training loss and NFE distributions over runs, Fig. 4) and
``DIR/point_cloud_evolution.png`` (how the first run of each model moves its points).

Usage::

    python -m recipes.point_cloud --runs 100 --epochs 40 --out runs/point_cloud
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

import odernn

from ._checkpoint import load_checkpoint
from ._cli import RecipeError, base_parser, expand_models, run_cli, solver_from_args
from ._distributed import DistContext, init_distributed
from ._driver import RecipeSpec, checkpoint_path, fit_model
from ._files import atomic_write_csv, atomic_write_json, atomic_write_text, read_csv
from ._loops import TrainingDiverged, count_parameters
from ._report import MetricsWriter, compare_models, pyplot, save_figure, write_summary

__all__ = ["MODELS", "SIZES", "PAPER_PARAMS", "CONVERGED_LOSS", "nested_circles", "PointCloudModel", "build_model",
           "train_runs", "aggregate", "wilson_interval", "main"]

MODELS = ("node", "anode", "sonode", "hbnode", "ghbnode")
#: Table 3, point cloud: (n, h); ANODE's n = 3 counts its augmented dimension.
SIZES = {"node": (2, 20), "anode": (3, 20), "sonode": (2, 13), "hbnode": (2, 14), "ghbnode": (2, 14)}
PAPER_PARAMS = {"node": 525, "anode": 567, "sonode": 528, "hbnode": 568, "ghbnode": 568}
#: A run "converged" when its final training loss (MSE to labels of magnitude 1) is below this (the paper: "the
#: training loss consistently goes to zero").
CONVERGED_LOSS = 1e-2


def nested_circles(n_inner: int = 40, n_outer: int = 80, *, seed: int = 0, inner_radius: float = 0.5,
                   outer_radii: tuple[float, float] = (0.85, 1.0)) -> tuple[Tensor, Tensor]:
    """Points drawn uniformly (by area) from a disc and from an annulus around it.

    Args:
        n_inner, n_outer: points in the disc ``||r|| < inner_radius`` and in the annulus ``outer_radii``.
        seed: seed of a private generator (the global random state is untouched).

    Returns:
        ``(x, y)``: positions (n_inner + n_outer, 2) float32 and labels (N,) float32, -1 for the disc and +1 for
        the annulus (disc points first).
    """
    if not (0 < inner_radius < outer_radii[0] < outer_radii[1]):
        raise ValueError(f"need 0 < inner_radius < outer_radii[0] < outer_radii[1], got {inner_radius}, "
                         f"{outer_radii}")
    g = torch.Generator().manual_seed(seed)

    def ring(n: int, r0: float, r1: float) -> Tensor:
        r = torch.sqrt(r0 ** 2 + (r1 ** 2 - r0 ** 2) * torch.rand(n, generator=g, dtype=torch.float64))
        theta = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
        return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)

    x = torch.cat([ring(n_inner, 0.0, inner_radius), ring(n_outer, *outer_radii)]).float()
    y = torch.cat([-torch.ones(n_inner), torch.ones(n_outer)])
    return x, y


def _mlp(i: int, o: int, h: int, act) -> nn.Module:
    return odernn.MLP(i, o, (h, h), activation=act)


class PointCloudModel(nn.Module):
    """Continuous-depth classifier of 2-D points (Appendix E.2).

    Args:
        model: ``"node" | "anode" | "sonode" | "hbnode" | "ghbnode"``.
        n, h: state size and hidden width (Table 3).
        solver: how the ODE layer is solved (default: dopri5 at rtol = atol = 1e-7, adjoint); ``solver_changes``
            (``rtol=``, ...) override its fields.

    Shapes:
        ``forward(x)``: (batch, 2) -> (batch,) in [-1, 1]. ``trajectory(x, t)``: (batch, 2), (T,) ->
        (batch, T, n) positions.
    """

    def __init__(self, model: str, n: int, h: int, *, solver: Optional[odernn.Solver] = None,
                 **solver_changes: Any) -> None:
        super().__init__()
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")
        self.model = model
        htanh = functools.partial(nn.Hardtanh, -5.0, 5.0)
        if model == "node":
            if n != 2:
                raise ValueError(f"NODE moves the 2-D points themselves: n must be 2, got {n}")
            dyn, self.initial = odernn.NODE(_mlp(n, n, h, nn.ELU)), None
        elif model == "anode":
            if n <= 2:
                raise ValueError(f"ANODE's n counts the augmented dimensions and must exceed 2, got {n}")
            dyn, self.initial = odernn.ANODE(_mlp(n, n, h, nn.ELU), n - 2), None
        else:
            if n != 2:
                raise ValueError(f"{model} moves the 2-D points with a velocity: n must be 2, got {n}")
            self.initial = _mlp(2, n, h, htanh)
            f_in = 2 * n if model == "sonode" else n
            cls = {"sonode": odernn.SONODE, "hbnode": odernn.HBNODE, "ghbnode": odernn.GHBNODE}[model]
            dyn = cls(_mlp(f_in, n, h, nn.ELU))
        solver = (solver or odernn.Solver(rtol=1e-7, atol=1e-7)).replace(**solver_changes)
        self.block = odernn.ODEBlock(dyn, t0=0.0, t1=1.0, solver=solver)
        self.readout = nn.Linear(n, 1)

    @property
    def dynamics(self) -> odernn.Dynamics:
        return self.block.dynamics

    def initial_state(self, x: Tensor) -> Tensor:
        """(batch, 2) points -> (batch, state)."""
        if x.dim() != 2 or x.shape[1] != 2:
            raise ValueError(f"expected points of shape (batch, 2), got {tuple(x.shape)}")
        if self.initial is None:
            return self.dynamics.initial_state(x)
        return self.dynamics.initial_state(x, self.initial(x))

    def forward(self, x: Tensor) -> Tensor:
        h1 = self.dynamics.hidden(self.block(self.initial_state(x)))
        return torch.tanh(self.readout(h1)).squeeze(-1)

    @torch.no_grad()
    def trajectory(self, x: Tensor, t: Tensor) -> Tensor:
        """Positions of the points along the flow at times ``t`` (T,) in [0, 1]: (batch, T, n)."""
        z = odernn.odesolve(self.dynamics, self.initial_state(x), t.to(x), solver=self.block.solver, adjoint=False)
        b, T = z.shape[:2]
        return self.dynamics.hidden(z.reshape(b * T, -1)).reshape(b, T, -1)


def build_model(model: str, *, solver: Optional[odernn.Solver] = None, **solver_changes: Any) -> PointCloudModel:
    """The Table 3 point-cloud model ``model`` (``solver``, ``solver_changes``: see :class:`PointCloudModel`)."""
    n, h = SIZES[model]
    return PointCloudModel(model, n, h, solver=solver, **solver_changes)


# ------------------------------------------------------------------------------------------------------------------
# Training with the shared machinery
# ------------------------------------------------------------------------------------------------------------------

def _loss(model: nn.Module, batch) -> dict:
    x, y = batch
    pred = model(x)
    return {"loss": (pred - y).pow(2).mean(), "accuracy": (torch.sign(pred) == y).float().mean()}


def _datasets(seed: int) -> dict[str, Dataset]:
    x, y = nested_circles(seed=seed)
    xt, yt = nested_circles(seed=seed + 1_000_003)
    return {"train": TensorDataset(x, y), "valid": TensorDataset(x[:0], y[:0]), "test": TensorDataset(xt, yt)}


def _run_spec(model: str, run: int) -> RecipeSpec:
    def build(_name: str, args: argparse.Namespace) -> nn.Module:
        return build_model(model, solver=solver_from_args(args))

    def describe(_name: str, args: argparse.Namespace) -> dict:
        n, h = SIZES[model]
        return {"model": model, "run": run, "n": n, "h": h, "paper_num_params": PAPER_PARAMS[model],
                "data": f"nested_circles(seed={args.seed})", "test_data": f"nested_circles(seed={args.seed}+1000003)",
                "loss": "MSE of tanh output to labels -1 (disc) / +1 (annulus)"}

    return RecipeSpec(name=f"point_cloud/{model}", models=(f"run_{run:03d}",), build_model=build,
                      datasets=lambda a: _datasets(a.seed), train_loss=_loss, eval_loss=_loss,
                      describe=describe, resume_safe=("runs", "first_run"))


@torch.no_grad()
def _final_eval(model: PointCloudModel, x: Tensor, y: Tensor) -> tuple[float, float]:
    model.eval()
    pred = model(x)
    return float((pred - y).pow(2).mean()), float((torch.sign(pred) == y).float().mean())


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals))


def _run_row(model: str, run: int, seed: int, folder: Path, net: PointCloudModel, data: dict) -> dict[str, Any]:
    metrics = read_csv(folder / "metrics.csv")
    x, y = (tensor.to(next(net.parameters()).device) for tensor in data["train"].tensors)
    loss, acc = _final_eval(net, x, y)
    last = metrics[-1]
    return {
        "model": model, "run": run, "seed": seed, "failed": 0, "epochs": last["epoch"],
        "separated": int(acc == 1.0), "final_train_loss": loss, "final_train_accuracy": acc,
        "forward_nfe": _mean_std([r["forward_nfe"] for r in metrics])[0],
        "backward_nfe": _mean_std([r["backward_nfe"] for r in metrics])[0],
        "last_epoch_train_loss": last["train_loss"], "test_loss": last["test_loss"],
        "test_accuracy": last.get("test_accuracy"),
        "last_epoch_forward_nfe": last["forward_nfe"], "last_epoch_backward_nfe": last["backward_nfe"],
        "seconds": sum(r["seconds"] for r in metrics), "error": None,
    }


def train_runs(model: str, args: argparse.Namespace, out: Path, ctx: DistContext) -> list[dict[str, Any]]:
    """Train runs ``--first-run`` .. ``--first-run + --runs - 1`` of ``model``; returns their rows.

    Each run ends by writing ``DIR/<model>/run_NNN/result.json`` (its row of ``runs.csv``: final loss and accuracy
    of the trained model on its 120 points, separated or not, mean NFEs). With ``--resume`` a run whose result
    holds ``--epochs`` epochs (or a failure) is not trained again, so that a rerun, on this machine or a fresh clone
    holding only the committed run folders, continues where the runs stopped. ``--drop-checkpoints`` deletes a
    finished run's checkpoint (except run 0's, which the evolution figure draws).
    """
    folder = out / model
    rows = []
    for run in range(args.first_run, args.first_run + args.runs):
        run_args = argparse.Namespace(**{**vars(args), "seed": args.seed + run, "model": model})
        name = f"run_{run:03d}"
        result = folder / name / "result.json"
        ckpt = checkpoint_path(run_args, folder / name)
        if args.resume and run_finished(result, args.epochs):
            rows.append(_read_result(result))
            continue
        if args.resume and not ckpt.exists() and not result.exists() and (folder / name).is_dir():
            # killed before its first checkpoint: nothing to continue, and a run is cheap and seeded: start it again
            run_args.resume, run_args.overwrite = False, True
        spec = _run_spec(model, run)
        data = spec.datasets(run_args)
        try:
            fit_model(spec, name, run_args, data, folder, ctx)
        except (odernn.SolverError, TrainingDiverged) as e:  # a blown-up run is a result, not a crash
            print(f"[point_cloud/{model}] run {run} failed: {e}", flush=True)
            row = {"model": model, "run": run, "seed": run_args.seed, "failed": 1, "epochs": None, "separated": 0,
                   "error": str(e)[:200]}
        else:
            net = build_model(model, solver=solver_from_args(args)).to(ctx.device)
            load_checkpoint(ckpt, model=net, restore_rng=False)
            row = _run_row(model, run, run_args.seed, folder / name, net, data)
        if ctx.is_main:
            atomic_write_json(row, result)
            if getattr(args, "drop_checkpoints", False) and run != 0 and not row["failed"]:
                ckpt.unlink(missing_ok=True)
        rows.append(row)
    return rows


#: The recipe's default ``--epochs`` (the paper gives none for this experiment).
EPOCHS = 40


def run_finished(result: Path, epochs: int) -> bool:
    """Whether the point-cloud run whose ``result.json`` is ``result`` is done: the file holds ``epochs`` epochs or a
    failure (a blown-up run is a result too). The one rule that both this recipe's ``--resume`` and
    ``python -m recipes.reproduce`` apply.

    Raises:
        RecipeError: if the file exists but is not a run result."""
    if not result.is_file():
        return False
    row = _read_result(result)
    return bool(row.get("failed")) or row.get("epochs") == epochs


def _read_result(path: Path) -> dict[str, Any]:
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read {path} ({e}): delete it to train that run again") from None
    if not isinstance(row, dict) or not {"run", "failed"} <= set(row):
        raise RecipeError(f"{path} is not a point-cloud run result (expected a JSON object with 'run' and 'failed'): "
                          f"delete it to train that run again")
    return row


def aggregate(out: Path, models: Sequence[str], *, runs: Optional[int] = None, first_run: int = 0,
              args: Optional[argparse.Namespace] = None, device: Optional[torch.device] = None) -> dict[str, dict]:
    """Collect the finished runs (``run_NNN/result.json``, runs ``first_run`` .. ``first_run + runs - 1``; all
    when ``runs`` is None) of each model in ``out`` and write, per model, ``<model>/runs.csv``,
    ``<model>/metrics.csv`` (per-epoch means over runs) and ``<model>/summary.json``; for all models together
    ``runs.csv`` (one row per model and run), ``point_cloud_runs.md`` (separation and convergence rates with 95%
    Wilson intervals, NFEs), ``point_cloud_distributions.png`` and, where run ``first_run``'s checkpoint exists,
    ``point_cloud_evolution.png``. Only files are read; nothing is trained.

    Returns:
        ``{model: summary}`` for the models with at least one finished run.
    """
    out = Path(out)
    results: dict[str, dict] = {}
    all_rows: list[dict] = []
    for model in models:
        folder = out / model
        paths = sorted(folder.glob("run_*/result.json"))
        rows = [_read_result(p) for p in paths]
        rows = [r for r in rows if r["run"] >= first_run and (runs is None or r["run"] < first_run + runs)]
        if not rows:
            continue
        rows.sort(key=lambda r: r["run"])
        for r in rows:
            r.setdefault("model", model)
        all_rows += rows
        atomic_write_csv(rows, folder / "runs.csv")
        epoch_rows: dict[int, list[dict]] = {}
        for r in rows:
            mpath = folder / f"run_{r['run']:03d}" / "metrics.csv"
            if not r["failed"] and mpath.is_file():
                for e in read_csv(mpath):
                    epoch_rows.setdefault(e["epoch"], []).append(e)
        agg_rows = []
        for epoch in sorted(epoch_rows):
            group = epoch_rows[epoch]
            row = {"epoch": epoch}
            for key in ("train_loss", "valid_loss", "test_loss", "forward_nfe", "backward_nfe", "valid_nfe",
                        "test_nfe", "seconds", "eval_seconds", "train_accuracy", "test_accuracy"):
                m, sd = _mean_std([r.get(key) for r in group])
                row[key] = m
                if key in ("train_loss", "forward_nfe", "backward_nfe", "train_accuracy", "test_accuracy"):
                    row[key + "_std"] = sd
            row["runs"] = len(group)
            agg_rows.append(row)
        if agg_rows:
            writer = MetricsWriter(folder)
            writer.rows = agg_rows
            writer.flush()
        ok = [r for r in rows if not r["failed"]]
        final: dict[str, Any] = {"runs": len(rows), "failed_runs": len(rows) - len(ok),
                                 "separated_runs": sum(r["separated"] for r in ok),
                                 "converged_runs": sum(r["final_train_loss"] < CONVERGED_LOSS for r in ok)}
        final["separation_rate"] = final["separated_runs"] / len(rows)
        final["separation_ci95"] = wilson_interval(final["separated_runs"], len(rows))
        final["converged_rate"] = final["converged_runs"] / len(rows)
        final["converged_ci95"] = wilson_interval(final["converged_runs"], len(rows))
        for key in ("forward_nfe", "backward_nfe", "final_train_loss", "final_train_accuracy", "test_accuracy",
                    "seconds"):
            final[key], final[key + "_std"] = _mean_std([r.get(key) for r in ok])
        final["final_train_loss_median"] = _median([r["final_train_loss"] for r in ok])
        config_path = folder / f"run_{rows[0]['run']:03d}" / "config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        num_params = count_parameters(build_model(model))
        write_summary(folder, model=model, num_params=num_params, final=final,
                      config={**config, "model": model, "recipe": "point_cloud", "n": SIZES[model][0],
                              "h": SIZES[model][1], "paper_num_params": PAPER_PARAMS[model]})
        results[model] = {"model": model, "num_params": num_params, **final, "rows": rows}
    if not results:
        return results
    atomic_write_csv(all_rows, out / "runs.csv")
    write_runs_table(out, results)
    plot_distributions(out, results)
    if args is not None:
        plot_evolution(out, list(results), args, device or torch.device("cpu"))
    return results


def _median(values: list[float]) -> float:
    vals = sorted(v for v in values if v is not None and not math.isnan(v))
    if not vals:
        return float("nan")
    k = len(vals) // 2
    return vals[k] if len(vals) % 2 else 0.5 * (vals[k - 1] + vals[k])


# ------------------------------------------------------------------------------------------------------------------
# Reports and figures
# ------------------------------------------------------------------------------------------------------------------

_LABELS = {"node": "NODE", "anode": "ANODE", "sonode": "SONODE", "hbnode": "HBNODE", "ghbnode": "GHBNODE"}


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a proportion ``k / n``; ``(nan, nan)`` for ``n = 0``."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def write_runs_table(out: Path, results: dict) -> Path:
    """``point_cloud_runs.md``: one row per model (see :func:`aggregate`)."""
    lines = ["# Point-cloud separation over independent runs (paper Sec. 5.1, Fig. 4)", "",
             "Separated = 100% accuracy of the trained model on its 120 training points; converged = final "
             f"training loss below {CONVERGED_LOSS:g}; rates with 95% Wilson intervals. Losses and NFEs: mean ± "
             "standard deviation over runs (median loss in brackets); NFEs are per training batch, averaged over the "
             "epochs of a run. Failed runs (solver blow-ups) count as neither separated nor converged.", "",
             "| model | params (paper) | runs | failed | separated (95% CI) | converged (95% CI) | "
             "final train loss (median) | test acc | forward NFE | backward NFE | s/run |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m, s in results.items():
        sep, conv = s["separation_ci95"], s["converged_ci95"]
        lines.append(
            f"| {_LABELS.get(m, m)} | {s['num_params']} ({PAPER_PARAMS[m]}) | {s['runs']} | {s['failed_runs']} | "
            f"{s['separated_runs']}/{s['runs']} = {s['separation_rate']:.2f} ({sep[0]:.2f}-{sep[1]:.2f}) | "
            f"{s['converged_runs']}/{s['runs']} = {s['converged_rate']:.2f} ({conv[0]:.2f}-{conv[1]:.2f}) | "
            f"{s['final_train_loss']:.3g} ± {s['final_train_loss_std']:.2g} ({s['final_train_loss_median']:.3g}) | "
            f"{s['test_accuracy']:.3f} | {s['forward_nfe']:.1f} ± {s['forward_nfe_std']:.1f} | "
            f"{s['backward_nfe']:.1f} ± {s['backward_nfe_std']:.1f} | {s['seconds']:.1f} |")
    return atomic_write_text("\n".join(lines) + "\n", out / "point_cloud_runs.md")


def plot_distributions(out: Path, results: dict) -> Path:
    """Box plots over runs of the final training loss and of the forward/backward NFE, one box per model."""
    plt = pyplot()
    models = [m for m in results if any(not r.get("failed") for r in results[m]["rows"])]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    panels = [("final_train_loss", "final training loss", True), ("forward_nfe", "forward NFE / batch", False),
              ("backward_nfe", "backward NFE / batch", False)]
    for ax, (key, label, logy) in zip(axes, panels):
        data = [[r[key] for r in results[m]["rows"] if not r.get("failed")] for m in models]
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(models) + 1), [_LABELS[m] for m in models])
        for i, d in enumerate(data, start=1):
            ax.scatter([i + 0.08 * (j % 5 - 2) for j in range(len(d))], d, s=8, alpha=0.5, color="tab:gray")
        ax.set_ylabel(label)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    runs = max(results[m]["runs"] for m in models) if models else 0
    fig.suptitle(f"Point cloud: distributions over {runs} independent runs (paper Fig. 4)")
    fig.tight_layout()
    return save_figure(fig, out / "point_cloud_distributions.png")


def plot_evolution(out: Path, models: list[str], args: argparse.Namespace, device: torch.device,
                   times: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> Optional[Path]:
    """How the trained model of run ``args.first_run`` moves its training points: one row per model, one column
    per time."""
    plt = pyplot()
    run = f"run_{args.first_run:03d}"
    avail = [m for m in models if checkpoint_path(args, out / m / run).exists()]
    if not avail:
        return None
    fig, axes = plt.subplots(len(avail), len(times), figsize=(2.6 * len(times), 2.6 * len(avail)), squeeze=False)
    x, y = nested_circles(seed=args.seed + args.first_run)
    x = x.to(device)
    t = torch.tensor(times, dtype=torch.float32)
    for i, m in enumerate(avail):
        net = build_model(m, solver=solver_from_args(args)).to(device)
        load_checkpoint(checkpoint_path(args, out / m / run), model=net, restore_rng=False)
        net.eval()
        traj = net.trajectory(x, t).cpu()  # (B, T, n)
        w = net.readout.weight.detach().cpu()[0]
        for j, tj in enumerate(times):
            ax = axes[i, j]
            p = traj[:, j]
            # first two coordinates; for ANODE the third (augmented) one is not shown
            ax.scatter(p[:, 0], p[:, 1], c=["tab:blue" if v < 0 else "tab:orange" for v in y.tolist()], s=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"t = {tj:g}")
            if j == 0:
                ax.set_ylabel(_LABELS[m])
            if j == len(times) - 1 and p.shape[1] == 2:  # decision line of the readout w.x + b = 0
                b = float(net.readout.bias.detach().cpu()[0])
                xs = torch.linspace(float(p[:, 0].min()), float(p[:, 0].max()), 2)
                if abs(float(w[1])) > 1e-8:
                    ax.plot(xs, -(w[0] * xs + b) / w[1], "k--", lw=1)
                    ax.set_ylim(float(p[:, 1].min()) - 0.1, float(p[:, 1].max()) + 0.1)
    fig.suptitle(f"Learned evolution of the point cloud ({run}; blue: disc, orange: annulus; dashed: readout "
                 f"boundary)")
    fig.tight_layout()
    return save_figure(fig, out / "point_cloud_evolution.png")


def main(argv: Optional[list[str]] = None) -> dict:
    parser = base_parser(
        "Point-cloud separation (paper Sec. 5.1): NODE, ANODE, SONODE, HBNODE and GHBNODE over independent runs",
        models=MODELS, prog="python -m recipes.point_cloud",
        defaults={"batch_size": 50, "lr": 0.01, "epochs": EPOCHS, "rtol": 1e-7, "atol": 1e-7,
                  "out": "runs/point_cloud"})
    parser.add_argument("--runs", type=int, default=100, help="independent runs per model (paper: 100)")
    parser.add_argument("--first-run", type=int, default=0,
                        help="index of the first run (run k uses seed --seed + k): split the runs over processes "
                             "with disjoint ranges (and --no-aggregate), then aggregate all with --first-run 0 "
                             "--runs N --resume")
    parser.add_argument("--aggregate", action=argparse.BooleanOptionalAction, default=True,
                        help="write the per-model and overall tables and figures after training (turn off in "
                             "processes that train a part of the runs side by side)")
    parser.add_argument("--drop-checkpoints", action="store_true",
                        help="delete a finished run's checkpoint (run 0's is kept for the evolution figure)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.first_run < 0:
        parser.error(f"--runs must be >= 1 and --first-run >= 0, got {args.runs} and {args.first_run}")
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = init_distributed(args.device)
    if ctx.enabled:
        raise SystemExit("the point-cloud recipe trains 120 points per run: run it without torchrun")
    out = Path(args.out)
    models = expand_models(args.model, MODELS)
    for m in models:
        rows = train_runs(m, args, out, ctx)
        ok = [r for r in rows if not r["failed"]]
        print(f"[point_cloud/{m}] runs {args.first_run}-{args.first_run + args.runs - 1}: separated "
              f"{sum(r['separated'] for r in ok)}/{len(rows)}", flush=True)
    if not args.aggregate:
        return {}
    results = aggregate(out, models, runs=args.runs, first_run=args.first_run, args=args, device=ctx.device)
    for m, res in results.items():
        print(f"[point_cloud/{m}] separated {res['separated_runs']}/{res['runs']} runs; final training loss "
              f"{res['final_train_loss']:.4g} (median {res['final_train_loss_median']:.4g}); NFE forward "
              f"{res['forward_nfe']:.1f} backward {res['backward_nfe']:.1f}", flush=True)
    if args.model == "all":
        compare_models(out, models, title="point_cloud (means over runs)")
    print(f"wrote {out}/runs.csv, point_cloud_runs.md, point_cloud_distributions.png, point_cloud_evolution.png"
          + (", comparison.md/png" if args.model == "all" else ""))
    return results


if __name__ == "__main__":
    run_cli(main, prog="python -m recipes.point_cloud")
