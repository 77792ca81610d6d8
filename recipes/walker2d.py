r"""Walker2D kinematic simulation (paper Sec. 5.4, Fig. 8): ODE-RNN hybrids predicting the next step.

Run::

    python -m recipes.walker2d --model all --out runs/walker2d              # the paper: 500 epochs, tol 1e-7
    python -m recipes.walker2d --model hbnode --epochs 2 --max-batches 2 --rtol 1e-3 --atol 1e-3   # smoke
    python -m recipes.walker2d --model ncde                                  # Neural CDE baseline (not in the paper)
    torchrun --nproc_per_node 2 -m recipes.walker2d --model hbnode           # DistributedDataParallel (gloo/nccl)

Data: :func:`odernn.data.walker2d` under the ODE-LSTM protocol (9,684 / 1,272 / 1,937 windows of 64 kept steps,
17 raw channels, 10 % of the steps dropped). Each window is fed through the ODE-RNN; the state is evolved by each
step's gap *before* its update, including the first one (``t0 = t[0] - dt[0]``), and the output read after the
update at step ``i`` predicts the next raw step ``y_i``. Metric: per-time-step MSE (``valid_loss``, ``test_loss``),
the training loss too.

Architecture (Appendix E.5, Table 4; ``d`` state copies, ``n`` hidden channels, ``k = 17``):

- ODE ``f``: one dense layer ``n* -> fc_n`` (``n* = n``; ``2n -> n`` for SONODE; the whole augmented state for ANODE);
- RNN update: ``dn + k -> fc_h1 -> tanh -> fc_h2 -> tanh -> fc_dn`` on ``[z, x]``; residual (``z + ...``) for the
  second-order models, a plain replacement for ODE-RNN and ANODE-RNN (both as the official code);
- output ``n -> fc_17`` (on ``h``; on the whole state for ODE-RNN and ANODE-RNN);
- initial state: zero; ANODE-RNN maps the first observation to 5 channels and appends 19 zero channels (the
  official ANODE-RNN; this is where its extra 86 parameters come from).

Sizes (parameters; Table 4 in brackets): ODE-RNN 24 / 72 / 48: 8,729 [8,729]; ANODE-RNN 5+19 / 72 / 48: 8,815
[8,815]; SONODE-RNN 23 / 46 / 46: 8,757 [not run in the paper: its solver failed]; HBNODE-RNN 24 / 48 / 48: 8,898
[8,899]; GHBNODE-RNN: 8,899 [8,899].

Training as the official code: Adam (Table 1: lr 3e-3, batch 256; ``--lr-schedule official`` follows the official
code's per-model schedules, :data:`OFFICIAL_LR_SCHEDULES`), dopri5 at rtol = atol = 1e-7, adjoint,
parameter-gradient norm clipped at 1 (``--grad-clip``), times divided by 64 (``--time-scale``).
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn
import torch.nn.functional as F

import odernn

from ._cli import add_hybrid_flags, base_parser, run_cli, solver_from_args, xi_kwargs
from ._driver import RecipeSpec, run_recipe
from ._ncde import NeuralCDE, ncde_width_for

__all__ = ["MODELS", "PAPER_MODELS", "TABLE4_PARAMS", "ARCH", "OFFICIAL_LR_SCHEDULES", "build_model", "main",
           "make_parser", "make_spec"]

MODELS = ("node", "anode", "sonode", "hbnode", "ghbnode", "ncde")
PAPER_MODELS = MODELS[:5]
#: Parameter counts of Table 4 (SONODE-RNN was not run on Walker2D in the paper).
TABLE4_PARAMS = {"node": 8_729, "anode": 8_815, "hbnode": 8_899, "ghbnode": 8_899}
K = 17
#: Per model: hidden channels n, ANODE's zero channels p, RNN widths h1, h2, residual RNN update.
ARCH = {
    "node": dict(n=24, augment=0, h1=72, h2=48, residual=False),
    "anode": dict(n=5, augment=19, h1=72, h2=48, residual=False),
    "sonode": dict(n=23, augment=0, h1=46, h2=46, residual=True),
    "hbnode": dict(n=24, augment=0, h1=48, h2=48, residual=True),
    "ghbnode": dict(n=24, augment=0, h1=48, h2=48, residual=True),
}
#: Initial xi of GHBNODE (``--xi0``).
XI0 = math.log(2.0)
NCDE_HIDDEN = 16
#: The official code's learning-rate schedules (``walker2d/*_rnn_walker.py``), for ``--lr-schedule official``: Adam at
#: 3e-3 throughout for ODE-RNN and ANODE-RNN; 1e-3 for epochs 0-49, then a new Adam at 3e-3 for the second-order
#: models.
OFFICIAL_LR_SCHEDULES = {"node": "0:3e-3", "anode": "0:3e-3", "sonode": "0:1e-3,50:3e-3",
                         "hbnode": "0:1e-3,50:3e-3", "ghbnode": "0:1e-3,50:3e-3"}


class MLPCell(nn.Module):
    """RNN update ``z <- [z +] fc_state(tanh(fc_h2(tanh(fc_h1([z, x])))))`` (E.5).

    Shapes: ``forward(x (B, k), z (B, state)) -> (B, state)``.
    """

    def __init__(self, input_size: int, state: int, h1: int, h2: int, *, residual: bool) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(state + input_size, h1), nn.Tanh(), nn.Linear(h1, h2), nn.Tanh(),
                                 nn.Linear(h2, state))
        self.residual = residual

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        out = self.net(torch.cat([z, x], dim=1))
        return z + out if self.residual else out


class FirstObservationInitial(nn.Module):
    """ANODE-RNN's initial state: ``Linear(k -> width)`` of the first observation, then ``pad`` zero channels.

    Shapes: ``forward(x (B, T, k)) -> (B, width + pad)``.
    """

    def __init__(self, input_size: int, width: int, pad: int) -> None:
        super().__init__()
        self.dense = nn.Linear(input_size, width)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(self.dense(x[:, 0]), (0, self.pad))


class StepPredictor(nn.Module):
    """Wraps an ODE-RNN (or the Neural CDE) so that ``model(batch) -> (B, 64, 17)`` predictions of ``y``.

    Times are shifted so that the kept step before the window is at 0 (``t0``), then multiplied by ``time_scale``:
    the ODE-RNN evolves by every step's gap before its update, the first one included.
    """

    def __init__(self, core: nn.Module, *, time_scale: float) -> None:
        super().__init__()
        self.core = core
        self.time_scale = float(time_scale)

    def forward(self, batch: dict) -> Tensor:
        x, t, dt = batch["x"], batch["t"], batch["dt"]
        t_rel = (t - (t[:, :1] - dt[:, :1])) * self.time_scale  # (B, T), t_rel[:, 0] = dt[:, 0] * scale > 0
        if isinstance(self.core, odernn.ODERNN):
            return self.core(x, t_rel, t_start=t_rel.new_zeros(t_rel.shape[0]))
        return self.core(x, t_rel)


def build_odernn(name: str, *, solver: Optional[odernn.Solver] = None, adjoint_clip: Optional[float] = None,
                 xi0: float = XI0, **solver_changes: Any) -> odernn.ODERNN:
    """The ODE-RNN hybrid ``name`` of Table 4 (see the module docstring).

    Args:
        solver: how the ODE is solved (default: dopri5 at rtol = atol = 1e-7 with the adjoint, the paper's setting);
            ``solver_changes`` (``rtol=``, ``method=``, ...) override its fields.
    """
    solver = (solver or odernn.Solver(rtol=1e-7, atol=1e-7)).replace(**solver_changes)
    a = ARCH[name]
    n, p = a["n"], a["augment"]
    n_in = {"sonode": 2 * n, "anode": n + p}.get(name, n)
    dyn = odernn.make_dynamics(name, nn.Linear(n_in, n + p), augment_dim=p, **xi_kwargs(name, xi0))
    state = dyn.state_size(n)
    cell = MLPCell(K, state, a["h1"], a["h2"], residual=a["residual"])
    readout = nn.Linear(n + p if name in ("node", "anode") else n, K)
    initial = FirstObservationInitial(K, n, p) if name == "anode" else None
    return odernn.ODERNN(dyn, K, n, K, solver=solver, adjoint_clip=adjoint_clip, cell=cell, feed_mask=False,
                         readout=readout, initial_state=initial)


def _ncde_width() -> int:
    return ncde_width_for(TABLE4_PARAMS["hbnode"], input_size=K, hidden_size=NCDE_HIDDEN, output_size=K)


def build_model(name: str, args: argparse.Namespace) -> StepPredictor:
    """``name`` in :data:`MODELS`, with the solver settings of ``args``."""
    if name == "ncde":
        from odernn.data import walker2d

        train = walker2d("train", root=args.data_root)  # the path is standardised with training statistics
        core: nn.Module = NeuralCDE(K, NCDE_HIDDEN, _ncde_width(), K, solver=solver_from_args(args, compile=False),
                                    input_mean=torch.as_tensor(train.mean), input_std=torch.as_tensor(train.std))
    else:
        core = build_odernn(name, solver=solver_from_args(args), adjoint_clip=args.adjoint_clip, xi0=args.xi0)
    return StepPredictor(core, time_scale=args.time_scale)


def describe(name: str, args: argparse.Namespace) -> dict:
    if name == "ncde":
        return {"kind": "neural_cde", "hidden": NCDE_HIDDEN, "width": _ncde_width(), "channels": K + 1,
                "interpolation": "hermite_cubic_backward_differences", "paper_params": None,
                "time_scale": args.time_scale}
    return {"kind": "odernn", **ARCH[name], "copies": 1 if name in ("node", "anode") else 2,
            **({"xi0": args.xi0} if name == "ghbnode" else {}),
            "paper_params": TABLE4_PARAMS.get(name), "time_scale": args.time_scale}


def step_mse(model: nn.Module, batch: dict) -> Tensor:
    """Per-time-step mean squared error against the next raw step."""
    return F.mse_loss(model(batch), batch["x_next"])


def datasets(args: argparse.Namespace) -> dict:
    from odernn.data import walker2d

    return {s: walker2d(s, root=args.data_root) for s in ("train", "valid", "test")}


def make_spec() -> RecipeSpec:
    return RecipeSpec(name="walker2d", models=MODELS, all_models=PAPER_MODELS, build_model=build_model,
                      datasets=datasets, train_loss=step_mse, eval_loss=step_mse, describe=describe,
                      official_lr_schedules=OFFICIAL_LR_SCHEDULES)


def make_parser() -> argparse.ArgumentParser:
    p = base_parser(
        "Walker2D (HBNODE paper Sec. 5.4): ODE-RNN hybrids predicting the next step of irregularly sampled "
        "kinematics. --model all trains the paper's five models; ncde is the Neural CDE baseline.",
        models=MODELS, prog="python -m recipes.walker2d", fixed_step="fraction",
        defaults=dict(batch_size=256, lr=3e-3, epochs=500, rtol=1e-7, atol=1e-7, out="runs/walker2d"))
    p.add_argument("--time-scale", type=float, default=1 / 64,
                   help="multiply times (in raw simulation steps) by this factor (official code: 1/64)")
    return add_hybrid_flags(
        p, xi0=XI0, xi0_help="initial xi of GHBNODE (xi = softplus(chi), learned); default ln 2, the paper's chi = 0")


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = make_parser().parse_args(argv)
    return run_recipe(make_spec(), args)


if __name__ == "__main__":
    run_cli(main, prog="python -m recipes.walker2d")
