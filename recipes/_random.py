"""Random state: seeding every global generator, and capturing / restoring all of them for exact resumes.

:func:`rng_state` returns the state as tensors and JSON numbers only, so a checkpoint that holds it loads with
``torch.load(weights_only=True)`` (no pickled Python objects).
"""

from __future__ import annotations

import random
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["seed_everything", "rng_state", "set_rng_state"]


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's (CPU and all CUDA devices) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global random state: python, numpy, torch CPU and (if CUDA is initialised) all CUDA devices.

    Returns:
        ``{"tensors": {name: Tensor | list[Tensor]}, "numbers": {name: JSON value}}``: the Mersenne-Twister keys of
        python (625,) and numpy (624,) as int64 tensors, torch's byte states as tensors, and the positions and cached
        Gaussians as numbers.
    """
    version, py_keys, py_gauss = random.getstate()
    name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors: dict[str, Any] = {"python": torch.tensor(py_keys, dtype=torch.int64),
                               "numpy": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
                               "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = list(torch.cuda.get_rng_state_all())
    numbers = {"python_version": int(version), "python_gauss": py_gauss, "numpy_name": str(name),
               "numpy_pos": int(np_pos), "numpy_has_gauss": int(np_has_gauss), "numpy_gauss": float(np_gauss)}
    return {"tensors": tensors, "numbers": numbers}


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned.

    Raises:
        KeyError: if a part of the state is missing.
    """
    t, n = state["tensors"], state["numbers"]
    random.setstate((n["python_version"], tuple(int(v) for v in t["python"].tolist()), n["python_gauss"]))
    np.random.set_state((n["numpy_name"], t["numpy"].numpy().astype(np.uint32), n["numpy_pos"],
                         n["numpy_has_gauss"], n["numpy_gauss"]))
    torch.set_rng_state(t["torch"].cpu())
    if "cuda" in t and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in t["cuda"]])
