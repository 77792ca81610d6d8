"""A dataset whose values may have been standardised with training statistics."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["NormalizedDataset"]


class NormalizedDataset(Dataset):
    """Base of the benchmark datasets: ``normalize``, ``mean`` and ``std`` (training-split statistics) and
    :meth:`denormalize`. Subclasses set the three attributes."""

    normalize: bool
    mean: np.ndarray
    std: np.ndarray

    def denormalize(self, values: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation on values of shape ``(..., features)``; identity when ``normalize=False``."""
        if not self.normalize:
            return values
        mean = torch.as_tensor(self.mean, dtype=values.dtype, device=values.device)
        std = torch.as_tensor(self.std, dtype=values.dtype, device=values.device)
        return values * std + mean
