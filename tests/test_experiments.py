"""The experiments wired into configs, the command line and the report: noise stimuli
as generator kinds, configs/v1_protocols.yaml, and the report's protocol figures."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

import unitrec as ur
from unitrec.cli import main
from unitrec.errors import ConfigError
from unitrec.schema import Config, parse as _parse


def parse(data: dict) -> Config:
    return _parse(Config, data)

ROOT = Path(__file__).resolve().parents[1]


def test_v1_protocols_config_records_centre_units_of_the_protocols():
    cfg = parse(yaml.safe_load((ROOT / "configs" / "v1_protocols.yaml").read_text()))
    assert cfg.stimuli.generate is not None and cfg.stimuli.generate.kind == "protocols"
    assert [(s.name, s.units) for s in cfg.layers] == [("conv1", "center"), ("layer1", "center")]
    assert cfg.preprocess is not None and cfg.preprocess.resize is None and cfg.preprocess.crop is None
    assert cfg.report is not None and cfg.report.path


def _config(generate: dict) -> dict:
    return {"model": {"name": "resnet18"}, "stimuli": {"generate": generate}, "layers": ["conv1"],
            "output": "out.h5"}


def test_noise_kinds_in_a_config():
    white = parse(_config({"kind": "white_noise", "n": 10, "distribution": "gaussian", "seed": 3}))
    assert white.stimuli.generate.arguments() == {"size": 64, "n": 10, "kind": "gaussian", "seed": 3}
    sparse = parse(_config({"kind": "sparse_noise", "grid": 8, "polarities": ["on"]}))
    assert sparse.stimuli.generate.arguments() == {"size": 64, "grid": 8, "polarities": ["on"]}
    with pytest.raises(ConfigError, match="orientations is for kind gratings"):
        parse(_config({"kind": "white_noise", "orientations": [0, 90]}))
    with pytest.raises(ConfigError, match="grid is for kind sparse_noise"):
        parse(_config({"kind": "gratings", "grid": 4}))


def test_noise_from_the_command_line(tmp_path, capsys):
    assert main(["stimuli", "sparse-noise", str(tmp_path / "s"), "--size", "16", "--grid", "4"]) == 0
    with open(tmp_path / "s" / "metadata.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 16 and {r["polarity"] for r in rows} == {"1", "-1"}
    assert main(["stimuli", "white-noise", str(tmp_path / "w"), "--size", "8", "--n", "5",
                 "--distribution", "gaussian"]) == 0
    with open(tmp_path / "w" / "metadata.csv", newline="") as fh:
        assert [r["kind"] for r in csv.DictReader(fh)] == ["gaussian"] * 5
    assert main(["stimuli", "white-noise", str(tmp_path / "x"), "--orientations", "0"]) != 0
    assert "--orientations is for gratings" in capsys.readouterr().err


def test_a_generated_folder_of_one_kind_is_replaced_by_another(tmp_path):
    from unitrec.stimuli import gratings, white_noise

    folder = white_noise(tmp_path / "f", size=8, n=4)
    gratings(folder, size=8, orientations=(0,), spatial_frequencies=(2,), phases=(0, 90), overwrite=True)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "grating_ori000_sf02_ph000_c100.png", "grating_ori000_sf02_ph090_c100.png", "metadata.csv"]
    white_noise(folder, size=8, n=3, overwrite=True)
    assert len(list(folder.glob("*.png"))) == 3


@pytest.mark.slow
def test_the_report_draws_the_protocols(zoo, tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("scipy")
    from unitrec.anatomy.preprocess import build_transform
    from unitrec.report import write_report
    from unitrec.stimuli import protocols

    folder = protocols(tmp_path / "p", size=32, orientations=(0, 90), spatial_frequencies=(2, 4, 8, 12),
                       phases=(0, 90, 180, 270), size_spatial_frequencies=(4,), diameters=(4, 8, 16, 46),
                       contrast_spatial_frequencies=(4,), contrasts=(0.1, 0.3, 1.0))
    path = ur.record(zoo("resnet18"), folder, [{"name": "conv1", "units": "center"}, "layer1"],
                     tmp_path / "r.h5", transform=build_transform({"resize": None, "crop": None}), progress=False)
    index = write_report(path, tmp_path / "report")
    page = index.read_text()
    assert "Grating protocols (conv1, rectified responses)" in page
    for stem in ("f1f0_conv1", "sf_conv1", "size_conv1"):
        assert (tmp_path / "report" / f"{stem}.png").is_file() and (tmp_path / "report" / f"{stem}.svg").is_file()
    # three contrasts cannot carry a 4-parameter fit: the report says so instead of failing
    assert "contrast_response: fitting needs at least 4 contrasts" in page
    assert not (tmp_path / "report" / "contrast_conv1.png").exists()
    # layer1 recorded whole: 64 x 8 x 8 = 4096 units, fitted too; the orientation tuning uses the phase sweep
    assert "f1f0_layer1.png" in page and "Tuning curves by orientation" in page
