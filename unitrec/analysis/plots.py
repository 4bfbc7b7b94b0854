"""Figures: tuning curves, RDMs, preferred-stimulus montages, layer matrices.

matplotlib is optional (the ``plots`` extra): it is imported when a figure is
asked for. Every function builds a :class:`matplotlib.figure.Figure` directly,
without pyplot's global state, so it works under any backend and in threads; save
it with ``fig.savefig(path)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from unitrec.analysis._units import STIMULUS, UNIT, as_population
from unitrec.analysis.preferred import top_stimuli
from unitrec.errors import ConfigError, SelectionError, StimulusError, UnitrecError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_layer_matrix", "plot_montage", "plot_rdm", "plot_tuning_curves"]

_INSTALL = "pip install 'unitrec[plots]'"


def _new_figure(**kwargs: Any) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise UnitrecError(f"matplotlib is needed for figures: {_INSTALL}") from exc
    return Figure(**kwargs)


def plot_tuning_curves(
    tuning_ds: xr.Dataset,
    units: Sequence[int] | None = None,
    *,
    max_units: int = 16,
    ncols: int = 4,
) -> Figure:
    """Small multiples of tuning curves, mean ± SEM, one panel per unit.

    A numeric parameter (orientation) is drawn as a curve; a categorical one (a
    class ``label``) as one bar per category.

    Parameters
    ----------
    tuning_ds : xarray.Dataset
        Output of :func:`unitrec.analysis.tuning_curves`.
    units : sequence of int, optional
        Units to draw, as positions in the flattened (C-order) unit dims; default
        the first ``max_units``.
    max_units : int
        How many units to draw when ``units`` is not given.
    ncols : int
        Panels per row.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per unit; the dashed line (or the orange bar) marks the preferred value.

    Raises
    ------
    SelectionError
        If a unit position is out of range.
    """
    mean, sem = tuning_ds["mean"], tuning_ds["sem"]
    by = tuning_ds.attrs.get("by") or next(
        d for d in mean.dims if d not in tuning_ds["preferred"].dims
    )
    unit_dims = [d for d in mean.dims if d != by]
    shape = tuple(mean.sizes[d] for d in unit_dims)
    total = int(np.prod(shape)) if shape else 1
    chosen = list(range(min(max_units, total))) if units is None else list(units)
    for u in chosen:
        if not isinstance(u, (int, np.integer)) or not 0 <= u < total:
            raise SelectionError(f"unit {u!r} is outside 0..{total - 1}")
    ncols = max(1, min(ncols, len(chosen)))
    nrows = max(1, math.ceil(len(chosen) / ncols))
    fig = _new_figure(figsize=(2.6 * ncols, 2.2 * nrows), layout="constrained")
    x = np.asarray(mean[by].values)
    categorical = not np.issubdtype(x.dtype, np.number)
    for i, u in enumerate(chosen):
        where = dict(zip(unit_dims, np.unravel_index(int(u), shape))) if shape else {}
        ax = fig.add_subplot(nrows, ncols, i + 1)
        m = np.asarray(mean.isel(where).values, dtype=float)
        s = np.asarray(sem.isel(where).values, dtype=float)
        preferred = tuning_ds["preferred"].isel(where).values.item()
        if categorical:
            colors = ["C1" if v == preferred else "C0" for v in x]
            ax.bar(np.arange(x.size), m, yerr=np.nan_to_num(s), color=colors, capsize=2)
            ax.set_xticks(np.arange(x.size), x.astype(str), rotation=90 if x.size > 4 else 0)
        else:
            ax.errorbar(x, m, yerr=np.nan_to_num(s), marker="o", ms=3, capsize=2)
            ax.axvline(float(preferred), ls="--", lw=0.8, color="grey")
        sel = float(tuning_ds["selectivity"].isel(where).values)
        ax.set_title(f"{_unit_name(mean.isel(where), where)}  SI={sel:.2f}", fontsize=8)
        ax.set_xlabel(by, fontsize=8)
        ax.tick_params(labelsize=7)
    return fig


def _unit_name(curve: xr.DataArray, where: dict[str, Any]) -> str:
    """``channel=3, y=1, x=2`` from the unit's coords, else from its positions."""
    # the unit's identity, not every scalar coordinate it carries
    shown = ("channel", "y", "x", "unit")
    parts = [
        f"{name}={curve.coords[name].item()}"
        for name in shown
        if name in curve.coords and curve.coords[name].ndim == 0
    ]
    if not parts:
        parts = [f"{dim}={int(i)}" for dim, i in where.items()]
    return ", ".join(parts) if parts else "unit"


def plot_rdm(
    rdm_da: xr.DataArray, *, max_labels: int = 30, cmap: str = "viridis"
) -> Figure:
    """Heatmap of an RDM with stimulus labels (every n-th when there are many).

    Parameters
    ----------
    rdm_da : xarray.DataArray
        Output of :func:`unitrec.analysis.rdm`.
    max_labels : int
        At most this many tick labels per axis.
    cmap : str
        Colormap name.

    Returns
    -------
    matplotlib.figure.Figure
        The matrix axes and its colorbar axes.
    """
    if not isinstance(rdm_da, xr.DataArray) or rdm_da.ndim != 2:
        raise ConfigError("plot_rdm needs a 2-D DataArray from unitrec.analysis.rdm")
    n = rdm_da.shape[0]
    fig = _new_figure(figsize=(6, 5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(np.asarray(rdm_da.values, dtype=float), cmap=cmap)
    fig.colorbar(image, ax=ax, label=rdm_da.attrs.get("metric", "dissimilarity"))
    labels = (
        np.asarray(rdm_da[STIMULUS].values).astype(str)
        if STIMULUS in rdm_da.coords
        else np.arange(n).astype(str)
    )
    ticks = np.arange(0, n, max(1, math.ceil(n / max(1, max_labels))))
    ax.set_xticks(ticks, labels[ticks], rotation=90, fontsize=6)
    ax.set_yticks(ticks, labels[ticks], fontsize=6)
    return fig


def plot_montage(
    da: xr.DataArray,
    unit: int | Mapping[str, int],
    stimulus_root: str | Path,
    k: int = 9,
) -> Figure:
    """A unit's ``k`` preferred stimuli as an image grid, best first.

    Parameters
    ----------
    da : xarray.DataArray
        Recording with first dim ``"stimulus"`` whose labels are image paths
        relative to ``stimulus_root``.
    unit : int or mapping of str to int
        The unit: a position in the flattened (C-order) unit dims, or positions
        per unit dim, e.g. ``{"channel": 3, "y": 2, "x": 2}``.
    stimulus_root : str or pathlib.Path
        Folder the labels are relative to.
    k : int
        Number of stimuli to show (see :func:`unitrec.analysis.top_stimuli`).

    Returns
    -------
    matplotlib.figure.Figure
        One axes per shown image, titled with its rank and response.

    Raises
    ------
    SelectionError
        If ``unit`` is out of range.
    StimulusError
        If an image cannot be read.
    """
    from PIL import Image

    series = _select_unit(da, unit)
    top = top_stimuli(series, k)
    labels = [str(v) for v in top[STIMULUS].values if str(v)]
    responses = np.asarray(top["response"].values, dtype=float)
    ncols = max(1, math.ceil(math.sqrt(len(labels))))
    nrows = max(1, math.ceil(len(labels) / ncols))
    fig = _new_figure(figsize=(1.8 * ncols, 1.9 * nrows + 0.3), layout="constrained")
    root = Path(stimulus_root)
    for i, label in enumerate(labels):
        path = root / label
        try:
            with Image.open(path) as img:
                pixels = np.asarray(img.convert("RGB"))
        except OSError as exc:
            raise StimulusError(f"cannot read stimulus image {path}: {exc}") from exc
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(pixels)
        ax.set_title(f"#{i + 1}  {responses[i]:.3g}", fontsize=7)
        ax.set_axis_off()
    fig.suptitle(f"unit {unit}", fontsize=9)
    return fig


def _select_unit(da: xr.DataArray, unit: int | Mapping[str, int]) -> xr.DataArray:
    pop = as_population(da)
    if isinstance(unit, Mapping):
        missing = set(pop.unit_dims) - set(unit)
        if missing or set(unit) - set(pop.unit_dims):
            raise SelectionError(
                f"unit {dict(unit)!r} must give a position for each of {pop.unit_dims}"
            )
        position = [unit[d] for d in pop.unit_dims]
        for p, d, size in zip(position, pop.unit_dims, pop.unit_shape):
            if not isinstance(p, (int, np.integer)) or not 0 <= p < size:
                raise SelectionError(f"{d}={p!r} is outside 0..{size - 1}")
        unit = int(np.ravel_multi_index(position, pop.unit_shape))
    if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)):
        raise SelectionError(f"unit must be an int or a mapping, got {unit!r}")
    if not 0 <= unit < pop.n_units:
        raise SelectionError(f"unit {unit} is outside 0..{pop.n_units - 1}")
    return pop.data.isel({UNIT: int(unit)}, drop=True)


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
    fig = _new_figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap=cmap, vmin=np.nanmin(values), vmax=np.nanmax(values))
    label = matrix_da.attrs.get("method", matrix_da.name or "")
    fig.colorbar(image, ax=ax, label=label)
    middle = (np.nanmin(values) + np.nanmax(values)) / 2
    for (i, j), value in np.ndenumerate(values):
        color = "black" if value > middle else "white"
        ax.text(
            j, i, format(value, fmt), ha="center", va="center", fontsize=7, color=color
        )
    ax.set_xticks(np.arange(cols.size), cols, rotation=90, fontsize=7)
    ax.set_yticks(np.arange(rows.size), rows, fontsize=7)
    return fig
