"""The anatomy of a model: every site records the right value, concatenations know
where their channels came from, module inputs can be captured, and the listing and
stage views describe the network. Zoo models with random weights and a user's own.
"""

from __future__ import annotations

import copy
import operator
import re
import time
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import unitrec as ur
from unitrec.anatomy.layers import stages
from unitrec.anatomy.preprocess import build_transform
from unitrec.anatomy.sites import resolve_sites
from unitrec.anatomy.trace import trace_model

from tests.conftest import as_tensor, image_batch, in_blocks

# ---------------------------------------------------------------- every site, every model

# create_feature_extractor is not in-place safe: it hands back the very tensor a node
# produced, and a later ReLU(inplace=True) (or F.relu(..., inplace=True) inside
# GoogLeNet/Inception's BasicConv2d, DenseNet's final relu) rewrites it, so `bn1`
# comes back rectified once a later node is requested too. The oracle therefore runs on
# a deep copy in which every in-place op is made out of place: `inplace` modules are
# switched off before tracing, and the traced graph's in-place calls (an `inplace=True`
# keyword, operator.iadd & co.) are rewritten. Each node then holds the value at the
# moment it was computed, which is what a site must store. (FX already traces
# `out += identity` as an out-of-place add.)
_OUT_OF_PLACE = {operator.iadd: operator.add, operator.isub: operator.sub,
                 operator.imul: operator.mul, operator.itruediv: operator.truediv}


def _oracle(model: nn.Module, sites: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Values of `sites` (unitrec names) from FX feature extraction of an out-of-place copy."""
    clean = copy.deepcopy(model).eval()
    for module in clean.modules():
        if getattr(module, "inplace", False):
            module.inplace = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "eval nodes are a subsequence of train nodes"
        _, nodes = get_graph_node_names(clean)
    node_of = {}
    for site in sites:
        # `relu:k` is FX's `relu_k`; a module name stands for the last node inside it
        module, _, k = site.partition(":")
        query = module if k in ("", "0") else f"{module}_{k}"
        hits = [n for n in nodes if re.match(rf"^{re.escape(query)}(\.|$)", n)]
        assert hits, f"no FX node for {site}"
        node_of[site] = hits[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fx = create_feature_extractor(clean, {n: n for n in set(node_of.values())}).eval()
    for node in fx.graph.nodes:
        if node.op == "call_function" and node.target in _OUT_OF_PLACE:
            node.target = _OUT_OF_PLACE[node.target]
        if node.kwargs.get("inplace"):
            node.kwargs = {**node.kwargs, "inplace": False}
        assert not (node.op == "call_method" and re.fullmatch(r"[a-z]\w*[a-z]_", str(node.target))), \
            f"in-place method {node.target} in the oracle graph"
    fx.recompile()
    with torch.no_grad():
        out = fx(x)
    return {site: out[node] for site, node in node_of.items()}


# (model, input size, every k-th site): the deep variants are sampled (their block types
# are covered whole by the shallow ones); the offset keeps the sample off block boundaries
_ZOO = [
    ("resnet18", 64, 1), ("resnet34", 64, 1),
    pytest.param("resnet50", 64, 1, marks=pytest.mark.slow),  # 4-8 s; Bottleneck blocks: test_exactness too
    pytest.param("resnet101", 64, 3, marks=pytest.mark.slow),
    pytest.param("resnet152", 64, 4, marks=pytest.mark.slow),
    ("densenet121", 64, 1),
    pytest.param("densenet161", 64, 3, marks=pytest.mark.slow),
    pytest.param("densenet169", 64, 3, marks=pytest.mark.slow),
    pytest.param("densenet201", 64, 4, marks=pytest.mark.slow),
    ("googlenet", 64, 1), ("inception_v3", 80, 1),
]


@pytest.mark.parametrize("name, size, every", _ZOO)
def test_every_site_equals_an_out_of_place_feature_extractor(zoo, name, size, every):
    model = zoo(name) if every == 1 else ur.load_model(name)  # the deep ones: not kept for the session
    trace = trace_model(model, torch.randn(1, 3, size, size))
    rows = ur.list_layers(model, (3, size, size), trace=trace)
    assert all(r.output_shape is not None for r in rows)
    sites = [r.name for r in rows][every // 2::every]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))
    rec = ur.Recorder(model, sites)
    rec.sites, rec.trace = resolve_sites(model, sites, trace=trace)  # one dry pass, not two
    with rec:
        rec.run(x)
    got = rec.activations
    want = _oracle(model, sites, x)
    assert set(got) == set(sites)
    for site in sites:
        assert got[site].shape == want[site].shape, site
        torch.testing.assert_close(got[site], want[site], rtol=0, atol=0, msg=site)  # the same batch


def test_the_oracle_sees_what_in_place_ops_later_erase(zoo):
    """Without the out-of-place copy the oracle itself would be wrong, and would agree
    with a recorder that forgot to copy: ResNet's bn1 is rectified in place later."""
    m = zoo("resnet18")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    ours = _oracle(m, ["bn1", "layer1"], x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        naive = create_feature_extractor(m, {"bn1": "bn1", "layer1": "layer1"})
    with torch.no_grad():
        theirs = naive(x)
    assert ours["bn1"].min() < 0 and theirs["bn1"].min() >= 0
    torch.testing.assert_close(ours["bn1"].clamp(min=0), theirs["bn1"], rtol=0, atol=0)
    torch.testing.assert_close(ours["layer1"], theirs["layer1"], rtol=0, atol=0)


# ---------------------------------------------------------------- source coordinate

def _transform(size: int):
    return build_transform({"resize": size, "crop": size, "normalize": "imagenet"})


def _runs(labels) -> list[tuple[str, int]]:
    """Consecutive runs of a per-channel label array: [(label, count), ...]."""
    runs: list[tuple[str, int]] = []
    for lab in labels:
        if runs and runs[-1][0] == lab:
            runs[-1] = (lab, runs[-1][1] + 1)
        else:
            runs.append((str(lab), 1))
    return runs


def _record(model, images, sites, path, size):
    return ur.record(model, images, sites, path, transform=_transform(size), batch_size=5, progress=False)


@torch.no_grad()
def test_densenet_block_sources_name_the_input_then_each_denselayer(zoo, images, tmp_path):
    m = zoo("densenet121")
    path = _record(m, images, ["features.denseblock2", "features.denseblock2@input"], tmp_path / "d.h5", 64)
    block = ur.load_layer(path, "features.denseblock2")
    source = block.source.values
    # by hand: run the block's layers on the recorded input, as DenseNet does
    inp = as_tensor(ur.load_layer(path, "features.denseblock2@input").values)
    names = ["input"] + [f"denselayer{i}" for i in range(1, len(m.features.denseblock2) + 1)]

    def dense(x):
        features = [x]
        for layer in m.features.denseblock2.values():
            features.append(layer(features))
        return dict(zip(names, features))

    features = list(in_blocks(dense, inp, 5).values())  # in the recording's blocks: equal bit for bit
    assert _runs(source) == [(n, f.shape[1]) for n, f in zip(names, features)]
    assert _runs(source)[:3] == [("input", 128), ("denselayer1", 32), ("denselayer2", 32)]
    # the label is right about the values too: denselayer3's channels are its output
    values = block.values
    for name, feat in zip(names, features):
        np.testing.assert_array_equal(values[:, source == name], feat.numpy(), err_msg=name)


@torch.no_grad()
def test_googlenet_inception_sources_are_its_four_branches(zoo, images, tmp_path):
    m = zoo("googlenet")
    path = _record(m, images, ["inception4a", "inception4a@input"], tmp_path / "g.h5", 64)
    block = ur.load_layer(path, "inception4a")
    inp = as_tensor(ur.load_layer(path, "inception4a@input").values)
    branches = in_blocks(lambda x: {f"branch{i}": getattr(m.inception4a, f"branch{i}")(x) for i in range(1, 5)},
                         inp, 5)
    assert _runs(block.source.values) == [(k, v.shape[1]) for k, v in branches.items()]
    assert [n for _, n in _runs(block.source.values)] == [192, 208, 48, 64]
    for name, value in branches.items():
        np.testing.assert_array_equal(block.values[:, block.source.values == name], value.numpy(), err_msg=name)


@torch.no_grad()
def test_inception_v3_sources_name_the_last_module_of_each_branch(zoo, images, tmp_path):
    m = zoo("inception_v3")
    sites = ["Mixed_5b", "Mixed_5b@input", "Mixed_6a", "Mixed_6a@input"]
    path = _record(m, images, sites, tmp_path / "i.h5", 80)
    b5 = m.Mixed_5b
    inp = as_tensor(ur.load_layer(path, "Mixed_5b@input").values)
    by_hand = in_blocks(lambda x: {
        "branch1x1": b5.branch1x1(x),
        "branch5x5_2": b5.branch5x5_2(b5.branch5x5_1(x)),
        "branch3x3dbl_3": b5.branch3x3dbl_3(b5.branch3x3dbl_2(b5.branch3x3dbl_1(x))),
        "branch_pool": b5.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)),
    }, inp, 5)
    mixed = ur.load_layer(path, "Mixed_5b")
    assert _runs(mixed.source.values) == [(k, v.shape[1]) for k, v in by_hand.items()]
    for name, value in by_hand.items():
        np.testing.assert_array_equal(mixed.values[:, mixed.source.values == name], value.numpy(), err_msg=name)
    # Mixed_6a passes a max-pooled copy of its input through
    b6 = m.Mixed_6a
    inp = as_tensor(ur.load_layer(path, "Mixed_6a@input").values)
    by_hand = in_blocks(lambda x: {
        "branch3x3": b6.branch3x3(x),
        "branch3x3dbl_3": b6.branch3x3dbl_3(b6.branch3x3dbl_2(b6.branch3x3dbl_1(x))),
        "max_pool2d(input)": F.max_pool2d(x, kernel_size=3, stride=2),
    }, inp, 5)
    mixed = ur.load_layer(path, "Mixed_6a")
    assert _runs(mixed.source.values) == [(k, v.shape[1]) for k, v in by_hand.items()]
    assert _runs(mixed.source.values)[-1] == ("max_pool2d(input)", 288)
    for name, value in by_hand.items():
        np.testing.assert_array_equal(mixed.values[:, mixed.source.values == name], value.numpy(), err_msg=name)


def test_provenance_summary_in_the_listing(zoo):
    rows = {r.name: r for r in ur.list_layers(zoo("googlenet"), (3, 64, 64))}
    assert rows["inception3a"].provenance == "cat(branch1:64, branch2:128, branch3:32, branch4:32)"
    assert rows["inception3a.branch2"].provenance == ""
    assert rows["inception3a"].sources == [("branch1", 64), ("branch2", 128), ("branch3", 32),
                                           ("branch4", 32)]
    rows = {r.name: r for r in ur.list_layers(zoo("inception_v3"), (3, 80, 80))}
    # InceptionE concatenates a concatenation: both halves of branch3x3 are named
    assert rows["Mixed_7b"].provenance == (
        "cat(branch1x1:320, branch3x3_2a:384, branch3x3_2b:384, branch3x3dbl_3a:384, "
        "branch3x3dbl_3b:384, branch_pool:192)")
    rows = {r.name: r for r in ur.list_layers(zoo("densenet121"), (3, 64, 64))}
    assert rows["features.denseblock1"].provenance.startswith("cat(input:64, denselayer1:32, denselayer2:32")
    # the layers inside a block concatenate their inputs too, but return new channels
    assert rows["features.denseblock1.denselayer2"].sources is None
    assert rows["features.denseblock1.denselayer2.norm1"].sources is None


def test_listing_inception_v3_at_full_size_is_quick(zoo):
    m = zoo("inception_v3")
    start = time.perf_counter()
    rows = ur.list_layers(m, (3, 299, 299))
    assert time.perf_counter() - start < 10
    by_name = {r.name: r for r in rows}
    assert by_name["Mixed_7c"].output_shape == (2048, 8, 8)
    assert by_name["fc"].output_shape == (1000,)
    assert by_name["Mixed_6e"].calls == 1


# ---------------------------------------------------------------- capturing a module's input

@torch.no_grad()
def test_fc_input_is_the_pooled_flattened_features(zoo, images, tmp_path, transform64):
    m = zoo("resnet18")
    # fc's output is recorded too, so that the deepest site is not one of two entries of
    # the same module (see test_two_entries_of_the_deepest_module)
    layers = ["fc@input", {"name": "fc", "capture": "input", "as": "features"}, "layer4", "fc"]
    path = ur.record(m, images, layers, tmp_path / "f.h5", transform=transform64, batch_size=4,
                     progress=False)
    _, x = image_batch(images, transform64)

    def features(b):
        stem = m.maxpool(m.relu(m.bn1(m.conv1(b))))
        return torch.flatten(m.avgpool(m.layer4(m.layer3(m.layer2(m.layer1(stem))))), 1)

    want = in_blocks(features, x, 4)  # in the recording's blocks: equal bit for bit
    for key in ("fc@input", "features"):
        da = ur.load_layer(path, key)
        assert da.dims == ("stimulus", "channel") and da.sizes["channel"] == 512
        np.testing.assert_array_equal(da.values, want.numpy())
    assert ur.load_layer(path, "features").attrs["capture"] == "input"
    assert ur.load_layer(path, "fc@input").attrs["module"] == "fc"


def test_two_entries_of_the_deepest_module(zoo):
    """The early stop waits until every entry on the deepest module has its value."""
    m = zoo("resnet18")
    layers = ["fc@input", {"name": "fc", "capture": "input", "as": "features"}]
    with ur.Recorder(m, layers, input_size=(3, 64, 64)) as rec:
        rec.run(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(rec.activations["fc@input"], rec.activations["features"], rtol=0, atol=0)


# ---------------------------------------------------------------- stages

def test_stages_of_the_classic_families(zoo):
    def of(name, size=64):
        m = zoo(name)
        return stages(m, trace_model(m, torch.randn(1, 3, size, size)))

    assert of("resnet50") == ["relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
    assert of("densenet121") == (
        ["features.relu0", "features.pool0"]
        + [f"features.{kind}{i}" for i in (1, 2, 3) for kind in ("denseblock", "transition")]
        + ["features.denseblock4", "classifier"])
    g = of("googlenet")
    assert [s for s in g if s.startswith("inception")] == [
        "inception3a", "inception3b", "inception4a", "inception4b", "inception4c", "inception4d",
        "inception4e", "inception5a", "inception5b"]
    assert g[:5] == ["conv1", "maxpool1", "conv2", "conv3", "maxpool2"] and g[-2:] == ["avgpool", "fc"]
    i3 = of("inception_v3", 80)
    assert [s for s in i3 if s.startswith("Mixed")] == [
        "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
        "Mixed_7a", "Mixed_7b", "Mixed_7c"]
    assert "AuxLogits" not in i3 and i3[-2:] == ["avgpool", "fc"]


def test_stages_of_a_plain_convnet_are_its_rectified_layers_and_pools(zoo):
    m = zoo("alexnet")
    assert stages(m, trace_model(m, torch.randn(1, 3, 64, 64))) == [
        "features.1", "features.2", "features.4", "features.5", "features.7", "features.9",
        "features.11", "features.12", "avgpool", "classifier.2", "classifier.5", "classifier.6"]


def test_a_trunk_of_blocks_is_opened_but_a_resnet_layer_is_not(zoo):
    """MobileNet's `features` is a Sequential of blocks that halves the resolution five
    times: its blocks are the stages. ResNet's `layer2` downsamples once: one stage."""
    m = ur.load_model("mobilenet_v3_small")
    names = stages(m, trace_model(m, torch.randn(1, 3, 64, 64)))
    assert names == [f"features.{i}" for i in range(13)] + ["avgpool", "classifier.1", "classifier.3"]
    m = zoo("resnet18")
    assert "layer2" in stages(m, trace_model(m, torch.randn(1, 3, 64, 64)))


def test_stages_are_valid_sites_of_a_users_model():
    m = _Net().eval()
    names = stages(m, trace_model(m, torch.randn(1, 3, 16, 16)))
    # `body` holds a single layer (its ReLU), so it is a trunk and opened up: the block
    # inside is a stage, the ReLU after a block is not
    assert names == ["stem", "body.0", "head"]
    listed = {r.name for r in ur.list_layers(m, (3, 16, 16))}
    assert set(names) <= listed


# ---------------------------------------------------------------- a user's own network

class _Branchy(nn.Module):
    """Concatenates two branches and its own input in a functional forward; one ReLU
    module is shared by both branches (called twice per forward)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, 4, 1)
        self.b = nn.Conv2d(c, 6, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return torch.cat([self.relu(self.a(x)), self.relu(self.b(x)), x], 1)


class _Net(nn.Module):
    """The concatenating block sits inside an nn.Sequential, followed by a ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(_Branchy(8), nn.ReLU())
        self.head = nn.Linear(18, 5)

    def forward(self, x):
        x = self.body(self.stem(x))
        return self.head(x.mean((2, 3)))


def test_a_users_network_lists_like_the_zoo():
    torch.manual_seed(0)
    m = _Net().eval()
    rows = {r.name: r for r in ur.list_layers(m, (3, 16, 16))}
    assert list(rows) == ["stem", "body.0.a", "body.0.relu:0", "body.0.b", "body.0.relu:1", "body.0",
                          "body.1", "body", "head"]
    assert rows["body.0.relu:0"].calls == 2
    assert rows["body.0"].output_shape == (18, 16, 16) and rows["body.0"].units == 18 * 256
    assert rows["stem"].rf_size == (3, 3) and rows["body.0.b"].rf_size == (5, 5)
    assert rows["body.0"].rf_size == (5, 5)  # the largest of its branches
    assert rows["head"].rf_size is None
    # sources are discovered from the forward pass, named by the module whose output the
    # channels are (the shared in-place ReLU applied to the conv's output, per call) ...
    assert rows["body.0"].sources == [("relu:0", 4), ("relu:1", 6), ("input", 8)]
    # ... and a Sequential whose output is that concatenation through an elementwise
    # ReLU names them relative to itself, marked `+`: changed after the concatenation
    assert rows["body"].sources == [("0.relu:0+", 4), ("0.relu:1+", 6), ("input+", 8)]
    assert rows["body.1"].sources is None  # its whole input: nothing to tell apart


@torch.no_grad()
def test_a_users_network_records_values_sources_and_fields(images, tmp_path):
    torch.manual_seed(0)
    m = _Net().eval()
    tf = _transform(16)
    path = ur.record(m, images, ["stem", "body.0", "body", "body.0.relu:1", "head"], tmp_path / "u.h5",
                     transform=tf, batch_size=3, progress=False)
    _, x = image_batch(images, tf)

    def by_hand(x):
        stem = m.stem(x)
        a, b = torch.relu(m.body[0].a(stem)), torch.relu(m.body[0].b(stem))
        block = torch.cat([a, b, stem], 1)
        return {"stem": stem, "body.0": block, "body": torch.relu(block), "body.0.relu:1": b,
                "head": m.head(torch.relu(block).mean((2, 3)))}

    for site, value in in_blocks(by_hand, x, 3).items():  # the recording's blocks: equal bit for bit
        np.testing.assert_array_equal(ur.load_layer(path, site).values, value.numpy(), err_msg=site)
    # the concatenation is recorded before the Sequential's out-of-place ReLU
    assert ur.load_layer(path, "body.0").values.min() < 0
    assert list(ur.load_layer(path, "body.0").source.values) == ["relu:0"] * 4 + ["relu:1"] * 6 + ["input"] * 8
    assert list(ur.load_layer(path, "body").source.values) == ["0.relu:0+"] * 4 + ["0.relu:1+"] * 6 + ["input+"] * 8
    da = ur.load_layer(path, "body.0")
    assert list(da.attrs["rf_size"]) == [5, 5] and list(da.attrs["rf_stride"]) == [1, 1]
    np.testing.assert_array_equal(da.rf_center_y.values, np.arange(16))
