"""How large the hidden state grows at initialisation: the Silverbox blow-up test (paper Sec. 3, Fig. 2, App. E.1).

Each of the five models is built with random initial weights (no training) and integrated over t in [0, 64) driven by
the Silverbox input voltage ``V1(t)``; the recipe records ``||h(t)||_2`` and averages it over ``--inits`` (10)
independent initialisations, as in Fig. 2. The paper's claim: ``||h(t)||`` grows much faster for ANODE, SONODE and
HBNODE than for NODE, and GHBNODE keeps it bounded.

Setting (Appendix E.1 and the reference implementation of the figure):

* data: ``odernn.data.silverbox(normalize=Normalization(center=True, scale=100.0))``: both voltages centred and
  multiplied by 100; time is the **sample index** (sample ``i`` at ``t = i``), so t in [0, 64) covers the first
  64 samples. ``V1`` is interpolated between samples with torchcde (linear by default, the reference code's
  choice; the solver is told about the kinks at the samples through torchdiffeq's ``jump_t``; ``--interpolation
  cubic`` uses a natural cubic spline instead);
* the vector field ``f`` is one dense layer on ``[state seen by f, V1(t)]`` (input ``n* + 1``, output ``n``; no
  cubic term);
* initial position ``h(0) = V2(0)`` (the measured output at t = 0); ANODE appends one zero dimension (n = 2);
  SONODE, HBNODE and GHBNODE take their initial velocity from a dense layer (``Linear(1, n, bias=False)`` applied to
  a constant 1: a randomly initialised velocity, as in the reference code);
* HBNODE and GHBNODE: ``gamma = sigmoid(-3)``; GHBNODE: ``sigma = hardtanh(-5, 5)``, ``xi = ln 2``;
* dopri5 with rtol = atol = 1e-7, float64.

Writes ``DIR/<model>/metrics.csv`` (one row per time: mean, median, min and max of ``||h(t)||`` over the
initialisations and the mean of the full state norm; the mean, which Fig. 2 plots, is dominated by the largest
initialisation), ``DIR/<model>/summary.json``, ``DIR/silverbox_init.csv`` (t, log10 of the mean norm
per model, and log10 |V2(t)| for reference), ``DIR/comparison.md`` and ``DIR/silverbox_init.png``.

Usage::

    python -m recipes.silverbox_init --out runs/silverbox_init
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import odernn

from ._cli import expand_models
from ._distributed import select_device
from ._files import atomic_write_csv, atomic_write_text
from ._loops import count_parameters, progress
from ._random import seed_everything
from ._report import pyplot, save_figure, write_summary

__all__ = ["MODELS", "SIZES", "InputDrivenDense", "InitModel", "build_model", "interpolate_v1", "run", "main"]

MODELS = ("node", "anode", "sonode", "hbnode", "ghbnode")
#: Table 3, "Initialization": state size n (ANODE counts its zero dimension); the hidden width h = 22 of Table 3 is
#: not used by the single dense layer of Appendix E.1.
SIZES = {"node": 1, "anode": 2, "sonode": 1, "hbnode": 1, "ghbnode": 1}


def interpolate_v1(v1: Tensor, *, kind: str = "linear"):
    """A torchcde path through ``v1`` (L,) at times 0, 1, ..., L-1.

    Returns:
        ``(path, knots)``: an object with ``evaluate(t) -> (1, 1)`` and the times where its derivative jumps
        (the samples for a linear path, ``None`` for a cubic spline).
    """
    import torchcde

    x = v1.reshape(1, -1, 1)
    t = torch.arange(v1.numel(), dtype=v1.dtype, device=v1.device)
    if kind == "linear":
        return torchcde.LinearInterpolation(torchcde.linear_interpolation_coeffs(x, t=t), t=t), t
    if kind == "cubic":
        return torchcde.CubicSpline(torchcde.natural_cubic_coeffs(x, t=t), t=t), None
    raise ValueError(f"interpolation must be 'linear' or 'cubic', got {kind!r}")


class InputDrivenDense(nn.Module):
    """``f(t, x) = W [x, V1(t)] + b``: one dense layer on the state it sees and the interpolated input (App. E.1).

    Args:
        in_features: size ``n*`` of the state that ``f`` sees.
        out_features: size ``n`` of its output.
        path: an object with ``evaluate(t) -> (1, 1)`` (a torchcde interpolation of ``V1``).

    Shapes:
        ``forward(t, x)``: t scalar, x (batch, in_features) -> (batch, out_features).
    """

    def __init__(self, in_features: int, out_features: int, path) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features + 1, out_features)
        self.path = path

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        v1 = self.path.evaluate(t).to(x.dtype).reshape(1, 1).expand(x.shape[0], 1)
        return self.fc(torch.cat([x, v1], dim=1))


class InitModel(nn.Module):
    """One model of the initialisation test: ``forward(h0, t) -> states`` (batch, T, state).

    Args:
        dynamics: the odernn dynamics (built by :func:`build_model`).
        n: size of the position ``h``.
        velocity: ``Linear(1, n, bias=False)`` giving the initial velocity, or ``None`` for first-order models.
    """

    def __init__(self, dynamics: odernn.Dynamics, n: int, velocity: Optional[nn.Linear]) -> None:
        super().__init__()
        self.dynamics = dynamics
        self.n = n
        self.velocity = velocity

    def initial_state(self, h0: Tensor) -> Tensor:
        """(batch, 1) measured output -> (batch, state)."""
        if isinstance(self.dynamics, odernn.ANODE):
            return self.dynamics.initial_state(h0)
        if self.velocity is None:
            return h0
        v0 = self.velocity(torch.ones_like(h0))
        return self.dynamics.initial_state(h0, v0)

    def forward(self, h0: Tensor, t: Tensor, *, rtol: float = 1e-7, atol: float = 1e-7,
                options: Optional[dict] = None) -> Tensor:
        return odernn.odesolve(self.dynamics, self.initial_state(h0), t, method="dopri5", rtol=rtol, atol=atol,
                               adjoint=False, max_steps=100_000, options=options)


def build_model(name: str, path) -> InitModel:
    """The ``name`` model of the initialisation test with fresh random weights, driven by ``path``."""
    n = SIZES[name]
    if name == "node":
        return InitModel(odernn.NODE(InputDrivenDense(n, n, path), time_dependent=True), n, None)
    if name == "anode":
        return InitModel(odernn.ANODE(InputDrivenDense(n, n, path), n - 1, time_dependent=True), n, None)
    velocity = nn.Linear(1, n, bias=False)
    if name == "sonode":
        dyn = odernn.SONODE(InputDrivenDense(2 * n, n, path), time_dependent=True)
    elif name == "hbnode":
        dyn = odernn.HBNODE(InputDrivenDense(n, n, path), omega=-3.0, time_dependent=True)
    elif name == "ghbnode":
        dyn = odernn.GHBNODE(InputDrivenDense(n, n, path), omega=-3.0, chi=0.0,
                             sigma=lambda m: F.hardtanh(m, -5.0, 5.0), time_dependent=True)
    else:
        raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
    return InitModel(dyn, n, velocity)


def run(out_dir: Optional[str | Path], *, models: tuple[str, ...] = MODELS, inits: int = 10, seed: int = 0,
        t1: float = 64.0, points_per_unit: int = 4, interpolation: str = "linear", rtol: float = 1e-7,
        atol: float = 1e-7, device: torch.device | str = "cpu", root: Optional[str] = None,
        plot: bool = True) -> dict:
    """Integrate every model from ``inits`` random initialisations and measure ``||h(t)||``.

    Returns:
        ``{"t": (T,), "mean": {model: (T,)}, "per_init": {model: (inits, T)}, "summary": {model: {...}},
        "exact": (T,) |V2(t)| at the samples (NaN between samples)}``.
    """
    from odernn.data import Normalization, silverbox

    if inits < 1:
        raise ValueError(f"inits must be >= 1, got {inits}")
    if not 0 < t1 <= 100_000:
        raise ValueError(f"t1 must be in (0, 100000], got {t1}")
    device = torch.device(device)
    ds = silverbox(root, normalize=Normalization(center=True, scale=100.0), time_unit="sample")
    n_samples = int(math.ceil(t1)) + 1
    v1 = torch.as_tensor(ds.v1[:n_samples], dtype=torch.float64, device=device)
    v2 = torch.as_tensor(ds.v2[:n_samples], dtype=torch.float64)
    path, knots = interpolate_v1(v1, kind=interpolation)
    steps = int(round(t1 * points_per_unit))
    t = torch.arange(steps, dtype=torch.float64, device=device) / points_per_unit  # [0, t1)
    options = {"jump_t": knots[(knots > 0) & (knots < t[-1])]} if knots is not None else None
    h0 = torch.tensor([[float(v2[0])]], dtype=torch.float64, device=device)
    t_cpu = t.cpu()
    exact = torch.full_like(t_cpu, float("nan"))
    on_sample = (t_cpu == t_cpu.round())
    exact[on_sample] = v2[t_cpu[on_sample].long()].abs()

    results: dict = {"t": t_cpu, "mean": {}, "per_init": {}, "summary": {}, "exact": exact}
    for k, name in enumerate(models):
        h_norms, z_norms, nfes, secs, failures = [], [], [], [], 0
        for r in progress(range(inits), desc=f"{name} inits", total=inits):
            seed_everything(seed * 1_000_003 + 1000 * k + r)  # disjoint streams per seed, model, init
            model = build_model(name, path).to(device=device, dtype=torch.float64)
            start = time.perf_counter()
            try:
                with torch.no_grad(), odernn.nfe_counter(model) as nfe:
                    z = model(h0, t, rtol=rtol, atol=atol, options=options)[0]  # (T, state)
            except odernn.SolverError:
                failures += 1  # a blow-up before t1: the norm is infinite from the failure on
                h_norms.append(torch.full((t.numel(),), float("inf"), dtype=torch.float64))
                z_norms.append(torch.full((t.numel(),), float("inf"), dtype=torch.float64))
                nfes.append(float("nan"))
                secs.append(time.perf_counter() - start)
                continue
            secs.append(time.perf_counter() - start)
            nfes.append(nfe.forward)
            h_norms.append(model.dynamics.hidden(z).norm(dim=1).cpu())
            z_norms.append(z.norm(dim=1).cpu())
        h = torch.stack(h_norms)  # (inits, T)
        zn = torch.stack(z_norms)
        mean = h.mean(0)
        results["mean"][name] = mean
        results["per_init"][name] = h
        num_params = count_parameters(model)
        half = t_cpu.numel() // 2
        results["summary"][name] = {
            "model": name, "num_params": num_params, "forward_nfe": _nanmean(nfes), "backward_nfe": 0,
            "final_h_norm_mean": float(mean[-1]), "final_log10_h_norm_mean": _log10(float(mean[-1])),
            "max_h_norm_mean": float(mean.max()), "h_norm_mean_at_half": float(mean[half]),
            "final_h_norm_median": float(h[:, -1].median()),
            "final_h_norm_min": float(h[:, -1].min()), "final_h_norm_max": float(h[:, -1].max()),
            "final_state_norm_mean": float(zn.mean(0)[-1]), "solver_failures": failures,
            "seconds_per_init": sum(secs) / len(secs),
        }
        if out_dir is not None:
            folder = Path(out_dir) / name
            rows = [{"t": float(t_cpu[i]), "h_norm_mean": float(mean[i]), "log10_h_norm_mean": _log10(float(mean[i])),
                     "h_norm_median": float(h[:, i].median()),
                     "h_norm_min": float(h[:, i].min()), "h_norm_max": float(h[:, i].max()),
                     "state_norm_mean": float(zn[:, i].mean())} for i in range(t_cpu.numel())]
            atomic_write_csv(rows, folder / "metrics.csv")
            s = results["summary"][name]
            config = {"recipe": "silverbox_init", "model": name, "inits": inits, "seed": seed, "t1": t1,
                      "points_per_unit": points_per_unit, "interpolation": interpolation, "rtol": rtol,
                      "atol": atol, "device": str(device), "state_size_n": SIZES[name], "time_unit": "sample",
                      "data": "silverbox(normalize=Normalization(center=True, scale=100.0))", "h0": "V2(0)"}
            write_summary(folder, model=name, num_params=num_params,
                                  final={k2: v for k2, v in s.items() if k2 not in ("model", "num_params")},
                                  config=config)
    if out_dir is not None:
        out = Path(out_dir)
        rows = []
        for i in range(t_cpu.numel()):
            row = {"t": float(t_cpu[i])}
            row.update({f"log10_h_{m}": _log10(float(results["mean"][m][i])) for m in models})
            row["log10_abs_v2"] = _log10(float(exact[i]))
            rows.append(row)
        atomic_write_csv(rows, out / "silverbox_init.csv")
        _write_table(out / "comparison.md", results["summary"], inits)
        if plot:
            _plot(results, out / "silverbox_init.png", inits)
    return results


def _nanmean(xs: list[float]) -> float:
    vals = [x for x in xs if not math.isnan(x)]
    return sum(vals) / len(vals) if vals else float("nan")


def _log10(x: float) -> float:
    if math.isnan(x):
        return float("nan")
    if x <= 0:
        return float("-inf")
    return math.log10(x)


def _write_table(path: Path, summary: dict, inits: int) -> None:
    lines = ["# Silverbox initialisation test (paper Fig. 2)", "",
             f"||h(t)||_2 averaged over {inits} random initialisations; no training.", "",
             "| model | params | NFE per solve | mean ||h|| at t = 32 | mean ||h|| at the end | log10 | "
             "median / min / max over inits at the end | solver failures |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m, s in summary.items():
        lines.append(f"| {m} | {s['num_params']} | {s['forward_nfe']:.0f} | {s['h_norm_mean_at_half']:.3g} | "
                     f"{s['final_h_norm_mean']:.3g} | {s['final_log10_h_norm_mean']:.2f} | "
                     f"{s['final_h_norm_median']:.3g} / {s['final_h_norm_min']:.3g} / {s['final_h_norm_max']:.3g} | "
                     f"{s['solver_failures']} |")
    atomic_write_text("\n".join(lines) + "\n", path)


_COLORS = {"node": "tab:blue", "anode": "tab:olive", "sonode": "tab:green", "hbnode": "tab:red",
           "ghbnode": "tab:purple"}
_LABELS = {"node": "NODE", "anode": "ANODE", "sonode": "SONODE", "hbnode": "HBNODE", "ghbnode": "GHBNODE"}


def _plot(results: dict, path: Path, inits: int) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    t = results["t"].numpy()
    for m, mean in results["mean"].items():
        ax.plot(t, torch.log10(mean).numpy(), lw=2.2, color=_COLORS[m], label=_LABELS[m])
    ex = results["exact"]
    ok = ~torch.isnan(ex)
    ax.plot(t[ok.numpy()], torch.log10(ex[ok]).numpy(), color="k", lw=1.2, label="|V2(t)| (data)")
    ax.set_xlabel("t (samples)")
    ax.set_ylabel(r"$\log_{10}\ \|h(t)\|_2$")
    ax.set_title(f"Silverbox at initialisation: mean over {inits} initialisations (paper Fig. 2)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m recipes.silverbox_init", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", choices=(*MODELS, "all"), default="all", help="which model(s)")
    parser.add_argument("--inits", type=int, default=10, help="random initialisations averaged per model")
    parser.add_argument("--seed", type=int, default=0, help="base random seed")
    parser.add_argument("--t1", type=float, default=64.0, help="end of the time window [0, t1) in samples")
    parser.add_argument("--points-per-unit", type=int, default=4, help="output times per sample interval")
    parser.add_argument("--interpolation", choices=("linear", "cubic"), default="linear",
                        help="torchcde interpolation of V1 between samples")
    parser.add_argument("--rtol", type=float, default=1e-7, help="dopri5 relative tolerance")
    parser.add_argument("--atol", type=float, default=1e-7, help="dopri5 absolute tolerance")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default cpu: tiny problem)")
    parser.add_argument("--out", default="runs/silverbox_init", help="output folder")
    parser.add_argument("--data-root", default=None, help="data root (default $ODERNN_DATA)")
    args = parser.parse_args(argv)
    models = tuple(expand_models(args.model, MODELS))
    device = select_device(args.device)
    res = run(args.out, models=models, inits=args.inits, seed=args.seed, t1=args.t1,
              points_per_unit=args.points_per_unit, interpolation=args.interpolation, rtol=args.rtol,
              atol=args.atol, device=device, root=args.data_root)
    for m, s in res["summary"].items():
        print(f"{_LABELS[m]:8s} mean ||h|| at t=32: {s['h_norm_mean_at_half']:10.4g}   at the end: "
              f"{s['final_h_norm_mean']:10.4g} (log10 {s['final_log10_h_norm_mean']:6.2f})   "
              f"NFE/solve {s['forward_nfe']:.0f}   failures {s['solver_failures']}")
    print(f"wrote {args.out}/silverbox_init.csv, silverbox_init.png, comparison.md and <model>/metrics.csv, "
          f"summary.json")
    return res


if __name__ == "__main__":
    main()
