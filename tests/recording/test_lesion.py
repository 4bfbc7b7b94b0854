"""Lesions (``ablate=``): equal to a hand-written forward hook that returns the edited output.

On ResNet (a bottleneck's channels), DenseNet (a dense layer's channels inside the
block's concatenation) and Inception (one branch silenced), through ``record``,
``Recorder`` and ``Scorer``; the lesion is part of the run key and of the file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

import unitrec as ur
from unitrec.errors import ConfigError, LayerNotFoundError, RecordingError


def _batch(n=4, size=64, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _by_hand(model, module, edit):
    """The oracle: a forward hook on `module` returning `edit(output.clone())`."""
    return dict(model.named_modules())[module].register_forward_hook(lambda m, a, out: edit(out.clone()))


def _recorded(model, x, layers, path, **kw):
    return {s: ur.load_layer(ur.record(model, x, layers, path, batch_size=len(x), progress=False,
                                       stop_early=False, **kw), s).values for s in
            [e if isinstance(e, str) else e["name"] for e in layers]}


def _zero(channels):
    def edit(out):
        out[:, channels] = 0
        return out
    return edit


CASES = {  # model, lesion, its hand-written edit, sites recorded after it
    "resnet18": ("resnet18", {"name": "layer2.0.conv1", "channels": [1, 3, 17], "set": 0},
                 _zero([1, 3, 17]), ["layer2.0.conv1", "layer2.0", "layer3"]),
    "densenet121": ("densenet121", {"name": "features.denseblock1.denselayer3", "channels": [0, 5, 31], "scale": 0.5},
                    None, ["features.denseblock1", "features.transition1"]),
    "googlenet": ("googlenet", {"name": "inception3a.branch2"}, None, ["inception3a", "inception3b"]),
}


def _edit_for(case):
    name, lesion, edit, _ = CASES[case]
    if edit is not None:
        return edit
    if "scale" in lesion:
        def scale(out):
            out[:, lesion["channels"]] *= lesion["scale"]
            return out
        return scale
    return lambda out: out * 0


@pytest.mark.parametrize("case", [c if c == "resnet18" else pytest.param(c, marks=pytest.mark.slow)  # 5-7 s each
                                  for c in sorted(CASES)])
def test_a_lesion_equals_a_hand_written_hook(case, tmp_path):
    name, lesion, _, sites = CASES[case]
    if case == "googlenet":
        lesion = {**lesion, "set": 0}
    model = ur.load_model(name)
    x = _batch()
    lesioned = _recorded(model, x, sites, tmp_path / "lesioned.h5", ablate=[lesion])
    handle = _by_hand(model, lesion["name"], _edit_for(case))
    try:
        want = _recorded(model, x, sites, tmp_path / "by_hand.h5")
    finally:
        handle.remove()
    intact = _recorded(model, x, sites, tmp_path / "intact.h5")
    for site in sites:
        np.testing.assert_array_equal(lesioned[site], want[site], err_msg=site)
        assert not np.array_equal(lesioned[site], intact[site]), site  # the lesion reached it


def test_a_dense_layers_lesion_is_seen_inside_the_concatenation(tmp_path):
    model = ur.load_model("densenet121")
    x = _batch()
    lesion = {"name": "features.denseblock1.denselayer3", "channels": [0, 5, 31], "set": 0}
    block = ur.load_layer(ur.record(model, x, ["features.denseblock1"], tmp_path / "l.h5", ablate=[lesion],
                                    batch_size=4, progress=False), "features.denseblock1")
    intact = ur.load_layer(ur.record(model, x, ["features.denseblock1"], tmp_path / "i.h5", batch_size=4,
                                     progress=False), "features.denseblock1")
    own = np.flatnonzero(block["source"].values == "denselayer3")
    hit = own[[0, 5, 31]]
    assert (block.values[:, hit] == 0).all() and not (intact.values[:, hit] == 0).all()
    rest = np.setdiff1d(np.flatnonzero(block["source"].values != "denselayer3+"), hit)
    earlier = np.flatnonzero(np.isin(block["source"].values, ["input", "denselayer1", "denselayer2"]))
    np.testing.assert_array_equal(block.values[:, earlier], intact.values[:, earlier])  # upstream untouched
    assert len(rest) > len(earlier)


def test_recorder_and_scorer_take_the_same_lesions(tmp_path):
    model = ur.load_model("resnet18")
    x = _batch()
    lesion = [{"name": "layer1.0.conv2", "channels": [2], "units": "center", "scale": -1.5}]
    recorded = ur.load_layer(ur.record(model, x, ["layer1"], tmp_path / "a.h5", ablate=lesion, batch_size=4,
                                       progress=False), "layer1").values
    with ur.Recorder(model, ["layer1"], input_size=(3, 64, 64), ablate=lesion) as rec:
        rec.run(x)
    np.testing.assert_array_equal(rec.activations["layer1"].numpy(), recorded)
    scored = ur.Scorer(model, ["layer1"], ablate=lesion)(x)
    np.testing.assert_array_equal(scored.numpy(), recorded.reshape(4, -1))
    assert not any(m._forward_hooks for m in model.modules())  # every hook went with its block or call


def test_set_mean_takes_each_units_mean_from_a_recording(tmp_path):
    model = ur.load_model("resnet18")
    x, other = _batch(), _batch(seed=9)
    source = ur.record(model, other, [{"name": "layer1.0.conv1", "keep": "both"}], tmp_path / "means.h5",
                       batch_size=4, progress=False)
    means = ur.load_summary(source, "layer1.0.conv1")["mean"].values.astype(np.float32)
    lesion = [{"name": "layer1.0.conv1", "channels": [0, 9], "set": "mean", "from": str(source)}]
    got = ur.load_layer(ur.record(model, x, ["layer1"], tmp_path / "l.h5", ablate=lesion, batch_size=4,
                                  progress=False), "layer1").values

    def edit(out):
        out[:, [0, 9]] = torch.from_numpy(means[[0, 9]])
        return out
    handle = _by_hand(model, "layer1.0.conv1", edit)
    try:
        want = ur.load_layer(ur.record(model, x, ["layer1"], tmp_path / "h.h5", batch_size=4, progress=False),
                             "layer1").values
    finally:
        handle.remove()
    np.testing.assert_array_equal(got, want)


def test_the_lesion_is_in_the_run_key_and_the_file(tmp_path):
    model = ur.load_model("resnet18")
    x = _batch()
    plain = ur.record(model, x, ["layer1"], tmp_path / "plain.h5", batch_size=4, progress=False)
    import h5py

    with h5py.File(plain) as h5:
        assert "ablation" not in h5.attrs and "ablation" not in json.loads(h5.attrs["run_key"])
    out = tmp_path / "l.h5"
    lesion = [{"name": "layer1.0.conv1", "channels": [3], "set": 0}]
    ur.record(model, x, ["layer1"], out, ablate=lesion, batch_size=4, progress=False)
    with h5py.File(out) as h5:
        stored = json.loads(h5.attrs["ablation"])
        assert stored == [{"site": "layer1.0.conv1", "channels": [3], "set": 0.0, "n_units": 16 * 16}]
        assert yaml.safe_load(h5.attrs["config"])["ablate"] == [{"name": "layer1.0.conv1", "channels": [3], "set": 0}]
    assert ur.record(model, x, ["layer1"], out, ablate=lesion, batch_size=4, progress=False) == out  # same job
    with pytest.raises(RecordingError, match="ablation") as info:
        ur.record(model, x, ["layer1"], out, ablate=[{**lesion[0], "set": 1}], batch_size=4, progress=False)
    assert "\n" not in str(info.value)
    with pytest.raises(RecordingError, match="ablation"):
        ur.record(model, x, ["layer1"], out, batch_size=4, progress=False)  # and without any lesion


def test_a_config_lesions_with_a_path_relative_to_it(tmp_path):
    model = ur.load_model("resnet18")
    folder = tmp_path / "exp"
    folder.mkdir()
    ur.record(model, _batch(4, 32, seed=2), [{"name": "layer1.0.conv1", "keep": "summary"}], folder / "means.h5",
              batch_size=4, progress=False)
    stim = tmp_path / "stim"
    ur.stimuli.gratings(stim, size=32, orientations=[0, 90], spatial_frequencies=[2], phases=[0])
    config = {"model": {"name": "resnet18"}, "stimuli": {"path": str(stim)},
              "preprocess": {"resize": 32, "crop": 32}, "layers": ["layer1"],
              "record": {"batch_size": 2, "progress": False}, "output": str(tmp_path / "out.h5"),
              "ablate": [{"name": "layer1.0.conv1", "channels": [1], "set": "mean", "from": "means.h5"}]}
    (folder / "exp.yaml").write_text(yaml.safe_dump(config))
    out = ur.run_config(folder / "exp.yaml")
    import h5py

    with h5py.File(out) as h5:
        assert json.loads(h5.attrs["ablation"])[0]["from"] == str(folder / "means.h5")


@pytest.mark.parametrize("lesion, error, says", [
    ({"name": "layer9", "set": 0}, LayerNotFoundError, "layer9"),
    ({"name": "layer1@input", "set": 0}, ConfigError, "without @input"),
    ({"name": "layer1", "channels": [999], "set": 0}, Exception, "999"),
    ({"name": "layer1", "set": "zero"}, ConfigError, "mean"),
    ({"name": "layer1", "set": 0, "scale": 2}, ConfigError, "exactly one"),
    ({"name": "layer1", "set": "mean", "from": "nowhere.h5"}, RecordingError, "nowhere.h5"),
])
def test_bad_lesions_are_one_line(lesion, error, says, tmp_path):
    model = ur.load_model("resnet18")
    with pytest.raises(error, match=says) as info:
        ur.record(model, _batch(2, 32), ["layer2"], tmp_path / "a.h5", ablate=[lesion], progress=False)
    assert "\n" not in str(info.value)


def test_a_module_that_returns_a_tuple_is_refused(tmp_path):
    class Pair(torch.nn.Module):
        def forward(self, x):
            return x, x + 1

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pair, self.conv = Pair(), torch.nn.Conv2d(3, 2, 3)

        def forward(self, x):
            a, b = self.pair(x)
            return self.conv(a + b)

    with pytest.raises(ConfigError, match="submodules|tensor") as info:
        ur.record(Net().eval(), _batch(2, 16), ["conv"], tmp_path / "a.h5", ablate=[{"name": "pair", "set": 0}],
                  progress=False)
    assert "\n" not in str(info.value)


def test_a_mean_from_a_partial_selection_is_refused(tmp_path):
    model = ur.load_model("resnet18")
    source = ur.record(model, _batch(), [{"name": "layer1.0.conv1", "channels": [0, 1]}], tmp_path / "m.h5",
                       batch_size=4, progress=False)
    with pytest.raises(ConfigError, match="whole site"):
        ur.record(model, _batch(), ["layer1"], tmp_path / "a.h5", progress=False,
                  ablate=[{"name": "layer1.0.conv1", "set": "mean", "from": str(source)}])


def test_a_mean_from_an_unfinished_recording_is_said(tmp_path):
    from tests.conftest import Interrupting

    model = ur.load_model("resnet18")
    out = tmp_path / "m.h5"
    with pytest.raises(KeyboardInterrupt):
        ur.record(model, Interrupting(24, stop_at=10), ["layer1.0.conv1"], out, batch_size=4, progress=False)
    from unitrec.files.layout import partial_path

    with pytest.warns(ur.UnitrecWarning, match="unfinished recording"):
        ur.record(model, _batch(2, 32), ["layer1"], tmp_path / "a.h5", progress=False,
                  ablate=[{"name": "layer1.0.conv1", "set": "mean", "from": str(partial_path(out))}])
