"""Write parametric stimulus sets (gratings, gratings in apertures, Gabor patches, the
standard grating protocols) to a folder.

Each set is one image per parameter combination plus ``metadata.csv``: a header row,
a first column ``path`` (the image path relative to the folder, POSIX) and one
column per parameter, so a loader can attach the parameters as stimulus coordinates.
The folder and its files are written by ``folder.py``, the images drawn by
``draw.py``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unitrec.errors import ConfigError
from unitrec.stimuli.draw import grating_image
from unitrec.stimuli.folder import (check_room, check_size, csv_cell, file_name, image_suffix, prepare_folder,
                                    write_metadata)

__all__ = ["gabors", "gratings", "protocols"]

#: CF ``units`` and ``long_name`` of the parameters these generators write to metadata.csv.
PARAMETER_UNITS = {
    "orientation": ("degree", "orientation: 0 gives vertical bars, angles turn counter-clockwise"),
    "spatial_frequency": ("1", "spatial frequency in cycles per image"),
    "phase": ("degree", "phase of the sine at the image centre"),
    "contrast": ("1", "Michelson contrast (peak contrast for Gabors)"),
    "sigma": ("1", "Gaussian envelope sigma as a fraction of the image size"),
    # pixels are "1", as the recordings' rf_center_y/x (UDUNITS has no pixel)
    "aperture_diameter": ("1", "aperture diameter in stimulus pixels (inf: full field)"),
    "aperture_y": ("1", "aperture centre: row in stimulus pixels"),
    "aperture_x": ("1", "aperture centre: column in stimulus pixels"),
}

_GRATING_SF = (2, 4, 8)  # gratings' and gabors' default frequencies


def gratings(
    out_dir: str | Path,
    *,
    size: int = 64,
    orientations: Sequence[float] = (0, 30, 60, 90, 120, 150),
    spatial_frequencies: Sequence[float] = _GRATING_SF,
    phases: Sequence[float] = (0, 90, 180, 270),
    contrasts: Sequence[float] = (1.0,),
    apertures: Sequence[float] | None = None,
    aperture_center: tuple[float, float] | None = None,
    background: float = 0.5,
    fmt: str = "png",
    overwrite: bool = False,
) -> Path:
    """Write sinusoidal gratings, full field or in circular apertures, one image per
    parameter combination.

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
    apertures : sequence of float, optional
        Aperture diameters in pixels, > 0: each grating is drawn in a circular
        aperture of each diameter (one image per diameter), the background
        outside. None (the default): full-field gratings.
    aperture_center : (float, float), optional
        ``(row, column)`` of the aperture centre in pixel-index coordinates (pixel
        ``(i, j)`` sits at ``(i, j)``), inside the image; default the image centre
        ``((size - 1) / 2, (size - 1) / 2)``. Only with ``apertures``.
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
        ``out_dir``. With ``apertures``, ``metadata.csv`` has three more columns,
        ``aperture_diameter``, ``aperture_y`` and ``aperture_x`` (pixels), and the
        files a diameter tag, ``grating_ori030_sf04_ph090_c100_d016.png``.

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

    An aperture has a hard edge: a pixel shows the grating if its centre lies
    within ``diameter / 2`` of the aperture centre (inclusive), else the
    background. Inside, the pixels are those of the full-field grating (its phase
    is still referenced to the image centre, not the aperture's). A diameter of at
    least twice the distance from the aperture centre to the farthest pixel (for
    the default centre, the image diagonal ``size · √2``) shows the full field.

    Examples
    --------
    >>> gratings("stim/gratings", orientations=(0, 45, 90))  # doctest: +SKIP
    >>> gratings("stim/sizes", apertures=(4, 8, 16, 32, 91))  # doctest: +SKIP
    """
    size = check_size(size)
    params = {
        "orientation": _numbers("orientations", orientations),
        "spatial_frequency": _frequencies(spatial_frequencies, size),
        "phase": _numbers("phases", phases),
        "contrast": _contrasts(contrasts, background),
    }
    fixed: dict[str, float] = {}
    if apertures is not None:
        params["aperture_diameter"] = _numbers("apertures", apertures, positive=True)
        fixed = dict(zip(("aperture_y", "aperture_x"), _center(aperture_center, size)))
    elif aperture_center is not None:
        raise ConfigError(
            "aperture_center places the apertures: give their diameters too "
            "(apertures=..., --apertures D [D ...])"
        )
    settings = [{**dict(zip(params, values)), **fixed} for values in itertools.product(*params.values())]
    return _write_set(out_dir, "grating", settings, size, background, fmt, overwrite)


def gabors(
    out_dir: str | Path,
    *,
    size: int = 64,
    orientations: Sequence[float] = (0, 30, 60, 90, 120, 150),
    spatial_frequencies: Sequence[float] = _GRATING_SF,
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
        "spatial_frequency": _frequencies(spatial_frequencies, size),
        "phase": _numbers("phases", phases),
        "contrast": _contrasts(contrasts, background),
        "sigma": _numbers("sigmas", sigmas, positive=True),
    }
    settings = [dict(zip(params, values)) for values in itertools.product(*params.values())]
    return _write_set(out_dir, "gabor", settings, size, background, fmt, overwrite)


#: The protocols :func:`protocols` writes, in the order of its rows.
PROTOCOLS = ("phase", "size", "contrast")

_SF_OCTAVES = (2, 2.83, 4, 5.66, 8, 11.31, 16)  # 2**(k/2), k = 2..8, rounded to 2 decimals
_SIZE_SF = (4, 11.31)  # the size and contrast protocols' default frequencies
#: Default aperture diameters as fractions of the image size (the full field, ceil(size·√2), is added).
_DIAMETER_FRACTIONS = (0.0625, 0.11, 0.19, 0.31, 0.53)


def protocols(
    out_dir: str | Path,
    *,
    size: int = 64,
    orientations: Sequence[float] = (0, 22.5, 45, 67.5, 90, 112.5, 135, 157.5),
    spatial_frequencies: Sequence[float] = _SF_OCTAVES,
    phases: Sequence[float] = (0, 45, 90, 135, 180, 225, 270, 315),
    size_spatial_frequencies: Sequence[float] = _SIZE_SF,
    diameters: Sequence[float] | None = None,
    contrast_spatial_frequencies: Sequence[float] = _SIZE_SF,
    contrasts: Sequence[float] = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
    aperture_center: tuple[float, float] | None = None,
    background: float = 0.5,
    fmt: str = "png",
    overwrite: bool = False,
) -> Path:
    """Write the standard grating protocols of in-silico physiology into one folder.

    Three protocols, told apart by the ``protocol`` column of ``metadata.csv``,
    each one crossing every orientation with every phase (so responses can be
    averaged over phase and the preferred orientation found):

    ``"phase"``
        Full-field gratings, ``orientations × spatial_frequencies × phases`` at
        the highest of ``contrasts``: orientation and spatial-frequency tuning and
        the modulation ratio F1/F0 (see :func:`unitrec.analysis.modulation_ratio`).
    ``"size"``
        Gratings in circular apertures of growing diameter at
        ``aperture_center``, ``orientations × size_spatial_frequencies × phases ×
        diameters`` at the highest contrast: size tuning and surround suppression.
    ``"contrast"``
        Full-field gratings, ``orientations × contrast_spatial_frequencies ×
        phases × contrasts``: the contrast-response function.

    Parameters
    ----------
    out_dir, size, background, fmt, overwrite
        As in :func:`gratings` (same geometry and folder rules).
    orientations : sequence of float
        Degrees, as in :func:`gratings`; default 8, every 22.5°.
    spatial_frequencies : sequence of float
        Cycles per image of the phase protocol; default 2 to 16 in half octaves.
    phases : sequence of float
        Degrees, equally spaced over one 360° cycle (the modulation ratio needs
        it); default 8, every 45°.
    size_spatial_frequencies, contrast_spatial_frequencies : sequence of float
        Cycles per image of the size and contrast protocols; default 4 and 11.31.
    diameters : sequence of float, optional
        Aperture diameters in pixels; default
        ``round(size · (0.0625, 0.11, 0.19, 0.31, 0.53))`` and ``ceil(size · √2)``,
        the full field (at 64 px: 4, 7, 12, 20, 34, 91).
    contrasts : sequence of float
        Michelson contrasts of the contrast protocol; the highest is also the
        contrast of the other two. Default 0.02 to 1.
    aperture_center : (float, float), optional
        ``(row, column)`` of the apertures, as in :func:`gratings`; default the
        image centre. Put it on the receptive-field centre of the units to study.

    Returns
    -------
    pathlib.Path
        ``out_dir``, holding the images and ``metadata.csv`` with columns ``path,
        protocol, orientation, spatial_frequency, phase, contrast,
        aperture_diameter, aperture_y, aperture_x``, every cell filled. Full-field
        rows have ``aperture_diameter`` ``inf`` (read back as a float infinity by
        pandas, xarray and HDF5) and the aperture centre of the set. File names end
        in the protocol, e.g. ``grating_ori045_sf04_ph090_c100_d012_size.png``
        (full-field ones have no ``d`` tag).

    Raises
    ------
    ConfigError
        For a bad parameter (also phases that are not equally spaced over 360°),
        or a folder that may not be written (as :func:`gratings`).

    Notes
    -----
    The defaults write 448 + 768 + 768 = 1,984 images (a few seconds, 8 MB at 64 px)
    and suit a 64-pixel input to a ResNet's early stages (``conv1``: receptive
    field 7 px; ``layer1``: 43 px), recorded with ``units: center`` and without
    resize or crop, so that stimulus pixels are input pixels. The default
    diameters scale with ``size``; the default spatial frequencies (cycles per
    image) stop below the Nyquist limit ``size / 2``, and frequencies given at or
    above it are refused (the pixels would show another frequency).

    Images are 8-bit: a contrast ``c`` spans ``255 · c`` grey levels, so at 0.02 the
    sine is a staircase of about 5 levels (±2.55 around the background) and its
    effective contrast is only roughly the nominal one; the ``contrast`` column
    holds the nominal value.

    Examples
    --------
    >>> protocols("stim/protocols")  # doctest: +SKIP
    >>> protocols("stim/p32", size=32, aperture_center=(16, 16))  # doctest: +SKIP
    """
    size = check_size(size)
    oris = _numbers("orientations", orientations)
    phs = _phases_cycle(_numbers("phases", phases))
    full = _numbers("spatial_frequencies", spatial_frequencies, positive=True)
    sizes_sf = _numbers("size_spatial_frequencies", size_spatial_frequencies, positive=True)
    contrast_sf = _numbers("contrast_spatial_frequencies", contrast_spatial_frequencies, positive=True)
    # the default frequencies stop below the Nyquist limit of a small image; given ones are checked
    if spatial_frequencies is _SF_OCTAVES:
        full = [f for f in full if f < size / 2] or [size / 4]
    if size_spatial_frequencies is _SIZE_SF:
        sizes_sf = [f for f in sizes_sf if f < size / 2] or [size / 4]
    if contrast_spatial_frequencies is _SIZE_SF:
        contrast_sf = [f for f in contrast_sf if f < size / 2] or [size / 4]
    if diameters is None:
        diameters = sorted({*(max(1, round(size * f)) for f in _DIAMETER_FRACTIONS),
                            math.ceil(size * math.sqrt(2))})
    dias = _numbers("diameters", diameters, positive=True)
    cons = _contrasts(contrasts, background)
    cy, cx = _center(aperture_center, size)
    top = max(cons)
    settings: list[dict[str, Any]] = []

    def add(protocol: str, sfs: list[float], contrast_values: list[float], diameter_values: list[float]) -> None:
        for ori, sf, ph, c, d in itertools.product(oris, sfs, phs, contrast_values, diameter_values):
            settings.append({
                "protocol": protocol, "orientation": ori, "spatial_frequency": sf, "phase": ph,
                "contrast": c, "aperture_diameter": d, "aperture_y": cy, "aperture_x": cx,
            })

    add("phase", full, [top], [math.inf])  # full field: an aperture without bound
    add("size", sizes_sf, [top], dias)
    add("contrast", contrast_sf, cons, [math.inf])
    return _write_set(out_dir, "grating", settings, size, background, fmt, overwrite)


# -- checking and writing ----------------------------------------------------------


def _write_set(
    out_dir: str | Path,
    kind: str,
    settings: list[dict[str, Any]],
    size: int,
    background: float,
    fmt: str,
    overwrite: bool,
) -> Path:
    """Write one image per setting (all with the same keys, the metadata columns)."""
    size = check_size(size)
    top = max((float(s["spatial_frequency"]) for s in settings), default=0.0)
    if top >= size / 2:
        raise ConfigError(
            f"spatial frequency {top:g} cycles/image is at or above the Nyquist limit of a {size}-pixel "
            f"image ({size / 2:g}): its pixels would show another frequency; use frequencies below "
            f"{size / 2:g} or a larger size"
        )
    suffix = image_suffix(fmt)
    check_room(Path(out_dir), len(settings), size)
    root = prepare_folder(Path(out_dir), overwrite)
    names = list(settings[0])
    rows: list[list[str]] = []
    seen: set[str] = set()
    for setting in settings:
        filename = file_name(kind, setting) + suffix
        if filename in seen:
            raise ConfigError(f"two parameter settings give the same file {filename}")
        seen.add(filename)
        Image.fromarray(grating_image(size, background, setting)).save(root / filename)
        rows.append([filename, *(csv_cell(setting[name]) for name in names)])
    write_metadata(root, ["path", *names], rows)
    return root


def _numbers(
    name: str, values: Iterable[float], *, positive: bool = False
) -> list[float]:
    try:
        if isinstance(values, (str, bytes)):  # "45" would read as 4 and 5
            raise TypeError
        items = list(values)
        if any(isinstance(v, (bool, np.bool_, str, bytes)) for v in items):
            raise TypeError
        numbers = [float(v) for v in items]
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{name} must be a sequence of numbers, got {values!r}"
        ) from exc
    if not numbers:
        raise ConfigError(f"{name} must hold at least one value")
    if not all(np.isfinite(numbers)) or (positive and min(numbers) <= 0):
        rule = "positive finite" if positive else "finite"
        raise ConfigError(f"{name} must hold {rule} numbers, got {items!r}")
    return numbers


def _frequencies(spatial_frequencies: Sequence[float], size: Any) -> list[float]:
    """The frequencies given, checked; the default ones only below the Nyquist limit of `size`."""
    values = _numbers("spatial_frequencies", spatial_frequencies, positive=True)
    if spatial_frequencies is _GRATING_SF:
        values = [f for f in values if f < check_size(size) / 2] or [check_size(size) / 4]
    return values


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


def _center(center: Any, size: int) -> tuple[float, float]:
    """The aperture centre ``(row, column)``, checked; default the image centre."""
    if center is None:
        return (size - 1) / 2, (size - 1) / 2
    try:
        row, col = (float(v) for v in center)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"aperture_center must be (row, column) in pixels, got {center!r}") from exc
    if not (0 <= row <= size - 1 and 0 <= col <= size - 1):
        raise ConfigError(
            f"aperture_center {center!r} lies outside the {size}×{size} image; rows and "
            f"columns run from 0 to {size - 1} (the centre is {(size - 1) / 2:g}, {(size - 1) / 2:g})"
        )
    return row, col


def _phases_cycle(phases: list[float]) -> list[float]:
    """Phases that are equally spaced over one 360° cycle, as the modulation ratio needs."""
    wrapped = np.sort(np.mod(phases, 360.0))
    n = wrapped.size
    steps = np.diff(np.append(wrapped, wrapped[0] + 360.0))
    if n < 3 or len(set(np.round(wrapped, 9))) != len(phases) or not np.allclose(steps, 360.0 / n, atol=1e-6):
        raise ConfigError(
            f"phases must be at least 3 distinct values equally spaced over 360° (e.g. 0, 45, ..., 315) "
            f"so that F1/F0 can be computed; got {phases}"
        )
    return phases


