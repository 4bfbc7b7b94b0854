"""From a PIL RGB image to the tensor the model sees, with a description for provenance."""

from __future__ import annotations

from typing import Any, Callable

import torch

from unitrec.errors import ConfigError
from unitrec.schema import PreprocessSpec, parse

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
        spec = parse(PreprocessSpec, spec, "preprocess")
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
    """A stable one-line text of a transform (part of a recording's run key).

    torchvision's and timm's transforms show their settings in their repr. Code of
    one's own (a function, ``T.Lambda(fn)``, a callable object) does not: a repr
    ``Lambda()`` hides which function, and a function's repr holds a memory address
    that differs in every process. Such code is named by its source (and the plain
    values it closes over, see :mod:`unitrec.anatomy.fingerprint`), appended as ``[code: …]``;
    addresses are dropped.
    """
    import re

    text = re.sub(r" at 0x[0-9a-fA-F]+", "", " ".join(repr(transform).split()))
    code = _own_code(transform)
    return text + (f" [code: {'; '.join(code)}]" if code else "")


def _own_code(transform: Any, depth: int = 0) -> list[str]:
    """Identities of the user code inside a transform (its steps, Lambdas, callable objects)."""
    import functools
    import types

    from unitrec.anatomy.fingerprint import code_identity

    if depth > 8 or transform is None:
        return []
    steps = getattr(transform, "transforms", None)
    if isinstance(steps, (list, tuple)):
        return [c for step in steps for c in _own_code(step, depth + 1)]
    if isinstance(transform, (types.FunctionType, types.MethodType, functools.partial)):
        return [code_identity(transform)]
    inner = getattr(transform, "lambd", None)  # torchvision's T.Lambda
    if inner is not None and callable(inner):
        return _own_code(inner, depth + 1)
    module = type(transform).__module__
    if callable(transform) and not module.startswith(("torch", "torchvision", "timm", "PIL")):
        return [code_identity(transform)]
    return []
