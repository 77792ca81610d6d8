"""The MNIST / CIFAR10 recipe driver (paper Sec. 5.2, Figs. 1, 5, 6): flags, datasets, losses, tolerance sweep.

Shared by :mod:`recipes.mnist` and :mod:`recipes.cifar10`; the models are in :mod:`recipes._image_models`, the data
readers in :mod:`recipes._image_data`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from ._cli import base_parser, expand_models, nonnegative_int, positive_float, positive_int, solver_from_args
from ._driver import RecipeSpec, run_recipe
from ._files import atomic_write_csv, read_csv
from ._image_data import CIFAR10_JPEG_NOTE, UInt8Images, load_cifar10, load_mnist
from ._image_models import MODELS, PAPER_PARAMS, SPECS, build_image_model
from ._report import pyplot, save_figure

__all__ = ["image_spec", "image_parser", "image_main", "write_tolerance_sweep"]

_LABELS = {"node": "NODE", "anode": "ANODE", "sonode": "SONODE", "hbnode": "HBNODE", "ghbnode": "GHBNODE"}


def _ce_and_accuracy(model: nn.Module, batch) -> dict:
    x, y = batch
    logits = model(x)
    return {"loss": nn.functional.cross_entropy(logits, y),
            "accuracy": (logits.argmax(dim=1) == y).float().mean()}


def image_spec(dataset: str) -> RecipeSpec:
    """The :class:`recipes._driver.RecipeSpec` of the ``dataset`` image recipe (``"mnist" | "cifar10"``)."""
    if dataset not in SPECS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(SPECS)}")
    source: dict = {}

    def datasets(args) -> dict:
        if dataset == "mnist":
            train, test = (load_mnist(s, root=args.data_root, download=args.download) for s in ("train", "test"))
            source["data"] = "MNIST (torchvision raw layout)"
        else:
            (train, src), (test, _) = (load_cifar10(s, root=args.data_root, download=args.download)
                                       for s in ("train", "test"))
            source["data"] = CIFAR10_JPEG_NOTE if src == "jpeg_q75" else "CIFAR10 (original batches, torchvision)"
            if src == "jpeg_q75":
                print(f"NOTE: {CIFAR10_JPEG_NOTE}", flush=True)
        if args.valid_size:
            if not 0 < args.valid_size < len(train):
                raise ValueError(f"--valid-size must be in [0, {len(train)}), got {args.valid_size}")
            perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(12345))
            v_idx, t_idx = perm[:args.valid_size].sort().values, perm[args.valid_size:].sort().values
            valid = UInt8Images(train.images[v_idx], train.labels[v_idx])
            train = UInt8Images(train.images[t_idx], train.labels[t_idx])
        else:
            valid = UInt8Images(train.images[:0], train.labels[:0])
        if args.subset:
            train = train.subset(args.subset, seed=args.seed)
            test = test.subset(args.subset, seed=args.seed + 1)
            valid = valid.subset(args.subset, seed=args.seed + 2)
        source["sizes"] = {"train": len(train), "valid": len(valid), "test": len(test)}
        return {"train": train, "valid": valid, "test": test}

    def build(name: str, args) -> nn.Module:
        return build_image_model(dataset, name, solver=solver_from_args(args))

    def describe(name: str, args) -> dict:
        s = SPECS[dataset][name]
        return {"n": s.n, "h": s.h, "augmented_channels_p": s.augment, "in_channels": s.in_channels,
                "image_size": s.image_size, "paper_num_params": PAPER_PARAMS[dataset][name], **source}

    return RecipeSpec(name=dataset, models=MODELS, build_model=build, datasets=datasets,
                      train_loss=_ce_and_accuracy, eval_loss=_ce_and_accuracy, describe=describe)


def image_parser(dataset: str, description: str) -> argparse.ArgumentParser:
    """Shared flags plus ``--subset``, ``--valid-size``, ``--tolerances``, ``--data-root``, ``--no-download``."""
    parser = base_parser(description, models=MODELS, prog=f"python -m recipes.{dataset}",
                         defaults={"batch_size": 64, "lr": 1e-3, "epochs": 40, "rtol": 1e-5, "atol": 1e-5,
                                   "out": f"runs/{dataset}"})
    parser.add_argument("--subset", type=positive_int, default=None,
                        help="train on a seeded random subset of this many training images and evaluate on as many "
                             "test images (smoke runs)")
    parser.add_argument("--valid-size", type=nonnegative_int, default=0,
                        help="hold out this many training images as a validation set (the paper uses none)")
    parser.add_argument("--tolerances", type=positive_float, nargs="+", default=None,
                        help="Fig. 6 sweep: train every model at each tolerance (rtol = atol = tol) into "
                             "DIR/tol_<tol>/ and write DIR/tolerance_sweep.csv/.png")
    parser.add_argument("--data-root", default=None, help="data root (default $ODERNN_DATA, else the user cache)")
    parser.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                        help="download missing files from their registered sources (MNIST, CIFAR10's original batches)")
    return parser


def image_main(dataset: str, description: str, argv: Optional[Sequence[str]] = None) -> dict:
    """Parse the command line and run the ``dataset`` recipe (one tolerance, or the ``--tolerances`` sweep)."""
    args = image_parser(dataset, description).parse_args(argv)
    spec = image_spec(dataset)
    if not args.tolerances:
        return run_recipe(spec, args)
    out = Path(args.out)
    results: dict = {}
    for tol in args.tolerances:
        ckpt = args.checkpoint_dir and str(Path(args.checkpoint_dir) / f"tol_{tol:g}")
        sub = argparse.Namespace(**{**vars(args), "rtol": tol, "atol": tol, "out": str(out / f"tol_{tol:g}"),
                                    "checkpoint_dir": ckpt})
        results[tol] = run_recipe(spec, sub)
    write_tolerance_sweep(out, args.tolerances, expand_models(args.model, MODELS), dataset)
    print(f"tolerance sweep written to {out / 'tolerance_sweep.csv'} and {out / 'tolerance_sweep.png'}")
    return results


def write_tolerance_sweep(out: Path, tolerances: Sequence[float], models: Sequence[str], title: str) -> None:
    """Collect ``out/tol_<tol>/<model>/metrics.csv`` into ``tolerance_sweep.csv`` (mean NFE per training batch over
    the epochs, final test accuracy) and draw Fig. 6: backward against forward NFE, coloured by tolerance."""

    rows = []
    for tol in tolerances:
        for m in models:
            path = out / f"tol_{tol:g}" / m / "metrics.csv"
            if not path.exists():
                continue
            mr = read_csv(path)
            if not mr:
                continue
            mean = lambda k: sum(r[k] for r in mr) / len(mr)  # noqa: E731
            rows.append({"tolerance": tol, "model": m, "epochs": mr[-1]["epoch"], "forward_nfe": mean("forward_nfe"),
                         "backward_nfe": mean("backward_nfe"), "test_nfe": mean("test_nfe"),
                         "seconds_per_epoch": mean("seconds"), "final_test_accuracy": mr[-1].get("test_accuracy"),
                         "final_train_loss": mr[-1]["train_loss"]})
    atomic_write_csv(rows, out / "tolerance_sweep.csv")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    markers = dict(zip(MODELS, "osD^v"))
    logs = [math.log10(t) for t in tolerances]
    lo, hi = min(logs), max(logs)
    for m in models:
        pts = sorted((r for r in rows if r["model"] == m), key=lambda r: r["tolerance"])
        if not pts:
            continue
        ax.plot([r["forward_nfe"] for r in pts], [r["backward_nfe"] for r in pts], color="0.7", lw=1, zorder=1)
        sc = ax.scatter([r["forward_nfe"] for r in pts], [r["backward_nfe"] for r in pts],
                        c=[math.log10(r["tolerance"]) for r in pts], cmap="viridis", vmin=lo, vmax=hi if hi > lo else
                        lo + 1, marker=markers[m], s=60, edgecolors="k", label=_LABELS[m], zorder=2)
    if rows:
        fig.colorbar(sc, ax=ax, label="log10 tolerance")
    ax.set_xlabel("forward NFE per training batch")
    ax.set_ylabel("backward NFE per training batch")
    ax.set_title(f"{title}: NFE vs tolerance (paper Fig. 6)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out / "tolerance_sweep.png")
