"""Training-step speed, NFE and solver overhead: the per-gap designs against the fused loop (eager and compiled).

Every figure is the fastest of ``--reps`` repetitions after one warm-up (which also compiles), one intra-op thread.
Both wall time and the process's CPU time are recorded: on a machine shared with other jobs the CPU time is the
steadier of the two. Compile times are reported separately (``odernn.compile_log()``).

1. Plane vibration, HBNODE-RNN and ODE-RNN exactly as ``recipes/plane_vibration.py`` builds them (Table 4 sizes,
   batch 64 of real segments, rtol = atol = 1e-7, the recipe's loss), adjoint and direct:
   * ``paper per-gap``: one torchdiffeq ``odeint_adjoint`` (``odeint``) per gap with torchdiffeq's own dopri5 step and
     initial-step heuristic, no seminorm: the design of the paper's code;
   * ``v0.1 per-gap``: odernn 0.1's default (one solve per gap, lean step, warm-started steps, seminorm);
   * ``fused``: the fused loop (default now); ``fused+compile``: with ``Solver(compile=True)``.
2. Walker2D HBNODE-RNN as its recipe builds it (batch 256 real windows, 1e-7, adjoint).
3. MNIST HBNODE classifier training step (batch 64, the recipe's model and tolerance) and the forecaster's ``fit``
   on a generated 1,900-point weekly series with 10% of stamps missing.
4. Overhead ratio: (time per training step / (forward + backward NFE)) / one bare evaluation of the vector field.

Run: ``python -m benchmarks.overhead [--reps 5] [--skip-compile] [--json out.json]``; prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import default_collate

import odernn


def _timed(fn: Callable[[], None], reps: int) -> tuple[float, float]:
    """Fastest (wall, cpu) seconds of ``reps`` calls after one warm-up call."""
    fn()
    wall, cpu = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return min(wall), min(cpu)


def bare_eval_seconds(dyn: odernn.Dynamics, z: torch.Tensor, reps: int = 500, blocks: int = 7) -> float:
    """Fastest CPU time of one plain evaluation (forward, no grad) of the vector field."""
    t = torch.zeros((), dtype=z.dtype)
    best = float("inf")
    with torch.no_grad():
        for _ in range(50):
            dyn(t, z)
        for _ in range(blocks):
            c = time.process_time()
            for _ in range(reps):
                dyn(t, z)
            best = min(best, (time.process_time() - c) / reps)
    return best


def _configs(adjoint: bool, compile_: bool) -> dict:
    base = odernn.Solver(rtol=1e-7, atol=1e-7, adjoint=adjoint)
    out = {
        "paper per-gap": (base.replace(lean=False, fused=False, seminorm=False), False),
        "v0.1 per-gap": (base.replace(fused=False), True),
        "fused": (base, True),
    }
    if compile_:
        out["fused+compile"] = (base.replace(compile=True), True)
    return out


def _step_runner(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], counter_model: torch.nn.Module):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    nfe_box = {}

    def step() -> None:
        model.load_state_dict(state)  # the same parameters every repetition
        with odernn.nfe_counter(counter_model) as nfe:
            loss = loss_fn()
            opt.zero_grad()
            loss.backward()
            opt.step()
        nfe_box["nfe"] = (nfe.forward, nfe.backward)

    return step, nfe_box


def bench_plane_vibration(reps: int, compile_: bool, rows: list) -> None:
    from recipes import plane_vibration as pv

    ds = odernn.data.plane_vibration("train", normalize=True)
    batch = default_collate([ds[i] for i in range(64)])
    for name in ("hbnode", "node"):
        for adjoint in (True, False):
            for label, (solver, warm) in _configs(adjoint, compile_).items():
                torch.manual_seed(0)
                core = pv.build_odernn(name, solver=solver, init_scale=0.01)
                core.warm_start = warm
                model = pv.Forecaster(core)
                step, box = _step_runner(model, lambda: pv.train_loss(model, batch)["loss"], core)
                wall, cpu = _timed(step, reps)
                bare = bare_eval_seconds(core.dynamics, torch.randn(64, core.state_size))
                nf, nb = box["nfe"]
                rows.append(dict(task="plane vibration", model=name, mode="adjoint" if adjoint else "direct",
                                 config=label, fwd_nfe=nf, bwd_nfe=nb, step_wall=wall, step_cpu=cpu,
                                 overhead=cpu / (nf + nb) / bare))
                print(rows[-1], flush=True)


def bench_walker(reps: int, compile_: bool, rows: list) -> None:
    from recipes import walker2d as wk

    ds = odernn.data.walker2d("train")
    batch = default_collate([ds[i] for i in range(256)])
    for label, (solver, warm) in _configs(True, compile_).items():
        if label == "paper per-gap":
            continue  # about 10 s a step on this machine; the plane-vibration rows show the per-gap cost
        torch.manual_seed(0)
        core = wk.build_odernn("hbnode", solver=solver)
        core.warm_start = warm
        model = wk.StepPredictor(core, time_scale=1 / 64)
        step, box = _step_runner(model, lambda: wk.step_mse(model, batch), core)
        wall, cpu = _timed(step, max(2, reps // 2))
        bare = bare_eval_seconds(core.dynamics, torch.randn(256, core.state_size))
        nf, nb = box["nfe"]
        rows.append(dict(task="walker2d", model="hbnode", mode="adjoint", config=label, fwd_nfe=nf, bwd_nfe=nb,
                         step_wall=wall, step_cpu=cpu, overhead=cpu / (nf + nb) / bare))
        print(rows[-1], flush=True)


def bench_mnist(reps: int, compile_: bool, rows: list) -> None:
    from recipes._image_models import build_image_model

    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    configs = {"v0.1 (torchdiffeq adjoint)": odernn.Solver(rtol=1e-5, atol=1e-5, fused=False),
               "fused": odernn.Solver(rtol=1e-5, atol=1e-5)}
    if compile_:
        configs["fused+compile"] = odernn.Solver(rtol=1e-5, atol=1e-5, compile=True)
    for label, solver in configs.items():
        torch.manual_seed(0)
        model = build_image_model("mnist", "hbnode", solver=solver)
        step, box = _step_runner(model, lambda: torch.nn.functional.cross_entropy(model(x), y), model)
        wall, cpu = _timed(step, max(2, reps // 2))
        nf, nb = box["nfe"]
        rows.append(dict(task="mnist", model="hbnode", mode="adjoint", config=label, fwd_nfe=nf, bwd_nfe=nb,
                         step_wall=wall, step_cpu=cpu, overhead=float("nan")))
        print(rows[-1], flush=True)


def weekly_series(n: int = 1900, seed: int = 0) -> pd.Series:
    rng = np.random.default_rng(seed)
    idx = pd.date_range("1985-01-06", periods=n, freq="7D")
    years = np.arange(n) / 52.18
    y = 0.02 * years + 0.0008 * years ** 2 + np.sin(2 * np.pi * years) + 0.3 * rng.standard_normal(n)
    keep = rng.random(n) > 0.10
    return pd.Series(y[keep], index=idx[keep], name="y")


def bench_forecaster(rows: list) -> None:
    y = weekly_series()
    f = odernn.ODERNNForecaster(random_state=0)
    w, c = time.perf_counter(), time.process_time()
    f.fit(y)
    rows.append(dict(task="forecaster fit", model=f.get_params().get("dynamics", "?"), mode="default",
                     config="defaults", fwd_nfe=None, bwd_nfe=None, step_wall=time.perf_counter() - w,
                     step_cpu=time.process_time() - c, overhead=float("nan")))
    print(rows[-1], flush=True)


def _table(rows: list) -> str:
    lines = ["| task | model | mode | configuration | fwd / bwd NFE | step wall s | step CPU s | overhead |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        nfe = "-" if r["fwd_nfe"] is None else f"{r['fwd_nfe']} / {r['bwd_nfe']}"
        ov = "-" if r["overhead"] != r["overhead"] else f"{r['overhead']:.1f}x"
        lines.append(f"| {r['task']} | {r['model']} | {r['mode']} | {r['config']} | {nfe} | {r['step_wall']:.3f} | "
                     f"{r['step_cpu']:.3f} | {ov} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--skip-compile", action="store_true", help="leave out the compiled configurations")
    p.add_argument("--only", choices=("plane", "walker", "mnist", "forecaster"), action="append")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows: list = []
    only = set(args.only or ("plane", "walker", "mnist", "forecaster"))
    compile_ = not args.skip_compile
    if "plane" in only:
        bench_plane_vibration(args.reps, compile_, rows)
    if "walker" in only:
        bench_walker(args.reps, compile_, rows)
    if "mnist" in only:
        bench_mnist(args.reps, compile_, rows)
    if "forecaster" in only:
        bench_forecaster(rows)
    print(f"\ntorch {torch.__version__}, 1 thread, fastest of {args.reps} repetitions\n")
    print(_table(rows))
    print("\ncompile times:")
    for e in odernn.compile_log():
        print(f"- {e['kind']} of {e['dynamics']} {e['state_shape']} grad={e['grad']}: {e['seconds']:.1f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(rows=rows, compile=odernn.compile_log(), torch=torch.__version__), fh, indent=1)


if __name__ == "__main__":
    main()
