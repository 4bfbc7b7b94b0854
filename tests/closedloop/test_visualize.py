"""Feature visualisation: a linear unit's image is its kernel, scores rise, runs repeat, the model is untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from unitrec.closedloop.parametrize import TRANSFORMS, Transforms, image_param, standard_transforms
from unitrec.closedloop.visualize import Visualization, visualize
from unitrec.errors import ConfigError, RecordingError

UNIT = {"name": "layer2", "channels": [3], "units": "center"}


def gabor(k: int = 15, sigma: float = 4.0, wavelength: float = 7.0, theta: float = 0.5) -> np.ndarray:
    r = np.arange(k) - k // 2
    y, x = np.meshgrid(r, r, indexing="ij")
    along = x * np.cos(theta) + y * np.sin(theta)
    return np.exp(-(x**2 + y**2) / (2 * sigma**2)) * np.cos(2 * np.pi * along / wavelength)


def linear_unit(kernel: np.ndarray) -> nn.Module:
    """One convolution, no bias, no nonlinearity: the unit's response is <kernel, patch> summed over colours."""
    conv = nn.Conv2d(3, 1, kernel.shape[0], bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(kernel, dtype=torch.float32).expand(1, 3, *kernel.shape))
    return nn.Sequential(conv)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def rf_patch(vis: Visualization, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The grey-level image inside the unit's receptive field, and a mask of the pixels outside it."""
    rf = vis.receptive_field
    assert rf is not None and (rf["height"], rf["width"]) == (k, k)
    top, left = int(rf["center_y"] - (k - 1) / 2), int(rf["center_x"] - (k - 1) / 2)
    grey = vis.image.mean(axis=0)
    outside = np.ones(grey.shape, bool)
    outside[top:top + k, left:left + k] = False
    return grey[top:top + k, left:left + k], outside


LINEAR = {"size": 32, "steps": 30, "param": "pixel", "decorrelate": False, "transforms": None, "normalize": None,
          "progress": False}


def test_a_linear_unit_draws_the_sign_of_its_kernel():
    # The score is sum_k w_k sigmoid(p_k): its gradient in logit p_k is w_k sigmoid'(p_k), of
    # the sign of w_k. Adam divides each coordinate's step by that coordinate's own gradient
    # scale, so every logit inside the field moves at lr per step in the direction sign(w_k)
    # (the sigmoid' factor is the same for all of them): the image becomes the kernel's sign
    # pattern, and its correlation with the kernel is exactly corr(sign(w), w). Pixels
    # outside the field get no gradient, and Adam leaves them at the grey start.
    kernel = gabor()
    vis = visualize(linear_unit(kernel), {"name": "0", "channels": [0], "units": "center"}, **LINEAR)
    patch, outside = rf_patch(vis, 15)
    assert corr(patch, np.sign(kernel)) > 0.99
    expected = corr(np.sign(kernel), kernel)  # 0.76 for this Gabor: a two-level picture of it
    assert abs(corr(patch, kernel) - expected) < 0.02
    assert np.abs(vis.image.mean(axis=0)[outside] - 0.5).max() < 0.05
    assert vis.scores[-1] > vis.scores[0] and vis.image.dtype == np.float32


def test_below_adams_epsilon_the_image_is_the_kernel():
    # The check (r > 0.9 with the kernel). With gradients far below Adam's eps (1e-8)
    # the step lr * g / (sqrt(v) + eps) is lr * g / eps: plain gradient ascent, each logit
    # moving in proportion to w_k, so the grey patch is an increasing function of the kernel,
    # linear while the sigmoid is (|p| < 0.3 here): r well above 0.9.
    kernel = gabor()
    vis = visualize(linear_unit(kernel * 2e-9), {"name": "0", "channels": [0], "units": "center"},
                    **{**LINEAR, "steps": 60})
    patch, _ = rf_patch(vis, 15)
    assert corr(patch, kernel) > 0.98


@pytest.mark.parametrize("param", ["pixel", "fourier"])
def test_scores_rise(zoo, param):
    vis = visualize(zoo("resnet18"), UNIT, size=64, steps=20, param=param, progress=False)
    assert vis.scores.shape == (20,) and vis.scores.dtype == np.float64
    assert vis.scores[-1] > vis.scores[0]
    assert vis.image.shape == (3, 64, 64) and vis.image.min() >= 0 and vis.image.max() <= 1
    assert vis.unit["unit"] == UNIT and vis.settings["param"] == param and vis.settings["steps"] == 20
    assert vis.receptive_field is not None and vis.receptive_field["center_y"] == 32


def test_a_seed_repeats_a_run_and_the_model_is_left_as_it_was():
    import unitrec as ur

    model = ur.load_model("resnet18", seed=0)
    model.train()
    model.layer1.eval()  # a mixed state comes back as it was
    model.fc.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs = {"size": 32, "steps": 4, "progress": False}
    a = visualize(model, UNIT, **kwargs)
    b = visualize(model, UNIT, **kwargs)
    c = visualize(model, UNIT, seed=1, **kwargs)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.scores, b.scores)
    assert not np.array_equal(a.image, c.image)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats included: scored in eval
    assert model.training and not model.layer1.training and model.layer2.training
    assert all(p.grad is None for p in model.parameters())
    assert not model.fc.weight.requires_grad and model.conv1.weight.requires_grad


def test_a_channel_objective_has_no_single_receptive_field(zoo):
    vis = visualize(zoo("resnet18"), {"name": "layer2", "channels": [3]}, size=32, steps=2, transforms=None,
                    progress=False)
    assert vis.receptive_field is None and vis.unit["objective"] == "mean"
    assert vis.settings["transforms"] is None


@pytest.mark.parametrize("spec", [[name] for name in TRANSFORMS] + [
    [("jitter", 3)], [("scale", [0.5, 1.5])], [("rotate", 45)], [("rotate", [30.0])], [("pad", 0)],
    "standard", None, standard_transforms()])
def test_transforms_keep_shape_and_range(spec):
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    chain = Transforms(spec)
    for seed in range(4):
        out = chain(x, torch.Generator().manual_seed(seed))
        assert out.shape == x.shape
        assert out.min() >= 0 and out.max() <= 1
    a, b = (chain(x, torch.Generator().manual_seed(7)) for _ in range(2))
    assert torch.equal(a, b)


def test_a_rotation_uncovers_grey_and_jitter_moves_the_image():
    x = torch.zeros(1, 3, 32, 32)
    out = Transforms([("rotate", [45])])(x, torch.Generator())
    assert out[0, :, 0, 0].allclose(torch.full((3,), 0.5))  # a corner, outside the rotated square
    assert out[0, :, 16, 16].abs().max() < 1e-6
    y = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    shifted = {Transforms([("jitter", 8)])(y, torch.Generator().manual_seed(s)).sum().item() for s in range(6)}
    assert len(shifted) > 1


@pytest.mark.parametrize("kind", ["pixel", "fourier"])
@pytest.mark.parametrize("decorrelate", [False, True])
def test_parametrisations(kind, decorrelate):
    for size in (16, (33, 47)):
        img = image_param(kind, size, decorrelate=decorrelate, generator=torch.Generator().manual_seed(0))
        x = img()
        h, w = (size, size) if isinstance(size, int) else size
        assert x.shape == (1, 3, h, w) and 0 <= x.min() and x.max() <= 1
        assert all(p.requires_grad for p in img.params)
        x.sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in img.params)


def nan_model() -> nn.Module:
    conv = nn.Conv2d(3, 1, 3)
    with torch.no_grad():
        conv.weight.fill_(float("nan"))
    return nn.Sequential(conv)


@pytest.mark.parametrize("kwargs, error, hint", [
    ({"steps": 0}, ConfigError, "try steps="),
    ({"steps": 2.5}, ConfigError, "try steps="),
    ({"size": 8}, ConfigError, "try size="),
    ({"size": 4096}, ConfigError, "try size="),
    ({"lr": 0}, ConfigError, "try lr="),
    ({"lr": -0.1}, ConfigError, "try lr="),
    ({"param": "cppn"}, ConfigError, "use 'fourier'"),
    ({"normalize": "cifar"}, ConfigError, "'imagenet', None"),
    ({"normalize": ([0.5] * 3, [0.0] * 3)}, ConfigError, "std > 0"),
    ({"transforms": ["wobble"]}, ConfigError, "use one of pad, jitter, scale, rotate"),
    ({"transforms": [("scale", [])]}, ConfigError, "e.g. ('scale'"),
    ({"transforms": [("jitter", 64)]}, ConfigError, "use a smaller jitter"),
    ({"seed": "a"}, ConfigError, "seed=0"),
])
def test_bad_input_is_one_line_saying_what_to_do(kwargs, error, hint):
    model = linear_unit(gabor(5))
    with pytest.raises(error) as info:
        visualize(model, {"name": "0", "channels": [0], "units": "center"},
                  **{"size": 32, "steps": 2, "progress": False, **kwargs})
    assert "\n" not in str(info.value) and hint in str(info.value)


def test_nan_scores_are_one_line_saying_what_to_do():
    with pytest.raises(RecordingError) as info:
        visualize(nan_model(), "0", size=16, steps=3, progress=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith("step 0:") and "check the model" in message
