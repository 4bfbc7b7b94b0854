"""Analyses and the report on summaries (keep: summary | both).

The oracle is the full array recorded beside the summary (``keep: both``): the
analyses must give the same result from either. Montages are checked against the
geometry of the receptive field (worked out by hand for the model below) and
against the tensor the recording's own transform makes of each image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from PIL import Image
from torch import nn

import unitrec as ur
from unitrec import analysis as A
from unitrec.anatomy.preprocess import build_transform, describe_transform
from unitrec.errors import ConfigError
from unitrec.stimuli import load_rgb
from unitrec.stimuli.generate import gratings

pytest.importorskip("matplotlib")

CROP = 24  # the network's input: gratings of 32 px, resized to 40, centre crop 24
LAYERS = [
    {"name": "1", "keep": "summary", "top": 4},  # conv map kept as a summary only; rf 3 px
    {"name": "3", "keep": "both", "top": 6},  # conv map (channel, y, x), rf 5 px, stride 2
    {"name": "2", "units": "center", "keep": "both", "top": 5},  # selected units (unit,), rf 5 px
    {"name": "6", "keep": "both"},  # linear read-out: (channel,), negative responses, no RF
    "0",  # a site stored in full only
]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5)).eval()


def _transform():
    return build_transform({"resize": 40, "crop": CROP, "normalize": None})


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("summary_analysis")
    root = gratings(tmp / "stimuli", size=32, orientations=[0, 45, 90, 135], spatial_frequencies=[2, 4],
                    phases=[0, 180])
    path = ur.record(_model(), root, LAYERS, tmp / "acts.h5", batch_size=5, progress=False,
                     transform=_transform())
    return path, root


# -- top_stimuli ---------------------------------------------------------------------


@pytest.mark.parametrize("site", ["3", "2", "6"])
def test_top_stimuli_of_a_summary_equals_that_of_the_full_array(recording, site):
    path, _ = recording
    full, summary = ur.load_layer(path, site), ur.load_summary(path, site)
    for k in (1, 3, summary.sizes["rank"]):
        from_full, from_summary = A.top_stimuli(full, k), A.top_stimuli(summary, k)
        xr.testing.assert_equal(from_summary, from_full)
        assert from_summary["stimulus"].dims == (*full.dims[1:], "rank")
        assert set(from_summary.data_vars) == set(from_full.data_vars) >= {"stimulus", "response", "orientation"}
        assert from_summary["stimulus"].dtype.kind == "U"


def test_top_stimuli_of_a_summary_only_site_and_its_limits(recording):
    path, _ = recording
    summary = ur.load_summary(path, "1")
    top = A.top_stimuli(summary, 4)
    assert top["stimulus"].dims == ("channel", "y", "x", "rank") and top.sizes["rank"] == 4
    np.testing.assert_array_equal(top["response"].values[..., 0], summary["max"].values)
    with pytest.raises(ConfigError, match=r"4 ranks.*`top:` in its layer entry"):
        A.top_stimuli(summary, 5)
    with pytest.raises(ConfigError, match="positive integer"):
        A.top_stimuli(summary, 0)


# -- lifetime sparseness ---------------------------------------------------------------


@pytest.mark.parametrize("site", ["3", "2", "6"])
def test_lifetime_sparseness_of_a_summary_equals_that_of_the_full_array(recording, site):
    path, _ = recording
    full, summary = ur.load_layer(path, site), ur.load_summary(path, site)
    from_full, from_summary = A.lifetime_sparseness(full), A.lifetime_sparseness(summary)
    assert from_summary.dims == from_full.dims and from_summary.name == from_full.name == "sparseness"
    xr.testing.assert_allclose(from_summary, from_full, rtol=1e-12, atol=1e-12)
    keep_full, keep_summary = (A.lifetime_sparseness(x, negative="keep") for x in (full, summary))
    xr.testing.assert_allclose(keep_summary, keep_full, rtol=1e-9, atol=1e-12)


def test_sparseness_of_a_summary_with_negative_responses(recording):
    path, _ = recording
    summary = ur.load_summary(path, "6")  # a linear read-out goes negative
    assert float(summary["min"].min()) < 0
    with pytest.raises(ConfigError, match="negative"):
        A.lifetime_sparseness(summary, negative="raise")
    assert not np.allclose(A.lifetime_sparseness(summary, negative="keep"), A.lifetime_sparseness(summary))


# -- montages ------------------------------------------------------------------------------


def _rectangles(ax):
    return [(p.get_xy(), p.get_width(), p.get_height()) for p in ax.patches]


def test_montage_outlines_the_receptive_field_where_it_is(recording):
    path, _ = recording
    # site "3" (after conv 3x3 pad 1, then conv 3x3 stride 2): unit x covers input
    # pixels 2x-1 .. 2x+3, a 5-pixel field centred on 2x+1
    fig = A.plot_montage(ur.load_summary(path, "3"), {"channel": 1, "y": 2, "x": 7}, k=3)
    assert len(fig.axes) == 3
    for ax in fig.axes:
        assert _rectangles(ax) == [((15 - 2.5, 5 - 2.5), 5.0, 5.0)]
        assert ax.get_xlim() == (-0.5, CROP - 0.5) and ax.get_ylim() == (CROP - 0.5, -0.5)
    # the summary-only site: a 3-pixel field centred on the unit itself
    fig = A.plot_montage(ur.load_summary(path, "1"), {"channel": 0, "y": 10, "x": 4}, k=2)
    assert all(_rectangles(ax) == [((4 - 1.5, 10 - 1.5), 3.0, 3.0)] for ax in fig.axes)
    # selected units carry their centre on the unit dim
    full = ur.load_layer(path, "2")
    cy, cx = float(full.rf_center_y[1]), float(full.rf_center_x[1])
    fig = A.plot_montage(full, 1, k=2)
    assert all(_rectangles(ax) == [((cx - 2.5, cy - 2.5), 5.0, 5.0)] for ax in fig.axes)
    # a unit without a centre (linear read-out) gets no outline; outline=False none either
    assert not any(ax.patches for ax in A.plot_montage(ur.load_summary(path, "6"), 0, k=2).axes)
    assert not any(ax.patches for ax in A.plot_montage(ur.load_summary(path, "3"), 0, k=2, outline=False).axes)


@pytest.mark.parametrize("site", ["3", "2", "6"])
def test_montage_of_a_summary_shows_the_images_of_the_full_array(recording, site):
    path, root = recording
    full, summary = ur.load_layer(path, site), ur.load_summary(path, site)
    unit = int(np.argmax(np.ptp(summary["top_response"].values.reshape(summary.sizes["rank"], -1), axis=0) > 0))
    a = A.plot_montage(full, unit, k=4)  # the first unit whose responses differ: a silent one shows no images
    b = A.plot_montage(summary, unit, root, k=4)  # stimulus_root positional, as before
    assert len(a.axes) == len(b.axes) == 4
    for x, y in zip(a.axes, b.axes):
        np.testing.assert_array_equal(np.asarray(x.images[0].get_array()), np.asarray(y.images[0].get_array()))
        assert x.get_title() == y.get_title() and _rectangles(x) == _rectangles(y)


def test_montage_shows_the_image_the_network_saw(recording):
    path, root = recording
    full = ur.load_layer(path, "3")
    fig = A.plot_montage(full, 5, k=3)
    labels = A.top_stimuli(full, 3)["stimulus"].values.reshape(-1, 3)[5]
    for ax, label in zip(fig.axes, labels):
        seen = _transform()(load_rgb(root / label))  # what the recording fed the model (no normalisation)
        expected = (seen.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), expected)


def test_montage_rebuilds_a_non_square_resize_and_crop(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "stimuli"
    folder.mkdir()
    for i, (h, w) in enumerate([(30, 50), (50, 30), (41, 37)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    transform = build_transform({"resize": 26, "crop": 20, "normalize": "imagenet"})
    path = ur.record(_model(), folder, ["3"], tmp_path / "acts.h5", progress=False, transform=transform)
    full = ur.load_layer(path, "3")
    fig = A.plot_montage(full, 0, k=3)
    shown = {str(label): np.asarray(ax.images[0].get_array())
             for label, ax in zip(A.top_stimuli(full.isel(channel=0, y=0, x=0), 3)["stimulus"].values, fig.axes)}
    geometric = build_transform({"resize": 26, "crop": 20, "normalize": None})
    for label, pixels in shown.items():
        expected = (geometric(load_rgb(folder / label)).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert pixels.shape == (20, 20, 3)
        np.testing.assert_array_equal(pixels, expected)


def test_montage_says_when_it_cannot_rebuild_the_preprocessing(recording):
    path, _ = recording
    summary = ur.load_summary(path, "3")
    summary.attrs["preprocessing"] = "Compose( Lambda() ToTensor() )"  # a custom step: not rebuilt
    unit = int(np.argmax(summary["max"].values.reshape(-1) > 0))  # unit 0 is silent: it shows no images
    fig = A.plot_montage(summary, unit, k=2)
    assert "not rebuilt" in fig._suptitle.get_text()
    assert all(np.asarray(ax.images[0].get_array()).shape == (32, 32, 3) and not ax.patches for ax in fig.axes)
    fig = A.plot_montage(summary, unit, k=2, input_size=CROP)
    assert all(np.asarray(ax.images[0].get_array()).shape == (CROP, CROP, 3) and ax.patches for ax in fig.axes)


def test_the_weights_own_preprocessing_is_rebuilt():
    from torchvision.transforms import v2

    from unitrec.analysis.experiments._images import geometry as _geometry

    weights = pytest.importorskip("torchvision.models").ResNet18_Weights.DEFAULT
    assert _geometry(describe_transform(weights.transforms())) == [
        ("resize", [256], "InterpolationMode.BILINEAR", None), ("crop", [224])]
    text = describe_transform(v2.Compose([v2.Resize(30, max_size=40), v2.CenterCrop((20, 24)), v2.ToImage(),
                                          v2.ToDtype(torch.float32, scale=True)]))
    assert _geometry(text) == [("resize", [30], "bilinear", [40]), ("crop", [20, 24])]
    assert _geometry("none (tensor stimuli)") == []
    assert _geometry("Compose( Resize(size=8) Pad(padding=3, fill=0, padding_mode=constant) ToTensor() )") is None


def test_a_montage_needs_a_stimulus_root(recording):
    path, _ = recording
    summary = ur.load_summary(path, "3")
    assert summary.attrs["stimulus_root"]  # the folder travels in the attributes
    del summary.attrs["recording"], summary.attrs["stimulus_root"]  # no file to read the folder from
    with pytest.raises(ConfigError, match="stimulus_root"):
        A.plot_montage(summary, 0, k=2)


# -- the report -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report_recording(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("summary_report")
    root = gratings(tmp / "stimuli", size=24, orientations=[0, 45, 90, 135], spatial_frequencies=[2],
                    phases=[0, 180])
    layers = [{"name": "1", "keep": "summary", "top": 3}, "6"]
    return ur.record(_model(), root, layers, tmp / "acts.h5", batch_size=4, progress=False,
                     transform=build_transform({"resize": None, "crop": None, "normalize": "imagenet"}))


def test_report_with_a_summary_only_site(report_recording, tmp_path, monkeypatch):
    from unitrec import report

    loaded = []
    real = report.load_layer

    def spy(path, name, **kwargs):
        loaded.append(name)
        return real(path, name, **kwargs)

    monkeypatch.setattr(report, "load_layer", spy)
    index = report.write_report(report_recording, tmp_path / "report")
    assert loaded == ["6"]  # never the summary-only site
    text = index.read_text()
    assert "<h2>Summaries</h2>" in text and "stimuli summarised" in text
    table = text.split("<table class='summaries'>")[1].split("</table>")[0]
    rows = table.split("<tr>")[2:]
    assert len(rows) == 1 and rows[0].startswith("<td>1</td><td>2304 (4×24×24)</td><td>8</td>")
    summary = ur.load_summary(report_recording, "1")
    assert f"{float(summary['mean'].mean()):.3g}" in rows[0]
    assert f"{float(np.nanmedian(summary['sparseness'])):.2f}" in rows[0]
    best = int(np.argmax(summary["max"].values.reshape(-1)))
    assert str(summary["top_stimulus"].values[0].reshape(-1)[best]) in rows[0]
    montages = sorted(p.name for p in index.parent.glob("montage_1_*.png"))
    assert len(montages) == 3 and all(name in text for name in montages)
    assert "tuning_6.png" in text and "rdm_6.png" in text


def test_report_of_summaries_only(tmp_path):
    x = gratings(tmp_path / "stimuli", size=24, orientations=[0, 90], spatial_frequencies=[2], phases=[0, 180])
    path = ur.record(_model(), x, [{"name": "3", "keep": "summary", "top": 2}], tmp_path / "acts.h5",
                     progress=False, transform=build_transform({"resize": None, "crop": None, "normalize": None}))
    from unitrec.report import write_report

    text = write_report(path, tmp_path / "report").read_text()
    assert "<h2>Summaries</h2>" in text and "montage_3_" in text and "rdm_" not in text
