"""Unit selection and pooling: the kept values are exactly slices or pools of the whole
site, labelled with the channel, row and column they came from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import unitrec as ur

SIZE = (3, 64, 64)  # resnet18 layer2: (128, 8, 8); layer1: (64, 16, 16)


@pytest.fixture(scope="module")
def recorded(zoo):
    """One pass of resnet18 recording layer2 whole and selected several ways."""
    m = zoo("resnet18")
    x = torch.randn(3, *SIZE, generator=torch.Generator().manual_seed(5))
    layers = [
        "layer2",
        {"name": "layer2", "units": "center", "as": "center"},
        {"name": "layer2", "channels": [7, 3, 100], "as": "channels"},
        {"name": "layer2", "positions": [[0, 1], [7, 2], [4, 4]], "as": "positions"},
        {"name": "layer2", "channels": [9, 2], "positions": [[1, 6], [5, 0]], "as": "product"},
        {"name": "layer2", "pool": "mean", "as": "mean"},
        {"name": "layer2", "pool": "max", "channels": [5, 0], "as": "max"},
        {"name": "layer2", "sample": 40, "as": "sample"},
        {"name": "layer2", "sample": 40, "seed": 3, "as": "sample3"},
        {"name": "fc", "channels": [10, 999]},
        {"name": "avgpool", "sample": 8, "as": "sample_avgpool"},
    ]
    with ur.Recorder(m, layers, input_size=SIZE) as rec:
        rec.run(x)
    return rec.activations, {s.key: s for s in rec.sites}


def _coords(site):
    return {k: v for k, (_, v) in site.coords().items()}


def test_center_is_the_middle_position_of_every_channel(recorded):
    acts, sites = recorded
    full = acts["layer2"]
    torch.testing.assert_close(acts["center"], full[:, :, 4, 4], rtol=0, atol=0)
    c = _coords(sites["center"])
    assert sites["center"].selection.dims == ("unit",)
    np.testing.assert_array_equal(c["channel"], np.arange(128))
    assert set(c["y"]) == {4} and set(c["x"]) == {4}


def test_channels_alone_keep_every_position_in_the_order_given(recorded):
    acts, sites = recorded
    torch.testing.assert_close(acts["channels"], acts["layer2"][:, [7, 3, 100]], rtol=0, atol=0)
    assert sites["channels"].selection.dims == ("channel", "y", "x")
    np.testing.assert_array_equal(_coords(sites["channels"])["channel"], [7, 3, 100])


def test_positions_alone_take_every_channel_there(recorded):
    acts, sites = recorded
    full, c = acts["layer2"], _coords(sites["positions"])
    assert acts["positions"].shape == (3, 128 * 3)
    assert c["channel"][:6].tolist() == [0, 0, 0, 1, 1, 1]  # channel-major
    assert c["y"][:3].tolist() == [0, 7, 4] and c["x"][:3].tolist() == [1, 2, 4]
    torch.testing.assert_close(acts["positions"], full[:, c["channel"], c["y"], c["x"]], rtol=0, atol=0)


def test_positions_with_channels_are_their_product(recorded):
    acts, sites = recorded
    c = _coords(sites["product"])
    assert list(zip(c["channel"], c["y"], c["x"])) == [(9, 1, 6), (9, 5, 0), (2, 1, 6), (2, 5, 0)]
    want = torch.stack([acts["layer2"][:, 9, 1, 6], acts["layer2"][:, 9, 5, 0],
                        acts["layer2"][:, 2, 1, 6], acts["layer2"][:, 2, 5, 0]], 1)
    torch.testing.assert_close(acts["product"], want, rtol=0, atol=0)


def test_pooling_over_space(recorded):
    acts, sites = recorded
    full = acts["layer2"]
    torch.testing.assert_close(acts["mean"], full.mean((2, 3)), rtol=0, atol=0)  # the same op on the same batch
    torch.testing.assert_close(acts["max"], full[:, [5, 0]].amax((2, 3)), rtol=0, atol=0)
    assert sites["mean"].selection.dims == ("channel",)
    np.testing.assert_array_equal(_coords(sites["max"])["channel"], [5, 0])
    assert "rf_center_y" not in _coords(sites["mean"])
    # a pooled unit sees the union of the fields of every position it pools; rf_size
    # stays one position's, as `unitrec layers` lists it
    assert sites["mean"].attrs()["rf_size_pooled"] == [99 + 7 * 8] * 2
    assert sites["mean"].attrs()["rf_size"] == [99, 99]
    assert sites["layer2"].attrs()["rf_size"] == [99, 99]


def test_sample_is_seeded_distinct_and_equals_the_full_site(recorded):
    acts, sites = recorded
    full = acts["layer2"]
    c = _coords(sites["sample"])
    assert len(set(zip(c["channel"], c["y"], c["x"]))) == 40
    torch.testing.assert_close(acts["sample"], full[:, c["channel"], c["y"], c["x"]], rtol=0, atol=0)
    c3 = _coords(sites["sample3"])
    assert set(zip(c["channel"], c["y"], c["x"])) != set(zip(c3["channel"], c3["y"], c3["x"]))
    torch.testing.assert_close(acts["sample3"], full[:, c3["channel"], c3["y"], c3["x"]], rtol=0, atol=0)
    # the draw spreads over the whole site, not only its first channels
    assert c["channel"].max() > 64


def test_selection_on_a_vector_output(recorded, zoo):
    acts, sites = recorded
    m = zoo("resnet18")
    with ur.Recorder(m, ["fc", "avgpool"], input_size=SIZE) as rec:
        rec.run(torch.randn(3, *SIZE, generator=torch.Generator().manual_seed(5)))
    torch.testing.assert_close(acts["fc"], rec.activations["fc"][:, [10, 999]], rtol=0, atol=0)
    assert sites["fc"].selection.dims == ("channel",)
    c = _coords(sites["sample_avgpool"])  # avgpool is (512, 1, 1): units have y = x = 0
    torch.testing.assert_close(acts["sample_avgpool"], rec.activations["avgpool"][:, c["channel"], 0, 0],
                               rtol=0, atol=0)


def test_sample_is_reproducible_across_runs(zoo):
    m = zoo("resnet18")
    picks = []
    for _ in range(2):
        with ur.Recorder(m, [{"name": "layer1", "sample": 25, "seed": 11}], input_size=SIZE) as rec:
            picks.append(_coords(rec.sites[0]))
    for k in ("channel", "y", "x"):
        np.testing.assert_array_equal(picks[0][k], picks[1][k])


def test_selected_units_in_the_file(zoo, images, transform64, tmp_path):
    """Dims and unit coordinates as stored, and values equal to the whole site's."""
    layers = ["layer1", {"name": "layer1", "sample": 30, "seed": 2, "as": "s"},
              {"name": "layer1", "positions": [[3, 5]], "channels": [1, 60], "as": "p"},
              {"name": "layer1", "pool": "max", "as": "m"}, "layer2"]
    path = ur.record(zoo("resnet18"), images, layers, tmp_path / "s.h5", transform=transform64,
                     batch_size=4, progress=False)
    full = ur.load_layer(path, "layer1")
    s = ur.load_layer(path, "s")
    assert s.dims == ("stimulus", "unit")
    with ur.Recorder(zoo("resnet18"), [layers[1]], input_size=SIZE) as rec:
        want = _coords(rec.sites[0])
    for k in ("channel", "y", "x"):  # the chosen units are written down, as drawn
        np.testing.assert_array_equal(s[k].values, want[k])
    picked = full.values[:, s.channel.values, s.y.values, s.x.values]
    np.testing.assert_array_equal(s.values, picked)
    np.testing.assert_array_equal(s.rf_center_y.values, 4 * s.y.values)
    np.testing.assert_array_equal(s.rf_center_x.values, 4 * s.x.values)
    p = ur.load_layer(path, "p")
    assert p.channel.values.tolist() == [1, 60] and p.y.values.tolist() == [3, 3]
    np.testing.assert_array_equal(p.values, full.values[:, [1, 60], 3, 5])
    m = ur.load_layer(path, "m")
    assert m.dims == ("stimulus", "channel")
    np.testing.assert_array_equal(m.values, full.values.max(axis=(2, 3)))
    pop = ur.load_population(path, ["s", "m"])
    assert pop.sizes["unit"] == 30 + 64
    assert pop.layer.values.tolist() == ["s"] * 30 + ["m"] * 64


def test_selected_units_of_a_concatenation_keep_their_source(zoo):
    m = zoo("googlenet")
    layers = ["inception3a", {"name": "inception3a", "sample": 50, "as": "s"},
              {"name": "inception3a", "channels": [0, 64, 200, 255], "units": "center", "as": "c"}]
    with ur.Recorder(m, layers, input_size=SIZE) as rec:
        full = _coords(rec.sites[0])["source"]
        s, c = _coords(rec.sites[1]), _coords(rec.sites[2])
    np.testing.assert_array_equal(s["source"], full[s["channel"]])
    assert c["source"].tolist() == ["branch1", "branch2", "branch3", "branch4"]


@pytest.mark.parametrize("entry, message", [
    ({"channels": [64]}, "channel 64 is outside the site's range 0..63"),
    ({"channels": [-1]}, "channel -1 is outside the site's range 0..63"),
    ({"positions": [[16, 0]]}, "row (y) 16 is outside the site's range 0..15"),
    ({"positions": [[0, 16]]}, "column (x) 16 is outside the site's range 0..15"),
    ({"positions": [[2, 3]], "channels": [0, 70]}, "channel 70 is outside the site's range 0..63"),
    ({"sample": 0}, "sample 0 is outside 1..16384"),
    ({"sample": 64 * 16 * 16 + 1}, "sample 16385 is outside 1..16384"),
    ({"pool": "max", "channels": [99]}, "channel 99 is outside the site's range 0..63"),
    ({"channels": []}, "'channels' is empty"),
    ({"channels": [3, 3]}, "lists 3 twice"),
    ({"positions": [[1, 2], [1, 2]]}, "lists (1, 2) twice"),
])
def test_out_of_range_selections_name_the_valid_range(zoo, entry, message):
    with pytest.raises(ur.SelectionError) as err:
        with ur.Recorder(zoo("resnet18"), [{"name": "layer1", **entry}], input_size=SIZE):
            pass
    assert message in str(err.value)
    assert str(err.value).startswith("layer1:")


@pytest.mark.parametrize("entry", [{"units": "center"}, {"pool": "mean"}, {"positions": [[0, 0]]}])
def test_spatial_selections_of_a_vector_output_are_refused(zoo, entry):
    with pytest.raises(ur.SelectionError, match="no spatial positions"):
        with ur.Recorder(zoo("resnet18"), [{"name": "fc", **entry}], input_size=SIZE):
            pass


def test_a_bad_selection_fails_before_any_file_is_written(zoo, images, transform64, tmp_path):
    out = tmp_path / "never.h5"
    with pytest.raises(ur.SelectionError, match="outside the site's range 0..511"):
        ur.record(zoo("resnet18"), images, [{"name": "layer4", "channels": [512]}], out,
                  transform=transform64, progress=False)
    assert not out.exists() and not (tmp_path / "never.h5.partial.h5").exists()
    with pytest.raises(IndexError):  # SelectionError is an IndexError too
        with ur.Recorder(zoo("resnet18"), [{"name": "layer4", "sample": 10**6}], input_size=SIZE):
            pass
