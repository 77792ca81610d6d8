"""One item schema and one normalisation for every dataset of odernn.data (issue 11)."""

from __future__ import annotations

import os
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

import odernn.data as D

DATA = Path(os.environ.get("ODERNN_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_data = pytest.mark.skipif(not (DATA / "SHA256SUMS").is_file(), reason=f"no data folder at {DATA}")

SCHEMA = set(typing.get_type_hints(D.Item))


def _check_item(item, groups):
    assert {"x", "t", "mask"} <= set(item)
    assert set(item) <= SCHEMA
    T = item["t"].shape[0]
    assert item["x"].shape[0] == T and item["mask"].shape == item["x"].shape and item["mask"].dtype == torch.bool
    assert bool((item["t"][1:] > item["t"][:-1]).all())
    if "next" in groups:
        assert item["x_next"].shape == item["x"].shape and item["t_next"].shape == (T,)
        assert bool((item["t_next"] > item["t"]).all()) and item["mask_next"].dtype == torch.bool
    if "future" in groups:
        H = item["t_future"].shape[0]
        assert item["x_future"].shape == (H, item["x"].shape[1]) and item["mask_future"].shape == (H, item["x"].shape[1])
        assert H == 0 or float(item["t_future"][0]) > float(item["t"][-1])
    if "output" in groups:
        assert item["y"].shape[0] == T and item["mask_y"].shape == item["y"].shape


@needs_data
def test_benchmark_items_follow_the_schema():
    walker = D.walker2d("valid")
    item = walker[3]
    _check_item(item, {"next"})
    assert "y" not in item  # renamed x_next: y is only ever an output at the input stamps
    torch.testing.assert_close(item["t_next"], item["t"] + 1)
    assert item["mask"].all() and item["mask_next"].all()
    pv = D.plane_vibration("test")
    _check_item(pv[5], {"next", "future"})
    assert not {"y", "t_y", "y_future"} & set(pv[5])
    torch.testing.assert_close(pv[5]["t_next"][:-1], pv[5]["t"][1:])
    sb = D.silverbox(window=32)
    _check_item(sb[2], {"output"})


def test_series_items_follow_the_schema():
    t = np.array([0.0, 1.0, 2.5, 3.0, 4.5, 7.0])
    v = np.array([[1.0, np.nan], [2.0, 3.0], [np.nan, 1.0], [4.0, 4.0], [5.0, np.nan], [6.0, 6.0]])
    ds = D.IrregularSeriesDataset.from_arrays([(t, v)])
    _check_item(ds[0], set())
    w = ds.windows(3, stride=1, horizon=2)
    _check_item(w[1], {"future"})
    assert torch.equal(w[1]["mask_future"], torch.tensor([[True, False], [True, True]]))


@needs_data
def test_every_loader_defaults_to_raw_values_and_normalizes_the_same_way():
    loaders = {"walker2d": lambda **kw: D.walker2d("train", **kw),
               "plane_vibration": lambda **kw: D.plane_vibration("train", **kw),
               "silverbox": lambda **kw: D.silverbox(**kw)}
    for name, load in loaders.items():
        raw, std = load(), load(normalize=True)
        assert raw.normalization is None and not raw.normalize, name
        assert std.normalization == D.Normalization() and std.normalize, name
        x_raw, x_std = raw[0]["x"].double().numpy(), std[0]["x"].double().numpy()
        k = x_raw.shape[1]
        np.testing.assert_allclose(x_std, (x_raw - raw.mean[:k]) / raw.std[:k], rtol=1e-4, atol=1e-4, err_msg=name)
        torch.testing.assert_close(std.denormalize(std[0]["x"], features=range(k)), raw[0]["x"], rtol=1e-5,
                                   atol=1e-4)


@needs_data
def test_silverbox_reference_scaling_and_deprecated_keywords():
    raw = D.silverbox()
    ref = D.silverbox(normalize=D.Normalization(center=True, scale=100.0))
    np.testing.assert_array_equal(ref.v2, (raw.v2 - raw.v2.mean()) * 100.0)
    torch.testing.assert_close(ref.denormalize(ref[0]["y"].double(), features=[1]), raw[0]["y"].double(), rtol=0,
                               atol=1e-6)
    with pytest.raises(ValueError, match=r"values have 1 features in their last dimension but the statistics chosen "
                                         r"have 2 \(2 in all\); pass features="):
        ref.denormalize(ref[0]["x"])
    with pytest.warns(DeprecationWarning, match=r"center=/scale= are deprecated"):
        old = D.silverbox(center=True, scale=100.0)
    np.testing.assert_array_equal(old.v1, ref.v1)
    with pytest.raises(ValueError, match="either normalize= or the deprecated center=/scale="):
        D.silverbox(normalize=True, center=True)
    scaled = D.silverbox(normalize=D.Normalization(center=False, scale=None))
    np.testing.assert_array_equal(scaled.v1, raw.v1)


@needs_data
def test_sample_rate_benchmarks_share_the_time_unit_vocabulary():
    sb = D.silverbox(window=8, time_unit="ms")
    np.testing.assert_allclose(sb[1]["t"].numpy(), (8 + np.arange(8)) / 610.3515625 * 1000, rtol=1e-6)
    pv = D.plane_vibration("train", time_unit="s")
    samples = D.plane_vibration("train")
    np.testing.assert_allclose(pv[0]["t"].numpy(), samples[0]["t"].numpy() / 400.0, rtol=1e-6)
    for load in (lambda: D.silverbox(time_unit="hours"), lambda: D.plane_vibration("train", time_unit="samples")):
        with pytest.raises(ValueError, match=r"time_unit must be one of .*; benchmarks recorded at a sample rate also "
                                             r"accept 'sample'"):
            load()


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(center="yes"), TypeError, "center must be a bool"),
    (dict(scale=0.0), ValueError, r"scale must be 'std', a positive number or None, got 0.0"),
    (dict(scale="mad"), TypeError, r"scale must be 'std', a positive number or None, got 'mad'"),
])
def test_normalization_validates_its_fields(kwargs, error, message):
    with pytest.raises(error, match=message):
        D.Normalization(**kwargs)


def test_loaders_refuse_an_unknown_normalize(tmp_path):
    with pytest.raises(TypeError, match=r"normalize must be a bool or an odernn.data.Normalization, got str"):
        D.walker2d("train", root=tmp_path, download=False, normalize="zscore")


def test_collate_pads_outputs_with_the_inputs_and_checks_their_length():
    items = [{"x": torch.ones(3, 1), "t": torch.arange(3.0), "y": torch.full((3, 2), 2.0)},
             {"x": torch.ones(1, 1), "t": torch.tensor([5.0]), "y": torch.tensor([[float("nan"), 1.0]])}]
    batch = D.collate_irregular(items)
    assert batch["y"].shape == (2, 3, 2) and batch["mask_y"].shape == (2, 3, 2)
    assert batch["mask_y"][1].tolist() == [[False, True], [False, False], [False, False]]
    assert batch["y"][1, 0].tolist() == [0.0, 1.0]
    items[1]["y"] = torch.ones(2, 2)
    with pytest.raises(ValueError, match=r"batch\[1\]: 'y' has 2 rows but the item has 1 input stamps; 'y' holds "
                                         r"outputs at the input times t \(targets after the inputs go in 'x_future'"):
        D.collate_irregular(items)
