"""The demo path end to end: generated gratings → recording → report → notebook."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

import unitrec as ur
from unitrec.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def grating_run(tmp_path_factory) -> Path:
    """A small version of configs/demo.yaml (same keys, fewer stimuli)."""
    tmp = tmp_path_factory.mktemp("demo")
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["stimuli"]["generate"].update(size=32, orientations=[0, 45, 90, 135], spatial_frequencies=[2, 4],
                                      phases=[0, 180])
    cfg["output"], cfg["report"], cfg["atlas"] = "run/acts.h5", {"path": "run/report"}, {"path": "run/atlas"}
    cfg["record"]["progress"] = False
    (tmp / "demo.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp / "demo.yaml")]) == 0
    return tmp / "run" / "acts.h5"


@pytest.mark.slow
def test_generated_stimuli_carry_their_parameters(grating_run):
    da = ur.load_layer(grating_run, "layer4")
    assert da.sizes["stimulus"] == 16
    assert sorted(set(da.orientation.values.tolist())) == [0, 45, 90, 135]
    means = da.groupby("orientation").mean()
    assert means.sizes["orientation"] == 4 and not np.isnan(means.values).any()
    with h5py.File(grating_run, "r") as h5:
        assert "random init" in h5.attrs["model_description"]


@pytest.mark.slow
def test_report_written_by_the_run_and_by_the_cli(grating_run, tmp_path, capsys):
    index = grating_run.parent / "report" / "index.html"
    text = index.read_text()
    for name in ("tuning_conv1.png", "rdm_layer2.png", "layers_cka.png", "layers_rsa.png"):
        assert (index.parent / name).stat().st_size > 5000 and name in text
    assert "montage_" in text and "random init" in text
    assert main(["report", str(grating_run), str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "index.html").exists()
    # and the atlas the demo writes beside it, every site in it
    manifest = (grating_run.parent / "atlas" / "data" / "manifest.js").read_text(encoding="utf-8")
    assert (grating_run.parent / "atlas" / "index.html").is_file()
    for site in ("conv1", "layer1.0.relu:1", "layer2", "layer3", "layer4", "fc"):
        assert f'"name": "{site}"' in manifest


@pytest.mark.slow
def test_notebook_runs(grating_run):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(ROOT / "notebooks" / "population_analysis.ipynb", as_version=4)
    os.environ["UNITREC_RECORDING"] = str(grating_run)
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    finally:
        del os.environ["UNITREC_RECORDING"]
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # tuning, RDM, CKA, montage figures were drawn


# ------------------------------------------------------------ a fast report of a tiny network


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    """The report of a 6-channel conv map on 16 tensor stimuli with an orientation each.

    Tensor stimuli have no images, so no montages: two figures, written fast. The
    arguments of the tuning figure are kept to check which units it drew.
    """
    import torch
    from torch import nn

    from unitrec import report

    tmp = tmp_path_factory.mktemp("tiny_report")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, stride=2), nn.ReLU()).eval()
    x = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    path = ur.record(model, x, ["3"], tmp / "acts.h5", batch_size=8, progress=False)
    with h5py.File(path, "r+") as h5:  # a stimulus parameter, as generated gratings have
        h5.create_dataset("orientation", data=np.resize([0.0, 45.0, 90.0, 135.0], 16))
        h5["orientation"].dims[0].attach_scale(h5["stimulus"])
        h5["done"].attrs["coordinates"] = "orientation"
    drawn = []
    real = report.A.plot_tuning_curves

    def spy(tuning, units=None, **kwargs):
        drawn.append((tuning, list(units)))
        return real(tuning, units=units, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report.A, "plot_tuning_curves", spy)
        index = report.write_report(path, tmp / "report")
    return index, drawn


def test_report_writes_svg_beside_each_png_and_links_it(tiny_report):
    index, _ = tiny_report
    text = index.read_text()
    pngs = sorted(p.name for p in index.parent.glob("*.png"))
    assert pngs == ["rdm_3.png", "tuning_3.png"]
    assert sorted(p.name for p in index.parent.glob("*.svg")) == ["rdm_3.svg", "tuning_3.svg"]
    for png in pngs:
        svg = index.parent / png.replace(".png", ".svg")
        assert "<svg" in svg.read_text()[:2000]
        assert f"<a href='{svg.name}'><img src='{png}'" in text  # the image opens the vector file


def test_report_tuning_panels_are_distinct_channels_at_the_map_centre(tiny_report):
    _, drawn = tiny_report
    [(tuning, units)] = drawn
    dims = list(tuning["selectivity"].dims)
    assert dims == ["channel", "y", "x"]
    shape = tuple(tuning.sizes[d] for d in dims)
    where = [dict(zip(dims, np.unravel_index(u, shape))) for u in units]
    channels = [int(w["channel"]) for w in where]
    assert len(units) == 3 and len(set(channels)) == 3  # the stronger half of 6 channels, one panel each
    assert all((w["y"], w["x"]) == (shape[1] // 2, shape[2] // 2) for w in where)  # away from the padding
    selectivity = [float(tuning["selectivity"].isel(w)) for w in where]
    assert selectivity == sorted(selectivity, reverse=True)  # the most selective first


def test_tuning_units_one_per_channel_for_selected_units():
    """Selected units (``unit`` dim, two per channel): the best of each channel, best first."""
    import xarray as xr

    from unitrec.report import _tuning_units

    mean = xr.DataArray(np.array([[1.0, 2, 2, 4, 1, 9], [0.5, 2, 1, 4, 1, 9]]), dims=("orientation", "unit"),
                        coords={"orientation": [0, 90], "channel": ("unit", [0, 0, 1, 1, 2, 2])})
    tuning = xr.Dataset({"mean": mean, "selectivity": ("unit", [0.9, 0.8, 0.7, 0.6, 0.5, 0.4])},
                        coords={"channel": ("unit", [0, 0, 1, 1, 2, 2])})
    # peaks 1, 2, 2, 4, 1, 9: median 2, so units 0 and 4 are too weak
    assert _tuning_units(tuning, "orientation", 8) == ([1, 2, 5], False)
    assert _tuning_units(tuning, "orientation", 2) == ([1, 2], False)
