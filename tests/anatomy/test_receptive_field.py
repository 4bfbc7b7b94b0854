"""Theoretical receptive fields: published values, hand-derived geometry, and the
input pixels that actually reach a unit (non-zero gradient)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import unitrec as ur


def _fields(model, size) -> dict[str, tuple]:
    return {r.name: (r.rf_size, r.rf_stride) for r in ur.list_layers(model, (3, size, size))}


# ---------------------------------------------------------------- published values

def test_resnet18_conv1_and_layer1_in_the_file(zoo, images, transform64, tmp_path):
    # layer2 last: two entries of the deepest module trip a Recorder bug (see test_anatomy)
    layers = ["conv1", "layer1", {"name": "layer1", "units": "center", "as": "c"}, "layer2"]
    path = ur.record(zoo("resnet18"), images, layers, tmp_path / "r.h5", transform=transform64,
                     progress=False)
    conv1 = ur.load_layer(path, "conv1")
    assert list(conv1.attrs["rf_size"]) == [7, 7] and list(conv1.attrs["rf_stride"]) == [2, 2]
    np.testing.assert_array_equal(conv1.rf_center_y.values, 2 * conv1.y.values)
    np.testing.assert_array_equal(conv1.rf_center_x.values, 2 * conv1.x.values)
    assert conv1.rf_center_y.dims == ("y",) and conv1.rf_center_x.dims == ("x",)
    layer1 = ur.load_layer(path, "layer1")
    assert list(layer1.attrs["rf_size"]) == [43, 43] and list(layer1.attrs["rf_stride"]) == [4, 4]
    np.testing.assert_array_equal(layer1.rf_center_y.values, 4 * np.arange(16))
    c = ur.load_layer(path, "c")
    assert c.rf_center_y.dims == ("unit",) and set(c.rf_center_y.values) == {32}


def test_resnet18_published(zoo):
    f = _fields(zoo("resnet18"), 64)
    want = {"conv1": 7, "maxpool": 11, "layer1": 43, "layer2": 99, "layer3": 211, "layer4": 435}
    strides = {"conv1": 2, "maxpool": 4, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
    for name, size in want.items():
        assert f[name] == ((size, size), (strides[name],) * 2), name
    # a block's field is the largest over its paths: the main path, not the 1x1 shortcut
    assert f["layer2.0.downsample.0"][0] == (43, 43)
    assert f["layer2.0"][0] == (43 + 2 * 4 + 2 * 8,) * 2


def test_alexnet_published(zoo):
    f = _fields(zoo("alexnet"), 224)
    want = {"features.0": (11, 4), "features.2": (19, 8), "features.3": (51, 8), "features.5": (67, 16),
            "features.6": (99, 16), "features.8": (131, 16), "features.10": (163, 16),
            "features.12": (195, 32)}
    for name, (size, stride) in want.items():
        assert f[name] == ((size, size), (stride, stride)), name
    assert f["features.1"] == f["features.0"]  # the ReLU does not widen anything
    assert f["classifier.1"] == (None, None)  # linear: no spatial field to report


@pytest.mark.slow  # 5-10 s on 2 cores: run with the slow tests, so the default suite stays under 3 min
def test_vgg16_published():
    f = _fields(ur.load_model("vgg16"), 64)
    # conv1_1, conv1_2, pool1, conv2_2, pool2, conv3_3, pool3, conv4_3, pool4, conv5_3, pool5
    want = {"features.0": (3, 1), "features.2": (5, 1), "features.4": (6, 2), "features.7": (14, 2),
            "features.9": (16, 4), "features.14": (40, 4), "features.16": (44, 8),
            "features.21": (92, 8), "features.23": (100, 16), "features.28": (196, 16),
            "features.30": (212, 32)}
    for name, (size, stride) in want.items():
        assert f[name] == ((size, size), (stride, stride)), name


def test_inception_v3_asymmetric_kernels(zoo):
    f = _fields(zoo("inception_v3"), 299)
    rows, cols = f["Mixed_6b.branch7x7_1"][0]
    stride = f["Mixed_6b.branch7x7_1"][1][0]
    assert rows == cols and stride == 16
    assert f["Mixed_6b.branch7x7_2"][0] == (rows, cols + 6 * stride)  # 1x7: columns only
    assert f["Mixed_6b.branch7x7_3"][0] == (rows + 6 * stride, cols + 6 * stride)  # then 7x1
    assert f["Mixed_6b.branch7x7dbl_2"][0] == (rows + 6 * stride, cols)  # 7x1 first
    assert f["Mixed_6b.branch7x7dbl_3"][0] == (rows + 6 * stride, cols + 6 * stride)
    assert f["Mixed_6b.branch7x7_2"][0] == (159, 255)


# ---------------------------------------------------------------- hand-derived geometry

class _Dilated(nn.Module):
    """Dilated convolutions and pools, ceil_mode windows."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=2, dilation=2)
        self.pool1 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.conv2 = nn.Conv2d(4, 4, 3, dilation=3)
        self.pool2 = nn.MaxPool2d(3, stride=2, padding=1, dilation=2)
        self.pool3 = nn.AvgPool2d(3, stride=3, ceil_mode=True)

    def forward(self, x):
        return self.pool3(self.pool2(self.conv2(self.pool1(self.conv1(x)))))


# derived by hand, for a 33x33 input: (size, stride, centre of position 0, output side)
# conv1: 1 + 2*2 = 5, centre 0; pool1 (2/2): 5 + 1 = 6, centre 0.5, ceil(31/2) + 1 = 17;
# conv2 (3, dilation 3, at stride 2): 6 + 2*3*2 = 18, centre 0.5 + 6 = 6.5, 17 - 6 = 11;
# pool2 (3/2, pad 1, dilation 2, at stride 2): 18 + 2*2*2 = 26, lo = -2 - 2 = -4 so centre
# 8.5, (11 + 2 - 4 - 1)//2 + 1 = 5; pool3 (3/3 ceil, at stride 4): 26 + 2*4 = 34,
# centre 12.5, ceil(2/3) + 1 = 2.
_DILATED = {"conv1": (5, 1, 0.0, 33), "pool1": (6, 2, 0.5, 17), "conv2": (18, 2, 6.5, 11),
            "pool2": (26, 4, 8.5, 5), "pool3": (34, 12, 12.5, 2)}


def test_dilation_and_ceil_mode_by_hand():
    torch.manual_seed(0)
    m = _Dilated().eval()
    rows = {r.name: r for r in ur.list_layers(m, (3, 33, 33))}
    with ur.Recorder(m, list(_DILATED), input_size=(3, 33, 33)) as rec:
        coords = {s.key: s.coords() for s in rec.sites}
    for name, (size, stride, centre, side) in _DILATED.items():
        assert rows[name].rf_size == (size, size), name
        assert rows[name].rf_stride == (stride, stride), name
        assert rows[name].output_shape[1:] == (side, side), name
        dim, centres = coords[name]["rf_center_y"]
        assert dim == "y"
        np.testing.assert_array_equal(centres, centre + stride * np.arange(side), err_msg=name)


class _Skip(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv3 = nn.Conv2d(c, c, 3, padding=1)
        self.conv5 = nn.Conv2d(c, c, 5, padding=2)

    def forward(self, x):
        return x + self.conv5(torch.relu(self.conv3(x)))


class _Branches(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.one = nn.Conv2d(c, 2, 1)
        self.seven = nn.Conv2d(c, 2, 7, padding=3)
        self.wide = nn.Conv2d(c, 2, (1, 9), padding=(0, 4))

    def forward(self, x):
        return torch.cat([self.one(x), self.seven(x), self.wide(x)], 1)


class _Paths(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.skip = _Skip(4)
        self.branches = _Branches(4)

    def forward(self, x):
        return self.branches(self.skip(self.stem(x)))


def test_the_field_of_a_merge_is_the_largest_over_its_paths():
    m = _Paths().eval()
    rows = {r.name: r for r in ur.list_layers(m, (3, 40, 40))}
    assert rows["stem"].rf_size == (3, 3)
    assert rows["skip.conv5"].rf_size == (3 + 2 + 4, 3 + 2 + 4)
    assert rows["skip"].rf_size == (9, 9)  # not the identity path's 3
    assert rows["branches.one"].rf_size == (9, 9)
    assert rows["branches.seven"].rf_size == (15, 15)
    assert rows["branches.wide"].rf_size == (9, 17)
    assert rows["branches"].rf_size == (15, 17)  # largest per axis
    assert rows["branches"].rf_stride == (1, 1)


class _Squeeze(nn.Module):
    """Squeeze-excitation: every position is scaled by a gate pooled over the whole map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.after = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return self.after(y * torch.sigmoid(y.mean((2, 3), keepdim=True)))


class _Scramble(_Squeeze):
    """A reshape that moves pixels: nobody can vouch for the field after it."""

    def forward(self, x):
        y = self.conv(x)
        return self.after(y.flatten(2).flip(-1).reshape(y.shape))


class _ChannelLast(nn.Module):
    """ConvNeXt's block: depthwise conv, channel-last LayerNorm and MLP, permuted back."""

    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(4, 4, 7, padding=3, groups=4)
        self.norm = nn.LayerNorm(4)
        self.mlp = nn.Linear(4, 8)
        self.after = nn.Conv2d(8, 8, 3)

    def forward(self, x):
        y = self.mlp(self.norm(self.dw(x).permute(0, 2, 3, 1)))
        return self.after(y.permute(0, 3, 1, 2))


def test_a_channel_gate_scales_the_field_it_does_not_widen_or_lose_it():
    rows = {r.name: r for r in ur.list_layers(_Squeeze().eval(), (3, 16, 16))}
    assert rows["conv"].rf_size == (3, 3)
    assert rows["after"].rf_size == (5, 5)  # the spatial path's; the gate only scales channels


def test_a_field_nobody_can_vouch_for_is_unknown_not_too_small():
    rows = {r.name: r for r in ur.list_layers(_Scramble().eval(), (3, 16, 16))}
    assert rows["conv"].rf_size == (3, 3)
    assert rows["after"].rf_size is None


def test_the_field_follows_a_channel_last_permute_and_back():
    rows = {r.name: r for r in ur.list_layers(_ChannelLast().eval(), (4, 16, 16))}
    assert rows["dw"].rf_size == (7, 7)
    assert rows["norm"].rf_size == (7, 7)  # a (y, x, channel) site, labelled so (tests/anatomy/test_site_kinds.py)
    assert rows["after"].rf_size == (9, 9) and rows["after"].rf_stride == (1, 1)


# ---------------------------------------------------------------- gradients

class _Stop(Exception):
    pass


def _forward_to(model, site, x):
    """`x` (requiring grad) and the site's output, without running the rest of the model."""
    module = dict(model.named_modules())[site]
    out = {}

    def hook(mod, args, output):
        out["y"] = output
        raise _Stop

    handle = module.register_forward_hook(hook)
    x = x.clone().requires_grad_(True)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return x, out["y"]


def _support(x, unit) -> np.ndarray:
    """Input pixels (rows, columns) with a non-zero gradient of `unit` for some image."""
    (grad,) = torch.autograd.grad(unit.sum(), x, retain_graph=True)
    return (grad.abs().sum((0, 1)) > 0).numpy()


def _theory(model, site, side):
    with ur.Recorder(model, [site], input_size=(3, side, side)) as rec:
        coords, attrs = rec.sites[0].coords(), rec.sites[0].attrs()
    return coords["rf_center_y"][1], coords["rf_center_x"][1], attrs["rf_size"]


def _bounds(centre, size):
    return int(centre - (size - 1) / 2), int(centre + (size - 1) / 2)


def _check(model, site, side, positions, images=2, fill=0.9):
    """Non-zero gradients lie inside the theoretical field; away from the border the
    support of a position (all channels at once: every path) spans exactly the field
    and fills most of it (random weights leave few zeros; dilation leaves holes)."""
    x = torch.randn(images, 3, side, side, generator=torch.Generator().manual_seed(0))
    cy, cx, (sy, sx) = _theory(model, site, side)
    x, out = _forward_to(model, site, x)
    for i, j in positions:
        (y0, y1), (x0, x1) = _bounds(cy[i], sy), _bounds(cx[j], sx)
        mask = _support(x, out[:, :, i, j])
        rows, cols = np.nonzero(mask)
        assert rows.min() >= max(y0, 0) and rows.max() <= min(y1, side - 1), (site, i, j)
        assert cols.min() >= max(x0, 0) and cols.max() <= min(x1, side - 1), (site, i, j)
        if 0 <= y0 and y1 < side and 0 <= x0 and x1 < side:
            assert (rows.min(), rows.max(), cols.min(), cols.max()) == (y0, y1, x0, x1), (site, i, j)
            assert mask[y0:y1 + 1, x0:x1 + 1].mean() > fill
        # single units, that respond to some image (else a ReLU zeroes the gradient)
        live = (out[:, :, i, j] > 0).any(0).nonzero()[:, 0]
        assert len(live) > 0
        for c in live[:: max(1, len(live) // 3)][:3].tolist():
            rows, cols = np.nonzero(_support(x, out[:, c, i, j]))
            assert rows.min() >= y0 and rows.max() <= y1 and cols.min() >= x0 and cols.max() <= x1
    return cy, cx


def test_gradient_support_of_resnet18_layer2(zoo):
    m = zoo("resnet18")
    cy, cx = _check(m, "layer2", 160, [(10, 10), (9, 11), (0, 0), (19, 5)])
    np.testing.assert_array_equal(cy, 8 * np.arange(20))


@pytest.mark.slow  # 4-6 s on 2 cores: run with the slow tests, so the default suite stays under 3 min
def test_gradient_support_of_a_googlenet_inception_block(zoo):
    m = zoo("googlenet")
    # unpadded ceil-mode pools in the stem move the field off the grid: asymmetric
    cy, _ = _check(m, "inception3a", 128, [(8, 8), (7, 9), (15, 0)])
    assert cy[0] == 6 and cy[1] == 14


def test_gradient_support_of_an_asymmetric_kernel(zoo):
    m = zoo("inception_v3")
    _check(m, "Mixed_6b.branch7x7_2", 299, [(8, 8)], images=1)


def test_gradient_support_of_dilated_and_ceil_mode_layers():
    torch.manual_seed(0)
    m = _Dilated().eval()
    _check(m, "conv2", 101, [(20, 20), (0, 44)], images=2, fill=0.5)
    # a max pool passes the gradient to one pixel of each window, so the support fills
    # the field only over many images; the bound holds for every one of them
    _check(m, "pool3", 101, [(3, 3), (7, 0)], images=32, fill=0.3)


@pytest.mark.slow  # 4-6 s on 2 cores: run with the slow tests, so the default suite stays under 3 min
def test_gradient_support_of_convnext_channel_last_blocks():
    m = ur.load_model("convnext_tiny")
    _check(m, "features.1", 160, [(20, 20), (19, 22), (0, 0)], images=1)


@pytest.mark.slow  # 5-10 s on 2 cores: run with the slow tests, so the default suite stays under 3 min
def test_gradient_support_of_efficientnet_through_squeeze_excitation():
    """The stored field is the spatial path's; the channel gate, pooled over the whole
    image, is the only way pixels beyond it reach the unit (shown by detaching it)."""
    from torchvision.ops import SqueezeExcitation

    m = ur.load_model("efficientnet_b0")
    side, site = 128, "features.3"
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    x, out = _forward_to(m, site, x)
    assert _support(x, out[:, :, 8, 8]).all()  # through the gate: every pixel
    gates = [mod.scale_activation.register_forward_hook(lambda mod, args, y: y.detach())
             for mod in m.modules() if isinstance(mod, SqueezeExcitation)]
    try:
        _check(m, site, side, [(8, 8), (7, 9), (0, 0)], images=1)
    finally:
        for handle in gates:
            handle.remove()
