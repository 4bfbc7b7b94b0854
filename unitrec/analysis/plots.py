"""Figures: tuning curves, RDMs, preferred-stimulus montages, layer matrices.

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


#: CF ``units`` of the parameters unitrec's generators write, for coordinates that come without
#: them (``load_layer`` carries them over; arrays built by hand or by operations that drop
#: attributes do not). The same as
#: ``unitrec.stimuli.generate.PARAMETER_UNITS`` (a test checks), copied because that package
#: imports torch and a figure must not.
_PARAMETER_UNITS = {"orientation": "degree", "spatial_frequency": "1", "phase": "degree",
                    "contrast": "1", "sigma": "1", "aperture_diameter": "1", "aperture_y": "1",
                    "aperture_x": "1"}
#: What a dimensionless ("1") parameter counts, where a bare name would leave it open.
_COUNTS = {"spatial_frequency": "cycles/image"}
_SYMBOLS = {"degree": "deg", "degrees": "deg", "radian": "rad", "radians": "rad"}
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
    chosen = _chosen_units(units, max_units, total)
    ncols = max(1, min(ncols, len(chosen)))
    nrows = max(1, math.ceil(len(chosen) / ncols))
    fig = _new_figure(figsize=(2.7 * ncols, 2.5 * nrows + 0.4), layout="constrained")
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
        unit_name = _unit_name(mean.isel(where), where)
        # y given: the title is placed, not searched for (no ticks on top); the search cost 15% of the report
        ax.set_title((f"{site} · " if site else "") + f"SI = {sel:.2f}\n{unit_name}", fontsize=8, y=1.0)
        if i % ncols == 0:
            ax.set_ylabel(_response_label(mean.attrs), fontsize=8)
        if i + ncols >= len(chosen):  # the lowest panel of its column
            ax.set_xlabel(_parameter_label(str(by), coord_attrs), fontsize=8)
        ax.tick_params(labelsize=7)
    note = _selectivity_note(tuning_ds, str(by), coord_attrs, categorical)
    fig.supxlabel(textwrap.fill(note, max(40, int(16 * 2.7 * ncols))), fontsize=8)  # ~16 characters an inch
    return fig


def _chosen_units(units: Sequence[int] | None, max_units: int, total: int) -> list[int]:
    """The units to draw: `units` (positions in the flattened unit dims), checked, or the first `max_units`."""
    chosen = list(range(min(max_units, total))) if units is None else list(units)
    for u in chosen:
        if not isinstance(u, (int, np.integer)) or not 0 <= u < total:
            raise SelectionError(f"unit {u!r} is outside 0..{total - 1}")
    return chosen


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
    return f"{label} ({'a.u.' if str(units) == '1' else _SYMBOLS.get(str(units), str(units))})"


def _parameter_label(name: str, attrs: Mapping[Hashable, Any]) -> str:
    """``orientation (deg)``: a stimulus coordinate's name and its CF ``units``."""
    units = attrs.get("units", _PARAMETER_UNITS.get(name))
    text = name.replace("_", " ")
    if units is None or str(units) in ("", "1"):  # a plain number: say what it counts, if known
        return f"{text} ({_COUNTS[name]})" if name in _COUNTS else text
    return f"{text} ({_SYMBOLS.get(str(units), str(units))})"


def _selectivity_note(tuning_ds: xr.Dataset, by: str, attrs: Mapping[Hashable, Any],
                      categorical: bool) -> str:
    """The caption: what SI is and what the dashed line (orange bar) marks."""
    how = str(tuning_ds.attrs.get("selectivity", ""))
    marker = "orange bar" if categorical else "dashed line"
    if how.startswith("circular"):
        period = how.rsplit(" ", 1)[-1]
        units = attrs.get("units", _PARAMETER_UNITS.get(by))
        unit = f" {_SYMBOLS.get(str(units), units)}" if units not in (None, "", "1") else ""
        si = f"SI = 1 − circular variance of the mean curve (period {period}{unit})"
    elif how:
        si = "SI = (max − min) / (max + min) of the mean curve" if how == "(max-min)/(max+min)" else f"SI: {how}"
    else:
        si = "SI: the selectivity index of tuning_curves"
    return f"{si}; {marker}: preferred {by.replace('_', ' ')}"


def _unit_name(curve: xr.DataArray | xr.Dataset, where: Mapping[Any, Any]) -> str:
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
    fig = _new_figure(figsize=(6, 5), layout="constrained")
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
        label = f"stimuli grouped by {_parameter_label(by, rdm_da[by].attrs)}"
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
    from unitrec.analysis.preferred import is_summary

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
    stored = _recording_attrs(attrs)
    if stimulus_root is None:
        stimulus_root = attrs.get("stimulus_root") or stored.get("stimulus_root")
        if not stimulus_root:
            raise ConfigError(
                "plot_montage needs stimulus_root, the folder the stimulus labels are relative to: "
                "this recording stores none (tensor stimuli have no images to show)"
            )
    root = Path(str(stimulus_root))
    background = _background(stored.get("run_key", ""))
    preprocessing = attrs.get("preprocessing")
    steps = _geometry(str(preprocessing)) if preprocessing is not None else []
    size = _size_pair(input_size)
    rf = _receptive_field(chosen, attrs) if outline else None
    if steps is None and size is None:
        rf = None  # the original image's pixels are not the input's
    same = _same_response(chosen, summary)
    if same is not None:  # every stimulus ranks alike: the "preferred" ones would be the first k by name
        site = da.attrs.get("site") or getattr(da, "name", None)
        fig = _new_figure(figsize=(4.0, 0.9), layout="constrained")
        what = ("silent: response 0 to every stimulus" if same == 0
                else f"the same response ({same:.3g}) to every stimulus")
        fig.suptitle((f"{site} · " if site else "") + _unit_name(chosen, where)
                     + f"\n{what}, so no preferred stimuli", fontsize=8)
        return fig

    ncols = max(1, math.ceil(math.sqrt(len(labels))))
    nrows = max(1, math.ceil(len(labels) / ncols))
    fig = _new_figure(figsize=(1.8 * ncols, 1.9 * nrows + 0.3), layout="constrained")
    shown: tuple[int, ...] = (0, 0)
    shaded = False
    for i, label in enumerate(labels):
        pixels = _network_image(root / label, steps, size, background)
        shown = pixels.shape[:2]
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(pixels)
        if rf is not None:
            shaded = _outline(ax, rf, pixels.shape[:2]) == 1
        ax.set_title(f"#{i + 1} · response {responses[i]:.3g}", fontsize=7, y=1.0)  # y: placed, not searched for
        ax.set_axis_off()
    site = attrs.get("site") or getattr(da, "name", None)
    lines = [(f"{site} · " if site else "") + _unit_name(chosen, where),
             f"preferred stimuli, best first (#rank · response{_units_suffix(attrs)})"]
    if rf is not None:
        lines[1] += ("; red: receptive field" + (f" ({rf[2]:g}×{rf[3]:g} px), shaded where it lies on the image"
                                                   if shaded else "")) if not _covers(rf, shown) else (
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
    return f" in {'a.u.' if str(units) == '1' else _SYMBOLS.get(str(units), str(units))}"


#: Preprocessing steps that leave the geometry alone (tensor conversion, dtype, normalisation).
_NON_GEOMETRIC = frozenset({"ToTensor", "PILToTensor", "ConvertImageDtype", "Normalize", "ToImage",
                            "ToDtype", "ToPureTensor", "ToImageTensor",
                            "MaybeToTensor", "MaybePILToTensor", "ToNumpy"})  # the last three: timm's
_STEP = r"(\w+)\(((?:[^()]|\([^()]*\))*)\)"


def _geometry(text: str) -> list[tuple] | None:
    """The resize / centre-crop steps of a recording's ``preprocessing`` text.

    ``[]`` keeps the image as it is; None: a step that cannot be rebuilt.
    """
    import re

    text = " ".join(text.split())
    if text.startswith("none"):  # tensor stimuli: nothing was decoded
        return []
    whole = re.fullmatch(r"ImageClassification\((.*)\)", text)
    if whole:
        resize, crop = _arg(whole[1], "resize_size"), _arg(whole[1], "crop_size")
        interpolation = _arg(whole[1], "interpolation") or "bilinear"
        if crop is None:
            return None
        steps: list[tuple] = []
        if resize is not None:
            steps.append(("resize", resize, interpolation, None))
        return [*steps, ("crop", crop)]
    inner = text[len("Compose("):-1] if text.startswith("Compose(") and text.endswith(")") else text
    steps, position = [], 0
    for match in re.finditer(_STEP, inner):
        if inner[position:match.start()].strip():
            return None  # text that is not a step
        position = match.end()
        name, args = match[1], match[2]
        if name == "Resize":
            size = _arg(args, "size")
            if size is None:
                return None
            steps.append(("resize", size, _arg(args, "interpolation") or "bilinear", _arg(args, "max_size")))
        elif name == "CenterCrop":
            size = _arg(args, "size")
            if size is None:
                return None
            steps.append(("crop", size))
        elif name not in _NON_GEOMETRIC:
            return None
    if inner[position:].strip():
        return None
    return steps


def _arg(args: str, key: str) -> Any:
    """One ``key=value`` of a transform's repr: a list of int, an int, a word, or None."""
    import re

    match = re.search(rf"(?<![\w.]){key}=(\([^()]*\)|\[[^\]]*\]|[^\s,()\[\]]+)", args)
    if match is None:
        return None
    value = match[1]
    if value == "None":
        return None
    if value[0] in "([":
        items = [v.strip() for v in value[1:-1].split(",") if v.strip()]
        try:
            return [int(v) for v in items]
        except ValueError:
            return None
    try:
        return [int(value)]
    except ValueError:
        return value


#: torchvision's ``pil_modes_mapping``: the PIL filter its ``resize`` uses for a PIL image
_PIL_FILTERS = {"nearest": 0, "nearest-exact": 0, "nearest_exact": 0, "bilinear": 2, "bicubic": 3, "box": 4,
                "hamming": 5, "lanczos": 1}


def _resize(image: Any, size: list[int], interpolation: str, max_size: int | None) -> Any:
    """torchvision's ``F.resize`` of a PIL image (``antialias`` is always on for PIL), in PIL alone.

    The output size is ``_compute_resized_output_size``'s; the pixels come from the
    same ``Image.resize`` call, so they are equal bit for bit (tested).
    """
    h, w = image.height, image.width
    if len(size) == 1:  # the shorter edge
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size[0], int(size[0] * long / short)
        if max_size is not None and new_long > max_size:
            new_short, new_long = int(max_size * new_short / new_long), max_size
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        new_h, new_w = size[0], size[1]
    if (new_h, new_w) == (h, w):
        return image
    return image.resize((new_w, new_h), _PIL_FILTERS[str(interpolation).rsplit(".", 1)[-1].lower()])


def _center_crop(image: Any, size: list[int]) -> Any:
    """torchvision's ``F.center_crop`` of a PIL image (zero padding where the crop is larger)."""
    from PIL import Image

    crop_h, crop_w = (size[0], size[0]) if len(size) == 1 else (size[0], size[1])
    h, w = image.height, image.width
    if crop_w > w or crop_h > h:
        left, top = (crop_w - w) // 2 if crop_w > w else 0, (crop_h - h) // 2 if crop_h > h else 0
        padded = Image.new(image.mode, (w + max(crop_w - w, 0), h + max(crop_h - h, 0)), 0)
        padded.paste(image, (left, top))
        image, h, w = padded, padded.height, padded.width
        if (crop_h, crop_w) == (h, w):
            return image
    top, left = int(round((h - crop_h) / 2.0)), int(round((w - crop_w) / 2.0))
    return image.crop((left, top, left + crop_w, top + crop_h))


def _load_rgb() -> Any:
    """:func:`unitrec.stimuli.load_rgb` (PIL and numpy only: a figure must not pay for torch)."""
    from ..stimuli.decode import load_rgb

    return load_rgb


def _size_pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = [size, size] if isinstance(size, (int, np.integer)) else list(size)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in pair):
        raise ConfigError(f"input_size must be a positive int or (height, width), got {size!r}")
    return int(pair[0]), int(pair[1])


def _network_image(path: Path, steps: list[tuple] | None, size: tuple[int, int] | None,
                   background: tuple[int, int, int]) -> np.ndarray:
    """An RGB ``(h, w, 3)`` uint8 image as the network saw it (see :func:`plot_montage`)."""
    try:
        image = _load_rgb()(path, background)
    except StimulusError as exc:
        raise StimulusError(f"cannot read stimulus image {path}: {exc}") from exc
    if steps is None:
        if size is not None:
            from PIL import Image

            image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        return np.asarray(image)
    for step in steps:
        if step[0] == "resize":
            _, target, interpolation, max_size = step
            image = _resize(image, target, interpolation, max_size[0] if max_size else None)
        else:
            image = _center_crop(image, step[1])
    return np.asarray(image)


def _recording_attrs(attrs: Mapping[str, Any]) -> dict[str, str]:
    """``stimulus_root`` and ``run_key`` of the file named in ``attrs["recording"]``, if readable."""
    path = attrs.get("recording")
    if not path or not Path(str(path)).is_file():
        return {}
    try:
        import h5py

        with h5py.File(str(path), "r") as h5:
            return {key: (v.decode() if isinstance(v, bytes) else str(v))
                    for key in ("stimulus_root", "run_key") if (v := h5.attrs.get(key)) is not None}
    except (OSError, KeyError):
        return {}


def _background(run_key: str) -> tuple[int, int, int]:
    """The colour transparent pixels were composited on (``"background"`` in the run key)."""
    import json
    import re

    try:
        text = json.loads(run_key).get("background", "") if run_key else ""
    except (ValueError, AttributeError):
        text = ""
    values = re.findall(r"\d+", str(text))
    return tuple(int(v) for v in values) if len(values) == 3 else (255, 255, 255)  # type: ignore[return-value]


def _receptive_field(unit: xr.DataArray | xr.Dataset, attrs: Mapping[str, Any]) -> tuple[float, ...] | None:
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


def _covers(rf: tuple[float, ...], shape: tuple[int, ...]) -> bool:
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


def _outline(ax: Any, rf: tuple[float, ...], shape: tuple[int, int]) -> int:
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
