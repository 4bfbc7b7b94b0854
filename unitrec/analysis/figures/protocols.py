"""Figures of the grating protocols (:mod:`unitrec.analysis.experiments.protocols`): SF tuning on a
log axis with its fit and bandwidth, size tuning with the suppression index, the
contrast response with its Naka–Rushton fit, and the F1/F0 histogram.

matplotlib is imported when a figure is asked for (the ``plots`` extra); each function
returns a :class:`matplotlib.figure.Figure` built without pyplot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from unitrec.analysis.experiments._conditions import SF
from unitrec.analysis.experiments._curve_fits import log_gaussian, naka_rushton
from unitrec.analysis.figures._common import chosen_units, new_figure, parameter_label, unit_label
from unitrec.errors import ConfigError, SelectionError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_contrast_response", "plot_modulation_ratio", "plot_sf_tuning", "plot_size_tuning"]


def plot_sf_tuning(ds: xr.Dataset, units: Sequence[int] | None = None, *, max_units: int = 16,
                   ncols: int = 4) -> Figure:
    """Spatial-frequency tuning curves on a log axis, with the fit and its bandwidth.

    Parameters
    ----------
    ds : xarray.Dataset
        Output of :func:`sf_tuning`.
    units : sequence of int, optional
        Units to draw, as positions in the flattened (C-order) unit dims; default
        the first ``max_units``.
    max_units, ncols : int
        How many units to draw without ``units``; panels per row.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per unit: the responses (dots), the fitted log-Gaussian (line),
        its peak (dashed) and its bandwidth (the bar at half height above the
        baseline); the title gives the site, the unit, the preferred frequency and
        the bandwidth.
    """
    def draw(ax: Any, x: np.ndarray, y: np.ndarray, v: Mapping[str, float]) -> str:
        ax.plot(x, y, "o", ms=3)
        if np.isfinite(v["fit_mu"]):
            dense = np.geomspace(x.min(), x.max(), 200)
            ax.plot(dense, log_gaussian(np.log2(dense), v["fit_baseline"], v["fit_amplitude"], v["fit_mu"],
                                        v["fit_sigma"]), lw=1)
        if np.isfinite(v["bandwidth"]):
            peak, half = v["fit_spatial_frequency"], v["bandwidth"] / 2
            ax.axvline(peak, ls="--", lw=0.8, color="grey")
            ax.hlines(v["fit_baseline"] + v["fit_amplitude"] / 2, peak * 2.0**-half, peak * 2.0**half,
                      color="C1", lw=2)
            return f"pref {peak:.3g}, bw {v['bandwidth']:.2f} oct"
        if np.isfinite(v["fit_mu"]):  # drawn, but its peak lies beyond the frequencies shown
            return f"peak {v['preferred_spatial_frequency']:g} (fit peaks outside the range)"
        return f"peak {v['preferred_spatial_frequency']:g} (no fit)"

    _require(ds, (SF,), "sf_tuning")
    fig = _panels(ds, units, max_units, ncols, draw, parameter_label(SF, ds[SF].attrs), log=True,
                  keys=("fit_mu", "fit_baseline", "fit_amplitude", "fit_sigma", "bandwidth",
                        "fit_spatial_frequency", "preferred_spatial_frequency"))
    fig.supxlabel("orange bar: bandwidth, full width at half height above the baseline (octaves)", fontsize=8)
    return fig


def plot_size_tuning(ds: xr.Dataset, units: Sequence[int] | None = None, *, max_units: int = 16,
                     ncols: int = 4) -> Figure:
    """Size-tuning curves with the preferred size and the surround suppression index.

    Parameters
    ----------
    ds : xarray.Dataset
        Output of :func:`size_tuning`.
    units : sequence of int, optional
        Units to draw (positions in the flattened unit dims); default the first
        ``max_units`` centred ones.
    max_units, ncols : int
        How many units to draw without ``units``; panels per row.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per unit: response against aperture diameter, the preferred size
        dashed; the title gives the SSI.
    """
    _require(ds, ("centered",), "size_tuning")
    centered = np.asarray(ds["centered"].values).reshape(-1)
    if units is None:
        units = np.flatnonzero(centered)[:max_units].tolist()

    def draw(ax: Any, x: np.ndarray, y: np.ndarray, v: Mapping[str, float]) -> str:
        ax.plot(x, y, "o-", ms=3)
        if np.isfinite(v["preferred_size"]):
            ax.axvline(v["preferred_size"], ls="--", lw=0.8, color="grey")
        return f"SSI = {v['ssi']:.2f}, pref {v['preferred_size']:g} px"

    fig = _panels(ds, units, max_units, ncols, draw, "aperture diameter (pixels)",
                  keys=("preferred_size", "ssi"))
    fig.supxlabel("SSI = (R_peak − R_largest) / R_peak; dashed: preferred size", fontsize=8)
    return fig


def plot_contrast_response(ds: xr.Dataset, units: Sequence[int] | None = None, *, max_units: int = 16,
                           ncols: int = 4) -> Figure:
    """Contrast-response functions on a log axis, with the Naka–Rushton fit and c50.

    Parameters
    ----------
    ds : xarray.Dataset
        Output of :func:`contrast_response`.
    units : sequence of int, optional
        Units to draw (positions in the flattened unit dims); default the first
        ``max_units``.
    max_units, ncols : int
        How many units to draw without ``units``; panels per row.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per unit: the responses (dots), the fit (line) and c50 (dashed).
        A c50 beyond the highest contrast shown (``c50_in_range`` false: the fit
        often stops at its bound, 10) is not drawn and its title says
        ``c50 > <highest contrast> (not reached)`` instead of the fitted number.
    """
    _require(ds, ("contrast", "c50"), "contrast_response")

    def draw(ax: Any, x: np.ndarray, y: np.ndarray, v: Mapping[str, float]) -> str:
        ax.plot(x, y, "o", ms=3)
        if np.isfinite(v["c50"]):
            dense = np.geomspace(x.min(), x.max(), 200)
            ax.plot(dense, naka_rushton(dense, v["r_max"], v["c50"], v["exponent"], v["baseline"]), lw=1)
            if v["c50"] <= x.max():
                ax.axvline(v["c50"], ls="--", lw=0.8, color="grey")
                return f"c50 = {v['c50']:.2g}, n = {v['exponent']:.2g}"
            # the fit put c50 where no contrast was shown (often at its bound, 10): not a measurement
            return f"c50 > {x.max():.2g} (not reached), n = {v['exponent']:.2g}"
        return "no fit"

    fig = _panels(ds, units, max_units, ncols, draw, "Michelson contrast", log=True,
                  keys=("c50", "exponent", "r_max", "baseline"))
    fig.supxlabel("line: R_max c^n / (c^n + c50^n) + b; dashed: c50; \"c50 > max (not reached)\": "
                  "the curve has not bent within the contrasts shown", fontsize=8)
    return fig


def plot_modulation_ratio(ds: xr.Dataset, *, bins: int = 20) -> Figure:
    """Histogram of the modulation ratio F1/F0, simple and complex cells split at 1.

    Parameters
    ----------
    ds : xarray.Dataset
        Output of :func:`modulation_ratio`.
    bins : int
        Bins over [0, 2]; ratios above 2 (possible only without rectification) are
        counted in the last bin.

    Returns
    -------
    matplotlib.figure.Figure
        One axes; the dashed line at 1 is the simple/complex boundary.
    """
    _require(ds, ("ratio",), "modulation_ratio")
    ratio = np.asarray(ds["ratio"].values, dtype=float).reshape(-1)
    ratio = ratio[np.isfinite(ratio)]
    fig = new_figure(figsize=(4.2, 3.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(np.clip(ratio, 0, 2), bins=np.linspace(0, 2, bins + 1).tolist(), color="C0")
    ax.axvline(1.0, ls="--", color="grey", lw=1)
    ax.set_xlabel("modulation ratio F1/F0 (dimensionless)", fontsize=8)
    ax.set_ylabel("units (count)", fontsize=8)
    site = ds.attrs.get("site")
    n_simple = int((ratio > 1).sum())
    ax.set_title((f"{site} · " if site else "") + f"{n_simple} simple, {ratio.size - n_simple} complex "
                 f"(of {ratio.size} units)", fontsize=8)
    ax.tick_params(labelsize=7)
    return fig


def _panels(ds: xr.Dataset, units: Sequence[int] | None, max_units: int, ncols: int,
            draw: Callable[[Any, np.ndarray, np.ndarray, Mapping[str, float]], str], xlabel: str, *,
            keys: Sequence[str], log: bool = False) -> Figure:
    """Small multiples of ``ds.response`` along ``ds.attrs["swept"]``, one per unit."""
    _require(ds, ("response", *keys), "sf_tuning, size_tuning or contrast_response")
    swept = str(ds.attrs.get("swept") or ds["response"].dims[0])
    response = ds["response"]
    unit_dims = [d for d in response.dims if d != swept]
    shape = tuple(response.sizes[d] for d in unit_dims)
    total = int(np.prod(shape)) if shape else 1
    chosen = chosen_units(units, max_units, total)
    if not chosen:
        raise SelectionError("no unit to draw")
    ncols = max(1, min(ncols, len(chosen)))
    nrows = math.ceil(len(chosen) / ncols)
    fig = new_figure(figsize=(2.7 * ncols, 2.4 * nrows + 0.4), layout="constrained")
    x = np.asarray(ds[swept].values, dtype=float)
    site = ds.attrs.get("site")
    units_attr = str(ds.attrs.get("response_units", ""))
    ylabel = "mean response" + (f" ({'a.u.' if units_attr in ('', '1') else units_attr})")
    for i, u in enumerate(chosen):
        where = dict(zip(unit_dims, np.unravel_index(int(u), shape))) if shape else {}
        ax = fig.add_subplot(nrows, ncols, i + 1)
        curve = response.isel(where)
        values = {k: float(ds[k].isel(where).values) for k in keys}
        note = draw(ax, x, np.asarray(curve.values, dtype=float), values)
        if log and (x > 0).all():
            ax.set_xscale("log")
            ax.set_xticks(x, [f"{v:.3g}" for v in x], rotation=90 if x.size > 5 else 0)
            ax.minorticks_off()
            ax.set_xlim(x.min() / 1.2, x.max() * 1.2)  # a wide bandwidth bar must not squeeze the data
        ax.set_title((f"{site} · " if site else "") + f"{unit_label(curve, where)}\n{note}", fontsize=8, y=1.0)
        if i % ncols == 0:
            ax.set_ylabel(ylabel, fontsize=8)
        if i + ncols >= len(chosen):
            ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
    return fig


def _require(ds: Any, names: Sequence[str], analysis: str) -> None:
    """A one-line error for a figure given something other than its analysis' result."""
    missing = [k for k in names if not isinstance(ds, xr.Dataset) or k not in ds.variables]
    if missing:
        raise ConfigError(f"this figure draws the result of {analysis}; what was given lacks "
                          f"{', '.join(missing)}")
