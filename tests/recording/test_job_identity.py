"""A job is what the model computes: no silent mix of two jobs, no lost file (issue 21).

Every case here was accepted silently before the run key held the model's kwargs,
its anatomy and the stimulus coordinates, before stitched files checked their
shards, and before --overwrite and the stitch kept other files whole.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import types
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from torch import nn

import unitrec as ur
from unitrec.anatomy.fingerprint import anatomy_of
from unitrec.anatomy.model import state_dict_sha256
from unitrec.anatomy.preprocess import build_transform
from unitrec.anatomy.trace import trace_model
from unitrec.cli import main
from unitrec.files.layout import partial_path
from unitrec.files.merge import stitch_if_complete
from unitrec.files.shards import shard_folder

from tests.conftest import Interrupting, make_images

RAW = build_transform({"resize": None, "crop": None, "normalize": "imagenet"})


class Small(nn.Module):
    """conv → bn → act → conv → pool → fc, with settings a user may change without new weights."""

    def __init__(self, act: str = "relu") -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = {"relu": nn.ReLU(), "gelu": nn.GELU(), "leaky": nn.LeakyReLU(0.01)}[act]
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.register_buffer("gain", torch.ones(1), persistent=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.conv2(self.act(self.bn(self.conv(x)))) * self.gain
        return self.fc(self.pool(x).flatten(1))


def small(act: str = "relu") -> nn.Module:
    torch.manual_seed(0)
    return Small(act).eval()


def _scaled(module, args, output):
    return output * 2


def _patched_forward(self, x):
    return self.fc(self.pool(self.conv2(self.conv(x))).flatten(1))


MUTATIONS = {
    "stride": (lambda m: setattr(m.conv, "stride", (2, 2)), "conv: stride [1, 1] → [2, 2]"),
    "padding": (lambda m: setattr(m.conv2, "padding", (0, 0)), "conv2: padding [1, 1] → [0, 0]"),
    "bn eps": (lambda m: setattr(m.bn, "eps", 0.5), "bn: eps 1e-05 → 0.5"),
    "activation type": (lambda m: setattr(m, "act", nn.GELU()), "type ReLU → GELU"),
    "leaky slope": (lambda m: (setattr(m, "act", nn.LeakyReLU(0.01)), None), None),
    "forward hook": (lambda m: m.conv.register_forward_hook(_scaled), "conv: hooks 0 → 1"),
    "patched forward": (lambda m: setattr(m, "forward", types.MethodType(_patched_forward, m)), ": forward"),
    "non-persistent buffer": (lambda m: m.gain.fill_(3.0), "non-persistent buffer gain"),
}


@pytest.mark.parametrize("what", [k for k in MUTATIONS if k != "leaky slope"])
def test_same_weights_other_function_is_refused_by_name(what, tmp_path):
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = tmp_path / "acts.h5"
    ur.record(small(), x, ["conv2", "fc"], out, progress=False)
    model = small()
    mutate, words = MUTATIONS[what]
    mutate(model)
    assert state_dict_sha256(model) == state_dict_sha256(small())  # the weights' hash is blind
    with pytest.raises(ur.RecordingError, match="already holds a finished recording of another job") as err:
        ur.record(model, x, ["conv2", "fc"], out, progress=False)
    assert "the model's anatomy" in str(err.value) and words in str(err.value)
    assert "\n" not in str(err.value)


def test_a_leaky_relu_slope_is_part_of_the_job():
    a, b = small("leaky"), small("leaky")
    b.act.negative_slope = 0.2
    assert anatomy_of(a).digest != anatomy_of(b).digest
    assert anatomy_of(a).digest == anatomy_of(small("leaky")).digest  # stable for an equal model


def test_googlenet_transform_input_is_part_of_the_job(zoo):
    model = zoo("googlenet")
    before = anatomy_of(model)
    model.transform_input = not model.transform_input
    try:
        after = anatomy_of(model)
    finally:
        model.transform_input = not model.transform_input
    assert before.digest != after.digest
    assert anatomy_of(model).digest == before.digest


def test_a_partial_file_is_not_resumed_with_other_constructor_kwargs(tmp_path):
    """`model: {name: ..., kwargs: {act: relu}}` then `act: gelu`: same weights, another network."""
    x = Interrupting(n=12)
    out = tmp_path / "acts.h5"
    relu = ur.load_model("tests.recording.test_job_identity:small", kwargs={"act": "relu"})
    gelu = ur.load_model("tests.recording.test_job_identity:small", kwargs={"act": "gelu"})
    assert state_dict_sha256(relu) == state_dict_sha256(gelu)
    with pytest.raises(KeyboardInterrupt):
        ur.record(relu, Interrupting(n=12, stop_at=8), ["conv2"], out, batch_size=4, progress=False)
    with pytest.raises(ur.RecordingError, match=r"was started by another job.*model_kwargs.*relu.*gelu"):
        ur.record(gelu, x, ["conv2"], out, batch_size=4, progress=False)
    ur.record(relu, x, ["conv2"], out, batch_size=4, progress=False)  # the same job resumes
    whole = ur.record(small("relu"), x, ["conv2"], tmp_path / "whole.h5", batch_size=4, progress=False)
    np.testing.assert_array_equal(ur.load_layer(out, "conv2").values, ur.load_layer(whole, "conv2").values)


def test_kwargs_that_are_classes_identify_the_job_without_an_address():
    from unitrec.recording.provenance import _named

    assert _named(nn.ReLU) == "torch.nn.modules.activation.ReLU"
    assert "0x" not in _named(object())


# --------------------------------------------------------------------- the trace cache
class Swapping(nn.Module):
    """A block whose forward concatenates its children in an order a dict attribute chooses."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 2, 1)
        self.b = nn.Conv2d(3, 5, 1)
        self.cfg = {"swap": False}

    def forward(self, x):
        parts = [self.a(x), self.b(x)]
        return torch.cat(parts[::-1] if self.cfg["swap"] else parts, 1)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Swapping()

    def forward(self, x):
        return self.block(x)


def _sources(model) -> list:
    return trace_model(model, torch.zeros(1, 3, 8, 8)).find("block", 0).sources


def test_a_dict_that_steers_forward_is_not_missed_by_the_trace_cache():
    net = Net()
    assert _sources(net) == [("a", 2), ("b", 5)]
    net.block.cfg["swap"] = True  # mutated in place
    assert _sources(net) == [("b", 5), ("a", 2)]


def test_a_class_level_forward_patch_is_not_missed_by_the_trace_cache(monkeypatch):
    net = Net()
    assert _sources(net) == [("a", 2), ("b", 5)]
    monkeypatch.setattr(Swapping, "forward", lambda self, x: torch.cat([self.b(x), self.a(x)], 1))
    assert _sources(net) == [("b", 5), ("a", 2)]


def test_source_labels_of_a_recording_follow_a_steering_dict(tmp_path):
    net = Net()
    x = torch.randn(2, 3, 8, 8)
    first = ur.load_layer(ur.record(net, x, ["block"], tmp_path / "a.h5", progress=False), "block")
    net.block.cfg["swap"] = True
    second = ur.load_layer(ur.record(net, x, ["block"], tmp_path / "b.h5", progress=False), "block")
    assert list(first.source.values[:2]) == ["a", "a"] and list(second.source.values[:5]) == ["b"] * 5
    np.testing.assert_array_equal(second.values[:, :5], first.values[:, 2:])  # b's channels, labelled b


# --------------------------------------------------------------------- stimulus coordinates
def _metadata(stim: Path, orientation) -> None:
    labels = sorted(str(p.relative_to(stim)) for p in stim.rglob("*.png"))
    rows = ["path,orientation"] + [f"{lab},{o}" for lab, o in zip(labels, orientation)]
    (stim / "metadata.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture
def stim(tmp_path):
    folder = make_images(tmp_path / "stim", n=8, size=16)
    _metadata(folder, [0, 30, 60, 90, 120, 150, 0, 30])
    return folder


def test_shards_with_another_metadata_csv_are_refused_by_name(stim, tmp_path):
    model = small()
    out = tmp_path / "acts.h5"
    ur.record(model, stim, ["fc"], out, transform=RAW, batch_size=4, shard=(0, 2), progress=False)
    _metadata(stim, [0, 30, 60, 90, 120, 150, 1060, 30])  # edited between the shards
    with pytest.raises(ur.RecordingError, match=r"from different jobs .as many shards of each.*coordinates"):
        ur.record(model, stim, ["fc"], out, transform=RAW, batch_size=4, shard=(1, 2), progress=False)
    assert not out.exists()


@pytest.mark.parametrize("edit, words", [
    (lambda s: _metadata(s, [0, 30, 60, 90, 120, 150, 1060, 30]), "column 'orientation': 1 values differ, e.g. row 6"),
    (lambda s: (s / "metadata.csv").write_text(
        "path\n" + "\n".join(sorted(str(p.relative_to(s)) for p in s.rglob("*.png"))) + "\n"),
     "column 'orientation' only in the file"),
    (lambda s: _metadata(s, ["a", "b", "c", "d", "e", "f", "g", "h"]), "column 'orientation' is numbers in the file, text now"),
])
def test_a_resume_with_another_metadata_csv_names_the_column(stim, tmp_path, edit, words):
    model = small()
    out = tmp_path / "acts.h5"
    ur.record(model, stim, ["fc"], out, transform=RAW, batch_size=4, progress=False)
    edit(stim)
    with pytest.raises(ur.RecordingError) as err:
        ur.record(model, stim, ["fc"], out, transform=RAW, batch_size=4, progress=False)
    assert "stimulus coordinates, metadata.csv" in str(err.value) and words in str(err.value)


# --------------------------------------------------------------------- stitched files and their shards
def _sharded(model, stim, out, n=2):
    for i in range(n):
        ur.record(model, stim, ["conv2", "fc"], out, transform=RAW, batch_size=4, shard=(i, n), progress=False)
    assert out.exists()
    return out


def test_a_renamed_stitch_refuses_shards_recorded_again_under_it(stim, tmp_path):
    out = _sharded(small(), stim, tmp_path / "acts.h5")
    v1 = tmp_path / "acts_v1.h5"
    os.rename(out, v1)  # the shards' folder keeps its name: acts_v1.h5 still reads acts.h5.shards/
    lazy = ur.load_layer(v1, "conv2")  # a notebook keeps a lazy array
    lazy_tree = ur.open_recording(v1)
    expected = ur.load_layer(v1, "conv2").values
    np.testing.assert_array_equal(lazy.values, expected)
    shutil.rmtree(shard_folder(out))
    _sharded(small("gelu"), stim, out)  # another job, under the old name
    for read in (lambda: ur.load_layer(v1, "conv2"), lambda: lazy.isel(stimulus=[0]).values,
                 lambda: lazy_tree["conv2"]["activation"].values, lambda: ur.load_population(v1)):
        with pytest.raises(ur.RecordingError, match="recorded again since"):
            read()
    with pytest.raises(ur.RecordingError, match="recorded again since"):
        ur.load_layer(v1, "conv2", chunks={}).values


def test_a_lazy_stitched_array_reads_equal_values_while_its_shards_stand(stim, tmp_path):
    out = _sharded(small(), stim, tmp_path / "acts.h5")
    one = ur.record(small(), stim, ["conv2", "fc"], tmp_path / "one.h5", transform=RAW, batch_size=4, progress=False)
    for chunks in (None, {}, "auto"):
        da = ur.load_layer(out, "conv2", chunks=chunks)
        np.testing.assert_array_equal(da.isel(stimulus=slice(1, 6)).values,
                                      ur.load_layer(one, "conv2").isel(stimulus=slice(1, 6)).values)


def test_a_finishing_shard_never_replaces_another_jobs_file(stim, tmp_path):
    out = tmp_path / "acts.h5"
    ur.record(small(), stim, ["conv2", "fc"], out, transform=RAW, batch_size=4, shard=(0, 2), progress=False)
    # meanwhile the last shard's own file is finished, and a one-process job A lands in `out`
    theirs = ur.record(small("gelu"), stim, ["fc"], tmp_path / "a.h5", transform=RAW, progress=False)
    ur.record(small(), stim, ["conv2", "fc"], tmp_path / "b.h5", transform=RAW, batch_size=4, shard=(1, 2),
              progress=False)
    shutil.copy(shard_folder(tmp_path / "b.h5") / "00001-of-00002.h5", shard_folder(out) / "00001-of-00002.h5")
    shutil.copy(theirs, out)
    before = out.read_bytes()
    with pytest.raises(ur.RecordingError, match="already holds a recording made in one process.*left as it is"):
        stitch_if_complete(out, 2)
    assert out.read_bytes() == before
    with pytest.raises(ur.RecordingError, match="merge --overwrite"):
        ur.merge(out)
    assert out.read_bytes() == before
    assert ur.merge(out, overwrite=True) == out
    assert "shards" in ur.recording_info(out) if hasattr(ur, "recording_info") else True
    with h5py.File(out, "r") as h5:
        assert "shards" in h5.attrs


def test_overwrite_keeps_the_finished_file_until_the_new_one_is_complete(tmp_path):
    out = tmp_path / "acts.h5"
    x = Interrupting(n=12)
    old = ur.load_layer(ur.record(small(), x, ["conv2"], out, batch_size=4, progress=False), "conv2").values
    gelu = small("gelu")
    with pytest.raises(KeyboardInterrupt):
        ur.record(gelu, Interrupting(n=12, stop_at=8), ["conv2"], out, batch_size=4, progress=False,
                  overwrite=True)
    np.testing.assert_array_equal(ur.load_layer(out, "conv2").values, old)  # still whole
    assert partial_path(out).exists()
    with pytest.warns(ur.UnitrecWarning, match="resuming .*an --overwrite run"):
        ur.record(gelu, x, ["conv2"], out, batch_size=4, progress=False)  # rerun without --overwrite
    new = ur.record(small("gelu"), x, ["conv2"], tmp_path / "new.h5", batch_size=4, progress=False)
    np.testing.assert_array_equal(ur.load_layer(out, "conv2").values, ur.load_layer(new, "conv2").values)
    assert not partial_path(out).exists()


def test_a_shard_overwrite_keeps_a_merged_copy_whole(stim, tmp_path):
    out = _sharded(small(), stim, tmp_path / "acts.h5")
    ur.merge(out, copy=True)
    shutil.rmtree(shard_folder(out))
    before = ur.load_layer(out, "conv2").values
    ur.record(small("gelu"), stim, ["conv2", "fc"], out, transform=RAW, batch_size=4, shard=(0, 2),
              progress=False, overwrite=True)
    np.testing.assert_array_equal(ur.load_layer(out, "conv2").values, before)  # 1 of 2 shards: untouched
    ur.record(small("gelu"), stim, ["conv2", "fc"], out, transform=RAW, batch_size=4, shard=(1, 2),
              progress=False, overwrite=True)
    assert not np.array_equal(ur.load_layer(out, "conv2").values, before)  # the new job, stitched


def test_the_stitching_temporary_never_follows_a_link(stim, tmp_path):
    out = _sharded(small(), stim, tmp_path / "acts.h5")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = out.with_name(out.name + ".stitching.h5")
    link.symlink_to(victim)
    ur.merge(out)
    assert victim.read_text() == "precious"
    assert not out.is_symlink() and h5py.is_hdf5(out) and not link.exists()


def test_a_deleted_shard_is_recorded_again_without_overwrite(stim, tmp_path):
    out = _sharded(small(), stim, tmp_path / "acts.h5")
    expected = ur.load_layer(out, "conv2").values
    (shard_folder(out) / "00001-of-00002.h5").unlink()
    with pytest.raises(ur.RecordingError, match="recorded again the same way"):
        ur.merge(out)
    ur.record(small(), stim, ["conv2", "fc"], out, transform=RAW, batch_size=4, shard=(1, 2), progress=False)
    np.testing.assert_array_equal(ur.load_layer(out, "conv2").values, expected)


# --------------------------------------------------------------------- code from YAML, pickles
def test_a_yaml_file_alone_cannot_run_a_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mark = tmp_path / "PWNED"
    cfg = {"model": {"name": "subprocess:getoutput", "kwargs": {"cmd": f"touch {mark}"}},
           "stimuli": {"path": "stim"}, "layers": ["fc"], "output": "o.h5"}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    for allow in ([], ["subprocess"]):  # allow_code, read from the same YAML, cannot allow the stdlib
        cfg["model"]["allow_code"] = allow
        (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
        with pytest.raises(ur.ConfigError, match="standard library"):
            ur.run_config(tmp_path / "exp.yaml")
    assert not mark.exists()
    (tmp_path / "helpers.py").write_text("import os\nfrom os import system as build\n")
    for name, words in (("helpers:os.system", "reaches through the module 'os'"),
                        ("helpers:build", "is not defined in 'helpers'")):
        cfg["model"] = {"name": name, "kwargs": {"command": f"touch {mark}"}}
        (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
        with pytest.raises(ur.ModelError, match=words):
            ur.run_config(tmp_path / "exp.yaml")
    assert not mark.exists()
    cfg["model"] = {"name": "beside:build"}  # no beside.py there
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ur.ConfigError, match=r"allow_code: \[beside\]"):
        ur.run_config(tmp_path / "exp.yaml")


def test_code_beside_the_config_or_named_in_allow_code_runs(tmp_path):
    make_images(tmp_path / "stim", n=2, size=16)
    (tmp_path / "beside_nets.py").write_text(
        "import torch\n\ndef build():\n    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.Linear(392, 2))\n")
    cfg = {"model": {"name": "beside_nets:build"}, "stimuli": {"path": "stim"}, "layers": ["0"],
           "preprocess": {"resize": 16, "crop": 16}, "output": "a.h5", "record": {"progress": False}}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(cfg))
    assert ur.run_config(tmp_path / "a.yaml").exists()  # from another working folder than the config's
    cfg.update(model={"name": "tests.recording.test_job_identity:small", "allow_code": ["tests"]}, layers=["fc"],
               output="b.h5")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(cfg))
    assert ur.run_config(tmp_path / "b.yaml").exists()


def test_a_pickled_checkpoint_is_refused_without_the_unsafe_advice(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": types.SimpleNamespace(a=1)}, path)
    with pytest.raises(ur.ModelError) as err:
        ur.load_model("tests.recording.test_job_identity:small", checkpoint=path)
    message = str(err.value)
    assert "pickled Python code" in message and "was not loaded" in message and "arbitrary code" in message
    assert "weights_only" not in message and "\n" not in message


@pytest.mark.parametrize("content, words", [
    (b"e" * 100, "not a PyTorch checkpoint but a text file"),
    (b"\x89HDF\r\n\x1a\n" + bytes(100), "not a PyTorch checkpoint but an HDF5 file"),
    (bytes(range(200, 256)) * 3, "not a PyTorch checkpoint but a file of another format"),
])
def test_a_garbage_checkpoint_says_what_the_file_is_not(tmp_path, content, words):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ur.ModelError) as err:
        ur.load_model("tests.recording.test_job_identity:small", checkpoint=path)
    assert words in str(err.value) and "101" not in str(err.value)


def test_a_run_that_recorded_nothing_does_not_claim_the_other_runs_figures(tmp_path, capsys):
    make_images(tmp_path / "stim", n=4, size=16)
    cfg = {"model": {"name": "resnet18"}, "stimuli": {"path": "stim"}, "layers": ["conv1"],
           "preprocess": {"resize": 16, "crop": 16}, "output": "o.h5", "record": {"progress": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "c.yaml")]) == 0
    with h5py.File(tmp_path / "o.h5", "r+") as h5:  # as if another process had finished it meanwhile
        h5.attrs["finished_by"] = "elsewhere:1"
        h5.attrs["finished"] = "2999-01-01T00:00:00.000000+00:00"
    capsys.readouterr()
    assert main(["run", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    assert "nothing to record" in out and "images/s" not in out


# --------------------------------------------------------------------- what a second review found
class Gain:
    """A callable-object hook whose state steers the output."""

    def __init__(self, k):
        self.k = k

    def __call__(self, module, args, output):
        return output * self.k


class Scaler:
    def __init__(self, k):
        self.k = k

    def hook(self, module, args, output):
        return output * self.k


@dataclasses.dataclass
class Cfg:
    gain: float = 1.0


class Steered(nn.Module):
    gain = 1.0  # a class attribute

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)
        self._scale = 1.0
        self.cfg = Cfg()
        self.extra = [nn.Conv2d(4, 4, 1)]  # not registered: outside the state_dict

    def forward(self, x):
        return self.extra[0](self.conv(x)) * self._scale * self.cfg.gain * type(self).gain


def _changed(model, change) -> bool:
    before = anatomy_of(model).digest
    change(model)
    return anatomy_of(model).digest != before


@pytest.mark.parametrize("change", [
    lambda m: setattr(m, "_scale", 2.0),                       # a private attribute
    lambda m: setattr(m, "_scale", np.float32(2.0)),            # a numpy scalar
    lambda m: setattr(m.cfg, "gain", 2.0),                      # a dataclass's field
    lambda m: m.extra[0].weight.data.mul_(2),                   # an unregistered module's weights
    lambda m: m.conv.register_forward_hook(Gain(2)),            # a callable object
    lambda m: m.conv.register_forward_hook(Scaler(2).hook),     # a bound method
    lambda m: m.conv.register_forward_hook(functools.partial(_times, k=np.array([2.0]))),
    lambda m: m.conv.register_forward_hook(functools.wraps(nn.Conv2d.forward)(lambda mod, a, o: o * 2)),
], ids=["private", "numpy scalar", "dataclass", "unregistered module", "callable object", "bound method",
        "partial with an array", "functools.wraps"])
def test_what_else_steers_a_forward_is_in_the_anatomy(change):
    assert _changed(Steered(), change)


def _times(module, args, output, k):
    return output * torch.as_tensor(k, dtype=output.dtype)


def test_hooks_that_differ_only_in_their_state_or_constants_differ(monkeypatch):
    a, b = Steered(), Steered()
    a.conv.register_forward_hook(Gain(2))
    b.conv.register_forward_hook(Gain(3))
    assert anatomy_of(a).digest != anatomy_of(b).digest
    a, b = Steered(), Steered()
    f, g = (lambda m, i, o: o * 2), (lambda m, i, o: o * 3)  # one source line, two functions
    a.conv.register_forward_hook(f)
    b.conv.register_forward_hook(g)
    assert anatomy_of(a).digest != anatomy_of(b).digest
    before = anatomy_of(Steered()).digest
    monkeypatch.setattr(Steered, "gain", 3.0)
    assert anatomy_of(Steered()).digest != before
    monkeypatch.setattr(nn.ReLU, "forward", functools.wraps(nn.ReLU.forward)(lambda self, x: x * 2))
    assert anatomy_of(nn.Sequential(nn.ReLU())).digest != anatomy_of(nn.Sequential(nn.Identity())).digest


@pytest.mark.slow  # 2-4 s: with the slow ones, to keep the default suite under 3 minutes
def test_the_same_model_in_a_new_process_has_the_same_anatomy(tmp_path):
    """No address, no object id: a model defined in a script fed on stdin, with lambdas and hooks."""
    import subprocess
    import sys

    script = (
        "import torch, functools\nfrom torch import nn\nfrom unitrec.anatomy.fingerprint import anatomy_of\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__(); self.c = nn.Conv2d(3, 2, 1); self.f = [x for x in (1, 2)]\n"
        "    def forward(self, x):\n        return sum(v for v in [self.c(x)]) * (lambda y: y)(2)\n"
        "m = Net(); m.c.register_forward_hook(lambda mod, a, o: o * 2)\n"
        "m.c.register_forward_pre_hook(functools.partial(lambda mod, a, k: None, k=3))\n"
        "print(anatomy_of(m).digest)\n")
    digests = {subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True,
                              check=True).stdout for _ in range(2)}
    assert len(digests) == 1


def test_a_users_transform_is_identified_by_its_code_not_its_repr(tmp_path):
    from torchvision import transforms as T

    from unitrec.anatomy.preprocess import describe_transform

    def double(x):
        return x * 2

    a = describe_transform(T.Compose([T.ToTensor(), T.Lambda(double)]))
    b = describe_transform(T.Compose([T.ToTensor(), T.Lambda(lambda x: x * 3)]))
    assert a != b and "0x" not in a and "0x" not in describe_transform(double)
    assert describe_transform(T.Compose([T.ToTensor(), T.Lambda(double)])) == a


def test_autocast_is_part_of_the_job(tmp_path):
    x = Interrupting(n=8)
    out = tmp_path / "acts.h5"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ur.record(small(), x, ["conv2"], out, batch_size=4, progress=False)
    with pytest.raises(ur.RecordingError, match=r"numerics \(file: autocast bfloat16"):
        ur.record(small(), x, ["conv2"], out, batch_size=4, progress=False)


def test_an_old_partial_file_of_this_job_never_replaces_a_file_made_after_it(tmp_path):
    out = tmp_path / "acts.h5"
    with pytest.raises(KeyboardInterrupt):  # B, in one process, interrupted (no --overwrite)
        ur.record(small("gelu"), Interrupting(n=12, stop_at=8), ["conv2"], out, batch_size=4, progress=False)
    partial_path(out).rename(tmp_path / "keep.h5")
    ur.record(small(), Interrupting(n=12), ["conv2"], out, batch_size=4, progress=False)  # A lands in `out`
    (tmp_path / "keep.h5").rename(partial_path(out))
    before = out.read_bytes()
    with pytest.raises(ur.RecordingError, match="another job"):
        ur.record(small("gelu"), Interrupting(n=12), ["conv2"], out, batch_size=4, progress=False)
    assert out.read_bytes() == before


@pytest.mark.parametrize("where", ["creating", "partial", "shards"])
def test_a_folder_or_file_at_a_temporary_name_is_one_line(tmp_path, where):
    out = tmp_path / "acts.h5"
    if where == "shards":
        (tmp_path / "acts.h5.shards").write_text("x")
    else:
        (tmp_path / f"acts.h5.{where}.h5").mkdir()
    with pytest.raises(ur.RecordingError, match="move it away"):
        ur.record(small(), Interrupting(n=4), ["conv2"], out, progress=False, overwrite=where == "partial",
                  shard=(0, 1) if where == "shards" else None)


def test_a_stitch_whose_shard_another_job_recorded_is_not_called_done(stim, tmp_path):
    out = _sharded(small(), stim, tmp_path / "acts.h5")
    with pytest.raises(ur.RecordingError, match="00001-of-00002.h5 and 00000-of-00002.h5 are from different jobs"):
        ur.record(small("gelu"), stim, ["conv2", "fc"], out, transform=RAW, batch_size=4, shard=(0, 2),
                  progress=False, overwrite=True)  # job B's shard 0; its stitch is refused (a 1-1 tie)
    for shard in (None, (1, 2)):
        with pytest.raises(ur.RecordingError, match="recorded again since.*--overwrite"):
            ur.record(small(), stim, ["conv2", "fc"], out, transform=RAW, batch_size=4, shard=shard,
                      progress=False)
    ur.record(small(), stim, ["conv2", "fc"], out, transform=RAW, batch_size=4, shard=(0, 2), progress=False,
              overwrite=True)  # A's shard 0 again: stitched anew
    one = ur.record(small(), stim, ["conv2", "fc"], tmp_path / "one.h5", transform=RAW, batch_size=4,
                    progress=False)
    np.testing.assert_array_equal(ur.load_layer(out, "conv2").values, ur.load_layer(one, "conv2").values)


def test_runs_of_one_generating_config_at_once_never_delete_each_others_images(tmp_path):
    cfg = {"model": {"name": "resnet18"}, "layers": ["conv1"], "output": "o.h5",
           "stimuli": {"path": "gen", "generate": {"kind": "gratings", "size": 16, "orientations": [0, 90],
                                                   "spatial_frequencies": [2], "phases": [0]}},
           "preprocess": {"resize": 16, "crop": 16}, "record": {"progress": False}}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(cfg))
    ur.run_config(tmp_path / "g.yaml")
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "gen").iterdir()}
    ur.run_config(tmp_path / "g.yaml")  # the same set: not a file is rewritten (a run reading them is safe)
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "gen").iterdir()} == stamps
    assert not [p for p in tmp_path.iterdir() if "generating" in p.name]
    cfg["stimuli"]["generate"]["orientations"] = [45]
    cfg["output"] = "o2.h5"
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(cfg))
    ur.run_config(tmp_path / "g.yaml")  # another set: replaced
    assert len(list((tmp_path / "gen").glob("*.png"))) == 1
