"""Vision transformers: token sites stored as (stimulus, token, channel), labelled by
kind and patch, exact against the blocks called by hand; token selections.

Small images (32 px: 2 × 2 patches of 16) keep the models cheap; the layout and the
arithmetic are those of the 224 px models.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import unitrec as ur
from unitrec.anatomy.preprocess import build_transform

from tests.conftest import as_tensor, in_blocks

SIDE = 32


@pytest.fixture(scope="module")
def stim(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit")
    return ur.stimuli.gratings(root / "stim", size=SIDE, orientations=[0, 45, 90, 135], spatial_frequencies=[2],
                               phases=[0])


def _record(model, stim, layers, path):
    transform = build_transform({"resize": SIDE, "crop": SIDE, "normalize": "imagenet"})
    return ur.record(model, stim, layers, path, transform=transform, batch_size=3, progress=False)


def _inputs(stim) -> torch.Tensor:
    from tests.conftest import image_batch

    return image_batch(stim, build_transform({"resize": SIDE, "crop": SIDE, "normalize": "imagenet"}))[1]


@pytest.fixture(scope="module")
def tv_vit():
    return ur.load_model("vit_b_16", kwargs={"image_size": SIDE})


@torch.no_grad()
def test_torchvision_vit_blocks_equal_the_encoder_called_by_hand(tv_vit, stim, tmp_path):
    m = tv_vit
    block = "encoder.layers.encoder_layer_5"
    path = _record(m, stim, [block, f"{block}.self_attention", f"{block}.mlp", f"{block}.ln_1"], tmp_path / "v.h5")

    def by_hand(images):
        x = m._process_input(images)
        x = torch.cat([m.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = m.encoder.dropout(x + m.encoder.pos_embedding)
        for layer in list(m.encoder.layers)[:5]:
            x = layer(x)
        layer = m.encoder.layers[5]
        ln1 = layer.ln_1(x)
        attention = layer.self_attention(ln1, ln1, ln1, need_weights=False)[0]
        mid = attention + x
        mlp = layer.mlp(layer.ln_2(mid))
        return {block: mid + mlp, f"{block}.self_attention": attention, f"{block}.mlp": mlp, f"{block}.ln_1": ln1}

    for site, want in in_blocks(by_hand, _inputs(stim), 3).items():  # the recording's blocks: bit for bit
        got = ur.load_layer(path, site)
        assert got.dims == ("stimulus", "token", "channel"), site
        np.testing.assert_array_equal(got.values, want.numpy(), err_msg=site)
    da = ur.load_layer(path, block)
    assert list(da.kind.values) == ["cls", "patch", "patch", "patch", "patch"]
    np.testing.assert_array_equal(da.y.values, [-1, 0, 0, 1, 1])
    np.testing.assert_array_equal(da.x.values, [-1, 0, 1, 0, 1])
    np.testing.assert_array_equal(da.rf_center_y.values[1:], [7.5, 7.5, 23.5, 23.5])
    assert np.isnan(da.rf_center_y.values[0])
    assert list(da.attrs["rf_size"]) == [16, 16] and list(da.attrs["rf_stride"]) == [16, 16]
    assert da.attrs["tokens"] == "cls + 2×2 patches of conv_proj" and "whole image" in da.attrs["rf_note"]


@torch.no_grad()
def test_timm_vit_block_attention_and_mlp_equal_them_called_by_hand(stim, tmp_path):
    pytest.importorskip("timm")
    m = ur.load_model("timm:vit_small_patch16_224", kwargs={"img_size": SIDE})
    path = _record(m, stim, ["blocks.5", "blocks.5.attn", "blocks.5.mlp.fc1"], tmp_path / "t.h5")

    def by_hand(images):
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(images))))
        for blk in m.blocks[:5]:
            x = blk(x)
        blk = m.blocks[5]
        attention = blk.attn(blk.norm1(x))
        mid = x + blk.ls1(attention)
        fc1 = blk.mlp.fc1(blk.norm2(mid))
        out = mid + blk.ls2(blk.mlp(blk.norm2(mid)))
        return {"blocks.5": out, "blocks.5.attn": attention, "blocks.5.mlp.fc1": fc1}

    for site, want in in_blocks(by_hand, _inputs(stim), 3).items():  # the recording's blocks: bit for bit
        got = ur.load_layer(path, site)
        assert got.dims == ("stimulus", "token", "channel") and got.kind.values[0] == "cls", site
        np.testing.assert_array_equal(got.values, want.numpy(), err_msg=site)


def test_token_selections_equal_slices_of_the_whole_site(tv_vit, stim, tmp_path):
    block = "encoder.layers.encoder_layer_2"
    path = _record(tv_vit, stim, [
        block,
        {"name": block, "units": "cls", "as": "cls"},
        {"name": block, "units": "center", "as": "centre"},
        {"name": block, "positions": [[1, 0], [0, 1]], "channels": [3, 0], "as": "patches"},
        {"name": block, "pool": "mean", "as": "mean"},
        {"name": block, "pool": "max", "channels": [5], "as": "max", "keep": "both"},
    ], tmp_path / "s.h5")
    full = ur.load_layer(path, block).values
    np.testing.assert_array_equal(ur.load_layer(path, "cls").values, full[:, :1])
    centre = ur.load_layer(path, "centre")
    assert centre.token.values.tolist() == [1 + 1 * 2 + 1] and centre.kind.values.tolist() == ["patch"]
    np.testing.assert_array_equal(centre.values, full[:, 4:5])
    patches = ur.load_layer(path, "patches")
    assert patches.token.values.tolist() == [3, 2] and patches.channel.values.tolist() == [3, 0]
    np.testing.assert_array_equal(patches.values, full[:, [3, 2]][:, :, [3, 0]])
    mean = ur.load_layer(path, "mean")
    assert mean.dims == ("stimulus", "channel")
    # patches only; the same op on the recording's blocks of 3: equal bit for bit
    np.testing.assert_array_equal(mean.values, in_blocks(lambda t: t[:, 1:].mean(1), as_tensor(full), 3).numpy())
    np.testing.assert_array_equal(ur.load_layer(path, "max").values, full[:, 1:, 5:6].max(1))
    assert list(mean.attrs["rf_size_pooled"]) == [32, 32]  # every patch
    assert list(mean.attrs["rf_size"]) == [16, 16]  # one patch, as `unitrec layers` lists it
    summary = ur.load_summary(path, "max")
    np.testing.assert_allclose(summary["max"].values, full[:, 1:, 5:6].max(1).max(0))


def test_token_selection_errors(tv_vit, zoo, tmp_path):
    block = "encoder.layers.encoder_layer_2"
    bad = [({"name": block, "positions": [[2, 0]]}, "patch row"), ({"name": block, "sample": 10}, "whole tokens")]
    for entry, message in bad:
        with pytest.raises(ur.SelectionError, match=message):
            with ur.Recorder(tv_vit, [entry], input_size=(3, SIDE, SIDE)):
                pass
    with pytest.raises(ur.SelectionError, match="class token"):
        with ur.Recorder(zoo("resnet18"), [{"name": "layer1", "units": "cls"}], input_size=(3, 64, 64)):
            pass


def test_register_tokens_are_labelled(stim, tmp_path):
    pytest.importorskip("timm")
    m = ur.load_model("timm:vit_small_patch14_reg4_dinov2", kwargs={"img_size": 28})
    transform = build_transform({"resize": 28, "crop": 28, "normalize": "imagenet"})
    path = ur.record(m, stim, ["blocks.0", {"name": "blocks.0", "units": "cls", "as": "cls"}], tmp_path / "r.h5",
                     transform=transform, progress=False)
    da = ur.load_layer(path, "blocks.0")
    assert list(da.kind.values) == ["cls"] + ["register"] * 4 + ["patch"] * 4
    np.testing.assert_array_equal(ur.load_layer(path, "cls").values, da.values[:, :1])


def test_timm_attention_probabilities_are_recorded_unfused(stim, tmp_path):
    pytest.importorskip("timm")
    m = ur.load_model("timm:vit_small_patch16_224", kwargs={"img_size": SIDE})
    for block in m.blocks:
        block.attn.fused_attn = False  # what TIMM_FUSED_ATTN=0 sets at import
    path = _record(m, stim, ["blocks.5.attn.attn_drop", "blocks.5"], tmp_path / "a.h5")
    attn = ur.load_layer(path, "blocks.5.attn.attn_drop")
    assert attn.shape == (4, 6, 5, 5)  # (stimulus, head, query, key)
    # a softmax over 5 keys: each probability within a few ulp, so their float32 sum within 2·5 eps of 1
    np.testing.assert_allclose(attn.values.sum(-1), 1, rtol=0, atol=2 * 5 * np.finfo(np.float32).eps)
    fused = ur.load_model("timm:vit_small_patch16_224", kwargs={"img_size": SIDE})
    same = _record(fused, stim, ["blocks.5"], tmp_path / "f.h5")
    np.testing.assert_allclose(ur.load_layer(path, "blocks.5").values, ur.load_layer(same, "blocks.5").values,
                               rtol=0, atol=1e-4)
