"""Tests of unitrec.analysis.plots: each figure's layout, and saving it to PNG."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402

from unitrec.analysis import (  # noqa: E402
    layer_similarity,
    plot_layer_matrix,
    plot_montage,
    plot_rdm,
    plot_tuning_curves,
    rdm,
    tuning_curves,
)
from unitrec.errors import SelectionError, StimulusError, UnitrecError  # noqa: E402
from unitrec.stimuli.generate import gratings  # noqa: E402


@pytest.fixture
def grating_recording(tmp_path) -> tuple[xr.DataArray, object]:
    """Gratings on disk and a fake (stimulus, channel, y, x) recording of them."""
    root = gratings(tmp_path / "stim", size=16, orientations=(0, 45, 90, 135), phases=(0, 180))
    import csv

    with open(root / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    ori = np.array([float(r["orientation"]) for r in rows])
    rng = np.random.default_rng(0)
    prefs = np.array([0, 45, 90, 135, 0, 90])
    resp = 1.2 + np.cos(np.deg2rad(2 * (ori[:, None] - prefs))) + 0.1 * rng.normal(size=(len(rows), 6))
    da = xr.DataArray(
        resp.reshape(len(rows), 6, 1, 1),
        dims=("stimulus", "channel", "y", "x"),
        coords={"stimulus": [r["path"] for r in rows], "orientation": ("stimulus", ori)},
    )
    return da, root


def _saved(fig: Figure, tmp_path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    fig.savefig(path)
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_tuning_curves(grating_recording, tmp_path):
    da, _ = grating_recording
    ds = tuning_curves(da)
    fig = plot_tuning_curves(ds, units=[0, 2, 5])
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    line = fig.axes[1].lines[0]
    np.testing.assert_allclose(line.get_ydata(), ds["mean"].values[:, 2, 0, 0])
    assert "channel=2" in fig.axes[1].get_title()
    assert len(plot_tuning_curves(ds).axes) == 6
    _saved(fig, tmp_path, "tuning")
    with pytest.raises(SelectionError):
        plot_tuning_curves(ds, units=[6])


def test_plot_rdm_thins_labels(grating_recording, tmp_path):
    da, _ = grating_recording
    fig = plot_rdm(rdm(da), max_labels=6)
    assert len(fig.axes) == 2 and len(fig.axes[0].images) == 1
    n_ticks = len(fig.axes[0].get_xticks())
    assert n_ticks == 6  # every 4th of 24
    assert fig.axes[0].get_xticklabels()[1].get_text() == str(da.stimulus.values[4])
    _saved(fig, tmp_path, "rdm")


def test_plot_montage(grating_recording, tmp_path):
    da, root = grating_recording
    fig = plot_montage(da, {"channel": 2, "y": 0, "x": 0}, root, k=4)
    assert len(fig.axes) == 4
    assert all(len(ax.images) == 1 for ax in fig.axes)
    # unit 2 prefers 90°: its best stimulus is a horizontal grating
    best = fig.axes[0].images[0].get_array()
    assert best.shape == (16, 16, 3) and (np.asarray(best) == np.asarray(best)[:, :1]).all()
    same = plot_montage(da, 2, root, k=4)
    assert [a.get_title() for a in same.axes] == [a.get_title() for a in fig.axes]
    _saved(fig, tmp_path, "montage")
    with pytest.raises(StimulusError, match="nowhere"):
        plot_montage(da, 0, tmp_path / "nowhere", k=2)
    with pytest.raises(SelectionError):
        plot_montage(da, 99, root)


def test_plot_layer_matrix(grating_recording, tmp_path):
    da, _ = grating_recording
    layers = {"a": da, "b": da.isel(channel=slice(0, 3)), "c": da**2}
    matrix = layer_similarity(layers)
    fig = plot_layer_matrix(matrix)
    assert len(fig.axes) == 2 and len(fig.axes[0].images) == 1
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == 9 and texts[0] == "1.00"
    assert texts[1] == format(float(matrix.values[0, 1]), ".2f")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b", "c"]
    _saved(fig, tmp_path, "layers")


def test_missing_matplotlib_is_a_clear_error(grating_recording, monkeypatch):
    da, _ = grating_recording
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(UnitrecError, match=r"unitrec\[plots\]"):
        plot_rdm(rdm(da))


def test_rdm_and_layer_matrix_scales_say_what_they_show(grating_recording):
    from unitrec.analysis import layer_similarity

    da, _ = grating_recording
    fig = plot_rdm(rdm(da), vmin=0, vmax=2)
    matrix_ax, bar_ax = fig.axes
    assert bar_ax.get_ylabel() == "dissimilarity: 1 − Pearson r"
    assert matrix_ax.get_xlabel() == "stimulus" and matrix_ax.images[0].get_clim() == (0, 2)
    fig = plot_layer_matrix(layer_similarity({"a": da, "b": da.clip(min=0)}, "cka"))
    assert fig.axes[0].images[0].get_clim() == (0.0, 1.0)  # CKA on its own scale, not the data's range
