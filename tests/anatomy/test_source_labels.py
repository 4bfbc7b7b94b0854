"""Issue 8, provenance labels: a concatenation's `source` names, for every channel, the
module whose recorded output that channel equals; channels changed in place after the
concatenation are marked ``+``; `source_index` numbers the sources in channel order.
Random-weight models, exact comparisons with the modules called by hand.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn

import unitrec as ur
from unitrec.anatomy.sites import resolve_sites

from tests.conftest import float32_sum_bound


def _runs(labels) -> list[tuple[str, int]]:
    """Consecutive runs of a per-channel label array: [(label, count), ...]."""
    return [(str(label), len(list(group))) for label, group in itertools.groupby(labels)]


def _batch(shape, seed=7):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- SqueezeNet's Fire


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1"])
@torch.no_grad()
def test_fire_sources_name_the_in_place_relu_whose_output_each_slice_is(name, tmp_path):
    """Fire returns cat([expand1x1_activation(expand1x1(x)), ...]): the ReLU runs in
    place on the conv's output, so the slice is the ReLU's output, not the conv's."""
    m = ur.load_model(name, seed=0)
    fires = [n for n, mod in m.named_modules() if type(mod).__name__ == "Fire"]
    assert len(fires) == 8
    sites = fires + [f"{f}@input" for f in fires] + [f"{fires[0]}.expand1x1", f"{fires[0]}.expand1x1_activation"]
    path = ur.record(m, _batch((3, 3, 64, 64)), sites, tmp_path / "s.h5", batch_size=3, progress=False)
    for site in fires:
        fire = m.get_submodule(site)
        s = fire.squeeze_activation(fire.squeeze(torch.from_numpy(ur.load_layer(path, f"{site}@input").values)))
        e1, e3 = fire.expand1x1(s), fire.expand3x3(s)
        by_hand = {"expand1x1": e1.clone(), "expand3x3": e3.clone(),
                   "expand1x1_activation": fire.expand1x1_activation(e1),
                   "expand3x3_activation": fire.expand3x3_activation(e3)}
        da = ur.load_layer(path, site)
        runs = _runs(da.source.values)
        assert [label for label, _ in runs] == ["expand1x1_activation", "expand3x3_activation"], site
        for label, _ in runs:
            np.testing.assert_array_equal(da.values[:, da.source.values == label], by_hand[label].numpy(),
                                          err_msg=f"{site}: {label}")
    # ... and the labelled child's own recording holds the same values; the conv's does not
    da = ur.load_layer(path, fires[0])
    first = da.values[:, da.source.values == "expand1x1_activation"]
    np.testing.assert_array_equal(first, ur.load_layer(path, f"{fires[0]}.expand1x1_activation").values)
    assert not np.array_equal(first, ur.load_layer(path, f"{fires[0]}.expand1x1").values)


def test_listing_names_the_fire_relus():
    rows = {r.name: r for r in ur.list_layers(ur.load_model("squeezenet1_1", seed=0), (3, 64, 64))}
    assert rows["features.3"].provenance == "cat(expand1x1_activation:64, expand3x3_activation:64)"


# ---------------------------------------------------------------- in-place changes after the cat


class _CatBlock(nn.Module):
    """cat([a(x), b(x)], 1) (4 + 5 channels), then `change(self, y, x)` before returning."""

    def __init__(self, change) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 5, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.change = change

    def forward(self, x):
        return self.change(self, torch.cat([self.a(x), self.b(x)], 1), x)


def _iadd(m, y, x):
    y += x.mean(1, keepdim=True)
    return y


def _slice_iadd(m, y, x):
    y[:, :2] += 1
    return y


def _narrow_mul(m, y, x):
    y.narrow(1, 6, 2).mul_(2)
    return y


def _setitem(m, y, x):
    y[:, 8] = 0
    return y


def _clone_then_sub(m, y, x):
    y = y.clone()  # a copy keeps the labels; changing the copy in place does not
    y[:, 1:2] -= 1
    return y


# (change, expected source runs) — channels 0..3 come from `a`, 4..8 from `b`
_CHANGES = [
    (lambda m, y, x: y, [("a", 4), ("b", 5)]),
    (_iadd, [("a+", 4), ("b+", 5)]),
    (lambda m, y, x: y.relu_(), [("a+", 4), ("b+", 5)]),
    (lambda m, y, x: F.relu(y, inplace=True), [("a+", 4), ("b+", 5)]),
    (lambda m, y, x: m.act(y), [("a+", 4), ("b+", 5)]),  # a child module, in place
    (_slice_iadd, [("a+", 2), ("a", 2), ("b", 5)]),
    (_narrow_mul, [("a", 4), ("b", 2), ("b+", 2), ("b", 1)]),
    (_setitem, [("a", 4), ("b", 4), ("b+", 1)]),
    (lambda m, y, x: y.clone(), [("a", 4), ("b", 5)]),
    (_clone_then_sub, [("a", 1), ("a+", 1), ("a", 2), ("b", 5)]),
]


@pytest.mark.parametrize("change, expected", _CHANGES,
                         ids=["none", "iadd", "relu_", "F.relu(inplace)", "ReLU(inplace) child", "slice +=",
                              "narrow mul_", "setitem", "clone", "clone then -="])
@torch.no_grad()
def test_channels_changed_in_place_after_the_cat_are_marked(change, expected):
    torch.manual_seed(0)
    m = nn.Sequential(_CatBlock(change)).eval()
    with ur.Recorder(m, ["0", "0.a", "0.b"], input_size=(3, 8, 8)) as rec:
        rec.run(_batch((2, 3, 8, 8)))
    source = rec.sites[0].coords()["source"][1]
    assert _runs(source) == expected
    # a label without `+` is exact: the channel equals the child's recorded output
    block, child = rec.activations["0"], {"a": rec.activations["0.a"], "b": rec.activations["0.b"]}
    for c, label in enumerate(source):
        name = label.rstrip("+")
        own = child[name][:, c - (0 if name == "a" else 4)]
        assert torch.equal(block[:, c], own) == (not label.endswith("+")), (c, label)


@pytest.mark.parametrize("relu", [nn.ReLU(inplace=True), nn.ReLU()], ids=["in place", "out of place"])
def test_a_relu_after_the_block_marks_the_container_not_the_block(relu):
    """The block's site is recorded when it returns, before the ReLU; the Sequential
    around both returns rectified channels, whichever way the ReLU runs."""
    m = nn.Sequential(nn.Sequential(_CatBlock(lambda m, y, x: y), relu)).eval()
    rows = {r.name: r for r in ur.list_layers(m, (3, 8, 8))}
    assert rows["0.0"].sources == [("a", 4), ("b", 5)]
    assert rows["0"].sources == [("0.a+", 4), ("0.b+", 5)]


# ---------------------------------------------------------------- source_index


@torch.no_grad()
def test_source_index_numbers_the_sources_in_channel_order(zoo, tmp_path):
    m = zoo("densenet121")
    layers = ["features.denseblock2", {"name": "features.denseblock2", "sample": 100, "as": "s"},
              {"name": "features.denseblock2", "pool": "mean", "as": "p"}, "features.conv0"]
    path = ur.record(m, _batch((3, 3, 64, 64)), layers, tmp_path / "d.h5", batch_size=3, progress=False)
    names = ["input"] + [f"denselayer{i}" for i in range(1, 13)]
    da = ur.load_layer(path, "features.denseblock2")
    runs = _runs(da.source.values)
    assert [label for label, _ in runs] == names
    np.testing.assert_array_equal(da.source_index.values, np.repeat(np.arange(13), [n for _, n in runs]))
    # groupby("source") sorts by name (denselayer10 before denselayer2); source_index keeps channel order
    assert list(da.groupby("source").mean().source.values) == sorted(names)
    by_index = da.groupby("source_index").mean()
    for i, name in enumerate(names):  # two float32 means of the same channels, summed in any order
        part = da.values[:, da.source.values == name]
        bound = float32_sum_bound(np.abs(part).mean(1), part.shape[1] + 1)  # + 1: the division
        assert (np.abs(by_index.isel(source_index=i).values - part.mean(1)) <= bound).all(), name
    ordered = da.groupby("source").mean().sortby(da.source_index.groupby("source").min())
    assert list(ordered.source.values) == names
    # a selection keeps the whole site's numbering
    for key in ("s", "p"):
        sel = ur.load_layer(path, key)
        np.testing.assert_array_equal(sel.source_index.values, da.source_index.values[sel.channel.values])
    # plain xarray sees it, and the population view carries it (-1 outside a concatenation)
    tree = xr.open_datatree(path, engine="h5netcdf")
    try:
        np.testing.assert_array_equal(tree["s"]["activation"].source_index.values, ur.load_layer(path, "s").source_index)
    finally:
        tree.close()
    pop = ur.load_population(path, ["s", "features.conv0"])
    assert pop.source_index.values[:100].tolist() == ur.load_layer(path, "s").source_index.values.tolist()
    assert set(pop.source_index.values[100:].tolist()) == {-1}


def test_source_index_counts_a_repeated_label_once():
    """cat([a(x), x, b(x), x]): the input comes back, with the index it had first."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return torch.cat([self.a(x), x, self.b(x), x], 1)

    m = nn.Sequential(Twice()).eval()
    sites, _ = resolve_sites(m, ["0"], torch.zeros(1, 3, 4, 4))
    coords = sites[0].coords()
    assert _runs(coords["source"][1]) == [("a", 2), ("input", 3), ("b", 2), ("input", 3)]
    assert coords["source_index"][1].tolist() == [0, 0, 1, 1, 1, 2, 2, 1, 1, 1]
