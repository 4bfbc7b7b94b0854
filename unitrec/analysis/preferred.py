"""Each unit's most effective stimuli, ranked by response."""

from __future__ import annotations

import numpy as np
import xarray as xr

from unitrec.analysis._units import (
    STIMULUS,
    UNIT,
    as_population,
    stimulus_labels,
    unit_blocks,
)
from unitrec.errors import ConfigError

__all__ = ["top_stimuli"]

RANK = "rank"


def top_stimuli(
    da: xr.DataArray, k: int = 9, *, chunk_size: int | None = None
) -> xr.Dataset:
    """The ``k`` stimuli that drive each unit most, in decreasing order.

    Parameters
    ----------
    da : xarray.DataArray
        Recording with first dim ``"stimulus"``; may be dask-backed and larger
        than memory (it is read in blocks of units).
    k : int
        How many stimuli to keep per unit, at most the number of stimuli.
    chunk_size : int, optional
        Units per block (default: blocks of about 128 MB).

    Returns
    -------
    xarray.Dataset
        Dims ``(*unit_dims, "rank")`` with ``rank = 0 … k-1`` (0 is the best), and
        the variables ``stimulus`` (labels, str), ``response`` (float64) and one
        variable per stimulus coordinate of the input (e.g. ``orientation``) giving
        that parameter of each ranked stimulus. The result is in memory.

    Raises
    ------
    ConfigError
        If ``k`` is not an integer between 1 and the number of stimuli.

    Notes
    -----
    Ties keep stimulus order (the earlier stimulus ranks first). NaN responses
    (skipped stimuli) are never ranked: a unit with fewer than ``k`` non-NaN
    responses gets ``stimulus = ""`` and ``response = NaN`` in its last ranks, and
    NaN/empty values in the parameter variables there.
    """
    pop = as_population(da)
    n = pop.n_stimuli
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ConfigError(
            f"k must be an integer between 1 and {n} (the stimuli), got {k!r}"
        )
    k = int(k)
    order = np.empty((pop.n_units, k), dtype=np.intp)
    response = np.empty((pop.n_units, k))
    start = 0
    for block in unit_blocks(pop.data, chunk_size):
        stop = start + block.shape[1]
        ranked = np.argsort(-np.nan_to_num(block, nan=-np.inf), axis=0, kind="stable")[:k]
        order[start:stop] = ranked.T
        response[start:stop] = np.take_along_axis(block, ranked, axis=0).T
        start = stop
    missing = np.isnan(response)

    unit_coords = {
        name: coord for name, coord in pop.data.coords.items() if coord.dims == (UNIT,)
    }
    dims = (UNIT, RANK)
    labels = stimulus_labels(pop.data)[order]
    labels[missing] = ""
    variables = {
        STIMULUS: labels,
        "response": response,
    }
    for name, coord in pop.data.coords.items():
        if coord.dims != (STIMULUS,) or name == STIMULUS or name in variables:
            continue
        values = np.asarray(coord.values)[order]
        if values.dtype.kind in "iub" and missing.any():
            values = values.astype(np.float64)
        if values.dtype.kind == "f":
            values[missing] = np.nan
        elif values.dtype.kind in "US":
            values = values.astype(str)
            values[missing] = ""
        variables[str(name)] = values
    out = {}
    for name, values in variables.items():
        arr = xr.DataArray(values, dims=dims, coords={**unit_coords, RANK: np.arange(k)})
        out[name] = pop.restore(arr).transpose(..., RANK)
    return xr.Dataset(out)
