"""The Scorer: a recording's values, in a recording's order, fast enough for loops, never stale.

Oracles: ``ur.record`` of the same batch (same batch composition, so bit for bit), the
recorded file's unit coordinates, and the theoretical receptive field (the gradient of
a centre unit is zero outside it).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import unitrec as ur
from unitrec.closedloop import scorer as scorer_module
from unitrec.errors import ConfigError, LayerNotFoundError

LAYERS = [{"name": "layer3", "units": "center"}, "layer1.0.relu:1", {"name": "layer4", "pool": "mean"},
          "fc@input", {"name": "layer2", "channels": [3, 7], "positions": [[0, 1], [2, 2]]}]


@pytest.fixture(scope="module")
def resnet():
    return ur.load_model("resnet18")


@pytest.fixture(scope="module")
def batch():
    return torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def test_scores_equal_a_recording_of_the_same_batch_bit_for_bit(resnet, batch, tmp_path):
    scorer = ur.Scorer(resnet, LAYERS)
    out = scorer(batch)
    path = ur.record(resnet, batch, LAYERS, tmp_path / "a.h5", batch_size=len(batch), progress=False,
                     stop_early=False)
    pop = ur.load_population(path)
    assert out.shape == pop.shape and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), pop.values)
    assert not out.requires_grad


def test_units_are_the_recordings_units(resnet, batch, tmp_path):
    scorer = ur.Scorer(resnet, LAYERS)
    scorer(batch)
    units = scorer.units
    pop = ur.load_population(ur.record(resnet, batch, LAYERS, tmp_path / "a.h5", batch_size=5, progress=False))
    assert list(units["site"]) == list(pop["layer"].values)
    for column in ("channel", "y", "x", "rf_center_y", "rf_center_x"):
        have = units[column].to_numpy(dtype=float, na_value=np.nan)
        want = pop[column].values.astype(float)
        if column in ("y", "x"):  # the population writes -1 where a unit has no position
            want[want == -1] = np.nan
        np.testing.assert_array_equal(have, want, err_msg=column)
    assert str(units["channel"].dtype) == "Int64"


def test_gradients_stay_inside_the_theoretical_receptive_field(resnet):
    scorer = ur.Scorer(resnet, [{"name": "layer2", "channels": [4], "units": "center"}])
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = scorer(x)
    assert out.shape == (2, 1) and out.requires_grad
    out.sum().backward()
    touched = (x.grad.abs().sum(dim=(0, 1)) > 0).numpy()
    field = scorer.sites[0].field
    row = scorer.units.iloc[0]
    (lo_y, hi_y), (lo_x, hi_x) = [(c - s / 2, c + s / 2) for c, s in
                                  ((row.rf_center_y, field.size[0]), (row.rf_center_x, field.size[1]))]
    ys, xs = np.nonzero(touched)
    assert len(ys) > 0
    assert ys.min() + 0.5 >= lo_y and ys.max() + 0.5 <= hi_y and xs.min() + 0.5 >= lo_x and xs.max() + 0.5 <= hi_x
    assert all(p.grad is None for p in resnet.parameters())  # only the input asked for gradients


def test_the_forward_stops_after_the_deepest_site(batch):
    after = nn.Linear(4, 4)
    calls = []
    after.register_forward_pre_hook(lambda m, a: calls.append(1))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), after).eval()
    scorer = ur.Scorer(model, ["1"])
    scorer(batch)
    traced = len(calls)  # the trace of the first call runs the whole model once
    for _ in range(3):
        assert scorer(batch).shape == (5, 4 * 62 * 62)
    assert len(calls) == traced


def test_one_trace_per_input_shape_and_a_new_one_when_the_model_changes(resnet, batch, monkeypatch):
    calls = []
    real = scorer_module.resolve_sites
    monkeypatch.setattr(scorer_module, "resolve_sites", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = ur.load_model("resnet18")
    scorer = ur.Scorer(model, ["layer2"])
    for _ in range(3):
        first = scorer(batch)
    assert len(calls) == 1
    scorer(batch[:, :, :32, :32])
    assert len(calls) == 2  # another input shape
    model.layer2[0].conv1.stride = (1, 1)  # a setting edited in place: the sites' shapes change
    model.layer2[0].downsample[0].stride = (1, 1)
    changed = scorer(batch)
    assert len(calls) == 3 and changed.shape[1] == 4 * first.shape[1]
    model.layer2[0].relu = nn.GELU()  # a module replaced, shapes the same
    scorer(batch)
    assert len(calls) == 4
    fresh = ur.Scorer(model, ["layer2"])(batch)
    np.testing.assert_array_equal(scorer(batch).numpy(), fresh.numpy())


def test_the_model_is_left_as_it_was(resnet, batch):
    resnet.train()
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    ur.Scorer(resnet, ["layer1"])(batch)
    assert resnet.training  # restored; scored in eval mode
    resnet.eval()
    assert all(torch.equal(before[k], v) for k, v in resnet.state_dict().items())  # BN stats untouched
    assert not resnet._forward_hooks and not resnet.layer1._forward_hooks


def test_eval_mode_scores_equal_a_recording_even_of_a_model_left_in_training_mode(batch, tmp_path):
    model = ur.load_model("resnet18").train()
    out = ur.Scorer(model, ["layer1"])(batch)
    model.eval()
    want = ur.load_layer(ur.record(model, batch, ["layer1"], tmp_path / "a.h5", batch_size=5, progress=False),
                         "layer1")
    np.testing.assert_array_equal(out.numpy(), want.values.reshape(5, -1))


@pytest.mark.parametrize("bad, error, says", [
    (lambda s: s("not a tensor"), ConfigError, "preprocessed float batch"),
    (lambda s: s(torch.zeros(0, 3, 32, 32)), ConfigError, "at least one image"),
    (lambda s: s(torch.zeros(2, 3, 32, 32, dtype=torch.long)), ConfigError, "float batch"),
    (lambda s: s(torch.zeros(3, 32, 32)), ConfigError, r"x\[None\]"),
    (lambda s: s(torch.zeros(2, 3, 32, 32, dtype=torch.float64)), ConfigError, "torch.float32"),
    (lambda s: s.units, ConfigError, "call it once"),
])
def test_bad_batches_are_one_line(resnet, bad, error, says):
    with pytest.raises(error, match=says) as info:
        bad(ur.Scorer(resnet, ["layer1"]))
    assert "\n" not in str(info.value)


def test_bad_entries_are_one_line(resnet):
    with pytest.raises(LayerNotFoundError, match="layer9"):
        ur.Scorer(resnet, ["layer9"])(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="ur.record"):
        ur.Scorer(resnet, [{"name": "layer1", "keep": "summary"}])
    with pytest.raises(ConfigError, match="nn.Module"):
        ur.Scorer("resnet18", ["layer1"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="device"):
        ur.Scorer(resnet, ["layer1"], device="gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no usable CUDA GPU"):
            ur.Scorer(resnet, ["layer1"], device="cuda")
    assert len(ur.Scorer(resnet, ["layer1"], input_size=(3, 32, 32)).units) == 64 * 8 * 8  # without a call
