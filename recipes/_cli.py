"""The command line every recipe shares: flags, their validation, the recorded command, and clean error exits.

::

    parser = base_parser("Walker2D", models=("node", "hbnode"), defaults={"batch_size": 256, "lr": 3e-3})
    args = parser.parse_args()          # args.argv: the exact command line, e.g. for config.json

Bad values are refused by argparse with a message that says what was received and what is expected (``--epochs 0``,
``--workers -3``, ``--out`` naming a file). :func:`run_cli` turns a :class:`RecipeError` (a run folder in use, a
refused resume, a damaged checkpoint) into ``<prog>: error: ...`` and exit status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import odernn

__all__ = ["RecipeError", "RecipeParser", "RESUME_SAFE_FLAGS", "base_parser", "lr_schedule_arg", "parse_lr_schedule",
           "add_hybrid_flags", "xi_kwargs",
           "expand_models", "positive_int", "nonnegative_int", "positive_float", "folder_path", "solver_from_args",
           "solver_settings", "run_cli"]


class RecipeError(RuntimeError):
    """A refusal with a message meant for the user (the command line prints it without a traceback)."""


#: Settings a ``--resume`` may change: they do not change what is computed (how long, where, how fast, how it is
#: shown, where files go). ``data_root``: the loaders verify the registered SHA-256 of every file they read.
#: ``compile``: the same arithmetic, compiled (results may differ in the last bits).
#: ``paper_nfe_every``: the paper-solver probe only measures (see :func:`recipes._loops.paper_solver_nfe`).
RESUME_SAFE_FLAGS = frozenset({"epochs", "threads", "device", "workers", "progress", "resume", "overwrite", "out",
                               "checkpoint_dir", "data_root", "download", "argv", "model", "compile", "step_kind",
                               "paper_nfe_every"})
#: Settings added after a run may have started, with the value that reproduces what runs did before they existed: a
#: checkpoint without them resumes when they have that value now.
ADDED_SETTINGS = {"method": "dopri5", "step": None, "lr_schedule": None, "paper_nfe_every": 0}

_DEFAULTS = dict(epochs=500, max_batches=None, max_eval_batches=None, batch_size=64, eval_batch_size=None, lr=1e-3,
                 method="dopri5", rtol=1e-7, atol=1e-7, adjoint=True, step=None, compile="auto", adjoint_clip=None,
                 seed=0, device="auto", out=None, checkpoint_dir=None, resume=False, overwrite=False, threads=None,
                 workers=0, progress=None, lr_schedule=None, paper_nfe_every=0)
_NO_COMPILER = r"Solver\(compile=True\): no compiler"


def positive_int(s: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (1 or more), got {s!r}")
    return v


def nonnegative_int(s: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer (0 or more), got {s!r}")
    return v


def positive_float(s: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {s!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {s!r}")
    return v


def parse_lr_schedule(s: str) -> tuple[tuple[int, float], ...]:
    """``"0:1e-3,50:3e-3"`` -> ``((0, 0.001), (50, 0.003))``: ``E:LR`` pairs, the rate ``LR`` applying once ``E``
    epochs are done (``metrics.csv`` epoch ``E + 1`` on; ``E`` counts as the official code's 0-based epoch index).

    Raises:
        ValueError: unless the pairs are ``int:number``, the first epoch is 0, epochs strictly increase and every
            rate is a positive finite number.
    """
    pairs = []
    for part in str(s).replace(" ", "").split(","):
        epoch, sep, lr = part.partition(":")
        try:
            if not sep:
                raise ValueError
            e, r = int(epoch), float(lr)
        except ValueError:
            raise ValueError(f"expected EPOCH:LR pairs separated by commas (e.g. 0:1e-3,50:3e-3), got {s!r} "
                             f"(cannot read {part!r})") from None
        if e < 0 or not (r > 0 and math.isfinite(r)):
            raise ValueError(f"{part!r} in {s!r}: the epoch must be 0 or more and the rate a positive finite number")
        pairs.append((e, r))
    if pairs[0][0] != 0:
        raise ValueError(f"a schedule starts at epoch 0 (the rate of the first epoch), got {s!r}")
    if any(b[0] <= a[0] for a, b in zip(pairs, pairs[1:])):
        raise ValueError(f"the epochs of a schedule must strictly increase, got {s!r}")
    return tuple(pairs)


def lr_schedule_arg(s: str) -> str:
    """argparse type of ``--lr-schedule``: ``official`` or a schedule :func:`parse_lr_schedule` accepts, returned
    in one canonical spelling (``0:0.001,50:0.003``) so that equal schedules compare equal on resume."""
    if s.strip().lower() == "official":
        return "official"
    try:
        return ",".join(f"{e}:{r!r}" for e, r in parse_lr_schedule(s))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def folder_path(s: str) -> str:
    """argparse type: a folder that exists or can be created (not a file, not below a file)."""
    if not s:
        raise argparse.ArgumentTypeError("expected a folder path, got an empty string")
    p = Path(s).expanduser()
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                what = "is an existing file" if q == p else f"lies below {str(q)!r}, which is a file"
                raise argparse.ArgumentTypeError(f"expected a folder, but {s!r} {what}; give a folder path")
            break
    return str(p)


class RecipeParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` that records the exact command line as ``args.argv`` and checks the
    solver flags together (e.g. a fixed-grid ``--method`` needs a step).

    ``args.argv`` is ``shlex.split(prog) + the arguments parsed`` (e.g. ``["python", "-m", "recipes.walker2d",
    "--model", "hbnode"]``), so ``shlex.join(args.argv)`` reruns the same command.
    """

    def parse_known_args(self, args: Optional[Sequence[str]] = None, namespace: Any = None):
        given = list(sys.argv[1:] if args is None else args)
        ns, extra = super().parse_known_args(given, namespace)
        ns.argv = [*shlex.split(self.prog), *given]
        if hasattr(ns, "method"):
            try:
                solver_from_args(ns).check_fixed_step(in_gaps=ns.step_kind == "fraction")
            except ValueError as e:
                flag = "--step-fraction" if ns.step_kind == "fraction" else "--step-size"
                self.error(f"solver flags: {e}" + (f" (on the command line: {flag})" if "step" in str(e) else ""))
        return ns, extra


def compile_default(default: str) -> str:
    """``--compile``'s default: a recipe's own, else ``$ODERNN_COMPILE`` (``auto``, ``on`` or ``off``; the test
    suite sets ``off`` so that only the tests that ask for compiling pay for it), else ``auto``."""
    env = os.environ.get("ODERNN_COMPILE")
    if default != "auto" or not env:
        return default
    if env not in ("auto", "on", "off"):
        raise ValueError(f"ODERNN_COMPILE must be auto, on or off, got {env!r}")
    return env


def solver_from_args(args: Any, **changes: Any) -> odernn.Solver:
    """The one :class:`odernn.Solver` of a run, from ``--method``, ``--rtol``, ``--atol``, ``--adjoint``, the
    fixed-grid step (``--step-fraction`` or ``--step-size``) and ``--compile``; ``changes`` override fields.

    ``--compile auto`` compiles where a compiler is available and runs eagerly, silently, where none is (``on`` warns
    there once; ``off`` never compiles). Compiling serves the fused ODE-RNN loop; other solves run eagerly.

    Raises:
        ValueError: for settings :class:`odernn.Solver` refuses (unknown method, fixed-grid method without a step).
    """
    fields = dict(method=args.method, rtol=args.rtol, atol=args.atol, adjoint=args.adjoint,
                  compile=args.compile != "off")
    step = getattr(args, "step", None)
    if step is not None:
        fields["step_fraction" if getattr(args, "step_kind", "size") == "fraction" else "step_size"] = step
    if args.compile == "auto":
        warnings.filterwarnings("ignore", message=_NO_COMPILER)
    return odernn.Solver(**{**fields, **changes})


def solver_settings(args: Any) -> dict:
    """The resolved solver of a run as a JSON-able dict (for ``config.json``)."""
    solver = solver_from_args(args)
    return {f.name: getattr(solver, f.name) for f in dataclasses.fields(solver)}


def base_parser(description: str, *, models: Sequence[str], defaults: Optional[Mapping[str, Any]] = None,
                prog: Optional[str] = None, fixed_step: str = "size") -> RecipeParser:
    """An argument parser with the flags every recipe shares; add recipe-specific flags to the returned parser.

    Flags: ``--model {models..., all}``, ``--epochs``, ``--max-batches`` (training batches per epoch, for smoke
    runs), ``--max-eval-batches`` (per evaluation set; defaults to ``--max-batches``), ``--batch-size``,
    ``--eval-batch-size`` (default: ``--batch-size``), ``--lr``, the solver (``--method``, ``--rtol``, ``--atol``,
    ``--adjoint/--no-adjoint``, ``--step-fraction`` or ``--step-size``, ``--compile {auto,on,off}``: see
    :func:`solver_from_args`), ``--adjoint-clip``, ``--seed``, ``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``),
    ``--out``, ``--checkpoint-dir``, ``--resume`` / ``--overwrite``, ``--threads`` (``torch.set_num_threads``),
    ``--workers`` (DataLoader worker processes), ``--progress/--no-progress``.

    Args:
        description: shown by ``--help``.
        models: the model names this recipe offers; ``all`` is added (it runs them in order and compares them).
        defaults: overrides of the shared defaults, keyed by destination (``batch_size``, ``lr``, ``epochs``,
            ``out``, ``model``, ...). ``model`` defaults to ``"all"``.
        prog: program name for the usage line and the recorded command (``python -m recipes.<name>``).
        fixed_step: the step flag of fixed-grid methods: ``"fraction"`` (``--step-fraction``, a fraction of each gap:
            ODE-RNN recipes) or ``"size"`` (``--step-size``, in the solve's time units: continuous-depth layers).

    Raises:
        ValueError: for an empty ``models``, a default key that is not a shared flag, or an unknown ``fixed_step``.
    """
    if fixed_step not in ("fraction", "size"):
        raise ValueError(f"fixed_step must be 'fraction' or 'size', got {fixed_step!r}")
    models = tuple(models)
    if not models or "all" in models:
        raise ValueError(f"models must be a non-empty sequence of names without 'all', got {models!r}")
    d = dict(_DEFAULTS, model="all")
    for key, value in (defaults or {}).items():
        if key not in d:
            raise ValueError(f"unknown default {key!r}; shared flags are {sorted(d)}")
        d[key] = value
    p = RecipeParser(description=description, prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=(*models, "all"), default=d["model"],
                   help="which model to train; 'all' trains each in turn and writes a comparison")
    p.add_argument("--epochs", type=positive_int, default=d["epochs"], help="number of epochs")
    p.add_argument("--max-batches", type=positive_int, default=d["max_batches"],
                   help="at most this many training batches per epoch (smoke runs); default: all")
    p.add_argument("--max-eval-batches", type=positive_int, default=d["max_eval_batches"],
                   help="at most this many batches per evaluation set; default: --max-batches")
    p.add_argument("--batch-size", type=positive_int, default=d["batch_size"], help="training batch size")
    p.add_argument("--eval-batch-size", type=positive_int, default=d["eval_batch_size"],
                   help="evaluation batch size; default: --batch-size")
    p.add_argument("--lr", type=positive_float, default=d["lr"],
                   help="Adam learning rate (constant; see --lr-schedule)")
    p.add_argument("--lr-schedule", type=lr_schedule_arg, default=d["lr_schedule"], metavar="{official,E:LR,...}",
                   help="learning-rate schedule instead of the constant --lr: EPOCH:LR pairs (e.g. 0:1e-3,50:3e-3: "
                        "rate 1e-3 for the first 50 epochs, then 3e-3), or 'official' for the official code's "
                        "schedule of each model. At every later boundary a NEW Adam optimizer is created (its "
                        "moment estimates start again), as the official code does")
    p.add_argument("--paper-nfe-every", type=nonnegative_int, default=d["paper_nfe_every"], metavar="N",
                   help="every N epochs (and after epoch 1) also measure forward/backward NFE on a fixed training "
                        "batch and forward NFE on a fixed test batch with the paper's solver design "
                        "(odernn.paper_solver); columns paper_*_nfe of metrics.csv. 0: never. Training is unchanged")
    p.add_argument("--method", default=d["method"], help="ODE solver method (torchdiffeq names: dopri5, rk4, ...)")
    p.add_argument("--rtol", type=positive_float, default=d["rtol"], help="relative tolerance of adaptive methods")
    p.add_argument("--atol", type=positive_float, default=d["atol"], help="absolute tolerance of adaptive methods")
    p.add_argument("--adjoint", action=argparse.BooleanOptionalAction, default=d["adjoint"],
                   help="differentiate with the adjoint method (else backpropagate through the solver)")
    if fixed_step == "fraction":
        p.add_argument("--step-fraction", dest="step", type=positive_float, default=d["step"],
                       help="fixed-grid methods: step as a fraction of each gap (1 / steps per gap)")
    else:
        p.add_argument("--step-size", dest="step", type=positive_float, default=d["step"],
                       help="fixed-grid methods: step in the solve's time units")
    p.set_defaults(step_kind=fixed_step)
    p.add_argument("--compile", choices=("auto", "on", "off"), default=compile_default(d["compile"]),
                   help="compile the fused ODE-RNN solver loop with torch.compile (auto: where a compiler is found; "
                        "a first batch then takes about 20 s longer; the default 'auto' can be changed with the "
                        "environment variable ODERNN_COMPILE=auto|on|off)")
    p.add_argument("--adjoint-clip", type=positive_float, default=d["adjoint_clip"],
                   help="clip the per-sample l2 norm of the adjoint state at every observation (paper Sec. 4)")
    p.add_argument("--seed", type=int, default=d["seed"], help="random seed (model init, shuffling)")
    p.add_argument("--device", default=d["device"], help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", type=folder_path, default=d["out"],
                   help="output folder DIR; each model writes DIR/<model>/")
    p.add_argument("--checkpoint-dir", type=folder_path, default=d["checkpoint_dir"],
                   help="keep checkpoints in CKPT/<model>/checkpoint.pt instead of DIR/<model>/ (e.g. outside a "
                        "folder that is committed)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", default=d["resume"],
                       help="continue from the model's checkpoint where it exists (the settings must match it)")
    again.add_argument("--overwrite", action="store_true", default=d["overwrite"],
                       help="replace a run that already exists in DIR/<model>/ (without it, such a run is refused)")
    p.add_argument("--threads", type=positive_int, default=d["threads"], help="torch.set_num_threads")
    p.add_argument("--workers", type=nonnegative_int, default=d["workers"], help="DataLoader worker processes")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=d["progress"],
                   help="progress bars on stderr (default: only when stderr is a terminal)")
    return p


def add_hybrid_flags(p: argparse.ArgumentParser, *, xi0: float, xi0_help: str) -> argparse.ArgumentParser:
    """Flags shared by the ODE-RNN hybrid recipes: ``--grad-clip``, ``--xi0`` and ``--data-root``."""
    p.add_argument("--grad-clip", type=float, default=1.0,
                   help="clip the parameter-gradient norm after backward (official code: 1.0); 0 disables")
    p.add_argument("--xi0", type=positive_float, default=xi0, help=xi0_help)
    p.add_argument("--data-root", default=None, help="data root (default $ODERNN_DATA or the user cache)")
    return p


def xi_kwargs(name: str, xi0: float) -> dict:
    """GHBNODE's ``chi`` for an initial ``xi = softplus(chi) = xi0`` (other models: nothing)."""
    if name != "ghbnode":
        return {}
    if not xi0 > 0:
        raise ValueError(f"--xi0 must be positive (xi = softplus(chi) > 0), got {xi0!r}")
    return {"chi": xi0 + math.log(-math.expm1(-xi0))}


def expand_models(choice: str, models: Sequence[str]) -> list[str]:
    """``"all"`` -> every model, in order; a single name -> ``[name]``.

    Raises:
        ValueError: for a name that is not in ``models``.
    """
    if choice == "all":
        return list(models)
    if choice not in models:
        raise ValueError(f"unknown model {choice!r}; expected one of {list(models)} or 'all'")
    return [choice]


def run_cli(main: Callable[[Optional[Sequence[str]]], Any], argv: Optional[Sequence[str]] = None,
            prog: Optional[str] = None) -> None:
    """Run a recipe's ``main(argv)`` as a command: a :class:`RecipeError` prints ``<prog>: error: <message>`` on
    stderr and exits with status 2 (argparse's convention), without a traceback."""
    try:
        main(argv)
    except RecipeError as e:
        print(f"{prog or Path(sys.argv[0]).name}: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
