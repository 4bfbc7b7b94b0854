"""Lifetime and population sparseness (Treves–Rolls / Vinje & Gallant)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import xarray as xr

from unitrec.analysis._units import STIMULUS, UNIT, as_population, check_choice
from unitrec.analysis.statistics.preferred import is_summary
from unitrec.errors import ConfigError

__all__ = ["lifetime_sparseness", "population_sparseness"]

_NEGATIVE = ("clip", "raise", "keep")
#: Treatments of negative responses (as ``_NEGATIVE``).
Negative = Literal["clip", "raise", "keep"]


def lifetime_sparseness(da: xr.DataArray | xr.Dataset, *, negative: Negative = "clip") -> xr.DataArray:
    """Sparseness of each unit across stimuli.

    Parameters
    ----------
    da : xarray.DataArray or xarray.Dataset
        Recording with first dim ``"stimulus"``; may be dask-backed (the result
        then stays lazy, except that ``negative="raise"`` computes one check).
        Or a site's summary from :func:`unitrec.load_summary` (``keep: summary``
        or ``both``), which holds the sums the measure is made of.
    negative : {"clip", "raise", "keep"}
        What to do with negative responses, which the measure is not defined for
        (it assumes firing rates): ``"clip"`` (default) sets them to 0, i.e.
        rectifies the activations; ``"raise"`` raises :class:`ConfigError` if any
        response is negative; ``"keep"`` applies the formula to the raw values,
        which can then fall outside [0, 1].

    Returns
    -------
    xarray.DataArray
        Dims ``unit_dims`` of the input, values in [0, 1] for non-negative
        responses: 0 for a unit that responds equally to every stimulus, 1 for a
        unit that responds to a single stimulus. NaN for a unit whose responses are
        all zero or that has fewer than two non-NaN responses.

    Notes
    -----
    The measure of Vinje & Gallant (2000), *Science* 287:1273, built on the
    activity ratio of Treves & Rolls (1991), *Network* 2:371:

    .. math:: S = \\frac{1 - (\\sum_i r_i / n)^2 / (\\sum_i r_i^2 / n)}{1 - 1/n}

    over the ``n`` stimuli. NaN responses (skipped stimuli) are ignored: ``n`` is
    the number of non-NaN responses of each unit.

    From a summary, ``"clip"`` gives its stored ``sparseness`` (accumulated in
    float64 before any storage rounding: equal to the full array's to rounding on a
    ``keep: both`` recording); ``"raise"`` checks its ``min``; ``"keep"`` is
    computed from its ``mean`` and ``std`` (``Σr²/n = std² + mean²``).

    Examples
    --------
    >>> s = lifetime_sparseness(ur.load_layer("acts.h5", "layer3"))  # doctest: +SKIP
    >>> s = lifetime_sparseness(ur.load_summary("acts.h5", "layer3"))  # same values  # doctest: +SKIP
    """
    if is_summary(da):
        return _summary_sparseness(da, negative)
    pop = as_population(da)
    values = _treat_negative(pop.data, negative)
    return pop.restore(_sparseness(values, STIMULUS))


def _summary_sparseness(ds: xr.Dataset, negative: Negative) -> xr.DataArray:
    """:func:`lifetime_sparseness` from a summary's statistics."""
    check_choice("negative", negative, _NEGATIVE)
    lowest = float(ds["min"].min(skipna=True)) if ds["min"].size else 0.0
    if negative == "raise" and lowest < 0:
        raise ConfigError(
            f"responses go down to {lowest:g} but sparseness needs r >= 0; "
            "pass negative='clip' to rectify or negative='keep' to use them as is"
        )
    if negative == "keep" and lowest < 0:
        n = int(ds["count"])
        mean = ds["mean"]
        mean_sq = ds["std"] ** 2 + mean**2
        ratio = mean**2 / mean_sq.where(mean_sq != 0)
        result = (1 - ratio) / (1 - 1 / n) if n > 1 else xr.full_like(mean, np.nan)
    else:  # no negative response, or clipped: the stored measure of max(r, 0)
        result = ds["sparseness"]
    return result.drop_attrs(deep=False).rename("sparseness").astype(np.float64)


def population_sparseness(da: xr.DataArray, *, negative: Negative = "clip") -> xr.DataArray:
    """Sparseness of the population response to each stimulus, across units.

    Parameters
    ----------
    da : xarray.DataArray
        Recording with first dim ``"stimulus"``; may be dask-backed.
    negative : {"clip", "raise", "keep"}
        Treatment of negative responses, as in :func:`lifetime_sparseness`.

    Returns
    -------
    xarray.DataArray
        Dim ``"stimulus"`` with the input's stimulus coordinates. NaN for a
        stimulus that was skipped (all values NaN) or evokes no response at all.

    Notes
    -----
    The same formula as :func:`lifetime_sparseness` (Vinje & Gallant 2000;
    Treves & Rolls 1991), with the sums running over the ``n`` units instead of
    the stimuli. NaN values are ignored, so ``n`` is the number of non-NaN units.
    """
    pop = as_population(da)
    values = _treat_negative(pop.data, negative)
    return _sparseness(values, UNIT)


def _treat_negative(values: xr.DataArray, negative: Negative) -> xr.DataArray:
    check_choice("negative", negative, _NEGATIVE)
    if values.dtype.kind == "f" and values.dtype.itemsize < 8:
        # a lazily read file array is still float32/16 here: sum in float64 (lazy for dask)
        values = values.astype(np.float64)
    if negative == "clip":
        return values.clip(min=0)
    if negative == "raise":
        lowest = float(values.min(skipna=True).values)
        if lowest < 0:
            raise ConfigError(
                f"responses go down to {lowest:g} but sparseness needs r >= 0; "
                "pass negative='clip' to rectify or negative='keep' to use them as is"
            )
    return values


def _sparseness(values: xr.DataArray, dim: str) -> xr.DataArray:
    n = values.count(dim)
    mean = values.mean(dim, skipna=True)
    mean_sq = (values**2).mean(dim, skipna=True)
    ratio = mean**2 / mean_sq.where(mean_sq != 0)
    result = (1 - ratio) / (1 - 1 / n.where(n > 1))
    return result.rename("sparseness").astype(np.float64)
