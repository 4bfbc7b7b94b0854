"""The command line and YAML configs: happy paths and every error a user must get."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import yaml

import unitrec as ur
from unitrec.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, images: Path, **changes) -> Path:
    cfg = {
        "model": {"name": "resnet18", "weights": None, "seed": 0},
        "stimuli": {"path": os.path.relpath(images, tmp_path)},
        "preprocess": {"resize": 64, "crop": 64, "normalize": "imagenet"},
        "layers": ["layer1", {"name": "layer2", "units": "center"}],
        "record": {"batch_size": 4, "device": "cpu", "progress": False},
        "output": "out/acts.h5",
    }
    for key, value in changes.items():
        cfg[key] = value
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _fails(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    for needle in needles:
        assert needle in err, err
    return err


def test_run_config_relative_paths_and_stored_config(tmp_path, images, capsys):
    cfg = _config(tmp_path, images)
    assert main(["run", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "recorded 10 of 10 stimuli" in out and "layer1" in out and "images/s" in out
    path = tmp_path / "out" / "acts.h5"  # relative to the config file, not the cwd
    with h5py.File(path, "r") as h5:
        assert yaml.safe_load(h5.attrs["config"])["layers"][1] == {"name": "layer2", "units": "center"}
    assert ur.load_layer(path, "layer2").dims == ("stimulus", "unit")
    assert main(["info", str(path)]) == 0
    info = capsys.readouterr().out
    assert "resnet18" in info and "complete" in info and "layer2" in info and "10 of 10" in info
    assert "config:" in info and "batch_size: 4" in info  # the stored config, as run


def test_layers_command(capsys):
    assert main(["layers", "resnet18", "--input-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.relu:1" in out and "BasicBlock" in out and "64×16×16" in out


@pytest.mark.parametrize("argv, needles", [
    (["layers", "resnet05"], ["unknown model", "resnet50"]),
    (["run", "missing.yaml"], ["cannot read config"]),
])
def test_simple_errors(capsys, argv, needles):
    _fails(capsys, argv, *needles)


def test_config_errors(tmp_path, images, capsys):
    cfg = _config(tmp_path, images, layers=["layer1.1.relu:1", "layr4"])
    _fails(capsys, ["run", str(cfg)], "layr4", "layer4", "unitrec layers resnet18")
    cfg = _config(tmp_path, images, record={"batch_size": 4, "devise": "cpu"})
    _fails(capsys, ["run", str(cfg)], "unknown key 'record.devise'", "device")
    cfg = _config(tmp_path, images, colour="blue")
    _fails(capsys, ["run", str(cfg)], "unknown key 'colour'", "layers")
    cfg = _config(tmp_path, images, stimuli={"path": "nowhere"})
    _fails(capsys, ["run", str(cfg)], "stimulus folder not found")
    (tmp_path / "empty").mkdir()
    cfg = _config(tmp_path, images, stimuli={"path": "empty"})
    _fails(capsys, ["run", str(cfg)], "no images in stimulus folder")
    cfg.write_text("model: [unclosed")
    _fails(capsys, ["run", str(cfg)], "not valid YAML")
    cfg = _config(tmp_path, images, layers=["layer1.0.relu"])
    _fails(capsys, ["run", str(cfg)], "layer1.0.relu:0, layer1.0.relu:1")
    cfg = _config(tmp_path, images, layers=[{"name": "layer2", "channels": [999]}])
    _fails(capsys, ["run", str(cfg)], "channel 999", "0..127")


def test_output_folder_not_writable(tmp_path, images, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    real_access = os.access
    # root can write anywhere, so make the permission check see what a user would
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    cfg = _config(tmp_path, images, output="locked/acts.h5")
    _fails(capsys, ["run", str(cfg)], "not writable")


def test_output_folder_not_writable_as_root_too(tmp_path, images, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    cfg = _config(tmp_path, images, output="file/sub/acts.h5")
    _fails(capsys, ["run", str(cfg)], "cannot create output folder")


def test_python_api_raises_the_same_errors(zoo, images, tmp_path):
    with pytest.raises(ur.LayerNotFoundError, match="unitrec layers resnet18"):
        ur.record(zoo("resnet18"), images, ["layr4"], tmp_path / "a.h5", progress=False)
    with pytest.raises(ur.ConfigError, match="unknown key 'colour'"):
        ur.run_config({"model": {"name": "resnet18"}, "stimuli": {"path": str(images)},
                       "layers": ["layer1"], "output": str(tmp_path / "x.h5"), "colour": 1})
    with pytest.raises(ur.StimulusError, match="not found"):
        ur.record(zoo("resnet18"), tmp_path / "nope", ["layer1"], tmp_path / "a.h5")


@pytest.mark.slow
def test_module_entry_point_and_console_script_help():
    for cmd in ([sys.executable, "-m", "unitrec", "--help"], [sys.executable, "-m", "unitrec", "run", "--help"]):
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        assert res.returncode == 0 and "unitrec" in res.stdout
    res = subprocess.run([sys.executable, "-m", "unitrec", "layers", "resnet05"], capture_output=True, text=True)
    assert res.returncode == 1 and "Traceback" not in res.stderr and "resnet50" in res.stderr


def test_public_names_are_pinned():
    assert ur.__all__ == sorted(ur.__all__)
    assert set(ur.__all__) == {
        "ConfigError", "LayerNotFoundError", "ModelError", "Recorder", "RecordingError", "SelectionError",
        "StimulusError", "UnitrecError", "UnitrecWarning", "__version__", "analysis", "atlas", "list_layers", "load_layer",
        "load_model", "load_population", "load_summary", "merge", "open_recording", "record", "run_config", "stimuli",
        "Scorer", "visualize", "evolve", "load_evolution", "plot_evolution", "plot_visualizations",  # the closed loop
        "build_transform",
    }
    assert issubclass(ur.LayerNotFoundError, KeyError) and issubclass(ur.ConfigError, ValueError)
