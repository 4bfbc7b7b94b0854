"""Turn any recording into a 2-D ``(stimulus, unit)`` population, and back.

Every analysis works on the same 2-D view: the first dim is ``"stimulus"`` and all
other dims (``unit``; ``channel``; or ``channel, y, x``) are stacked into one
``unit`` dim, in C order, keeping their coordinates as non-index coordinates on
``unit``. :class:`Population` remembers the original layout so per-unit results can be
given back with the dims the user recorded. The block iterators stream an array that
may be dask-backed (and larger than memory) one slab at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from unitrec.errors import ConfigError

STIMULUS = "stimulus"
UNIT = "unit"



def default_block_bytes() -> int:
    """A sixteenth of this machine's memory, between 128 MiB and 1 GiB."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 2**27
    return int(min(max(memory // 16, 2**27), 2**30))


#: Bytes of float64 one streamed block may hold when ``chunk_size`` is not given.
_BLOCK_BYTES = default_block_bytes()


@dataclass(frozen=True)
class Population:
    """A recording seen as ``(stimulus, unit)``, with how to undo the stacking.

    Attributes
    ----------
    data : xarray.DataArray
        The 2-D view, dims ``("stimulus", "unit")``; lazy if the input was.
    unit_dims : tuple of str
        The non-stimulus dims of the input, in order (empty for a 1-D input).
    unit_shape : tuple of int
        Their sizes.
    unit_coords : dict
        The input's coordinates that live on the unit dims only.
    """

    data: xr.DataArray
    unit_dims: tuple[str, ...]
    unit_shape: tuple[int, ...]
    unit_coords: dict[str, xr.DataArray]

    @property
    def n_stimuli(self) -> int:
        """Number of stimuli."""
        return int(self.data.sizes[STIMULUS])

    @property
    def n_units(self) -> int:
        """Number of units."""
        return int(self.data.sizes[UNIT])

    def restore(self, result: xr.DataArray) -> xr.DataArray:
        """Give a result with a ``unit`` dim the input's unit dims back.

        Parameters
        ----------
        result : xarray.DataArray
            Any array holding a ``unit`` dim of length :attr:`n_units`.

        Returns
        -------
        xarray.DataArray
            ``unit`` replaced by :attr:`unit_dims` (at the end), with their coords.
        """
        if self.unit_dims == (UNIT,):
            return result
        others = [d for d in result.dims if d != UNIT]
        result = result.transpose(*others, UNIT)
        if not self.unit_dims:
            return result.isel({UNIT: 0}, drop=True)
        keep = {
            name: coord
            for name, coord in result.coords.items()
            if UNIT not in coord.dims
        }
        data = result.data.reshape(result.shape[:-1] + self.unit_shape)
        return xr.DataArray(
            data,
            dims=(*others, *self.unit_dims),
            coords={**keep, **self.unit_coords},
            name=result.name,
            attrs=result.attrs,
        )


def as_population(da: Any) -> Population:
    """Check a recording and view it as ``(stimulus, unit)``.

    Parameters
    ----------
    da : xarray.DataArray
        A recording whose first dim is ``"stimulus"``.

    Returns
    -------
    Population
        The stacked view. Small coordinates are loaded into memory so that
        grouping and labelling never touch the (possibly lazy) values.

    Raises
    ------
    ConfigError
        If ``da`` is not a DataArray or its first dim is not ``"stimulus"``.
    """
    if not isinstance(da, xr.DataArray):
        raise ConfigError(
            f"expected an xarray.DataArray of activations, got {type(da).__name__}"
        )
    if not da.dims or da.dims[0] != STIMULUS:
        raise ConfigError(
            f"the first dim of a recording must be {STIMULUS!r}, got dims {da.dims}; "
            f"transpose it with da.transpose({STIMULUS!r}, ...)"
        )
    # Coordinates are small next to the values; chunked ones would stop groupby.
    da = da.assign_coords({name: c.compute() for name, c in da.coords.items()})
    da = _float64(da)
    unit_dims = tuple(str(d) for d in da.dims[1:])
    unit_shape = tuple(int(da.sizes[d]) for d in unit_dims)
    unit_coords = {
        str(name): coord
        for name, coord in da.coords.items()
        if coord.dims and STIMULUS not in coord.dims
    }
    if unit_dims == (UNIT,):
        flat = da
        if UNIT in flat.indexes:
            flat = flat.reset_index(UNIT) if _is_multi(flat, UNIT) else flat
    elif not unit_dims:
        flat = da.expand_dims(UNIT, axis=1)
    else:
        flat = da.stack({UNIT: unit_dims}).reset_index(UNIT)
        flat = flat.drop_vars([UNIT], errors="ignore")
    return Population(flat, unit_dims, unit_shape, unit_coords)


def _float64(da: xr.DataArray) -> xr.DataArray:
    """Float16/32 values as float64, so sums neither overflow (float16 tops out at
    65504) nor depend on the order dask adds blocks in. Lazily for dask; a lazily
    read (not yet loaded) file array is left for the block streams to convert."""
    if da.dtype.kind != "f" or da.dtype.itemsize >= 8:
        return da
    if da.chunks is not None or da.variable._in_memory:
        return da.astype(np.float64)
    return da


def _is_multi(da: xr.DataArray, dim: str) -> bool:
    import pandas as pd

    return isinstance(da.indexes[dim], pd.MultiIndex)


def stimulus_labels(da: xr.DataArray) -> np.ndarray:
    """The stimulus labels as strings (positions if the dim has no coordinate)."""
    if STIMULUS in da.coords:
        return np.asarray(da[STIMULUS].values).astype(str)
    return np.arange(da.sizes[STIMULUS]).astype(str)


def nan_rows(pop: Population) -> np.ndarray:
    """Boolean mask of the stimuli with at least one NaN value (one lazy pass)."""
    mask = pop.data.isnull().any(UNIT)
    return np.asarray(mask.values, dtype=bool)


def block_size(chunk_size: int | None, other: int) -> int:
    """Units (or stimuli) per streamed block: given, or what fits in :data:`_BLOCK_BYTES`."""
    if chunk_size is None:
        return max(1, _BLOCK_BYTES // (8 * max(other, 1)))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return int(chunk_size)


def unit_blocks(
    data: xr.DataArray, chunk_size: int | None, rows: np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """Yield float64 slabs ``(stimulus, ≤chunk_size units)`` of a 2-D population.

    Only one slab is in memory at a time, so a dask-backed array is never loaded
    whole. ``rows`` optionally keeps a subset of stimuli (a boolean mask). A slab
    holds at most ``chunk_size`` units (default: a sixteenth of the machine's
    memory, 128 MiB to 1 GiB of float64). A dask-backed slab is as many whole dask
    chunks along ``unit`` as fit, since a slab that cut a chunk reads and
    decompresses the whole chunk again; only a chunk too big for one slab is cut.
    """
    if rows is not None:
        data = data.isel({STIMULUS: np.flatnonzero(rows)})
    n, p = data.sizes[STIMULUS], data.sizes[UNIT]
    step = block_size(chunk_size, n)
    for start, stop in _spans(p, step, _dim_chunks(data, UNIT)):
        block = data.isel({UNIT: slice(start, stop)})
        yield np.asarray(block.values, dtype=np.float64)


def stimulus_blocks(
    data: xr.DataArray, chunk_size: int | None, rows: np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """Yield float64 slabs ``(≤chunk_size stimuli, unit)`` of a 2-D population.

    As :func:`unit_blocks`, a dask-backed slab is whole chunks along ``stimulus``
    where they fit.
    """
    if rows is not None:
        data = data.isel({STIMULUS: np.flatnonzero(rows)})
    step = block_size(chunk_size, data.sizes[UNIT])
    for start, stop in _spans(data.sizes[STIMULUS], step, _dim_chunks(data, STIMULUS)):
        block = data.isel({STIMULUS: slice(start, stop)})
        yield np.asarray(block.values, dtype=np.float64)


def _dim_chunks(data: xr.DataArray, dim: str) -> tuple[int, ...] | None:
    """Dask chunk lengths along ``dim`` to cut blocks at; None for numpy data."""
    if data.chunks is None:
        return None
    return tuple(int(c) for c in data.chunks[data.get_axis_num(dim)])


def _spans(total: int, step: int, chunks: tuple[int, ...] | None) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` of at most ``step`` items, along dask chunks when given.

    A block is as many whole chunks as fit in ``step``. A chunk longer than ``step``
    is cut into equal parts of at most ``step``: each part decompresses the chunk
    again, the price of keeping the memory bound.
    """
    if chunks is None:
        for start in range(0, total, step):
            yield start, min(start + step, total)
        return
    begin = pos = 0
    for length in chunks:
        if pos + length - begin <= step:
            pos += length
            continue
        if pos > begin:
            yield begin, pos
        if length <= step:
            begin, pos = pos, pos + length
            continue
        edges = np.linspace(pos, pos + length, -(-length // step) + 1).round().astype(int)
        yield from ((int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]))
        begin = pos = pos + length
    if pos > begin:
        yield begin, pos


def stimulus_gram(
    data: xr.DataArray,
    chunk_size: int | None,
    rows: np.ndarray | None = None,
    *,
    center: str | None = None,
) -> np.ndarray:
    """Stream the ``(stimulus × stimulus)`` Gram matrix ``X Xᵀ`` over unit blocks.

    Parameters
    ----------
    data : xarray.DataArray
        2-D ``(stimulus, unit)`` population without NaN in the kept rows.
    chunk_size : int or None
        Units per block.
    rows : numpy.ndarray of bool, optional
        Stimuli to keep.
    center : {None, "units", "stimuli"}
        ``"units"`` subtracts each unit's mean over stimuli (column centring, the
        Gram of centred features); ``"stimuli"`` subtracts each stimulus's mean over
        units (row centring, as for a correlation distance).

    Returns
    -------
    numpy.ndarray
        Symmetric float64 matrix.
    """
    kept = data if rows is None else data.isel({STIMULUS: np.flatnonzero(rows)})
    n = kept.sizes[STIMULUS]
    row_mean = None
    if center == "stimuli":
        row_mean = np.zeros((n, 1))
        for block in unit_blocks(kept, chunk_size):
            row_mean += block.sum(axis=1, keepdims=True)
        row_mean /= kept.sizes[UNIT]
    gram = np.zeros((n, n))
    for block in unit_blocks(kept, chunk_size):
        if center == "units":
            block = block - block.mean(axis=0, keepdims=True)
        elif row_mean is not None:
            block = block - row_mean
        gram += block @ block.T
    return (gram + gram.T) / 2


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """Raise :class:`ConfigError` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(
            f"{name}={value!r} is not supported; choose one of {', '.join(allowed)}"
        )
    return str(value)


def aligned(a: xr.DataArray, b: xr.DataArray, what: str) -> xr.DataArray:
    """Return ``b`` reordered to ``a``'s stimulus order; error if the labels differ."""
    la, lb = stimulus_labels(a), stimulus_labels(b)
    if len(set(la)) != la.size or len(set(lb)) != lb.size:
        raise ConfigError(f"{what}: stimulus labels must be unique")
    if la.size == lb.size and np.array_equal(la, lb):
        return b
    if set(la) != set(lb):
        only_a = sorted(set(la) - set(lb))[:5]
        only_b = sorted(set(lb) - set(la))[:5]
        raise ConfigError(
            f"{what}: the two inputs were recorded on different stimuli "
            f"({la.size} vs {lb.size}; only in the first: {only_a}, only in the "
            f"second: {only_b}); record both on the same stimulus set"
        )
    position = {label: i for i, label in enumerate(lb)}
    return b.isel({STIMULUS: [position[label] for label in la]})
