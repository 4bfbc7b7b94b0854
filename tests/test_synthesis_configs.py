"""``kind: visualize`` and ``kind: evolve`` configs: through ``run_config`` and ``unitrec run``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

import unitrec as ur
from unitrec.cli import main
from unitrec.errors import ConfigError
from unitrec.run import load_config

ROOT = Path(__file__).resolve().parents[1]


def _evolve(tmp_path, **evolve):
    return {"kind": "evolve", "model": {"name": "resnet18"},
            "evolve": {"unit": {"name": "layer3", "channels": [2], "units": "center"}, "size": 48,
                       "generations": 3, "population": 4, "code_size": 27, **evolve},
            "output": str(tmp_path / "evo.h5"), "progress": False}


def _visualize(tmp_path, **visualize):
    return {"kind": "visualize", "model": {"name": "resnet18"},
            "visualize": {"units": [{"name": "layer2", "channels": [3], "units": "center"},
                                    {"name": "layer3", "channels": [5]}],
                          "size": 48, "steps": 4, **visualize},
            "output": str(tmp_path / "vis.nc"), "progress": False}


def test_an_evolve_config_writes_the_file_and_its_figure(tmp_path):
    path = ur.run_config(_evolve(tmp_path, fit_rf=True))
    assert path == tmp_path / "evo.h5" and (tmp_path / "evo.png").stat().st_size > 0
    ds = ur.load_evolution(path)
    assert ds.sizes["generation"] == 3 and ds.sizes["individual"] == 4
    again = ur.run_config(_evolve(tmp_path, fit_rf=True))  # finished: the stored result, nothing recomputed
    assert again == path
    with pytest.raises(Exception, match="population"):
        ur.run_config(_evolve(tmp_path, fit_rf=True, population=5))


@pytest.mark.slow  # 5-10 s on 2 cores: run with the slow tests, so the default suite stays under 3 min
def test_a_visualize_config_writes_every_unit_with_its_field(tmp_path):
    path = ur.run_config(_visualize(tmp_path))
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert ds["image"].shape == (2, 3, 48, 48)
        assert ds["score"].shape == (2, 4)
        fields = ds["receptive_field"].values
        assert np.isfinite(fields[0]).all() and np.isnan(fields[1]).all()  # one unit; a whole channel
        assert ds.attrs["kind"] == "unitrec visualizations" and ds.attrs["weights_sha256"]
        assert "layer2" in str(ds["entry"].values[0])
    assert (tmp_path / "vis.png").stat().st_size > 0
    with pytest.raises(ConfigError, match="overwrite"):
        ur.run_config(_visualize(tmp_path))
    assert ur.run_config({**_visualize(tmp_path), "output": {"path": str(path), "overwrite": True}}) == path


@pytest.mark.slow  # 5-10 s on 2 cores: run with the slow tests, so the default suite stays under 3 min
def test_the_command_line_runs_both_kinds(tmp_path, capsys):
    for name, config in (("e.yaml", _evolve(tmp_path)), ("v.yaml", _visualize(tmp_path))):
        (tmp_path / name).write_text(yaml.safe_dump(config))
        assert main(["run", str(tmp_path / name), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "evolved 3 generations of 4 images" in out and "visualised 2 units" in out
    assert main(["run", str(tmp_path / "e.yaml"), "--no-progress"]) == 0  # finished: nothing to run
    assert "already holds this evolution" in capsys.readouterr().out


@pytest.mark.parametrize("change, says", [
    ({"evolve": None}, "needs its evolve: section"),
    ({"visualize": {"units": ["layer1"]}}, "takes no visualize: section"),
    ({"kind": "evolv"}, "kind must be record .the default: a recording., visualize or evolve"),
    ({"evolve": {"unit": "layer1", "population": 1}}, "population"),
])
def test_config_mistakes_are_one_line(tmp_path, change, says, capsys):
    config = {**_evolve(tmp_path), **change}
    with pytest.raises(ConfigError, match=says) as info:
        load_config(config)
    assert "\n" not in str(info.value)


def test_a_synthesis_cannot_be_sharded(tmp_path):
    with pytest.raises(ConfigError, match="shard"):
        ur.run_config(_evolve(tmp_path), shard=(0, 2))


def test_the_shipped_configs_are_valid():
    for name in ("evolve.yaml", "visualize.yaml"):
        cfg, _, _ = load_config(ROOT / "configs" / name)
        assert cfg.kind == name.split(".")[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["evolve.yaml", "visualize.yaml"])
def test_the_shipped_configs_run(name, tmp_path):
    raw = yaml.safe_load((ROOT / "configs" / name).read_text())
    raw["output"] = str(tmp_path / Path(raw["output"]).name)
    raw["progress"] = False
    path = ur.run_config(raw)
    assert path.exists() and path.with_suffix(".png").exists()
