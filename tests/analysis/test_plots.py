"""Tests of unitrec.analysis.figures.plots: each figure's layout, and saving it to PNG."""

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
    root = gratings(tmp_path / "stim", size=16, orientations=(0, 45, 90, 135), spatial_frequencies=(2, 4, 6),
                    phases=(0, 180))
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
    curve = ds["mean"].values[:, 2, 0, 0]
    np.testing.assert_allclose(line.get_ydata(), [*curve, curve[0]])  # orientation wraps round to 180°
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


def test_plot_rdm_groups_by_a_coordinate_with_separators(grating_recording, tmp_path):
    da, _ = grating_recording
    shuffled = da.isel(stimulus=np.random.default_rng(0).permutation(da.sizes["stimulus"]))
    r = rdm(shuffled)
    fig = plot_rdm(r, by="orientation")
    ax = fig.axes[0]
    groups = np.unique(da.orientation.values)
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(g) for g in groups]
    assert len(ax.lines) == 2 * (len(groups) - 1)  # a row and a column line between groups
    assert ax.get_xlabel() == "stimuli grouped by orientation (deg)"
    order = np.argsort(r.orientation.values, kind="stable")
    np.testing.assert_array_equal(ax.images[0].get_array(), r.values[np.ix_(order, order)])
    with pytest.raises(UnitrecError, match="no stimulus coordinate 'colour'"):
        plot_rdm(r, by="colour")
    _saved(fig, tmp_path, "rdm_by")


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


# ------------------------------------------------------------ figures fit to publish


def _labelled(da: xr.DataArray) -> xr.DataArray:
    """The recording as load_layer gives it: a site name and CF units on the response."""
    return da.rename("conv1").assign_attrs(site="conv1", units="1")


def test_tuning_axes_say_their_units(grating_recording):
    da, _ = grating_recording
    da = _labelled(da).assign_coords(orientation=da.orientation.assign_attrs(units="degree"))
    ds = tuning_curves(da)
    fig = plot_tuning_curves(ds, units=[0, 2, 5], ncols=2)
    first, _, last = fig.axes
    assert first.get_ylabel() == "mean response\n± s.e.m. (a.u.)"
    assert last.get_xlabel() == "orientation (deg)"
    assert first.get_title() == f"conv1 · SI = {float(ds['selectivity'][0, 0, 0]):.2f}\nchannel=0, y=0, x=0"
    assert "SI = 1 − circular variance of the mean curve (period 180 deg)" in _text(fig)


def test_tuning_units_without_attributes(grating_recording):
    da, _ = grating_recording  # no attributes at all, as load_layer leaves its coordinates
    ax = plot_tuning_curves(tuning_curves(da), units=[0]).axes[0]
    assert ax.get_xlabel() == "orientation (deg)"  # the generators' units
    assert ax.get_ylabel() == "mean response\n± s.e.m."  # no units known: none claimed


def test_the_fallback_units_are_the_generators():
    from unitrec.analysis.figures._common import PARAMETER_UNITS as _PARAMETER_UNITS
    from unitrec.stimuli.generate import PARAMETER_UNITS

    assert _PARAMETER_UNITS == {name: units for name, (units, _) in PARAMETER_UNITS.items()}


def test_orientation_is_drawn_wrapped(grating_recording):
    da, _ = grating_recording
    ds = tuning_curves(da)
    fig = plot_tuning_curves(ds, units=[0, 1])
    line = fig.axes[0].lines[0]
    x, y = line.get_xdata(), line.get_ydata()
    np.testing.assert_array_equal(x, [0, 45, 90, 135, 180])
    assert y[-1] == y[0] == float(ds["mean"].sel(orientation=0).values[0, 0, 0])
    np.testing.assert_array_equal(fig.axes[0].get_xticks(), [0, 45, 90, 135, 180])
    # channel 0 prefers 0°: marked at 0° and at its repeat, 180°
    marks = sorted(ln.get_xdata()[0] for ln in fig.axes[0].lines if ln.get_linestyle() == "--")
    assert marks == [0, 180]


def test_other_parameters_are_not_wrapped(grating_recording):
    da, _ = grating_recording
    da = da.assign_coords(contrast=("stimulus", da.orientation.values / 135))
    ax = plot_tuning_curves(tuning_curves(da, by="contrast"), units=[0]).axes[0]
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [0, 1 / 3, 2 / 3, 1])
    assert ax.get_xscale() == "linear" and ax.get_xlabel() == "contrast"
    assert "SI = (max − min) / (max + min)" in _text(ax.figure)


def _text(fig: Figure) -> str:
    """The figure-level texts (caption, suptitle), lines joined as one."""
    texts = [t.get_text() for t in fig.texts] + ([fig._suptitle.get_text()] if fig._suptitle else [])
    return " ".join(" ".join(texts).split())


def test_spatial_frequency_on_a_log_axis(grating_recording):
    da, _ = grating_recording
    da = da.assign_coords(spatial_frequency=("stimulus", np.resize([2.0, 4.0, 8.0], da.sizes["stimulus"])))
    ax = plot_tuning_curves(tuning_curves(da, by="spatial_frequency"), units=[0]).axes[0]
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel() == "spatial frequency (cycles/image)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "4", "8"]


def test_montage_title_names_layer_channel_and_position(grating_recording, tmp_path):
    da, root = grating_recording
    fig = plot_montage(_labelled(da), {"channel": 2, "y": 0, "x": 0}, root, k=4)
    assert fig._suptitle.get_text().startswith("conv1 · channel=2, y=0, x=0\n")
    assert "#rank · response in a.u." in _text(fig)
    best = float(da.isel(channel=2, y=0, x=0).max())
    assert fig.axes[0].get_title() == f"#1 · response {best:.3g}"
    _saved(fig, tmp_path, "montage_titled")
