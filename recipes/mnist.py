"""MNIST classification with a continuous-depth layer (paper Sec. 5.2, Fig. 5, Appendix E.3.1).

Five classifiers with Table 3 sizes (85,316 / 85,462 / 86,179 / 85,930 / 85,235 parameters; the paper's are
85,315 / 85,462 / 86,179 / 85,931 / 85,235): the 1 x 28 x 28 image gets ``p`` augmented channels (footnote 5:
p = 0, 5, 4, 4, 5), SONODE/HBNODE/GHBNODE get an initial velocity of the same shape from a convolutional network,
and a time-padded convolutional field moves the state over t in [0, 1]; ``fc_10`` reads the position. Adam
(lr 1e-3, batch 64; Table 1), dopri5 with rtol = atol = 1e-5 (Figs. 1, 5; ``--rtol/--atol``), adjoint gradients.

Data: torchvision's MNIST read offline from ``$ODERNN_DATA/mnist/MNIST/raw`` (torchvision's raw layout), or
downloaded by torchvision where a network exists. Pixels are scaled to [0, 1]; no augmentation.

Per epoch ``DIR/<model>/metrics.csv`` holds the training loss and accuracy, test loss and accuracy, forward/backward
NFE per training batch, NFE per test batch and seconds; ``summary.json``, ``checkpoint.pt`` (``--resume``),
and with ``--model all`` ``DIR/comparison.md``/``.png``. ``--tolerances 1e-3 1e-4 1e-5`` runs the Fig. 6 sweep.

Usage::

    python -m recipes.mnist --model all --epochs 40 --device cuda --out runs/mnist
    python -m recipes.mnist --model hbnode --epochs 1 --subset 512 --max-batches 4     # a CPU smoke run
"""

from __future__ import annotations

from typing import Optional, Sequence

from ._cli import run_cli
from ._image_recipe import image_main


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return image_main("mnist", __doc__.split("\n")[0], argv)


if __name__ == "__main__":
    run_cli(main, prog="python -m recipes.mnist")
