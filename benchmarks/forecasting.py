"""odernn's forecaster (defaults only) against what users pick instead, on real public series made irregular.

Peers: Prophet, statsforecast (AutoARIMA, AutoETS, MSTL), seasonal naive and last value. They are optional
(``pip install -e .[bench]``, in a separate environment: never a dependency of the library or of ``make test``).

Series (each real one made irregular by dropping stamps at random with the recorded seed):

- ``seattle_hourly``: vega_datasets' hourly Seattle temperature, 2010 (8,759 hours), 30% dropped; forecast the
  last week (168 hours). Known cycle: a day.
- ``co2_weekly``: statsmodels' weekly Mauna Loa CO2, 1958-2001 (2,284 weeks, 59 already missing), 20% dropped;
  forecast the last year (52 weeks). Known cycle: a year; a strong trend.
- ``seattle_daily``: vega_datasets' daily Seattle maximum temperature, 2012-2015 (1,461 days), 30% dropped;
  forecast the last 90 days. Known cycle: a year.
- ``gen_half_hourly``: generated half-hourly load, 10 weeks, daily (two harmonics) and weekly cycles plus a weekend
  step, N(0, 1) noise, 30% dropped; forecast the last week (336 stamps).
- ``gen_weekly``: ``tests/test_forecasting_accuracy.py::long_seasonal(0)``: 20-40 years of jittered weekly stamps,
  an accelerating trend and a yearly cycle; forecast the last year.

odernn and Prophet read the irregular stamps as they are. statsforecast needs a regular grid: the kept values are
put back on the series' grid (hour, week, day, half hour) and the dropped ones filled by linear interpolation in
time; jittered stamps (``gen_weekly``) are first averaged into 7-day bins. Forecasts are scored at the held-out
stamps that were kept (MAE; share inside the 90% interval), on three folds per series: the last test window and the
two before it, each forecast from all the data before it. Peers get their documented seasonal settings for the
known cycles (``season_length``; MSTL's periods; Prophet's defaults, which add daily/weekly/yearly terms as the data
allow). Fit CPU time is ``time.process_time()`` of fit plus predict in a process with one thread.

Each (series, method) runs in its own process with a time limit, and writes one JSON file::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/forecasting.py run --series co2_weekly --method odernn --fold 0
    python benchmarks/forecasting.py all --timeout 600      # every (fold, series, method), one process each
    python benchmarks/forecasting.py report                 # the table of benchmarks/forecasting.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's odernn
OUT = ROOT / "benchmarks" / "results" / "forecasting"
SERIES = ["seattle_hourly", "co2_weekly", "seattle_daily", "gen_half_hourly", "gen_weekly"]
METHODS = ["odernn", "prophet", "autoarima", "autoets", "mstl", "seasonal_naive", "last_value"]
COVERAGE = 0.9
FOLDS = 3  # test windows per series: the last one and the two before it
MAX_ARIMA_SEASON = 100  # AutoARIMA(season_length=365) took 18 GB and was OOM-killed (seattle_daily)


# -- data -----------------------------------------------------------------------------------------------------------

def _drop(df: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(df), int(round(len(df) * (1 - share))), replace=False))
    return df.iloc[keep]


def load(name: str) -> dict:
    """The series (irregular), its test length, grid step and known cycles (in grid steps), and the seed."""
    if name == "seattle_hourly":
        from vega_datasets import local_data

        raw = local_data.seattle_temps().set_index("date")[["temp"]].rename(columns={"temp": "y"})
        return dict(df=_drop(raw, 0.3, 0), test=pd.Timedelta("7D"), step=pd.Timedelta("1h"), seasons=[24], seed=0)
    if name == "co2_weekly":
        import statsmodels.api as sm

        raw = sm.datasets.co2.load_pandas().data.rename(columns={"co2": "y"}).dropna()
        raw.index = pd.DatetimeIndex(raw.index, freq=None)
        return dict(df=_drop(raw, 0.2, 1), test=pd.Timedelta("364D"), step=pd.Timedelta("7D"), seasons=[52],
                    seed=1)
    if name == "seattle_daily":
        from vega_datasets import local_data

        raw = local_data.seattle_weather().set_index("date")[["temp_max"]].rename(columns={"temp_max": "y"})
        return dict(df=_drop(raw, 0.3, 2), test=pd.Timedelta("90D"), step=pd.Timedelta("1D"), seasons=[365],
                    seed=2)
    if name == "gen_half_hourly":
        rng = np.random.default_rng(3)
        base = pd.date_range("2021-03-01", periods=48 * 7 * 10, freq="30min")
        h = (base - base[0]).total_seconds().to_numpy() / 3600.0
        y = (20 + 0.002 * h + 3 * np.sin(2 * np.pi * h / 24) + 1.5 * np.cos(4 * np.pi * h / 24)
             + 2 * np.sin(2 * np.pi * h / 168) + 3.0 * (base.day_of_week >= 5) + rng.standard_normal(len(h)))
        raw = pd.DataFrame({"y": y}, index=base)
        return dict(df=_drop(raw, 0.3, 3), test=pd.Timedelta("7D"), step=pd.Timedelta("30min"), seasons=[48, 336],
                    seed=3)
    if name == "gen_weekly":
        sys.path.insert(0, str(ROOT / "tests"))
        from test_forecasting_accuracy import long_seasonal

        df = long_seasonal(0)
        return dict(df=df, test=pd.Timedelta("365D"), step=pd.Timedelta("7D"), seasons=[52], seed=0)
    raise ValueError(f"unknown series {name!r}; choose from {SERIES}")


def split(spec: dict, fold: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fold 0 forecasts the last test window from everything before it; fold k the window k windows earlier."""
    df = spec["df"]
    end = df.index[-1] - fold * spec["test"]
    cut = end - spec["test"]
    return df[df.index <= cut], df[(df.index > cut) & (df.index <= end)]


def regular(train: pd.DataFrame, step: pd.Timedelta) -> pd.Series:
    """The training values on a regular grid of ``step`` ending at the last training stamp: bin means, then linear
    interpolation in time over the empty bins."""
    end = train.index[-1]
    bins = ((end - train.index) / step).round().astype(int)
    y = train["y"].groupby(bins.to_numpy()).mean()
    grid = np.arange(int(bins.max()), -1, -1)
    s = pd.Series(y.reindex(grid).to_numpy(), index=[end - k * step for k in grid])
    return s.interpolate(method="linear").bfill().ffill()


def grid_positions(test: pd.DataFrame, end: pd.Timestamp, step: pd.Timedelta) -> np.ndarray:
    """Horizon steps (1-based) of the test stamps on the regular grid after ``end``."""
    return np.maximum(1, ((test.index - end) / step).round().astype(int).to_numpy())


# -- methods --------------------------------------------------------------------------------------------------------

def run_method(method: str, spec: dict, fold: int = 0) -> dict:
    train, test = split(spec, fold)
    step, seasons = spec["step"], spec["seasons"]
    t0 = time.process_time()
    w0 = time.perf_counter()
    lower = upper = None
    info: dict = {}
    if method == "odernn":
        sys.path.insert(0, str(ROOT))
        from odernn.forecasting import ODERNNForecaster

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f = ODERNNForecaster(random_state=0).fit(train)
            pred = f.predict(test.index)["y"].to_numpy()
            iv = f.predict_interval(test.index, coverage=COVERAGE)
        lower, upper = iv[("y", COVERAGE, "lower")].to_numpy(), iv[("y", COVERAGE, "upper")].to_numpy()
        info = dict(seasonal_periods=[str(p) for p in f.seasonal_periods_], fourier_orders=f.fourier_orders_,
                    n_epochs=f.n_epochs_)
    elif method == "prophet":
        import logging

        from prophet import Prophet

        logging.getLogger("cmdstanpy").setLevel(logging.WARNING)
        m = Prophet(interval_width=COVERAGE)
        m.fit(pd.DataFrame({"ds": train.index.tz_localize(None), "y": train["y"].to_numpy()}))
        out = m.predict(pd.DataFrame({"ds": test.index.tz_localize(None)}))
        pred, lower, upper = out["yhat"].to_numpy(), out["yhat_lower"].to_numpy(), out["yhat_upper"].to_numpy()
    elif method in ("autoarima", "autoets", "mstl"):
        from statsforecast import StatsForecast
        from statsforecast.models import MSTL, AutoARIMA, AutoETS

        y = regular(train, step)
        pos = grid_positions(test, y.index[-1], step)
        h = int(pos.max())
        if method == "autoarima":
            if seasons[0] > MAX_ARIMA_SEASON:
                raise RuntimeError(f"not run: AutoARIMA with season_length={seasons[0]} was killed by the kernel's "
                                   f"out-of-memory killer at 18 GB on this machine")
            model = AutoARIMA(season_length=seasons[0])
        elif method == "autoets":
            model = AutoETS(season_length=seasons[0] if seasons[0] <= 24 else 1)
            info["note"] = "" if seasons[0] <= 24 else f"non-seasonal: AutoETS takes seasons up to 24, not {seasons[0]}"
        else:
            model = MSTL(season_length=seasons)
        sf = StatsForecast(models=[model], freq=pd.tseries.frequencies.to_offset(step), n_jobs=1)
        frame = pd.DataFrame({"unique_id": 0, "ds": y.index.tz_localize(None), "y": y.to_numpy()})
        out = sf.forecast(df=frame, h=h, level=[int(COVERAGE * 100)])
        name = [c for c in out.columns if c not in ("unique_id", "ds") and "-lo-" not in c and "-hi-" not in c][0]
        pred = out[name].to_numpy()[pos - 1]
        lo_col, hi_col = f"{name}-lo-{int(COVERAGE * 100)}", f"{name}-hi-{int(COVERAGE * 100)}"
        if lo_col in out:
            lower, upper = out[lo_col].to_numpy()[pos - 1], out[hi_col].to_numpy()[pos - 1]
    elif method == "seasonal_naive":
        period = seasons[-1] * step  # the longest known cycle
        t_tr = train.index
        pred = np.empty(len(test))
        for i, t in enumerate(test.index):
            back = t - period * int(np.ceil((t - t_tr[-1]) / period))  # the same phase inside the history
            j = int(np.argmin(np.abs((t_tr - back).total_seconds().to_numpy())))
            pred[i] = train["y"].iloc[j]
    elif method == "last_value":
        pred = np.full(len(test), float(train["y"].iloc[-1]))
    else:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    truth = test["y"].to_numpy()
    res = dict(method=method, mae=float(np.mean(np.abs(truth - pred))), cpu_s=cpu, wall_s=wall, n_train=len(train),
               n_test=len(test), **info)
    if lower is not None:
        res["coverage"] = float(np.mean((truth >= lower) & (truth <= upper)))
        res["mean_width"] = float(np.mean(upper - lower))
    return res


# -- command line ---------------------------------------------------------------------------------------------------

def main(argv: list | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="one (series, method) pair in this process")
    r.add_argument("--series", required=True, choices=SERIES)
    r.add_argument("--method", required=True, choices=METHODS)
    r.add_argument("--fold", type=int, default=0, help="0: the last test window, k: k windows earlier")
    a = sub.add_parser("all", help="every missing pair, one process each, under a time limit")
    a.add_argument("--timeout", type=int, default=600)
    a.add_argument("--series", nargs="*", default=SERIES)
    a.add_argument("--methods", nargs="*", default=METHODS)
    a.add_argument("--folds", type=int, nargs="*", default=list(range(FOLDS)))
    a.add_argument("--force", action="store_true", help="rerun pairs that have results")
    sub.add_parser("report", help="print the markdown table")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.cmd == "run":
        import torch

        torch.set_num_threads(1)
        spec = load(args.series)
        res = dict(series=args.series, seed=spec["seed"], fold=args.fold, **run_method(args.method, spec, args.fold))
        (OUT / f"{args.series}__{args.method}__f{args.fold}.json").write_text(json.dumps(res, indent=1))
        print(json.dumps(res))
    elif args.cmd == "all":
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        for f in args.folds:
            for s in args.series:
                for m in args.methods:
                    path = OUT / f"{s}__{m}__f{f}.json"
                    if path.exists() and not args.force:
                        continue
                    cmd = ["nice", "-n", "10", sys.executable, __file__, "run", "--series", s, "--method", m,
                           "--fold", str(f)]
                    try:
                        p = subprocess.run(cmd, env=env, timeout=args.timeout, capture_output=True, text=True)
                        if p.returncode != 0:
                            err = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
                            path.write_text(json.dumps(dict(series=s, method=m, fold=f, error=err)))
                    except subprocess.TimeoutExpired:
                        path.write_text(json.dumps(dict(series=s, method=m, fold=f, error=f"over {args.timeout} s")))
                    print(path.read_text().replace("\n", ""), flush=True)
    else:
        print(report())


def report() -> str:
    """Per series and method: MAE averaged over the folds, coverage pooled over the folds' test stamps, mean fit
    CPU time; the best MAE of each series in bold."""
    rows = [json.loads(p.read_text()) for p in sorted(OUT.glob("*__f*.json"))]
    lines = ["| series | method | folds | MAE | 90% coverage | fit CPU s |", "| --- | --- | --- | --- | --- | --- |"]
    for s in SERIES:
        summary = {}
        for m in METHODS:
            got = [r for r in rows if r["series"] == s and r["method"] == m]
            ok = [r for r in got if "mae" in r]
            if not got:
                continue
            if not ok:
                summary[m] = dict(error=got[0]["error"], folds=0)
                continue
            cov = [r for r in ok if "coverage" in r]
            summary[m] = dict(
                folds=len(ok), mae=float(np.mean([r["mae"] for r in ok])),
                coverage=(float(np.sum([r["coverage"] * r["n_test"] for r in cov]) / np.sum([r["n_test"] for r in cov]))
                          if cov else None),
                cpu=float(np.mean([r["cpu_s"] for r in ok])),
                errors=[r["error"] for r in got if "error" in r])
        full = [v["mae"] for v in summary.values() if v.get("folds") == FOLDS]
        best = min(full) if full else np.nan
        for m, v in summary.items():
            if "mae" not in v:
                lines.append(f"| {s} | {m} | 0 | not run: {v['error'][:70]} | | |")
                continue
            mark = "**" if v["folds"] == FOLDS and v["mae"] <= best else ""
            cov = "-" if v["coverage"] is None else f"{v['coverage']:.2f}"
            folds = f"{v['folds']}" + (f" ({v['errors'][0][:40]})" if v["errors"] else "")
            lines.append(f"| {s} | {m} | {folds} | {mark}{v['mae']:.3f}{mark} | {cov} | {v['cpu']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
