"""Rows, condition tables and preferred conditions shared by the grating protocols: the
rows of a protocol, the mean response per condition streamed over unit blocks, and the
per-unit results as a Dataset with the recording's unit dims.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import xarray as xr

from unitrec.analysis._units import STIMULUS, UNIT, Population, as_population, unit_blocks
from unitrec.errors import ConfigError

ORI, SF, PHASE = "orientation", "spatial_frequency", "phase"


def enough(levels: np.ndarray, n: int, what: str, function: str) -> None:
    """A 4-parameter fit needs at least 4 levels of the swept parameter."""
    if np.isfinite(levels).sum() < n:
        raise ConfigError(f"{function}: fitting needs at least {n} {what}; the recording has "
                          f"{[float(v) for v in levels]}")


def select(da: xr.DataArray, protocol: str, needed: Sequence[str], what: str) -> tuple[Population, np.ndarray]:
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
    keys = [n for n in (ORI, SF, PHASE, *needed) if n in names]
    finite = np.ones(rows.size, dtype=bool)
    for key in keys:
        finite &= np.isfinite(numeric(flat, key, rows, what))
    if not finite.any():
        raise ConfigError(f"{what}: every row has a NaN in {', '.join(keys)}")
    return pop, rows[finite]


def numeric(flat: xr.DataArray, name: str, rows: np.ndarray, what: str) -> np.ndarray:
    try:
        return np.asarray(flat[name].values[rows], dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: the stimulus coordinate {name} must hold numbers, "
                          f"got {flat[name].values[rows][:3]!r}") from None


def stream(
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


def preferred(mean: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Per unit (last axis), the index of the largest value over all other axes, and
    whether there was a finite one."""
    n = mean.shape[-1]
    flat = mean.reshape(-1, n)
    finite = np.isfinite(flat)
    best = np.argmax(np.where(finite, flat, -np.inf), axis=0)
    return np.unravel_index(best, mean.shape[:-1]), finite.any(axis=0)


def phase_mean(table: np.ndarray, axis: int) -> np.ndarray:
    """Mean over the phases a condition has (NaN, without a warning, where it has none)."""
    valid = np.isfinite(table)
    count = valid.sum(axis=axis)
    total = np.where(valid, table, 0.0).sum(axis=axis)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def pick(levels: np.ndarray, index: np.ndarray) -> np.ndarray:
    return np.asarray(levels, dtype=float)[index]


def dataset(pop: Population, da: xr.DataArray, variables: Mapping[str, tuple[tuple[str, ...], np.ndarray]],
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
