"""Config mistakes are reported as what they are, one message per field (issue 22, item 15)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import unitrec as ur
from unitrec.anatomy.preprocess import build_transform
from unitrec.cli import main
from unitrec.run import load_config

from .conftest import make_images


def _config(tmp_path: Path, text: str | None = None, **changes) -> Path:
    make_images(tmp_path / "stim", n=8, size=16)
    cfg = {"model": {"name": "resnet18"}, "stimuli": {"path": "stim"},
           "preprocess": {"resize": 32, "crop": 32, "normalize": "imagenet"},
           "layers": ["conv1"], "record": {"batch_size": 4, "progress": False}, "output": "out/acts.h5"}
    for section, value in changes.items():
        both = isinstance(value, dict) and isinstance(cfg[section], dict)
        cfg[section] = {**cfg[section], **value} if both else value
    path = tmp_path / "exp.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(cfg))
    return path


def _one_line(capsys, path: Path) -> str:
    code = main(["run", str(path), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(("section", "change", "named"), [
    ("stimuli", {"background": [300, 0, 0]}, "stimuli.background: must be three integers in 0..255"),
    ("stimuli", {"background": [255, 255]}, "stimuli.background: must be three integers in 0..255"),
    ("preprocess", {"resize": -32}, "preprocess.resize: must be a positive whole number of pixels"),
    ("preprocess", {"crop": -1}, "preprocess.crop: must be a positive whole number of pixels"),
])
def test_a_bad_background_or_size_is_named_not_reported_as_undecodable_stimuli(tmp_path, capsys, section, change,
                                                                              named):
    err = _one_line(capsys, _config(tmp_path, **{section: change}))
    assert named in err and "decoded" not in err
    assert not (tmp_path / "out").exists()


def test_python_callers_get_the_same_errors_before_any_image_is_read(tmp_path):
    root = make_images(tmp_path / "stim", n=3, size=16)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3)).eval()
    with pytest.raises(ur.ConfigError, match=r"background must be three integers in 0\.\.255.*\(300, 0, 0\)"):
        ur.record(model, root, ["0"], tmp_path / "a.h5", background=(300, 0, 0), progress=False)
    with pytest.raises(ur.ConfigError, match="invalid preprocess: resize: must be a positive whole number of pixels"):
        build_transform({"resize": -1})
    assert not (tmp_path / "a.h5").exists()


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, capsys):
    text = ("model: {name: resnet18}\nstimuli: {path: stim}\nlayers: [conv1]\n"
            "record:\n  batch_size: 4\n  batch_size: 8\noutput: out/acts.h5\n")
    err = _one_line(capsys, _config(tmp_path, text))
    assert "(line 6): key 'batch_size' is given twice (first on line 5)" in err
    flow = _config(tmp_path, "model: {name: resnet18, name: vgg11}\nstimuli: {path: stim}\nlayers: [conv1]\n"
                             "output: out/acts.h5\n")
    assert "key 'name' is given twice" in _one_line(capsys, flow)


def test_yaml_merge_keys_may_still_be_overridden():
    from unitrec.run import _UniqueKeys

    text = "base: &base {batch_size: 4, progress: false}\nrecord: {<<: *base, batch_size: 2}\n"
    assert yaml.load(text, Loader=_UniqueKeys)["record"] == {"batch_size": 2, "progress": False}


@pytest.mark.parametrize(("section", "change", "named"), [
    ("preprocess", {"resize": 0}, "preprocess.resize: must be a positive whole number of pixels, or null"),
    ("preprocess", {"crop": 0}, "preprocess.crop: must be a positive whole number of pixels, or null"),
    ("layers", [" "], "layers[0].name: site ' ' is blank: give a module's name as `unitrec layers MODEL` lists them"),
    ("layers", ["layer1\n"], r"layers[0].name: site 'layer1\n' holds a line break"),
    ("layers", [{"name": "conv1", "as": "a\nb"}], r"layers[0].as: 'a\nb' cannot name a site: it holds a line break"),
    ("layers", [{"name": "conv1", "as": "  "}], "layers[0].as: '  ' cannot name a site: it is blank"),
])
def test_values_once_accepted_silently_are_refused(tmp_path, section, change, named):
    with pytest.raises(ur.ConfigError) as err:
        load_config(_config(tmp_path, **{section: change}))
    assert named in str(err.value)


@pytest.mark.parametrize(("section", "change", "message"), [
    ("preprocess", {"normalize": "imagent"},
     "invalid config: preprocess.normalize: must be 'imagenet', null or {mean: [r, g, b], std: [r, g, b]}; "
     "got 'imagent'"),
    ("preprocess", {"normalize": {"mean": [0.5] * 3, "std": "a"}},
     "invalid config: preprocess.normalize.std: Input should be a valid list"),
    ("output", 5, "invalid config: output: must be a file path or {path: ..., overwrite: ...}; got 5"),
    ("output", {"paht": "x.h5"}, "invalid config: output.path: Field required; "
                                 "unknown key 'output.paht' (valid keys: path, overwrite)"),
])
def test_a_field_of_several_types_gives_one_message_without_pydantic_internals(tmp_path, section, change, message):
    with pytest.raises(ur.ConfigError) as err:
        load_config(_config(tmp_path, **{section: change}))
    assert str(err.value) == message
