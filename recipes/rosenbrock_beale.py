"""Gradient flow versus the heavy-ball ODE on the Rosenbrock and Beale functions (paper Appendix E.6, Fig. 9).

Both ODEs start at (0, 0) (the HBODE with zero velocity) and are solved with odernn's dynamics and dopri5:

* gradient flow (eq. 8): ``x' = -grad F(x)``, an :class:`odernn.NODE` whose network returns ``-grad F``;
* HBODE (eq. 7): ``x'' + gamma x' = -grad F(x)``, an :class:`odernn.HBNODE` with the same network and a fixed
  ``gamma`` (0.9 for Rosenbrock, 0.7 for Beale).

Step size: the paper solves "with Dormand-Prince-45 using a step size 0.001" (Rosenbrock, t in [0, 1]) and 0.01
(Beale, t in [0, 2]). Here dopri5 runs with its error control on (rtol 1e-7, atol 1e-9) and with ``first_step`` and
``max_step`` both set to that step size, so it takes steps of exactly that size unless its error estimate asks for
smaller ones; the trajectory is reported on the grid of that step.

Writes ``DIR/trajectories.csv`` (function, method, t, x, y, F, distance to the minimum), ``DIR/summary.json`` and
``DIR/rosenbrock_beale.png`` (trajectories over the level sets, and the distance to the minimum over time).

Usage::

    python -m recipes.rosenbrock_beale --out runs/rosenbrock_beale
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

import odernn

from ._distributed import select_device
from ._files import atomic_write_csv, atomic_write_json
from ._report import pyplot, save_figure

__all__ = ["Problem", "PROBLEMS", "rosenbrock", "beale", "NegGradient", "solve", "run", "main"]


def rosenbrock(p: Tensor) -> Tensor:
    """Rosenbrock ``100 (y - x^2)^2 + (1 - x)^2`` of points (..., 2); minimum 0 at (1, 1)."""
    x, y = p[..., 0], p[..., 1]
    return 100.0 * (y - x ** 2) ** 2 + (1.0 - x) ** 2


def beale(p: Tensor) -> Tensor:
    """Beale ``(1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2`` of points (..., 2); minimum 0 at
    (3, 0.5)."""
    x, y = p[..., 0], p[..., 1]
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y ** 2) ** 2 + (2.625 - x + x * y ** 3) ** 2


def _rosenbrock_grad(p: Tensor) -> Tensor:
    x, y = p[..., 0], p[..., 1]
    r = y - x ** 2
    return torch.stack([-400.0 * x * r - 2.0 * (1.0 - x), 200.0 * r], dim=-1)


def _beale_grad(p: Tensor) -> Tensor:
    x, y = p[..., 0], p[..., 1]
    a, b, c = 1.5 - x + x * y, 2.25 - x + x * y ** 2, 2.625 - x + x * y ** 3
    gx = 2 * a * (y - 1) + 2 * b * (y ** 2 - 1) + 2 * c * (y ** 3 - 1)
    gy = 2 * a * x + 2 * b * 2 * x * y + 2 * c * 3 * x * y ** 2
    return torch.stack([gx, gy], dim=-1)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One test function with the settings of Appendix E.6."""

    name: str
    f: Callable[[Tensor], Tensor]
    grad: Callable[[Tensor], Tensor]
    minimum: tuple[float, float]
    t1: float
    step: float
    gamma: float
    box: tuple[float, float, float, float]  # plot window x0, x1, y0, y1


PROBLEMS = {
    "rosenbrock": Problem("rosenbrock", rosenbrock, _rosenbrock_grad, (1.0, 1.0), 1.0, 1e-3, 0.9,
                          (-0.1, 1.25, -0.1, 1.25)),
    "beale": Problem("beale", beale, _beale_grad, (3.0, 0.5), 2.0, 1e-2, 0.7, (-0.1, 3.6, -0.1, 1.1)),
}


class NegGradient(nn.Module):
    """``p -> -grad F(p)`` for points (batch, 2), the right-hand side ``f`` of both ODEs."""

    def __init__(self, grad: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.grad = grad

    def forward(self, p: Tensor) -> Tensor:
        return -self.grad(p)


def solve(problem: Problem, method: str, *, rtol: float = 1e-7, atol: float = 1e-9,
          device: str | torch.device = "cpu") -> tuple[Tensor, Tensor, Optional[Tensor], int]:
    """Solve one ODE from (0, 0) with zero initial velocity.

    Args:
        problem: the test function and its settings.
        method: ``"ode"`` (gradient flow) or ``"hbode"`` (heavy ball with ``problem.gamma``).
        rtol, atol: dopri5 tolerances (steps are also capped at ``problem.step``).
        device: where to solve.

    Returns:
        ``(t, xy, m, nfe)``: the time grid (T,), the positions (T, 2) on it, the HBODE's velocity (T, 2) (``None``
        for gradient flow), all float64 on the CPU, and the number of vector-field evaluations.
    """
    f = NegGradient(problem.grad)
    if method == "ode":
        dyn = odernn.NODE(f)
    elif method == "hbode":
        dyn = odernn.HBNODE(f, gamma=problem.gamma)
    else:
        raise ValueError(f"method must be 'ode' or 'hbode', got {method!r}")
    dyn = dyn.to(device=device, dtype=torch.float64)
    n_steps = int(round(problem.t1 / problem.step))
    t = torch.linspace(0.0, problem.t1, n_steps + 1, dtype=torch.float64, device=device)
    z0 = dyn.initial_state(torch.zeros(1, 2, dtype=torch.float64, device=device))
    with torch.no_grad(), odernn.nfe_counter(dyn) as nfe:
        traj = odernn.odesolve(dyn, z0, t, method="dopri5", rtol=rtol, atol=atol, adjoint=False,
                               max_steps=100 * n_steps + 1000,
                               options={"first_step": problem.step, "max_step": problem.step})
    z = traj[0].cpu()  # (T, state)
    xy = dyn.hidden(z)  # (T, 2)
    m = z[:, 2:] if method == "hbode" else None
    return t.cpu(), xy, m, nfe.forward


def run(out_dir: Optional[str] = None, *, problems: tuple[str, ...] = tuple(PROBLEMS), device: str = "cpu",
        horizon_factor: float = 1.0, plot: bool = True) -> dict:
    """Solve both ODEs on each problem; write the CSV, summary and figure into ``out_dir`` (when given).

    Args:
        out_dir: output folder (nothing is written when None).
        problems: names from :data:`PROBLEMS`.
        device: where to solve.
        horizon_factor: multiply the paper's time horizons (1 Rosenbrock, 2 Beale) by this factor.
        plot: write the figure.

    Returns:
        ``{"rows": [...], "summary": {problem: {...}}}``; each row is one grid point of one trajectory.
    """
    if not horizon_factor > 0:
        raise ValueError(f"horizon_factor must be > 0, got {horizon_factor!r}")
    rows, summary, curves = [], {}, {}
    for name in problems:
        if name not in PROBLEMS:
            raise ValueError(f"unknown function {name!r}; expected one of {sorted(PROBLEMS)}")
        pb = PROBLEMS[name]
        if horizon_factor != 1.0:
            pb = dataclasses.replace(pb, t1=pb.t1 * horizon_factor)
        summary[name] = {"minimum": list(pb.minimum), "t1": pb.t1, "step": pb.step, "gamma_hbode": pb.gamma}
        target = torch.tensor(pb.minimum, dtype=torch.float64)
        for method in ("ode", "hbode"):
            t, xy, _, nfe = solve(pb, method, device=device)
            dist = (xy - target).norm(dim=-1)
            fval = pb.f(xy)
            curves[(name, method)] = (t, xy, dist, pb)
            for i in range(t.numel()):
                rows.append({"function": name, "method": method, "t": float(t[i]), "x": float(xy[i, 0]),
                             "y": float(xy[i, 1]), "F": float(fval[i]), "distance": float(dist[i])})
            half = t.numel() // 2
            summary[name][method] = {
                "final_xy": [float(xy[-1, 0]), float(xy[-1, 1])], "final_F": float(fval[-1]),
                "final_distance": float(dist[-1]), "distance_at_half_time": float(dist[half]),
                "min_distance": float(dist.min()), "nfe": nfe,
                "first_time_within_0.1": _first_time(t, dist, 0.1),
                "first_time_within_0.5": _first_time(t, dist, 0.5),
            }
        s = summary[name]
        s["hbode_closer_at_end"] = s["hbode"]["final_distance"] < s["ode"]["final_distance"]
    result = {"rows": rows, "summary": summary}
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_csv(rows, out / "trajectories.csv")
        atomic_write_json({"task": "rosenbrock_beale", "solver": _SOLVER_NOTE,
                                   "horizon_factor": horizon_factor, "results": summary}, out / "summary.json")
        if plot:
            _plot(curves, out / "rosenbrock_beale.png")
    return result


_SOLVER_NOTE = ("dopri5, rtol 1e-7, atol 1e-9, first_step = max_step = the paper's step size (0.001 Rosenbrock, "
                "0.01 Beale); float64")


def _first_time(t: Tensor, dist: Tensor, eps: float) -> Optional[float]:
    hit = (dist <= eps).nonzero()
    return float(t[hit[0, 0]]) if hit.numel() else None


def _plot(curves: dict, path) -> None:
    plt = pyplot()
    names = sorted({k[0] for k in curves}, key=list(PROBLEMS).index)
    fig, axes = plt.subplots(2, len(names), figsize=(5.5 * len(names), 8.5), squeeze=False)
    style = {"ode": dict(color="tab:blue", label="ODE (gradient flow)"),
             "hbode": dict(color="tab:red", label="HBODE")}
    for j, name in enumerate(names):
        pb = curves[(name, "ode")][3]
        ax = axes[0, j]
        x0, x1, y0, y1 = pb.box
        for method in ("ode", "hbode"):  # widen the window to show overshoots
            xy = curves[(name, method)][1]
            x0, x1 = min(x0, float(xy[:, 0].min()) - 0.05), max(x1, float(xy[:, 0].max()) + 0.05)
            y0, y1 = min(y0, float(xy[:, 1].min()) - 0.05), max(y1, float(xy[:, 1].max()) + 0.05)
        gx, gy = torch.meshgrid(torch.linspace(x0, x1, 300, dtype=torch.float64),
                                torch.linspace(y0, y1, 300, dtype=torch.float64), indexing="xy")
        fz = pb.f(torch.stack([gx, gy], dim=-1))
        ax.contour(gx.numpy(), gy.numpy(), torch.log10(fz + 1e-3).numpy(), levels=25, cmap="Greys", linewidths=0.6)
        for method in ("ode", "hbode"):
            t, xy, _, _ = curves[(name, method)]
            ax.plot(xy[:, 0].numpy(), xy[:, 1].numpy(), lw=2, **style[method])
        ax.plot(*pb.minimum, marker="*", ms=16, color="gold", mec="k", label="minimum")
        ax.plot(0, 0, marker="o", color="k", ms=5)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_title(f"{name.capitalize()}: trajectories from (0, 0), t in [0, {pb.t1:g}]")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.legend(loc="upper left", fontsize=8)
        ax = axes[1, j]
        for method in ("ode", "hbode"):
            t, _, dist, _ = curves[(name, method)]
            ax.plot(t.numpy(), dist.numpy(), lw=2, **style[method])
        ax.set_yscale("log")
        ax.set_xlabel("t")
        ax.set_ylabel(f"distance to the minimum {pb.minimum}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Gradient flow vs heavy-ball ODE (paper Fig. 9, Appendix E.6)")
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m recipes.rosenbrock_beale", description=__doc__.split("\n")[0])
    parser.add_argument("--function", choices=[*PROBLEMS, "all"], default="all", help="test function (default all)")
    parser.add_argument("--out", default="runs/rosenbrock_beale", help="output folder")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default cpu: a tiny 2-D problem)")
    parser.add_argument("--horizon-factor", type=float, default=1.0,
                        help="multiply the paper's time horizons (t1 = 1 Rosenbrock, 2 Beale) by this factor")
    args = parser.parse_args(argv)
    problems = tuple(PROBLEMS) if args.function == "all" else (args.function,)
    device = select_device(args.device)
    result = run(args.out, problems=problems, device=device, horizon_factor=args.horizon_factor)
    for name, s in result["summary"].items():
        for method in ("ode", "hbode"):
            r = s[method]
            print(f"{name:10s} {method:5s} final (x, y) = ({r['final_xy'][0]:.4f}, {r['final_xy'][1]:.4f})  "
                  f"F = {r['final_F']:.3e}  distance = {r['final_distance']:.4f}  NFE = {r['nfe']}")
    print(f"wrote {args.out}/trajectories.csv, summary.json, rosenbrock_beale.png")
    return result


if __name__ == "__main__":
    main()
