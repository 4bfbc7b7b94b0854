"""Sites that are not (channel, y, x) maps: channel-last maps, attention weights, maps
whose layout nobody can tell; fields through torch.stack; pooled fields; models that
squeeze their batch (issue 22, items 1-4 and 17)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import unitrec as ur
from unitrec.cli import main

EPS32 = float(np.finfo(np.float32).eps)


def _x(n: int, side: int) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- 1. channel-last sites

def test_channel_last_sites_are_labelled_and_selected_on_their_own_axes(tmp_path):
    pytest.importorskip("timm")
    m = ur.load_model("timm:convnext_atto", kwargs={"conv_mlp": False}, seed=0)  # timm's channel-last blocks
    fc1 = "stages.0.blocks.0.mlp.fc1"  # (batch, 16, 16, 160) at 64 px
    layers = [fc1, "stages.0.blocks.0.norm", "stages.0.blocks.0",
              {"name": fc1, "units": "center", "as": "centre"},
              {"name": fc1, "pool": "mean", "as": "mean"},
              {"name": fc1, "channels": [7, 2], "as": "two"},
              {"name": fc1, "positions": [[3, 11]], "channels": [5, 150], "as": "at"}]
    path = ur.record(m, _x(4, 64), layers, tmp_path / "c.h5", batch_size=2, progress=False)
    full = ur.load_layer(path, fc1)
    assert full.dims == ("stimulus", "y", "x", "channel") and full.shape == (4, 16, 16, 160)
    # the field of the depthwise convolution before the permute: stem 4 / 4, then 7 × 7 at stride 4
    assert list(full.attrs["rf_size"]) == [28, 28] and list(full.attrs["rf_stride"]) == [4, 4]
    assert full.rf_center_y.dims == ("y",) and full.rf_center_x.dims == ("x",)
    np.testing.assert_array_equal(full.rf_center_x.values, 1.5 + 4 * np.arange(16))
    assert ur.load_layer(path, "stages.0.blocks.0.norm").dims == ("stimulus", "y", "x", "channel")
    assert ur.load_layer(path, "stages.0.blocks.0").dims == ("stimulus", "channel", "y", "x")  # permuted back
    centre = ur.load_layer(path, "centre")
    assert centre.shape == (4, 160)  # every channel at (8, 8), not 16 rows of one column
    assert set(centre.y.values.tolist()) == {8} and set(centre.x.values.tolist()) == {8}
    np.testing.assert_array_equal(centre.channel.values, np.arange(160))
    np.testing.assert_array_equal(centre.values, full.values[:, 8, 8, :])
    mean = ur.load_layer(path, "mean")
    assert mean.dims == ("stimulus", "channel") and mean.shape == (4, 160)
    # the same reduction of the same float32 tensor: equal bit for bit
    want = torch.from_numpy(full.values).mean(dim=(1, 2)).numpy()
    np.testing.assert_array_equal(mean.values, want)
    two = ur.load_layer(path, "two")
    assert two.dims == ("stimulus", "y", "x", "channel") and two.channel.values.tolist() == [7, 2]
    np.testing.assert_array_equal(two.values, full.values[..., [7, 2]])
    at = ur.load_layer(path, "at")
    assert at.channel.values.tolist() == [5, 150] and at.y.values.tolist() == [3, 3]
    assert at.x.values.tolist() == [11, 11]
    np.testing.assert_array_equal(at.values, full.values[:, 3, 11, [5, 150]])
    np.testing.assert_array_equal(at.rf_center_x.values, [1.5 + 4 * 11] * 2)


class _ChannelLast(nn.Module):
    """A 3 × 3 convolution, then a channel-last linear layer: (batch, 10, 10, 6) at 12 px."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.mlp = nn.Linear(4, 6)

    def forward(self, x):
        return self.mlp(self.conv(x).permute(0, 2, 3, 1))


def test_effective_fields_of_channel_last_units_are_of_the_named_units():
    from unitrec.analysis.experiments.rf_mapping import effective_rf

    torch.manual_seed(0)
    model = _ChannelLast().eval()
    erf = effective_rf(model, "mlp", _x(2, 12), units=[(5, 2, 7), (0, 9, 1)])
    assert erf.channel.values.tolist() == [5, 0] and erf.y.values.tolist() == [2, 9]
    assert erf.x.values.tolist() == [7, 1]
    # each unit sees the 3 × 3 pixels of its position, (y, x) = (row, column)
    for unit, (y, x) in enumerate([(2, 7), (9, 1)]):
        seen = np.argwhere(erf.isel(unit=unit).values > 0)
        assert seen.min(0).tolist() == [y, x] and seen.max(0).tolist() == [y + 2, x + 2]


class _Rearranged(nn.Module):
    """A conv map whose values `move` rearranges, then recorded at `after`."""

    def __init__(self, move) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.after = nn.Identity()
        self.move = move

    def forward(self, x):
        return self.after(self.move(self.conv(x)))


def _scrambled(y):
    """Pixels a reshape moves: the map's layout cannot be told."""
    return y.flatten(1).flip(-1).reshape(y.shape[0], 7, 4, 7)


def _shuffled(y):
    """ShuffleNet's channel shuffle: a view, a transpose and a view back."""
    n, c, h, w = y.shape
    return y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


def test_a_site_whose_layout_is_unknown_gets_neutral_dims_and_refuses_spatial_selections(tmp_path):
    torch.manual_seed(0)
    model = _Rearranged(_scrambled).eval()
    path = ur.record(model, _x(2, 9), ["after"], tmp_path / "s.h5", batch_size=2, progress=False)
    da = ur.load_layer(path, "after")
    assert da.dims == ("stimulus", "dim_1", "dim_2", "dim_3") and "rf_size" not in da.attrs
    for entry in ({"units": "center"}, {"pool": "mean"}, {"positions": [[0, 0]]}, {"channels": [0]},
                  {"sample": 3}):
        with pytest.raises(ur.SelectionError, match=r"after: output \(7, 4, 7\) is \(dim_1, dim_2, dim_3\).*"
                                                    r"record it whole"):
            ur.record(model, _x(2, 9), [{"name": "after", **entry}], tmp_path / "t.h5", progress=False)


# ---------------------------------------------------------------- 2. attention weights

def test_attention_probabilities_are_head_query_key_with_token_labels(tmp_path):
    pytest.importorskip("timm")
    m = ur.load_model("timm:vit_small_patch16_224", kwargs={"img_size": 32, "depth": 2}, seed=0)
    for block in m.blocks:
        block.attn.fused_attn = False  # what TIMM_FUSED_ATTN=0 sets at import
    site = "blocks.1.attn.attn_drop"
    path = ur.record(m, _x(3, 32), [site], tmp_path / "a.h5", batch_size=3, progress=False)
    attn = ur.load_layer(path, site)
    assert attn.dims == ("stimulus", "head", "query", "key") and attn.shape == (3, 6, 5, 5)
    for dim in ("query", "key"):  # a class token, then 2 × 2 patches
        assert attn[f"{dim}_kind"].values.tolist() == ["cls", "patch", "patch", "patch", "patch"]
        assert attn[f"{dim}_y"].values.tolist() == [-1, 0, 0, 1, 1]
        assert attn[f"{dim}_x"].values.tolist() == [-1, 0, 1, 0, 1]
    # softmax rows: 5 float32 terms, each rounded once, summed in float32
    np.testing.assert_allclose(attn.values.astype(np.float64).sum(-1), 1, rtol=0, atol=10 * EPS32)
    assert "rf_center_y" not in attn.coords and "channel" not in attn.coords
    with pytest.raises(ur.SelectionError, match=r"is \(head, query, key\), attention weights, not a map"):
        ur.record(m, _x(3, 32), [{"name": site, "units": "center"}], tmp_path / "b.h5", progress=False)


def test_the_report_does_not_treat_attention_weights_as_a_map(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("timm")
    from unitrec import report

    m = ur.load_model("timm:vit_small_patch16_224", kwargs={"img_size": 32, "depth": 1}, seed=0)
    m.blocks[0].attn.fused_attn = False
    images = ur.stimuli.gratings(tmp_path / "stim", size=32, orientations=[0, 90], spatial_frequencies=[2],
                                 phases=[0, 180])
    from unitrec.anatomy.preprocess import build_transform

    path = ur.record(m, images, ["blocks.0.attn.attn_drop"], tmp_path / "a.h5", batch_size=4, progress=False,
                     transform=build_transform({"resize": 32, "crop": 32, "normalize": "imagenet"}))
    text = report.write_report(path, tmp_path / "report").read_text()
    assert "Preferred stimuli" not in text and "channel=" not in text  # no montage of "units" of a map
    row = text[text.index("blocks.0.attn.attn_drop"):]
    assert "4×6×5×5" in row[:200] and "<td>-</td>" in row[:400]  # no participation ratio


# ---------------------------------------------------------------- 3. torch.stack

class _Stacked(nn.Module):
    """Two branches stacked on a new axis and summed over it, as ``torch.cat`` joins them."""

    def __init__(self, join: str) -> None:
        super().__init__()
        self.join = join
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 5, padding=2)
        self.both = nn.Identity()
        self.after = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        if self.join == "stack":
            y = self.both(torch.stack([self.a(x), self.b(x)], 1)).sum(1)
        elif self.join == "stack_last":
            y = torch.stack([self.a(x), self.b(x)], -1).amax(-1)
        else:
            y = self.both(torch.cat([self.a(x), self.b(x)], 1))[:, :4] + self.b(x)
        return self.after(y)


def test_torch_stack_of_maps_keeps_the_field_as_cat_does(tmp_path):
    for join in ("cat", "stack", "stack_last"):
        torch.manual_seed(0)
        model = _Stacked(join).eval()
        rows = {r.name: r for r in ur.list_layers(model, (3, 16, 16))}
        # the union of the branches (5 × 5), then 3 × 3
        assert (rows["after"].rf_size, rows["after"].rf_stride) == ((7, 7), (1, 1)), join
        path = ur.record(model, _x(2, 16), ["after"], tmp_path / f"{join}.h5", batch_size=2, progress=False)
        after = ur.load_layer(path, "after")
        assert list(after.attrs["rf_size"]) == [7, 7], join
        np.testing.assert_array_equal(after.rf_center_y.values, 1 + np.arange(14))


def test_a_channel_shuffle_keeps_the_field():
    rows = {r.name: r for r in ur.list_layers(_Rearranged(_shuffled).eval(), (3, 12, 12))}
    assert rows["after"].rf_size == (3, 3) and rows["after"].rf_stride == (1, 1)


# ---------------------------------------------------------------- 4. pooled fields

def small(width: int = 4) -> nn.Module:
    """A factory for the command line (tests.anatomy.test_site_kinds:small): fields 3, then 5 at stride 2."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.Conv2d(width, width, 3, stride=2))


def test_a_pooled_site_says_which_field_it_stores(tmp_path, capsys):
    model = small().eval()
    # at 16 px: "2" is 6 × 6 positions, each seeing 5 × 5 pixels 2 apart; pooled: 5 + 5 · 2 = 15
    rows = {r.name: r for r in ur.list_layers(model, (3, 16, 16))}
    assert rows["2"].rf_size == (5, 5) and rows["2"].rf_size_pooled == (15, 15)
    path = ur.record(model, _x(2, 16), ["2", {"name": "2", "pool": "mean", "as": "pooled"}], tmp_path / "p.h5",
                     batch_size=2, progress=False)
    pooled = ur.load_layer(path, "pooled")
    assert list(pooled.attrs["rf_size"]) == [5, 5]  # one position's, as `unitrec layers` lists it
    assert list(pooled.attrs["rf_size_pooled"]) == [15, 15]  # what a pooled unit sees
    assert "rf_size_pooled" not in ur.load_layer(path, "2").attrs
    assert main(["info", str(path), "--no-config"]) == 0
    info = capsys.readouterr().out
    assert "rf 5 px (pooled over the map: 15 px)" in info
    assert main(["layers", "tests.anatomy.test_site_kinds:small", "--input-size", "16"]) == 0
    out = capsys.readouterr().out
    header, *lines = out.splitlines()
    assert "pooled rf" in header
    row = next(line.split() for line in lines if line.startswith("2 "))
    assert row[-3:] == ["5", "2", "15"]  # rf size, rf stride, pooled rf


# ---------------------------------------------------------------- 17. a squeezed batch

class _Squeezing(nn.Module):
    """``pool(x).squeeze()``: at a batch of 1 the batch dim goes too."""

    def __init__(self, flatten: bool) -> None:
        super().__init__()
        self.flatten = flatten
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.pool(self.conv(x)).squeeze()
        return self.fc(torch.flatten(y, 1) if self.flatten else y)  # flatten(1) fails on a batch of 1


@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("trace", ["hollow", "real"])
def test_a_model_that_squeezes_its_batch_records_fc(flatten, trace, tmp_path, monkeypatch):
    if trace == "real":
        monkeypatch.setenv("UNITREC_TRACE", "real")
    torch.manual_seed(0)
    model = _Squeezing(flatten).eval()
    x = _x(4, 12)
    path = ur.record(model, x, ["fc", "conv"], tmp_path / "q.h5", batch_size=2, progress=False)
    fc = ur.load_layer(path, "fc")
    assert fc.dims == ("stimulus", "channel") and fc.shape == (4, 2)
    with torch.no_grad():  # the same batches of 2
        want = torch.cat([model(x[:2]), model(x[2:])]).numpy()
    np.testing.assert_array_equal(fc.values, want)
    assert {r.name: r for r in ur.list_layers(model, (3, 12, 12))}["fc"].output_shape == (2,)
    if not flatten:  # at a batch of 1 it returns (2,): what to change, not a broadcast
        with pytest.raises(ur.RecordingError, match="without a batch dim.*batch_size 2 or more"):
            ur.record(model, x, ["fc"], tmp_path / "one.h5", batch_size=1, progress=False)


def test_a_site_without_its_batch_at_any_batch_size_is_refused():
    class Folded(nn.Module):  # windows folded into the batch, as Swin's attention does
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 2, stride=2)
            self.windows = nn.Identity()

        def forward(self, x):
            y = self.conv(x)
            n, c, h, w = y.shape
            return self.windows(y.reshape(n, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, h // 2,
                                                                                                     w // 2))

    with pytest.raises(ur.RecordingError, match=r"'windows': its output has shape \(8, 4, 2, 2\) in a traced "
                                                r"batch of 2, whose first dim is not the batch"):
        with ur.Recorder(Folded().eval(), ["windows"], input_size=(3, 8, 8)):
            pass
