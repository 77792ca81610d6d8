"""odernn: learning from irregularly-sampled time series with heavy-ball neural ODEs.

The public face is flat: dynamics (:class:`NODE`, :class:`ANODE`, :class:`SONODE`, :class:`HBNODE`,
:class:`GHBNODE`), solving (:func:`odesolve`, :class:`ODEBlock`), the recurrent model (:class:`ODERNN`), NFE
accounting (:func:`nfe_counter`), adjoint clipping (:func:`clip_adjoint`), data loaders (:mod:`odernn.data`),
diagnostics (:mod:`odernn.diagnostics`) and forecasting (:mod:`odernn.forecasting`, the scikit-learn style
:class:`ODERNNForecaster`).
"""

from ._clip import clip_adjoint
from ._dynamics import ANODE, GHBNODE, HBNODE, NODE, SONODE, Dynamics, make_dynamics
from ._integrate import ODEBlock, SolverError, odesolve
from ._solver import Solver, SolverConfig
from ._nfe import CountedField, NFECount, nfe_counter
from ._compile import compile_log
from ._odernn import MLP, ODERNN, Encoding
from ._presets import paper_solver, solving_with

__version__ = "0.1.0"

__all__ = [
    "ANODE", "GHBNODE", "HBNODE", "NODE", "SONODE", "Dynamics", "make_dynamics",
    "ODEBlock", "Solver", "SolverConfig", "SolverError", "odesolve",
    "NFECount", "nfe_counter", "CountedField", "clip_adjoint",
    "MLP", "ODERNN", "Encoding", "compile_log", "paper_solver", "solving_with",
    "ODERNNForecaster",
]


def __getattr__(name):
    # Heavier optional faces are imported on first use, so `import odernn` stays light.
    if name == "ODERNNForecaster":
        from .forecasting import ODERNNForecaster
        return ODERNNForecaster
    if name in ("data", "diagnostics", "estimators", "forecasting"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'odernn' has no attribute {name!r}")
