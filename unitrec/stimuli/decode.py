"""Find stimulus images in a folder and decode each one to 8-bit RGB.

Every image, whatever its file format, bit depth, colour space or alpha, leaves
:func:`load_rgb` as a fully loaded 8-bit ``"RGB"`` :class:`PIL.Image.Image`, so
later stages (preprocessing, the recorder) see a single pixel format.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from numbers import Integral
from pathlib import PurePath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from unitrec.errors import ConfigError, StimulusError, UnitrecWarning

__all__ = ["IMAGE_EXTENSIONS", "check_background", "file_sha256", "find_stimuli", "load_rgb"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".bmp", ".gif", ".jfif", ".jpeg", ".jpg", ".pbm", ".pgm", ".png", ".ppm",
     ".tif", ".tiff", ".webp"}
)


def find_stimuli(root: str | os.PathLike[str]) -> list[str]:
    """List the image files under a stimulus folder.

    Parameters
    ----------
    root : str or os.PathLike
        Folder to search, recursively. Hidden files and folders (name starting
        with ``"."``) are skipped. Symlinked files are listed; symlinked folders
        are not entered, so a link loop cannot make the search endless. Links
        that lead to no file (dangling, or looping back on themselves) are left
        out and named in one warning.

    Returns
    -------
    list of str
        Paths relative to `root`, with ``/`` separators on every platform,
        whose lower-cased extension is in :data:`IMAGE_EXTENSIONS`, sorted as
        plain strings so the order is the same on every machine.

    Raises
    ------
    StimulusError
        If `root` is not an existing folder, holds no image file, or an image's
        path is not valid UTF-8 (it could not be stored as a label).

    Examples
    --------
    >>> find_stimuli("stimuli")  # doctest: +SKIP
    ['a/cat.png', 'b/c/cat.png', 'b/dog.JPG']
    """
    root_str = os.fspath(root)
    if not os.path.isdir(root_str):
        why = ""
        if os.path.exists(root_str):
            why = " (it is a file; give the folder that holds the images)"
        raise StimulusError(f"stimulus folder not found: {root_str}{why}")
    found: list[str] = []
    broken: list[str] = []  # links to nothing, or to themselves
    n_other = 0
    for dirpath, dirnames, filenames in os.walk(root_str):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # prune in place
        for name in filenames:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                full = os.path.join(dirpath, name)
                rel = PurePath(os.path.relpath(full, root_str)).as_posix()
                (found if os.path.isfile(full) else broken).append(rel)
            else:
                n_other += 1
    if broken:
        warnings.warn(
            f"left out {len(broken)} broken links in {root_str} (they lead to no file): "
            f"{_some([_shown(b) for b in sorted(broken)])}", UnitrecWarning, stacklevel=2,
        )
    found.sort()
    _check_utf8(root_str, found)
    if not found:
        raise StimulusError(
            f"no images in stimulus folder {root_str} "
            f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))}; found {n_other} other files)"
        )
    return found


def _some(names: list[str], limit: int = 5) -> str:
    """``"a, b, c"``, or the first `limit` names and how many more."""
    more = len(names) - limit
    return ", ".join(names[:limit]) + (f" and {more} more" if more > 0 else "")


def _shown(name: str) -> str:
    """A file name as printable UTF-8: bytes that are not UTF-8 become ``\\xe9``."""
    try:  # os.listdir gives such bytes as surrogate escapes (U+DC80..U+DCFF)
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # some other lone surrogate
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_utf8(root: str, paths: list[str]) -> None:
    """Refuse paths that are not UTF-8: the file stores them as UTF-8 labels."""
    bad = []
    for rel in paths:
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            bad.append(_shown(rel))
    if bad:
        raise StimulusError(
            f"stimulus file names are not UTF-8: {_some(bad)} in {_shown(root)}; "
            "rename them to UTF-8 names, then run again"
        )


def load_rgb(
    path: str | os.PathLike[str],
    background: Sequence[int] = (255, 255, 255),
) -> Image.Image:
    """Decode one image file to a fully loaded 8-bit RGB image.

    The EXIF orientation tag is applied. Conversion rules, by source mode:

    * 16-bit grey (``"I;16"``, ``"I;16B"``, ``"I;16L"``) and ``"I"`` are taken
      as 0..65535 and scaled, not clipped: ``round(v / 257)``; ``"I"`` values
      outside 0..65535 are clipped first.
    * 32-bit float ``"F"``: if the maximum is at most 1.0 the image is taken as
      0..1 and multiplied by 255, otherwise it is clipped to 0..255; NaN
      becomes 0.
    * 16-bit RGB(A) PNGs arrive from PIL already reduced to 8 bits by the high
      byte, ``v // 256``: exact for ``v = 257 * k``, within 1 of ``v / 257``
      otherwise.
    * Images with alpha (``"LA"``, ``"La"``, ``"PA"``, ``"RGBA"``, ``"RGBa"``,
      or a ``transparency`` entry) are composited over `background`:
      ``round(a / 255 * c + (1 - a / 255) * bg)``. Animated images give their
      first frame. Every other mode goes through :meth:`PIL.Image.Image.convert`.

    Parameters
    ----------
    path : str or os.PathLike
        Image file to read.
    background : sequence of 3 int, default (255, 255, 255)
        RGB colour, each 0..255, shown through transparent pixels.

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``, pixel data loaded, no file left open.

    Raises
    ------
    StimulusError
        If the file cannot be read or decoded (empty, truncated, not an image);
        the one-line message names the file and the reason.
    ConfigError
        If `background` is not three integers in 0..255.
    """
    bg = check_background(background)
    shown = os.fspath(path)
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now, so truncation raises here and the file closes
            image = ImageOps.exif_transpose(opened)  # a loaded copy, safe after close
        return _to_rgb(image, bg)
    except UnidentifiedImageError as exc:
        cause: Exception = exc
        empty = os.path.isfile(shown) and os.path.getsize(shown) == 0
        reason = "file is empty" if empty else "not a recognised image format"
    except OSError as exc:
        cause, reason = exc, exc.strerror or str(exc)  # strerror avoids repeating the path
    # PIL's format plugins raise many exception types on corrupt bytes
    # (SyntaxError, ValueError, struct.error, zlib.error ...); all mean "bad file".
    except Exception as exc:  # noqa: BLE001
        cause, reason = exc, f"{type(exc).__name__}: {exc}"
    reason = " ".join(reason.split()) or "unknown error"  # always one line
    raise StimulusError(f"cannot decode stimulus {shown}: {reason}") from cause


def check_background(background: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(background) if isinstance(background, Sequence) else ()
    if len(values) != 3 or not all(
        isinstance(v, Integral) and not isinstance(v, bool) and 0 <= v <= 255 for v in values
    ):
        raise ConfigError(
            f"background must be three integers in 0..255 (an RGB colour), got {background!r}"
        )
    return (int(values[0]), int(values[1]), int(values[2]))


def _to_rgb(image: Image.Image, bg: tuple[int, int, int]) -> Image.Image:
    """Convert a loaded image of any PIL mode to 8-bit RGB over `bg`."""
    mode = image.mode
    if mode == "I" or mode.startswith("I;16"):
        values: np.ndarray = np.asarray(image.convert("I"), dtype=np.int64)
        # PIL's convert("L") would clip at 255; scale the full 16-bit range instead.
        grey = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
        trns = image.info.get("transparency")
        if isinstance(trns, Integral):  # 16-bit PNG tRNS: one fully transparent value
            alpha: np.ndarray = np.where(values == trns, 0, 255).astype(np.uint8)
            image = Image.fromarray(np.stack([grey, alpha], axis=-1))  # LA
        else:
            image = Image.fromarray(grey)  # L
    elif mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        if values.size and values.max() <= 1.0:
            values = values * 255.0
        image = Image.fromarray(np.rint(np.clip(values, 0, 255)).astype(np.uint8))
    elif mode == "La":
        # PIL cannot convert premultiplied "La"; widen to "RGBa", which it can.
        lum, lum_alpha = image.split()
        image = Image.merge("RGBa", (lum, lum, lum, lum_alpha))

    if not image.has_transparency_data:
        return image.convert("RGB")
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
    alpha = rgba[..., 3:] / 255.0
    out = alpha * rgba[..., :3] + (1.0 - alpha) * np.asarray(bg, dtype=np.float64)
    return Image.fromarray(np.rint(out).astype(np.uint8))  # RGB


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for piece in iter(lambda: fh.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()
