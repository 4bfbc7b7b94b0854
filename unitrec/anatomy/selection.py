"""Which units of a site to keep, applied on the device before the copy to the host.

A site's output is either kept whole (``dense``), reduced to a list of units
(``units``: a channel and a position each) or pooled over space (``pooled``). The
selection knows the labels of what it keeps, so the file can say which unit is which.
A vision transformer's ``(token, channel)`` site keeps whole tokens (``tokens``: the
class token, the centre patch, patches by row and column) or pools its patch tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import torch

from unitrec.anatomy.tokens import TokenGrid
from unitrec.errors import SelectionError

__all__ = ["Selection", "check_distinct", "make_selection", "unit_selection"]


@dataclass
class Selection:
    """A site's selection: what to keep, the resulting per-stimulus shape and labels.

    ``channel``, ``y`` and ``x`` are the labels along the kept dims: for ``dense``
    and ``pooled`` the channel (and row/column) numbers kept; for ``units`` one
    entry per unit (``y``/``x`` are None for 2-D outputs). ``layout`` names the
    site's own dims, in its order: ``(channel, y, x)``, channel-last ``(y, x,
    channel)``, attention ``(head, query, key)``, or ``dim_k`` where nobody can tell.
    """

    kind: str  # "dense", "units", "pooled" or "tokens"
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    channel: np.ndarray | None = None
    y: np.ndarray | None = None
    x: np.ndarray | None = None
    pool: Literal["mean", "max"] | None = None
    description: str = "all units"
    layout: tuple[str, ...] = ()
    _channels: np.ndarray | None = None  # channel subset to take first (dense/pooled)
    flat: np.ndarray | None = None  # flattened unit indices (units); token indices (tokens)
    _pool_from: int | None = None  # pooled tokens: the first patch token
    _cache: dict[Any, tuple[torch.Tensor | None, torch.Tensor | None]] = field(default_factory=dict)

    def _indices(self, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if device not in self._cache:
            def put(a):
                return None if a is None else torch.as_tensor(a, dtype=torch.long, device=device)
            self._cache[device] = (put(self._channels), put(self.flat))
        return self._cache[device]

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        """Reduce a batch ``(N, *site_shape)`` to ``(N, *self.shape)`` on its device."""
        channels, flat = self._indices(t.device)
        if self._pool_from is not None or self.kind == "tokens":  # (N, token, channel)
            t = t if channels is None else t.index_select(2, channels)
            if self.kind == "tokens":
                assert flat is not None
                return t.index_select(1, flat)
            t = t[:, self._pool_from:]
            return t.mean(dim=1) if self.pool == "mean" else t.amax(dim=1)
        if self.kind == "units":
            assert flat is not None  # a "units" selection always has its flat indices
            return t.reshape(t.shape[0], -1).index_select(1, flat)
        axis = 1 + self.layout.index("channel") if "channel" in self.layout else 1
        if channels is not None:
            t = t.index_select(axis, channels)
        if self.kind == "pooled":
            space = (1 + self.layout.index("y"), 1 + self.layout.index("x")) if "y" in self.layout else (2, 3)
            return t.mean(dim=space) if self.pool == "mean" else t.amax(dim=space)
        return t


def _dims(shape: Sequence[int]) -> tuple[str, ...]:
    if len(shape) == 1:
        return ("channel",)
    if len(shape) == 3:
        return ("channel", "y", "x")
    return neutral_dims(shape)


def neutral_dims(shape: Sequence[int]) -> tuple[str, ...]:
    """``dim_1``, ``dim_2``, ...: the names of dims nobody can tell apart."""
    return tuple(f"dim_{i + 1}" for i in range(len(shape)))


_MAP = {"channel", "y", "x"}


def _check(name: str, what: str, values: Iterable[int], size: int) -> np.ndarray:
    arr = np.asarray(list(values), dtype=np.int64).reshape(-1)
    bad = arr[(arr < 0) | (arr >= size)]
    if bad.size:
        raise SelectionError(
            f"{name}: {what} {int(bad[0])} is outside the site's range 0..{size - 1}"
        )
    return arr


def check_distinct(name: str, what: str, items: np.ndarray) -> None:
    """A selection names each unit once: an empty or repeated list is a mistake."""
    if len(items) == 0:
        raise SelectionError(f"{name}: '{what}' is empty; list at least one, or leave it out")
    seen = set()
    for item in items.tolist():
        key = tuple(item) if isinstance(item, list) else item
        if key in seen:
            raise SelectionError(f"{name}: '{what}' lists {key} twice; list each once")
        seen.add(key)


def make_selection(
    name: str,
    shape: Sequence[int],
    *,
    units: str | None = None,
    channels: Sequence[int] | None = None,
    positions: Sequence[Sequence[int]] | None = None,
    pool: Literal["mean", "max"] | None = None,
    sample: int | None = None,
    seed: int = 0,
    tokens: TokenGrid | None = None,
    layout: Sequence[str] | None = None,
) -> Selection:
    """Build the selection of a layer entry for a site whose output is `shape` (no batch).

    `tokens` is the model's token layout when `shape` is ``(token, channel)``.
    `layout` names the dims of `shape` (default: ``(channel,)``, ``(channel, y,
    x)``, else ``dim_k``); a 3-D site is a map only where they are ``channel``, ``y``
    and ``x`` in some order (channel-last: ``(y, x, channel)``).

    Raises
    ------
    SelectionError
        If a channel, position or sample size falls outside the site's shape, or the
        selection needs a spatial output the site does not have.
    """
    shape = tuple(int(s) for s in shape)
    layout = tuple(layout) if layout is not None else _dims(shape)
    spatial = len(shape) == 3
    wants = [k for k, v in (("units", units), ("positions", positions), ("pool", pool),
                            ("sample", sample)) if v is not None]
    if tokens is not None and tokens.matches(shape):
        return _token_selection(name, shape, tokens, units, channels, positions, pool, sample)
    if units == "cls":
        raise SelectionError(f"{name}: units: cls picks a vision transformer's class token; output "
                             f"{shape} is not a (token, channel) site")
    if not wants and channels is None:
        return Selection("dense", layout, shape, layout=layout)
    if len(shape) == 3 and set(layout) != _MAP:
        what = "attention weights" if layout == ("head", "query", "key") else "dims whose meaning the trace cannot tell"
        raise SelectionError(
            f"{name}: output {shape} is ({', '.join(layout)}), {what}, not a map of channels over (y, x); "
            "record it whole (no units/channels/positions/pool/sample)"
        )
    if len(shape) not in (1, 3):
        raise SelectionError(
            f"{name}: output shape {shape} has neither (channel,) nor (channel, y, x) "
            "layout; record it whole (no units/channels/positions/pool/sample)"
        )
    if not spatial and wants and wants != ["sample"]:
        raise SelectionError(
            f"{name}: output {shape} has no spatial positions; '{wants[0]}' needs a "
            "(channel, y, x) output (use channels: or sample:)"
        )
    n_ch = shape[layout.index("channel")]
    ch = None if channels is None else _check(name, "channel", channels, n_ch)
    if ch is not None:
        check_distinct(name, "channels", ch)
    if sample is not None:
        total = int(np.prod(shape))
        if not 0 < sample <= total:
            raise SelectionError(f"{name}: sample {sample} is outside 1..{total} (the site's units)")
        flat = np.sort(np.random.default_rng(seed).choice(total, size=sample, replace=False))
        return unit_selection(shape, flat, f"{sample} random units (seed {seed})", layout)
    if pool is not None:
        kept = ch if ch is not None else np.arange(n_ch)
        return Selection("pooled", ("channel",), (len(kept),), channel=kept, pool=pool,
                         description=f"{pool} over space", layout=layout, _channels=ch)
    if units == "center" or positions is not None:
        h, w = shape[layout.index("y")], shape[layout.index("x")]
        if units == "center":
            pos = np.array([[h // 2, w // 2]])
        else:
            pos = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
            check_distinct(name, "positions", pos)
            _check(name, "row (y)", pos[:, 0], h)
            _check(name, "column (x)", pos[:, 1], w)
        kept = ch if ch is not None else np.arange(n_ch)
        cc, pp = np.repeat(kept, len(pos)), np.tile(np.arange(len(pos)), len(kept))
        index = {"channel": cc, "y": pos[pp, 0], "x": pos[pp, 1]}
        flat = np.ravel_multi_index(tuple(index[d] for d in layout), shape)
        what = "centre position" if units == "center" else f"{len(pos)} positions"
        return unit_selection(shape, flat, f"{len(kept)} channels × {what}", layout)
    # channels alone: every position of those channels, kept as a dense map
    assert ch is not None  # no other mode was asked for, so channels were
    kept_shape = tuple(len(ch) if d == "channel" else n for d, n in zip(layout, shape))
    return Selection("dense", layout, kept_shape, channel=ch,
                     description=f"{len(ch)} channels, all positions", layout=layout, _channels=ch)


def unit_selection(shape: tuple[int, ...], flat: np.ndarray, description: str,
           layout: Sequence[str] | None = None) -> Selection:
    """Units by their flat index into `shape`, labelled by the dims of `layout`."""
    layout = tuple(layout) if layout is not None else _dims(shape)
    if len(shape) == 1:
        return Selection("units", ("unit",), (len(flat),), channel=flat, description=description,
                         layout=layout, flat=flat)
    index = dict(zip(layout, np.unravel_index(flat, shape)))
    return Selection("units", ("unit",), (len(flat),), channel=index["channel"], y=index["y"], x=index["x"],
                     description=description, layout=layout, flat=flat)


def _token_selection(name: str, shape: tuple[int, ...], grid: TokenGrid, units: str | None,
                     channels: Sequence[int] | None, positions: Sequence[Sequence[int]] | None,
                     pool: Literal["mean", "max"] | None, sample: int | None) -> Selection:
    """Whole tokens of a ``(token, channel)`` site, or its patch tokens pooled."""
    n_tokens, n_ch = shape
    if sample is not None:
        raise SelectionError(f"{name}: sample draws units of (channel, y, x) sites; a token site keeps "
                             "whole tokens (units: cls or center, positions:, pool:, channels:)")
    ch = None if channels is None else _check(name, "channel", channels, n_ch)
    if ch is not None:
        check_distinct(name, "channels", ch)
    kept = ch if ch is not None else np.arange(n_ch)
    what = f"{len(kept)} channels" if ch is not None else "all channels"
    if pool is not None:
        return Selection("pooled", ("channel",), (len(kept),), channel=kept, pool=pool,
                         description=f"{pool} over {grid.grid[0] * grid.grid[1]} patch tokens, {what}",
                         _channels=ch, _pool_from=grid.prefix)
    if units == "cls":
        if "cls" not in grid.kinds:
            raise SelectionError(f"{name}: this model has no class token; use units: center, positions: "
                                 "or pool: mean")
        picked, how = np.array([grid.kinds.index("cls")]), "the class token"
    elif units == "center":
        picked, how = np.array([grid.center]), "the centre patch token"
    elif positions is not None:
        pos = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
        check_distinct(name, "positions", pos)
        _check(name, "patch row (y)", pos[:, 0], grid.grid[0])
        _check(name, "patch column (x)", pos[:, 1], grid.grid[1])
        picked, how = np.array([grid.patch(y, x) for y, x in pos]), f"{len(pos)} patch tokens"
    elif ch is None:
        return Selection("dense", ("token", "channel"), shape, channel=kept)
    else:
        picked, how = np.arange(n_tokens), "all tokens"
    return Selection("tokens", ("token", "channel"), (len(picked), len(kept)), channel=kept,
                     description=f"{how}, {what}", _channels=ch, flat=picked)
