"""Image classifiers with a continuous-depth ODE layer (paper Sec. 5.2, Appendix E.3), with Table 3 sizes.

* :class:`ConvField`: the vector field ``f`` of Appendix E.3, three convolutions each preceded by *tpad* (a channel
  filled with the time ``t`` is concatenated to the input): ``tpad -> conv_h(1x1) -> ReLU -> tpad -> conv_h(3x3) ->
  ReLU -> tpad -> conv_out(1x1)``.
* :class:`InitialVelocity`: ``conv_h(1x1) -> LeakyReLU(0.3) -> conv_h(3x3) -> LeakyReLU(0.3) -> conv_(2n-c)(1x1)``
  on the image; its ``2n - c`` output channels are the ``p = n - c`` augmented channels of the position and the
  ``n`` channels of the initial velocity/momentum (footnote 5: the velocity has the shape of the augmented state).
* :class:`ImageODEClassifier`: image -> initial state -> :class:`odernn.ODEBlock` over t in [0, 1] -> ``fc_10`` on
  the ``n x H x W`` position.

Table 3 sizes (n = state channels, h = hidden channels) are in :data:`SPECS`; the parameter counts they give are
within 2% of the paper's (most are exact; see ``tests/test_recipes_other.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

import odernn

from ._loops import count_parameters

__all__ = ["MODELS", "SPECS", "PAPER_PARAMS", "ImageSpec", "ConvField", "InitialVelocity", "ImageODEClassifier",
           "build_image_model", "param_table"]

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
        solver: how the ODE layer is solved (default: dopri5 at rtol = atol = 1e-5 with the adjoint, Figs. 1 and 5);
            ``solver_changes`` (``rtol=``, ``method=``, ...) override its fields.

    Shapes:
        ``forward(x)``: (batch, c, H, W) -> logits (batch, num_classes).
    """

    def __init__(self, model: str, spec: ImageSpec, *, num_classes: int = 10, solver: Optional[odernn.Solver] = None,
                 **solver_changes: Any) -> None:
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
        solver = (solver or odernn.Solver(rtol=1e-5, atol=1e-5)).replace(**solver_changes)
        self.block = odernn.ODEBlock(dyn, t0=0.0, t1=1.0, solver=solver)
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
    """The Table 3 classifier for ``dataset`` (``"mnist" | "cifar10"``) and ``model``; ``kwargs`` go to
    :class:`ImageODEClassifier` (``solver=``, or solver fields such as ``rtol=``)."""
    if dataset not in SPECS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(SPECS)}")
    return ImageODEClassifier(model, SPECS[dataset][model], **kwargs)


def param_table(dataset: str, models: Sequence[str] = MODELS) -> dict[str, tuple[int, int]]:
    """``{model: (ours, paper)}`` parameter counts for ``dataset``."""
    return {m: (count_parameters(build_image_model(dataset, m)), PAPER_PARAMS[dataset][m]) for m in models}
