"""Each unit's most effective stimuli, ranked by response."""

from __future__ import annotations

from typing import TypeGuard

import numpy as np
import xarray as xr

from unitrec.analysis._units import (
    STIMULUS,
    UNIT,
    as_population,
    stimulus_labels,
    stimulus_blocks,
)
from unitrec.errors import ConfigError
from unitrec.files.load import pick_rows

__all__ = ["top_stimuli"]

RANK = "rank"
_SORT_BYTES = 16 * 2**20  # float64 keys ranked at a time (see _running_top)


def is_summary(obj: object) -> TypeGuard[xr.Dataset]:
    """Whether ``obj`` is a site's summary (:func:`unitrec.load_summary`)."""
    return isinstance(obj, xr.Dataset) and "top_response" in obj.data_vars


def _summary_top(ds: xr.Dataset, k: int) -> xr.Dataset:
    """:func:`top_stimuli` from a summary's ranks and its stimulus table (no response read)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    top, count = int(ds.sizes[RANK]), int(ds["count"])
    site = ds.attrs.get("site", "")
    if k > top:
        raise ConfigError(
            f"k={k} is more than the {top} ranks the summary of site {site!r} kept; "
            f"pass k <= {top}, or record it again with a larger `top:` in its layer entry"
        )
    if k > count:
        raise ConfigError(
            f"k must be an integer between 1 and {count} (the stimuli summarised), got {k!r}"
        )
    k = int(k)
    index = ds["top_index"].isel({RANK: slice(0, k)})
    response = ds["top_response"].isel({RANK: slice(0, k)})
    # a NaN response ranks nowhere, as in a full array (the summary keeps it last)
    rows = np.where(np.isnan(np.asarray(response.values)), -1, np.asarray(index.values))
    out = {
        STIMULUS: index.copy(data=pick_rows(np.asarray(ds[STIMULUS].values).astype(str), rows)),
        "response": response.astype(np.float64),
    }
    # every stimulus coordinate (and the done flag a full array carries), looked up by row
    for name, coord in ds.coords.items():
        if coord.dims == (STIMULUS,) and name != STIMULUS:
            out[str(name)] = index.copy(data=pick_rows(np.asarray(coord.values), rows))
    order = [STIMULUS, "response", *[n for n in out if n not in (STIMULUS, "response")]]
    result = xr.Dataset({
        name: out[name].transpose(..., RANK).drop_attrs().rename(None) for name in order
    })
    return result.drop_attrs()


def top_stimuli(
    da: xr.DataArray | xr.Dataset, k: int = 9, *, chunk_size: int | None = None
) -> xr.Dataset:
    """The ``k`` stimuli that drive each unit most, in decreasing order.

    Parameters
    ----------
    da : xarray.DataArray or xarray.Dataset
        Recording with first dim ``"stimulus"``; may be dask-backed and larger
        than memory (it is read once, in blocks of stimuli). Or a site's summary
        from :func:`unitrec.load_summary` (a site recorded with ``keep: summary``
        or ``both``): its ranks are read, no response is needed.
    k : int
        How many stimuli to keep per unit, at most the number of stimuli (for a
        summary, also at most its ranks: the ``top:`` of the layer entry).
    chunk_size : int, optional
        Stimuli per block read (default: blocks of a sixteenth of the machine's memory, 128 MiB
        to 1 GiB), ranked in blocks of units of 16 MiB. Not used for a summary.

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
        If ``k`` is not an integer between 1 and the number of stimuli, or, for a
        summary, is more than the ranks it kept.

    Notes
    -----
    The order is that of ``np.argsort(-x, axis=0, kind="stable")[:k]``: ties keep
    stimulus order (the earlier stimulus ranks first). NaN responses (skipped
    stimuli) are never ranked: a unit with fewer than ``k`` non-NaN responses gets
    ``stimulus = ""`` and ``response = NaN`` in its last ranks, and NaN (integer and
    boolean parameters become float), NaT, None or "" in the parameter variables there.

    A summary ranks with the same rules, on the float64 responses before any
    storage rounding: on a ``keep: both`` recording stored as float32 (the
    default) the result equals that of the full array.

    Examples
    --------
    >>> top = top_stimuli(ur.load_layer("acts.h5", "layer3"), k=5)  # doctest: +SKIP
    >>> top = top_stimuli(ur.load_summary("acts.h5", "layer3"), k=5)  # doctest: +SKIP
    >>> top["stimulus"].sel(channel=7, y=3, x=3).values  # doctest: +SKIP
    """
    if is_summary(da):
        return _summary_top(da, k)
    pop = as_population(da)
    n = pop.n_stimuli
    if n == 0:
        raise ConfigError("the recording has no stimuli to rank")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ConfigError(
            f"k must be an integer between 1 and {n} (the stimuli), got {k!r}"
        )
    if RANK in da.dims or RANK in da.coords:
        raise ConfigError(
            f"the recording has a dim or coordinate named {RANK!r}, the result's own dim; "
            f"rename it first, e.g. da.rename({{{RANK!r}: 'rank_'}})"
        )
    order, response = _running_top(pop.data, int(k), chunk_size)
    k = int(k)
    missing = np.isnan(response)

    unit_coords = {  # per-unit and scalar coords (e.g. layer) carry over
        name: coord
        for name, coord in pop.data.coords.items()
        if coord.dims in ((UNIT,), ())
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
        if values.dtype.kind == "O" and all(isinstance(v, str) for v in values.flat):
            values = values.astype(str)  # text (labels decoded from the file): blank where missing
        if values.dtype.kind in "iub" and missing.any():
            values = values.astype(np.float64)
        if values.dtype.kind in "fc":
            values[missing] = np.nan
        elif values.dtype.kind in "mM":
            values[missing] = np.array("NaT", dtype=values.dtype)
        elif values.dtype.kind == "O":
            values[missing] = None
        elif values.dtype.kind in "US":
            values = values.astype(str)
            values[missing] = ""
        variables[str(name)] = values
    out = {}
    for name, values in variables.items():
        coords = {**unit_coords, RANK: np.arange(k)}
        arr = xr.DataArray(values, dims=dims, coords=coords)
        out[name] = pop.restore(arr).transpose(..., RANK)
    return xr.Dataset(out)


def _running_top(
    data: xr.DataArray, k: int, chunk_size: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Stimulus indices and responses ``(unit, k)`` of the best k, in one pass:
    ``np.argsort(-x, axis=0, kind="stable")[:k]`` (NaN last, ties by stimulus order).

    Each slab of stimuli read is ranked in blocks of units of about :data:`_SORT_BYTES`
    (the block's keys transposed, so that each unit's responses are contiguous): a
    partition takes each unit's best k (:func:`_smallest`), and a stable sort merges
    them after the best so far, which all come from earlier stimuli. No array larger than
    a block is made beside the slab and the result (measured: 2,000 stimuli × 50,000
    units, 42 s sorted whole; see docs/performance.md).
    """
    p = data.sizes[UNIT]
    best_key = np.empty((p, k))  # the negated responses: the responses, exactly (NaN stays NaN)
    best_index = np.empty((p, k), dtype=np.intp)
    have = 0  # ranks filled so far: fewer than k until k stimuli are read
    start = 0
    for slab in stimulus_blocks(data, chunk_size):
        b = slab.shape[0]
        step = max(1, _SORT_BYTES // (8 * max(b + k, 1)))
        for u in range(0, p, step):
            units = slice(u, min(u + step, p))
            keys = np.negative(np.array(slab[:, units].T, dtype=np.float64, order="C"))  # NaN stays NaN
            rows = _smallest(keys, k)
            key = np.concatenate([best_key[units, :have], np.take_along_axis(keys, rows, axis=1)], axis=1)
            index = np.concatenate([best_index[units, :have], rows + start], axis=1)
            merged = np.argsort(key, axis=1, kind="stable")[:, :k]  # the best so far first: ties to them
            filled = merged.shape[1]
            best_key[units, :filled] = np.take_along_axis(key, merged, axis=1)
            best_index[units, :filled] = np.take_along_axis(index, merged, axis=1)
        have = min(k, have + b)
        start += b
    return best_index[:, :have], -best_key[:, :have]


def _smallest(keys: np.ndarray, k: int) -> np.ndarray:
    """Columns of the ``k`` smallest keys of each row, in increasing order, NaN last, ties by
    column: ``np.argsort(keys, axis=1, kind="stable")[:, :k]`` without sorting every column.

    A partition finds each row's k-th smallest key; the columns below it, then the first
    columns equal to it, are the k taken (in column order), and only those k are sorted.
    """
    p, n = keys.shape
    if n <= k:
        return np.argsort(keys, axis=1, kind="stable")
    kth = np.partition(keys, k - 1, axis=1)[:, k - 1:k]  # NaN where a row has fewer than k numbers
    below = keys < kth
    at = keys == kth
    short = np.flatnonzero(np.isnan(kth[:, 0]))
    if short.size:  # every number is taken, then the first NaN
        nan = np.isnan(keys[short])
        below[short], at[short] = ~nan, nan
    n_below = below.sum(axis=1)
    ties = np.flatnonzero(n_below + at.sum(axis=1) > k)  # rows with keys equal to the k-th beyond it
    take = below | at
    if ties.size:
        tied = at[ties]
        take[ties] = below[ties] | (tied & (np.cumsum(tied, axis=1) <= (k - n_below[ties])[:, None]))
    taken = np.nonzero(take)[1].reshape(p, k)  # row by row, columns ascending: k per row
    order = np.argsort(np.take_along_axis(keys, taken, axis=1), axis=1, kind="stable")
    return np.take_along_axis(taken, order, axis=1)
