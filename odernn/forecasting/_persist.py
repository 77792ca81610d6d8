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
    version = payload.get("version", 0)
    if isinstance(version, str) and version.strip().isdigit():
        version = int(version.strip())  # a hand-edited file may hold the version as text
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"{path!r} is damaged: field 'version' is {version!r}, expected an integer format version "
                         f"(this odernn writes {VERSION})")
    if version > VERSION:
        raise ValueError(f"{path!r} was written by a newer odernn (format version {version}); upgrade")
    try:
        doc = json.loads(payload["json"])
        arrays = payload["arrays"]
        est = cls(**_dec(doc["params"], arrays))
        for k, v in doc["fitted"].items():
            setattr(est, k, _dec(v, arrays))
        if hasattr(est, "_validate_params"):
            try:
                est._validate_params()
            except (TypeError, ValueError) as e:
                raise _Damaged(f"its parameters are invalid: {e}") from None
        if doc["fitted"]:
            if "_orders_" not in doc["fitted"] and "_periods_" in doc["fitted"]:  # format 1: one order for all
                est._orders_ = [int(est.fourier_order)] * len(est._periods_)
            if "trend_degree_" not in doc["fitted"] and "_periods_" in doc["fitted"]:  # format 1: from detrend
                est.trend_degree_ = 0 if est.detrend is False else 1
            validate_fitted(est, bool(payload["weights"]))
        if "index_kind_" in doc["fitted"]:
            est._axis_ = TimeAxis(est.index_kind_, est.time_unit_, est.time_origin_)
        if payload["weights"]:
            model = est._build_model(est._model_config_, est.solver_)
            model.load_state_dict(payload["weights"])
            model.eval()
            est.model_ = model
    except _Damaged as e:
        raise ValueError(f"{path!r} is damaged: {e}; save the forecaster again or refit it") from None
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        raise ValueError(f"{path!r} is damaged: its content does not rebuild a {cls.__name__} ({type(e).__name__}: "
                         f"{e})") from None
    return est


class _Damaged(Exception):
    """A field of a forecaster file fails validation (the message names it)."""


def _need(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise _Damaged(f"field {name!r} is {shown}, expected {expected}")


def _is_int(v: Any, lo: int = 0) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v >= lo


def _is_pos(v: Any) -> bool:
    return isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and np.isfinite(v) and v > 0


def _array(v: Any, shape: tuple, name: str, finite: bool = True) -> None:
    ok = isinstance(v, np.ndarray) and v.ndim == len(shape) and all(a is None or a == b for a, b in
                                                                    zip(shape, v.shape))
    _need(ok, name, getattr(v, "shape", v), f"an array of shape {tuple('n' if a is None else a for a in shape)}")
    if finite and v.dtype.kind == "f":
        _need(bool(np.isfinite(v).all()), name, "an array with NaN or inf", "finite values")


def validate_fitted(est: Any, has_weights: bool) -> None:
    """Check the fitted state read from a file: required fields, their types, shapes and ranges, and their
    agreement with each other (series counts, feature counts). Raises ``_Damaged`` naming the first bad field."""
    d = vars(est)
    need = ["index_kind_", "layout_", "columns_", "n_features_in_", "series_ids_", "series_end_", "time_unit_",
            "time_origin_", "_history_", "regression_", "scale_", "_end_model_time_", "_typical_gap_", "_periods_",
            "_orders_", "trend_degree_"]
    if has_weights:
        need += ["context_length_", "horizon_", "_model_config_", "solver_", "covariate_columns_", "_known_",
                 "calibration_", "_rolling_"]
    for name in need:
        _need(name in d, name, "missing", "a value (the file lacks it)")
    _need(est.index_kind_ in ("datetime", "numeric"), "index_kind_", est.index_kind_, "'datetime' or 'numeric'")
    _need(est.layout_ in ("series", "frame", "list", "long"), "layout_", est.layout_,
          "'series', 'frame', 'list' or 'long'")
    _need(isinstance(est.columns_, list) and len(est.columns_) > 0, "columns_", est.columns_, "a non-empty list")
    _need(_is_int(est.trend_degree_) and est.trend_degree_ <= 3, "trend_degree_", est.trend_degree_,
          "an int in [0, 3]")
    k = len(est.columns_)
    _need(_is_int(est.n_features_in_, 1) and est.n_features_in_ == k, "n_features_in_", est.n_features_in_,
          f"{k} (the number of columns_)")
    _need(isinstance(est.series_ids_, list) and len(est.series_ids_) > 0, "series_ids_", est.series_ids_,
          "a non-empty list")
    n = len(est.series_ids_)
    if est.index_kind_ == "datetime":
        _need(isinstance(est.time_unit_, pd.Timedelta) and est.time_unit_ > pd.Timedelta(0), "time_unit_",
              est.time_unit_, "a positive pd.Timedelta")
        _need(isinstance(est.time_origin_, pd.Timestamp), "time_origin_", est.time_origin_, "a pd.Timestamp")
    else:
        _need(_is_pos(est.time_unit_), "time_unit_", est.time_unit_, "a positive number")
        _need(isinstance(est.time_origin_, (int, float)) and np.isfinite(est.time_origin_), "time_origin_",
              est.time_origin_, "a finite number")
    _need(isinstance(est.series_end_, list) and len(est.series_end_) == n, "series_end_", est.series_end_,
          f"a list of {n} stamps (one per series)")
    _need(_is_pos(est._typical_gap_), "_typical_gap_", est._typical_gap_, "a positive number")
    _need(isinstance(est._periods_, list) and all(_is_pos(p) for p in est._periods_), "_periods_", est._periods_,
          "a list of positive numbers")
    _need(isinstance(est._orders_, list) and len(est._orders_) == len(est._periods_) and
          all(_is_int(o, 1) for o in est._orders_), "_orders_", est._orders_,
          f"a list of {len(est._periods_)} positive ints (one per period)")
    _need(isinstance(est.regression_, list) and len(est.regression_) == n and
          all(isinstance(r, Deterministic) for r in est.regression_), "regression_", type(est.regression_).__name__,
          f"a list of {n} fitted regressions")
    for i, r in enumerate(est.regression_):
        n_terms = (r.degree + 1) + 2 * sum(int(o) for o in (r.used_orders if r.used_orders is not None
                                                             else [r.order] * len(r.used_periods)))
        _array(r.coef, (n_terms, k), f"regression_[{i}].coef")
    _array(est.scale_, (n, k), "scale_")
    _need(bool((est.scale_ > 0).all()), "scale_", est.scale_, "positive scales")
    _array(est._end_model_time_, (n,), "_end_model_time_")
    _need(isinstance(est._history_, list) and len(est._history_) == n, "_history_", type(est._history_).__name__,
          f"a list of {n} series")
    for i, h in enumerate(est._history_):
        if isinstance(h, tuple):  # SeasonalRegression: (t, values)
            t, v = h
        else:
            _need(isinstance(h, dict) and {"t", "y", "c"} <= set(h), f"_history_[{i}]", h,
                  "a dict with arrays t, y, c")
            t, v = h["t"], h["y"]
        _array(t, (None,), f"_history_[{i}] times")
        _need(len(t) >= 1 and bool((np.diff(t) > 0).all()), f"_history_[{i}] times", "not increasing",
              "strictly increasing times")
        _array(v, (len(t), k), f"_history_[{i}] values", finite=False)
    cal = d.get("calibration_")
    if cal is not None:
        _need(isinstance(cal, Calibration) and len(cal.edges) == len(cal.residuals) + 1 and
              bool((np.diff(cal.edges) > 0).all()) and len(cal.residuals) > 0, "calibration_", cal,
              "a calibration with increasing bin edges and one error array per bin")
        for j, r in enumerate(cal.residuals):
            _array(r, (None, k), f"calibration_.residuals[{j}]", finite=False)
    if not has_weights:
        return
    _need(_is_int(est.context_length_, 1), "context_length_", est.context_length_, "an int >= 1")
    _need(_is_int(est.horizon_, 1), "horizon_", est.horizon_, "an int >= 1")
    _need(isinstance(est.solver_, Solver), "solver_", est.solver_, "an odernn.Solver")
    cfg = est._model_config_
    p = len(est.covariate_columns_)
    lag = d.get("_lag_period_")
    _need(lag is None or _is_pos(lag), "_lag_period_", lag, "None or a positive number")
    kl = k if lag else 0
    size = k + (p + kl + 1 if p or kl else 0)
    _need(isinstance(cfg, dict) and cfg.get("output_size") == k and cfg.get("input_size") == size and
          _is_int(cfg.get("hidden_size"), 1), "_model_config_", cfg,
          f"a dict with output_size {k}, input_size {size} and a positive hidden_size")
    _array(est._known_, (p,), "_known_")
    _need(est._known_.dtype == bool, "_known_", est._known_.dtype, "a boolean array")
    if p:
        _need(isinstance(d.get("covariate_scaler_"), Scaler), "covariate_scaler_", d.get("covariate_scaler_"),
              "a fitted scaler (the forecaster has covariates)")
    _need(isinstance(est._rolling_, bool), "_rolling_", est._rolling_, "True or False")
