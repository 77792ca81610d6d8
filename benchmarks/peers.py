"""One ODE-RNN training step, side by side: odernn against torchode and diffrax (JAX) on the same model and data.

Workloads (the models as the recipes build them, weights copied from odernn's model into every peer):

* ``pv``: the plane-vibration HBNODE-RNN of ``recipes/plane_vibration.py`` (Table 4 sizes, the recipe's
  ``init_scale=0.01``), batch of the first 64 training segments, the recipe's loss (8-stamp forecast MSE + 0.1 x
  next-stamp MSE);
* ``walker``: the Walker2D HBNODE-RNN of ``recipes/walker2d.py`` (times / 64), batch of the first 256 training
  windows, next-step MSE.

Every contender solves each gap with dopri5 at rtol = atol = 1e-7 in rescaled time (``s`` in [0, 1],
``dz/ds = dt_b f(z)``, one gap per sample), and computes the loss and its gradient with respect to every parameter
(one training step without the optimizer update). Contenders:

* ``odernn compiled``: the recipe's default (``Solver(rtol=1e-7, atol=1e-7)``, adjoint, fused loop, compiled);
  ``odernn compiled, norm='rms'``: the same with ``Solver(norm="rms")``, the RMS over the whole batch steering the
  steps as in diffrax (odernn's default is the worst sample's RMS, which takes more steps); ``odernn eager``: the
  default with ``--compile off``; ``odernn compiled, first step = whole gap``: the default with
  ``ODERNN(warm_start="gap")`` (every gap's first trial step, forward and adjoint, is the whole gap, as in
  ``diffrax best`` and ``torchode whole-gap dt0``; odernn's default starts from the previous gap's last accepted step);
  ``odernn compiled, first step = whole gap, norm='rms'``: both, diffrax best's step selection;
* ``torchode default``: ``AutoDiffAdjoint(Dopri5, IntegralController)``, its initial-step heuristic per gap;
  ``torchode whole-gap dt0``: the first step of every gap = the whole gap;
* ``diffrax default``: the whole sequence under one ``jax.jit`` (``lax.scan`` over gaps), ``Dopri5``,
  ``PIDController``, initial-step heuristic, ``RecursiveCheckpointAdjoint``; ``diffrax best``: the same with the
  first step = the whole gap and ``BacksolveAdjoint`` with the seminorm (``adjoint_rms_seminorm``).

Protocol: before timing, every contender's loss at the shared weights is checked against odernn's (relative
difference below 1e-4: the solves differ only in their steps, all at 1e-7). One process, one thread (torch and XLA),
run it pinned to one core (``taskset -c 1``). After one warm-up call each (compiling / jitting, reported separately
as wall time), ``--reps`` rounds call every contender once in turn (interleaved); the table gives the median process
CPU time. NFE: odernn and torchode count evaluations (torchode: the most any sample needed); for diffrax the
forward count is ``sum over gaps (6 x trial steps + 1)`` (Dormand-Prince with first-same-as-last) from its step
statistics.

Needs the optional peers (``pip install -e .[peers]``, kept out of ``make test``)::

    taskset -c 1 python -m benchmarks.peers --workload pv --workload walker --reps 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable, Dict, List, Tuple

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402

import odernn  # noqa: E402

RTOL = ATOL = 1e-7


# -- the workloads ------------------------------------------------------------------------------------------------
class Workload:
    """A model (odernn's, as its recipe builds it), a batch, and the gaps every contender solves.

    ``gaps`` (B, G) per-sample gaps before each observation (G = T, a zero column where nothing moves);
    ``future`` (B, F) forecast gaps or None; ``loss_of(outputs, forecast)`` the recipe's loss."""

    def __init__(self, name: str, compile_: bool, norm: str = "sample", warm_start=True) -> None:
        self.name = name
        torch.manual_seed(0)
        solver = odernn.Solver(rtol=RTOL, atol=ATOL, compile=compile_, norm=norm)
        if name == "pv":
            from recipes import plane_vibration as pv

            ds = odernn.data.plane_vibration("train", normalize=True)
            self.batch = default_collate([ds[i] for i in range(64)])
            self.core = pv.build_odernn("hbnode", solver=solver, init_scale=0.01)
            self.model = pv.Forecaster(self.core)
            self.loss_fn = lambda: pv.train_loss(self.model, self.batch)["loss"]
            t, tf = self.batch["t"].double(), self.batch["t_future"].double()
            t = t - t[:, :1]
            tf = tf - self.batch["t"].double()[:, :1]
            self.gaps = torch.cat([torch.zeros_like(t[:, :1]), t.diff(dim=1)], dim=1)
            self.future = torch.cat([tf[:, :1] - t[:, -1:], tf.diff(dim=1)], dim=1)
        elif name == "walker":
            from recipes import walker2d as wk

            ds = odernn.data.walker2d("train")
            self.batch = default_collate([ds[i] for i in range(256)])
            self.core = wk.build_odernn("hbnode", solver=solver)
            self.model = wk.StepPredictor(self.core, time_scale=1 / 64)
            self.loss_fn = lambda: wk.step_mse(self.model, self.batch)
            b = self.batch
            t = b["t"].double()
            t_rel = (t - (t[:, :1] - b["dt"].double()[:, :1])) / 64
            self.gaps = torch.cat([t_rel[:, :1], t_rel.diff(dim=1)], dim=1)
            self.future = None
        else:
            raise ValueError(f"unknown workload {name!r}; choose pv or walker")
        self.core.warm_start = warm_start
        self.gaps32 = self.gaps.float()
        self.future32 = None if self.future is None else self.future.float()

    def loss_of(self, outputs, forecast, xp=torch):
        """The recipe's loss from outputs (B, T, K) and forecast (B, F, K) (``xp``: torch or jax.numpy)."""
        b = self.batch
        if self.name == "pv":
            x_future, x_next = (_as(xp, b["x_future"]), _as(xp, b["x_next"]))
            return ((forecast - x_future) ** 2).mean() + 0.1 * ((outputs - x_next) ** 2).mean()
        return ((outputs - _as(xp, b["x_next"])) ** 2).mean()

    def state_dict_np(self) -> Dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.core.state_dict().items()}


def _as(xp, t: torch.Tensor):
    return t if xp is torch else xp.asarray(t.numpy())


# -- odernn ---------------------------------------------------------------------------------------------------------
def odernn_contender(w: Workload) -> Tuple[Callable[[], float], Callable[[], tuple]]:
    params = list(w.model.parameters())

    def step() -> float:
        for p in params:
            p.grad = None
        loss = w.loss_fn()
        loss.backward()
        return float(loss.detach())

    def nfe() -> tuple:
        with odernn.nfe_counter(w.core) as c:
            step()
        return c.forward, c.backward

    return step, nfe


# -- torchode -------------------------------------------------------------------------------------------------------
class _ScaledField(torch.nn.Module):
    """``dz/ds = dt_b f(z)``: the dynamics in rescaled time, ``dt`` (B,) passed as torchode's ``args``."""

    def __init__(self, dyn: torch.nn.Module) -> None:
        super().__init__()
        self.dyn = dyn

    def forward(self, s, z, dt):
        return self.dyn(s, z) * dt.unsqueeze(1)


def torchode_contender(w: Workload, whole_gap: bool):
    import torchode as to

    core = w.core
    term = to.ODETerm(_ScaledField(core.dynamics), with_args=True)
    adjoint = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=ATOL, rtol=RTOL, term=term))
    B = w.gaps.shape[0]
    zeros, ones = torch.zeros(B), torch.ones(B)
    counts = {"fwd": 0}

    def solve(z, dt):
        sol = adjoint.solve(to.InitialValueProblem(y0=z, t_start=zeros, t_end=ones), args=dt,
                            dt0=ones if whole_gap else None)
        counts["fwd"] += int(sol.stats["n_f_evals"].max())
        return sol.ys[:, -1]

    def loss() -> torch.Tensor:
        x = w.batch["x"]
        z = core.initial_state(x) if core.initial_state is not None else x.new_zeros(B, core.state_size)
        post = []
        for i in range(x.shape[1]):
            if bool((w.gaps32[:, i] > 0).any()):
                z = solve(z, w.gaps32[:, i])
            z = core.cell(x[:, i], z)
            post.append(z)
        outputs = core._read(core._hidden(torch.stack(post, 1)))
        forecast = None
        if w.future is not None:
            pre = []
            for j in range(w.future32.shape[1]):
                z = solve(z, w.future32[:, j])
                pre.append(z)
            forecast = core._read(core._hidden(torch.stack(pre, 1)))
        return w.loss_of(outputs, forecast)

    params = list(w.model.parameters())

    def step() -> float:
        for p in params:
            p.grad = None
        counts["fwd"] = 0
        out = loss()
        out.backward()
        return float(out.detach())

    def nfe() -> tuple:
        step()
        return counts["fwd"], None

    return step, nfe


# -- diffrax --------------------------------------------------------------------------------------------------------
def diffrax_contender(w: Workload, best: bool):
    import diffrax
    import jax
    import jax.numpy as jnp

    sd = {k: jnp.asarray(v) for k, v in w.state_dict_np().items()}
    n = w.core.hidden_size
    eps = float(w.core.dynamics.epsilon)
    dyn_layers = _linear_layers(sd, "dynamics.net.")
    cell_kind = type(w.core.cell).__name__

    def mlp(layers, x, act):
        for j, (W, b) in enumerate(layers):
            x = x @ W.T + b
            if j < len(layers) - 1:
                x = act(x)
        return x

    def field(s, z, args):
        P, dt = args
        h, m = z[:, :n], z[:, n:]
        gamma = eps * jax.nn.sigmoid(P["dynamics.omega"])
        dm = mlp(P["dyn"], h, jax.nn.relu) - gamma * m
        return jnp.concatenate([m, dm], axis=1) * dt[:, None]

    def cell(P, x, z):
        if cell_kind == "ResidualCell":
            out = z + x @ P["cell.input.weight"].T + P["cell.input.bias"]
            for c in range(2):
                part = z[:, c * n:(c + 1) * n]
                out = out + part @ P[f"cell.state.{c}.weight"].T + P[f"cell.state.{c}.bias"]
            return out
        return z + mlp(P["cellnet"], jnp.concatenate([z, x], axis=1), jnp.tanh)

    if best:
        controller = diffrax.PIDController(rtol=RTOL, atol=ATOL)
        adjoint = diffrax.BacksolveAdjoint(stepsize_controller=diffrax.PIDController(
            rtol=RTOL, atol=ATOL, norm=diffrax.adjoint_rms_seminorm))
        dt0 = 1.0
    else:
        controller = diffrax.PIDController(rtol=RTOL, atol=ATOL)
        adjoint = diffrax.RecursiveCheckpointAdjoint()
        dt0 = None
    term = diffrax.ODETerm(field)

    def solve(P, z, dt):
        sol = diffrax.diffeqsolve(term, diffrax.Dopri5(), 0.0, 1.0, dt0, z, args=(P, dt),
                                  stepsize_controller=controller, adjoint=adjoint, max_steps=4096,
                                  saveat=diffrax.SaveAt(t1=True))
        return sol.ys[-1], sol.stats["num_steps"]

    gaps = jnp.asarray(w.gaps32.numpy())
    future = None if w.future is None else jnp.asarray(w.future32.numpy())
    x = jnp.asarray(w.batch["x"].numpy())
    B = x.shape[0]
    first_moves = bool((w.gaps32[:, 0] > 0).any())

    def loss(P):
        if "initial_state.dense.weight" in P:
            z = x.reshape(B, -1) @ P["initial_state.dense.weight"].T + P["initial_state.dense.bias"]
        else:
            z = jnp.zeros((B, 2 * n), x.dtype)
        steps = jnp.zeros((), jnp.int32)
        if not first_moves:  # nothing moves before the first observation: only the cell
            z = cell(P, x[:, 0], z)
            z0_post = z[:, None]
            xs, gs = x[:, 1:], gaps[:, 1:]
        else:
            z0_post = None
            xs, gs = x, gaps

        def obs(carry, inp):
            z, steps = carry
            xi, dti = inp
            z, k = solve(P, z, dti)
            z = cell(P, xi, z)
            return (z, steps + k), z

        (z, steps), post = jax.lax.scan(obs, (z, steps), (jnp.swapaxes(xs, 0, 1), jnp.swapaxes(gs, 0, 1)))
        post = jnp.swapaxes(post, 0, 1)
        if z0_post is not None:
            post = jnp.concatenate([z0_post, post], axis=1)
        read = lambda zz: zz[..., :n] @ P["readout.weight"].T + P["readout.bias"]  # noqa: E731
        outputs = read(post)
        forecast = None
        n_gaps = gs.shape[1]
        if future is not None:
            def fut(carry, dti):
                z, steps = carry
                z, k = solve(P, z, dti)
                return (z, steps + k), z

            (z, steps), pre = jax.lax.scan(fut, (z, steps), jnp.swapaxes(future, 0, 1))
            forecast = read(jnp.swapaxes(pre, 0, 1))
            n_gaps += future.shape[1]
        return w.loss_of(outputs, forecast, xp=jnp), (steps, n_gaps)

    P = {k: v for k, v in sd.items()}
    P["dyn"] = dyn_layers
    if cell_kind != "ResidualCell":
        P["cellnet"] = _linear_layers(sd, "cell.net.")
    P = {k: v for k, v in P.items() if not (k.startswith("dynamics.net.") or k.startswith("cell.net."))}
    vg = jax.jit(jax.value_and_grad(loss, has_aux=True))
    box = {}

    def step() -> float:
        (val, aux), grads = vg(P)
        jax.block_until_ready(grads)
        box["aux"] = aux
        return float(val)

    def nfe() -> tuple:
        step()
        steps, n_gaps = box["aux"]
        return 6 * int(steps) + int(n_gaps), None

    return step, nfe


def _linear_layers(sd: dict, prefix: str) -> List[tuple]:
    """``(weight, bias)`` of the linear layers of an ``nn.Sequential`` (or of a single ``nn.Linear``) at ``prefix``."""
    if f"{prefix}weight" in sd:
        return [(sd[f"{prefix}weight"], sd[f"{prefix}bias"])]
    idx = sorted({int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)})
    return [(sd[f"{prefix}{i}.weight"], sd[f"{prefix}{i}.bias"]) for i in idx]


# -- the run --------------------------------------------------------------------------------------------------------
def contenders(name: str, only: List[str]) -> Dict[str, tuple]:
    out = {}
    want = lambda label: not only or any(o in label for o in only)  # noqa: E731
    if want("odernn compiled"):
        w = Workload(name, compile_=True)
        out["odernn compiled"] = (w, *odernn_contender(w))
    if want("odernn compiled, norm='rms'"):
        w = Workload(name, compile_=True, norm="rms")
        out["odernn compiled, norm='rms'"] = (w, *odernn_contender(w))
    if want("odernn compiled, first step = whole gap"):
        w = Workload(name, compile_=True, warm_start="gap")
        out["odernn compiled, first step = whole gap"] = (w, *odernn_contender(w))
    if want("odernn compiled, first step = whole gap, norm='rms'"):
        w = Workload(name, compile_=True, norm="rms", warm_start="gap")
        out["odernn compiled, first step = whole gap, norm='rms'"] = (w, *odernn_contender(w))
    if want("odernn eager"):
        w = Workload(name, compile_=False)
        out["odernn eager"] = (w, *odernn_contender(w))
    for whole, label in ((False, "torchode default"), (True, "torchode whole-gap dt0")):
        if want(label):
            w = Workload(name, compile_=False)
            out[label] = (w, *torchode_contender(w, whole))
    for best, label in ((False, "diffrax default"), (True, "diffrax best")):
        if want(label):
            w = Workload(name, compile_=False)
            out[label] = (w, *diffrax_contender(w, best))
    return out


def run(name: str, reps: int, only: List[str]) -> List[dict]:
    cs = contenders(name, only)
    rows = {}
    ref = None
    for label, (w, step, nfe) in cs.items():  # warm-up: compile / jit, check the loss, count NFE
        wall = time.perf_counter()
        loss = step()
        first = time.perf_counter() - wall
        nf, nb = nfe()
        compile_s = sum(e["seconds"] for e in odernn.compile_log()) if label == "odernn compiled" else None
        rows[label] = dict(workload=name, contender=label, loss=loss, first_call_s=first, compile_log_s=compile_s,
                           nfe_fwd=nf, nfe_bwd=nb, cpu=[])
        ref = loss if ref is None else ref
        if abs(loss - ref) > 1e-4 * abs(ref):
            raise SystemExit(f"{label}: loss {loss!r} differs from the first contender's {ref!r} by more than 1e-4 "
                             f"(relative): the models are not the same; not timing")
        print(f"{name}: {label}: loss {loss:.7f}, first call {first:.1f} s wall, NFE {nf}/{nb}", flush=True)
    for _ in range(reps):
        for label, (w, step, nfe) in cs.items():
            c = time.process_time()
            step()
            rows[label]["cpu"].append(time.process_time() - c)
    for r in rows.values():
        r["cpu_median"] = statistics.median(r["cpu"])
    return list(rows.values())


def table(rows: List[dict]) -> str:
    lines = ["| workload | contender | loss | NFE fwd / bwd | CPU s / step (median) | min - max "
             "| first call s (wall) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        nfe = f"{r['nfe_fwd']} / {'-' if r['nfe_bwd'] is None else r['nfe_bwd']}"
        lines.append(f"| {r['workload']} | {r['contender']} | {r['loss']:.7f} | {nfe} | {r['cpu_median']:.4f} | "
                     f"{min(r['cpu']):.4f} - {max(r['cpu']):.4f} | {r['first_call_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=("pv", "walker"), action="append")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--only", action="append", default=[], help="run the contenders whose label contains this")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.workload or ["pv", "walker"]:
        rows += run(name, args.reps, args.only)
        print(table([r for r in rows if r["workload"] == name]), flush=True)
    print(f"\ntorch {torch.__version__}, 1 thread, median of {args.reps} interleaved steps (process CPU time)\n")
    print(table(rows))
    print("\nodernn compile log:")
    for e in odernn.compile_log():
        print(f"- {e['kind']} of {e['dynamics']} {e['state_shape']}: {e['seconds']:.1f} s")


if __name__ == "__main__":
    main()
