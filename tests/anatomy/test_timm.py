"""timm models: the seed's Inception-ResNet-v2 and Inception-v4, as exact and as well
mapped as the torchvision families, plus keyword arguments for any model's constructor.

Random weights, small inputs (75 px, the smallest these stems take). Building
Inception-ResNet-v2 takes seconds, so the tests that need it are marked slow (CI runs
them); the default run covers timm loading, kwargs, errors and fields on small models.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import unitrec as ur
from unitrec.anatomy.model import state_dict_sha256
from unitrec.anatomy.preprocess import build_transform
from unitrec.anatomy.sites import resolve_sites
from unitrec.anatomy.trace import trace_model

from tests.conftest import as_tensor, in_blocks
from tests.anatomy.test_anatomy import _oracle, _runs

timm = pytest.importorskip("timm")

SIDE = 75


def _exact(model, sites: list[str], side: int = SIDE) -> None:
    trace = trace_model(model, torch.randn(1, 3, side, side))
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(7))
    rec = ur.Recorder(model, sites)
    rec.sites, rec.trace = resolve_sites(model, sites, trace=trace)
    with rec:
        rec.run(x)
    want = _oracle(model, sites, x)
    for site in sites:
        assert rec.activations[site].shape == want[site].shape, site
        torch.testing.assert_close(rec.activations[site], want[site], rtol=0, atol=0, msg=site)  # the same batch


@pytest.mark.slow
def test_inception_resnet_v2_sites_equal_an_out_of_place_feature_extractor(zoo):
    m = zoo("timm:inception_resnet_v2")
    # the stem's BatchNormAct (its pre-activation value, which the in-place ReLU then
    # rewrites), a Mixed block, a whole Block35 inside out, the reductions, the head
    _exact(m, ["conv2d_1a.bn.drop", "conv2d_1a", "mixed_5b", "repeat.0.branch1.1", "repeat.0.conv2d",
               "repeat.0.act", "repeat.0", "mixed_6a.branch2", "mixed_6a", "repeat_1.3", "mixed_7a",
               "block8", "conv2d_7b", "classif"])


@pytest.mark.slow
@pytest.mark.parametrize("name, every", [("timm:inception_resnet_v2", 5), ("timm:inception_v4", 3)])
def test_every_kth_site_of_the_timm_inceptions_equals_the_oracle(zoo, name, every):
    m = zoo(name)
    rows = ur.list_layers(m, (3, SIDE, SIDE))
    _exact(m, [r.name for r in rows if "@input" not in r.name][every // 2::every])


@pytest.mark.slow
@torch.no_grad()
def test_mixed_and_block35_name_their_branches_and_equal_them_called_by_hand(zoo, images, tmp_path):
    m = zoo("timm:inception_resnet_v2")
    sites = ["mixed_5b", "mixed_5b@input", "repeat.0.conv2d@input", "mixed_6a"]
    path = ur.record(m, images, sites, tmp_path / "irv2.h5", batch_size=5, progress=False,
                     transform=build_transform({"resize": SIDE, "crop": SIDE, "normalize": "imagenet"}))
    inp = as_tensor(ur.load_layer(path, "mixed_5b@input").values)
    b5 = m.mixed_5b  # by hand in the recording's blocks of 5: equal bit for bit
    by_hand = in_blocks(lambda x: {f"branch{i}": getattr(b5, f"branch{i}")(x) for i in range(4)}, inp, 5)
    mixed = ur.load_layer(path, "mixed_5b")
    assert _runs(mixed.source.values) == [(k, v.shape[1]) for k, v in by_hand.items()]
    for name, value in by_hand.items():
        np.testing.assert_array_equal(mixed.values[:, mixed.source.values == name], value.numpy(), err_msg=name)
    # Block35 concatenates its branches inside its forward and feeds them to conv2d
    block = m.repeat[0]
    cat = ur.load_layer(path, "repeat.0.conv2d@input")
    out5 = as_tensor(mixed.values)
    by_hand = in_blocks(lambda x: {f"branch{i}": getattr(block, f"branch{i}")(x) for i in range(3)}, out5, 5)
    assert _runs(cat.source.values) == [("branch0", 32), ("branch1", 32), ("branch2", 64)]
    for name, value in by_hand.items():
        np.testing.assert_array_equal(cat.values[:, cat.source.values == name], value.numpy(), err_msg=name)
    # Mixed_6a passes its input through a max pool (timm's module branch2)
    assert _runs(ur.load_layer(path, "mixed_6a").source.values) == [("branch0", 384), ("branch1", 384),
                                                                   ("branch2", 320)]


@pytest.mark.slow
def test_listing_shows_input_concatenations_and_the_published_fields(zoo):
    rows = {r.name: r for r in ur.list_layers(zoo("timm:inception_resnet_v2"), (3, 299, 299))}
    assert rows["mixed_5b"].provenance == "cat(branch0:96, branch1:64, branch2:96, branch3:64)"
    assert rows["repeat_1.0.conv2d@input"].provenance == "cat(branch0:192, branch1:192)"
    assert rows["mixed_7a"].provenance == "cat(branch0:384, branch1:288, branch2:320, branch3:1088)"
    # Araujo, Norris & Sim, "Computing receptive fields of CNNs" (Distill 2019), table 1
    assert rows["conv2d_7b"].rf_size == (3039, 3039) and rows["conv2d_7b"].rf_stride == (32, 32)
    rows = {r.name: r for r in ur.list_layers(zoo("timm:inception_v4"), (3, 299, 299))}
    assert rows["features.21"].rf_size == (2071, 2071) and rows["features.21"].rf_stride == (32, 32)


def test_a_timm_model_is_seeded_and_carries_its_own_preprocessing():
    m = ur.load_model("timm:inception_v3")  # Inception's own data config: 299 px, mean 0.5
    assert not m.training and m.unitrec_input_size == (3, 299, 299)
    text = repr(m.unitrec_transform)
    assert "CenterCrop(size=(299, 299))" in text and "mean=tensor([0.5000, 0.5000, 0.5000])" in text
    assert "timm:inception_v3" == m.unitrec_description["name"]
    a, b = ur.load_model("timm:resnet10t", seed=3), ur.load_model("timm:resnet10t", seed=3)
    assert state_dict_sha256(a) == state_dict_sha256(b)
    assert state_dict_sha256(a) != state_dict_sha256(ur.load_model("timm:resnet10t", seed=4))


def test_timm_checkpoint_kwargs_and_errors(tmp_path, monkeypatch):
    small = ur.load_model("timm:resnet10t", kwargs={"num_classes": 7}, seed=1)
    assert small.fc.out_features == 7 and "kwargs {'num_classes': 7}" in small.unitrec_description["description"]
    torch.save(small.state_dict(), tmp_path / "w.pt")
    again = ur.load_model("timm:resnet10t", kwargs={"num_classes": 7}, checkpoint=tmp_path / "w.pt", seed=2)
    assert state_dict_sha256(again) == state_dict_sha256(small)
    with pytest.raises(ur.ModelError, match="Closest: timm:inception_resnet_v2"):
        ur.load_model("timm:inception_resnet_2")
    with pytest.raises(ur.ModelError, match="does not take kwargs"):
        ur.load_model("timm:resnet10t", kwargs={"no_such_argument": 1})
    with pytest.raises(ur.ModelError, match="unknown weights 'nope'.*DEFAULT"):
        ur.load_model("timm:resnet10t", weights="nope")

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ur.ModelError, match="checkpoint=PATH"):
        ur.load_model("timm:resnet10t", weights="DEFAULT")
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ur.ModelError, match=r"pip install 'unitrec\[timm\]'"):
        ur.load_model("timm:resnet10t")


@pytest.mark.slow
def test_a_config_names_a_timm_model_with_kwargs(tmp_path):
    (tmp_path / "job.yaml").write_text(
        "model: {name: 'timm:resnet10t', kwargs: {num_classes: 5}}\n"
        "stimuli: {generate: {kind: gratings, size: 32, orientations: [0, 90], spatial_frequencies: [2],"
        " phases: [0]}}\n"
        "layers: [layer1, fc]\n"
        "record: {batch_size: 2, progress: false}\n"
        "output: acts.h5\n")
    path = ur.run_config(tmp_path / "job.yaml", progress=False)
    fc = ur.load_layer(path, "fc")
    assert fc.shape == (2, 5) and fc.attrs["model"] == "timm:resnet10t"
    # timm's own preprocessing, from the model's data config
    crop = timm.data.resolve_model_data_config(ur.load_model("timm:resnet10t"))["input_size"][-1]
    assert f"CenterCrop(size=({crop}, {crop}))" in fc.attrs["preprocessing"] and "bicubic" in fc.attrs["preprocessing"]
    assert "kwargs" in fc.attrs["model_description"]


def test_a_factory_takes_kwargs(tmp_path):
    m = ur.load_model("tests.anatomy.test_timm:small_net", kwargs={"width": 6})
    assert m[0].out_channels == 6
    with pytest.raises(ur.ModelError, match=r"called with \{'depth': 2\} failed: TypeError"):
        ur.load_model("tests.anatomy.test_timm:small_net", kwargs={"depth": 2})


def small_net(width: int = 4) -> torch.nn.Module:
    """A user's factory with a keyword argument (importable as tests.anatomy.test_timm:small_net)."""
    return torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.ReLU())


def test_fields_through_timm_convnext_and_efficientnet():
    """Squeeze-excitation gates and ConvNeXt blocks keep every spatial site's field known."""
    for name in ("timm:convnext_atto", "timm:efficientnet_b0", "timm:mobilenetv3_small_100"):
        rows = ur.list_layers(ur.load_model(name), (3, 64, 64))
        spatial = [r for r in rows if r.output_shape is not None and len(r.output_shape) == 3]
        assert spatial and [r.name for r in spatial if r.rf_size is None] == [], name
    convnext = {r.name: r for r in ur.list_layers(ur.load_model("timm:convnext_atto"), (3, 64, 64))}
    # stem 4 × 4 / 4, then two blocks of 7 × 7 depthwise convolutions at stride 4: 4 + 2 · 6 · 4
    assert convnext["stages.0"].rf_size == (52, 52)
