"""The atlas's pictures: stimulus thumbnails as the network saw them, receptive-field maps.

Each stimulus that some unit ranks is thumbnailed once (``thumbs/<row>.jpg``), from the
pixels the network saw: the recording's resize and centre crop rebuilt without torch
(``analysis.plot_montage`` shows the same pixels). Before it is drawn, an image file is
checked against the size and SHA-256 the recording stored: a file that moved or
changed since is shown by its label, and the atlas says so.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unitrec.analysis.experiments._images import background_colour, geometry, network_image
from unitrec.errors import StimulusError

__all__ = ["Thumbnails", "network_size", "rf_map_png", "stimulus_folder", "thumbnails", "unchanged_stimuli"]

THUMB_SIDE = 128  # longest side of a thumbnail, in pixels


@dataclass
class Thumbnails:
    """What became of the stimuli: which rows have a thumbnail, at what size, and why not."""

    made: np.ndarray  # bool per stimulus row
    thumb_size: tuple[int, int] | None = None
    input_size: tuple[int, int] | None = None  # the network's input (receptive fields are in its pixels)
    messages: list[str] = field(default_factory=list)


def thumbnails(attrs: dict[str, Any], labels: np.ndarray, rows: np.ndarray, out: Path, *,
               root: str | os.PathLike | None, sizes: np.ndarray | None,
               digests: np.ndarray | None) -> Thumbnails:
    """Write ``out/<row>.jpg`` for each stimulus row in ``rows``.

    ``attrs`` are the recording's (``stimulus_root``, ``preprocessing``, ``run_key``);
    ``root`` replaces its ``stimulus_root``; ``sizes`` and ``digests`` are the file
    sizes and SHA-256 the recording stored per row (None: not stored).
    """
    made = np.zeros(len(labels), dtype=bool)
    result = Thumbnails(made)
    preprocessing = str(attrs.get("preprocessing", ""))
    folder = stimulus_folder(attrs, root)
    if isinstance(folder, str):
        result.messages.append(f"the stimuli are shown by their labels: {folder}")
        return result
    steps = geometry(preprocessing)
    if steps is None:
        result.messages.append(f"the preprocessing ({' '.join(preprocessing.split())[:80]}) cannot be rebuilt "
                               "from its text: thumbnails show the original images, without receptive fields")
    background = background_colour(str(attrs.get("run_key", "")))
    out.mkdir(parents=True, exist_ok=True)
    moved: list[str] = []
    changed: list[str] = []
    unreadable: list[str] = []
    shapes: list[tuple[int, int]] = []

    def one(row: int) -> None:
        label = str(labels[row])
        path = folder / label
        state = _state(path, row, sizes, digests)
        if state is not None:
            (moved if state == "moved" else changed).append(label)
            return
        try:
            pixels = network_image(path, steps, None, background)
        except StimulusError:
            unreadable.append(label)
            return
        shapes.append(pixels.shape[:2])
        _save_thumbnail(pixels, out / f"{row}.jpg")
        made[row] = True

    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL and hashlib let go of the GIL
        list(pool.map(one, (int(r) for r in rows)))
    if shapes:
        h, w = max(set(shapes), key=shapes.count)
        scale = min(1.0, THUMB_SIDE / max(h, w))
        result.thumb_size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if steps is not None and len(set(shapes)) == 1:
            result.input_size = (int(h), int(w))
    for what, names in (("are not there (moved since recording?)", moved),
                        ("changed since recording (their SHA-256 differs)", changed),
                        ("cannot be read", unreadable)):
        if names:
            result.messages.append(f"{len(names)} of {len(rows)} stimulus images under {folder} {what}, e.g. "
                                   f"{sorted(names)[0]}: they are shown by their labels")
    return result


def stimulus_folder(attrs: dict[str, Any], root: str | os.PathLike | None) -> Path | str:
    """The folder the stimulus labels are relative to (``root``, else the recording's
    ``stimulus_root``), or why there is none, as text."""
    stored_root = str(attrs.get("stimulus_root") or "")
    if root is None and not stored_root:
        return "the stimuli were tensors, not image files"
    folder = Path(str(root) if root is not None else stored_root)
    if not folder.is_dir():
        return (f"the stimulus folder {folder} is not there (moved since recording?); pass stimulus_root= "
                "(--stimulus-root) where it is now")
    return folder


def unchanged_stimuli(attrs: dict[str, Any], labels: np.ndarray, rows: np.ndarray, *,
                      root: str | os.PathLike | None, sizes: np.ndarray | None,
                      digests: np.ndarray | None) -> str | None:
    """None when every stimulus file of ``rows`` is where the recording read it, with the
    size and SHA-256 it stored; else why not, as text (the first file that differs)."""
    folder = stimulus_folder(attrs, root)
    if isinstance(folder, str):
        return folder
    if digests is None:
        return "the recording stored no SHA-256 of its stimulus files, so they cannot be checked"

    def one(row: int) -> str | None:
        state = _state(folder / str(labels[row]), row, sizes, digests)
        return None if state is None else f"{labels[row]} {_STATES[state]}"

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        found = [why for why in pool.map(one, (int(r) for r in rows)) if why is not None]
    return f"{len(found)} of {len(rows)} stimulus images under {folder} differ, e.g. {sorted(found)[0]}" if found else None


def network_size(attrs: dict[str, Any], labels: np.ndarray, rows: np.ndarray, *,
                 root: str | os.PathLike | None) -> tuple[int, int] | None:
    """``(height, width)`` of the first of ``rows``'s images as the network saw it, or None
    where it cannot be known (no image, or preprocessing that cannot be rebuilt)."""
    folder = stimulus_folder(attrs, root)
    steps = geometry(str(attrs.get("preprocessing", "")))
    if isinstance(folder, str) or steps is None or not len(rows):
        return None
    try:
        pixels = network_image(folder / str(labels[int(rows[0])]), steps, None,
                               background_colour(str(attrs.get("run_key", ""))))
    except (StimulusError, OSError):
        return None
    return int(pixels.shape[0]), int(pixels.shape[1])


_STATES = {"moved": "is not there (moved since recording?)", "changed": "changed since recording (its SHA-256 differs)"}


def _state(path: Path, row: int, sizes: np.ndarray | None, digests: np.ndarray | None) -> str | None:
    """``"moved"``, ``"changed"``, or None: the file the recording read (where it stored a digest)."""
    if not path.is_file():
        return "moved"
    if digests is not None and str(digests[row]):
        if sizes is not None and int(sizes[row]) >= 0 and path.stat().st_size != int(sizes[row]):
            return "changed"
        from unitrec.stimuli.decode import file_sha256

        if file_sha256(path) != str(digests[row]):
            return "changed"
    return None


def _save_thumbnail(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(pixels))
    if max(image.size) > THUMB_SIDE:
        image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
    image.save(path, quality=90)


def rf_map_png(on_off: np.ndarray, names: list[str], path: Path, box: tuple[float, float, float, float] | None) -> None:
    """One unit's maps ``(polarity, h, w)`` side by side: red above the set's mean, blue below,
    each unit scaled to its largest deviation; NaN (no square fell there) grey; the
    theoretical receptive field ``box`` (centre y, centre x, height, width) outlined."""
    from PIL import Image, ImageDraw

    values = np.asarray(on_off, dtype=np.float64)
    scale = np.nanmax(np.abs(values)) if np.isfinite(values).any() else 0.0
    t = np.clip(values / scale, -1, 1) if scale > 0 else np.zeros_like(values)
    rgb = np.empty((*values.shape, 3))
    positive, negative = np.clip(t, 0, 1), np.clip(-t, 0, 1)
    rgb[..., 0] = 1 - negative * 0.8
    rgb[..., 1] = 1 - (positive + negative) * 0.8
    rgb[..., 2] = 1 - positive * 0.8
    rgb[~np.isfinite(values)] = 0.75
    h, w = values.shape[1:]
    zoom = max(1, 128 // max(h, w))
    gap = 4
    canvas = Image.new("RGB", (len(names) * w * zoom + (len(names) - 1) * gap, h * zoom), (255, 255, 255))
    for i in range(len(names)):
        tile = Image.fromarray((rgb[i] * 255).round().astype(np.uint8)).resize((w * zoom, h * zoom),
                                                                             Image.Resampling.NEAREST)
        if box is not None and all(np.isfinite(box)):  # drawn on the tile: a large field is cut at its edge
            cy, cx, bh, bw = box
            ImageDraw.Draw(tile).rectangle([(cx - (bw - 1) / 2) * zoom, (cy - (bh - 1) / 2) * zoom,
                                            (cx + (bw + 1) / 2) * zoom - 1, (cy + (bh + 1) / 2) * zoom - 1],
                                           outline=(40, 40, 40))
        canvas.paste(tile, (i * (w * zoom + gap), 0))
    canvas.save(path)
