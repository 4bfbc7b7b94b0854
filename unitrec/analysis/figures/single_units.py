"""Figures of single units: tuning curves, and the preferred stimuli as the network saw them.

matplotlib is optional (the ``plots`` extra): it is imported when a figure is
asked for. Every function builds a :class:`matplotlib.figure.Figure` directly,
without pyplot's global state, so it works under any backend and in threads; save
it with ``fig.savefig(path)``.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from unitrec.analysis._units import STIMULUS, as_population
from unitrec.analysis.experiments._images import background_colour, geometry, network_image, recording_attrs
from unitrec.analysis.figures._common import (PARAMETER_UNITS, SYMBOLS, chosen_units, covers, new_figure,
                                              outline_field, parameter_label, receptive_field, unit_label)
from unitrec.analysis.statistics.preferred import is_summary, top_stimuli
from unitrec.errors import ConfigError, SelectionError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_montage", "plot_tuning_curves"]

#: Parameters drawn wrapped, with their period in degrees (the periods tuning_curves uses);
#: a coordinate attribute ``period`` makes any parameter periodic.
_PERIODS = {"orientation": 180.0, "direction": 360.0}
#: Parameters drawn on a log axis (spatial frequencies are spaced in octaves).
_LOG_PARAMETERS = frozenset({"spatial_frequency"})


def plot_tuning_curves(
    tuning_ds: xr.Dataset,
    units: Sequence[int] | None = None,
    *,
    max_units: int = 16,
    ncols: int = 4,
) -> Figure:
    """Small multiples of tuning curves, mean ± s.e.m., one panel per unit.

    A numeric parameter (orientation) is drawn as a curve; a categorical one (a
    class ``label``) as one bar per category. Each panel is titled with the site,
    the unit (``channel``, ``y``, ``x``) and its selectivity index (SI); a caption
    under the panels says what the SI is.

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
        One axes per unit; the dashed line (or the orange bar) marks the preferred
        value. The caption is the figure's ``supxlabel``.

    Raises
    ------
    SelectionError
        If a unit position is out of range.

    Notes
    -----
    Axis labels carry units: the y axis is the response's CF ``units`` attribute
    (``"1"``, a number without unit, is written "a.u."), the x axis the stimulus
    coordinate's (``orientation (deg)``); a coordinate without one gets the units
    unitrec's stimulus generators give it.

    The selectivity index is the one :func:`~unitrec.analysis.tuning_curves`
    computed: for a periodic parameter (orientation, direction) one minus the
    circular variance of the mean curve, ``|Σ r e^{2πiθ/P}| / Σ r``; for any other
    ``(max − min) / (max + min)`` of the mean curve.

    A periodic parameter (``orientation``, period 180°; ``direction``, 360°; or
    any coordinate with a ``period`` attribute) is drawn wrapped: the first value
    is repeated one period on, so a unit preferring 0° is not drawn as two halves,
    with ticks every quarter period. ``spatial_frequency`` is drawn on a log axis.
    """
    if not isinstance(tuning_ds, xr.Dataset) or "mean" not in tuning_ds:
        raise ConfigError(f"plot_tuning_curves draws the result of A.tuning_curves(da, by=...), a Dataset with "
                          f"'mean'; got {type(tuning_ds).__name__}")
    mean, sem = tuning_ds["mean"], tuning_ds["sem"]
    by = tuning_ds.attrs.get("by") or next(
        d for d in mean.dims if d not in tuning_ds["preferred"].dims
    )
    unit_dims = [d for d in mean.dims if d != by]
    shape = tuple(mean.sizes[d] for d in unit_dims)
    total = int(np.prod(shape)) if shape else 1
    chosen = chosen_units(units, max_units, total)
    ncols = max(1, min(ncols, len(chosen)))
    nrows = max(1, math.ceil(len(chosen) / ncols))
    fig = new_figure(figsize=(2.7 * ncols, 2.5 * nrows + 0.4), layout="constrained")
    x = np.asarray(mean[by].values)
    coord_attrs = dict(mean[by].attrs)
    categorical = not np.issubdtype(x.dtype, np.number)
    period = None if categorical else _period(str(by), coord_attrs)
    log = not categorical and str(by) in _LOG_PARAMETERS and bool((x > 0).all())
    site = mean.attrs.get("site") or tuning_ds.attrs.get("site")
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
            xs, ms, ss = _wrapped(x.astype(float), m, s, period)
            ax.errorbar(xs, ms, yerr=np.nan_to_num(ss), marker="o", ms=3, capsize=2)
            for value in _preferred_lines(float(preferred), xs, period):
                ax.axvline(value, ls="--", lw=0.8, color="grey")
            if period is not None:
                quarter = period / 4
                start = math.floor(xs[0] / quarter) * quarter if xs.size else 0.0
                ticks = start + quarter * np.arange(5)
                ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            elif log:
                ax.set_xscale("log")
                ax.set_xticks(x.astype(float), [f"{v:g}" for v in x])
                ax.minorticks_off()
        sel = float(tuning_ds["selectivity"].isel(where).values)
        unit_name = unit_label(mean.isel(where), where)
        # y given: the title is placed, not searched for (no ticks on top); the search cost 15% of the report
        ax.set_title((f"{site} · " if site else "") + f"SI = {sel:.2f}\n{unit_name}", fontsize=8, y=1.0)
        if i % ncols == 0:
            ax.set_ylabel(_response_label(mean.attrs), fontsize=8)
        if i + ncols >= len(chosen):  # the lowest panel of its column
            ax.set_xlabel(parameter_label(str(by), coord_attrs), fontsize=8)
        ax.tick_params(labelsize=7)
    note = _selectivity_note(tuning_ds, str(by), coord_attrs, categorical)
    fig.supxlabel(textwrap.fill(note, max(40, int(16 * 2.7 * ncols))), fontsize=8)  # ~16 characters an inch
    return fig



def _period(by: str, attrs: Mapping[Hashable, Any]) -> float | None:
    """Period of a stimulus parameter, for drawing it wrapped; None: not periodic."""
    value = attrs.get("period", _PERIODS.get(by))
    try:
        period = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return period if period is not None and np.isfinite(period) and period > 0 else None


def _wrapped(x: np.ndarray, m: np.ndarray, s: np.ndarray,
             period: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The curve sorted, and for a periodic parameter its first point repeated one period on."""
    order = np.argsort(x, kind="stable")
    x, m, s = x[order], m[order], s[order]
    if period is None or not x.size or x[-1] - x[0] >= period:
        return x, m, s
    return np.append(x, x[0] + period), np.append(m, m[0]), np.append(s, s[0])


def _preferred_lines(preferred: float, xs: np.ndarray, period: float | None) -> list[float]:
    """Where to mark the preferred value: also at its repeat, one period on."""
    lines = [preferred]
    if period is not None and xs.size and np.isclose(preferred + period, xs[-1]):
        lines.append(preferred + period)
    return lines


def _response_label(attrs: Mapping[Hashable, Any]) -> str:
    """``mean response ± s.e.m. (a.u.)`` from the response's CF ``units``."""
    units = attrs.get("units")
    label = "mean response\n± s.e.m."
    if units is None or str(units) == "":
        return label
    return f"{label} ({'a.u.' if str(units) == '1' else SYMBOLS.get(str(units), str(units))})"



def _selectivity_note(tuning_ds: xr.Dataset, by: str, attrs: Mapping[Hashable, Any],
                      categorical: bool) -> str:
    """The caption: what SI is and what the dashed line (orange bar) marks."""
    how = str(tuning_ds.attrs.get("selectivity", ""))
    marker = "orange bar" if categorical else "dashed line"
    if how.startswith("circular"):
        period = how.rsplit(" ", 1)[-1]
        units = attrs.get("units", PARAMETER_UNITS.get(by))
        unit = f" {SYMBOLS.get(str(units), units)}" if units not in (None, "", "1") else ""
        si = f"SI = 1 − circular variance of the mean curve (period {period}{unit})"
    elif how:
        si = "SI = (max − min) / (max + min) of the mean curve" if how == "(max-min)/(max+min)" else f"SI: {how}"
    else:
        si = "SI: the selectivity index of tuning_curves"
    return f"{si}; {marker}: preferred {by.replace('_', ' ')}"



def plot_montage(
    da: xr.DataArray | xr.Dataset,
    unit: int | Mapping[str, int],
    stimulus_root: str | Path | None = None,
    k: int = 9,
    *,
    outline: bool = True,
    input_size: int | Sequence[int] | None = None,
) -> Figure:
    """A unit's ``k`` preferred stimuli as the network saw them, best first.

    Each image is shown after the recording's geometric preprocessing (resize and
    centre crop, rebuilt from the file's ``preprocessing`` attribute), at the
    network's input size, with the unit's receptive field outlined.

    Parameters
    ----------
    da : xarray.DataArray or xarray.Dataset
        Recording with first dim ``"stimulus"`` whose labels are image paths
        relative to ``stimulus_root`` (as from :func:`unitrec.load_layer`), or a
        site's summary from :func:`unitrec.load_summary` (its stored ranks are
        used: a site recorded with ``keep: summary`` has no full array).
    unit : int or mapping of str to int
        The unit: a position in the flattened (C-order) unit dims, or positions
        per unit dim, e.g. ``{"channel": 3, "y": 2, "x": 2}``.
    stimulus_root : str or pathlib.Path, optional
        Folder the labels are relative to. Default: the recording's
        ``stimulus_root`` (from ``da.attrs``, or the root attribute of the file
        named in ``da.attrs["recording"]``).
    k : int
        Number of stimuli to show (see :func:`unitrec.analysis.top_stimuli`; for
        a summary at most its ``top``).
    outline : bool
        Draw the unit's receptive field: a rectangle of ``attrs["rf_size"]``
        (rows, columns of input pixels) centred on its ``rf_center_y`` and
        ``rf_center_x`` coordinates. Units without a centre (2-D and pooled sites)
        get none.
    input_size : int or (int, int), optional
        The network's input height and width, used only when the preprocessing
        cannot be rebuilt (see Notes): the original image is then scaled to it and
        the receptive field drawn on it.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per shown image, titled with its rank and response; the
        receptive field is a :class:`matplotlib.patches.Rectangle` in each axes'
        ``patches``, in input pixel coordinates (pixel centres at integers). A
        unit that gives every stimulus the same response (a silent unit: all
        zero) has no preferred stimuli: the figure has no axes, and its title
        says so.

    Raises
    ------
    ConfigError
        If ``da`` is neither a recording nor a summary, ``k`` is out of range, or
        no ``stimulus_root`` is given or stored (tensor stimuli have no images).
    SelectionError
        If ``unit`` is out of range.
    StimulusError
        If an image cannot be read.

    Notes
    -----
    The images are decoded as the recording did (transparent pixels over its
    background colour) and passed through the ``Resize`` and ``CenterCrop`` steps
    the file's ``preprocessing`` text names, with their size, interpolation and
    ``max_size``, with the PIL calls torchvision makes (equal bit for bit, without
    importing torch): the pixels the network saw, before ``ToTensor`` and
    normalisation (which are not shown). torchvision's ``ImageClassification``
    (the weights' own preprocessing) and timm's eval transforms (``Resize``,
    ``CenterCrop``, ``MaybeToTensor``, ``Normalize``) are rebuilt the same way.
    Any other step (a custom callable, a random or colour transform) cannot be
    rebuilt from the text: the original image is then shown, scaled to
    ``input_size`` when given (the outline drawn on it), else as stored and
    without outline, and the figure's title says so. An array without a
    ``preprocessing`` attribute is taken to hold images at the input size.
    """
    summary = is_summary(da)
    if not summary and not isinstance(da, xr.DataArray):
        raise ConfigError(
            "plot_montage needs a recording (ur.load_layer) or a summary (ur.load_summary), "
            f"got {type(da).__name__}"
        )
    if summary:
        dims = tuple(str(d) for d in da["mean"].dims)
        shape = tuple(int(da.sizes[d]) for d in dims)
    else:
        dims = tuple(as_population(da).unit_dims)
        shape = tuple(int(da.sizes[d]) for d in dims)
    where = _unit_position(dims, shape, unit)
    chosen = da.isel(where)
    if not summary:
        chosen = chosen.compute()  # one unit's column, read once (not once per question asked of it)
    top = top_stimuli(chosen, k)
    labels = [str(v) for v in top[STIMULUS].values if str(v)]
    responses = np.asarray(top["response"].values, dtype=float)

    attrs = dict(da.attrs)
    stored = recording_attrs(attrs)
    if stimulus_root is None:
        stimulus_root = attrs.get("stimulus_root") or stored.get("stimulus_root")
        if not stimulus_root:
            raise ConfigError(
                "plot_montage needs stimulus_root, the folder the stimulus labels are relative to: "
                "this recording stores none (tensor stimuli have no images to show)"
            )
    root = Path(str(stimulus_root))
    background = background_colour(stored.get("run_key", ""))
    preprocessing = attrs.get("preprocessing")
    steps = geometry(str(preprocessing)) if preprocessing is not None else []
    size = _size_pair(input_size)
    rf = receptive_field(chosen, attrs) if outline else None
    if steps is None and size is None:
        rf = None  # the original image's pixels are not the input's
    same = _same_response(chosen, summary)
    if same is not None:  # every stimulus ranks alike: the "preferred" ones would be the first k by name
        site = da.attrs.get("site") or getattr(da, "name", None)
        fig = new_figure(figsize=(4.0, 0.9), layout="constrained")
        what = ("silent: response 0 to every stimulus" if same == 0
                else f"the same response ({same:.3g}) to every stimulus")
        fig.suptitle((f"{site} · " if site else "") + unit_label(chosen, where)
                     + f"\n{what}, so no preferred stimuli", fontsize=8)
        return fig

    ncols = max(1, math.ceil(math.sqrt(len(labels))))
    nrows = max(1, math.ceil(len(labels) / ncols))
    fig = new_figure(figsize=(1.8 * ncols, 1.9 * nrows + 0.3), layout="constrained")
    shown: tuple[int, ...] = (0, 0)
    shaded = False
    for i, label in enumerate(labels):
        pixels = network_image(root / label, steps, size, background)
        shown = pixels.shape[:2]
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(pixels)
        if rf is not None:
            shaded = outline_field(ax, rf, pixels.shape[:2]) == 1
        ax.set_title(f"#{i + 1} · response {responses[i]:.3g}", fontsize=7, y=1.0)  # y: placed, not searched for
        ax.set_axis_off()
    site = attrs.get("site") or getattr(da, "name", None)
    lines = [(f"{site} · " if site else "") + unit_label(chosen, where),
             f"preferred stimuli, best first (#rank · response{_units_suffix(attrs)})"]
    if rf is not None:
        lines[1] += ("; red: receptive field" + (f" ({rf[2]:g}×{rf[3]:g} px), shaded where it lies on the image"
                                                   if shaded else "")) if not covers(rf, shown) else (
            f"; receptive field ({rf[2]:g}×{rf[3]:g} px) covers the whole image")
    if steps is None:
        lines.append("(original images: preprocessing not rebuilt" + (
            ", scaled to the input size)" if size is not None else ")"))
    width = max(24, int(15 * 1.8 * ncols))  # characters that fit the figure's width at 8 pt
    # "not rebuilt" kept on one line: NUL is no whitespace to textwrap
    text = "\n".join(textwrap.fill(line.replace("not rebuilt", "not\0rebuilt"), width) for line in lines)
    fig.suptitle(text.replace("\0", " "), fontsize=8)
    return fig


def _same_response(unit: xr.DataArray | xr.Dataset, summary: bool) -> float | None:
    """The one response a unit gave every stimulus it answered, or None if they differ (or none is finite)."""
    if summary:
        low, high = float(unit["min"].values), float(unit["max"].values)
    else:
        values = np.asarray(unit.values, dtype=float)
        values = values[np.isfinite(values)]
        if not values.size:
            return None
        low, high = float(values.min()), float(values.max())
    return low if low == high and np.isfinite(low) else None


def _units_suffix(attrs: Mapping[Hashable, Any]) -> str:
    """`` in a.u.`` for a response with CF ``units``, else nothing."""
    units = attrs.get("units")
    if units is None or str(units) == "":
        return ""
    return f" in {'a.u.' if str(units) == '1' else SYMBOLS.get(str(units), str(units))}"


def _size_pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = [size, size] if isinstance(size, (int, np.integer)) else list(size)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in pair):
        raise ConfigError(f"input_size must be a positive int or (height, width), got {size!r}")
    return int(pair[0]), int(pair[1])


def _unit_position(dims: tuple[str, ...], shape: tuple[int, ...],
                   unit: int | Mapping[str, int]) -> dict[str, int]:
    """``{dim: position}`` of a unit given flat (C-order) or per dim."""
    if isinstance(unit, Mapping):
        if set(unit) != set(dims):
            raise SelectionError(f"unit {dict(unit)!r} must give a position for each of {dims}")
        for d, size in zip(dims, shape):
            p = unit[d]
            if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not 0 <= p < size:
                raise SelectionError(f"{d}={p!r} is outside 0..{size - 1}")
        return {d: int(unit[d]) for d in dims}
    if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)):
        raise SelectionError(f"unit must be an int or a mapping, got {unit!r}")
    total = int(np.prod(shape)) if shape else 1
    if not 0 <= unit < total:
        raise SelectionError(f"unit {unit} is outside 0..{total - 1}")
    return {d: int(i) for d, i in zip(dims, np.unravel_index(int(unit), shape))} if shape else {}
