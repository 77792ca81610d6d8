"""Solver overhead of an HBNODE-RNN training step (issue: NFE and overhead, measured not guessed).

Measures, for an HBNODE-RNN (hidden 20, default MLP field 20 -> 40 -> 20 on the h half) on a (64, 64, 5) batch of
irregularly sampled data at rtol = atol = 1e-7:

* forward and backward NFE per training step (``odernn.nfe_counter``),
* wall time of the forward pass and of a whole training step (forward + backward + Adam step),
* the time of one bare evaluation of the vector field (forward, no grad) on the same batch,
* overhead ratios: (forward wall / forward NFE) / bare eval, and (step wall / total NFE) / bare eval,

for the configurations: torchdiffeq's own dopri5 step vs the lean step, torchdiffeq's initial-step heuristic vs
warm-started steps, seminorm on/off, adjoint vs direct backpropagation.

Run: ``python benchmarks/overhead.py [--reps 3] [--threads 1]``. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch

import odernn


def bare_eval_seconds(dyn: odernn.Dynamics, z: torch.Tensor, reps: int = 1000, blocks: int = 7) -> float:
    """Fastest of ``blocks`` timings of ``reps`` plain evaluations (forward, no grad) of the vector field."""
    t = torch.zeros(())
    best = float("inf")
    with torch.no_grad():
        for _ in range(200):
            dyn(t, z)
        for _ in range(blocks):
            t0 = time.perf_counter()
            for _ in range(reps):
                dyn(t, z)
            best = min(best, (time.perf_counter() - t0) / reps)
    return best


def run(config: dict, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, reps: int, bare: float) -> dict:
    torch.manual_seed(0)
    model = odernn.ODERNN("hbnode", 5, 20, 5, rtol=1e-7, atol=1e-7, **config)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    fwd_times, step_times, nfes = [], [], []
    for r in range(reps + 1):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        with odernn.nfe_counter(model) as nfe:
            t0 = time.perf_counter()
            loss = (model(x, t) - y).pow(2).mean()
            t1 = time.perf_counter()
            opt.zero_grad()
            loss.backward()
            opt.step()
            t2 = time.perf_counter()
        model.load_state_dict(state)  # same parameters every repetition
        if r:  # first repetition is warm-up
            fwd_times.append(t1 - t0)
            step_times.append(t2 - t0)
            nfes.append((nfe.forward, nfe.backward))
    fwd = min(fwd_times)
    step = min(step_times)
    nf, nb = nfes[-1]
    return dict(fwd_nfe=nf, bwd_nfe=nb, fwd_s=fwd, step_s=step,
                fwd_ratio=fwd / nf / bare, step_ratio=step / (nf + nb) / bare)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 64, 5, generator=g)
    t = torch.cumsum(0.05 + 0.5 * torch.rand(64, 64, generator=g), dim=1)
    y = torch.randn(64, 64, 5, generator=g)
    configs = {
        "torchdiffeq step, heuristic first step, no seminorm": dict(lean=False, warm_start=False, seminorm=False),
        "lean step, heuristic first step, no seminorm": dict(warm_start=False, seminorm=False),
        "torchdiffeq step, heuristic first step, seminorm": dict(lean=False, warm_start=False, seminorm=True),
        "lean step, heuristic first step, seminorm": dict(warm_start=False, seminorm=True),
        "lean step, warm start, seminorm (default)": dict(warm_start=True, seminorm=True),
        "lean step, warm start, direct backprop": dict(warm_start=True, adjoint=False),
    }
    torch.manual_seed(0)
    probe = odernn.ODERNN("hbnode", 5, 20, 5)
    bare = bare_eval_seconds(probe.dynamics, torch.randn(64, probe.state_size))
    print(f"HBNODE-RNN, batch (64, 64, 5), rtol=atol=1e-7, torch {torch.__version__}, {args.threads} thread(s); "
          f"one bare evaluation of the vector field: {bare * 1e6:.1f} us; times are the fastest of {args.reps} "
          f"repetitions\n")
    print("| configuration | fwd NFE | bwd NFE | forward s | step s | fwd overhead | step overhead |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, cfg in configs.items():
        r = run(cfg, x, t, y, args.reps, bare)
        print(f"| {name} | {r['fwd_nfe']} | {r['bwd_nfe']} | {r['fwd_s']:.3f} | {r['step_s']:.3f} | "
              f"{r['fwd_ratio']:.2f}x | {r['step_ratio']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
