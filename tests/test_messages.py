"""Issue 8: every mistake a user can make gets one line that says what, what is allowed, and what next."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from torch import nn

import unitrec as ur
from unitrec.cli import main
from unitrec.files.info import recording_info
from unitrec.schema import Config, parse, parse_layers

ROOT = Path(__file__).resolve().parents[1]


def named_net() -> nn.Module:
    """A tiny model with named sites, importable as tests.test_messages:named_net."""
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 4, 3, padding=1), conv2=nn.Conv2d(4, 4, 3, padding=1), relu=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(4, 3)))


def deep_net() -> nn.Module:
    """22 sites, more than an error message lists."""
    return nn.Sequential(nn.Conv2d(3, 2, 3), *[nn.ReLU() for _ in range(21)])


def _fails(capsys, argv, *needles) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rec") / "acts.h5"
    return ur.record(named_net(), torch.randn(4, 3, 8, 8), ["conv1", "conv2", "fc"], out, progress=False)


# --- A: files that are not readable recordings --------------------------------------------------

def _bad_file(kind: str, tmp_path: Path, recording: Path) -> Path:
    path = tmp_path / f"{kind}.h5"
    if kind == "truncated":
        data = recording.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("model: resnet18\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign":
        with h5py.File(path, "w") as h5:
            h5["x"] = np.arange(3)
    else:
        path.mkdir()
    return path


BAD_FILES = [("truncated", "is truncated or damaged (truncated file"),
             ("text", "is not a unitrec recording: not an HDF5 file"),
             ("empty", "is not a unitrec recording: the file is empty"),
             ("foreign", "is not a unitrec recording: an HDF5 file without unitrec's layout"),
             ("directory", "is a directory")]


@pytest.mark.parametrize("kind, words", BAD_FILES)
def test_info_on_what_is_not_a_recording(kind, words, tmp_path, recording, capsys):
    path = _bad_file(kind, tmp_path, recording)
    _fails(capsys, ["info", path], str(path), words)


@pytest.mark.parametrize("kind, words", BAD_FILES)
@pytest.mark.parametrize("read", [lambda p: ur.load_layer(p, "conv1"), ur.open_recording,
                                  ur.load_population, recording_info])
def test_python_readers_on_what_is_not_a_recording(kind, words, read, tmp_path, recording):
    path = _bad_file(kind, tmp_path, recording)
    with pytest.raises(ur.RecordingError) as err:
        read(path)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_file_being_recorded_says_so_and_how_to_read_it(tmp_path, recording, capsys):
    path = tmp_path / "acts.h5.partial.h5"
    path.write_bytes(recording.read_bytes())
    # a writer holds the file open: HDF5's file lock refuses other processes
    hold = f"import h5py, time; f = h5py.File({str(path)!r}, 'r+'); print('open', flush=True); time.sleep(60)"
    writer = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        _fails(capsys, ["info", path], "a recording is in progress", "HDF5_USE_FILE_LOCKING=FALSE")
        for read in (lambda p: ur.load_layer(p, "conv1"), ur.open_recording):
            with pytest.raises(ur.RecordingError, match="a recording is in progress"):
                read(path)
        # the advice works
        unlocked = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE")
        res = subprocess.run([sys.executable, "-m", "unitrec", "info", "--no-config", str(path)],
                             capture_output=True, text=True, env=unlocked)
        assert res.returncode == 0 and "conv2" in res.stdout, res.stderr
    finally:
        writer.kill()
        writer.wait()


# --- B: a recording given as a config -----------------------------------------------------------

def test_run_on_a_recording_says_it_is_not_a_config(recording, capsys):
    _fails(capsys, ["run", recording], "is an HDF5 file (a recording?), not a YAML config",
           f"unitrec info {recording}")


# --- C: categorical tuning ----------------------------------------------------------------------

def test_tuning_on_a_categorical_coordinate_plots_bars():
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    labels = np.array(["animal", "tool", "face"] * 4, dtype=object)
    da = xr.DataArray(rng.random((12, 2)), dims=("stimulus", "unit"),
                      coords={"stimulus": [f"s{i}" for i in range(12)], "label": ("stimulus", labels)})
    ds = ur.analysis.tuning_curves(da, by="label")
    fig = ur.analysis.plot_tuning_curves(ds)
    bars = fig.axes[1].patches
    assert [b.get_height() for b in bars] == pytest.approx(ds["mean"].values[:, 1])
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["animal", "face", "tool"]


@pytest.mark.slow
def test_report_by_label(tmp_path, images, transform64, capsys):
    pytest.importorskip("matplotlib")
    path = ur.record(named_net(), images, ["conv2", "fc"], tmp_path / "acts.h5", transform=transform64,
                     progress=False)
    assert main(["report", str(path), str(tmp_path / "report"), "--by", "label"]) == 0
    assert (tmp_path / "report" / "tuning_conv2.png").stat().st_size > 1000


# --- D: model factories -------------------------------------------------------------------------

@pytest.mark.parametrize("spec, words", [
    (":x", "is neither a torchvision name nor 'package.module:function'"),
    ("..x:y", "is neither a torchvision name nor 'package.module:function'"),
    ("math:pi", "'math:pi' is a float, not a function"),
    ("builtins:dict", "'builtins:dict' returned dict {}, not a torch.nn.Module"),
    ("math:sqrt", "'math:sqrt' called with no arguments failed: TypeError"),
])
def test_bad_model_factories(spec, words, capsys):
    with pytest.raises(ur.ModelError) as err:
        ur.load_model(spec)
    assert words in str(err.value) and "\n" not in str(err.value)
    _fails(capsys, ["layers", spec], words)


@pytest.mark.slow
def test_factory_in_the_current_folder_works_from_both_entry_points(tmp_path):
    (tmp_path / "mymodels.py").write_text(textwrap.dedent("""
        import torch
        def build():
            return torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.ReLU())
    """))
    script = Path(sys.executable).parent / "unitrec"
    if not script.exists():
        pytest.skip("the unitrec console script is not installed beside this Python")
    for cmd in ([sys.executable, "-m", "unitrec"], [str(script)]):
        res = subprocess.run([*cmd, "layers", "mymodels:build", "--input-size", "8"], cwd=tmp_path,
                             capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert res.returncode == 0 and "Conv2d" in res.stdout, (cmd, res.stderr)


# --- E: messages --------------------------------------------------------------------------------

def test_layer_entry_typo_in_a_config_names_the_entry_and_its_keys():
    raw = {"model": {"name": "resnet18"}, "stimuli": {"path": "x"}, "output": "o.h5",
           "layers": ["layer1", {"name": "conv1", "unit": "center"}]}
    with pytest.raises(ur.ConfigError) as err:
        parse(Config, raw)
    message = str(err.value)
    assert "layers[1]: unknown key 'unit' (valid keys: name, capture, units," in message, message
    assert "function-after" not in message and ".str" not in message


def test_missing_site_lists_every_recorded_site_when_few(recording):
    with pytest.raises(ur.LayerNotFoundError) as err:
        ur.load_layer(recording, "conv3")
    assert "recorded sites: conv1, conv2, fc" in str(err.value)


def test_missing_site_among_many_gives_the_closest_and_the_count(tmp_path):
    sites = [str(i) for i in range(22)]
    path = ur.record(deep_net(), torch.randn(2, 3, 6, 6), sites, tmp_path / "deep.h5", progress=False)
    with pytest.raises(ur.LayerNotFoundError) as err:
        ur.load_layer(path, "25")
    message = str(err.value)
    assert "22 sites recorded" in message and f"unitrec info {path}" in message
    closest = message.split("closest: ")[1].split(";")[0].split(", ")
    assert "2" in closest and len(closest) <= 5  # not every site


def test_info_shows_the_checkpoint_and_its_hash(tmp_path, capsys):
    checkpoint = tmp_path / "trained.pt"
    torch.save(named_net().state_dict(), checkpoint)
    model = ur.load_model("tests.test_messages:named_net", checkpoint=checkpoint)
    path = ur.record(model, torch.randn(2, 3, 8, 8), ["fc"], tmp_path / "acts.h5", progress=False)
    assert main(["info", str(path), "--no-config"]) == 0
    weights = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("weights:"))
    assert f"checkpoint {checkpoint}" in weights
    with h5py.File(path, "r") as h5:
        assert h5.attrs["weights_sha256"] in weights


@pytest.mark.parametrize("content, words", [
    (b"not a checkpoint", "not a PyTorch checkpoint"),
    ("truncated", "truncated or corrupted"),
])
def test_corrupt_checkpoint_is_one_line_without_unsafe_advice(content, words, tmp_path):
    path = tmp_path / "bad.pt"
    if content == "truncated":
        torch.save(named_net().state_dict(), path)
        content = path.read_bytes()[:200]
    path.write_bytes(content)
    with pytest.raises(ur.ModelError) as err:
        ur.load_model("tests.test_messages:named_net", checkpoint=path)
    message = str(err.value)
    assert str(path) in message and words in message and "\n" not in message
    assert "weights_only" not in message


# --- F: site names that would break the file ----------------------------------------------------

@pytest.mark.parametrize("entry, words", [
    ({"name": "fc", "as": "stimulus"}, "'stimulus' cannot name a site: the file's root already holds"),
    ({"name": "fc", "as": "done"}, "'done' cannot name a site"),
    ({"name": "fc", "as": "/"}, "'/' cannot name a site: '/' would nest it"),
    ({"name": "fc", "as": ""}, "'' cannot name a site"),
    ({"name": "fc", "as": "a/b"}, "'a/b' cannot name a site: '/' would nest it"),
    ("label", "site 'label' cannot be stored under its own name"),
    ({"name": "path"}, "give it another with 'as:'"),
])
def test_site_names_that_clash_with_the_file_are_refused(entry, words, capsys, tmp_path):
    with pytest.raises(ur.ConfigError) as err:
        parse_layers([entry])
    assert words in str(err.value)
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "resnet18"}, "stimuli": {"path": "x"},
                                      "layers": [entry], "output": "o.h5"}))
    _fails(capsys, ["run", config], "layers[0]", words)


def test_site_names_with_colon_at_and_dot_stay_valid():
    specs = parse_layers(["layer1.0.relu:1", "fc@input", {"name": "fc", "as": "fc.pooled:2@x"}])
    assert [s.key for s in specs] == ["layer1.0.relu:1", "fc@input", "fc.pooled:2@x"]
