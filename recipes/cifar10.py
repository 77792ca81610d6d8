"""CIFAR10 classification with a continuous-depth layer (paper Sec. 5.2, Figs. 1 and 6, Appendix E.3.2).

Five classifiers with Table 3 sizes (173,611 / 172,452 / 171,635 / 172,916 / 172,917 parameters; the paper's are
173,611 / 172,452 / 171,635 / 172,916 / 172,916): the 3 x 32 x 32 image gets ``p`` augmented channels (footnote 5:
p = 0, 10, 9, 9, 9), SONODE/HBNODE/GHBNODE get an initial velocity of the same shape from a convolutional network,
and a time-padded convolutional field moves the state over t in [0, 1]; ``fc_10`` reads the position. Adam
(lr 1e-3, batch 64; Table 1), dopri5 with rtol = atol = 1e-5 (Fig. 1; ``--rtol/--atol``), adjoint gradients.
``--tolerances 1e-3 1e-4 1e-5`` runs the NFE-versus-tolerance sweep of Fig. 6.

Data, in this order: the JPEG copy ``$ODERNN_DATA/cifar10/cifar10_jpeg_q75/{train,test}.tar.gz`` (decoded once with
PIL and cached as a uint8 tensor under ``~/.cache/odernn``; set ``ODERNN_CACHE`` to move it). **This copy is lossy
(JPEG quality 75)**: accuracies are not exactly comparable with results on the original images, and the recipe says
so in its output and in ``summary.json``. Else the original batches in ``$ODERNN_DATA/cifar10/cifar-10-batches-py``,
else torchvision's download where a network exists. Pixels are scaled to [0, 1]; no augmentation.

Files as in :mod:`recipes.mnist`: ``DIR/<model>/metrics.csv`` (train loss/accuracy, test loss/accuracy,
forward/backward NFE, seconds per epoch), ``summary.json``, ``checkpoint.pt`` (``--resume``), ``DIR/comparison.*``.

Usage::

    python -m recipes.cifar10 --model all --epochs 40 --device cuda --out runs/cifar10
    python -m recipes.cifar10 --model all --epochs 5 --tolerances 1e-3 1e-4 1e-5 --device cuda --out runs/cifar10_tol
"""

from __future__ import annotations

from typing import Optional, Sequence

from ._cli import run_cli
from ._image_recipe import image_main


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return image_main("cifar10", __doc__.split("\n")[0], argv)


if __name__ == "__main__":
    run_cli(main, prog="python -m recipes.cifar10")
