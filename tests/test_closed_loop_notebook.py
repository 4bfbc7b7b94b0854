"""notebooks/closed_loop.ipynb: scoring, a lesion, visualisations and an evolution run and say the truth.

The slow test executes the notebook in a temporary folder with the venv's kernel, then
asks the kernel for the numbers its sentences are about.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "closed_loop.ipynb"

PROBE = """
import json
print("PROBE" + json.dumps({
    "scores": list(scores.shape), "units": len(scorer.units), "change": change,
    "silenced": float(abs(silenced).max()), "ablation": ur.load_layer(lesioned, "layer4").attrs.get("ablation", ""),
    "visualized": [[float(v.scores[:8].mean()), float(v.scores[-8:].mean())] for v in visualizations],
    "best": float(evo.best_score), "first": float(evo.scores[0].max()), "generations": int(ds.sizes["generation"]),
    "work": str(work.resolve()),
}))
"""


def _notebook():
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(NOTEBOOK, as_version=4)


def test_the_notebook_is_stored_clean_and_says_the_weights_are_random():
    nb = _notebook()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert "random weights" in nb.cells[0].source and "DEFAULT" in nb.cells[0].source


@pytest.mark.slow
def test_the_notebook_runs_and_finds_what_it_says(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for module in ("ipykernel", "matplotlib", "cmaes"):
        pytest.importorskip(module)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    nb = _notebook()
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    here = tmp_path / "notebooks"  # run as in a clone: it writes into ../runs/notebooks/
    here.mkdir()
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(here)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    for cell in code:
        if cell.source.strip().startswith("ur.plot_"):
            assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.source
    text = "".join(o.get("text", "") for o in code[-1].outputs if o.output_type == "stream")
    got = json.loads(text.split("PROBE", 1)[1])
    assert got["scores"] == [8, got["units"]] and got["units"] == 256 + 512
    assert got["change"]["layer3.0"] == 0 and got["change"]["layer3.1"] > 0 and got["change"]["layer4"] > 0
    assert got["silenced"] == 0 and '"set": 0.0' in got["ablation"]
    assert all(last > first for first, last in got["visualized"])
    assert got["best"] > got["first"] and got["generations"] == 15
    assert Path(got["work"]) == (tmp_path / "runs" / "notebooks" / "closed_loop").resolve()  # runs/: git-ignored
    assert not (ROOT / "notebooks" / "closed_loop").exists()
