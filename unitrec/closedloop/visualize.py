"""Feature visualisation: the image that drives a unit most, found by gradient ascent.

``visualize`` optimises a parametrised image (``parametrize.py``: pixels or a 1/f
spectrum, decorrelated colour) with Adam to maximise an :mod:`objective
<unitrec.closedloop.objective>`, under random robustness transforms, as Lucid's
``render_vis`` does (Olah, Mordvintsev & Schubert 2017, "Feature Visualization",
Distill). The model is left as it was: its parameters get no gradient and its
training flags are restored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from unitrec.closedloop.objective import Objective, objective
from unitrec.closedloop.parametrize import PARAMS, Transforms, image_param
from unitrec.errors import ConfigError, RecordingError
from unitrec.recording.job import check_device
from unitrec.recording.stream import progress_bar

__all__ = ["Visualization", "visualize"]

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: the image sizes (pixels on a side) a visualisation takes
SIZES = (16, 2048)


@dataclass(frozen=True)
class Visualization:
    """What :func:`visualize` found.

    Attributes
    ----------
    image
        The optimised image, float32 ``(3, H, W)`` in ``[0, 1]``, untransformed.
    scores
        float64, one per step: the objective on that step's transformed image (before
        the step's update).
    unit
        The objective's description (:meth:`Objective.describe`).
    settings
        The arguments of the run, for provenance.
    receptive_field
        ``{"center_y", "center_x", "height", "width"}`` in input pixels when the objective
        is one unit with a known field; else ``None``.
    """

    image: np.ndarray
    scores: np.ndarray
    unit: dict[str, Any]
    settings: dict[str, Any]
    receptive_field: dict[str, float] | None

    def __repr__(self) -> str:
        last = f"{self.scores[-1]:.4g}" if len(self.scores) else "-"
        return (f"Visualization(unit={self.unit.get('unit')!r}, image={tuple(self.image.shape)}, "
                f"steps={len(self.scores)}, last score={last})")


def visualize(model: nn.Module, unit: Any, *, size: int = 224, steps: int = 512, param: str = "fourier",
              decorrelate: bool = True, transforms: Any = "standard", lr: float = 0.05, seed: int = 0,
              device: str | torch.device = "cpu", normalize: Any = "imagenet", ablate: Any = None,
              progress: bool = True) -> Visualization:
    """The image that maximises `unit`'s response, by gradient ascent.

    Parameters
    ----------
    model
        The network. Its parameters are frozen for the run (their ``requires_grad``
        restored after, their ``.grad`` untouched) and its training flags restored.
    unit
        What to maximise: a site name or a layer entry, with ``weights`` or ``pattern``
        (see :func:`unitrec.closedloop.objective.objective`), e.g.
        ``{"name": "layer3", "channels": [5], "units": "center"}``.
    size
        Side of the square image, in pixels (16 ... 2048); the model sees this size.
    steps
        Adam steps (at least 1).
    param
        ``"fourier"`` (a 1/f-scaled spectrum: smooth images, Lucid's default) or
        ``"pixel"`` (free pixels through a sigmoid).
    decorrelate
        Optimise in decorrelated colour (Lucid's colour-correlation square root).
    transforms
        Robustness transforms per step: ``"standard"`` (Lucid's), ``None``, or a list
        such as ``["jitter", ("scale", [0.9, 1.1]), ("rotate", 10)]``
        (:class:`~unitrec.closedloop.parametrize.Transforms`).
    lr
        Adam's learning rate (Lucid's 0.05).
    seed
        Seeds the initial image and the transforms' draws: a seed repeats a run.
    device
        Where the model and the image live (``"cpu"``, ``"cuda"``, ...).
    normalize
        What the model takes, applied after the transforms: ``"imagenet"`` (mean
        0.485, 0.456, 0.406, std 0.229, 0.224, 0.225), ``None`` (images in [0, 1]), or
        a ``(mean, std)`` pair of three numbers each.
    ablate
        Lesions during the run (as :func:`unitrec.record` takes them).
    progress
        Show a tqdm bar with the current score.

    Returns
    -------
    Visualization
        ``image``, ``scores``, ``unit``, ``settings`` and ``receptive_field``.

    Examples
    --------
    >>> model = ur.load_model("resnet18")  # doctest: +SKIP
    >>> vis = visualize(model, {"name": "layer3", "channels": [5], "units": "center"},
    ...                 size=128, steps=256)  # doctest: +SKIP
    >>> vis.image.shape, vis.scores[-1] > vis.scores[0]  # doctest: +SKIP
    ((3, 128, 128), True)
    """
    _check(size, steps, lr, param, seed)
    if not isinstance(decorrelate, bool):
        raise ConfigError(f"decorrelate must be True or False, got {decorrelate!r}")
    check_device(device)  # a missing GPU is one line, before anything is built
    mean_std = _normalization(normalize)
    chain = Transforms(transforms)
    plain = transforms is None or isinstance(transforms, str)
    settings = {"size": size, "steps": steps, "param": param, "decorrelate": bool(decorrelate),
                "transforms": transforms if plain else chain.describe(), "lr": float(lr), "seed": int(seed),
                "device": str(device), "ablate": ablate,
                "normalize": normalize if mean_std is None or isinstance(normalize, str)
                else [list(mean_std[0]), list(mean_std[1])]}
    # frozen from the start: building the objective traces the model, which flips its flags
    with _frozen(model), torch.enable_grad():
        obj = objective(model, unit, device=device, ablate=ablate, input_size=(3, size, size))
        image, scores = _ascend(obj, chain, param, size, decorrelate, lr, steps, seed, mean_std, progress)
        field = receptive_field(obj)
    if not torch.isfinite(image).all():
        raise RecordingError(f"the image became NaN or infinite after {steps} steps at lr={lr}; lower lr")
    return Visualization(image=image[0].detach().cpu().numpy().astype(np.float32), scores=scores,
                         unit=obj.describe(), settings=settings, receptive_field=field)


def _ascend(obj: Objective, chain: Transforms, param: str, size: int, decorrelate: bool, lr: float, steps: int,
            seed: int, mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None,
            progress: bool) -> tuple[torch.Tensor, np.ndarray]:
    """Adam on the image's parameters, up the objective: the final image and the score per step."""
    where = obj.scorer.device
    generator = torch.Generator().manual_seed(seed)  # the start, then every transform's draw
    image_f = image_param(param, size, decorrelate=decorrelate, generator=generator, device=where)
    shift = scale = None
    if mean_std is not None:
        shift = torch.tensor(mean_std[0], dtype=torch.float32, device=where).view(1, 3, 1, 1)
        scale = torch.tensor(mean_std[1], dtype=torch.float32, device=where).view(1, 3, 1, 1)
    optimizer = torch.optim.Adam(image_f.params, lr=lr)  # the image's parameters only
    scores = np.empty(steps, dtype=np.float64)
    bar = progress_bar(True, steps, 0, desc="visualize", unit="step") if progress else None
    try:
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            x = chain(image_f(), generator)
            if shift is not None and scale is not None:
                x = (x - shift) / scale
            score = _score(obj, x, step, lr)
            (-score).backward()  # Adam minimises: ascend the score
            optimizer.step()
            scores[step] = float(score.detach())
            if bar is not None:
                bar.update(1)
                if step % 10 == 0 or step == steps - 1:
                    bar.set_postfix(score=f"{scores[step]:.4g}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    with torch.no_grad():
        return image_f(), scores


def receptive_field(obj: Objective) -> dict[str, float] | None:
    """Centre and size, in input pixels, of the objective's one unit; ``None`` when it
    is several units or its site has no spatial field (a classifier's output)."""
    units = obj.scorer.units
    sites = obj.scorer.sites
    if len(units) != 1 or len(sites) != 1 or sites[0].field is None:
        return None
    row = units.iloc[0]
    cy, cx = row.get("rf_center_y"), row.get("rf_center_x")
    if cy is None or cx is None or _missing(cy) or _missing(cx):
        return None
    height, width = sites[0].field.size
    return {"center_y": float(cy), "center_x": float(cx), "height": float(height), "width": float(width)}


def _missing(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _check(size: Any, steps: Any, lr: Any, param: Any, seed: Any) -> None:
    """One line per bad argument, saying what to give instead."""
    def whole(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not whole(steps) or steps < 1:
        raise ConfigError(f"steps must be a whole number >= 1, got {steps!r}; try steps=512")
    if not whole(size) or not SIZES[0] <= size <= SIZES[1]:
        raise ConfigError(f"size must be a whole number of pixels from {SIZES[0]} to {SIZES[1]}, got {size!r}; "
                          "try size=224")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"lr must be a positive number, got {lr!r}; try lr=0.05")
    if param not in PARAMS:
        raise ConfigError(f"param must be one of {', '.join(map(repr, PARAMS))}, got {param!r}; use 'fourier' "
                          "(smooth, the default) or 'pixel'")
    if not whole(seed):
        raise ConfigError(f"seed must be a whole number, got {seed!r}; e.g. seed=0")


def _normalization(normalize: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` of the model's input, or ``None`` for images in [0, 1]."""
    if normalize is None:
        return None
    if isinstance(normalize, str):
        if normalize == "imagenet":
            return IMAGENET
    elif isinstance(normalize, (list, tuple)) and len(normalize) == 2:
        try:
            mean, std = (tuple(float(v) for v in part) for part in normalize)
        except (TypeError, ValueError):
            mean = std = ()
        if len(mean) == 3 and len(std) == 3 and all(map(math.isfinite, mean + std)) and min(std) > 0:
            return mean, std
    raise ConfigError(f"normalize must be 'imagenet', None (the model takes [0, 1] images) or a (mean, std) pair "
                      f"of 3 numbers each, std > 0; got {normalize!r:.80}")


def _score(obj: Objective, x: torch.Tensor, step: int, lr: float) -> torch.Tensor:
    """The objective of the one image, its NaN said as one line with the step and what to do."""
    if not torch.isfinite(x.detach()).all():
        raise RecordingError(f"step {step}: the image became NaN or infinite (lr={lr}); lower lr")
    try:
        return obj(x)[0]
    except RecordingError as exc:
        raise RecordingError(f"step {step}: {exc}") from None


class _frozen:
    """The model as it was, after: parameters' ``requires_grad`` and every module's training flag.

    Freezing keeps autograd from accumulating into the weights' ``.grad`` (and spares
    computing it); the flags are per module because a user's model may be partly in eval.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.flags = [(p, p.requires_grad) for p in self.model.parameters()]
        self.training = [(m, m.training) for m in self.model.modules()]
        for p, _ in self.flags:
            p.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        for p, flag in self.flags:
            p.requires_grad_(flag)
        for m, flag in self.training:
            m.training = flag
