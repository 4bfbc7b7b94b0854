"""What a synthesis maximises: one number per image from the units a layer entry selects.

``unit`` is a layer entry (a site name, or a dict with ``record``'s keys) and, beside
them, at most one of ``weights`` and ``pattern``:

- one unit selected (``{"name": "layer3", "channels": [5], "units": "center"}``): its response;
- several units (a channel at every position, ``{"name": "layer3", "channels": [5]}``):
  their mean (a channel's mean over positions);
- ``weights: [w1, w2, ...]``, one per selected unit: the weighted sum;
- ``pattern: [p1, p2, ...]``, one per selected unit: the cosine between the units'
  responses and the pattern (a population target).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from unitrec.closedloop.scorer import Scorer
from unitrec.errors import ConfigError, RecordingError

__all__ = ["Objective", "objective"]


class Objective:
    """Scores ``(N,)`` of a batch ``(N, C, H, W)``, differentiable when the batch requires grad."""

    def __init__(self, scorer: Scorer, entry: dict[str, Any], weights: list[float] | None,
                 pattern: list[float] | None) -> None:
        self.scorer, self.entry = scorer, entry
        self._weights = weights
        self._pattern = pattern
        self._checked_for: int | None = None

    @property
    def kind(self) -> str:
        """``unit``, ``mean``, ``weighted`` or ``pattern``."""
        if self._pattern is not None:
            return "pattern"
        if self._weights is not None:
            return "weighted"
        return "unit" if len(self.scorer.units) == 1 else "mean"

    def describe(self) -> dict[str, Any]:
        """The objective as provenance holds it: the entry, and the weights or pattern."""
        out: dict[str, Any] = {"unit": self.entry, "objective": self.kind}
        if self._weights is not None:
            out["weights"] = self._weights
        if self._pattern is not None:
            out["pattern"] = self._pattern
        return out

    def _vector(self, values: list[float], what: str, n: int, device: torch.device,
                dtype: torch.dtype) -> torch.Tensor:
        if len(values) != n:
            raise ConfigError(f"{what}: {len(values)} numbers for {n} selected units of "
                              f"{self.entry.get('name')!r}; give one per unit (Scorer.units lists them)")
        return torch.tensor(values, device=device, dtype=dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        responses = self.scorer(x)  # (N, U)
        n = responses.shape[1]
        if self._pattern is not None:
            target = self._vector(self._pattern, "pattern", n, responses.device, responses.dtype)
            scores = torch.nn.functional.cosine_similarity(responses, target.expand_as(responses), dim=1)
        elif self._weights is not None:
            scores = responses @ self._vector(self._weights, "weights", n, responses.device, responses.dtype)
        else:
            scores = responses.mean(dim=1)
        if not torch.isfinite(scores.detach()).all():
            raise RecordingError(f"the objective on {self.entry.get('name')!r} gave NaN or infinite scores (the "
                                 "model overflowed, or its input is not finite); check the model and the images")
        return scores


def objective(model: nn.Module, unit: Any, *, device: str | torch.device = "cpu", ablate: Any = None,
              input_size: tuple[int, int, int] = (3, 224, 224)) -> Objective:
    """The objective of `unit` (see the module docstring) on `model`."""
    if isinstance(unit, str):
        entry: dict[str, Any] = {"name": unit}
    elif isinstance(unit, dict):
        entry = dict(unit)
    else:
        raise ConfigError(f"unit must be a site name or a layer entry like {{'name': 'layer3', 'channels': [5], "
                          f"'units': 'center'}}, got {type(unit).__name__} {unit!r:.60}")
    weights, pattern = entry.pop("weights", None), entry.pop("pattern", None)
    if weights is not None and pattern is not None:
        raise ConfigError("unit: give weights (a weighted sum) or pattern (a cosine target), not both")
    for what, values in (("weights", weights), ("pattern", pattern)):
        if values is None:
            continue
        array = np.asarray(values, dtype=float) if isinstance(values, (list, tuple, np.ndarray)) else None
        if array is None or array.ndim != 1 or not array.size or not np.isfinite(array).all():
            raise ConfigError(f"unit: {what} must be a list of finite numbers, one per selected unit; got "
                              f"{values!r:.60}")
        if what == "pattern" and not np.abs(array).sum() > 0:
            raise ConfigError("unit: pattern is all zeros; a cosine target needs a direction")
    scorer = Scorer(model, [entry], device=device, ablate=ablate, input_size=input_size)
    if not len(scorer.units):
        raise ConfigError(f"unit {entry.get('name')!r} selects no units")
    to_list = (lambda v: None if v is None else [float(a) for a in v])
    return Objective(scorer, entry, to_list(weights), to_list(pattern))
