"""The one item schema shared by every dataset of :mod:`odernn.data`.

Every item is a dict with the inputs ``x``, ``t`` and ``mask``; targets come in three groups whose names mean the
same thing in every dataset:

- next step (``x_next``, ``t_next``, ``mask_next``): the value one step after *each* input stamp, the
  one-step-ahead target (Walker2D, plane vibration);
- future (``x_future``, ``t_future``, ``mask_future``): values at the stamps that follow the *last* input stamp,
  a forecast horizon (plane vibration, windows of your own series);
- output (``y``, ``mask_y``): a separate output channel observed at the *same* stamps as the inputs (Silverbox:
  input voltage ``x``, output voltage ``y``).

Shapes below: ``T`` input stamps, ``F`` input features, ``H`` future stamps, ``G`` output channels. Values are 0
where their mask is False.
"""

from __future__ import annotations

from typing import TypedDict

import torch

__all__ = ["FUTURE_KEYS", "INPUT_KEYS", "Item", "NEXT_KEYS", "OUTPUT_KEYS"]

INPUT_KEYS = ("x", "t", "mask")
NEXT_KEYS = ("x_next", "t_next", "mask_next")
FUTURE_KEYS = ("x_future", "t_future", "mask_future")
OUTPUT_KEYS = ("y", "mask_y")


class _Inputs(TypedDict):
    x: torch.Tensor
    t: torch.Tensor
    mask: torch.Tensor


class Item(_Inputs, total=False):
    """One dataset item (a plain ``dict`` at run time; this type documents and checks its keys).

    Always present:

    - ``x``: float ``(T, F)``, input values at the stamps ``t``, 0 where not observed.
    - ``t``: float ``(T,)``, input times, strictly increasing, same dtype as ``x``.
    - ``mask``: bool ``(T, F)``, True where ``x`` is observed.

    Next-step targets (one per input stamp):

    - ``x_next``: float ``(T, F)``, the value one step after each input stamp.
    - ``t_next``: float ``(T,)``, its time, ``t_next[i] > t[i]``.
    - ``mask_next``: bool ``(T, F)``.

    Future (horizon) targets, after the last input stamp:

    - ``x_future``: float ``(H, F)``.
    - ``t_future``: float ``(H,)``, strictly increasing, ``t_future[0] > t[-1]``.
    - ``mask_future``: bool ``(H, F)``.

    Outputs observed at the input stamps:

    - ``y``: float ``(T, G)``.
    - ``mask_y``: bool ``(T, G)``.

    Dataset-specific extras:

    - ``dt``: float ``(T,)``, time since the previous kept stamp (Walker2D; ``t == cumsum(dt)``).
    - ``series``: int, index of the series in an :class:`~odernn.data.IrregularSeriesDataset`.
    - ``start``: int, index of the window's first stamp in its series.
    """

    x_next: torch.Tensor
    t_next: torch.Tensor
    mask_next: torch.Tensor
    x_future: torch.Tensor
    t_future: torch.Tensor
    mask_future: torch.Tensor
    y: torch.Tensor
    mask_y: torch.Tensor
    dt: torch.Tensor
    series: int
    start: int
