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
import warnings
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import xarray as xr

from unitrec.analysis._units import STIMULUS, UNIT
from unitrec.analysis.experiments._conditions import (ORI, PHASE, SF, dataset, enough, numeric, phase_mean, pick,
                                                      preferred, select, stream)
from unitrec.analysis.experiments._curve_fits import (fit_curves, gaussian_start, log_gaussian,
                                                      log_gaussian_jacobian, naka_rushton, naka_rushton_jacobian,
                                                      naka_rushton_start)
from unitrec.analysis.experiments._images import geometry, recording_attrs
from unitrec.errors import ConfigError, UnitrecWarning

__all__ = [
    "contrast_response",
    "modulation_ratio",
    "sf_tuning",
    "size_tuning",
]

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
    pop, rows = select(da, "phase", (PHASE,), what)
    phases = np.round(np.mod(numeric(pop.data, PHASE, rows, what), 360.0), 9)
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
        (o, s), _ = preferred(f0)
        units = np.arange(table.shape[-1])
        cells = np.moveaxis(table, -1, 0)
        return {"f0": np.moveaxis(f0, -1, 0)[units, o, s], "f1": np.moveaxis(f1, -1, 0)[units, o, s],
                "response": cells[units, o, s].T, "o": o, "s": s}

    (ori, sf, _), out = stream(pop, rows, (ORI, SF, PHASE), reduce, rectify=rectify,
                               override={PHASE: phases})
    f0, f1 = out["f0"], out["f1"]
    # F0 zero up to rounding (a zero-mean sine, unrectified) gives no ratio rather than 1e17
    zero = f0 <= 1e-9 * np.nanmax(np.abs(out["response"]), axis=0, initial=0.0)
    ratio = f1 / np.where((f0 > 0) & ~zero, f0, np.nan)
    ds = dataset(pop, da, {
        "f0": ((), f0), "f1": ((), f1), "ratio": ((), ratio), "is_simple": ((), ratio > 1),
        "preferred_orientation": ((), pick(ori, out["o"])),
        "preferred_spatial_frequency": ((), pick(sf, out["s"])),
        "response": ((PHASE,), out["response"]),
    }, {PHASE: levels}, swept=PHASE)
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
    pop, rows = select(da, "phase", (SF,), what)

    def reduce(table: np.ndarray) -> dict[str, np.ndarray]:
        mean = phase_mean(table, axis=2)
        (o, s), _ = preferred(mean)
        units = np.arange(mean.shape[-1])
        return {"response": np.moveaxis(mean, -1, 0)[units, o].T, "o": o, "s": s}

    (ori, sf, _), out = stream(pop, rows, (ORI, SF, PHASE), reduce, rectify=rectify)
    enough(sf, 4, "spatial frequencies", what)
    x = np.log2(sf)
    params, r2, failed = fit_curves(log_gaussian, log_gaussian_jacobian, x, out["response"].T,
                                    gaussian_start, what)
    b, a, mu, sigma = params.T
    outside = np.isfinite(mu) & ((mu < x.min() - 1e-9) | (mu > x.max() + 1e-9))
    inside = np.isfinite(mu) & ~outside
    ds = dataset(pop, da, {
        "response": ((SF,), out["response"]),
        "preferred_orientation": ((), pick(ori, out["o"])),
        "preferred_spatial_frequency": ((), pick(sf, out["s"])),
        "fit_spatial_frequency": ((), np.where(inside, 2.0 ** mu, np.nan)),
        "bandwidth": ((), np.where(inside, 2 * math.sqrt(2 * math.log(2)) * sigma, np.nan)),
        "fit_baseline": ((), b), "fit_amplitude": ((), a), "fit_mu": ((), mu), "fit_sigma": ((), sigma),
        "fit_r2": ((), r2),
        # narrower than the sampling: the samples cannot pin down the width
        "bandwidth_resolved": ((), np.where(inside, 2 * math.sqrt(2 * math.log(2)) * sigma, np.nan)
                               >= np.diff(x).min()),
    }, {SF: sf}, swept=SF)
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
    pop, rows = select(da, "size", needed, what)
    flat = pop.data
    cy_rows = numeric(flat, "aperture_y", rows, what)
    cx_rows = numeric(flat, "aperture_x", rows, what)
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
        mean = phase_mean(table, axis=3)
        (o, s, _), _ = preferred(mean)
        units = np.arange(mean.shape[-1])
        return {"response": np.moveaxis(mean, -1, 0)[units, o, s].T, "o": o, "s": s}

    (ori, sf, diameters, _), out = stream(pop, rows, (ORI, SF, "aperture_diameter", PHASE), reduce,
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

    ds = dataset(pop, da, {
        "centered": ((), centered),
        "response": (("aperture_diameter",), spread(curves)),
        "preferred_orientation": ((), spread(pick(ori, out["o"]))),
        "preferred_spatial_frequency": ((), spread(pick(sf, out["s"]))),
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
    pop, rows = select(da, "contrast", ("contrast",), what)

    def reduce(table: np.ndarray) -> dict[str, np.ndarray]:
        mean = phase_mean(table, axis=3)
        (o, s, _), _ = preferred(mean)
        units = np.arange(mean.shape[-1])
        return {"response": np.moveaxis(mean, -1, 0)[units, o, s].T, "o": o, "s": s}

    (ori, sf, contrasts, _), out = stream(pop, rows, (ORI, SF, "contrast", PHASE), reduce, rectify=rectify)
    enough(contrasts, 4, "contrasts", what)
    params, r2, failed = fit_curves(naka_rushton, naka_rushton_jacobian, contrasts, out["response"].T,
                                    naka_rushton_start, what)
    r_max, c50, n, b = params.T
    ds = dataset(pop, da, {
        "response": (("contrast",), out["response"]),
        "preferred_orientation": ((), pick(ori, out["o"])),
        "preferred_spatial_frequency": ((), pick(sf, out["s"])),
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


# -- size tuning: the aperture's offset, the stimuli's geometry ------------------------


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
    steps = geometry(str(text))
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

    root = recording_attrs(da.attrs).get("stimulus_root")
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
