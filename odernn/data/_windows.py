"""Windows of irregular series: which stamps each window covers (:func:`window_spans`) and the dataset of windows
(:class:`SeriesWindows`) that :meth:`odernn.data.IrregularSeriesDataset.windows` returns."""

from __future__ import annotations

from typing import TYPE_CHECKING, Hashable, Sequence

import numpy as np
from torch.utils.data import Dataset

from ._schema import Item

if TYPE_CHECKING:
    from ._series import IrregularSeriesDataset

__all__ = ["SeriesWindows", "window_spans"]


def window_spans(
    lengths: Sequence[int],
    series_ids: Sequence[Hashable],
    length: int,
    *,
    stride: int | None = None,
    horizon: int = 0,
    drop_last: bool = True,
    skip_short: bool = False,
) -> list[tuple[int, int, int]]:
    """``(series, start, end)`` of every window; the rules are those of
    :meth:`~odernn.data.IrregularSeriesDataset.windows`.

    Args:
        lengths: Number of stamps of each series.
        series_ids: Id of each series, for messages.
        length, stride, horizon, drop_last, skip_short: See :meth:`~odernn.data.IrregularSeriesDataset.windows`.

    Raises:
        TypeError: Non-integer ``length``/``stride``/``horizon``.
        ValueError: Out-of-range arguments, or a series shorter than a window (unless ``skip_short``).
    """
    for name, val, low in (("length", length, 1), ("stride", length if stride is None else stride, 1),
                           ("horizon", horizon, 0)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(val).__name__}")
        if val < low:
            raise ValueError(f"{name} must be >= {low}, got {val}")
    stride = int(length if stride is None else stride)
    length, horizon = int(length), int(horizon)
    spans: list[tuple[int, int, int]] = []
    for i, n in enumerate(lengths):
        n_in = n - horizon
        starts = list(range(0, n_in - length + 1, stride)) if n_in >= length else []
        own = [(i, s, s + length) for s in starts]
        if not drop_last:
            nxt = starts[-1] + stride if starts else 0
            if nxt < n_in:
                own.append((i, nxt, n_in))
        if not own and not skip_short:
            need = length + horizon if drop_last else horizon + 1
            raise ValueError(
                f"series {series_ids[i]!r} (index {i}) has {n} stamps but a window needs "
                f"{need} (length={length}, horizon={horizon}); use a shorter length"
                f"{', drop_last=False to keep a shorter last window' if drop_last else ''}, or skip_short=True "
                "to leave such series out"
            )
        spans.extend(own)
    if not spans:
        raise ValueError(f"no series is long enough for a window of length={length} and horizon={horizon}")
    return spans


class SeriesWindows(Dataset):
    """Windows of an :class:`IrregularSeriesDataset` (made by :meth:`IrregularSeriesDataset.windows`).

    Item ``k`` is an :class:`~odernn.data.Item`:

    - ``"x"`` ``(L_k, F)``, ``"t"`` ``(L_k,)``, ``"mask"`` ``(L_k, F)``: the input stamps (``L_k = length`` except
      for a shorter last window).
    - ``"x_future"`` ``(H, F)``, ``"t_future"`` ``(H,)``, ``"mask_future"`` ``(H, F)``: the ``horizon`` stamps that
      follow.
    - ``"series"``: index of the series in the parent dataset; ``"start"``: index of the first input stamp in it.

    Values are 0 where not observed (mask False); times are on the parent's axis (minus its ``time_offsets``).
    Batch with :func:`~odernn.data.collate_irregular`.

    Attributes:
        source: The parent dataset (for ``time_encoder``, ``feature_names``, ``series_ids``).
        spans: ``(series, start, end)`` per window; inputs are stamps ``[start, end)``.
        horizon: Target stamps per window.
    """

    def __init__(self, source: "IrregularSeriesDataset", spans: Sequence[tuple[int, int, int]], horizon: int) -> None:
        self.source = source
        self.spans = list(spans)
        self.horizon = horizon

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, k: int) -> Item:
        i, lo, hi = self.spans[k]
        x, t, mask = self.source._stamps(i, lo, hi)
        xf, tf, mf = self.source._stamps(i, hi, hi + self.horizon)
        return {"x": x, "t": t, "mask": mask, "x_future": xf, "t_future": tf, "mask_future": mf, "series": i,
                "start": lo}
