"""Figures of the closed loop: an evolution's scores and best images, a grid of visualisations.

Drawn from what ``load_evolution`` and ``visualize`` return (or their files), with the
receptive field outlined where the unit has one. matplotlib is imported when a
figure is asked for (the ``plots`` extra).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from unitrec.analysis.figures._common import new_figure, outline_field
from unitrec.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_evolution", "plot_visualizations"]


def plot_evolution(evolution: Any, *, images: int = 10) -> Figure:
    """Score per generation, and the best image of every few generations.

    Parameters
    ----------
    evolution
        A file written by :func:`unitrec.evolve` (its path), what :func:`unitrec.load_evolution`
        returns, or the result of :func:`unitrec.evolve`.
    images
        How many generations' best images to show (evenly spaced, the last included).

    Returns
    -------
    matplotlib.figure.Figure
        Top: each generation's best and mean score (the objective's own, ``clean_scores``;
        the noisy scores the optimiser was told beside them when ``noise > 0``).
        Bottom: the best image of the chosen generations, with the unit's receptive
        field outlined when the evolution fitted images into it.
    """
    from unitrec.closedloop.trajectory import load_evolution

    if isinstance(evolution, (str, os.PathLike)) or hasattr(evolution, "path") and not hasattr(evolution, "data_vars"):
        evolution = load_evolution(getattr(evolution, "path", evolution))
    ds = evolution
    if ds.sizes.get("generation", 0) == 0:
        raise ConfigError("this evolution has no finished generation yet; nothing to draw")
    if not isinstance(images, int) or images < 1:
        raise ConfigError(f"images must be a positive integer, got {images!r}")
    clean = np.asarray(ds["clean_scores"].values, dtype=float)
    noisy = np.asarray(ds["scores"].values, dtype=float)
    generations = np.asarray(ds["generation"].values)
    shown = np.unique(np.linspace(0, len(generations) - 1, min(images, len(generations))).round().astype(int))
    fig = new_figure(figsize=(max(6.0, 1.3 * len(shown)), 5.2), layout="constrained")
    grid = fig.add_gridspec(2, len(shown), height_ratios=[2.2, 1])
    ax = fig.add_subplot(grid[0, :])
    ax.plot(generations, clean.max(axis=1), color="#c0392b", label="best")
    ax.plot(generations, clean.mean(axis=1), color="#2c3e50", label="mean of the population")
    if not np.array_equal(clean, noisy, equal_nan=True):
        ax.plot(generations, noisy.max(axis=1), color="#c0392b", alpha=0.35, linestyle="--",
                label="best as the optimiser saw it (noisy)")
    ax.set_xlabel("generation")
    ax.set_ylabel("score")
    ax.set_title(_unit_title(ds.attrs))
    ax.legend(frameon=False, fontsize="small")
    box = _fit_box(ds.attrs)
    best = np.asarray(ds["best_image"].values)
    for i, g in enumerate(shown):
        image_ax = fig.add_subplot(grid[1, i])
        image_ax.imshow(np.clip(best[g].transpose(1, 2, 0), 0, 1), interpolation="nearest")
        if box is not None:
            outline_field(image_ax, box, best.shape[2:])
        image_ax.set_title(f"gen {int(generations[g])}\n{clean[g].max():.3g}", fontsize="small")
        image_ax.set_axis_off()
    return fig


def plot_visualizations(visualizations: Any, *, columns: int = 6, titles: Sequence[str] | None = None) -> Figure:
    """A grid of feature visualisations, each unit's receptive field outlined.

    Parameters
    ----------
    visualizations
        A list of :func:`unitrec.visualize` results, or the file a ``kind: visualize``
        config writes (its path, or it opened with ``xarray.open_dataset``).
    columns
        Images per row.
    titles
        One title per image; default: the unit's entry.
    """
    images, fields, labels = _gallery(visualizations)
    if not images:
        raise ConfigError("no visualisations to draw")
    if not isinstance(columns, int) or columns < 1:
        raise ConfigError(f"columns must be a positive integer, got {columns!r}")
    if titles is not None and len(titles) != len(images):
        raise ConfigError(f"{len(titles)} titles for {len(images)} images; give one per image")
    rows = -(-len(images) // columns)
    cols = min(columns, len(images))
    fig = new_figure(figsize=(2.2 * cols, 2.75 * rows), layout="constrained")
    for i, (image, field) in enumerate(zip(images, fields)):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(np.clip(np.asarray(image).transpose(1, 2, 0), 0, 1), interpolation="nearest")
        if field is not None:
            outline_field(ax, field, np.asarray(image).shape[1:])
        ax.set_title(titles[i] if titles is not None else labels[i], fontsize="x-small")
        ax.set_axis_off()
    return fig


def _gallery(visualizations: Any) -> tuple[list[np.ndarray], list[tuple[float, ...] | None], list[str]]:
    if isinstance(visualizations, (str, os.PathLike)):
        import xarray as xr

        with xr.open_dataset(visualizations, engine="h5netcdf") as ds:
            visualizations = ds.load()
    if hasattr(visualizations, "data_vars"):  # the file of a config
        ds = visualizations
        images = list(np.asarray(ds["image"].values))
        fields = [None if np.isnan(v).any() else tuple(float(a) for a in v)
                  for v in np.asarray(ds["receptive_field"].values)]
        return images, fields, [str(u) for u in ds["entry"].values]
    images, fields, labels = [], [], []
    for v in visualizations:
        images.append(v.image)
        rf = v.receptive_field
        fields.append(None if rf is None else (rf["center_y"], rf["center_x"], rf["height"], rf["width"]))
        labels.append(_entry_label(v.unit.get("unit")))
    return images, fields, labels


def _entry_label(entry: Any) -> str:
    if isinstance(entry, dict):
        rest = ", ".join(f"{k} {v}" for k, v in entry.items() if k != "name")
        return f"{entry.get('name')}" + (f"\n{rest}" if rest else "")
    return str(entry)


def _unit_title(attrs: dict[str, Any]) -> str:
    try:
        unit = json.loads(attrs.get("objective", "{}")).get("unit")
    except (TypeError, ValueError):
        unit = None
    model = attrs.get("model", "")
    return f"{model}: {_entry_label(unit).replace(chr(10), ', ')}" if unit else str(model)


def _fit_box(attrs: dict[str, Any]) -> tuple[float, float, float, float] | None:
    """The receptive field an evolution fitted its images into (``rf_box``: rows y0..y1, columns
    x0..x1, end excluded), as (centre y, centre x, height, width) in pixel coordinates."""
    try:
        box = json.loads(attrs.get("rf_box") or "null")
    except (TypeError, ValueError):
        return None
    if not box:
        return None
    y0, y1, x0, x1 = box
    return ((y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2, float(y1 - y0), float(x1 - x0))
