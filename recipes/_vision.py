"""Image classifiers with a continuous-depth ODE layer (paper Sec. 5.2, Appendix E.3) and offline image readers.

Shared by ``recipes.mnist`` and ``recipes.cifar10``. Everything here is plain PyTorch on top of the odernn core:

* :class:`ConvField`: the vector field ``f`` of Appendix E.3, three convolutions each preceded by *tpad* (a channel
  filled with the time ``t`` is concatenated to the input): ``tpad -> conv_h(1x1) -> ReLU -> tpad -> conv_h(3x3) ->
  ReLU -> tpad -> conv_out(1x1)``.
* :class:`InitialVelocity`: ``conv_h(1x1) -> LeakyReLU(0.3) -> conv_h(3x3) -> LeakyReLU(0.3) -> conv_(2n-c)(1x1)``
  on the image; its ``2n - c`` output channels are the ``p = n - c`` augmented channels of the position and the
  ``n`` channels of the initial velocity/momentum (footnote 5: the velocity has the shape of the augmented state).
* :class:`ImageODEClassifier`: image -> initial state -> :class:`odernn.ODEBlock` over t in [0, 1] -> ``fc_10`` on
  the ``n x H x W`` position.
* :func:`load_mnist` and :func:`load_cifar10`: tensors of uint8 images read offline from the data root (MNIST in
  torchvision's raw layout; CIFAR10 from the lossy JPEG archives, decoded once and cached under the user cache
  folder), with torchvision's downloader as the fallback where a network exists.

Table 3 sizes (n = state channels, h = hidden channels) are in :data:`SPECS`; the parameter counts they give are
within 2% of the paper's (most are exact; see ``tests/test_recipes_other.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

import odernn

from . import _common

__all__ = [
    "MODELS", "SPECS", "PAPER_PARAMS", "ImageSpec", "ConvField", "InitialVelocity", "ImageODEClassifier",
    "build_image_model", "UInt8Images", "load_mnist", "load_cifar10", "read_cifar10_jpeg", "CIFAR10_CLASSES",
    "cache_dir", "param_table", "CIFAR10_JPEG_NOTE",
    "pyplot", "save_figure", "image_spec", "image_parser", "image_main", "write_tolerance_sweep",
]

MODELS = ("node", "anode", "sonode", "hbnode", "ghbnode")


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """Sizes of one image classifier (Table 3 and footnote 5).

    Attributes:
        in_channels: channels ``c`` of the image.
        image_size: height = width of the image.
        n: channels of the position ``h`` (image channels plus ``p`` augmented ones).
        h: hidden channels of the convolutions.
    """

    in_channels: int
    image_size: int
    n: int
    h: int

    @property
    def augment(self) -> int:
        """Augmented channels ``p = n - c`` (footnote 5)."""
        return self.n - self.in_channels


SPECS: dict[str, dict[str, ImageSpec]] = {
    "mnist": {
        "node": ImageSpec(1, 28, 1, 92),
        "anode": ImageSpec(1, 28, 6, 64),
        "sonode": ImageSpec(1, 28, 5, 50),
        "hbnode": ImageSpec(1, 28, 5, 50),
        "ghbnode": ImageSpec(1, 28, 6, 45),
    },
    "cifar10": {
        "node": ImageSpec(3, 32, 3, 125),
        "anode": ImageSpec(3, 32, 13, 64),
        "sonode": ImageSpec(3, 32, 12, 50),
        "hbnode": ImageSpec(3, 32, 12, 51),
        "ghbnode": ImageSpec(3, 32, 12, 51),
    },
}

#: Parameter counts of Table 2/3 of the paper.
PAPER_PARAMS: dict[str, dict[str, int]] = {
    "mnist": {"node": 85_315, "anode": 85_462, "sonode": 86_179, "hbnode": 85_931, "ghbnode": 85_235},
    "cifar10": {"node": 173_611, "anode": 172_452, "sonode": 171_635, "hbnode": 172_916, "ghbnode": 172_916},
}


def _tpad(t: Tensor, x: Tensor) -> Tensor:
    """Concatenate a channel filled with ``t`` to ``x`` (batch, c, H, W) -> (batch, c + 1, H, W).

    ``t`` is a scalar tensor (a plain solve) or a (batch,) tensor (one time per sample).
    """
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    tt = t.reshape(-1, 1, 1, 1).expand(x.shape[0], 1, x.shape[2], x.shape[3])
    return torch.cat([x, tt], dim=1)


class ConvField(nn.Module):
    """Time-dependent convolutional vector field of Appendix E.3 (call as ``field(t, x)``).

    ``tpad -> conv_h(1x1) -> ReLU -> tpad -> conv_h(3x3, padding 1) -> ReLU -> tpad -> conv_out(1x1)``.

    Args:
        in_channels: channels ``n*`` of the input.
        hidden: hidden channels ``h``.
        out_channels: channels of the output (``n``; ``n + p`` for ANODE, whose Table 3 ``n`` already counts them).

    Shapes:
        ``forward(t, x)``: t scalar or (batch,), x (batch, in_channels, H, W) -> (batch, out_channels, H, W).
    """

    def __init__(self, in_channels: int, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels + 1, hidden, 1)
        self.conv2 = nn.Conv2d(hidden + 1, hidden, 3, padding=1)
        self.conv3 = nn.Conv2d(hidden + 1, out_channels, 1)
        self.act = nn.ReLU()

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        out = self.act(self.conv1(_tpad(t, x)))
        out = self.act(self.conv2(_tpad(t, out)))
        return self.conv3(_tpad(t, out))


class InitialVelocity(nn.Module):
    """Initial position and velocity of the second-order image models (Appendix E.3).

    ``conv_h(1x1) -> LeakyReLU(0.3) -> conv_h(3x3, padding 1) -> LeakyReLU(0.3) -> conv_(2n-c)(1x1)``; the output
    is concatenated after the image, giving ``2n`` channels: the position ``h0 = [image, p augmented channels]`` and
    the velocity ``v0`` (``n`` channels).

    Args:
        in_channels: image channels ``c``.
        hidden: hidden channels ``h``.
        n: channels of the position.

    Shapes:
        ``forward(x)``: (batch, c, H, W) -> ``(h0, v0)``, each (batch, n, H, W).
    """

    def __init__(self, in_channels: int, hidden: int, n: int) -> None:
        super().__init__()
        if n < in_channels:
            raise ValueError(f"n must be >= in_channels, got n={n}, in_channels={in_channels}")
        self.n = n
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1), nn.LeakyReLU(0.3),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.LeakyReLU(0.3),
            nn.Conv2d(hidden, 2 * n - in_channels, 1),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = torch.cat([x, self.net(x)], dim=1)  # (B, 2n, H, W)
        return z[:, :self.n], z[:, self.n:]


class ImageODEClassifier(nn.Module):
    """Image classifier with one continuous-depth layer over t in [0, 1] (paper Sec. 5.2).

    * NODE: ``h0 = x``; ANODE: ``h0 = [x, 0]`` with ``p`` zero channels (the field sees and returns all ``n``);
    * SONODE, HBNODE, GHBNODE: ``(h0, v0)`` from :class:`InitialVelocity`; SONODE's field sees ``[h, v]``
      (``n* = 2n``), the heavy-ball fields see ``h``.

    The readout ``fc_10`` sees the position ``h(1)`` flattened (``n x H x W`` values).

    Args:
        model: ``"node" | "anode" | "sonode" | "hbnode" | "ghbnode"``.
        spec: sizes (:data:`SPECS`).
        num_classes: classes of the readout.
        rtol, atol, method, adjoint, max_steps: ODE solver settings (:class:`odernn.ODEBlock`).

    Shapes:
        ``forward(x)``: (batch, c, H, W) -> logits (batch, num_classes).
    """

    def __init__(self, model: str, spec: ImageSpec, *, num_classes: int = 10, rtol: float = 1e-5,
                 atol: float = 1e-5, method: str = "dopri5", adjoint: bool = True, max_steps: int = 10_000) -> None:
        super().__init__()
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")
        if model == "node" and spec.n != spec.in_channels:
            raise ValueError(f"NODE has no augmented channels: n must equal in_channels, got {spec}")
        self.model = model
        self.spec = spec
        n, h, c = spec.n, spec.h, spec.in_channels
        if model in ("node", "anode"):
            self.initial = None
            field = ConvField(n, h, n)
            dyn = odernn.NODE(field, time_dependent=True) if model == "node" else \
                odernn.ANODE(field, spec.augment, time_dependent=True)
        else:
            self.initial = InitialVelocity(c, h, n)
            if model == "sonode":
                dyn = odernn.SONODE(ConvField(2 * n, h, n), time_dependent=True)
            elif model == "hbnode":
                dyn = odernn.HBNODE(ConvField(n, h, n), time_dependent=True)
            else:
                dyn = odernn.GHBNODE(ConvField(n, h, n), time_dependent=True)
        self.block = odernn.ODEBlock(dyn, t0=0.0, t1=1.0, method=method, rtol=rtol, atol=atol, adjoint=adjoint,
                                     max_steps=max_steps)
        self.readout = nn.Linear(n * spec.image_size ** 2, num_classes)

    @property
    def dynamics(self) -> odernn.Dynamics:
        return self.block.dynamics

    def initial_state(self, x: Tensor) -> Tensor:
        """(batch, c, H, W) image -> (batch, state, H, W) initial ODE state."""
        if x.dim() != 4 or x.shape[1] != self.spec.in_channels:
            raise ValueError(f"expected images of shape (batch, {self.spec.in_channels}, H, W), got {tuple(x.shape)}")
        if self.initial is None:
            return self.dynamics.initial_state(x)
        h0, v0 = self.initial(x)
        return self.dynamics.initial_state(h0, v0)

    def features(self, x: Tensor) -> Tensor:
        """The position ``h(1)``: (batch, n, H, W)."""
        return self.dynamics.hidden(self.block(self.initial_state(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.features(x).flatten(1))


def build_image_model(dataset: str, model: str, **kwargs) -> ImageODEClassifier:
    """The Table 3 classifier for ``dataset`` (``"mnist" | "cifar10"``) and ``model``; kwargs go to the solver."""
    if dataset not in SPECS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(SPECS)}")
    return ImageODEClassifier(model, SPECS[dataset][model], **kwargs)


# ------------------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------------------

class UInt8Images(Dataset):
    """Images held as one uint8 tensor, returned as float in [0, 1] one at a time (no PIL, no per-item decoding).

    Args:
        images: (N, c, H, W) uint8.
        labels: (N,) int64.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a (N, c, H, W) uint8 tensor, got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i].float().div_(255.0), self.labels[i]

    def subset(self, k: Optional[int], *, seed: int = 0) -> "UInt8Images":
        """A seeded random subset of ``k`` images (all when ``k`` is None or >= len)."""
        if k is None or k >= len(self):
            return self
        if k < 1:
            raise ValueError(f"subset size must be >= 1, got {k}")
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:k].sort().values
        return UInt8Images(self.images[idx], self.labels[idx])


def cache_dir() -> Path:
    """Folder for decoded-image caches: ``$ODERNN_CACHE`` if set, else the user cache folder (``~/.cache/odernn``
    on Linux). Never inside the repository or the data root."""
    env = os.environ.get("ODERNN_CACHE")
    if env:
        return Path(env).expanduser()
    from odernn.data._root import default_cache_dir
    return default_cache_dir()


def _data_root(root: Optional[str]) -> Path:
    from odernn.data._root import data_root
    return data_root(root)


def load_mnist(split: str, *, root: Optional[str] = None, download: bool = True) -> UInt8Images:
    """MNIST as uint8 tensors, read with torchvision from ``<root>/mnist/MNIST/raw`` (torchvision's raw layout).

    The data root is ``root``, else ``$ODERNN_DATA``, else the user cache folder. When the raw files are missing
    and ``download`` is true, torchvision downloads them there (needs a network).

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).

    Returns:
        :class:`UInt8Images` of shape (N, 1, 28, 28).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    import torchvision
    folder = _data_root(root) / "mnist"
    raw = folder / "MNIST" / "raw"
    prefix = "train" if split == "train" else "t10k"
    have = (raw / f"{prefix}-images-idx3-ubyte").exists() or (raw / f"{prefix}-images-idx3-ubyte.gz").exists()
    try:
        ds = torchvision.datasets.MNIST(str(folder), train=split == "train", download=download and not have)
    except (RuntimeError, OSError) as e:
        raise FileNotFoundError(f"MNIST not found in {raw} (torchvision raw layout) and could not be downloaded "
                                f"({e}); set ODERNN_DATA to a folder holding mnist/MNIST/raw/*-ubyte") from e
    return UInt8Images(ds.data.unsqueeze(1).contiguous(), ds.targets)


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

#: Printed by the CIFAR10 recipe and written into its summary when the JPEG copy is used.
CIFAR10_JPEG_NOTE = ("CIFAR10 read from the JPEG copy (quality 75) in the data root: this copy is LOSSY, so accuracies "
                     "are not exactly comparable with results on the original CIFAR10 images")


def read_cifar10_jpeg(archive: str | os.PathLike, *, limit: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Decode CIFAR10 JPEG members ``<split>/<class>/NNNN.jpg`` of a ``.tar.gz`` archive with PIL.

    Args:
        archive: path of ``train.tar.gz`` or ``test.tar.gz``.
        limit: decode only the first ``limit`` image members in archive order (for quick checks).

    Returns:
        ``(images, labels)``: (N, 3, 32, 32) uint8 and (N,) int64, sorted by member name (class, then file) so the
        order does not depend on how the archive was written.

    Raises:
        ValueError: on a member whose class folder is unknown or whose image is not 32x32 RGB.
    """
    import numpy as np
    from PIL import Image

    names, arrays, labels = [], [], []
    with tarfile.open(archive, mode="r:gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.lower().endswith((".jpg", ".jpeg")):
                continue
            parts = Path(member.name).parts
            if len(parts) < 2 or parts[-2] not in CIFAR10_CLASSES:
                raise ValueError(f"{archive}: member {member.name!r} is not in a class folder {CIFAR10_CLASSES}")
            data = tar.extractfile(member).read()
            with Image.open(io.BytesIO(data)) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
            if arr.shape != (32, 32, 3):
                raise ValueError(f"{archive}: member {member.name!r} has shape {arr.shape}, expected (32, 32, 3)")
            names.append(member.name)
            arrays.append(arr)
            labels.append(CIFAR10_CLASSES.index(parts[-2]))
            if limit is not None and len(names) >= limit:
                break
    if not names:
        raise ValueError(f"{archive} holds no .jpg members")
    order = sorted(range(len(names)), key=names.__getitem__)
    images = torch.from_numpy(np.stack([arrays[i] for i in order])).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor([labels[i] for i in order], dtype=torch.int64)


def _cached_jpeg_split(archive: Path, cache: Path) -> tuple[Tensor, Tensor]:
    """Decode once, then reuse ``<cache>/cifar10_jpeg_q75/<split>-<key>.pt`` (key from the archive's size and
    modification time and the reader version, so a changed archive is decoded again)."""
    st = archive.stat()
    key = hashlib.sha256(f"v1|{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    path = cache / "cifar10_jpeg_q75" / f"{archive.name.split('.')[0]}-{key}.pt"
    if path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            return blob["images"], blob["labels"]
        except Exception:  # a damaged cache file is decoded again
            pass
    images, labels = read_cifar10_jpeg(archive)
    _common.atomic_save({"images": images, "labels": labels}, path)
    return images, labels


def load_cifar10(split: str, *, root: Optional[str] = None, download: bool = True,
                 cache: Optional[str | os.PathLike] = None) -> tuple[UInt8Images, str]:
    """CIFAR10 as uint8 tensors, from the first source that exists.

    1. ``<root>/cifar10/cifar10_jpeg_q75/<split>.tar.gz``: the lossy JPEG copy (quality 75). Decoded with PIL on
       first use and cached as a uint8 tensor file under ``cache`` (default :func:`cache_dir`).
    2. ``<root>/cifar10/cifar-10-batches-py``: the original batches, read by torchvision.
    3. With ``download``: torchvision downloads the original batches into ``<root>/cifar10`` (needs a network).

    Args:
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000).

    Returns:
        ``(dataset, source)``: :class:`UInt8Images` (N, 3, 32, 32) and ``"jpeg_q75"`` or ``"original"``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = _data_root(root) / "cifar10"
    archive = folder / "cifar10_jpeg_q75" / f"{split}.tar.gz"
    if archive.exists():
        images, labels = _cached_jpeg_split(archive, Path(cache) if cache is not None else cache_dir())
        return UInt8Images(images, labels), "jpeg_q75"
    import torchvision
    have = (folder / "cifar-10-batches-py").is_dir()
    try:
        ds = torchvision.datasets.CIFAR10(str(folder), train=split == "train", download=download and not have)
    except (RuntimeError, OSError) as e:
        raise FileNotFoundError(f"CIFAR10 not found in {folder} (neither cifar10_jpeg_q75/{split}.tar.gz nor "
                                f"cifar-10-batches-py) and could not be downloaded ({e}); set ODERNN_DATA") from e
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return UInt8Images(images, torch.tensor(ds.targets, dtype=torch.int64)), "original"


def param_table(dataset: str, models: Sequence[str] = MODELS) -> dict[str, tuple[int, int]]:
    """``{model: (ours, paper)}`` parameter counts for ``dataset``."""
    return {m: (_common.count_parameters(build_image_model(dataset, m)), PAPER_PARAMS[dataset][m]) for m in models}


# ------------------------------------------------------------------------------------------------------------------
# Figures (shared by the point-cloud, image, Silverbox and Rosenbrock/Beale recipes)
# ------------------------------------------------------------------------------------------------------------------

def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (recipes never open windows)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Render ``fig`` to PNG and write it atomically to ``path``; closes the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    return _common.atomic_write_bytes(buf.getvalue(), path)


# ------------------------------------------------------------------------------------------------------------------
# The MNIST / CIFAR10 recipe driver (Sec. 5.2, Figs. 1, 5, 6)
# ------------------------------------------------------------------------------------------------------------------

_LABELS = {"node": "NODE", "anode": "ANODE", "sonode": "SONODE", "hbnode": "HBNODE", "ghbnode": "GHBNODE"}


def _ce_and_accuracy(model: nn.Module, batch) -> dict:
    x, y = batch
    logits = model(x)
    return {"loss": nn.functional.cross_entropy(logits, y),
            "accuracy": (logits.argmax(dim=1) == y).float().mean()}


def image_spec(dataset: str) -> "_common.RecipeSpec":
    """The :class:`recipes._common.RecipeSpec` of the ``dataset`` image recipe (``"mnist" | "cifar10"``)."""
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
        return build_image_model(dataset, name, rtol=args.rtol, atol=args.atol, adjoint=args.adjoint)

    def describe(name: str, args) -> dict:
        s = SPECS[dataset][name]
        return {"n": s.n, "h": s.h, "augmented_channels_p": s.augment, "in_channels": s.in_channels,
                "image_size": s.image_size, "paper_num_params": PAPER_PARAMS[dataset][name], **source}

    return _common.RecipeSpec(name=dataset, models=MODELS, build_model=build, datasets=datasets,
                              train_loss=_ce_and_accuracy, eval_loss=_ce_and_accuracy, describe=describe)


def image_parser(dataset: str, description: str) -> argparse.ArgumentParser:
    """Shared flags plus ``--subset``, ``--valid-size``, ``--tolerances``, ``--data-root``, ``--no-download``."""
    parser = _common.base_parser(description, models=MODELS, prog=f"python -m recipes.{dataset}",
                                 defaults={"batch_size": 64, "lr": 1e-3, "epochs": 40, "rtol": 1e-5, "atol": 1e-5,
                                           "out": f"runs/{dataset}"})
    parser.add_argument("--subset", type=int, default=None,
                        help="train on a seeded random subset of this many training images and evaluate on as many "
                             "test images (smoke runs)")
    parser.add_argument("--valid-size", type=int, default=0,
                        help="hold out this many training images as a validation set (the paper uses none)")
    parser.add_argument("--tolerances", type=float, nargs="+", default=None,
                        help="Fig. 6 sweep: train every model at each tolerance (rtol = atol = tol) into "
                             "DIR/tol_<tol>/ and write DIR/tolerance_sweep.csv/.png")
    parser.add_argument("--data-root", default=None, help="data root (default $ODERNN_DATA, else the user cache)")
    parser.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                        help="let torchvision download the data when it is not in the data root")
    return parser


def image_main(dataset: str, description: str, argv: Optional[Sequence[str]] = None) -> dict:
    """Parse the command line and run the ``dataset`` recipe (one tolerance, or the ``--tolerances`` sweep)."""
    args = image_parser(dataset, description).parse_args(argv)
    spec = image_spec(dataset)
    if not args.tolerances:
        return _common.run_recipe(spec, args)
    out = Path(args.out)
    results: dict = {}
    for tol in args.tolerances:
        if not tol > 0:
            raise SystemExit(f"--tolerances must be positive, got {tol}")
        sub = argparse.Namespace(**{**vars(args), "rtol": tol, "atol": tol, "out": str(out / f"tol_{tol:g}")})
        results[tol] = _common.run_recipe(spec, sub)
    write_tolerance_sweep(out, args.tolerances, _common.expand_models(args.model, MODELS), dataset)
    print(f"tolerance sweep written to {out / 'tolerance_sweep.csv'} and {out / 'tolerance_sweep.png'}")
    return results


def write_tolerance_sweep(out: Path, tolerances: Sequence[float], models: Sequence[str], title: str) -> None:
    """Collect ``out/tol_<tol>/<model>/metrics.csv`` into ``tolerance_sweep.csv`` (mean NFE per training batch over
    the epochs, final test accuracy) and draw Fig. 6: backward against forward NFE, coloured by tolerance."""
    import math

    rows = []
    for tol in tolerances:
        for m in models:
            path = out / f"tol_{tol:g}" / m / "metrics.csv"
            if not path.exists():
                continue
            mr = _common.read_csv(path)
            if not mr:
                continue
            mean = lambda k: sum(r[k] for r in mr) / len(mr)  # noqa: E731
            rows.append({"tolerance": tol, "model": m, "epochs": mr[-1]["epoch"], "forward_nfe": mean("forward_nfe"),
                         "backward_nfe": mean("backward_nfe"), "test_nfe": mean("test_nfe"),
                         "seconds_per_epoch": mean("seconds"), "final_test_accuracy": mr[-1].get("test_accuracy"),
                         "final_train_loss": mr[-1]["train_loss"]})
    _common.atomic_write_csv(rows, out / "tolerance_sweep.csv")
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
