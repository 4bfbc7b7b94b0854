"""Recorded values equal what the network computes, checked against independent oracles.

Oracles: torchvision's own modules called by hand (where an in-place op follows the
site, the only trustworthy one), and torchvision.models.feature_extraction.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor

import unitrec as ur

from tests.conftest import image_batch, in_blocks


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _rec(model, layers, x):
    with ur.Recorder(model, layers, input_size=tuple(x.shape[1:])) as rec:
        with torch.no_grad():
            model(x)
    return rec.activations


@torch.no_grad()
def test_basicblock_values_before_inplace_ops(zoo, x):
    m = zoo("resnet18")
    acts = _rec(m, ["bn1", "layer1.0.bn2", "layer1.0.relu:0", "layer1.0.relu:1", "layer1.0"], x)
    # by hand, each module called on a fresh tensor (no in-place op can reach it)
    bn1 = m.bn1(m.conv1(x))
    stem = m.maxpool(torch.relu(bn1))
    b = m.layer1[0]
    r0 = torch.relu(b.bn1(b.conv1(stem)))
    bn2 = b.bn2(b.conv2(r0))
    r1 = torch.relu(bn2 + stem)
    torch.testing.assert_close(acts["bn1"], bn1, rtol=0, atol=0)
    torch.testing.assert_close(acts["layer1.0.relu:0"], r0, rtol=0, atol=0)
    # the same ops on the same batch: equal bit for bit
    torch.testing.assert_close(acts["layer1.0.bn2"], bn2, rtol=0, atol=0)
    torch.testing.assert_close(acts["layer1.0.relu:1"], r1, rtol=0, atol=0)
    torch.testing.assert_close(acts["layer1.0"], r1, rtol=0, atol=0)
    # the negatives that ReLU(inplace=True) and `out += identity` later erase are kept
    assert acts["bn1"].min() < -0.5
    assert acts["layer1.0.bn2"].min() < -0.5
    assert acts["layer1.0.relu:0"].min() == 0


@torch.no_grad()
def test_bottleneck_each_call_of_the_reused_relu(zoo, x):
    m = zoo("resnet50")
    sites = ["layer1.0.bn3", "layer1.0.relu:0", "layer1.0.relu:1", "layer1.0.relu:2"]
    acts = _rec(m, sites, x)
    stem = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    b = m.layer1[0]
    r0 = torch.relu(b.bn1(b.conv1(stem)))
    r1 = torch.relu(b.bn2(b.conv2(r0)))
    bn3 = b.bn3(b.conv3(r1))
    r2 = torch.relu(bn3 + b.downsample(stem))
    for site, want in zip(sites, [bn3, r0, r1, r2]):
        torch.testing.assert_close(acts[site], want, rtol=0, atol=0)  # same ops, same batch
    assert acts["layer1.0.bn3"].min() < 0


def test_bare_name_of_a_reused_module_lists_the_calls(zoo, x):
    with pytest.raises(ur.LayerNotFoundError) as err:
        with ur.Recorder(zoo("resnet50"), ["layer1.0.relu"], input_size=(3, 64, 64)):
            pass
    msg = str(err.value)
    assert "called 3 times" in msg
    for i in range(3):
        assert f"layer1.0.relu:{i}" in msg


def test_feature_extractor_is_not_inplace_safe_but_we_are(zoo, x):
    """Documents why hand-called modules are the oracle where an in-place op follows."""
    m = zoo("resnet18")
    fx = create_feature_extractor(m, {"bn1": "bn1", "layer1": "layer1"})  # relu runs after bn1
    with torch.no_grad():
        theirs = fx(x)["bn1"]
    ours = _rec(m, ["bn1"], x)["bn1"]
    assert theirs.min() >= 0  # already rectified by the in-place ReLU
    assert ours.min() < 0


@pytest.mark.parametrize("name", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])  # resnet50: 6-9 s
def test_blocks_match_create_feature_extractor(zoo, images, transform64, tmp_path, name):
    m = zoo(name)
    nodes = ["layer1", "layer2.1", "layer3.0", "layer4", "avgpool", "fc"]
    path = ur.record(m, images, nodes, tmp_path / "a.h5", transform=transform64, batch_size=4,
                     progress=False)
    labels, batch = image_batch(images, transform64)
    with torch.no_grad():  # in the recording's blocks of 4 (the last padded): equal bit for bit
        want = in_blocks(create_feature_extractor(m, {n: n for n in nodes}), batch, 4)
    for n in nodes:
        da = ur.load_layer(path, n)
        assert list(da.stimulus.values) == labels
        np.testing.assert_array_equal(da.values, want[n].numpy(), err_msg=n)
    fc = ur.load_layer(path, "fc")
    assert fc.dims == ("stimulus", "channel") and fc.sizes["channel"] == 1000
    assert ur.load_layer(path, "layer4").dims == ("stimulus", "channel", "y", "x")


def test_rows_are_computed_in_fixed_full_blocks_whatever_the_batch_size(zoo, images, transform64, tmp_path):
    """Every row equals the model run on its block of `batch_size` rows (short blocks padded)."""
    m = zoo("resnet18")
    sites = ["conv1", "layer2.0.bn2", "fc"]
    labels, batch = image_batch(images, transform64)
    fx = create_feature_extractor(m, {"conv1": "conv1", "fc": "fc"})
    for bs in (3, 4):  # 10 images: a last block of 1, of 2
        path = ur.record(m, images, sites, tmp_path / f"b{bs}.h5", transform=transform64,
                         batch_size=bs, progress=False)
        got = {s: ur.load_layer(path, s).values for s in sites}
        for start in range(0, len(labels), bs):
            block = batch[start : start + bs]
            padded = torch.cat([block, block[:1].expand(bs - len(block), *block.shape[1:])])
            with torch.no_grad():
                want = fx(padded)
            for s in ("conv1", "fc"):
                np.testing.assert_array_equal(got[s][start : start + bs], want[s][: len(block)].numpy(),
                                              err_msg=f"batch {bs}, rows {start}+, {s}")


def test_stimulus_order_is_sorted_relative_path(zoo, images, transform64, tmp_path):
    (images / "a_first.png").write_bytes((images / "dogs" / "img_01.png").read_bytes())
    path = ur.record(zoo("resnet18"), images, ["conv1"], tmp_path / "o.h5", transform=transform64,
                     progress=False)
    got = list(ur.load_layer(path, "conv1").stimulus.values)
    assert got[0] == "a_first.png" and got == sorted(got)
    assert "cats/img_00.png" in got and "dogs/img_09.png" in got


class _Boom(torch.nn.Module):
    """Raises in the middle of its forward for batches of more than one image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        if x.shape[0] > 1:  # the dry trace uses one image; real batches explode
            raise RuntimeError("boom")
        return self.head(y.mean((2, 3)))


def _no_hooks(m: torch.nn.Module) -> bool:
    return all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


def test_hooks_removed_and_training_restored_when_forward_raises(tmp_path):
    m = _Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        with ur.Recorder(m, ["conv", "head"], input_size=(3, 8, 8)):
            m(torch.randn(2, 3, 8, 8))
    assert _no_hooks(m)
    assert m.training  # the trace put it in eval for one pass and gave it back
    with pytest.raises(RuntimeError, match="boom"):
        ur.record(m, torch.randn(3, 3, 8, 8), ["head"], tmp_path / "x.h5", progress=False)
    assert m.training and _no_hooks(m)


def test_recorder_in_memory_accumulates_batches(zoo):
    m = zoo("resnet18")
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with ur.Recorder(m, ["layer1.0.bn1", {"name": "layer2", "units": "center"}],
                     input_size=(3, 64, 64)) as rec:
        with torch.no_grad():
            m(x[:2])
            m(x[2:])
    assert rec.activations["layer1.0.bn1"].shape == (5, 64, 16, 16)
    assert rec.activations["layer2"].shape == (5, 128)
    assert "attached" not in repr(rec) or "detached" in repr(rec)
    with torch.no_grad():  # in the same two batches: equal bit for bit
        full = torch.cat([m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(part)))))) for part in (x[:2], x[2:])])
    torch.testing.assert_close(rec.activations["layer2"], full[:, :, 4, 4], rtol=0, atol=0)
