"""Figure of an encoding model (:mod:`unitrec.analysis.experiments.encoding`): how well
each layer predicts the neurons.

matplotlib is imported when a figure is asked for (the ``plots`` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from unitrec.analysis.experiments._neural import NEUROID
from unitrec.analysis.experiments.encoding import LAYER
from unitrec.analysis.figures._common import new_figure
from unitrec.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_encoding"]


def plot_encoding(result: xr.Dataset) -> Figure:
    """How well each layer predicts the neurons: r per layer, spread over neuroids.

    Parameters
    ----------
    result : xarray.Dataset
        Output of :func:`~unitrec.analysis.encoding_model` (one layer or several).

    Returns
    -------
    matplotlib.figure.Figure
        Left: a box of the neuroids' held-out r per layer (layers in the order
        fitted), medians joined by a line, the median noise ceiling dashed and its
        square root (the r a perfect, noise-free model reaches) dotted. Right, when
        there is a ceiling: the ceiled r (``r / ceiling``), with 1 dashed.
    """
    if not isinstance(result, xr.Dataset) or "r" not in result:
        raise ConfigError("plot_encoding needs the Dataset encoding_model returns")
    r = result["r"] if LAYER in result["r"].dims else result["r"].expand_dims(LAYER)
    names = np.atleast_1d(np.asarray(r[LAYER].values)).astype(str) if LAYER in r.coords else np.array([""])
    panels = [("r", "prediction r (Pearson, held-out)")]
    if "r_ceiled" in result:
        panels.append(("r_ceiled", "ceiled r (r / ceiling)"))
    width = 1.5 + 0.5 * len(names)
    fig = new_figure(figsize=(width * len(panels), 3.2), layout="constrained")
    x = np.arange(len(names))
    for i, (var, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        values = result[var] if LAYER in result[var].dims else result[var].expand_dims(LAYER)
        columns = [v[np.isfinite(v)] for v in np.asarray(values.transpose(LAYER, NEUROID).values, float)]
        ax.boxplot(columns, positions=x, widths=0.5, showfliers=True,
                   flierprops={"markersize": 2}, medianprops={"color": "C1"})
        ax.plot(x, [np.median(c) if c.size else np.nan for c in columns], "o-", color="C1", ms=4, zorder=3)
        if var == "r" and "median_ceiling" in result:
            ceiling = float(result["median_ceiling"])
            ax.axhline(ceiling, ls="--", color="grey", lw=1, label="noise ceiling (median)")
            ax.axhline(np.sqrt(ceiling), ls=":", color="grey", lw=1,
                       label="√ceiling: r of a perfect noise-free model")
            ax.legend(fontsize=6, loc="lower left")
        elif var == "r_ceiled":
            ax.axhline(1.0, ls="--", color="grey", lw=1)
        ax.axhline(0.0, color="black", lw=0.5)
        ax.set_xticks(x, names, rotation=90 if len(names) > 3 else 0, fontsize=7)
        ax.set_xlabel(LAYER)
        ax.set_ylabel(label)
    return fig
