"""Figures that say what they show (issue 22, items 18 and 19): a silent unit has no
preferred stimuli, a c50 beyond the contrasts shown is flagged and left out of the
report's median, a receptive field with one side on the image is shaded, and timm's
eval preprocessing is rebuilt for montages, pixel for pixel."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import xarray as xr
from PIL import Image

from unitrec import analysis as A

pytest.importorskip("matplotlib")

PHASES = np.arange(0, 360, 90.0)


def _images(folder, sizes, seed=0) -> list[str]:
    rng = np.random.default_rng(seed)
    folder.mkdir(exist_ok=True)
    names = []
    for i, (h, w) in enumerate(sizes):
        names.append(f"im{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / names[-1])
    return names


def _recording(values, names, root, **attrs) -> xr.DataArray:
    values = np.asarray(values, dtype=float)
    return xr.DataArray(values, dims=("stimulus", "unit"),
                        coords={"stimulus": names, "unit": np.arange(values.shape[1])},
                        attrs={"stimulus_root": str(root), "site": "s", **attrs})


# -- item 19: a silent unit ------------------------------------------------------------------


def test_a_silent_unit_has_no_preferred_stimuli_and_says_so(tmp_path):
    names = _images(tmp_path / "stim", [(8, 8)] * 4)
    da = _recording(np.c_[np.zeros(4), np.full(4, 2.5), [1.0, 3.0, 2.0, 0.0]], names, tmp_path / "stim")
    silent = A.plot_montage(da, 0, k=3)
    assert silent.axes == []  # no images ranked by a tie
    assert "silent: response 0 to every stimulus, so no preferred stimuli" in silent._suptitle.get_text()
    constant = A.plot_montage(da, 1, k=3)
    assert constant.axes == [] and "the same response (2.5) to every stimulus" in constant._suptitle.get_text()
    driven = A.plot_montage(da, 2, k=3)  # a unit that prefers something still gets its images, best first
    assert [ax.get_title() for ax in driven.axes] == ["#1 · response 3", "#2 · response 2", "#3 · response 1"]


# -- item 19: a c50 beyond the contrasts shown ------------------------------------------------


def _contrast_recording() -> xr.DataArray:
    levels = np.array([0.05, 0.1, 0.2, 0.4, 0.8])
    rows = list(itertools.product([0.0], levels, PHASES))
    contrast = np.array([r[1] for r in rows])
    linear = contrast  # has not bent within the contrasts shown: the fit puts c50 at its bound
    saturating = contrast**2 / (contrast**2 + 0.2**2)  # c50 = 0.2
    return xr.DataArray(np.c_[linear, saturating, 0.5 * saturating], dims=("stimulus", "unit"),
                        coords={"stimulus": [f"s{i:03d}.png" for i in range(len(rows))],
                                "orientation": ("stimulus", [r[0] for r in rows]),
                                "spatial_frequency": ("stimulus", np.full(len(rows), 4.0)),
                                "contrast": ("stimulus", contrast), "phase": ("stimulus", [r[2] for r in rows])},
                        attrs={"site": "s"})


def test_a_c50_beyond_the_contrasts_is_flagged_not_printed():
    ds = A.contrast_response(_contrast_recording())
    assert ds.c50_in_range.values.tolist() == [False, True, True] and float(ds.c50[0]) > 0.8
    fig = A.plot_contrast_response(ds)
    titles = [ax.get_title() for ax in fig.axes]
    assert "c50 > 0.8 (not reached)" in titles[0] and "c50 =" not in titles[0]
    assert "c50 = 0.2," in titles[1]
    assert not any(line.get_xdata()[0] > 0.8 for line in fig.axes[0].lines if line.get_linestyle() == "--")


def test_the_report_median_c50_leaves_out_fits_beyond_the_contrasts():
    from unitrec.report import _contrast

    text, _, stem = _contrast(_contrast_recording(), False)
    ds = A.contrast_response(_contrast_recording())
    reached = ds.c50.values[ds.c50_in_range.values]
    assert stem == "contrast"
    assert text.startswith(f"contrast response: median c50 {np.median(reached):.2f} (of 2 units")
    assert "1 beyond them, left out" in text


# -- item 19: receptive-field outlines --------------------------------------------------------


def test_a_field_with_one_side_on_the_image_is_shaded():
    from matplotlib.patches import Rectangle

    # 32 × 32 maps: a 32 px field on the map exactly (its edges on the map's border); one with
    # only its top edge on the map (a lone line); a 9 px field inside it; a corner on it
    centres = [(15.5, 15.5), (45.0, 16.0), (16.0, 16.0), (40.0, 40.0)]
    sizes = [32, 40, 9, 40]
    panels = []
    for (cy, cx), size in zip(centres, sizes):
        maps = xr.DataArray(np.random.default_rng(0).random((1, 32, 32)), dims=("unit", "input_y", "input_x"),
                            coords={"rf_center_y": ("unit", [cy]), "rf_center_x": ("unit", [cx])},
                            attrs={"rf_size": [size, size]})
        ax = A.plot_rf_map(maps).axes[0]
        panels.append(([p.get_fill() for p in ax.patches if isinstance(p, Rectangle)], ax.get_title()))
    assert [fills for fills, _ in panels] == [[], [True], [False], [False]]  # no line along the border
    assert panels[0][1].endswith("field covers the map") and panels[1][1].endswith("field shaded: one side on the map")
    assert "field" not in panels[2][1] and "field" not in panels[3][1]


def test_a_montage_says_when_its_field_is_shaded(tmp_path):
    names = _images(tmp_path / "stim", [(16, 16)] * 3)
    da = _recording([[1.0], [3.0], [2.0]], names, tmp_path / "stim", rf_size=[64, 64])
    da = da.assign_coords(rf_center_y=("unit", [40.0]), rf_center_x=("unit", [8.0]))  # top edge at 8 only
    fig = A.plot_montage(da, 0, k=2)
    assert all(ax.patches[0].get_fill() for ax in fig.axes)
    assert "(64×64 px), shaded where it lies on the image" in " ".join(fig._suptitle.get_text().split())


# -- item 18: timm's eval preprocessing ---------------------------------------------------------


def _timm_transform(name: str):
    timm = pytest.importorskip("timm")
    config = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict())
    return timm.data.create_transform(**config, is_training=False)


@pytest.mark.parametrize("name", ["inception_resnet_v2", "vit_base_patch16_224", "resnet50.tv_in1k"])
def test_a_timm_models_eval_transform_is_rebuilt_pixel_for_pixel(tmp_path, name):
    from unitrec.anatomy.preprocess import describe_transform
    from unitrec.stimuli import load_rgb

    transform = _timm_transform(name)
    text = describe_transform(transform)
    assert "MaybeToTensor()" in text
    # landscape, portrait, smaller than the crop (padded), odd sizes
    names = _images(tmp_path / "stim", [(300, 420), (431, 260), (120, 90), (257, 257)], seed=1)
    da = _recording([[4.0], [3.0], [2.0], [1.0]], names, tmp_path / "stim", preprocessing=text)
    fig = A.plot_montage(da, 0, k=4)
    assert "not rebuilt" not in fig._suptitle.get_text()
    geometric = [t for t in transform.transforms if type(t).__name__ in ("Resize", "CenterCrop")]
    assert len(geometric) == 2
    for ax, label in zip(fig.axes, names):
        image = load_rgb(tmp_path / "stim" / label)
        for step in geometric:  # what timm's transform does before MaybeToTensor
            image = step(image)
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), np.asarray(image))


def test_torchvision_resize_with_max_size_and_a_larger_crop_are_rebuilt(tmp_path):
    from torchvision import transforms as T

    from unitrec.anatomy.preprocess import describe_transform
    from unitrec.stimuli import load_rgb

    timm = pytest.importorskip("timm")
    steps = [T.Resize(20, interpolation=T.InterpolationMode.BICUBIC, max_size=30), T.CenterCrop((28, 17))]
    transform = T.Compose([*steps, timm.data.transforms.MaybeToTensor()])
    names = _images(tmp_path / "stim", [(40, 100), (61, 33)], seed=2)
    da = _recording([[2.0], [1.0]], names, tmp_path / "stim", preprocessing=describe_transform(transform))
    fig = A.plot_montage(da, 0, k=2)
    for ax, label in zip(fig.axes, names):
        expected = T.Compose(steps)(load_rgb(tmp_path / "stim" / label))
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), np.asarray(expected))
