"""From a PIL RGB image to the tensor the model sees, with a description for provenance."""

from __future__ import annotations

from typing import Any, Callable

import torch

from .errors import ConfigError
from .schema import PreprocessSpec

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "build_transform", "describe_transform"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Transform = Callable[[Any], torch.Tensor]


def build_transform(spec: PreprocessSpec | dict | None = None, weights: Any = None) -> Transform:
    """The transform of a preprocessing spec; without one, the weights' own preprocessing.

    Without either: resize 256, centre crop 224, ImageNet normalisation.
    """
    from torchvision import transforms as T

    if spec is None and weights is not None:
        return weights.transforms()
    if spec is None:
        spec = PreprocessSpec()
    elif isinstance(spec, dict):
        spec = PreprocessSpec(**spec)
    steps: list[Any] = []
    if spec.resize:
        steps.append(T.Resize(spec.resize, interpolation=T.InterpolationMode.BILINEAR, antialias=True))
    if spec.crop:
        steps.append(T.CenterCrop(spec.crop))
    steps.append(T.ToTensor())
    if spec.normalize == "imagenet":
        steps.append(T.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    elif isinstance(spec.normalize, dict):
        mean, std = spec.normalize["mean"], spec.normalize["std"]
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ConfigError(f"normalize needs 3 means and 3 positive stds, got mean={mean} std={std}")
        steps.append(T.Normalize(mean, std))
    return T.Compose(steps)


def describe_transform(transform: Any) -> str:
    """A stable one-line text of a transform (part of a recording's run key)."""
    text = repr(transform)
    return " ".join(text.split())
