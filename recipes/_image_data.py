"""Image data of the MNIST and CIFAR10 recipes: verified files read into uint8 tensors, offline.

* :func:`load_mnist`: the four ``idx`` files of torchvision's raw layout, ``<root>/mnist/MNIST/raw``.
* :func:`load_cifar10`: the JPEG copy ``<root>/cifar10/cifar10_jpeg_q75/<split>.tar.gz`` (decoded once with PIL and
  cached as a uint8 tensor file under :func:`cache_dir`), else the original batches read by torchvision.

Every file read is first checked against the SHA-256 registered in :mod:`odernn.data` (a flipped label or pixel
raises :class:`odernn.data.ChecksumError`); missing registered files are downloaded from the registered sources when
``download`` is true. The original CIFAR10 batches are not in odernn's registry: torchvision checks their MD5 sums.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import Tensor
from torch.utils.data import Dataset

from odernn.data import DataFile, data_root, default_cache_dir, ensure_dataset, registered_files

from ._files import atomic_save

__all__ = ["UInt8Images", "cache_dir", "load_mnist", "load_cifar10", "read_cifar10_jpeg", "CIFAR10_CLASSES",
           "CIFAR10_JPEG_NOTE"]


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
    return default_cache_dir()


def _verified(name: str, suffixes: Iterable[str], *, root: Optional[str], download: bool,
              files: Optional[Iterable[DataFile]] = None) -> dict[str, Path]:
    """Verify (and, with ``download``, fetch) the registered files of dataset ``name`` whose paths end with one of
    ``suffixes``; ``{suffix: path}``. ``files`` replaces the registered entries (private mirrors, tests)."""
    entries = [f for f in (files if files is not None else registered_files(name))
               if any(f.path.endswith(s) for s in suffixes)]
    found = {s for s in suffixes for f in entries if f.path.endswith(s)}
    if found != set(suffixes):
        raise ValueError(f"no registered {name} file ends with {sorted(set(suffixes) - found)}")
    ensure_dataset(name, root=root, download=download, files=entries)
    base = data_root(root)
    return {s: base / f.path for s in suffixes for f in entries if f.path.endswith(s)}


def load_mnist(split: str, *, root: Optional[str] = None, download: bool = True) -> UInt8Images:
    """MNIST as uint8 tensors, read from ``<root>/mnist/MNIST/raw`` (torchvision's raw layout) after checking the
    registered SHA-256 of the split's two files.

    The data root is ``root``, else ``$ODERNN_DATA``, else the user cache folder. Missing files are downloaded from
    the registered sources when ``download`` is true (needs a network).

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).

    Returns:
        :class:`UInt8Images` of shape (N, 1, 28, 28).

    Raises:
        odernn.data.ChecksumError: a file differs from the registered one. odernn.data.MissingDataError: a file is
        missing and could not be downloaded.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    import torchvision

    prefix = "train" if split == "train" else "t10k"
    _verified("mnist", (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"), root=root, download=download)
    ds = torchvision.datasets.MNIST(str(data_root(root) / "mnist"), train=split == "train", download=False)
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


def _cached_jpeg_split(archive: Path, digest: str, cache: Path) -> tuple[Tensor, Tensor]:
    """Decode once, then reuse ``<cache>/cifar10_jpeg_q75/<split>-<key>.pt`` (key from the archive's verified
    SHA-256 and the reader version, so a changed archive is decoded again)."""
    path = cache / "cifar10_jpeg_q75" / f"{archive.name.split('.')[0]}-v2-{digest[:16]}.pt"
    if path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            return blob["images"], blob["labels"]
        except Exception:  # a damaged cache file is decoded again
            pass
    images, labels = read_cifar10_jpeg(archive)
    atomic_save({"images": images, "labels": labels}, path)
    return images, labels


def load_cifar10(split: str, *, root: Optional[str] = None, download: bool = True,
                 cache: Optional[str | os.PathLike] = None,
                 files: Optional[Iterable[DataFile]] = None) -> tuple[UInt8Images, str]:
    """CIFAR10 as uint8 tensors, from the first source that exists.

    1. ``<root>/cifar10/cifar10_jpeg_q75/<split>.tar.gz``: the lossy JPEG copy (quality 75), checked against its
       registered SHA-256, decoded with PIL on first use and cached as a uint8 tensor file under ``cache``
       (default :func:`cache_dir`).
    2. ``<root>/cifar10/cifar-10-batches-py``: the original batches, read (and MD5-checked) by torchvision.
    3. With ``download``: torchvision downloads the original batches into ``<root>/cifar10`` (needs a network).

    Args:
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000).
        files: replaces the registered entries of the JPEG copy (a private mirror, tests).

    Returns:
        ``(dataset, source)``: :class:`UInt8Images` (N, 3, 32, 32) and ``"jpeg_q75"`` or ``"original"``.

    Raises:
        odernn.data.ChecksumError: the JPEG archive differs from the registered one.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = data_root(root) / "cifar10"
    suffix = f"cifar10_jpeg_q75/{split}.tar.gz"
    archive = folder / suffix
    if archive.exists():
        _verified("cifar10", (suffix,), root=root, download=False, files=files)
        entries = files if files is not None else registered_files("cifar10")
        digest = next(f.sha256 for f in entries if f.path.endswith(suffix))
        images, labels = _cached_jpeg_split(archive, digest, Path(cache) if cache is not None else cache_dir())
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
