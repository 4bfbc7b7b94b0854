"""A generated stimulus set on disk: the folder, its image names and ``metadata.csv``.

A hidden ``.unitrec-generated`` file marks a folder as generated: only such a folder
(or an empty one) is written into, and a set generated before is replaced only when
asked. Sizes and free space are checked before anything is written.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import numpy as np

from unitrec._text import human_size
from unitrec.errors import ConfigError
from unitrec.stimuli.decode import IMAGE_EXTENSIONS

__all__ = ["MARKER", "METADATA", "check_room", "check_size", "csv_cell", "file_name", "image_suffix", "prepare_folder",
           "write_metadata"]


METADATA = "metadata.csv"


MARKER = ".unitrec-generated"  # hidden, so find_stimuli skips it


# the images unitrec's generators name: file_name's, and noise.py's
_OURS = re.compile(r"((grating|gabor)_ori\S*|sparse_y\d+_x\d+_(on|off)(_r\d+)?|white_s\d+_\d+)\.(png|bmp|tiff|jpg)")


_FORMATS = {"png": ".png", "bmp": ".bmp", "tiff": ".tiff", "jpg": ".jpg"}


def image_suffix(fmt: str) -> str:
    """The file suffix of an image format the generators write."""
    if fmt not in _FORMATS:
        raise ConfigError(f"fmt={fmt!r} is not supported; choose one of {', '.join(_FORMATS)}")
    return _FORMATS[fmt]


def write_metadata(root: Path, header: list[str], rows: list[list[Any]]) -> None:
    """``metadata.csv``: the header (``path`` first), then one row per image."""
    with open(root / METADATA, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


_MAX_SIZE = 8192  # pixels a side: a larger stimulus is 200 MB a channel, beyond any network's input


def check_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 2 <= size <= _MAX_SIZE:
        raise ConfigError(f"size must be an integer from 2 to {_MAX_SIZE} (pixels), got {size!r}")
    return int(size)


def check_room(root: Path, n_images: int, size: int) -> None:
    """Refuse a set whose images (at most 3 bytes a pixel, as uncompressed PNG) cannot fit on the disk."""
    import shutil

    need = n_images * (size * size * 3 + 512)
    where = next((p for p in [root, *root.parents] if p.exists()), Path("."))
    free = shutil.disk_usage(where).free
    if need > free:
        raise ConfigError(f"{n_images} images of {size}×{size} px need up to {human_size(need)} and {where} has "
                          f"{human_size(free)} free; generate fewer or smaller images")


def prepare_folder(root: Path, overwrite: bool) -> Path:
    """Check `root` may be written, remove a set generated before, mark the folder.

    The marker is written before the images, so an interrupted run leaves a
    folder that the next run may replace.
    """
    try:
        if root.exists() and not root.is_dir():
            raise ConfigError(f"{root} exists and is not a folder")
    except OSError as exc:  # a path through a file: NotADirectoryError
        raise ConfigError(f"cannot write stimuli to {root}: {exc.strerror or exc}") from None
    marker = root / MARKER
    visible = [p for p in root.iterdir() if not p.name.startswith(".")] if root.is_dir() else []
    if visible:
        # sets written before the marker existed hold only metadata.csv and our images
        legacy = all(p.name == METADATA or _OURS.fullmatch(p.name) for p in visible)
        if not (marker.is_file() or legacy):
            raise ConfigError(
                f"{root} holds files that unitrec did not generate; generated stimuli go to "
                "an empty folder or one unitrec generated before: choose another path"
            )
        if not overwrite:
            raise ConfigError(
                f"{root} holds a stimulus set generated earlier; to replace it pass --overwrite "
                "(command line) or overwrite=True (Python), or choose an empty folder"
            )
        strangers = sorted(p.name for p in visible if p.suffix.lower() in IMAGE_EXTENSIONS
                           and not _OURS.fullmatch(p.name))
        if strangers:  # they would be recorded with the set, without a row in metadata.csv
            raise ConfigError(
                f"{root} holds images that unitrec did not generate ({', '.join(strangers[:3])}"
                f"{', ...' if len(strangers) > 3 else ''}); move them or choose another folder"
            )
        for p in visible:
            if (p.name == METADATA or _OURS.fullmatch(p.name)) and p.is_file():
                p.unlink()
    try:
        root.mkdir(parents=True, exist_ok=True)
        marker.write_text("written by unitrec.stimuli: this folder holds a generated stimulus set\n",
                          encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write stimuli to {root}: {exc.strerror or exc}") from None
    return root


def file_name(kind: str, setting: dict[str, Any]) -> str:
    parts = [
        kind,
        "ori" + _tag(setting["orientation"], 3),
        "sf" + _tag(setting["spatial_frequency"], 2),
        "ph" + _tag(setting["phase"], 3),
        "c" + _tag(setting["contrast"] * 100, 3),
    ]
    if "sigma" in setting:
        parts.append("s" + _tag(setting["sigma"] * 100, 3))
    diameter = setting.get("aperture_diameter")
    if diameter is not None and np.isfinite(diameter):
        parts.append("d" + _tag(diameter, 3))
    if "protocol" in setting:
        parts.append(setting["protocol"])
    return "_".join(parts)


def _tag(value: float, width: int) -> str:
    """``30 -> '030'``, ``22.5 -> '022p5'``, ``-90 -> 'm090'``."""
    value = round(value, 6)  # 0.145 * 100 must not print as 14.499999999999998
    sign = "m" if value < 0 else ""
    value = abs(value)
    whole = int(value)
    text = f"{whole:0{width}d}"
    if value != whole:
        text += "p" + f"{value:.6f}".split(".")[1].rstrip("0")
    return sign + text


def _number_text(value: float) -> str:
    """Integers as integers, other numbers as the shortest float text."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def csv_cell(value: Any) -> str:
    """A metadata cell: text as it is, infinity as ``inf``, numbers as :func:`_number_text`."""
    if isinstance(value, str):
        return value
    return ("inf" if value > 0 else "-inf") if np.isinf(value) else _number_text(value)
