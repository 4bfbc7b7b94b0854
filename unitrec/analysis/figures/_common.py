"""What the figures share: a matplotlib Figure built without pyplot, axis labels with
units, the units to draw and their names, and a receptive field outlined on an image.

matplotlib is imported when a figure is asked for (the ``plots`` extra).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from unitrec.errors import SelectionError, UnitrecError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_INSTALL = "pip install 'unitrec[plots]'"


def new_figure(**kwargs: Any) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise UnitrecError(f"matplotlib is needed for figures: {_INSTALL}") from exc
    return Figure(**kwargs)


#: CF ``units`` of the parameters unitrec's generators write, for coordinates that come without
#: them (``load_layer`` carries them over; arrays built by hand or by operations that drop
#: attributes do not). The same as
#: ``unitrec.stimuli.generate.PARAMETER_UNITS`` (a test checks), copied because that package
#: imports torch and a figure must not.
PARAMETER_UNITS = {"orientation": "degree", "spatial_frequency": "1", "phase": "degree",
                   "contrast": "1", "sigma": "1", "aperture_diameter": "1", "aperture_y": "1",
                   "aperture_x": "1"}
#: What a dimensionless ("1") parameter counts, where a bare name would leave it open.
_COUNTS = {"spatial_frequency": "cycles/image"}
SYMBOLS = {"degree": "deg", "degrees": "deg", "radian": "rad", "radians": "rad"}


def chosen_units(units: Sequence[int] | None, max_units: int, total: int) -> list[int]:
    """The units to draw: `units` (positions in the flattened unit dims), checked, or the first `max_units`."""
    chosen = list(range(min(max_units, total))) if units is None else list(units)
    for u in chosen:
        if not isinstance(u, (int, np.integer)) or not 0 <= u < total:
            raise SelectionError(f"unit {u!r} is outside 0..{total - 1}")
    return chosen


def parameter_label(name: str, attrs: Mapping[Hashable, Any]) -> str:
    """``orientation (deg)``: a stimulus coordinate's name and its CF ``units``."""
    units = attrs.get("units", PARAMETER_UNITS.get(name))
    text = name.replace("_", " ")
    if units is None or str(units) in ("", "1"):  # a plain number: say what it counts, if known
        return f"{text} ({_COUNTS[name]})" if name in _COUNTS else text
    return f"{text} ({SYMBOLS.get(str(units), str(units))})"


def unit_label(curve: xr.DataArray | xr.Dataset, where: Mapping[Any, Any]) -> str:
    """``channel=3, y=1, x=2`` from the unit's coords, else from its positions."""
    # the unit's identity, not every scalar coordinate it carries
    shown = ("channel", "y", "x", "unit")
    parts = [
        f"{name}={np.asarray(curve.coords[name].values).item()}"  # .values: coords may be dask
        for name in shown
        if name in curve.coords and curve.coords[name].ndim == 0
    ]
    if not parts:
        parts = [f"{dim}={int(i)}" for dim, i in where.items()]
    return ", ".join(parts) if parts else "unit"


def receptive_field(unit: xr.DataArray | xr.Dataset, attrs: Mapping[str, Any]) -> tuple[float, ...] | None:
    """``(centre y, centre x, rows, columns)`` of a selected unit, or None without a centre."""
    size = attrs.get("rf_size")
    if size is None or "rf_center_y" not in unit.coords or "rf_center_x" not in unit.coords:
        return None
    cy, cx = (unit.coords[c].values for c in ("rf_center_y", "rf_center_x"))
    if np.ndim(cy) or np.ndim(cx):
        return None
    size = np.asarray(size, dtype=float).reshape(-1)
    if size.size == 1:
        size = np.repeat(size, 2)
    values = (float(cy), float(cx), float(size[0]), float(size[1]))
    return values if all(np.isfinite(values)) else None


def covers(rf: tuple[float, ...], shape: tuple[int, ...]) -> bool:
    """Whether a receptive field ``(cy, cx, rows, columns)`` holds every pixel of an image (no outline shows)."""
    cy, cx, h, w = rf
    return (cy - h / 2 <= -0.5 and cy + h / 2 >= shape[0] - 0.5
            and cx - w / 2 <= -0.5 and cx + w / 2 >= shape[1] - 0.5)


def _sides_shown(rf: tuple[float, ...], shape: tuple[int, ...]) -> int:
    """How many sides of a receptive field ``(cy, cx, rows, columns)`` lie on the image (0 to 4)."""
    cy, cx, h, w = rf
    top, bottom, left, right = cy - h / 2, cy + h / 2, cx - w / 2, cx + w / 2
    rows = top < shape[0] - 0.5 and bottom > -0.5  # the field spans some rows of the image
    columns = left < shape[1] - 0.5 and right > -0.5
    inside = [(-0.5 < v < shape[0] - 0.5) and columns for v in (top, bottom)]
    inside += [(-0.5 < v < shape[1] - 0.5) and rows for v in (left, right)]
    return sum(inside)


def outline_field(ax: Any, rf: tuple[float, ...], shape: tuple[int, int]) -> int:
    """The receptive field as a rectangle over pixels ``centre ± size / 2``; how many of its sides lie on the image.

    Where one side alone lies on the image (a field wider or taller than the image, or
    mostly beyond it), a lone line would not say on which side the field is: the
    rectangle is then shaded, so the part of the image it covers shows. Where none
    does (the field covers the image, or lies beyond it), nothing is drawn: an edge
    on the image's border would pass for the field's.
    """
    from matplotlib.patches import Rectangle

    cy, cx, h, w = rf
    sides = _sides_shown(rf, shape)
    if sides:
        ax.add_patch(Rectangle((cx - w / 2, cy - h / 2), w, h, fill=sides == 1, facecolor=(1.0, 0.16, 0.16, 0.25),
                               edgecolor="#ff2a2a", linewidth=1.2, label="receptive field"))
    ax.set_xlim(-0.5, shape[1] - 0.5)
    ax.set_ylim(shape[0] - 0.5, -0.5)
    return sides
