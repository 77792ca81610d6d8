"""Saving and loading forecasters without pickle: nothing in a file is executed when it is read.

A file is one ``torch.save`` archive holding only tensors, strings and plain containers, read back with
``torch.load(weights_only=True)``: the network's weights, the numeric arrays of the fitted state, and one JSON
document with the parameters and every other fitted attribute (timestamps, durations, labels, tables, the solver).
Old files of odernn 0.1 (pickles) are read only with ``trusted=True``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import tempfile
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import Solver
from ._frames import TimeAxis
from ._intervals import Calibration
from ._preprocess import Deterministic, Scaler

__all__ = ["save_forecaster", "load_forecaster", "FORMAT"]

FORMAT = "odernn.forecasting.ODERNNForecaster"
VERSION = 1
_SKIP = ("model_", "_axis_")


def _enc(v: Any, arrays: dict, where: str) -> Any:
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, (np.generic,)):
        return v
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, np.ndarray):
        if v.dtype == object:
            return {"__objarray__": [_enc(x, arrays, where) for x in v.tolist()]}
        key = f"a{len(arrays)}"
        arrays[key] = torch.from_numpy(np.ascontiguousarray(v).copy())
        return {"__array__": key}
    if isinstance(v, pd.Timestamp):
        return {"__ts__": int(v.as_unit("ns").value), "tz": None if v.tz is None else str(v.tz), "unit": v.unit}
    if isinstance(v, pd.Timedelta):
        return {"__td__": int(v.as_unit("ns").value)}
    if isinstance(v, pd.DataFrame):
        return {"__df__": {"columns": [_enc(c, arrays, where) for c in v.columns],
                           "data": [_enc(v[c].to_numpy(), arrays, where) for c in v.columns]}}
    if isinstance(v, pd.Index):
        return {"__index__": [_enc(x, arrays, where) for x in v]}
    if isinstance(v, Solver):
        d = dataclasses.asdict(v)
        d["options"] = [list(p) for p in v.options]
        return {"__solver__": _enc(d, arrays, where)}
    if isinstance(v, Deterministic):
        return {"__det__": _enc(v.to_state(), arrays, where)}
    if isinstance(v, Scaler):
        return {"__scaler__": _enc({"mean_": v.mean_, "scale_": v.scale_}, arrays, where)}
    if isinstance(v, Calibration):
        return {"__cal__": _enc(v.to_state(), arrays, where)}
    if isinstance(v, torch.device):
        return str(v)
    if isinstance(v, tuple):
        return {"__tuple__": [_enc(x, arrays, where) for x in v]}
    if isinstance(v, list):
        return [_enc(x, arrays, where) for x in v]
    if isinstance(v, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in v):
            return {k: _enc(x, arrays, f"{where}[{k!r}]") for k, x in v.items()}
        return {"__dict__": [[_enc(k, arrays, where), _enc(x, arrays, where)] for k, x in v.items()]}
    raise TypeError(f"cannot save {where}: a {type(v).__name__} has no JSON form; use plain values (e.g. an int "
                    f"random_state instead of a RandomState)")


def _dec(v: Any, arrays: dict) -> Any:
    if isinstance(v, list):
        return [_dec(x, arrays) for x in v]
    if not isinstance(v, dict):
        return v
    if "__array__" in v:
        return arrays[v["__array__"]].numpy().copy()
    if "__objarray__" in v:
        return np.asarray([_dec(x, arrays) for x in v["__objarray__"]], dtype=object)
    if "__ts__" in v:
        ts = pd.Timestamp(v["__ts__"], unit="ns", tz="UTC" if v["tz"] else None)
        if v["tz"]:
            ts = ts.tz_convert(v["tz"])
        return ts.as_unit(v.get("unit") or "ns")
    if "__td__" in v:
        return pd.Timedelta(v["__td__"], unit="ns")
    if "__df__" in v:
        cols = [_dec(c, arrays) for c in v["__df__"]["columns"]]
        data = [_dec(c, arrays) for c in v["__df__"]["data"]]
        return pd.DataFrame(dict(zip(cols, data)), columns=cols)
    if "__index__" in v:
        return pd.Index([_dec(x, arrays) for x in v["__index__"]])
    if "__solver__" in v:
        d = _dec(v["__solver__"], arrays)
        d["options"] = tuple(tuple(p) for p in d["options"])
        return Solver(**d)
    if "__det__" in v:
        return Deterministic.from_state(_dec(v["__det__"], arrays))
    if "__scaler__" in v:
        d = _dec(v["__scaler__"], arrays)
        return Scaler(d["mean_"], d["scale_"])
    if "__cal__" in v:
        return Calibration.from_state(_dec(v["__cal__"], arrays))
    if "__tuple__" in v:
        return tuple(_dec(x, arrays) for x in v["__tuple__"])
    if "__dict__" in v:
        return {_dec(k, arrays): _dec(x, arrays) for k, x in v["__dict__"]}
    return {k: _dec(x, arrays) for k, x in v.items()}


def save_forecaster(est: Any, path: Any) -> None:
    """Write ``est`` (parameters, fitted state, CPU weights) to ``path`` atomically: a temporary file in the same
    folder is moved into place with :func:`os.replace`, so ``path`` is never half-written.

    Raises:
        TypeError: a parameter or attribute without a JSON form (e.g. a ``RandomState`` random_state).
    """
    path = os.fspath(path)
    arrays: dict = {}
    params = _enc(est.get_params(deep=False), arrays, "the parameters")
    fitted = {k: _enc(v, arrays, f"attribute {k}") for k, v in vars(est).items()
              if k not in est.get_params(deep=False) and k not in _SKIP}
    payload = {
        "format": FORMAT, "version": VERSION, "class": type(est).__name__,
        "json": json.dumps({"params": params, "fitted": fitted}),
        "arrays": arrays,
        "weights": ({k: v.detach().cpu().clone() for k, v in est.model_.state_dict().items()}
                    if hasattr(est, "model_") else {}),
    }
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".odernn-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_forecaster(cls: type, path: Any, *, trusted: bool = False) -> Any:
    """Read a file written by :func:`save_forecaster` (see :meth:`ODERNNForecaster.load`)."""
    path = os.fspath(path)
    if not isinstance(trusted, bool):
        raise TypeError(f"trusted must be True or False, got {trusted!r}")
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head[:1] == b"\x80":  # a pickle (protocol >= 2): odernn 0.1's save format
        if not trusted:
            raise ValueError(f"{path!r} is a pickle (the format of odernn 0.1's save); unpickling can run code from "
                             f"the file, so it is refused. If you trust the file, load it with "
                             f"{cls.__name__}.load(path, trusted=True) and save it again in the safe format")
        with open(path, "rb") as fh:
            obj = pickle.load(fh)
        if not isinstance(obj, cls):
            raise ValueError(f"{path!r} holds a {type(obj).__name__}, not a {cls.__name__}")
        return obj
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to parse means a bad file
        raise ValueError(f"{path!r} could not be read as an odernn forecaster file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); it is corrupted, truncated, or was not "
                         f"written by {cls.__name__}.save") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path!r} is a torch file but not an odernn forecaster (no format {FORMAT!r}); load it "
                         f"with torch.load, or pass a file written by {cls.__name__}.save")
    if payload.get("class") != cls.__name__:
        raise ValueError(f"{path!r} holds a {payload.get('class')}, not a {cls.__name__}")
    if payload.get("version", 0) > VERSION:
        raise ValueError(f"{path!r} was written by a newer odernn (format version {payload['version']}); upgrade")
    try:
        doc = json.loads(payload["json"])
        arrays = payload["arrays"]
        est = cls(**_dec(doc["params"], arrays))
        for k, v in doc["fitted"].items():
            setattr(est, k, _dec(v, arrays))
        if "index_kind_" in doc["fitted"]:
            est._axis_ = TimeAxis(est.index_kind_, est.time_unit_, est.time_origin_)
        if payload["weights"]:
            model = est._build_model(est._model_config_, est.solver_)
            model.load_state_dict(payload["weights"])
            model.eval()
            est.model_ = model
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path!r} is damaged: its content does not rebuild a {cls.__name__} ({type(e).__name__}: "
                         f"{e})") from None
    return est
