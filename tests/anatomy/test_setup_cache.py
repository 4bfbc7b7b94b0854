"""What ``ur.record`` reuses between calls, and proof that it never reuses it stale.

The dry-run trace is cached per model and input shape while the anatomy holds;
the weights' SHA-256 is cached while the weights are provably unchanged; whole
chunks are written with HDF5's direct chunk write. Each shortcut is checked against
the slow path it replaces.
"""

from __future__ import annotations

import collections
import time

import h5py
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import unitrec as ur
from unitrec.anatomy import hollow as H
from unitrec.anatomy import trace as T
from unitrec.anatomy.model import _HASHES, _sha256, _weight_bytes, state_dict_sha256


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


class _Counting(nn.Module):
    """Counts its calls in a buffer, written in place by every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x):
        self.calls += 1
        return self.conv(x)


def test_record_hashes_the_weights_the_trace_left(tmp_path):
    model = _Counting().eval()
    path = ur.record(model, torch.randn(2, 3, 8, 8), ["conv"], tmp_path / "a.h5", batch_size=2, progress=False)
    traced = _Counting().eval()
    traced.load_state_dict(model.state_dict())
    traced.calls.fill_(1)  # after the trace's one pass, before the recording's batch
    assert h5py.File(path, "r").attrs["weights_sha256"] == _fresh(traced)


class _LazyInit(nn.Module):
    """Sets its weights at its first forward, in one of the ways no version counter (or
    hollow pass) sees, after a pause in which a hash started beside the trace would end."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.ready = how, False
        self.conv = nn.Conv2d(3, 4, 3)
        with torch.no_grad():
            self.conv.weight.zero_()  # a placeholder until the first forward
        self.register_buffer("table", torch.zeros(4))
        self.view = self.table.numpy()  # taken before any forward

    def forward(self, x):
        if not self.ready:
            time.sleep(0.2)
            if self.how == "numpy view":
                self.view[:] = 7.0
            elif self.how == "numpy in forward":
                self.table.numpy()[:] = 5.0
            else:  # a deferred init through .data, which has its own version counter
                nn.init.constant_(self.conv.weight.data, 0.5)
            self.ready = True
        return self.conv(x)


@pytest.mark.parametrize("how", ["numpy view", "numpy in forward", "deferred init"])
def test_record_hashes_the_weights_as_the_trace_left_them(tmp_path, how):
    # the trace's forward is the first: a hash taken before or beside it would be of the
    # placeholders, and a resume with other weights would pass
    model = _LazyInit(how).eval()
    placeholders = _fresh(model)
    path = ur.record(model, torch.randn(2, 3, 8, 8), ["conv"], tmp_path / "a.h5", batch_size=2, progress=False)
    assert h5py.File(path, "r").attrs["weights_sha256"] == _fresh(model) != placeholders
    assert state_dict_sha256(model) == _fresh(model)  # and the cache is of them too


class _SizeInit(nn.Module):
    """Writes its weight from the input's size at each forward (a write autograd counts)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        nn.init.constant_(self.conv.weight, float(x.shape[-1]))
        return self.conv(x)


def test_a_second_recording_rehashes_weights_its_trace_wrote(tmp_path):
    model = _SizeInit().eval()
    ur.record(model, torch.randn(2, 3, 8, 8), ["conv"], tmp_path / "a.h5", batch_size=2, progress=False)
    state_dict_sha256(model)  # the cache holds the weights as they are now, before the next trace
    b = ur.record(model, torch.randn(2, 3, 12, 12), ["conv"], tmp_path / "b.h5", batch_size=2, progress=False)
    assert float(model.conv.weight.detach()[0, 0, 0, 0]) == 12.0
    assert h5py.File(b, "r").attrs["weights_sha256"] == _fresh(model)


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
    from unitrec.files import writer as W

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
    checked = ur.record(model, x, sites, tmp_path / "c.h5", batch_size=4, progress=False)
    assert set(paths) == {"normal"}  # Fletcher-32 chunks (the default) go through HDF5's filter
    paths.clear()
    monkeypatch.setattr(W, "_CHECKSUM", False)  # without the checksum, whole chunks go straight to the file
    path = ur.record(model, x, sites, tmp_path / "r.h5", batch_size=4, progress=False)
    assert paths.count("direct") == 4 and paths.count("normal") == 2  # the last block holds 2 of 4 rows
    for key in ("layer1", "fc"):
        np.testing.assert_array_equal(ur.load_layer(path, key).values, ur.load_layer(checked, key).values)
    with monkeypatch.context() as m:  # the oracle: every row through HDF5's normal write
        m.setattr(W, "raw_rows", lambda ds: False)
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
        assert not W.raw_rows(f["fc"]["activation"])
    np.testing.assert_array_equal(ur.load_layer(zpath, "fc").values, ur.load_layer(path, "fc").values)


# ------------------------------------------------------------------ the hollow trace
# Convolutions and linear layers return zeros of their shape in the first pass; it
# must give the real pass's trace, and give way to a real pass wherever values could
# steer the model.

_HOLLOW_MODELS = ["resnet18", "densenet121", "googlenet", "inception_v3", "mobilenet_v3_small",
                  "timm:vit_small_patch16_224"]
_MORE_HOLLOW_MODELS = ["resnet50", "alexnet", "vgg11", "squeezenet1_1", "efficientnet_b0", "convnext_tiny",
                       "vit_b_16", "swin_t", "regnet_y_400mf", "shufflenet_v2_x0_5", "maxvit_t",
                       "timm:inception_resnet_v2", "timm:convnext_atto", "timm:efficientnet_b0",
                       "timm:swin_tiny_patch4_window7_224", "timm:levit_128s"]


def _hollow_equals_real(model: nn.Module, size: int) -> None:
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    assert T._trace(model, x, hollow=True) == T._trace(model, x)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("densenet121", "inception_v3")
                                  else n for n in _HOLLOW_MODELS])  # those two: 6-7 s each, with the slow tests
def test_the_hollow_trace_is_the_real_trace(zoo, name):
    pytest.importorskip("timm") if name.startswith("timm:") else None
    _hollow_equals_real(zoo(name), 299 if "inception" in name else 224)


@pytest.mark.slow
@pytest.mark.parametrize("name", _MORE_HOLLOW_MODELS)
def test_the_hollow_trace_is_the_real_trace_on_more_models(name):
    pytest.importorskip("timm") if name.startswith("timm:") else None
    _hollow_equals_real(ur.load_model(name, seed=0).eval(), 299 if "inception" in name else 224)


class _Steered(nn.Module):
    """Takes branch `a` when the convolution's output is positive in sum, which it
    is for every input (a bias of 10); zeros in its place would take branch `b`."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 8, 3)
        nn.init.constant_(self.conv.bias, 10.0)
        nn.init.constant_(self.conv.weight, 0.0)
        self.a, self.b = nn.ReLU(), nn.Tanh()
        if how == "slice":
            with torch.no_grad():
                self.conv.bias[5:] = 0.0
        self.table = torch.ones(1)  # a plain attribute, not a buffer

    def forward(self, x):
        y = self.conv(x)
        s = y.sum()
        if self.how == "bool":
            positive = bool(s > 0)
        elif self.how == "item":
            positive = s.item() > 0
        elif self.how == "tolist":
            positive = y.mean(dim=(2, 3)).tolist()[0][0] > 0
        elif self.how == "int":
            positive = int(s) > 0
        elif self.how == "numpy":
            positive = float(np.asarray(s)) > 0
        elif self.how == "mask":  # a mask index: the shape depends on values
            positive = y[y > 0].shape[0] > 0
        elif self.how == "nonzero":
            positive = torch.nonzero(y).shape[0] > 0
        elif self.how == "attribute":  # a tensor the trace never saw made
            positive = (s * self.table).shape == (1,) and True
        elif self.how == "slice":  # a size read from a one-element tensor: a slice bound ...
            k = (y.amax(dim=(0, 2, 3)) > 5).sum() + 1  # 5 channels for real, 1 from zeros
            positive = y[:, :k].shape[1] > 1
        elif self.how == "view":  # ... a view's size ...
            k = (y.amax(dim=(0, 2, 3)) > 5).sum() + 1  # 9 for real (288 values), 1 from zeros
            positive = y.reshape(-1).view(k, -1).shape[0] > 1
        elif self.how == "interpolate":  # ... an argument of a whitelisted op
            k = (y.amax(dim=(0, 2, 3)) > 5).sum() + 1
            positive = F.interpolate(y, size=(k, k)).shape[-1] > 1
        elif self.how == "adaptive":  # a size given as a tensor of several elements
            k = (y.amax(dim=(0, 2, 3)) > 5).sum() + 1
            positive = F.adaptive_avg_pool2d(y, torch.stack([k, k])).shape[-1] > 1
        elif self.how == "where":  # by keyword: indices whose count depends on values
            positive = torch.where(condition=y > 5)[0].shape[0] > 0
        elif self.how == "setitem":  # an index read from values
            i = y.mean(dim=(0, 2, 3)).argmax()
            y = y.clone()
            y[:, i : i + 1] = 0
            positive = True
        elif self.how == "swallowed":  # a model that catches everything and takes the zeros' branch
            try:
                positive = bool(s > 0)
            except BaseException:
                positive = False
        else:
            raise AssertionError(self.how)
        return self.a(y) if positive else self.b(y)


@pytest.mark.parametrize("how", ["bool", "item", "tolist", "int", "numpy", "mask", "nonzero", "attribute",
                                 "slice", "view", "interpolate", "adaptive", "where", "setitem", "swallowed"])
def test_values_that_steer_the_model_make_the_trace_real(how):
    model = _Steered(how).eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(H.NeedsValues):
        T._trace(model, x, hollow=True)
    trace = T.trace_model(model, x)
    assert trace == T._trace(model, x)
    assert "a" in trace.counts and "b" not in trace.counts


def test_a_hook_that_reads_values_makes_the_trace_real():
    model = _small()
    seen: list[float] = []
    handle = model[2].register_forward_hook(lambda m, a, out: seen.append(out.abs().max().item()))
    try:
        with pytest.raises(H.NeedsValues):
            T._trace(model, torch.randn(1, 3, 16, 16), hollow=True)
        T.trace_model(model, torch.randn(1, 3, 16, 16))
    finally:
        handle.remove()
    assert seen[-1] > 0  # the hook saw real values


def test_a_model_that_fails_fails_with_its_own_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(5, 2)).eval()  # 4*6*6 != 5
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        T.trace_model(model, torch.randn(1, 3, 8, 8))
    with pytest.raises(RuntimeError, match="not implemented for 'Bool'"):  # only the kernel knows
        T.trace_model(_BoolConv().eval(), torch.ones(1, 3, 8, 8, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):  # integers divided by zero, for real
        T.trace_model(_Remainder().eval(), torch.ones(1, 3, 2, 2))


class _BoolConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.ones(4, 3, 3, 3, dtype=torch.bool))

    def forward(self, x):
        return F.conv2d(x, self.w)


class _Remainder(nn.Module):
    """Divides by zero for real (the convolution gives 1), by -1 on stand-in zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        nn.init.zeros_(self.conv.weight)
        nn.init.ones_(self.conv.bias)

    def forward(self, x):
        return torch.ones(1, dtype=torch.int64) % (self.conv(x).to(torch.int64) - 1)


class _Peak(nn.Module):
    """Keeps the largest response it has seen in a buffer, in eval mode too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        nn.init.constant_(self.conv.bias, 10.0)
        self.register_buffer("peak", torch.zeros(()))

    def forward(self, x):
        y = self.conv(x)
        torch.maximum(self.peak, y.amax(), out=self.peak)
        return y


def test_no_stand_in_value_is_left_in_the_model():
    model = _Peak().eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(H.NeedsValues, match="model's tensors"):
        T._trace(model, x, hollow=True)
    assert model.peak == 0  # given up before the write
    T.trace_model(model, x)
    with torch.no_grad():
        assert model.peak == model.conv(x).amax()  # what a real pass leaves


class _Unseen(nn.Module):
    """Computes where no torch function mode looks, as a compiled extension does."""

    def forward(self, x):
        with torch._C.DisableTorchFunction():
            return torch.relu(x) + 0


def test_a_part_the_trace_cannot_see_makes_it_real():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _Unseen(), nn.Conv2d(4, 2, 3)).eval()
    x = torch.randn(1, 3, 10, 10)
    with pytest.raises(H.NeedsValues, match="outside the trace"):
        T._trace(model, x, hollow=True)
    assert T.trace_model(model, x) == T._trace(model, x)


class _Keeps(nn.Module):
    """Keeps something of its activations between calls."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 4, 3)
        nn.init.constant_(self.conv.bias, 1.0)
        self.register_buffer("avg", torch.zeros(()))
        self.register_buffer("running_mean", torch.zeros(4))
        self.register_buffer("running_var", torch.ones(4))
        self.register_buffer("flags", torch.tensor([1, 0, 1]))
        self.history: list[torch.Tensor] = []
        self.queue: collections.deque[torch.Tensor] = collections.deque(maxlen=2)

    def forward(self, x):
        y = self.conv(x)
        if self.how == "assign":  # a new buffer object
            self.avg = 0.9 * self.avg + 0.1 * y.mean()
        elif self.how == "data":  # in place through an alias that is not a view
            self.avg.data.add_(y.mean())
        elif self.how == "attribute":
            self.last = y
        elif self.how == "list":
            self.history.append(y)
        elif self.how == "input":  # the input changed in place, without stand-in values
            x.mul_(2)
        elif self.how == "numpy":  # ... or through numpy
            x.numpy()[0, 0, 0, 0] += 1
        elif self.how == "deque":
            self.queue.append(y)
        elif self.how == "batchnorm":  # batch statistics, as test-time adaptation uses
            y = F.batch_norm(y, self.running_mean, self.running_var, training=True)
        elif self.how == "max_out":  # several outputs written into buffers
            torch.max(y.flatten(2), 2, out=(self.running_mean.view(1, 4), self.flags.new_empty(1, 4)))
        elif self.how == "xor":  # an in-place operator that is not named *_
            self.flags ^= 1
        elif self.how == "torch_bn":  # torch.batch_norm: weight and bias come before the statistics
            y = torch.batch_norm(y, None, None, self.running_mean, self.running_var, True, 0.1, 1e-5, False)
        elif self.how == "parameter":  # a new tensor object over the stand-in's storage
            self.history.append(nn.Parameter(y))
        elif self.how in ("native_bn", "data_set"):  # writes the trace cannot see, then a reason to give up
            if self.how == "native_bn":
                torch.native_batch_norm(x.mean(1).expand(1, 4, 8, 8).contiguous(), None, None, self.running_mean,
                                        self.running_var, True, 0.1, 1e-5)
            else:
                self.conv.bias.data = self.conv.bias.data * 0.5
            y = y if y.mean().item() > -1e9 else -y
        return y


@pytest.mark.parametrize("how", ["assign", "data", "attribute", "list", "input", "numpy", "deque", "batchnorm",
                                 "max_out", "xor", "torch_bn", "parameter", "native_bn", "data_set"])
def test_the_hollow_pass_leaves_nothing_in_the_model(how):
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model, twin = _Keeps(how).eval(), _Keeps(how).eval()
    twin.load_state_dict(model.state_dict())
    x_twin = x.clone()
    with pytest.raises(H.NeedsValues):
        T._trace(model, x, hollow=True)
    assert all(torch.equal(v, twin.state_dict()[k]) for k, v in model.state_dict().items())  # as it was
    assert not hasattr(model, "last") and torch.equal(x, x_twin)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    T.trace_model(model, x)
    T._trace(twin, x_twin)  # what one real pass leaves
    assert all(torch.equal(v, twin.state_dict()[k]) for k, v in model.state_dict().items())
    assert torch.equal(x, x_twin)
    if how in ("batchnorm", "max_out", "xor", "torch_bn", "native_bn", "data_set"):
        assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())  # a real write
    if how == "deque":
        assert torch.equal(model.queue[-1], twin.queue[-1]) and model.queue[-1].abs().sum() > 0
    if how == "attribute":
        assert torch.equal(model.last, twin.last) and model.last.abs().sum() > 0
    if how == "list":  # Python-side state sees both passes: the stand-in pass's entry, then the real one
        assert torch.equal(model.history[-1], twin.history[-1])


def test_channels_last_models_get_real_strides():
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fast, self.slow = nn.Identity(), nn.Flatten()

        def forward(self, x):
            y = self.conv(x)
            try:
                return self.fast(y.view(y.size(0), -1))
            except RuntimeError:  # not contiguous
                return self.slow(y)

    model = Flat().eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    trace = T.trace_model(model, x)
    assert trace == T._trace(model, x) and "slow" in trace.counts


def test_user_hooks_and_the_switch_make_the_trace_real(monkeypatch):
    model = _small()
    kept: dict[str, torch.Tensor] = {}
    handle = model[0].register_forward_hook(lambda m, a, out: kept.__setitem__("out", out))
    try:
        T.trace_model(model, torch.randn(1, 3, 16, 16))
    finally:
        handle.remove()
    assert kept["out"].abs().sum() > 0  # the hook kept real values, not stand-ins
    calls: list[bool] = []
    real = T._trace
    monkeypatch.setattr(T, "_trace", lambda m, e, hollow=False: calls.append(hollow) or real(m, e, hollow))
    T.trace_model(_small(), torch.randn(1, 3, 16, 16))
    monkeypatch.setenv("UNITREC_TRACE", "real")
    T.trace_model(_small(), torch.randn(1, 3, 16, 16))
    assert calls == [True, False]


def test_giving_up_does_not_draw_twice_from_the_generator():
    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x) + torch.randn(4, 1, 1)
            return y if y.sum().item() != 0 else -y

    model, x = Noisy().eval(), torch.randn(1, 3, 8, 8)
    torch.manual_seed(5)
    T.trace_model(model, x)
    after_trace = torch.rand(3)
    torch.manual_seed(5)
    T._trace(model, x)
    assert torch.equal(after_trace, torch.rand(3))


def test_a_site_whose_shape_changes_with_the_stimulus_is_refused_not_broadcast(tmp_path):
    class Varying(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Identity()

        def forward(self, x):
            rows = 4 if x.mean() > 0 else 1  # the first stimulus gives 4 rows, the second 1
            return self.head(self.conv(x)[:, :, :rows])

    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x[0] += 5
    x[1] -= 5
    with pytest.raises(ur.RecordingError, match=r"shape \(4, 1, 8\) per stimulus where the traced pass gave "
                                                r"\(4, 4, 8\)"):
        ur.record(Varying().eval(), x, ["head"], tmp_path / "v.h5", batch_size=1, progress=False)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_the_convolution_shape_formula_agrees_with_the_convolution(dims):
    conv = getattr(F, f"conv{dims}d")
    rng = np.random.default_rng(dims)
    for _ in range(40):
        groups = int(rng.choice([1, 2]))
        k, s, p, d = (tuple(int(v) for v in rng.integers(lo, hi, dims)) for lo, hi in ((1, 4), (1, 3), (0, 3), (1, 3)))
        x = torch.zeros(1, 2 * groups, *rng.integers(5, 12, dims).tolist())
        w = torch.zeros(2 * groups, 2, *k)
        assert H.conv_shape(x, w, s, p, d, groups) == tuple(conv(x, w, None, s, p, d, groups).shape[1:])
    assert H.conv_shape(x, w, 1, "same", 1, groups) is None  # the op is asked instead


class _Edges(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 4, 1 if how == "channels_last_1x1" else 3)
        self.fast, self.slow = nn.Identity(), nn.Flatten()

    def forward(self, x):
        y = self.conv(x)
        if self.how == "channels_last_1x1":  # a 1x1 weight in channels_last passes is_contiguous()
            try:
                return self.fast(y.view(y.size(0), -1))
            except RuntimeError:
                return self.slow(y)
        if self.how == "unseen_bound":  # a slice bound computed where the trace cannot see
            with torch._C.DisableTorchFunction():
                k = (y > 0).sum() // 8
            return self.fast(y[:, :, :k])
        if self.how == "grad":  # autograd state differs for a stand-in
            with torch.enable_grad():
                z = self.conv(x)
            return self.fast(z) if z.requires_grad else self.slow(z)
        raise AssertionError(self.how)


@pytest.mark.parametrize("how", ["channels_last_1x1", "unseen_bound", "grad"])
def test_what_a_stand_in_cannot_reproduce_makes_the_trace_real(how):
    torch.manual_seed(0)
    model = _Edges(how).eval()
    if how == "channels_last_1x1":
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 8, 8)
    assert T.trace_model(model, x) == T._trace(model, x)


def test_the_real_convolution_checks_its_bias():
    model = nn.Conv2d(3, 4, 3).eval()
    model.bias = nn.Parameter(torch.zeros(5))  # channels pruned, bias left alone
    with pytest.raises(RuntimeError, match="bias"):
        T.trace_model(model, torch.randn(1, 3, 8, 8))
