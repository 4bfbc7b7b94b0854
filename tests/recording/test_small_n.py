"""Fewer stimuli than the batch size: one block of N rows, not B (issue 22, item 22)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import unitrec as ur

from tests.conftest import Interrupting


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 15 * 15, 5)).eval()


def _seen(model: nn.Module) -> list[int]:
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    return sizes


def test_two_stimuli_with_the_default_batch_size_compute_two_rows(tmp_path):
    model, x = _net(), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    sizes = _seen(model)
    path = ur.record(model, x, ["0", "3"], tmp_path / "a.h5", progress=False)  # batch_size 32
    assert sizes[-1] == 2 and 32 not in sizes  # the trace's own pass is of one image
    with h5py.File(path, "r") as h5:
        assert h5.attrs["batch_size"] == 2
        assert _config_batch_size(h5) == 2
    with torch.no_grad():
        want = model(x)  # the same batch of 2: equal bit for bit
    np.testing.assert_array_equal(ur.load_layer(path, "3").values, want.numpy())


def _config_batch_size(h5: h5py.File) -> int:
    """The batch size in the config stored in the file."""
    import yaml

    return yaml.safe_load(h5.attrs["config"])["record"]["batch_size"]


def test_a_small_set_resumed_or_asked_with_another_batch_size_keeps_its_block(tmp_path):
    model = _net()
    whole = ur.record(model, Interrupting(n=5), ["3"], tmp_path / "whole.h5", progress=False)
    out = tmp_path / "acts.h5"
    with pytest.raises(KeyboardInterrupt):
        ur.record(model, Interrupting(n=5, stop_at=3), ["3"], out, progress=False)
    with pytest.warns(ur.UnitrecWarning, match="started with batch_size 5; keeping it"):
        path = ur.record(model, Interrupting(n=5), ["3"], out, batch_size=4, progress=False)
    np.testing.assert_array_equal(ur.load_layer(path, "3").values, ur.load_layer(whole, "3").values)
    with h5py.File(path, "r") as h5:
        assert h5.attrs["batch_size"] == 5
    with torch.no_grad():
        want = model(Interrupting(n=5).x)
    np.testing.assert_array_equal(ur.load_layer(whole, "3").values, want.numpy())


def test_a_small_set_in_shards_is_one_shard_of_one_block(tmp_path):
    with pytest.raises(ur.ConfigError, match=r"2 shards of 5 stimuli in batches of 5 "):
        ur.record(_net(), Interrupting(n=5), ["3"], tmp_path / "s.h5", shard=(0, 2), progress=False)
