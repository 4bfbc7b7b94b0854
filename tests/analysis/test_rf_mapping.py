"""Receptive-field mapping: noise stimuli, gradient maps, reverse correlation, the figure.

Each measurement is checked against an independent computation: autograd by hand on an
out-of-place copy of the model, the composite kernel of a linear conv stack, exact
sparse-noise responses of a one-pixel kernel.
"""

from __future__ import annotations

import copy
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from PIL import Image
from torch import nn

import unitrec as ur
from unitrec.analysis.experiments.rf_mapping import effective_rf, sparse_noise_map, spike_triggered_average
from unitrec.analysis.figures.rf_mapping import plot_rf_map
from unitrec.errors import ConfigError, LayerNotFoundError, SelectionError
from unitrec.stimuli.noise import sparse_noise, white_luminance, white_noise

from tests.conftest import float32_sum_bound

ROOT = Path(__file__).resolve().parents[2]


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "metadata.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _grey(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB")).astype(int)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    return rgb[..., 0]


def _plain():
    """PIL → tensor in [0, 1], nothing else: the pixels are the network's input."""
    from unitrec.anatomy.preprocess import build_transform

    return build_transform({"resize": None, "crop": None, "normalize": None})


# ---------------------------------------------------------------- noise stimuli

def test_sparse_noise_files_metadata_and_squares(tmp_path):
    root = sparse_noise(tmp_path / "s", size=8, grid=2, background=0.5, contrast=0.8)
    rows = _rows(root)
    assert list(rows[0]) == ["path", "noise", "square_y", "square_x", "square_size", "polarity", "background",
                             "contrast", "repeat"]
    assert len(rows) == 4 * 4 * 2 and sorted(p.name for p in root.glob("*.png")) == sorted(r["path"] for r in rows)
    row = next(r for r in rows if r["path"] == "sparse_y002_x006_off.png")
    assert (row["noise"], row["square_y"], row["square_x"], row["square_size"], row["polarity"]) == (
        "sparse", "2.5", "6.5", "2", "-1")
    image = _grey(root / row["path"])
    want = np.full((8, 8), round(0.5 * 255))
    want[2:4, 6:8] = np.round((0.5 - 0.8 / 2) * 255)  # the generator's arithmetic
    np.testing.assert_array_equal(image, want)
    on = _grey(root / "sparse_y000_x000_on.png")
    assert on[0, 0] == np.round((0.5 + 0.8 / 2) * 255) and (on[2:, :] == 128).all()
    assert (root / ".unitrec-generated").is_file()
    default = sparse_noise(tmp_path / "d", size=64, polarities=["on"], repeats=2)
    rows = _rows(default)
    assert len(rows) == 16 * 16 * 2 and {r["square_size"] for r in rows} == {"4"}  # grid: size // 16
    assert {r["repeat"] for r in rows} == {"0", "1"} and (default / "sparse_y060_x004_on_r1.png").is_file()


def test_white_noise_is_reproducible_from_seed_and_index(tmp_path):
    a = white_noise(tmp_path / "a", size=12, n=6, block=5, seed=3)
    rows = _rows(a)
    assert list(rows[0]) == ["path", "noise", "kind", "seed", "image_index", "block", "contrast"]
    assert [r["image_index"] for r in rows] == [str(i) for i in range(6)] and {r["seed"] for r in rows} == {"3"}
    for r in rows:  # every image made again from its row alone
        lum = white_luminance(12, int(r["seed"]), int(r["image_index"]), block=int(r["block"]),
                              contrast=float(r["contrast"]), kind=r["kind"])
        np.testing.assert_array_equal(_grey(a / r["path"]), np.round(lum * 255))
    first = _grey(a / rows[0]["path"])
    assert set(np.unique(first)) <= {0, 255}
    assert (first[:5, :5] == first[0, 0]).all() and (first[10:, 10:] == first[10, 10]).all()  # 5 px blocks, cut
    b = white_noise(tmp_path / "b", size=12, n=3, block=5, seed=3)  # a shorter set: the same first images
    for ra, rb in zip(rows, _rows(b)):
        np.testing.assert_array_equal(_grey(a / ra["path"]), _grey(b / rb["path"]))
    c = white_noise(tmp_path / "c", size=12, n=3, block=5, seed=4)
    assert not np.array_equal(_grey(c / _rows(c)[0]["path"]), first)
    g = white_noise(tmp_path / "g", size=32, n=2, kind="gaussian", contrast=0.6)
    values = _grey(g / _rows(g)[0]["path"]) / 255
    assert abs(values.mean() - 0.5) < 0.03 and abs(values.std() - 0.1) < 0.02  # σ = contrast / 6


def test_noise_folders_follow_the_generated_folder_rules(tmp_path):
    root = white_noise(tmp_path / "w", size=8, n=5)
    with pytest.raises(ConfigError, match="overwrite"):
        white_noise(root, size=8, n=2)
    white_noise(root, size=8, n=2, overwrite=True)
    assert len(list(root.glob("*.png"))) == 2 and len(_rows(root)) == 2  # the old set is gone
    sparse_noise(root, size=8, grid=4, overwrite=True)
    assert sorted(p.name for p in root.glob("*.png")) == sorted(r["path"] for r in _rows(root))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "photo.png").write_bytes(b"")
    with pytest.raises(ConfigError, match="did not generate"):
        sparse_noise(foreign, size=8)


@pytest.mark.parametrize("call, message", [
    (lambda p: sparse_noise(p, size=10, grid=4), "grid=4 must divide size=10"),
    (lambda p: sparse_noise(p, polarities=["up"]), "polarities"),
    (lambda p: sparse_noise(p, polarities="on"), "polarities"),
    (lambda p: sparse_noise(p, background=0.8, contrast=0.6), "use contrast <= 0.4"),
    (lambda p: sparse_noise(p, contrast=0), r"contrast must be in \(0, 1\]"),
    (lambda p: sparse_noise(p, repeats=0), "repeats must be an integer >= 1"),
    (lambda p: sparse_noise(p, size=True), "size must be an integer from 2 to 8192"),
    (lambda p: white_noise(p, n=0), "n must be an integer >= 1"),
    (lambda p: white_noise(p, size=8, block=9), "block=9 is larger"),
    (lambda p: white_noise(p, kind="pink"), "binary, gaussian"),
    (lambda p: white_noise(p, seed=-1), "seed must be"),
    (lambda p: white_noise(p, fmt="gif"), "png, bmp, tiff, jpg"),
])
def test_bad_noise_arguments(tmp_path, call, message):
    with pytest.raises(ConfigError, match=message):
        call(tmp_path / "x")
    assert not (tmp_path / "x").exists()  # checked before anything is written


# ---------------------------------------------------------------- gradient maps

def _random_net() -> nn.Sequential:
    """Fields: 3 → 7 → 9 (stride 2) → 13 (stride 2); in-place ReLUs as in torchvision."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(inplace=True), nn.Conv2d(6, 6, 5, padding=2),
                         nn.ReLU(inplace=True), nn.Conv2d(6, 4, 3, stride=2), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1)).eval()


def _bounds(centre: float, size: float) -> tuple[int, int]:
    return int(centre - (size - 1) / 2), int(centre + (size - 1) / 2)


def _support(erf: xr.DataArray, i: int) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(erf.isel(unit=i).values > 0)
    return rows.min(), rows.max(), cols.min(), cols.max()


def test_effective_field_fills_the_theoretical_field_of_a_random_net():
    x = torch.rand(6, 3, 29, 29, generator=torch.Generator().manual_seed(1))
    erf = effective_rf(_random_net(), "6", x, units=[(c, 6, 6) for c in range(4)] + [(1, 0, 0), (2, 12, 5)])
    assert erf.dims == ("unit", "input_y", "input_x") and erf.shape == (6, 29, 29)
    assert list(erf.attrs["rf_size"]) == [13, 13] and list(erf.attrs["rf_stride"]) == [2, 2]
    assert erf.attrs["site"] == "6" and erf.attrs["n_stimuli"] == 6 and "|d response / d input|" in erf.attrs["method"]
    np.testing.assert_array_equal(erf.channel, [0, 1, 2, 3, 1, 2])
    np.testing.assert_array_equal(erf.rf_center_y, 2 * erf.y.values + 2)  # 9 px at stride 2, centre 2y + 2
    for i in range(len(erf.unit)):
        cy, cx = float(erf.rf_center_y[i]), float(erf.rf_center_x[i])
        (y0, y1), (x0, x1) = _bounds(cy, 13), _bounds(cx, 13)
        r0, r1, c0, c1 = _support(erf, i)
        assert r0 >= max(y0, 0) and r1 <= min(y1, 28) and c0 >= max(x0, 0) and c1 <= min(x1, 28), i
        if i < 4:  # the centre: away from the border, the support reaches the field's edges
            assert (r0, r1, c0, c1) == (y0, y1, x0, x1), i
            assert (erf.isel(unit=i).values[y0:y1 + 1, x0:x1 + 1] > 0).mean() > 0.8


def test_effective_field_of_resnet18_layer1_lies_inside_the_theoretical_one(zoo):
    m = zoo("resnet18")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    erf = effective_rf(m, "layer1", x, units=[(1, 8, 8), (4, 7, 9), (3, 0, 15)])  # live for these images
    assert list(erf.attrs["rf_size"]) == [43, 43] and erf.attrs["model"] == "resnet18"
    np.testing.assert_array_equal(erf.rf_center_y, [32, 28, 0])
    np.testing.assert_array_equal(erf.rf_center_x, [32, 36, 60])
    for i in range(3):
        (y0, y1), (x0, x1) = _bounds(float(erf.rf_center_y[i]), 43), _bounds(float(erf.rf_center_x[i]), 43)
        r0, r1, c0, c1 = _support(erf, i)
        assert r0 >= max(y0, 0) and r1 <= min(y1, 63) and c0 >= max(x0, 0) and c1 <= min(x1, 63), i
    assert _support(erf, 0) == (11, 53, 11, 53)


class _Stop(Exception):
    pass


def _by_hand(model: nn.Module, site: str, x: torch.Tensor, units, *, call: int = 0, clone: bool = True,
             stop: str | None = None, batch_size: int = 32):
    """The same map with autograd, in effective_rf's batches (kernels are chosen by batch
    size, so only then equal bit for bit): the site's output kept by a hook that hands a
    clone on to the rest of the network (so nothing downstream can write into it), which runs
    on to the end or to module `stop`."""
    modules = dict(model.named_modules())
    module = modules[site]
    seen, kept = [0], {}

    def halt(mod, args, out):
        raise _Stop

    def hook(mod, args, out):
        seen[0] += 1
        if seen[0] - 1 == call:
            kept["y"] = out
            return out.clone() if clone else None
        return None

    handles = [module.register_forward_hook(hook)]
    if stop is not None:
        handles.append(modules[stop].register_forward_hook(halt))
    maps = np.zeros((len(units), *x.shape[-2:]))
    try:
        for batch in x.split(batch_size):
            leaf = batch.clone().requires_grad_(True)
            seen[0] = 0
            try:
                model(leaf)
            except _Stop:
                pass
            for k, (c, i, j) in enumerate(units):
                (g,) = torch.autograd.grad(kept["y"][:, c, i, j].sum(), leaf, retain_graph=True)
                maps[k] += g.abs().sum(1).sum(0, dtype=torch.float64).numpy()
    finally:
        for handle in handles:
            handle.remove()
    return maps / len(x)


def _out_of_place(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model)
    for mod in twin.modules():
        if isinstance(mod, nn.ReLU):
            mod.inplace = False
    return twin


def test_the_gradient_map_equals_autograd_by_hand_on_a_random_net():
    m = _random_net()
    x = torch.randn(3, 3, 21, 21, generator=torch.Generator().manual_seed(2))
    units = [(0, 4, 4), (3, 2, 6), (5, 8, 1)]
    erf = effective_rf(m, "2", x, units=units, batch_size=2)  # a conv whose output a ReLU then rectifies in place
    np.testing.assert_array_equal(erf.values, _by_hand(_out_of_place(m), "2", x, units, batch_size=2))


@pytest.mark.parametrize("site, call, units", [
    ("bn1", 0, [(0, 16, 16), (5, 10, 20)]),  # then ReLU(inplace=True) overwrites it
    ("layer1.0.bn2", 0, [(2, 8, 8), (7, 3, 12)]),  # then `out += identity` overwrites it
    ("layer1.0.relu", 1, [(1, 8, 8)]),  # the in-place ReLU's own output, second call
])
def test_the_gradient_map_of_resnet18_is_that_of_the_site_not_of_what_overwrites_it(zoo, site, call, units):
    m = zoo("resnet18")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    name = f"{site}:{call}" if site.endswith("relu") else site
    erf = effective_rf(m, name, x, units=units)
    reference = _by_hand(_out_of_place(m), site, x, units, call=call, stop="layer1")
    np.testing.assert_array_equal(erf.values, reference)
    if site == "bn1":  # naive capture (keep the tensor, let the net run on): the ReLU's gradient instead
        naive = _by_hand(m, site, x, units, clone=False, stop="layer1")
        assert not np.allclose(naive, reference, rtol=1e-3)


def test_model_state_is_restored_and_hooks_removed_when_the_forward_raises():
    class Boom(nn.Module):
        calls = 0

        def forward(self, x):
            Boom.calls += 1
            if Boom.calls > 1:  # the trace passes, the measurement fails
                raise RuntimeError("boom")
            return x

    m = nn.Sequential(nn.Conv2d(3, 2, 3), Boom()).train()
    with pytest.raises(RuntimeError, match="boom"):
        effective_rf(m, "1", torch.randn(2, 3, 8, 8))
    assert m.training
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    erf = effective_rf(_random_net().train(), "0", torch.randn(1, 3, 9, 9))
    assert erf.sizes["unit"] == 6  # units="center": every channel at the centre


def test_effective_rf_reads_image_folders(tmp_path):
    folder = white_noise(tmp_path / "w", size=20, n=3)
    m = _random_net()
    erf = effective_rf(m, "2", folder, input_size=20, units=[(0, 7, 7)])
    assert erf.attrs["n_stimuli"] == 3 and "Resize" in erf.attrs["preprocessing"]
    x = torch.stack([_plain()(Image.open(folder / r["path"]).convert("RGB")) for r in _rows(folder)])
    from unitrec.anatomy.preprocess import IMAGENET_MEAN, IMAGENET_STD

    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    np.testing.assert_array_equal(erf.values, _by_hand(_out_of_place(m), "2", x, [(0, 7, 7)]))


def test_the_field_of_a_linear_readout_is_its_weights():
    torch.manual_seed(5)
    m = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 5, 4)).eval()
    erf = effective_rf(m, "1", torch.randn(2, 3, 6, 5), units=[3, 0])
    assert erf.shape == (2, 6, 5) and list(erf.channel.values) == [3, 0] and "rf_size" not in erf.attrs
    w = m[1].weight.detach().reshape(4, 3, 6, 5).abs().sum(1).numpy()
    np.testing.assert_array_equal(erf.values, w[[3, 0]])  # one weight per gradient entry, the same sum


@pytest.mark.parametrize("kwargs, error, message", [
    ({"units": "everything"}, ConfigError, "'center' or a list"),
    ({"units": [(0, 99, 0)]}, SelectionError, r"row \(y\) 99 is outside"),
    ({"units": [(0, 1)]}, ConfigError, r"\(channel, y, x\)"),
    ({"units": [(0, 1, 1), (0, 1, 1)]}, SelectionError, "twice"),
    ({"batch_size": 0}, ConfigError, "batch_size"),
    ({"site": "nope"}, LayerNotFoundError, "no recording site 'nope'"),
    ({"input_size": 12}, ConfigError, "input_size=12"),
])
def test_bad_effective_rf_arguments(kwargs, error, message):
    args = {"site": "2", **kwargs}
    with pytest.raises(error, match=message):
        effective_rf(_random_net(), args.pop("site"), torch.randn(1, 3, 16, 16), **args)


# ---------------------------------------------------------------- reverse correlation

def _linear_stack() -> nn.Sequential:
    torch.manual_seed(4)
    return nn.Sequential(nn.Conv2d(3, 2, 5, bias=False), nn.Conv2d(2, 1, 3, bias=False)).eval()


def _composite_kernels(model: nn.Sequential, absolute: bool = False) -> np.ndarray:
    """The 7 × 7 filter per colour of conv 5 × 5 then conv 3 × 3: per path the full convolution
    of the two kernels (cross-correlations compose that way), summed over the paths (in float64;
    of the kernels' absolute values with `absolute`)."""
    from scipy.signal import convolve2d

    k1, k2 = model[0].weight.detach().double().numpy(), model[1].weight.detach().double().numpy()
    if absolute:
        k1, k2 = np.abs(k1), np.abs(k2)
    return np.stack([sum(convolve2d(k1[m, c], k2[0, m]) for m in range(k1.shape[0])) for c in range(3)])


def test_the_sta_of_white_noise_recovers_a_linear_filter(tmp_path):
    m = _linear_stack()
    folder = white_noise(tmp_path / "noise", size=16, n=2000, seed=7)
    path = ur.record(m, folder, [{"name": "1", "units": "center"}], tmp_path / "lin.h5", transform=_plain(),
                     batch_size=500, progress=False)
    da = ur.load_layer(path, "1")
    sta = spike_triggered_average(da)
    assert sta.dims == ("unit", "input_y", "input_x") and sta.shape == (1, 16, 16)
    assert list(sta.attrs["rf_size"]) == [7, 7] and sta.attrs["n_stimuli"] == 2000
    assert float(sta.rf_center_y[0]) == 8.0  # output 10 × 10, centre 5: 5 + 3
    kernels = _composite_kernels(m)
    kernel = kernels.sum(0)  # grey noise: the three colours see the same pixels
    inside = sta.values[0, 5:12, 5:12]
    assert np.corrcoef(inside.ravel(), kernel.ravel())[0, 1] > 0.95
    slope = (inside * kernel).sum() / (kernel**2).sum()
    assert abs(slope - 0.25) < 0.025  # binary noise in {0, 1}: variance 1/4 per pixel
    outside = np.abs(sta.values[0]).copy()
    outside[5:12, 5:12] = 0
    assert outside.max() < 0.25 * np.abs(inside).max()
    # the gradient of a linear unit is its filter too (|.| per colour, summed)
    erf = effective_rf(m, "1", torch.rand(1, 3, 16, 16))
    # float32 backward: per colour a dot product of at most 2 · 3 · 3 products, then 3 colours
    # summed, against float64
    bound = float32_sum_bound(_composite_kernels(m, absolute=True).sum(0), 2 * 3 * 3 + 3 + 1)
    assert (np.abs(erf.values[0, 5:12, 5:12] - np.abs(kernels).sum(0)) <= bound).all()


def test_sta_by_hand_streams_and_normalises(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((50, 6, 5))
    resp = rng.random((50, 2, 3)) + np.stack([images[:, 1, 2], images[:, 4, 0], images[:, 0, 0]], -1)[:, None]
    resp[7] = np.nan  # a skipped stimulus is left out
    da = xr.DataArray(resp, dims=("stimulus", "channel", "unit_pos"),
                      coords={"stimulus": [f"{i:02d}" for i in range(50)], "channel": [4, 9]},
                      attrs={"site": "s", "rf_size": [3, 3]})
    keep = np.arange(50) != 7
    s = images[keep] - images[keep].mean(0)
    r = resp[keep].reshape(49, -1)
    want = np.einsum("nu,nhw->uhw", r, s).reshape(2, 3, 6, 5)
    for chunk in (None, 4):
        sta = spike_triggered_average(da, stimuli=images, chunk_size=chunk)
        assert sta.dims == ("channel", "unit_pos", "input_y", "input_x")
        np.testing.assert_allclose(sta.values, want / 49, rtol=1e-9, atol=1e-15)
        np.testing.assert_array_equal(sta.channel, [4, 9])
    weighted = spike_triggered_average(da, stimuli=np.repeat(images[..., None], 3, -1), normalize="response")
    np.testing.assert_allclose(weighted.values, want / r.sum(0).reshape(2, 3)[..., None, None], rtol=1e-9,
                               atol=1e-15)
    assert weighted.attrs["rf_size"] == [3, 3] and "sum_i r_i" in weighted.attrs["method"]
    with pytest.raises(ConfigError, match="count, response"):
        spike_triggered_average(da, stimuli=images, normalize="spikes")
    with pytest.raises(ConfigError, match=r"\(50, H, W\)"):
        spike_triggered_average(da, stimuli=images[:10])
    with pytest.raises(ConfigError, match="stimulus_root"):
        spike_triggered_average(da)
    with pytest.raises(ConfigError, match="a folder or an array"):
        spike_triggered_average(da, stimuli=[images])


# ---------------------------------------------------------------- sparse noise

@pytest.fixture(scope="module")
def one_pixel(tmp_path_factory):
    """A 3 × 3 conv that reads one pixel (row +0, column +2 of its window), on 16 px sparse noise."""
    tmp = tmp_path_factory.mktemp("sparse")
    conv = nn.Conv2d(3, 1, 3, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :, 0, 2] = 1.0
    model = nn.Sequential(conv, nn.ReLU()).eval()
    folder = sparse_noise(tmp / "sparse", size=16, grid=1)
    path = ur.record(model, folder, ["1"], tmp / "s.h5", transform=_plain(), batch_size=256, progress=False)
    return ur.load_layer(path, "1")


def test_sparse_noise_maps_peak_on_the_pixel_the_unit_reads(one_pixel):
    maps = sparse_noise_map(one_pixel)
    assert maps.dims == ("polarity", "channel", "y", "x", "input_y", "input_x")
    assert list(maps.polarity.values) == ["on", "off"] and maps.shape[-2:] == (16, 16)
    # the unit sums three colour channels of one pixel: 3 · 128/255 on the background (round(0.5 · 255)),
    # 3 on an on square there, 0 on an off square; the maps subtract the mean over all 512 images
    bg = float(np.float32(3 * 128 / 255))
    mean = (510 * bg + 3 + 0) / 512
    # each response a float32 sum of 3 colours (and the pixel's own rounding), at most 3; a map and
    # the mean it subtracts average such values: off by twice that bound at most
    atol = 2 * float(float32_sum_bound(3.0, 3 + 1))
    for y in (0, 5, 13):
        for x in (0, 7, 13):
            want = np.full((2, 16, 16), bg - mean)
            want[0, y, x + 2], want[1, y, x + 2] = 3 - mean, 0 - mean
            np.testing.assert_allclose(maps.isel(channel=0, y=y, x=x).values, want, rtol=0, atol=atol)
    assert float(maps.rf_center_x.isel(x=7)) == 8 and list(maps.attrs["rf_size"]) == [3, 3]


def test_the_sta_of_sparse_noise_peaks_there_too(one_pixel):
    sta = spike_triggered_average(one_pixel.isel(y=[2, 9], x=[4, 11]))
    assert sta.dims == ("channel", "y", "x", "input_y", "input_x")
    for i, y in enumerate((2, 9)):
        for j, x in enumerate((4, 11)):
            m = sta.isel(channel=0, y=i, x=j).values
            assert np.unravel_index(np.argmax(m), m.shape) == (y, x + 2)


def test_resized_stimuli_are_correlated_as_the_network_saw_them(tmp_path):
    from unitrec.anatomy.preprocess import build_transform

    conv = nn.Conv2d(3, 1, 3, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :, 0, 2] = 1.0
    folder = sparse_noise(tmp_path / "s", size=8, grid=2)
    path = ur.record(nn.Sequential(conv).eval(), folder, ["0"], tmp_path / "r.h5", progress=False,
                     transform=build_transform({"resize": 16, "crop": 16, "normalize": None}))
    da = ur.load_layer(path, "0")
    sta = spike_triggered_average(da.isel(y=[6], x=[3]))
    assert sta.shape[-2:] == (16, 16)  # the network's pixels, not the files'
    m = sta.values.reshape(16, 16)
    assert m[6, 5] > 0.9 * m.max() and m.max() > 5 * np.abs(m[:, 10:]).max()
    with pytest.raises(ConfigError, match="resize or crop the 8×8 sparse-noise images"):
        sparse_noise_map(da)


def test_sparse_noise_map_needs_the_square_coords(tmp_path):
    folder = white_noise(tmp_path / "w", size=8, n=4)
    path = ur.record(_random_net(), folder, ["0"], tmp_path / "w.h5", transform=_plain(), progress=False)
    with pytest.raises(ConfigError, match="square_y, square_x, square_size, polarity"):
        sparse_noise_map(ur.load_layer(path, "0"))


# ---------------------------------------------------------------- figure

def test_plot_rf_map_outlines_the_theoretical_field(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.patches import Rectangle

    x = torch.rand(2, 3, 29, 29, generator=torch.Generator().manual_seed(1))
    erf = effective_rf(_random_net(), "6", x, units=[(0, 6, 6), (1, 0, 0), (3, 2, 9)])
    fig = plot_rf_map(erf, ncols=2)
    fig.savefig(tmp_path / "erf.png", dpi=50)
    assert (tmp_path / "erf.png").stat().st_size > 0
    assert "6" in fig._suptitle.get_text() and "Sequential" in fig._suptitle.get_text()
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["channel=0, y=6, x=6", "channel=1, y=0, x=0",
                                                 "channel=3, y=2, x=9"]
    for ax, (cy, cx) in zip(panels, [(14, 14), (2, 2), (6, 20)]):
        (rect,) = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert rect.get_xy() == (cx - 6.5, cy - 6.5) and (rect.get_width(), rect.get_height()) == (13, 13)
        assert ax.get_xlim() == (-0.5, 28.5) and ax.get_ylim() == (28.5, -0.5)  # clipped to the image
    assert len(fig.axes) == 6  # a colourbar per panel
    with pytest.raises(ConfigError, match="0..2"):
        plot_rf_map(erf, units=[3])
    with pytest.raises(ConfigError, match="input_y, input_x"):
        plot_rf_map(erf.transpose("input_y", "unit", "input_x"))


def test_plot_rf_map_of_on_off_maps(one_pixel):
    pytest.importorskip("matplotlib")
    maps = sparse_noise_map(one_pixel.isel(y=[3], x=[3]))
    fig = plot_rf_map(maps)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["polarity=on, channel=0, y=3, x=3",
                                                                     "polarity=off, channel=0, y=3, x=3"]


@pytest.mark.slow  # a fresh interpreter
def test_the_analysis_module_imports_without_torch():
    code = ("import sys, unitrec.analysis.experiments.rf_mapping; "
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
