"""The images a network saw, rebuilt from a recording without torch: the resize and
centre-crop steps of its ``preprocessing`` text, redone with the PIL calls torchvision
makes, and the file attributes that say where the stimuli are and on what background.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from unitrec.errors import StimulusError

#: Preprocessing steps that leave the geometry alone (tensor conversion, dtype, normalisation).
_NON_GEOMETRIC = frozenset({"ToTensor", "PILToTensor", "ConvertImageDtype", "Normalize", "ToImage",
                            "ToDtype", "ToPureTensor", "ToImageTensor",
                            "MaybeToTensor", "MaybePILToTensor", "ToNumpy"})  # the last three: timm's
_STEP = r"(\w+)\(((?:[^()]|\([^()]*\))*)\)"


def geometry(text: str) -> list[tuple] | None:
    """The resize / centre-crop steps of a recording's ``preprocessing`` text.

    ``[]`` keeps the image as it is; None: a step that cannot be rebuilt.
    """
    import re

    text = " ".join(text.split())
    if text.startswith("none"):  # tensor stimuli: nothing was decoded
        return []
    whole = re.fullmatch(r"ImageClassification\((.*)\)", text)
    if whole:
        resize, crop = _arg(whole[1], "resize_size"), _arg(whole[1], "crop_size")
        interpolation = _arg(whole[1], "interpolation") or "bilinear"
        if crop is None:
            return None
        steps: list[tuple] = []
        if resize is not None:
            steps.append(("resize", resize, interpolation, None))
        return [*steps, ("crop", crop)]
    inner = text[len("Compose("):-1] if text.startswith("Compose(") and text.endswith(")") else text
    steps, position = [], 0
    for match in re.finditer(_STEP, inner):
        if inner[position:match.start()].strip():
            return None  # text that is not a step
        position = match.end()
        name, args = match[1], match[2]
        if name == "Resize":
            size = _arg(args, "size")
            if size is None:
                return None
            steps.append(("resize", size, _arg(args, "interpolation") or "bilinear", _arg(args, "max_size")))
        elif name == "CenterCrop":
            size = _arg(args, "size")
            if size is None:
                return None
            steps.append(("crop", size))
        elif name not in _NON_GEOMETRIC:
            return None
    if inner[position:].strip():
        return None
    return steps


def _arg(args: str, key: str) -> Any:
    """One ``key=value`` of a transform's repr: a list of int, an int, a word, or None."""
    import re

    match = re.search(rf"(?<![\w.]){key}=(\([^()]*\)|\[[^\]]*\]|[^\s,()\[\]]+)", args)
    if match is None:
        return None
    value = match[1]
    if value == "None":
        return None
    if value[0] in "([":
        items = [v.strip() for v in value[1:-1].split(",") if v.strip()]
        try:
            return [int(v) for v in items]
        except ValueError:
            return None
    try:
        return [int(value)]
    except ValueError:
        return value


#: torchvision's ``pil_modes_mapping``: the PIL filter its ``resize`` uses for a PIL image
_PIL_FILTERS = {"nearest": 0, "nearest-exact": 0, "nearest_exact": 0, "bilinear": 2, "bicubic": 3, "box": 4,
                "hamming": 5, "lanczos": 1}


def _resize(image: Any, size: list[int], interpolation: str, max_size: int | None) -> Any:
    """torchvision's ``F.resize`` of a PIL image (``antialias`` is always on for PIL), in PIL alone.

    The output size is ``_compute_resized_output_size``'s; the pixels come from the
    same ``Image.resize`` call, so they are equal bit for bit (tested).
    """
    h, w = image.height, image.width
    if len(size) == 1:  # the shorter edge
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size[0], int(size[0] * long / short)
        if max_size is not None and new_long > max_size:
            new_short, new_long = int(max_size * new_short / new_long), max_size
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        new_h, new_w = size[0], size[1]
    if (new_h, new_w) == (h, w):
        return image
    return image.resize((new_w, new_h), _PIL_FILTERS[str(interpolation).rsplit(".", 1)[-1].lower()])


def _center_crop(image: Any, size: list[int]) -> Any:
    """torchvision's ``F.center_crop`` of a PIL image (zero padding where the crop is larger)."""
    from PIL import Image

    crop_h, crop_w = (size[0], size[0]) if len(size) == 1 else (size[0], size[1])
    h, w = image.height, image.width
    if crop_w > w or crop_h > h:
        left, top = (crop_w - w) // 2 if crop_w > w else 0, (crop_h - h) // 2 if crop_h > h else 0
        padded = Image.new(image.mode, (w + max(crop_w - w, 0), h + max(crop_h - h, 0)), 0)
        padded.paste(image, (left, top))
        image, h, w = padded, padded.height, padded.width
        if (crop_h, crop_w) == (h, w):
            return image
    top, left = int(round((h - crop_h) / 2.0)), int(round((w - crop_w) / 2.0))
    return image.crop((left, top, left + crop_w, top + crop_h))


def _load_rgb() -> Any:
    """:func:`unitrec.stimuli.load_rgb` (PIL and numpy only: a figure must not pay for torch)."""
    from unitrec.stimuli.decode import load_rgb

    return load_rgb


def network_image(path: Path, steps: list[tuple] | None, size: tuple[int, int] | None,
                  background: tuple[int, int, int]) -> np.ndarray:
    """An RGB ``(h, w, 3)`` uint8 image as the network saw it (see :func:`unitrec.analysis.plot_montage`)."""
    try:
        image = _load_rgb()(path, background)
    except StimulusError as exc:
        raise StimulusError(f"cannot read stimulus image {path}: {exc}") from exc
    if steps is None:
        if size is not None:
            from PIL import Image

            image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        return np.asarray(image)
    for step in steps:
        if step[0] == "resize":
            _, target, interpolation, max_size = step
            image = _resize(image, target, interpolation, max_size[0] if max_size else None)
        else:
            image = _center_crop(image, step[1])
    return np.asarray(image)


def recording_attrs(attrs: Mapping[str, Any]) -> dict[str, str]:
    """``stimulus_root`` and ``run_key`` of the file named in ``attrs["recording"]``, if readable."""
    path = attrs.get("recording")
    if not path or not Path(str(path)).is_file():
        return {}
    try:
        import h5py

        with h5py.File(str(path), "r") as h5:
            return {key: (v.decode() if isinstance(v, bytes) else str(v))
                    for key in ("stimulus_root", "run_key") if (v := h5.attrs.get(key)) is not None}
    except (OSError, KeyError):
        return {}


def background_colour(run_key: str) -> tuple[int, int, int]:
    """The colour transparent pixels were composited on (``"background"`` in the run key)."""
    import json
    import re

    try:
        text = json.loads(run_key).get("background", "") if run_key else ""
    except (ValueError, AttributeError):
        text = ""
    values = re.findall(r"\d+", str(text))
    return tuple(int(v) for v in values) if len(values) == 3 else (255, 255, 255)  # type: ignore[return-value]
