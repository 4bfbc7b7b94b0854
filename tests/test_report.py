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
    cfg["output"], cfg["report"] = "run/acts.h5", {"path": "run/report"}
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
