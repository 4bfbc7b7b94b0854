"""Images to optimise, and the random transforms that make them robust (feature visualisation).

Two parametrisations of a ``(1, 3, H, W)`` image in ``[0, 1]``, after Lucid
(Olah et al. 2017, "Feature Visualization", Distill; ``lucid/optvis/param``):

- ``pixel``: a free tensor of logits through a sigmoid (``spatial.pixel_image``);
- ``fourier``: the real FFT spectrum as parameters, scaled by 1 / frequency so that
  every frequency starts with equal energy in the gradient, back through ``irfft2``
  (``spatial.fft_image``); this decorrelates the pixels and damps high-frequency noise.

Either may also decorrelate colour (``color._linear_decorelate_color``): the three
channels are mixed by the square root of ImageNet's colour correlation, so that a
step in the parameters is a step along the natural colour axes.

The transforms (``lucid/optvis/transform.py``) are torch ops drawing from a seeded
``torch.Generator``, so a run repeats exactly. Pure torch: no torchvision, no numpy in
the loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from unitrec.errors import ConfigError

__all__ = ["COLOR_CORRELATION_SVD_SQRT", "PARAMS", "TRANSFORMS", "ImageParam", "Transforms", "crop_or_pad_to",
           "image_param", "jitter", "pad", "rotate", "scale", "standard_transforms"]

#: Lucid's square root of ImageNet's colour correlation (``lucid/optvis/param/color.py``)
COLOR_CORRELATION_SVD_SQRT = ((0.26, 0.09, 0.02),
                              (0.27, 0.00, -0.05),
                              (0.27, -0.09, 0.03))
#: the parametrisations :func:`image_param` knows
PARAMS = ("pixel", "fourier")
#: the transforms :class:`Transforms` knows, with the argument each takes
TRANSFORMS = {
    "pad": "pixels on every side, filled with grey 0.5 (default 12)",
    "jitter": "a random crop this many pixels smaller (default 8)",
    "scale": "a list of factors, one drawn per step (default Lucid's 0.9 ... 1.1)",
    "rotate": "degrees: d for -d ... d, or a list of angles (default Lucid's -10 ... 10, 0 more likely)",
}
#: the grey that pads, and that fills what a rotation or a shrink uncovers
_FILL = 0.5


def standard_transforms() -> list[tuple[str, Any]]:
    """Lucid's ``standard_transforms`` (``lucid/optvis/transform.py``), as :class:`Transforms` takes them."""
    return [("pad", 12), ("jitter", 8), ("scale", [1 + (i - 5) / 50 for i in range(11)]),
            ("rotate", list(range(-10, 11)) + 5 * [0]), ("jitter", 4)]


# ---------------------------------------------------------------------- parametrisations
class ImageParam:
    """An image made from parameters: call it for the ``(1, 3, H, W)`` image in ``[0, 1]``.

    Built by :func:`image_param`; :attr:`params` are the tensors to optimise.
    """

    def __init__(self, kind: str, params: list[torch.Tensor], make: Callable[[], torch.Tensor],
                 decorrelate: bool) -> None:
        self.kind, self.params, self._make, self.decorrelate = kind, params, make, decorrelate

    def __call__(self) -> torch.Tensor:
        return self._make()

    def __repr__(self) -> str:
        return f"ImageParam({self.kind!r}, decorrelate={self.decorrelate})"


def image_param(kind: str, size: int | tuple[int, int], *, decorrelate: bool = True, sd: float = 0.01,
                generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> ImageParam:
    """A ``pixel`` or ``fourier`` image of `size`, initialised from `generator`.

    Parameters
    ----------
    kind
        ``"pixel"`` (logits through a sigmoid) or ``"fourier"`` (a 1/f-scaled spectrum).
    size
        ``H`` for a square image, or ``(H, W)``.
    decorrelate
        Mix the channels by Lucid's colour-correlation square root before the sigmoid.
    sd
        Standard deviation of the normal initial parameters (Lucid's 0.01: a near-grey start).
    generator
        Where the initial values come from (a CPU ``torch.Generator``; seeded 0 if none).
    device
        Where the parameters live.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> img = image_param("fourier", 64, generator=g)
    >>> tuple(img().shape), len(img.params)
    ((1, 3, 64, 64), 1)
    """
    if kind not in PARAMS:
        raise ConfigError(f"param must be one of {', '.join(map(repr, PARAMS))}, got {kind!r}; use 'fourier' "
                          "(smooth, the default) or 'pixel'")
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    device = torch.device(device)
    mix = _color_mix(device) if decorrelate else None
    if kind == "pixel":
        logits = _normal((1, 3, h, w), sd, generator, device)

        def make() -> torch.Tensor:
            return _to_rgb(logits, mix)

        return ImageParam(kind, [logits], make, decorrelate)
    scale = _spectrum_scale(h, w, device)
    # real and imaginary parts of an rfft2 spectrum: (1, 3, H, W // 2 + 1, 2)
    spectrum = _normal((1, 3, h, w // 2 + 1, 2), sd, generator, device)

    def make_fourier() -> torch.Tensor:
        # Lucid: irfft2d of the scaled spectrum times sqrt(H W), TensorFlow's inverse
        # dividing by H W: that is torch's orthonormal inverse. Then / 4, as Lucid does,
        # so that the sigmoid starts in its linear range.
        image = torch.fft.irfft2(scale * torch.view_as_complex(spectrum), s=(h, w), norm="ortho") / 4
        return _to_rgb(image, mix)

    return ImageParam(kind, [spectrum], make_fourier, decorrelate)


def _normal(shape: tuple[int, ...], sd: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    # drawn on the CPU generator and then moved, so that a seed gives the same start on any device
    return (torch.randn(shape, generator=generator) * sd).to(device).requires_grad_(True)


def _spectrum_scale(h: int, w: int, device: torch.device, decay_power: float = 1.0) -> torch.Tensor:
    """Lucid's ``1 / max(f, 1 / max(H, W)) ** decay`` per rfft2 frequency (``spatial.rfft2d_freqs``)."""
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    freqs = torch.sqrt(fx * fx + fy * fy)
    scale = 1.0 / torch.clamp(freqs, min=1.0 / max(h, w)) ** decay_power
    return scale.to(device)


def _color_mix(device: torch.device) -> torch.Tensor:
    """The colour-correlation square root over its largest column norm (Lucid keeps the
    decorrelated image's range no wider than the plain one's)."""
    matrix = torch.tensor(COLOR_CORRELATION_SVD_SQRT, dtype=torch.float32)
    return (matrix / matrix.norm(dim=0).max()).to(device)


def _to_rgb(t: torch.Tensor, mix: torch.Tensor | None) -> torch.Tensor:
    """Lucid's ``to_valid_rgb`` with a sigmoid: channels mixed (rgb_i = sum_j M_ij t_j), squashed to [0, 1]."""
    if mix is not None:
        t = torch.einsum("ij,njhw->nihw", mix, t)
    return torch.sigmoid(t)


# ---------------------------------------------------------------------- transforms
class Transforms:
    """Random transforms applied to the image at each step, ending at the image's own size.

    Parameters
    ----------
    spec
        ``None`` or ``[]`` (none), ``"standard"`` (Lucid's ``standard_transforms``: pad 12,
        jitter 8, scale 0.9 ... 1.1, rotate -10 ... 10 degrees, jitter 4), or a list of
        names and ``(name, argument)`` pairs, e.g. ``["jitter", ("scale", [0.9, 1.1]),
        ("rotate", 10)]`` (see :data:`TRANSFORMS`); an entry may also be a callable
        ``image -> image`` of one's own (its randomness is its own).

    Notes
    -----
    Lucid's transforms change the image's size (pad grows it, jitter crops it) and the
    model sees whatever comes out. Here the model always sees the image's own size, so that
    a unit keeps its place (and its receptive field, in input pixels) and the scorer is
    traced once: the chain ends with a centre crop, or a grey pad, back to the input's size
    (Lucid's ``crop_or_pad_to``). For a unit at the image centre this is what Lucid's
    neuron objective sees. Whatever is uncovered (pad, rotation corners, a shrink) is grey
    0.5, where Lucid's rotation leaves black; bilinear resampling keeps values in [0, 1].

    Examples
    --------
    >>> t = Transforms("standard")
    >>> x = torch.rand(1, 3, 64, 64)
    >>> t(x, torch.Generator().manual_seed(0)).shape
    torch.Size([1, 3, 64, 64])
    """

    def __init__(self, spec: Any = None) -> None:
        self.steps = _parse(spec)

    def describe(self) -> list[Any]:
        """The steps as plain values, for provenance."""
        return [repr(arg) if name == "callable" else [name, arg] for name, arg in self.steps]

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        h, w = image.shape[-2:]
        out = image
        for name, arg in self.steps:
            if name == "callable":
                out = arg(out)
            else:
                out = _APPLY[name](out, arg, generator)
        return crop_or_pad_to(out, (h, w))

    def __repr__(self) -> str:
        return f"Transforms({self.describe()!r})"


def _parse(spec: Any) -> list[tuple[str, Any]]:
    valid = f"{', '.join(TRANSFORMS)} (or 'standard', None, a callable)"
    if spec is None:
        return []
    if isinstance(spec, str):
        if spec == "standard":
            return standard_transforms()
        spec = [spec]
    if not isinstance(spec, (list, tuple)):
        raise ConfigError(f"transforms must be None, 'standard' or a list like ['jitter', ('scale', [0.9, 1.1])], "
                          f"got {type(spec).__name__} {spec!r:.60}")
    steps: list[tuple[str, Any]] = []
    for entry in spec:
        if callable(entry):
            steps.append(("callable", entry))
            continue
        if isinstance(entry, str):
            name, arg = entry, None
        elif isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str):
            name, arg = entry[0], entry[1]
        else:
            raise ConfigError(f"transforms: {entry!r:.60} is not a name or a (name, argument) pair; "
                              f"the names are {valid}")
        if name not in TRANSFORMS:
            raise ConfigError(f"transforms: unknown transform {name!r}; use one of {valid}")
        steps.append((name, _argument(name, arg)))
    return steps


def _argument(name: str, arg: Any) -> Any:
    """A transform's argument checked, its default filled in."""
    default = dict(standard_transforms()[1:4])
    default["pad"] = 12
    if arg is None:
        return default[name]
    if name in ("pad", "jitter"):
        least = 0 if name == "pad" else 1
        if isinstance(arg, bool) or not isinstance(arg, int) or arg < least:
            raise ConfigError(f"transforms: {name} takes a whole number of pixels >= {least}, got {arg!r:.40}; "
                              f"e.g. ({name!r}, 8)")
        return int(arg)
    if name == "rotate" and isinstance(arg, (int, float)) and not isinstance(arg, bool):
        if not (math.isfinite(arg) and arg >= 0):
            raise ConfigError(f"transforms: rotate takes degrees d >= 0 (angles -d ... d) or a list of angles, "
                              f"got {arg!r}")
        return list(range(-int(arg), int(arg) + 1))
    values = list(arg) if isinstance(arg, (list, tuple)) else None
    ok = values and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                        for v in values)
    if name == "scale" and ok:
        ok = all(v > 0 for v in values)  # type: ignore[union-attr]
    if not ok:
        what = "positive factors, e.g. ('scale', [0.9, 1.1])" if name == "scale" else \
            "angles in degrees, e.g. ('rotate', [-5, 0, 5]) or ('rotate', 10)"
        raise ConfigError(f"transforms: {name} takes a non-empty list of {what}; got {arg!r:.60}")
    return [float(v) for v in values]  # type: ignore[union-attr]


def _choice(values: Sequence[float], generator: torch.Generator) -> float:
    return float(values[int(torch.randint(len(values), (1,), generator=generator))])


def pad(image: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`n` grey pixels on every side (Lucid's ``pad(n, mode="constant", constant_value=0.5)``)."""
    return F.pad(image, (n, n, n, n), value=_FILL) if n else image


def jitter(image: torch.Tensor, d: int, generator: torch.Generator) -> torch.Tensor:
    """A random crop `d` pixels smaller in each direction (Lucid's ``jitter``: offsets 0 ... d)."""
    h, w = image.shape[-2:]
    if d >= min(h, w):
        raise ConfigError(f"transforms: jitter {d} is not smaller than the image ({h} x {w}); use a smaller "
                          "jitter or a larger size")
    oy, ox = (int(v) for v in torch.randint(d + 1, (2,), generator=generator))
    return image[..., oy:oy + h - d, ox:ox + w - d]


def scale(image: torch.Tensor, factors: Sequence[float], generator: torch.Generator) -> torch.Tensor:
    """Resized by a factor drawn from `factors`, bilinear (Lucid's ``random_scale``)."""
    s = _choice(factors, generator)
    h, w = image.shape[-2:]
    size = (max(1, int(s * h)), max(1, int(s * w)))  # Lucid truncates too
    if size == (h, w):
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False)


def rotate(image: torch.Tensor, angles: Sequence[float], generator: torch.Generator) -> torch.Tensor:
    """Rotated about its centre by an angle (degrees) drawn from `angles` (Lucid's ``random_rotate``),
    bilinear; the corners it uncovers are grey."""
    angle = math.radians(_choice(angles, generator))
    if angle == 0:
        return image
    h, w = image.shape[-2:]
    cos, sin = math.cos(angle), math.sin(angle)
    # a rotation in pixels, written in grid_sample's coordinates (each axis scaled to [-1, 1])
    theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=image.dtype,
                         device=image.device).unsqueeze(0).expand(image.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    # zeros outside, around the grey: the uncovered corners come out 0.5
    return F.grid_sample(image - _FILL, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + _FILL


def crop_or_pad_to(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre-cropped or grey-padded to `size` (Lucid's ``crop_or_pad_to``)."""
    h, w = image.shape[-2:]
    th, tw = size
    if h > th or w > tw:
        top, left = max(0, (h - th) // 2), max(0, (w - tw) // 2)
        image = image[..., top:top + min(h, th), left:left + min(w, tw)]
        h, w = image.shape[-2:]
    if h < th or w < tw:
        top, left = (th - h) // 2, (tw - w) // 2
        image = F.pad(image, (left, tw - w - left, top, th - h - top), value=_FILL)
    return image


_APPLY: dict[str, Callable[[torch.Tensor, Any, torch.Generator], torch.Tensor]] = {
    "pad": pad, "jitter": jitter, "scale": scale, "rotate": rotate,
}
