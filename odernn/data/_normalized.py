"""One normalisation for every benchmark loader: ``normalize=False`` (raw values, the default), ``True``
(standardise with training statistics) or a :class:`Normalization` (centre and/or scale by a chosen factor)."""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import Literal, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["Normalization", "NormalizedDataset", "NormalizeLike", "resolve_normalize"]


@dataclass(frozen=True)
class Normalization:
    """How a loader transforms values: ``(v - mean) / std``, ``(v - mean) * scale``, or a part of it.

    The statistics (``mean``, ``std``) are always those of the training split (of the whole record for a
    dataset without splits), so no test data leaks into training.

    Attributes:
        center: Subtract the training mean.
        scale: ``"std"`` divides by the training standard deviation (1 where it is 0); a positive number multiplies
            by it; ``None`` leaves the scale alone.

    Example:
        >>> silverbox(normalize=Normalization(center=True, scale=100.0))  # the reference code's scaling
    """

    center: bool = True
    scale: Union[Literal["std"], float, None] = "std"

    def __post_init__(self) -> None:
        if not isinstance(self.center, (bool, np.bool_)):
            raise TypeError(f"center must be a bool, got {type(self.center).__name__}")
        if self.scale is None or self.scale == "std":
            return
        if isinstance(self.scale, (bool, np.bool_)) or not isinstance(self.scale, numbers.Real):
            raise TypeError(f"scale must be 'std', a positive number or None, got {self.scale!r}")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be 'std', a positive number or None, got {self.scale!r}")


NormalizeLike = Union[bool, Normalization]


def resolve_normalize(normalize: NormalizeLike, center: bool | None = None,
                      scale: float | None = None) -> Normalization | None:
    """The :class:`Normalization` a loader's ``normalize=`` asks for (``None``: raw values).

    ``center=``/``scale=`` are the old Silverbox keywords, still accepted with a ``DeprecationWarning`` when
    ``normalize`` is left at its default.
    """
    if center is not None or scale is not None:
        if normalize is not False:
            raise ValueError("pass either normalize= or the deprecated center=/scale=, not both")
        warnings.warn("center=/scale= are deprecated; pass normalize=Normalization(center=..., scale=...)",
                      DeprecationWarning, stacklevel=3)
        factor = 1.0 if scale is None else float(scale)
        if not center and factor == 1.0:
            return None
        return Normalization(center=bool(center), scale=None if factor == 1.0 else factor)
    if isinstance(normalize, Normalization):
        return normalize
    if isinstance(normalize, (bool, np.bool_)):
        return Normalization() if normalize else None
    raise TypeError(f"normalize must be a bool or an odernn.data.Normalization, got {type(normalize).__name__}")


class NormalizedDataset(Dataset):
    """Base of the benchmark datasets: training statistics ``mean`` and ``std``, the chosen ``normalization``,
    :meth:`normalize_values` and its inverse :meth:`denormalize`.

    Attributes:
        mean, std: ``(F,)`` statistics of the training split (``std`` is 1 where it is 0).
        normalization: The :class:`Normalization` in use, or ``None`` for raw values.
        normalize: ``normalization is not None``.
    """

    mean: np.ndarray
    std: np.ndarray
    normalization: Normalization | None = None

    @property
    def normalize(self) -> bool:
        return self.normalization is not None

    def _shift_factor(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(shift, divisor, multiplier)`` with ``normalized = (v - shift) / divisor * multiplier``."""
        norm = self.normalization
        zeros = np.zeros_like(self.mean)
        if norm is None:
            return zeros, None, None
        shift = self.mean if norm.center else zeros
        if norm.scale == "std":
            return shift, self.std, None
        return shift, None, (None if norm.scale is None else np.full_like(self.mean, float(norm.scale)))

    def normalize_values(self, values: np.ndarray) -> np.ndarray:
        """Apply the normalisation to raw values ``(..., F)`` (float64 arithmetic; identity for raw)."""
        shift, divisor, multiplier = self._shift_factor()
        out = values - shift if self.normalization is not None and self.normalization.center else values
        if divisor is not None:
            out = out / divisor
        if multiplier is not None:
            out = out * multiplier
        return out

    def denormalize(self, values: torch.Tensor, features: Sequence[int] | None = None) -> torch.Tensor:
        """Undo the normalisation on values of shape ``(..., F)``; identity for raw values.

        Args:
            values: Normalised values whose last dimension holds the features ``features``.
            features: Indices into the statistics (default: all of them), e.g. ``[1]`` for Silverbox's ``y``
                (``V2``) and ``[0]`` for its ``x`` (``V1``).

        Raises:
            ValueError: The last dimension of ``values`` does not match the chosen features.
        """
        idx = list(range(len(self.mean))) if features is None else list(features)
        if values.shape[-1] != len(idx):
            raise ValueError(
                f"values have {values.shape[-1]} features in their last dimension but the statistics chosen have "
                f"{len(idx)} ({len(self.mean)} in all); pass features= with the indices of these values' features"
            )
        if self.normalization is None:
            return values
        shift, divisor, multiplier = (None if a is None else a[idx] for a in self._shift_factor())
        kw = dict(dtype=values.dtype, device=values.device)
        out = values
        if multiplier is not None:
            out = out / torch.as_tensor(multiplier, **kw)
        if divisor is not None:
            out = out * torch.as_tensor(divisor, **kw)
        return out + torch.as_tensor(shift, **kw)
