"""Grating protocols: modulation ratio (F1/F0), spatial-frequency, size and contrast tuning.

The analyses of the set :func:`unitrec.stimuli.protocols` writes (or of any recording
whose stimulus coordinates carry ``orientation``, ``spatial_frequency``, ``phase``,
``contrast``, ``aperture_diameter``). Each function keeps the rows of its protocol
(the ``protocol`` coordinate; without one, every row), averages responses per
condition, finds each unit's preferred condition and reads its curve there:

- Responses are averaged over the stimuli of each condition (over phase, unless
  phase is what is swept, and over any parameter not named).
- The preferred condition is the orientation and spatial frequency of the single
  condition with the largest phase-averaged response. For size and contrast it is
  looked for over every diameter (contrast) too, so it is where the unit responds
  most; a missing ``orientation`` or ``spatial_frequency`` coordinate counts as one
  value (NaN in the result).
- The curve is the phase-averaged response along the swept parameter at that
  orientation and spatial frequency.

Rows whose parameters are NaN or infinite (the full-field rows of a size sweep have
``aperture_diameter`` inf) are left out. Responses are used as recorded, except with
``rectify=True``, which clips them at 0 first (a firing rate): the phase-averaged
response of a linear stage (a convolution before its ReLU) to a grating is its
response to the mean luminance whatever the grating, so record a site after a ReLU
(``relu``, ``layer1``) or rectify. Results come back with the recording's unit dims (``unit``, ``channel`` or ``channel,
y, x``) and coordinates.

Cost: one streamed pass over the protocol's rows (unit blocks, so dask-backed and
full-map recordings need no more memory than a block), then a curve fit per unit on
its reduced curve for :func:`sf_tuning` and :func:`contrast_response` (milliseconds
to tens of milliseconds a unit, with a progress bar above 500 units;
select units, e.g. ``units: center``, before fitting whole maps). Curve fits need scipy (``pip install
'unitrec[analysis]'``), the ``plot_*`` figures matplotlib.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from unitrec.analysis._units import STIMULUS, UNIT, Population, as_population, unit_blocks
from unitrec.errors import ConfigError, UnitrecError, UnitrecWarning

__all__ = [
    "contrast_response",
    "modulation_ratio",
    "sf_tuning",
    "size_tuning",
]

_ORI, _SF, _PHASE = "orientation", "spatial_frequency", "phase"
_FIT_PROGRESS = 500  # units above which the curve fits show a progress bar
_MAX_NFEV = 400  # evaluations per fit; exact curves converge in tens, a fit still going after 400 fails
_PREFERRED = ("preferred condition: the orientation and spatial frequency of the condition with the "
              "largest phase-averaged response")


# -- the four analyses -----------------------------------------------------------------


def modulation_ratio(da: xr.DataArray, rectify: bool = True) -> xr.Dataset:
    """Modulation ratio F1/F0 of every unit, from the phase sweep: simple or complex.

    Parameters
    ----------
    da : xarray.DataArray
        Recording (first dim ``"stimulus"``) with a ``phase`` coordinate (degrees,
        equally spaced over one 360° cycle) and usually ``orientation`` and
        ``spatial_frequency``; rows of ``protocol == "phase"`` if it has a
        ``protocol`` coordinate. May be dask-backed.
    rectify : bool
        Clip responses at 0 before anything else, as a firing rate is (default).
        Raw activations (before a ReLU) can be negative; unrectified, F0 can be
        zero or negative and the ratio is then NaN.

    Returns
    -------
    xarray.Dataset
        Per unit: ``f0`` (mean response over phase), ``f1`` (amplitude of the first
        harmonic), ``ratio`` (F1/F0; NaN where F0 ≤ 0 or is zero up to rounding,
        below 1e-9 of the largest response), ``is_simple`` (ratio > 1;
        False where the ratio is NaN), ``preferred_orientation``,
        ``preferred_spatial_frequency``; and ``response`` (dims ``phase`` then the
        unit dims), the response at each phase at the preferred condition.

    Raises
    ------
    ConfigError
        Without a ``phase`` coordinate, with phases that are not equally spaced
        over 360°, or without rows of the phase protocol.

    Notes
    -----
    With :math:`N` phases :math:`\\varphi_k`, F0 :math:`= \\frac1N \\sum_k r_k` and
    F1 :math:`= |\\frac2N \\sum_k r_k e^{-i\\varphi_k}|`, so
    :math:`r(\\varphi) = a + b\\cos(\\varphi - \\varphi_0)` has F0 = a and F1 = b, and
    a half-wave rectified sinusoid has F1/F0 = π/2. Harmonics ``k ≡ ±1 (mod N)``
    alias into F1: use 8 phases or more. Both are taken at the unit's preferred
    condition, the orientation and spatial frequency with the largest F0. Units
    with F1/F0 > 1 are simple, the others complex (Skottun et al. 1991, *Vision
    Res.* 31:1079).

    Examples
    --------
    >>> ds = modulation_ratio(ur.load_layer("runs/p.h5", "conv1"))  # doctest: +SKIP
    >>> float(ds.is_simple.mean())                                   # doctest: +SKIP
    """
    what = "modulation_ratio"
    pop, rows = _select(da, "phase", (_PHASE,), what)
    phases = np.round(np.mod(_numeric(pop.data, _PHASE, rows, what), 360.0), 9)
    levels = np.unique(phases)
    steps = np.diff(np.append(levels, levels[0] + 360.0))
    if levels.size < 3 or not np.allclose(steps, 360.0 / levels.size, atol=1e-6):
        raise ConfigError(
            f"{what}: the phases must be at least 3 values equally spaced over one 360° cycle "
            f"(e.g. 0, 45, ..., 315); the recording has {[float(v) for v in levels]}"
        )
    angle = np.deg2rad(levels)

    def reduce(table: np.ndarray) -> dict[str, np.ndarray]:
        # table (orientation, sf, phase, units): NaN where a phase is missing, so F0/F1 are too
        f0 = table.mean(axis=2)
        f1 = np.abs(np.tensordot(np.exp(-1j * angle), table, axes=([0], [2]))) * 2 / levels.size
        (o, s), _ = _preferred(f0)
        units = np.arange(table.shape[-1])
        cells = np.moveaxis(table, -1, 0)
        return {"f0": np.moveaxis(f0, -1, 0)[units, o, s], "f1": np.moveaxis(f1, -1, 0)[units, o, s],
                "response": cells[units, o, s].T, "o": o, "s": s}

    (ori, sf, _), out = _stream(pop, rows, (_ORI, _SF, _PHASE), reduce, rectify=rectify,
                                override={_PHASE: phases})
    f0, f1 = out["f0"], out["f1"]
    # F0 zero up to rounding (a zero-mean sine, unrectified) gives no ratio rather than 1e17
    zero = f0 <= 1e-9 * np.nanmax(np.abs(out["response"]), axis=0, initial=0.0)
    ratio = f1 / np.where((f0 > 0) & ~zero, f0, np.nan)
    ds = _dataset(pop, da, {
        "f0": ((), f0), "f1": ((), f1), "ratio": ((), ratio), "is_simple": ((), ratio > 1),
        "preferred_orientation": ((), _pick(ori, out["o"])),
        "preferred_spatial_frequency": ((), _pick(sf, out["s"])),
        "response": ((_PHASE,), out["response"]),
    }, {_PHASE: levels}, swept=_PHASE)
    n_simple = int(np.sum(ratio > 1))
    ds.attrs.update({
        "protocol": "phase", "rectify": int(bool(rectify)),
        "f0": "mean response over phase", "f1": "|2/N Σ r e^{-iφ}|, amplitude of the first harmonic",
        "classification": "simple: F1/F0 > 1, complex otherwise (Skottun et al. 1991)",
        "preferred": _PREFERRED, "n_simple": n_simple, "n_complex": int(np.sum(ratio <= 1)),
        "n_undefined": int(np.sum(~np.isfinite(ratio))),
    })
    return ds


def sf_tuning(da: xr.DataArray, rectify: bool = False) -> xr.Dataset:
    """Spatial-frequency tuning of every unit: preferred frequency and bandwidth.

    Parameters
    ----------
    da : xarray.DataArray
        Recording with a ``spatial_frequency`` coordinate (cycles per image) and
        usually ``orientation`` and ``phase``; rows of ``protocol == "phase"`` if it
        has a ``protocol`` coordinate. May be dask-backed.
    rectify : bool
        Clip responses at 0 first (see the module notes); default as recorded.

    Returns
    -------
    xarray.Dataset
        ``response`` (dims ``spatial_frequency`` then the unit dims), the
        phase-averaged response at the preferred orientation; per unit
        ``preferred_orientation``, ``preferred_spatial_frequency`` (fit-free: the
        frequency of the largest response), the fit's ``fit_spatial_frequency``
        (``2**mu``) and ``bandwidth`` (octaves), and its parameters ``fit_baseline``,
        ``fit_amplitude``, ``fit_mu``, ``fit_sigma`` (log2 units) and ``fit_r2``.

    Raises
    ------
    ConfigError
        Without a ``spatial_frequency`` coordinate or rows of the phase protocol.

    Notes
    -----
    The curve is fitted (:func:`scipy.optimize.curve_fit`) with a Gaussian in
    :math:`\\log_2` frequency on a baseline,
    :math:`R(f) = b + A \\exp(-(\\log_2 f - \\mu)^2 / 2\\sigma^2)` with bounds that keep
    it a tuning curve: :math:`b` from one range (max − min of the curve) below its
    minimum to its maximum, :math:`0 ≤ A ≤` 4 ranges, μ within one octave of the
    sampled frequencies, σ from 0.05 octave to their span in octaves (at least 1). The preferred frequency is :math:`2^\\mu` and
    the bandwidth the full width at half height above the baseline,
    :math:`2\\sqrt{2\\ln 2}\\,\\sigma` octaves. A unit whose fit fails (fewer than 4
    finite points, a curve whose range is within 1e-9 of its size, no convergence)
    gets NaN for every fit value; a unit whose fitted peak lies outside the sampled
    frequencies (low- or high-pass within them) keeps its fit parameters but gets
    NaN frequency and bandwidth. ``attrs`` count both (``n_fit_failed``, ``n_peak_outside``); neither
    raises.
    """
    what = "sf_tuning"
    pop, rows = _select(da, "phase", (_SF,), what)

    def reduce(table: np.ndarray) -> dict[str, np.ndarray]:
        mean = _phase_mean(table, axis=2)
        (o, s), _ = _preferred(mean)
        units = np.arange(mean.shape[-1])
        return {"response": np.moveaxis(mean, -1, 0)[units, o].T, "o": o, "s": s}

    (ori, sf, _), out = _stream(pop, rows, (_ORI, _SF, _PHASE), reduce, rectify=rectify)
    _enough(sf, 4, "spatial frequencies", what)
    x = np.log2(sf)
    params, r2, failed = _fit_curves(_log_gaussian, _log_gaussian_jacobian, x, out["response"].T,
                                     _gaussian_start, what)
    b, a, mu, sigma = params.T
    outside = np.isfinite(mu) & ((mu < x.min() - 1e-9) | (mu > x.max() + 1e-9))
    inside = np.isfinite(mu) & ~outside
    ds = _dataset(pop, da, {
        "response": ((_SF,), out["response"]),
        "preferred_orientation": ((), _pick(ori, out["o"])),
        "preferred_spatial_frequency": ((), _pick(sf, out["s"])),
        "fit_spatial_frequency": ((), np.where(inside, 2.0 ** mu, np.nan)),
        "bandwidth": ((), np.where(inside, 2 * math.sqrt(2 * math.log(2)) * sigma, np.nan)),
        "fit_baseline": ((), b), "fit_amplitude": ((), a), "fit_mu": ((), mu), "fit_sigma": ((), sigma),
        "fit_r2": ((), r2),
        # narrower than the sampling: the samples cannot pin down the width
        "bandwidth_resolved": ((), np.where(inside, 2 * math.sqrt(2 * math.log(2)) * sigma, np.nan)
                               >= np.diff(x).min()),
    }, {_SF: sf}, swept=_SF)
    ds.attrs.update({
        "protocol": "phase", "preferred": _PREFERRED, "rectify": int(bool(rectify)),
        "fit": "R(f) = b + A exp(-(log2 f - mu)^2 / (2 sigma^2)); fit_spatial_frequency = 2**mu; "
               "bandwidth = 2 sqrt(2 ln 2) sigma octaves (full width at half height above b)",
        "preferred_spatial_frequency": "fit-free: the sampled frequency of the largest response",
        "bandwidth_resolved": "the bandwidth is at least the smallest step between the sampled "
                              "frequencies (octaves); a narrower one is not determined by the data",
        "n_fit_failed": failed, "n_peak_outside": int(outside.sum()),
    })
    return ds


def size_tuning(da: xr.DataArray, max_offset: float | None = None, rectify: bool = False) -> xr.Dataset:
    """Size tuning and surround suppression of the units centred on the aperture.

    Parameters
    ----------
    da : xarray.DataArray
        Recording with ``aperture_diameter``, ``aperture_y`` and ``aperture_x``
        coordinates (stimulus pixels) and the units' ``rf_center_y``/``rf_center_x``
        (input pixels); rows of ``protocol == "size"`` if it has a ``protocol``
        coordinate. May be dask-backed.
    max_offset : float, optional
        Largest distance in pixels, along rows and along columns, from a unit's
        receptive-field centre to the aperture centre for the unit to be analysed.
        Default: half the site's ``rf_stride`` (the spacing of the units'
        centres, so the nearest unit always qualifies), at least 1 pixel; 1 pixel
        when the recording does not say its stride.
    rectify : bool
        Clip responses at 0 first (see the module notes); default as recorded.

    Returns
    -------
    xarray.Dataset
        ``centered`` (per unit: analysed or not) and, NaN for the units that are
        not: ``response`` (dims ``aperture_diameter`` then the unit dims),
        ``preferred_orientation``, ``preferred_spatial_frequency``,
        ``preferred_size`` (the diameter of the largest response), ``peak_response``,
        ``largest_response`` (at the largest diameter) and ``ssi``.

    Raises
    ------
    ConfigError
        Without the aperture coordinates or the units' receptive-field centres,
        with apertures at more than one centre, or when no unit is centred on the
        aperture (the message lists the centres there are).

    Notes
    -----
    The surround suppression index is
    :math:`\\mathrm{SSI} = (R_\\mathrm{peak} - R_\\mathrm{largest}) / R_\\mathrm{peak}`,
    0 for a unit whose response never falls as the grating grows and 1 for one
    silenced by the largest; NaN where :math:`R_\\mathrm{peak} ≤ 0`.

    Aperture positions are in stimulus pixels and receptive-field centres in input
    pixels: they agree only when preprocessing neither resizes nor crops. A
    warning says so when the recording's ``preprocessing`` attribute has a resize
    or crop that changes the stimuli's size (stimuli found through the
    recording's file); without that attribute it cannot be checked.
    """
    what = "size_tuning"
    needed = ("aperture_diameter", "aperture_y", "aperture_x")
    pop, rows = _select(da, "size", needed, what)
    flat = pop.data
    cy_rows = _numeric(flat, "aperture_y", rows, what)
    cx_rows = _numeric(flat, "aperture_x", rows, what)
    centres = sorted(set(zip(np.round(cy_rows, 6).tolist(), np.round(cx_rows, 6).tolist())))
    if len(centres) != 1:
        raise ConfigError(
            f"{what}: the apertures sit at {len(centres)} centres {centres[:5]}; analyse one at a "
            f"time, e.g. da.isel(stimulus=(da.aperture_y == {centres[0][0]:g}) & "
            f"(da.aperture_x == {centres[0][1]:g}))"
        )
    cy, cx = centres[0]
    unit_names = {str(n) for n, c in flat.coords.items() if c.dims == (UNIT,)}
    if not {"rf_center_y", "rf_center_x"} <= unit_names:
        raise ConfigError(
            f"{what} needs each unit's receptive-field centre (coordinates rf_center_y, rf_center_x, "
            f"which recordings of convolutional sites carry); the units have: "
            f"{', '.join(sorted(unit_names)) or 'no coordinates'}"
        )
    offset = _max_offset(da.attrs, max_offset)
    ry = np.asarray(flat["rf_center_y"].values, dtype=float)
    rx = np.asarray(flat["rf_center_x"].values, dtype=float)
    centered = (np.abs(ry - cy) <= offset + 1e-9) & (np.abs(rx - cx) <= offset + 1e-9)
    if not centered.any():
        known = sorted(set(zip(ry.round(2).tolist(), rx.round(2).tolist())))
        listed = ", ".join(f"({y:g}, {x:g})" for y, x in known[:8]) + (" ..." if len(known) > 8 else "")
        raise ConfigError(
            f"{what}: no unit's receptive-field centre lies within {offset:g} px of the aperture centre "
            f"(row {cy:g}, column {cx:g}); the units' centres (row, column): {listed}. Record the "
            "site with `units: center`, or generate the apertures at a unit's rf_center "
            "(aperture_center=(row, column))"
        )
    _check_geometry(da)
    picked = np.flatnonzero(centered)

    def reduce(table: np.ndarray) -> dict[str, np.ndarray]:
        mean = _phase_mean(table, axis=3)
        (o, s, _), _ = _preferred(mean)
        units = np.arange(mean.shape[-1])
        return {"response": np.moveaxis(mean, -1, 0)[units, o, s].T, "o": o, "s": s}

    (ori, sf, diameters, _), out = _stream(pop, rows, (_ORI, _SF, "aperture_diameter", _PHASE), reduce,
                                           units=picked, rectify=rectify)
    curves = out["response"]  # (diameter, picked)
    finite = np.isfinite(curves).any(axis=0)
    peak_at = np.argmax(np.where(np.isfinite(curves), curves, -np.inf), axis=0)
    peak = np.where(finite, curves[peak_at, np.arange(picked.size)], np.nan)
    largest = curves[-1]
    ssi = (peak - largest) / np.where(peak > 0, peak, np.nan)

    def spread(values: np.ndarray) -> np.ndarray:
        full = np.full(values.shape[:-1] + (pop.n_units,), np.nan)
        full[..., picked] = values
        return full

    ds = _dataset(pop, da, {
        "centered": ((), centered),
        "response": (("aperture_diameter",), spread(curves)),
        "preferred_orientation": ((), spread(_pick(ori, out["o"]))),
        "preferred_spatial_frequency": ((), spread(_pick(sf, out["s"]))),
        "preferred_size": ((), spread(np.where(finite, diameters[peak_at], np.nan))),
        "peak_response": ((), spread(peak)), "largest_response": ((), spread(largest)),
        "ssi": ((), spread(ssi)),
    }, {"aperture_diameter": diameters}, swept="aperture_diameter")
    ds.attrs.update({
        "protocol": "size", "preferred": _PREFERRED + " (over every diameter too)", "rectify": int(bool(rectify)),
        "ssi": "(R_peak - R_largest) / R_peak; NaN where R_peak <= 0",
        "aperture_center": [cy, cx], "max_offset": offset, "n_centered": int(centered.sum()),
        "pixels": "aperture in stimulus pixels, rf_center in input pixels: equal without resize or crop",
    })
    return ds


def contrast_response(da: xr.DataArray, rectify: bool = False) -> xr.Dataset:
    """Contrast-response function of every unit, with a Naka–Rushton fit.

    Parameters
    ----------
    da : xarray.DataArray
        Recording with a ``contrast`` coordinate (Michelson) and usually
        ``orientation``, ``spatial_frequency`` and ``phase``; rows of ``protocol ==
        "contrast"`` if it has a ``protocol`` coordinate. May be dask-backed.
    rectify : bool
        Clip responses at 0 first (see the module notes); default as recorded.

    Returns
    -------
    xarray.Dataset
        ``response`` (dims ``contrast`` then the unit dims), the phase-averaged
        response at the preferred condition; per unit ``preferred_orientation``,
        ``preferred_spatial_frequency`` and the fit's ``r_max``, ``c50``,
        ``exponent``, ``baseline`` and ``r2``.

    Raises
    ------
    ConfigError
        Without a ``contrast`` coordinate or rows of the contrast protocol.

    Notes
    -----
    :math:`R(c) = R_\\mathrm{max}\\, c^n / (c^n + c_{50}^n) + b`, fitted by
    :func:`scipy.optimize.curve_fit` with :math:`c_{50} \\in (0, 10]` and
    :math:`n \\in [0.1, 10]` (Albrecht & Hamilton 1982, *J. Neurophysiol.*
    48:217). A unit whose fit fails (fewer than 4 finite points, a curve whose
    range is within 1e-9 of its size, no convergence) gets NaN;
    ``attrs["n_fit_failed"]`` counts them. A unit that grows linearly over the contrasts shown has :math:`c_{50}` at the bound and
    :math:`R_\\mathrm{max}` far beyond its responses: read ``c50`` with the curve.
    Low contrasts are 8-bit quantised in generated images (see
    :func:`unitrec.stimuli.protocols`).
    """
    what = "contrast_response"
    pop, rows = _select(da, "contrast", ("contrast",), what)

    def reduce(table: np.ndarray) -> dict[str, np.ndarray]:
        mean = _phase_mean(table, axis=3)
        (o, s, _), _ = _preferred(mean)
        units = np.arange(mean.shape[-1])
        return {"response": np.moveaxis(mean, -1, 0)[units, o, s].T, "o": o, "s": s}

    (ori, sf, contrasts, _), out = _stream(pop, rows, (_ORI, _SF, "contrast", _PHASE), reduce, rectify=rectify)
    _enough(contrasts, 4, "contrasts", what)
    params, r2, failed = _fit_curves(_naka_rushton, _naka_rushton_jacobian, contrasts, out["response"].T,
                                     _naka_rushton_start, what)
    r_max, c50, n, b = params.T
    ds = _dataset(pop, da, {
        "response": (("contrast",), out["response"]),
        "preferred_orientation": ((), _pick(ori, out["o"])),
        "preferred_spatial_frequency": ((), _pick(sf, out["s"])),
        "r_max": ((), r_max), "c50": ((), c50), "exponent": ((), n), "baseline": ((), b), "r2": ((), r2),
        "c50_in_range": ((), c50 <= contrasts.max()),  # beyond it: the curve has not bent yet
    }, {"contrast": contrasts}, swept="contrast")
    ds.attrs.update({
        "protocol": "contrast", "preferred": _PREFERRED + " (over every contrast too)",
        "rectify": int(bool(rectify)),
        "fit": "R(c) = r_max c^n / (c^n + c50^n) + baseline (Naka-Rushton); c50 in (0, 10], n in [0.1, 10]",
        "c50_in_range": "c50 lies within the contrasts shown; beyond them it extrapolates a curve that "
                        "has not saturated",
        "n_fit_failed": failed,
    })
    return ds


# -- rows, tables, preferred conditions ------------------------------------------------


def _enough(levels: np.ndarray, n: int, what: str, function: str) -> None:
    """A 4-parameter fit needs at least 4 levels of the swept parameter."""
    if np.isfinite(levels).sum() < n:
        raise ConfigError(f"{function}: fitting needs at least {n} {what}; the recording has "
                          f"{[float(v) for v in levels]}")


def _select(da: xr.DataArray, protocol: str, needed: Sequence[str], what: str) -> tuple[Population, np.ndarray]:
    """The population and the rows of `protocol` (all rows without a protocol coordinate)."""
    pop = as_population(da)
    flat = pop.data
    names = sorted(str(n) for n, c in flat.coords.items() if c.dims == (STIMULUS,) and n != STIMULUS)
    missing = [n for n in needed if n not in names]
    if missing:
        raise ConfigError(
            f"{what} needs the stimulus coordinate{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
            f"the recording has: {', '.join(names) or 'none (record a folder with metadata.csv)'}. "
            "Record the set unitrec.stimuli.protocols writes (`unitrec stimuli protocols DIR`)"
        )
    rows = np.arange(pop.n_stimuli)
    if "protocol" in names:
        labels = np.asarray(flat["protocol"].values).astype(str)
        rows = np.flatnonzero(labels == protocol)
        if not rows.size:
            raise ConfigError(
                f"{what} reads the rows of protocol {protocol!r}; the recording's protocols are "
                f"{sorted(set(labels.tolist()))}"
            )
    keys = [n for n in (_ORI, _SF, _PHASE, *needed) if n in names]
    finite = np.ones(rows.size, dtype=bool)
    for key in keys:
        finite &= np.isfinite(_numeric(flat, key, rows, what))
    if not finite.any():
        raise ConfigError(f"{what}: every row has a NaN in {', '.join(keys)}")
    return pop, rows[finite]


def _numeric(flat: xr.DataArray, name: str, rows: np.ndarray, what: str) -> np.ndarray:
    try:
        return np.asarray(flat[name].values[rows], dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: the stimulus coordinate {name} must hold numbers, "
                          f"got {flat[name].values[rows][:3]!r}") from None


def _stream(
    pop: Population,
    rows: np.ndarray,
    keys: Sequence[str],
    reduce: Callable[[np.ndarray], dict[str, np.ndarray]],
    *,
    rectify: bool = False,
    units: np.ndarray | None = None,
    override: Mapping[str, np.ndarray] | None = None,
) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Mean response per combination of `keys`, reduced per unit block.

    Each block's table has shape ``(*levels, units)`` (NaN where a combination has
    no finite response); `reduce` turns it into per-unit arrays (last axis units),
    which are joined over blocks. A key the recording lacks has one level, NaN.
    Returns the levels of each key and the joined arrays.
    """
    flat = pop.data
    levels, index = [], []
    for key in keys:
        if override and key in override:
            values = np.asarray(override[key], dtype=float)
        elif key in flat.coords:
            values = np.asarray(flat[key].values[rows], dtype=float)
        else:
            values = np.full(rows.size, np.nan)
        found, where = np.unique(values, return_inverse=True)
        levels.append(found)
        index.append(where.reshape(-1))
    shape = tuple(len(v) for v in levels)
    group = np.ravel_multi_index(tuple(index), shape)
    indicator = np.zeros((int(np.prod(shape)), rows.size))
    indicator[group, np.arange(rows.size)] = 1.0
    data = flat.isel({STIMULUS: rows})
    if units is not None:
        data = data.isel({UNIT: units})
    parts: list[dict[str, np.ndarray]] = []
    for block in unit_blocks(data, None):
        if rectify:
            block = np.maximum(block, 0.0)  # NaN stays NaN
        valid = np.isfinite(block)  # an infinite response (float16 overflow) is no response
        sums = indicator @ np.where(valid, block, 0.0)
        counts = indicator @ valid
        mean = np.divide(sums, counts, out=np.full_like(sums, np.nan), where=counts > 0)
        parts.append(reduce(mean.reshape(*shape, block.shape[1])))
    return levels, {k: np.concatenate([p[k] for p in parts], axis=-1) for k in parts[0]}


def _preferred(mean: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Per unit (last axis), the index of the largest value over all other axes, and
    whether there was a finite one."""
    n = mean.shape[-1]
    flat = mean.reshape(-1, n)
    finite = np.isfinite(flat)
    best = np.argmax(np.where(finite, flat, -np.inf), axis=0)
    return np.unravel_index(best, mean.shape[:-1]), finite.any(axis=0)


def _phase_mean(table: np.ndarray, axis: int) -> np.ndarray:
    """Mean over the phases a condition has (NaN, without a warning, where it has none)."""
    valid = np.isfinite(table)
    count = valid.sum(axis=axis)
    total = np.where(valid, table, 0.0).sum(axis=axis)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def _pick(levels: np.ndarray, index: np.ndarray) -> np.ndarray:
    return np.asarray(levels, dtype=float)[index]


def _dataset(pop: Population, da: xr.DataArray, variables: Mapping[str, tuple[tuple[str, ...], np.ndarray]],
             coords: Mapping[str, np.ndarray], *, swept: str) -> xr.Dataset:
    """Per-unit arrays (last axis units) as a Dataset with the recording's unit dims and coords."""
    flat = pop.data
    unit_coords = {n: c for n, c in flat.coords.items() if c.dims == (UNIT,)}
    out = {}
    dead = ~np.isfinite(variables["response"][1]).any(axis=0) if "response" in variables else None
    for name, (dims, values) in variables.items():
        if name.startswith("preferred_") and dead is not None and dead.any():
            values = np.where(dead, np.nan, values)  # a unit without any response prefers nothing
        arr = xr.DataArray(values, dims=(*dims, UNIT),
                           coords={**unit_coords, **{d: coords[d] for d in dims}})
        out[name] = pop.restore(arr)
    ds = xr.Dataset(out)
    if swept in flat.coords:
        ds[swept].attrs.update(flat[swept].attrs)
    site = da.attrs.get("site") or (str(da.name) if da.name is not None else None)
    ds.attrs.update({"swept": swept, "site": site or "",
                     "response_units": str(da.attrs.get("units", "")),
                     "averaging": "responses averaged over the stimuli of each condition (over phase "
                                  "unless phase is swept); rows with NaN or infinite parameters left out"})
    return ds


def _max_offset(attrs: Mapping[Hashable, Any], max_offset: float | None) -> float:
    if max_offset is not None:
        try:
            value = float(max_offset)
        except (TypeError, ValueError):
            value = float("nan")
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"max_offset must be a number of pixels >= 0, got {max_offset!r}")
        return value
    stride = attrs.get("rf_stride")
    try:
        largest = float(np.max(np.asarray(stride, dtype=float))) if stride is not None else float("nan")
    except (TypeError, ValueError):
        largest = float("nan")
    return max(1.0, largest / 2) if math.isfinite(largest) else 1.0


def _check_geometry(da: xr.DataArray) -> None:
    """Warn when the recording's preprocessing resizes or crops the stimuli."""
    text = da.attrs.get("preprocessing")
    if not text:
        return
    from unitrec.analysis.plots import _geometry

    steps = _geometry(str(text))
    if not steps:  # none, or a transform that cannot be read: nothing to say
        return
    shape = _stimulus_shape(da)
    if shape is not None and all(_identity(step, shape) for step in steps):
        return
    warnings.warn(
        f"the recording's preprocessing ({' '.join(str(text).split())[:120]}) resizes or crops the "
        "stimuli, so aperture positions (stimulus pixels) and rf_center (input pixels) may differ; "
        "generate the stimuli at the network's input size and record with resize: null, crop: null",
        UnitrecWarning, stacklevel=3,
    )


def _stimulus_shape(da: xr.DataArray) -> tuple[int, int] | None:
    """``(height, width)`` of the recording's first stimulus image, if it can be found."""
    from pathlib import Path

    from unitrec.analysis.plots import _recording_attrs

    root = _recording_attrs(da.attrs).get("stimulus_root")
    if not root or STIMULUS not in da.coords or not da.sizes[STIMULUS]:
        return None
    try:
        from PIL import Image

        with Image.open(Path(root) / str(da[STIMULUS].values[0])) as img:
            return img.height, img.width
    except (OSError, ValueError):
        return None


def _identity(step: tuple, shape: tuple[int, int]) -> bool:
    """Whether a resize or centre-crop step leaves an image of `shape` (height, width) as it is."""
    size = [int(v) for v in step[1]]
    if len(size) == 1:  # a resize of the shorter side, or a square crop
        return size == [min(shape)] if step[0] == "resize" else size * 2 == list(shape)
    return size == list(shape)


# -- curve fits ------------------------------------------------------------------------


def _log_gaussian(x: np.ndarray, b: float, a: float, mu: float, sigma: float) -> np.ndarray:
    return b + a * np.exp(-((x - mu) ** 2) / (2 * sigma**2))


def _log_gaussian_jacobian(x: np.ndarray, b: float, a: float, mu: float, sigma: float) -> np.ndarray:
    d = x - mu
    e = np.exp(-(d**2) / (2 * sigma**2))
    return np.stack([np.ones_like(x), e, a * e * d / sigma**2, a * e * d**2 / sigma**3], axis=1)


def _gaussian_start(x: np.ndarray, y: np.ndarray) -> tuple[list[float], tuple[list[float], list[float]]]:
    """Start and bounds: the baseline within the curve's range (and one range below), the
    amplitude up to 4 ranges, the peak within an octave of the frequencies, the width
    from 0.05 octave to their span (at least 1), so a flat-topped curve is not fitted by
    a parabola-like Gaussian on a far-off baseline."""
    span, rng = float(x.max() - x.min()), float(np.ptp(y))
    top = max(span, 1.0)
    p0 = [float(y.min()), rng, float(x[np.argmax(y)]), min(max(span / 4, 0.25), top)]
    lower = [float(y.min()) - rng, 0.0, float(x.min()) - 1, 0.05]
    upper = [float(y.max()), 4 * rng, float(x.max()) + 1, top]
    return p0, (lower, upper)


def _naka_rushton(c: np.ndarray, r_max: float, c50: float, n: float, b: float) -> np.ndarray:
    return r_max / (1 + np.power(c50 / c, n)) + b  # c^n / (c^n + c50^n), without overflow in c^n


def _naka_rushton_jacobian(c: np.ndarray, r_max: float, c50: float, n: float, b: float) -> np.ndarray:
    u = 1 / (1 + np.power(c50 / c, n))
    slope = r_max * u * (1 - u)
    return np.stack([u, -slope * n / c50, slope * np.log(c / c50), np.ones_like(c)], axis=1)


def _naka_rushton_start(c: np.ndarray, y: np.ndarray) -> tuple[list[float], tuple[list[float], list[float]]]:
    order = np.argsort(c)
    c, y = c[order], y[order]
    b0, rise = float(y[0]), float(y[-1] - y[0])
    half = np.flatnonzero((y - b0) * np.sign(rise or 1.0) >= abs(rise) / 2)
    c50 = float(c[half[0]]) if half.size else float(np.sqrt(c[0] * c[-1]))
    p0 = [rise if rise else float(np.ptp(y)), min(max(c50, 1e-3), 10.0), 2.0, b0]
    return p0, ([-np.inf, 1e-9, 0.1, -np.inf], [np.inf, 10.0, 10.0, np.inf])


def _fit_curves(
    model: Callable[..., np.ndarray],
    jacobian: Callable[..., np.ndarray],
    x: np.ndarray,
    curves: np.ndarray,
    start: Callable[[np.ndarray, np.ndarray], tuple[list[float], tuple[list[float], list[float]]]],
    what: str,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Fit `model` to each row of `curves` over `x`: (parameters, r², failures); NaN where it fails."""
    try:
        from scipy.optimize import OptimizeWarning, curve_fit
    except ImportError as exc:
        raise UnitrecError(f"{what} fits curves with scipy: pip install 'unitrec[analysis]'") from exc
    n_params = model.__code__.co_argcount - 1
    params = np.full((curves.shape[0], n_params), np.nan)
    r2 = np.full(curves.shape[0], np.nan)
    units: Any = range(curves.shape[0])
    if curves.shape[0] > _FIT_PROGRESS and sys.stderr.isatty():  # a log gets no bar redrawn with \r
        from tqdm import tqdm

        units = tqdm(units, desc=f"{what}: fitting", unit="unit")
    x = np.asarray(x, dtype=float)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", OptimizeWarning)
        for i in units:
            y = curves[i]
            ok = np.isfinite(y)
            if ok.sum() < n_params or np.ptp(y[ok]) <= 1e-9 * np.abs(y[ok]).max():
                continue  # too few points, or flat up to rounding: nothing to fit
            p0, bounds = start(x[ok], y[ok])
            try:
                fitted, _ = curve_fit(model, x[ok], y[ok], p0=p0, bounds=bounds, jac=jacobian, max_nfev=_MAX_NFEV)
            except (RuntimeError, ValueError, np.linalg.LinAlgError):
                continue
            residual = y[ok] - model(x[ok], *fitted)
            total = np.sum((y[ok] - y[ok].mean()) ** 2)
            if np.all(np.isfinite(fitted)) and np.all(np.isfinite(residual)):
                params[i] = fitted
                r2[i] = 1 - np.sum(residual**2) / total
    return params, r2, int(np.sum(~np.isfinite(r2)))
