"""Write noise stimulus sets for receptive-field mapping: sparse noise and white noise.

Same folder rules as :mod:`unitrec.stimuli.generate`: one image per stimulus plus
``metadata.csv`` (first column ``path``, one column per parameter), a hidden
``.unitrec-generated`` marker, and only an empty or generated folder is written into.
Images are grey (three equal channels), 8-bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unitrec.errors import ConfigError
from unitrec.stimuli.draw import to_rgb8
from unitrec.stimuli.folder import check_room, check_size, image_suffix, prepare_folder, write_metadata

__all__ = ["sparse_noise", "white_noise"]

_POLARITY = {"on": 1, "off": -1}
_KINDS = ("binary", "gaussian")
#: A Gaussian element's standard deviation is contrast / _SIGMAS_PER_CONTRAST: ±3 σ fills the range.
_SIGMAS_PER_CONTRAST = 6.0


def sparse_noise(
    out_dir: str | Path,
    *,
    size: int = 64,
    grid: int | None = None,
    polarities: Sequence[str] = ("on", "off"),
    background: float = 0.5,
    contrast: float = 1.0,
    repeats: int = 1,
    fmt: str = "png",
    overwrite: bool = False,
) -> Path:
    """Write sparse noise: one bright or dark square on a uniform background per image.

    The squares tile the image: one image per square position (rows and columns at
    ``0, grid, 2·grid, ...``), per polarity, per repeat.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Folder to write into, with the rules of :func:`unitrec.stimuli.gratings`.
    size : int
        Width and height in pixels, >= 2.
    grid : int, optional
        Side of the square in pixels; it must divide ``size``. Default
        ``max(1, size // 16)`` (4 pixels at 64).
    polarities : sequence of {"on", "off"}
        ``"on"``: a square of luminance ``background + contrast / 2``; ``"off"``:
        ``background - contrast / 2``.
    background : float
        Luminance of everything but the square, in [0, 1].
    contrast : float
        In (0, 1]; both polarities must stay within [0, 1].
    repeats : int
        Copies of each image (files ``..._r0``, ``..._r1``; for models with noise).
    fmt : {"png", "bmp", "tiff", "jpg"}
        Image format ("jpg" is lossy).
    overwrite : bool
        Replace a set generated earlier in ``out_dir``.

    Returns
    -------
    pathlib.Path
        ``out_dir``, holding ``sparse_y012_x032_on.png``-style files (top-left corner
        of the square) and ``metadata.csv`` with columns ``path, noise`` (``sparse``),
        ``square_y, square_x`` (the square's centre in pixel-index coordinates:
        ``top + (grid - 1) / 2``), ``square_size``, ``polarity`` (+1 on, −1 off),
        ``background``, ``contrast`` and ``repeat``.

    Raises
    ------
    ConfigError
        For a bad parameter or an ``out_dir`` that may not be written.

    Examples
    --------
    >>> sparse_noise("stim/sparse", size=64, grid=4)  # doctest: +SKIP
    """
    size = check_size(size)
    grid = max(1, size // 16) if grid is None else _int("grid", grid, 1)
    if size % grid:
        raise ConfigError(f"grid={grid} must divide size={size} so the squares tile the image; "
                          f"choose one of {', '.join(str(d) for d in range(1, size + 1) if size % d == 0)}")
    repeats = _int("repeats", repeats, 1)
    if isinstance(polarities, str) or not polarities or any(p not in _POLARITY for p in polarities):
        raise ConfigError(f"polarities must be a non-empty list of 'on' and 'off', got {polarities!r}")
    if len(set(polarities)) != len(polarities):
        raise ConfigError(f"polarities lists one twice: {list(polarities)!r}")
    background = _fraction("background", background, low_open=False)
    contrast = _fraction("contrast", contrast)
    for p in polarities:
        if not 0 <= background + _POLARITY[p] * contrast / 2 <= 1:
            raise ConfigError(f"contrast {contrast:g} around background {background:g} leaves [0, 1] for "
                              f"'{p}' squares; use contrast <= {2 * min(background, 1 - background):g}")
    suffix = image_suffix(fmt)
    root = prepare_folder(Path(out_dir), overwrite)
    rows: list[list[Any]] = []
    for top in range(0, size, grid):
        for left in range(0, size, grid):
            for p in polarities:
                lum = np.full((size, size), background)
                lum[top:top + grid, left:left + grid] = background + _POLARITY[p] * contrast / 2
                image = Image.fromarray(to_rgb8(lum))
                for r in range(repeats):
                    name = f"sparse_y{top:03d}_x{left:03d}_{p}" + (f"_r{r}" if repeats > 1 else "") + suffix
                    image.save(root / name)
                    centre = (grid - 1) / 2
                    rows.append([name, "sparse", _num(top + centre), _num(left + centre), grid, _POLARITY[p],
                                 _num(background), _num(contrast), r])
    write_metadata(root, ["path", "noise", "square_y", "square_x", "square_size", "polarity",
                           "background", "contrast", "repeat"], rows)
    return root


def white_noise(
    out_dir: str | Path,
    *,
    size: int = 64,
    n: int = 2000,
    block: int = 1,
    seed: int = 0,
    contrast: float = 1.0,
    kind: str = "binary",
    fmt: str = "png",
    overwrite: bool = False,
) -> Path:
    """Write white-noise images: independent random luminance per block of pixels.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Folder to write into, with the rules of :func:`unitrec.stimuli.gratings`.
    size : int
        Width and height in pixels, >= 2.
    n : int
        Number of images, >= 1.
    block : int
        Side in pixels of one noise element (a square of equal pixels); a block
        that does not divide ``size`` is cut at the right and bottom edges.
    seed : int
        Image ``i`` is drawn from ``numpy.random.default_rng([seed, i])``, so any
        image can be made again from ``(seed, i)`` alone, whatever ``n`` is.
    contrast : float
        In (0, 1]. ``"binary"``: each element is ``0.5 ± contrast / 2`` with
        probability 1/2. ``"gaussian"``: ``0.5 + (contrast / 6) · z``, z standard
        normal, clipped to [0, 1] (±3 σ fill the range; 0.27 % of elements clip).
    kind : {"binary", "gaussian"}
        The element distribution.
    fmt : {"png", "bmp", "tiff", "jpg"}
        Image format ("jpg" is lossy and correlates neighbouring pixels: avoid it here).
    overwrite : bool
        Replace a set generated earlier in ``out_dir``.

    Returns
    -------
    pathlib.Path
        ``out_dir``, holding ``white_s0_00017.png``-style files (seed, image index)
        and ``metadata.csv`` with columns ``path, noise`` (``white``), ``kind``,
        ``seed``, ``image_index``, ``block``, ``contrast``.

    Raises
    ------
    ConfigError
        For a bad parameter or an ``out_dir`` that may not be written.

    Examples
    --------
    >>> white_noise("stim/noise", size=32, n=4000, seed=1)  # doctest: +SKIP
    """
    size = check_size(size)
    n = _int("n", n, 1)
    block = _int("block", block, 1)
    if block > size:
        raise ConfigError(f"block={block} is larger than the image (size={size}); use block <= size")
    seed = _int("seed", seed, 0)
    contrast = _fraction("contrast", contrast)
    if kind not in _KINDS:
        raise ConfigError(f"kind={kind!r} is not supported; choose one of {', '.join(_KINDS)}")
    suffix = image_suffix(fmt)
    check_room(Path(out_dir), n, size)
    root = prepare_folder(Path(out_dir), overwrite)
    width = max(5, len(str(n - 1)))
    rows: list[list[Any]] = []
    for i in range(n):
        name = f"white_s{seed}_{i:0{width}d}{suffix}"
        Image.fromarray(to_rgb8(white_luminance(size, seed, i, block=block, contrast=contrast,
                                                 kind=kind))).save(root / name)
        rows.append([name, "white", kind, seed, i, block, _num(contrast)])
    write_metadata(root, ["path", "noise", "kind", "seed", "image_index", "block", "contrast"], rows)
    return root


def white_luminance(size: int, seed: int, index: int, *, block: int = 1, contrast: float = 1.0,
                    kind: str = "binary") -> np.ndarray:
    """Luminance in [0, 1], ``(size, size)``, of image `index` of a :func:`white_noise` set.

    Written to file as ``round(255 · L)``.
    """
    rng = np.random.default_rng([seed, index])
    side = -(-size // block)
    if kind == "binary":
        elements = 0.5 + contrast / 2 * (2.0 * rng.integers(0, 2, size=(side, side)) - 1.0)
    else:
        elements = np.clip(0.5 + contrast / _SIGMAS_PER_CONTRAST * rng.standard_normal((side, side)), 0, 1)
    return np.repeat(np.repeat(elements, block, axis=0), block, axis=1)[:size, :size]


# -- checking and writing ----------------------------------------------------------


def _int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _fraction(name: str, value: Any, *, low_open: bool = True) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in {'(0' if low_open else '[0'}, 1], got {value!r}") from None
    if not (0 < number <= 1 if low_open else 0 <= number <= 1):
        raise ConfigError(f"{name} must be in {'(0' if low_open else '[0'}, 1], got {value!r}")
    return number


def _num(value: float) -> int | float:
    """Integers as integers (so the CSV reads ``12``, not ``12.0``)."""
    return int(value) if float(value).is_integer() else float(value)
