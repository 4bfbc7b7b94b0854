"""Summaries on the model's device: each batch folded into a site's running summary (torch).

The host side, what a summary holds and how it is saved, merged and read, is
``summary.py``; this module only updates it, batch by batch, in float64, without
changing any tensor in place (see docs/design.md, "Summaries").
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import torch

from unitrec.files.summary import State

__all__ = ["Accumulator"]


class Accumulator:
    """A site's summary on the model's device, updated batch by batch in float64.

    Every update builds new tensors (nothing is changed in place), so a
    :meth:`snapshot` taken between batches stays valid while later batches run.
    """

    def __init__(self, state: State, top: int, device: torch.device) -> None:
        self.top, self.device = top, device
        self.count = state.count
        as_tensor = lambda a: torch.as_tensor(np.ascontiguousarray(a), device=device)  # noqa: E731
        self._t = {f.name: as_tensor(getattr(state, f.name)) for f in fields(State) if f.name != "count"}

    def add(self, values: torch.Tensor, rows: torch.Tensor) -> None:
        """Add one batch: `values` ``(n, …)`` for the file rows `rows` (ascending, after every row so far)."""
        t = self._t
        v = values.reshape(values.shape[0], -1).to(torch.float64)
        n_b = v.shape[0]
        b_var, b_mean = torch.var_mean(v, dim=0, correction=0)
        b_m2 = b_var * n_b
        if self.count == 0:
            t["mean"], t["m2"] = b_mean, b_m2
        else:
            n = self.count + n_b
            delta = b_mean - t["mean"]
            t["mean"] = t["mean"] + delta * (n_b / n)
            t["m2"] = t["m2"] + b_m2 + delta * delta * (self.count * n_b / n)
        pos = v.clamp(min=0)
        t["pos_sum"] = t["pos_sum"] + pos.sum(0)
        t["pos_sq"] = t["pos_sq"] + (pos * pos).sum(0)
        t["min"] = torch.minimum(t["min"], v.amin(0))  # NaN propagates, as in numpy
        t["max"] = torch.maximum(t["max"], v.amax(0))
        index = rows.to(device=self.device, dtype=torch.int64).view(-1, 1).expand_as(v)
        self._rank("top", v, index, descending=True)
        self._rank("bottom", v, index, descending=False)
        self.count += n_b

    def _rank(self, side: str, v: torch.Tensor, index: torch.Tensor, *, descending: bool) -> None:
        """Merge a batch into one side's ranks: a stable sort of the ranks, then the batch.

        Once a unit holds `top` ranks, only a batch value strictly beyond its last rank
        can enter (an equal one comes from a later row and loses the tie), so only
        the units where one does are sorted.
        """
        t = self._t
        values, rows = t[f"{side}_value"], t[f"{side}_index"]
        cols = None
        if values.shape[0] == self.top:
            fill = -torch.inf if descending else torch.inf
            last = torch.nan_to_num(values[-1], nan=fill)
            keys = torch.nan_to_num(v, nan=fill)
            beyond = (keys > last) if descending else (keys < last)
            cols = beyond.any(0).nonzero().squeeze(1)
            if cols.numel() == 0:
                return
            if cols.numel() == values.shape[1]:
                cols = None
        if cols is None:
            t[f"{side}_value"], t[f"{side}_index"] = _sorted(torch.cat([values, v]), torch.cat([rows, index]),
                                                             self.top, descending)
            return
        best, best_rows = _sorted(torch.cat([values[:, cols], v[:, cols]]),
                                  torch.cat([rows[:, cols], index[:, cols]]), self.top, descending)
        t[f"{side}_value"] = values.index_copy(1, cols, best)  # new tensors: snapshots stay valid
        t[f"{side}_index"] = rows.index_copy(1, cols, best_rows)

    def snapshot(self) -> tuple[int, dict[str, torch.Tensor]]:
        """The current state as references (cheap): turn into a :class:`State` with :meth:`~unitrec.files.summary.State.from_snapshot`."""
        return self.count, dict(self._t)


def _sorted(values: torch.Tensor, rows: torch.Tensor, top: int, descending: bool):
    """The `top` best of candidates listed in row order, ties to the earlier row (a stable sort)."""
    keys = torch.nan_to_num(values, nan=-torch.inf if descending else torch.inf)
    order = torch.sort(keys, dim=0, descending=descending, stable=True).indices[:top]
    return values.gather(0, order), rows.gather(0, order)
