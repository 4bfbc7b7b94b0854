"""Write parametric stimulus sets (sinusoidal gratings, Gabor patches) to a folder.

Each set is one image per parameter combination plus ``metadata.csv``: a header row,
a first column ``path`` (the image path relative to the folder, POSIX) and one
column per parameter, so a loader can attach the parameters as stimulus coordinates.
A hidden ``.unitrec-generated`` file marks the folder as generated: only such a
folder (or an empty one) is written into.
"""

from __future__ import annotations

import csv
import itertools
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from unitrec.errors import ConfigError

__all__ = ["gabors", "gratings"]

#: CF ``units`` and ``long_name`` of the parameters these generators write to metadata.csv.
PARAMETER_UNITS = {
    "orientation": ("degree", "orientation: 0 gives vertical bars, angles turn counter-clockwise"),
    "spatial_frequency": ("1", "spatial frequency in cycles per image"),
    "phase": ("degree", "phase of the sine at the image centre"),
    "contrast": ("1", "Michelson contrast (peak contrast for Gabors)"),
    "sigma": ("1", "Gaussian envelope sigma as a fraction of the image size"),
}

METADATA = "metadata.csv"
MARKER = ".unitrec-generated"  # hidden, so find_stimuli skips it
_OURS = re.compile(r"(grating|gabor)_ori\S*\.(png|bmp|tiff|jpg)")  # the images _filename names
_FORMATS = {"png": ".png", "bmp": ".bmp", "tiff": ".tiff", "jpg": ".jpg"}


def gratings(
    out_dir: str | Path,
    *,
    size: int = 64,
    orientations: Sequence[float] = (0, 30, 60, 90, 120, 150),
    spatial_frequencies: Sequence[float] = (2, 4, 8),
    phases: Sequence[float] = (0, 90, 180, 270),
    contrasts: Sequence[float] = (1.0,),
    background: float = 0.5,
    fmt: str = "png",
    overwrite: bool = False,
) -> Path:
    """Write full-field sinusoidal gratings, one image per parameter combination.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Folder to write into; created if missing. It must be empty (hidden files
        aside) or hold a set generated earlier, which ``overwrite`` replaces.
    size : int
        Width and height in pixels.
    orientations : sequence of float
        Degrees. 0° gives vertical bars (luminance varies along x only); angles
        turn the bars counter-clockwise on screen, so 90° gives horizontal bars and
        45° bars running from top-left to bottom-right. Equivalently the luminance
        gradient points at the angle, counter-clockwise from +x with y up.
    spatial_frequencies : sequence of float
        Cycles per image width (along the gradient), > 0.
    phases : sequence of float
        Degrees; the phase of the sine at the image centre (0: the centre sits at
        the background level on a rising edge; 90: at the peak).
    contrasts : sequence of float
        Michelson contrast in (0, 1]: luminance spans
        ``background ± contrast / 2``, which must stay within [0, 1].
    background : float
        Mean luminance in [0, 1].
    fmt : {"png", "bmp", "tiff", "jpg"}
        Image format ("jpg" is lossy and changes the exact values).
    overwrite : bool
        Replace a set generated earlier in ``out_dir`` (recognised by the hidden
        file ``.unitrec-generated``): its images and ``metadata.csv`` are removed,
        other files are left alone. A folder holding files that unitrec did not
        generate is never written into.

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    ConfigError
        For a bad parameter, a generated ``out_dir`` without ``overwrite``, or an
        ``out_dir`` holding files that unitrec did not generate.

    Notes
    -----
    Pixel ``(row, col)`` sits at ``x = (col + 0.5) / size - 0.5`` and
    ``y = 0.5 - (row + 0.5) / size`` (y up, origin at the centre); the luminance is
    ``L = background + contrast / 2 · sin(2π f (x cos θ + y sin θ) + φ)``, written
    as 8-bit RGB (three equal channels) ``round(255 · L)``.

    Files are named ``grating_ori030_sf04_ph090_c100.png`` (orientation and phase
    in degrees, spatial frequency in cycles per image, contrast in percent;
    non-integer values get ``p`` for the decimal point, e.g. ``ori022p5``).

    Examples
    --------
    >>> gratings("stim/gratings", orientations=(0, 45, 90))  # doctest: +SKIP
    """
    params = {
        "orientation": _numbers("orientations", orientations),
        "spatial_frequency": _numbers(
            "spatial_frequencies", spatial_frequencies, positive=True
        ),
        "phase": _numbers("phases", phases),
        "contrast": _contrasts(contrasts, background),
    }
    return _write_set(out_dir, "grating", params, size, background, fmt, overwrite)


def gabors(
    out_dir: str | Path,
    *,
    size: int = 64,
    orientations: Sequence[float] = (0, 30, 60, 90, 120, 150),
    spatial_frequencies: Sequence[float] = (2, 4, 8),
    phases: Sequence[float] = (0, 90, 180, 270),
    sigmas: Sequence[float] = (0.125,),
    contrasts: Sequence[float] = (1.0,),
    background: float = 0.5,
    fmt: str = "png",
    overwrite: bool = False,
) -> Path:
    """Write Gabor patches (gratings under a Gaussian envelope) on a uniform background.

    Parameters
    ----------
    out_dir, size, orientations, spatial_frequencies, phases, contrasts, background, fmt, overwrite
        As in :func:`gratings` (same orientation convention, phase reference and
        folder rules).
    sigmas : sequence of float
        Standard deviation of the circular Gaussian envelope centred on the image,
        as a fraction of the image size (0.125 with ``size=64`` is 8 pixels), > 0.

    Returns
    -------
    pathlib.Path
        ``out_dir``, holding ``gabor_ori030_sf04_ph090_c100_s012p5.png``-style files
        (``s`` is sigma in percent of the image size) and ``metadata.csv`` with an
        extra last column ``sigma`` (fraction of the image size).

    Raises
    ------
    ConfigError
        For a bad parameter, a generated ``out_dir`` without ``overwrite``, or an
        ``out_dir`` holding files that unitrec did not generate.

    Notes
    -----
    With ``x, y, σ`` in units of the image size (see :func:`gratings`),
    ``L = background + contrast / 2 · exp(-(x² + y²) / (2 σ²))
    · sin(2π f (x cos θ + y sin θ) + φ)``; far from the centre the image is the
    background. ``contrast`` is the peak contrast at the envelope's centre.
    """
    params = {
        "orientation": _numbers("orientations", orientations),
        "spatial_frequency": _numbers(
            "spatial_frequencies", spatial_frequencies, positive=True
        ),
        "phase": _numbers("phases", phases),
        "contrast": _contrasts(contrasts, background),
        "sigma": _numbers("sigmas", sigmas, positive=True),
    }
    return _write_set(out_dir, "gabor", params, size, background, fmt, overwrite)


# -- drawing ---------------------------------------------------------------------


def _luminance(
    size: int,
    orientation: float,
    spatial_frequency: float,
    phase: float,
    contrast: float,
    background: float,
    sigma: float | None = None,
) -> np.ndarray:
    """Luminance in [0, 1] of one grating or Gabor, shape ``(size, size)``."""
    centres = (np.arange(size) + 0.5) / size - 0.5
    x = centres[None, :]
    y = -centres[:, None]  # rows go down, y goes up
    theta = np.deg2rad(orientation)
    carrier = np.sin(
        2 * np.pi * spatial_frequency * (x * np.cos(theta) + y * np.sin(theta))
        + np.deg2rad(phase)
    )
    if sigma is not None:
        carrier = carrier * np.exp(-(x**2 + y**2) / (2 * sigma**2))
    return np.clip(background + contrast / 2 * carrier, 0.0, 1.0)


def _to_rgb8(luminance: np.ndarray) -> np.ndarray:
    grey = np.round(luminance * 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


# -- checking and writing ----------------------------------------------------------


def _write_set(
    out_dir: str | Path,
    kind: str,
    params: dict[str, list[float]],
    size: int,
    background: float,
    fmt: str,
    overwrite: bool,
) -> Path:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2:
        raise ConfigError(f"size must be an integer >= 2 (pixels), got {size!r}")
    if fmt not in _FORMATS:
        allowed = ", ".join(_FORMATS)
        raise ConfigError(f"fmt={fmt!r} is not supported; choose one of {allowed}")
    root = _prepare(Path(out_dir), overwrite)
    names = list(params)
    rows: list[list[str]] = []
    seen: set[str] = set()
    for values in itertools.product(*params.values()):
        setting = dict(zip(names, values))
        filename = _filename(kind, setting) + _FORMATS[fmt]
        if filename in seen:
            raise ConfigError(f"two parameter settings give the same file {filename}")
        seen.add(filename)
        image = _to_rgb8(_luminance(int(size), background=background, **setting))
        Image.fromarray(image).save(root / filename)
        rows.append([filename, *(_number_text(v) for v in values)])
    with open(root / METADATA, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", *names])
        writer.writerows(rows)
    return root


def _prepare(root: Path, overwrite: bool) -> Path:
    """Check `root` may be written, remove a set generated before, mark the folder.

    The marker is written before the images, so an interrupted run leaves a
    folder that the next run may replace.
    """
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} exists and is not a folder")
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
        for p in visible:
            if (p.name == METADATA or _OURS.fullmatch(p.name)) and p.is_file():
                p.unlink()
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text("written by unitrec.stimuli: this folder holds a generated stimulus set\n",
                      encoding="utf-8")
    return root


def _numbers(
    name: str, values: Iterable[float], *, positive: bool = False
) -> list[float]:
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{name} must be a sequence of numbers, got {values!r}"
        ) from exc
    if not numbers:
        raise ConfigError(f"{name} must hold at least one value")
    if not all(np.isfinite(numbers)) or (positive and min(numbers) <= 0):
        rule = "positive finite" if positive else "finite"
        raise ConfigError(f"{name} must hold {rule} numbers, got {list(values)!r}")
    return numbers


def _contrasts(contrasts: Iterable[float], background: float) -> list[float]:
    values = _numbers("contrasts", contrasts, positive=True)
    try:
        background = float(background)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"background must be a number in [0, 1], got {background!r}"
        ) from exc
    if not 0 <= background <= 1:
        raise ConfigError(f"background must be in [0, 1], got {background!r}")
    for c in values:
        if background - c / 2 < -1e-12 or background + c / 2 > 1 + 1e-12:
            raise ConfigError(
                f"contrast {c:g} around background {background:g} leaves [0, 1]; "
                f"use contrasts <= {2 * min(background, 1 - background):g}"
            )
    return values


def _filename(kind: str, setting: dict[str, float]) -> str:
    parts = [
        kind,
        "ori" + _tag(setting["orientation"], 3),
        "sf" + _tag(setting["spatial_frequency"], 2),
        "ph" + _tag(setting["phase"], 3),
        "c" + _tag(setting["contrast"] * 100, 3),
    ]
    if "sigma" in setting:
        parts.append("s" + _tag(setting["sigma"] * 100, 3))
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
