"""Figure of receptive-field maps (:mod:`unitrec.analysis.experiments.rf_mapping`): one
panel per unit, its theoretical field outlined.

matplotlib is imported when a figure is asked for (the ``plots`` extra).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from unitrec.analysis.experiments.rf_mapping import IN_X, IN_Y
from unitrec.analysis.figures._common import covers, new_figure, outline_field, receptive_field
from unitrec.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_rf_map"]


def plot_rf_map(
    maps: xr.DataArray,
    units: Sequence[int] | None = None,
    *,
    max_units: int = 16,
    ncols: int = 4,
    outline: bool = True,
    cmap: str | None = None,
) -> Figure:
    """One panel per unit: its map, with the theoretical receptive field outlined.

    Parameters
    ----------
    maps : xarray.DataArray
        Output of :func:`~unitrec.analysis.effective_rf`,
        :func:`~unitrec.analysis.spike_triggered_average` or
        :func:`~unitrec.analysis.sparse_noise_map`: last dims ``input_y, input_x``; every other dim
        (``unit``; ``channel, y, x``; ``polarity``) counts as units.
    units : sequence of int, optional
        Panels to draw, as positions in the other dims flattened in C order;
        default the first ``max_units``.
    max_units, ncols : int
        How many panels when ``units`` is not given, and per row.
    outline : bool
        Draw the theoretical field: a rectangle of ``attrs["rf_size"]`` (rows,
        columns) centred on the unit's ``rf_center_y``, ``rf_center_x``, clipped
        to the image. A field with one side alone on the image (wider or taller
        than it) is shaded, and its panel's title says so: a lone line would not
        show on which side the field lies. A field covering the whole map gets no
        outline, and the title says so.
    cmap : str, optional
        Default ``"magma"`` for maps that are never negative, else ``"RdBu_r"``
        centred on 0.

    Returns
    -------
    matplotlib.figure.Figure
        Panels in input pixels (pixel centres at integers), each with its
        colourbar and title naming the unit; the figure's title names the site and
        the map. The outline is a :class:`matplotlib.patches.Rectangle` in the
        panel's ``patches``.
    """
    if not isinstance(maps, xr.DataArray) or maps.dims[-2:] != (IN_Y, IN_X):
        raise ConfigError("plot_rf_map needs a DataArray whose last dims are (input_y, input_x), as from "
                          "effective_rf, spike_triggered_average or sparse_noise_map")
    dims = maps.dims[:-2]
    shape = tuple(int(maps.sizes[d]) for d in dims)
    total = int(np.prod(shape)) if shape else 1
    if units is None:
        units = list(range(min(total, max_units)))
    units = [int(u) for u in units]
    bad = [u for u in units if not 0 <= u < total]
    if bad or not units:
        raise ConfigError(f"units must be positions in 0..{total - 1}, got {bad or units}")
    values = np.asarray(maps.values, dtype=float)
    signed = bool(np.nanmin(values) < 0) if np.isfinite(values).any() else False
    cols = max(1, min(ncols, len(units)))
    rows = math.ceil(len(units) / cols)
    fig = new_figure(figsize=(3.0 * cols, 2.7 * rows + 0.5), layout="constrained")
    label = str(maps.attrs.get("long_name", maps.name or ""))
    for i, u in enumerate(units):
        where = dict(zip(dims, (int(v) for v in np.unravel_index(u, shape)))) if shape else {}
        one = maps.isel(where)
        image = np.asarray(one.values, dtype=float)
        ax = fig.add_subplot(rows, cols, i + 1)
        if signed:
            top = float(np.nanmax(np.abs(image))) if np.isfinite(image).any() else 1.0
            shown = ax.imshow(image, cmap=cmap or "RdBu_r", vmin=-top or -1, vmax=top or 1,
                              interpolation="nearest")
        else:
            shown = ax.imshow(image, cmap=cmap or "magma", vmin=0, interpolation="nearest")
        fig.colorbar(shown, ax=ax, shrink=0.85, label=label if i % cols == cols - 1 else None)
        rf = receptive_field(one, dict(maps.attrs)) if outline else None
        note = ""
        if rf is not None:
            sides = outline_field(ax, rf, image.shape)
            if sides == 1:
                note = "\nfield shaded: one side on the map"
            elif sides == 0:
                note = "\nfield covers the map" if covers(rf, image.shape) else "\nfield off the map"
        ax.set_title(_unit_title(one, u) + note, fontsize=8)
        if i % cols == 0:
            ax.set_ylabel("input y (px)", fontsize=7)
        if i >= len(units) - cols:
            ax.set_xlabel("input x (px)", fontsize=7)
        ax.tick_params(labelsize=6)
    site = maps.attrs.get("site", "")
    model = maps.attrs.get("model", "")
    head = " · ".join(str(s) for s in (model, site, label) if s)
    fig.suptitle(head + ("\nred: theoretical receptive field (rf_size around rf_center)" if outline else ""),
                 fontsize=9)
    return fig


def _unit_title(one: xr.DataArray, position: int) -> str:
    """``polarity=on, channel=3, y=8, x=8`` from the unit's scalar coords, else its position."""
    parts = [f"{name}={np.asarray(one.coords[name].values).item()}"
             for name in ("polarity", "channel", "y", "x") if name in one.coords and one.coords[name].ndim == 0]
    return ", ".join(parts) if parts else f"unit {position}"
