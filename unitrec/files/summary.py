"""Summaries: each unit's statistics and preferred stimuli, without storing every response.

A site kept as a summary (``keep: summary`` or ``both``) is reduced batch by batch,
on the model's device, in float64 (``accumulate.py``): the count, Chan's running mean and sum of squared
deviations, the sums of the rectified responses and of their squares (for the
Vinje–Gallant sparseness), the minimum and maximum, and the ``top`` highest and
lowest responses of each unit with their stimulus rows. Memory and file size do not
depend on the number of stimuli.

Rows are added in the file's row order, block by block, so a summary is the same
sequence of float operations however a run is interrupted and resumed: a resumed
summary equals an uninterrupted one bit for bit. Ties in the top and bottom ranks go
to the lower stimulus row (a stable sort with earlier rows first), so shards merged in
row order rank exactly as one process does; their moments agree to rounding (Chan's
combination of partial sums).

In the partial file the state lives in two slots (``<site>/summary_state``), written
in turn, each stamped last with ``through``, the row up to which it holds every
recorded row; a resume continues from the newest ``through`` every site has whole
(see docs/design.md, "Summaries"). A finished file holds the plain results instead:
``count``, ``mean``, ``std``, ``min``, ``max``, ``sparseness`` over the site's unit
dims and ``top_response``/``top_stimulus``/``bottom_response``/``bottom_stimulus``
over ``(rank, *unit dims)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import h5py
import numpy as np

from unitrec.schema import DEFAULT_TOP

__all__ = ["DEFAULT_TOP", "FINALS", "State", "create_slots", "finish_site", "read_finals", "restore_slots",
           "save_slot", "write_finals"]

STATE_GROUP = "summary_state"
#: The datasets a finished summary site holds, in this order.
FINALS = ("count", "mean", "std", "min", "max", "sparseness", "top_response", "top_stimulus",
          "bottom_response", "bottom_stimulus")
_UNIT_VECTORS = ("mean", "m2", "pos_sum", "pos_sq", "min", "max")
_RANKED = ("top_value", "top_index", "bottom_value", "bottom_index")


@dataclass(frozen=True)
class State:
    """A summary on the host: float64 vectors over the flattened units, ranks ``(m, units)``.

    ``m = min(top, count)``: the ranks hold only real stimuli, best first; ties keep
    the lower row first. Row indices count the rows of the file the state belongs to.
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray  # Σ (r − mean)²
    pos_sum: np.ndarray  # Σ max(r, 0)
    pos_sq: np.ndarray  # Σ max(r, 0)²
    min: np.ndarray
    max: np.ndarray
    top_value: np.ndarray
    top_index: np.ndarray
    bottom_value: np.ndarray
    bottom_index: np.ndarray

    @classmethod
    def empty(cls, n_units: int) -> State:
        zeros = np.zeros(n_units)
        none = np.empty((0, n_units))
        return cls(0, zeros, zeros, zeros, zeros, np.full(n_units, np.inf), np.full(n_units, -np.inf),
                   none, none.astype(np.int64), none, none.astype(np.int64))

    @classmethod
    def from_snapshot(cls, snapshot: tuple[int, dict[str, Any]]) -> State:
        """An accumulator's snapshot (count, tensors on any device) copied to the host."""
        count, tensors = snapshot
        return cls(count, **{k: v.cpu().numpy() for k, v in tensors.items()})

    def shifted(self, offset: int) -> State:
        """The same state with its stimulus rows counted from `offset` (a shard's first row)."""
        return replace(self, top_index=self.top_index + offset, bottom_index=self.bottom_index + offset)

    @staticmethod
    def merged(states: list[State], top: int) -> State:
        """Combine states of consecutive row ranges, in row order (Chan et al. for the moments)."""
        out = states[0]
        for s in states[1:]:
            if s.count == 0:
                continue
            if out.count == 0:
                out = s
                continue
            n = out.count + s.count
            delta = s.mean - out.mean
            top_value, top_index = _ranked(np.concatenate([out.top_value, s.top_value]),
                                           np.concatenate([out.top_index, s.top_index]), top, descending=True)
            bottom_value, bottom_index = _ranked(np.concatenate([out.bottom_value, s.bottom_value]),
                                                 np.concatenate([out.bottom_index, s.bottom_index]), top,
                                                 descending=False)
            out = State(n, out.mean + delta * (s.count / n), out.m2 + s.m2 + delta * delta * (out.count * s.count / n),
                        out.pos_sum + s.pos_sum, out.pos_sq + s.pos_sq, np.minimum(out.min, s.min),
                        np.maximum(out.max, s.max), top_value, top_index, bottom_value, bottom_index)
        return out

    def finals(self, top: int, unit_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        """The finished file's datasets: statistics over `unit_shape`, ranks ``(top, *unit_shape)``."""
        n = self.count
        with np.errstate(divide="ignore", invalid="ignore"):
            std = np.sqrt(self.m2 / n) if n else np.full_like(self.mean, np.nan)
            mean_sq = self.pos_sq / n if n else np.full_like(self.mean, np.nan)
            ratio = (self.pos_sum / n) ** 2 / np.where(mean_sq != 0, mean_sq, np.nan)
            sparseness = (1 - ratio) / (1 - 1 / n) if n > 1 else np.full_like(self.mean, np.nan)
        empty = n == 0
        out = {
            "count": np.int64(n),
            "mean": np.where(empty, np.nan, self.mean),
            "std": std,
            "min": np.where(empty, np.nan, self.min),
            "max": np.where(empty, np.nan, self.max),
            "sparseness": sparseness,
        }
        for name, (values, index) in {"top": (self.top_value, self.top_index),
                                      "bottom": (self.bottom_value, self.bottom_index)}.items():
            response = np.full((top, values.shape[1]), np.nan)
            stimulus = np.full((top, values.shape[1]), -1, dtype=np.int64)
            response[: len(values)], stimulus[: len(values)] = values, index
            out[f"{name}_response"], out[f"{name}_stimulus"] = response, stimulus
        return {k: (v.reshape((-1, *unit_shape)) if k.startswith(("top", "bottom")) else
                    v.reshape(unit_shape) if np.ndim(v) else v) for k, v in out.items()}

    @classmethod
    def from_finals(cls, data: dict[str, np.ndarray]) -> State:
        """Back from the finished datasets (``m2`` from ``std``: exact to rounding)."""
        n = int(data["count"])
        flat = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in data.items()
                if k in ("mean", "std", "min", "max", "sparseness")}
        m = min(n, len(data["top_response"]))
        ranks = {k: np.asarray(data[k]).reshape(len(data[k]), -1)[:m] for k in
                 ("top_response", "top_stimulus", "bottom_response", "bottom_stimulus")}
        p = flat["mean"].size
        if n == 0:
            return cls.empty(p)
        pos_sum, pos_sq = _positive_sums(data, n)
        return cls(n, flat["mean"], flat["std"] ** 2 * n, pos_sum, pos_sq, flat["min"], flat["max"],
                   ranks["top_response"], ranks["top_stimulus"].astype(np.int64),
                   ranks["bottom_response"], ranks["bottom_stimulus"].astype(np.int64))


def _positive_sums(data: dict[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Σr⁺ and Σ(r⁺)², stored beside the finals so that shards merge exactly."""
    return (np.asarray(data["rectified_sum"], dtype=np.float64).reshape(-1),
            np.asarray(data["rectified_sum_sq"], dtype=np.float64).reshape(-1))


def _ranked(values: np.ndarray, index: np.ndarray, top: int, *, descending: bool):
    """The `top` best rows of ``(m, units)`` candidates listed in row order: a stable sort."""
    keys = np.nan_to_num(values, nan=-np.inf if descending else np.inf)
    order = np.argsort(-keys if descending else keys, axis=0, kind="stable")[:top]
    return np.take_along_axis(values, order, axis=0), np.take_along_axis(index, order, axis=0)


# ---------------------------------------------------------------- the file
def create_slots(group: h5py.Group, n_units: int, top: int) -> None:
    """The two state slots of a partial file, both empty (``through`` = −1)."""
    g = group.create_group(STATE_GROUP)
    g.create_dataset("through", data=np.full(2, -1, dtype=np.int64))
    g.create_dataset("count", data=np.zeros(2, dtype=np.int64))
    for name in _UNIT_VECTORS:
        g.create_dataset(name, shape=(2, n_units), dtype=np.float64)
    for name in _RANKED:
        g.create_dataset(name, shape=(2, top, n_units), dtype=np.int64 if name.endswith("index") else np.float64)


def save_slot(group: h5py.Group, slot: int, state: State, through: int) -> None:
    """Write `state` into `slot`; ``through`` last, so a torn write leaves the slot unused."""
    g = group[STATE_GROUP]
    g["through"][slot] = -1  # torn from here until the stamp at the end
    g["count"][slot] = state.count
    for name in _UNIT_VECTORS:
        g[name][slot] = getattr(state, name)
    for name in _RANKED:
        data = getattr(state, name)
        if len(data):
            g[name][slot, : len(data)] = data
    g["through"][slot] = through


def restore_slots(groups: dict[str, h5py.Group], top: dict[str, int]) -> tuple[int, dict[str, State], int]:
    """The newest state every site has whole: ``(through, states, next slot)``.

    A run killed while saving leaves some sites' newest slot torn (its ``through``
    not yet written) and others whole; the previous save is whole in all of them.
    """
    stamps = {key: [int(v) for v in g[STATE_GROUP]["through"][...]] for key, g in groups.items()}
    common = set.intersection(*(set(s) for s in stamps.values())) - {-1} if stamps else set()
    if not common:
        n = {key: g[STATE_GROUP]["mean"].shape[1] for key, g in groups.items()}
        return 0, {key: State.empty(n[key]) for key in groups}, 0
    through = max(common)
    states, slot = {}, 0
    for key, g in groups.items():
        slot = stamps[key].index(through)
        s = g[STATE_GROUP]
        count = int(s["count"][slot])
        m = min(count, top[key])
        states[key] = State(count, *(s[name][slot] for name in _UNIT_VECTORS),
                            *(s[name][slot, :m] for name in _RANKED))
    return through, states, 1 - slot


def finish_site(group: h5py.Group, state: State, top: int, unit_shape: tuple[int, ...],
                scales: list[h5py.Dataset], coordinates: str) -> None:
    """Replace the slots by the finished datasets, dimension scales attached (netCDF dims)."""
    if STATE_GROUP in group:
        del group[STATE_GROUP]  # first, so HDF5 can reuse its space for what follows
    write_finals(group, state, top, unit_shape, scales, coordinates)


def write_finals(group: h5py.Group, state: State, top: int, unit_shape: tuple[int, ...],
                 scales: list[h5py.Dataset], coordinates: str) -> None:
    """The finished datasets of a summary site (also what a stitched file gets)."""
    rank = group.create_dataset("rank", data=np.arange(top, dtype=np.int64))
    rank.make_scale("rank")
    for name, data in state.finals(top, unit_shape).items():
        ds = group.create_dataset(name, data=data)
        ds.attrs.update(_ATTRS[name])
        ranked = name.startswith(("top", "bottom"))
        for axis, scale in enumerate(([rank] if ranked else []) + (scales if np.ndim(data) else [])):
            ds.dims[axis].attach_scale(scale)
        if coordinates and np.ndim(data):
            ds.attrs["coordinates"] = np.bytes_(coordinates.encode())  # NC_CHAR, as CF wants
    for name, field in (("rectified_sum", "pos_sum"), ("rectified_sum_sq", "pos_sq")):
        # what sparseness is made of, kept so that shards merge exactly
        ds = group.create_dataset(name, data=getattr(state, field).reshape(unit_shape))
        ds.attrs["long_name"] = {"pos_sum": "sum of max(r, 0)", "pos_sq": "sum of max(r, 0)^2"}[field]
        for axis, scale in enumerate(scales):
            ds.dims[axis].attach_scale(scale)


def read_finals(group: h5py.Group) -> State:
    """A finished summary site's state (for stitching shards)."""
    data = {name: group[name][()] for name in (*FINALS, "rectified_sum", "rectified_sum_sq")}
    return State.from_finals(data)


_ATTRS = {
    "count": {"long_name": "number of stimuli summarised"},
    "mean": {"long_name": "mean response over stimuli"},
    "std": {"long_name": "standard deviation of the response over stimuli (ddof=0)"},
    "min": {"long_name": "lowest response"},
    "max": {"long_name": "highest response"},
    "sparseness": {"long_name": "lifetime sparseness (Vinje and Gallant 2000) of max(r, 0)"},
    "top_response": {"long_name": "highest responses, best first"},
    "top_stimulus": {"long_name": "row of /stimulus of each highest response (-1: fewer stimuli than ranks); "
                                  "ties: the lower row first"},
    "bottom_response": {"long_name": "lowest responses, lowest first"},
    "bottom_stimulus": {"long_name": "row of /stimulus of each lowest response (-1: fewer stimuli than "
                                     "ranks); ties: the lower row first"},
}
