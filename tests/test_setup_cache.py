"""What ``ur.record`` reuses between calls, and proof that it never reuses it stale.

The dry-run trace is cached per model and input shape while the anatomy holds;
the weights' SHA-256 is cached while the weights are provably unchanged; whole
chunks are written with HDF5's direct chunk write. Each shortcut is checked against
the slow path it replaces.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import unitrec as ur
from unitrec import trace as T
from unitrec.model import _HASHES, _sha256, _weight_bytes, state_dict_sha256


def test_the_trace_is_cached_until_the_anatomy_changes():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)).eval()
    x = torch.randn(1, 3, 20, 20)
    first = T.trace_model(model, x)
    assert T.trace_model(model, x) is first
    assert first == T._trace(model, x)  # what a fresh trace would say
    assert T.trace_model(model, torch.randn(1, 3, 24, 24)) is not first  # another input size
    model[2].stride = (2, 2)  # a setting
    strided = T.trace_model(model, x)
    assert strided.find("2", 0).output_shape == (1, 8, 8, 8) != first.find("2", 0).output_shape
    model[1] = nn.ReLU(inplace=True)  # another module object
    assert T.trace_model(model, x) is not strided
    again = T.trace_model(model, x)
    handle = model[0].register_forward_hook(lambda m, a, out: out)  # a hook may change the output
    try:
        assert T.trace_model(model, x) is not again
    finally:
        handle.remove()
    model[0].weight = nn.Parameter(torch.randn(8, 3, 5, 5))  # another parameter shape
    assert T.trace_model(model, x).find("0", 0).output_shape == (1, 8, 16, 16)


def _fresh(model: nn.Module) -> str:
    return _sha256(_weight_bytes(model))


@pytest.mark.parametrize("change", ["data", "numpy", "no_grad", "optimizer", "replace", "buffer", "load"])
def test_the_weights_hash_sees_every_change(change):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(4, 2))
    _HASHES.pop(model, None)
    before = state_dict_sha256(model)
    assert state_dict_sha256(model) == before == _fresh(model)
    w = model[0].weight
    if change == "data":  # autograd does not count this write
        w.data[0, 0, 0, 0] += 1
    elif change == "numpy":  # nor this one
        w.detach().numpy()[1, 0, 0, 0] = 7.0
    elif change == "no_grad":
        with torch.no_grad():
            w[0, 0, 0, 0] += 1
    elif change == "optimizer":
        model[2](torch.randn(3, 4)).sum().backward()
        torch.optim.SGD(model.parameters(), lr=0.1).step()
    elif change == "replace":
        model[2].bias = nn.Parameter(torch.zeros(2))
    elif change == "buffer":
        model[1].running_mean.data[3] = 0.5
    elif change == "load":
        state = model.state_dict()
        state["2.weight"] = torch.ones_like(state["2.weight"])
        model.load_state_dict(state)
    after = state_dict_sha256(model)
    assert after != before
    assert after == _fresh(model)


def _small() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, stride=2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def test_a_second_recording_reuses_and_rechecks(tmp_path):
    model = _small()
    x = torch.randn(6, 3, 16, 16)
    sites = [{"name": "1", "as": "layer1"}, {"name": "5", "as": "fc"}]
    a = ur.record(model, x, sites, tmp_path / "a.h5", batch_size=4, progress=False)
    b = ur.record(model, x, sites, tmp_path / "b.h5", batch_size=4, progress=False)
    model[5].weight.data.mul_(2)  # behind autograd's back
    model[5].bias.data.mul_(2)
    c = ur.record(model, x, sites, tmp_path / "c.h5", batch_size=4, progress=False)
    sha = {p.name: h5py.File(p, "r").attrs["weights_sha256"] for p in (a, b, c)}
    assert sha["a.h5"] == sha["b.h5"] != sha["c.h5"]
    assert sha["c.h5"] == _fresh(model)
    np.testing.assert_array_equal(ur.load_layer(a, "fc").values, ur.load_layer(b, "fc").values)
    np.testing.assert_array_equal(ur.load_layer(c, "fc").values, 2 * ur.load_layer(a, "fc").values)


def test_whole_chunks_go_straight_to_the_file(tmp_path, monkeypatch):
    from unitrec import writer as W

    paths: list[str] = []
    original = W.RecordingFile._put

    def put(self, key, start, stop, data):
        rows = self._direct.get(key)
        paths.append("direct" if rows and start % rows == 0 and (stop - start) % rows == 0 else "normal")
        original(self, key, start, stop, data)

    monkeypatch.setattr(W.RecordingFile, "_put", put)
    model = _small()
    x = torch.randn(10, 3, 16, 16)
    sites = [{"name": "1", "as": "layer1"}, {"name": "5", "as": "fc"}]
    path = ur.record(model, x, sites, tmp_path / "r.h5", batch_size=4, progress=False)
    assert paths.count("direct") == 4 and paths.count("normal") == 2  # the last block holds 2 of 4 rows
    with monkeypatch.context() as m:  # the oracle: every row through HDF5's normal write
        m.setattr(W, "_raw_rows", lambda ds: False)
        paths.clear()
        normal = ur.record(model, x, sites, tmp_path / "n.h5", batch_size=4, progress=False)
        assert set(paths) == {"normal"}
    for key in ("layer1", "fc"):
        np.testing.assert_array_equal(ur.load_layer(path, key).values, ur.load_layer(normal, key).values)
    pytest.importorskip("hdf5plugin")
    paths.clear()
    zpath = ur.record(model, x, sites[1:], tmp_path / "z.h5", batch_size=4, progress=False, compression="zstd")
    assert paths and set(paths) == {"normal"}  # compressed chunks go through the filter
    with h5py.File(zpath, "r") as f:
        assert not W._raw_rows(f["fc"]["activation"])
    np.testing.assert_array_equal(ur.load_layer(zpath, "fc").values, ur.load_layer(path, "fc").values)
