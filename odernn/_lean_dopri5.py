"""Former home of the lean Dormand-Prince step, kept importable: it now lives in :mod:`odernn._torchdiffeq`, the one
module that imports torchdiffeq's internals. Importing this module registers ``"odernn_dopri5"`` as before."""

from ._torchdiffeq import LEAN_DOPRI5, LeanDopri5

__all__ = ["LeanDopri5", "LEAN_DOPRI5"]
