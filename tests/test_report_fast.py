"""The report is cheap (issue 22, item 20): no torch, a bounded number of dask computes,
progress lines on stderr, written once per recording and options, and configurable from a
config's ``report:`` like ``unitrec report`` from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import unitrec as ur
from unitrec import report
from unitrec.cli import main
from unitrec.errors import ConfigError

pytest.importorskip("matplotlib")
ROOT = Path(__file__).resolve().parents[1]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2), nn.ReLU()).eval()


def _tensor_recording(folder: Path, overwrite: bool = False) -> Path:
    """One conv site on 8 tensor stimuli with an orientation each: a tuning figure and an RDM, no montage."""
    import h5py

    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    path = ur.record(_model(), x, ["3"], folder / "acts.h5", batch_size=4, progress=False, overwrite=overwrite)
    with h5py.File(path, "r+") as h5:  # a stimulus parameter, as generated gratings have
        h5.create_dataset("orientation", data=np.resize([0.0, 45.0, 90.0, 135.0], 8))
        h5["orientation"].dims[0].attach_scale(h5["stimulus"])
        h5["done"].attrs["coordinates"] = "orientation"
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Gratings (image files, so montages are drawn), one conv site."""
    from unitrec.anatomy.preprocess import build_transform

    tmp = tmp_path_factory.mktemp("report_fast")
    ur.stimuli.gratings(tmp / "stimuli", size=16, orientations=[0, 90], spatial_frequencies=[2], phases=[0, 180])
    return ur.record(_model(), tmp / "stimuli", ["3"], tmp / "acts.h5", batch_size=4, progress=False,
                     transform=build_transform({"resize": None, "crop": None, "normalize": "imagenet"}))


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    return _tensor_recording(tmp_path_factory.mktemp("report_fast_tensors"))


@pytest.mark.slow  # 2-4 s: with the slow ones, to keep the default suite under 3 minutes
def test_the_report_does_not_import_torch(images, tmp_path):
    code = ("import sys\nfrom unitrec.report import write_report\n"
            f"write_report({str(images)!r}, {str(tmp_path / 'r')!r}, units_per_site=1)\n"
            "print('HEAVY', sorted(m for m in ('torch', 'torchvision', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    assert sorted(p.name for p in tmp_path.glob("r/montage_*.png"))  # the montages were drawn without it


def _computes(recording: Path, out: Path, units_per_site: int) -> int:
    from dask.callbacks import Callback

    count = 0

    def start(dsk):
        nonlocal count
        count += 1

    with Callback(start=start), pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "_IN_MEMORY", 0, raising=False)  # every site on dask blocks
        report.write_report(recording, out, units_per_site=units_per_site)
    return count


def test_dask_computes_do_not_grow_with_the_units_drawn(recording, tmp_path):
    pytest.importorskip("dask")
    # tuning figures of 1 and of 4 units per site: as many computes (the curves are computed once per site)
    one, four = _computes(recording, tmp_path / "one", 1), _computes(recording, tmp_path / "four", 4)
    assert one == four
    assert "tuning_3.png" in (tmp_path / "four" / "index.html").read_text()  # the tuning figure was drawn


def test_sites_are_read_whole_when_small(recording, tmp_path, monkeypatch):
    pytest.importorskip("dask")
    from dask.callbacks import Callback

    starts = []
    with Callback(start=lambda dsk: starts.append(1)):
        report.write_report(recording, tmp_path / "r")
    assert starts == []  # a small site, read whole: no dask graph at all


def test_progress_lines_on_stderr(recording, tmp_path, capsys):
    report.write_report(recording, tmp_path / "r")
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and len(lines) == 4  # read, 2 figures, index.html
    assert all(line.startswith("report: ") and line.endswith(" s)") for line in lines)
    assert "1 figures, tuning_3.png" in lines[1] and "2 figures, rdm_3.png" in lines[2]
    report.write_report(recording, tmp_path / "quiet", progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.slow  # 2-4 s: with the slow ones, to keep the default suite under 3 minutes
def test_the_report_is_written_once_per_recording_and_options(tmp_path, monkeypatch, capsys):
    path = _tensor_recording(tmp_path)
    drawn = []
    real = report.A.plot_rdm
    monkeypatch.setattr(report.A, "plot_rdm", lambda *a, **k: drawn.append(1) or real(*a, **k))
    out = tmp_path / "r"
    index = report.write_report(path, out)
    assert len(drawn) == 1
    stamp = json.loads((out / ".unitrec-report.json").read_text())
    assert stamp["options"] == {"by": None, "units_per_site": 8}
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    # the same recording, the same options: nothing drawn, nothing written, and it says so
    assert report.write_report(path, out) == index
    assert len(drawn) == 1 and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert "is up to date" in capsys.readouterr().err
    # other options, force, or a recording made again: written again
    report.write_report(path, out, units_per_site=2)
    assert len(drawn) == 2
    report.write_report(path, out, units_per_site=2, force=True)
    assert len(drawn) == 3
    _tensor_recording(tmp_path, overwrite=True)
    report.write_report(path, out, units_per_site=2)
    assert len(drawn) == 4
    # a report cut short leaves no stamp, so the next call writes it whole
    monkeypatch.setattr(report.A, "plot_rdm", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        report.write_report(path, out)
    assert not (out / ".unitrec-report.json").exists()
    monkeypatch.setattr(report.A, "plot_rdm", lambda *a, **k: drawn.append(1) or real(*a, **k))
    report.write_report(path, out, units_per_site=2)
    assert len(drawn) == 5


def test_a_config_takes_the_report_options(recording, tmp_path, monkeypatch):
    from unitrec import run
    from unitrec.schema import Config, ReportSpec, parse

    raw = {"model": {"name": "resnet18"}, "stimuli": {"path": "s"}, "layers": ["fc"], "output": "a.h5",
           "report": {"path": "r", "by": "orientation", "units_per_site": 2, "force": True}}
    spec = parse(Config, raw).report
    assert spec == ReportSpec(path="r", by="orientation", units_per_site=2, force=True)
    with pytest.raises(ConfigError, match=r"unknown key 'report.units'.*valid keys: path, by, units_per_site, force"):
        parse(Config, {**raw, "report": {"units": 2}})
    with pytest.raises(ConfigError, match="report.units_per_site"):
        parse(Config, {**raw, "report": {"units_per_site": 0}})
    calls = []
    monkeypatch.setattr(report, "write_report", lambda *a, **k: calls.append((a, k)) or Path("index.html"))
    run._report(recording, spec, tmp_path / "r", False)
    assert calls == [((recording, tmp_path / "r"), {"by": "orientation", "units_per_site": 2, "force": True,
                                                     "progress": False})]


def test_the_cli_takes_the_same_options(recording, tmp_path, capsys):
    assert main(["report", str(recording), str(tmp_path / "r"), "--by", "orientation", "--units-per-site", "1",
                 "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    stamp = json.loads((tmp_path / "r" / ".unitrec-report.json").read_text())
    assert stamp["options"] == {"by": "orientation", "units_per_site": 1}
    assert main(["report", str(recording), str(tmp_path / "r"), "--by", "orientation", "--units-per-site", "1",
                 "--force"]) == 0
    assert "figures" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="units_per_site must be a positive integer, got 0"):
        report.write_report(recording, tmp_path / "r", units_per_site=0)
