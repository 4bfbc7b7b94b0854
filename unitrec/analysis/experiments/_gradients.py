"""The torch side of :func:`~unitrec.analysis.effective_rf`: a recorder that hands back a
site's live value (with its autograd history) and stops the forward pass there, and
each chosen unit's input gradient. torch is imported when a map is asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from unitrec.errors import ConfigError, RecordingError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from unitrec.anatomy.sites import Site


def prepare_site(model: nn.Module, name: str, units: str | Sequence[Any],
                 example: torch.Tensor) -> tuple[Site, Any]:
    """The site with the chosen units, and a recorder that hands back its live value."""
    from unitrec.recording.recorder import Recorder, StopForward
    from unitrec.anatomy.selection import check_distinct, unit_selection
    from unitrec.anatomy.sites import resolve_sites
    from unitrec.anatomy.trace import first_tensor

    class Capture(Recorder):
        """Keeps the site's value with its autograd history and stops the forward there."""

        value: torch.Tensor | None = None

        def _take(self, module: str, sites: list[Site], value: Any, counter: str) -> None:
            index = self._counts.get(counter, 0)
            self._counts[counter] = index + 1
            if index == sites[0].index:
                self.value = value if _is_tensor(value) else first_tensor(value)
                raise StopForward  # nothing after the site runs, so nothing writes into its value

        def grab(self, x: torch.Tensor) -> torch.Tensor:
            self.value = None
            try:
                self.model(x)
            except StopForward:
                pass
            value, self.value = self.value, None
            if value is None:
                raise RecordingError(f"site {name!r} was not reached (or is not a tensor) in this forward pass")
            return value

    if isinstance(units, str):
        if units not in ("center", "centre"):
            raise ConfigError(f"units={units!r}: give 'center' or a list of (channel, y, x)")
        spec: dict[str, Any] = {"name": name, "units": "center"}
    else:
        spec = {"name": name}
    (site,), trace = resolve_sites(model, [spec], example)
    if not isinstance(units, str):
        full = tuple((site.call.input_shape if site.capture == "input" else site.call.output_shape) or ())[1:]
        layout = site.selection.layout or None  # channel-last sites: (y, x, channel)
        flat = _flat_units(name, units, full, layout)
        check_distinct(name, "units", flat)
        site = dataclasses.replace(site, selection=unit_selection(full, flat, f"{len(flat)} units", layout))
    if site.selection.kind != "units":
        raise ConfigError(f"{name}: effective_rf maps units of a (channel, y, x) or (channel,) site; this "
                          f"site's output is {site.shape} ({site.selection.description})")
    return site, Capture.from_sites(model, [site], trace)


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _flat_units(name: str, units: Sequence[Any], shape: tuple[int, ...],
                layout: Sequence[str] | None = None) -> np.ndarray:
    """Flat indices of ``(channel, y, x)`` entries (``channel`` for a 1-D site) into a
    site of `shape` whose dims are named by `layout` (channel-last: ``(y, x, channel)``)."""
    from unitrec.errors import SelectionError

    order = ("channel", "y", "x")[: len(shape)]
    layout = tuple(layout) if layout else order
    if len(shape) == 3 and set(layout) != set(order):
        raise ConfigError(f"{name}: output {shape} is ({', '.join(layout)}), not a map of channels over (y, x); "
                          "effective_rf maps units of a (channel, y, x) or (channel,) site")
    sizes = [shape[layout.index(d)] for d in order] if len(shape) in (1, 3) else list(shape)
    want = len(shape) if len(shape) in (1, 3) else 3
    rows = []
    for u in units:
        entry = tuple(u) if isinstance(u, (tuple, list, np.ndarray)) else (u,)
        if len(entry) != want or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                         for v in entry):
            what = "(channel, y, x)" if want == 3 else "channel"
            raise ConfigError(f"{name}: each unit is a {what} of integers for output {shape}, got {u!r}")
        for v, n, axis in zip(entry, sizes, ("channel", "row (y)", "column (x)")):
            if not 0 <= v < n:
                raise SelectionError(f"{name}: {axis} {v} is outside the site's range 0..{n - 1}")
        rows.append(entry)
    if len(shape) not in (1, 3):
        raise ConfigError(f"{name}: output {shape} has neither (channel,) nor (channel, y, x) layout")
    if not rows:
        return np.array([], int)
    index = dict(zip(order, np.array(rows, dtype=np.int64).T))
    return np.ravel_multi_index(tuple(index[d] for d in layout), shape)


def gradient_sum(capture: Any, site: Site, x: torch.Tensor) -> torch.Tensor:
    """``sum_i sum_c |∂r_u(x_i) / ∂x_i[c]|`` for every selected unit ``u``: ``(units, H, W)``."""
    import torch

    leaf = x.detach().clone().requires_grad_(True)
    out = torch.zeros((site.shape[0], *x.shape[-2:]), dtype=torch.float64, device=x.device)
    with torch.enable_grad():
        # a clone enters the model: a leaf that needs grad cannot be changed in place
        responses = site.selection.apply(capture.grab(leaf.clone())).reshape(len(x), -1)
        if not responses.requires_grad:
            return out  # the site does not depend on the input
        for u in range(responses.shape[1]):
            (grad,) = torch.autograd.grad(responses[:, u].sum(), leaf, retain_graph=u + 1 < responses.shape[1],
                                          allow_unused=True)
            if grad is not None:
                out[u] = grad.abs().sum(dim=1).sum(dim=0, dtype=torch.float64)
    return out
