"""Reading a recording, `unitrec info` and the analysis never import torch (issue: 2.7 s and 720 MB)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import unitrec as ur

ROOT = Path(__file__).resolve().parents[2]

_READ = """
import sys
import unitrec as ur
from unitrec import analysis as A
from unitrec.cli import main
path = sys.argv[1]
da = ur.load_layer(path, "1")
ur.load_population(path)
ur.load_summary(path, "3")
ur.open_recording(path)
A.tuning_curves(da, by="group"); A.rdm(da); A.cka(da, ur.load_layer(path, "2")); A.top_stimuli(da, k=2)
A.lifetime_sparseness(da); A.participation_ratio(da)
main(["info", path])
print("HEAVY", sorted(m for m in ("torch", "torchvision", "tqdm") if m in sys.modules))
"""


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("light") / "a.h5"
    ur.record(model, x, ["1", "2", {"name": "3", "keep": "summary"}], path, batch_size=4, progress=False)
    import h5py

    with h5py.File(path, "r+") as h5:  # a stimulus coordinate to group by
        h5.create_dataset("group", data=[0, 1] * 4)
        h5["group"].dims[0].attach_scale(h5["stimulus"])
        h5["done"].attrs["coordinates"] = "group"
    return path


def test_reading_info_and_analysis_do_not_import_torch(recording):
    out = subprocess.run([sys.executable, "-c", _READ, str(recording)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


def test_import_unitrec_is_light():
    code = "import sys, unitrec; print(sorted(m for m in ('torch', 'xarray', 'h5py') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_public_name_still_resolves():
    for name in ur.__all__:
        assert getattr(ur, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ur.nope  # noqa: B018


@pytest.mark.slow  # a fresh interpreter that imports torch
def test_the_record_submodule_does_not_hide_the_record_function():
    code = ("import unitrec.run, unitrec.recording.record, unitrec as ur; "
            "print(callable(ur.record) and ur.record.__module__ == 'unitrec.recording.record')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
