"""Tuning curves: mean response per value of a stimulus parameter, and selectivity."""

from __future__ import annotations

import numpy as np
import xarray as xr

from unitrec.analysis._units import STIMULUS, UNIT, as_population
from unitrec.errors import ConfigError

__all__ = ["tuning_curves"]

#: Parameters whose selectivity is circular by default, with their period (degrees).
_CIRCULAR = {"orientation": 180.0, "direction": 360.0}


def tuning_curves(
    da: xr.DataArray, by: str = "orientation", *, period: float | None = None
) -> xr.Dataset:
    """Tuning curve of every unit along one stimulus parameter.

    Responses are averaged over all stimuli that share a value of ``by`` (so over
    every other parameter, e.g. over phases and spatial frequencies).

    Parameters
    ----------
    da : xarray.DataArray
        Recording with first dim ``"stimulus"`` and a coordinate ``by`` on it; the
        other dims (``unit``, ``channel`` or ``channel, y, x``) are the units.
        May be dask-backed: the result then stays lazy.
    by : str
        Name of the stimulus coordinate to group by.
    period : float, optional
        Period of ``by`` in its own units. Given, the selectivity is the circular
        index below; defaults to 180 for ``"orientation"`` and 360 for
        ``"direction"`` (degrees), and to no period for anything else.

    Returns
    -------
    xarray.Dataset
        ``mean`` and ``sem`` with dims ``(by, *unit_dims)``; ``count`` (number of
        non-NaN responses averaged); ``preferred``, the value of ``by`` at the
        largest mean (dims ``unit_dims``); and ``selectivity`` (dims ``unit_dims``).

    Raises
    ------
    ConfigError
        If ``by`` is not a coordinate on the stimulus dim (the message lists those
        that are) or ``period`` is not positive.

    Notes
    -----
    With a period :math:`P` the selectivity is the circular index

    .. math:: \\mathrm{SI} = \\frac{|\\sum_\\theta r(\\theta)\\, e^{2\\pi i\\theta/P}|}
              {\\sum_\\theta r(\\theta)},

    i.e. one minus the circular variance, computed on the mean curve ``r``. For
    orientation in degrees (:math:`P = 180`) this is the global orientation
    selectivity index :math:`|\\sum r e^{2i\\theta}| / \\sum r` of Ringach, Shapley &
    Hawken (2002), *J. Neurosci.* 22:5639; for direction (:math:`P = 360`) the
    direction selectivity index :math:`|\\sum r e^{i\\theta}| / \\sum r`, see
    Mazurek, Kager & Van Hooser (2014), *Front. Neural Circuits* 8:92. Without a
    period it is ``(max - min) / (max + min)`` of the mean curve.

    Both indices are computed on the mean responses as given, without
    rectification: they lie in [0, 1] for non-negative curves, but not for curves
    that dip below zero (raw activations can). Clip first (``da.clip(min=0)``)
    for a firing-rate-like index. A zero denominator gives NaN.

    NaN responses (stimuli that were skipped) are ignored: means, SEMs and counts
    use the non-NaN responses of each unit. The SEM is ``std(ddof=1) / sqrt(n)``
    and NaN where ``n < 2``.

    Examples
    --------
    >>> ds = tuning_curves(recording, by="orientation")  # doctest: +SKIP
    >>> ds.preferred, ds.selectivity                     # doctest: +SKIP
    """
    pop = as_population(da)
    flat = pop.data
    stim_coords = sorted(
        str(name)
        for name, coord in flat.coords.items()
        if coord.dims == (STIMULUS,) and name != STIMULUS
    )
    if by not in stim_coords:
        raise ConfigError(
            f"by={by!r} is not a coordinate on the stimulus dim; available: "
            f"{', '.join(stim_coords) or 'none (load the stimulus metadata)'}"
        )
    if period is None:
        period = _CIRCULAR.get(by)
    elif not np.isfinite(period) or period <= 0:
        raise ConfigError(f"period must be a positive number, got {period!r}")

    groups = flat.groupby(by)
    mean = groups.mean(STIMULUS, skipna=True)
    count = groups.count(STIMULUS)
    var0 = groups.var(STIMULUS, ddof=0, skipna=True)
    # var0 / (n - 1) == var(ddof=1) / n; NaN (not a warning) where n < 2.
    sem = np.sqrt(var0 / (count - 1).where(count > 1))

    preferred = mean.idxmax(by, skipna=True)
    if period is not None:
        selectivity = _circular_index(mean, by, float(period))
    else:
        high, low = mean.max(by), mean.min(by)
        selectivity = (high - low) / _nonzero(high + low)

    out = xr.Dataset(
        {
            "mean": pop.restore(mean.transpose(by, UNIT)),
            "sem": pop.restore(sem.transpose(by, UNIT)),
            "count": pop.restore(count.transpose(by, UNIT)),
            "preferred": pop.restore(preferred),
            "selectivity": pop.restore(selectivity),
        }
    )
    out.attrs["by"] = by
    out.attrs["selectivity"] = (
        f"circular, period {period:g}" if period is not None else "(max-min)/(max+min)"
    )
    return out


def _circular_index(mean: xr.DataArray, by: str, period: float) -> xr.DataArray:
    """``|Σ r e^{2πiθ/P}| / Σ r`` along ``by``."""
    angle = 2 * np.pi * mean[by].astype(float) / period
    re = (mean * np.cos(angle)).sum(by, skipna=True)
    im = (mean * np.sin(angle)).sum(by, skipna=True)
    return np.hypot(re, im) / _nonzero(mean.sum(by, skipna=True))


def _nonzero(den: xr.DataArray) -> xr.DataArray:
    """The denominator with zeros as NaN, so 0/0 gives NaN without a warning."""
    return den.where(den != 0)
