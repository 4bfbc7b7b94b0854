"""Figures of matrices: a representational dissimilarity matrix, and a layer × layer
similarity matrix with its values written in.

matplotlib is imported when a figure is asked for (the ``plots`` extra).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from unitrec.analysis._units import STIMULUS
from unitrec.analysis.figures._common import new_figure, parameter_label
from unitrec.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_layer_matrix", "plot_rdm"]


_DISSIMILARITY = {
    "correlation": "dissimilarity: 1 − Pearson r",
    "cosine": "dissimilarity: 1 − cosine similarity",
    "euclidean": "dissimilarity: Euclidean distance",
}


def plot_rdm(
    rdm_da: xr.DataArray, *, by: str | None = None, max_labels: int = 30, cmap: str = "viridis",
    vmin: float | None = None, vmax: float | None = None,
) -> Figure:
    """Heatmap of an RDM with stimulus labels, or grouped by a stimulus coordinate.

    Parameters
    ----------
    rdm_da : xarray.DataArray
        Output of :func:`unitrec.analysis.rdm`.
    by : str, optional
        A stimulus coordinate (``orientation``, ``label``): the stimuli are sorted by
        it (stably), each group is ticked once with its value, and white lines
        separate the groups. Default: ticked by stimulus name.
    max_labels : int
        At most this many tick labels per axis.
    cmap : str
        Colormap name.
    vmin, vmax : float, optional
        Colour scale limits; give the same ones to several RDMs to compare them on
        one scale (default: each RDM's own range).

    Returns
    -------
    matplotlib.figure.Figure
        The matrix axes and its colorbar axes.

    Raises
    ------
    ConfigError
        If `rdm_da` is not an RDM, or `by` is not one of its stimulus coordinates.
    """
    if not isinstance(rdm_da, xr.DataArray) or rdm_da.ndim != 2:
        raise ConfigError("plot_rdm needs a 2-D DataArray from unitrec.analysis.rdm")
    n = rdm_da.shape[0]
    values = np.asarray(rdm_da.values, dtype=float)
    dim = rdm_da.dims[0]
    groups = None
    if by is not None:
        if by not in rdm_da.coords or rdm_da[by].dims != (dim,):
            coords = [str(c) for c, v in rdm_da.coords.items() if v.dims == (dim,) and c != dim]
            raise ConfigError(f"plot_rdm: no stimulus coordinate {by!r}; the RDM has {coords}")
        groups = np.asarray(rdm_da[by].values)
        order = np.argsort(groups, kind="stable")
        values, groups = values[np.ix_(order, order)], groups[order]
    fig = new_figure(figsize=(6, 5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax)
    metric = str(rdm_da.attrs.get("metric", ""))
    fig.colorbar(image, ax=ax, label=_DISSIMILARITY.get(metric, "dissimilarity"))
    if groups is not None and by is not None:
        starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        ends = np.r_[starts[1:], n]
        for edge in starts[1:]:
            ax.axhline(edge - 0.5, color="white", lw=0.8)
            ax.axvline(edge - 0.5, color="white", lw=0.8)
        keep = np.arange(len(starts))[:: max(1, math.ceil(len(starts) / max(1, max_labels)))]
        ticks = (starts[keep] + ends[keep] - 1) / 2
        text = [str(g) for g in groups[starts[keep]]]
        ax.set_xticks(ticks, text, rotation=90 if max(map(len, text)) > 3 else 0, fontsize=8)
        ax.set_yticks(ticks, text, fontsize=8)
        label = f"stimuli grouped by {parameter_label(by, rdm_da[by].attrs)}"
        ax.set_xlabel(label)
        ax.set_ylabel(label)
        return fig
    ax.set_xlabel("stimulus")
    ax.set_ylabel("stimulus")
    labels = (
        np.asarray(rdm_da[STIMULUS].values).astype(str)
        if STIMULUS in rdm_da.coords
        else np.arange(n).astype(str)
    )
    ticks = np.arange(0, n, max(1, math.ceil(n / max(1, max_labels))))
    ax.set_xticks(ticks, labels[ticks], rotation=90, fontsize=6)
    ax.set_yticks(ticks, labels[ticks], fontsize=6)
    return fig



def plot_layer_matrix(
    matrix_da: xr.DataArray, *, fmt: str = ".2f", cmap: str = "magma"
) -> Figure:
    """Layer × layer similarity heatmap with each value written in its cell.

    Parameters
    ----------
    matrix_da : xarray.DataArray
        Output of :func:`unitrec.analysis.layer_similarity` (or any labelled
        square matrix).
    fmt : str
        Format of the annotations.
    cmap : str
        Colormap name.

    Returns
    -------
    matplotlib.figure.Figure
        The matrix axes (with one text per cell) and its colorbar axes.
    """
    if not isinstance(matrix_da, xr.DataArray) or matrix_da.ndim != 2:
        raise ConfigError("plot_layer_matrix needs a 2-D DataArray")
    values = np.asarray(matrix_da.values, dtype=float)
    rows, cols = (
        np.asarray(matrix_da[d].values).astype(str)
        if d in matrix_da.coords
        else np.arange(matrix_da.sizes[d]).astype(str)
        for d in matrix_da.dims
    )
    side = 1.2 + 0.6 * max(values.shape)
    fig = new_figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    low = 0.0 if np.nanmin(values) >= 0 else -1.0  # CKA and RSA live in [0, 1] (RSA down to −1)
    image = ax.imshow(values, cmap=cmap, vmin=low, vmax=1.0)
    label = matrix_da.attrs.get("method", matrix_da.name or "")
    fig.colorbar(image, ax=ax, label=label)
    middle = (low + 1.0) / 2
    for (i, j), value in np.ndenumerate(values):
        color = "black" if value > middle else "white"
        ax.text(
            j, i, format(value, fmt), ha="center", va="center", fontsize=7, color=color
        )
    ax.set_xticks(np.arange(cols.size), cols, rotation=90, fontsize=7)
    ax.set_yticks(np.arange(rows.size), rows, fontsize=7)
    return fig
