"""``Scorer``: the chosen units' responses to a preprocessed batch, fast, and differentiable when asked.

The same layer entries as ``record``, the same units in the same order, equal to a
recording of the same images to float32 rounding; built for loops (feature
visualisation, evolution): the model is traced once per input shape, and each call
only checks, without hashing, that nothing the trace depends on has changed.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from unitrec.anatomy.sites import Site, resolve_sites
from unitrec.anatomy.trace import Trace
from unitrec.errors import ConfigError, RecordingError
from unitrec.recording.job import check_device
from unitrec.recording.lesion import Lesions
from unitrec.recording.recorder import StopForward, called, hook_sites
from unitrec.schema import Layers, parse_ablation, parse_layers

__all__ = ["Scorer"]

#: the unit coordinates ``Scorer.units`` carries, where a site has them
_COLUMNS = ("channel", "y", "x", "token", "kind", "source", "rf_center_y", "rf_center_x")
#: a module's own bookkeeping, compared by the trace's other checks (or irrelevant to it)
_INTERNALS = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "_state_dict_hooks",
                        "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
                        "_backward_hooks", "_backward_pre_hooks", "_is_full_backward_hook"})


class Scorer:
    """Score units of a model on preprocessed batches, for closed-loop experiments.

    Parameters
    ----------
    model
        The network (put in eval mode for each call, its flag restored after).
    layers
        Site names or layer entries, as :func:`unitrec.record` takes them
        (``keep: summary`` has no meaning here).
    device
        Where the model runs: ``"cpu"``, ``"cuda"``, ``"cuda:1"``. The model is moved
        there on the first call.
    ablate
        Lesions applied during every call (see :func:`unitrec.record`).
    input_size
        ``(channels, height, width)`` that :attr:`units` and :attr:`sites` describe
        before the first call (without it they need a call first); after it, the last
        batch's.

    Examples
    --------
    >>> scorer = ur.Scorer(model, [{"name": "layer3", "units": "center"}])  # doctest: +SKIP
    >>> scorer(x).shape  # (N, units)  # doctest: +SKIP
    >>> scorer.units.head()  # site, channel, y, x, rf_center_y, rf_center_x  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, layers: Layers, *, device: str | torch.device = "cpu",
                 ablate: Any = None, input_size: Sequence[int] | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module (e.g. ur.load_model('resnet18')), got "
                              f"{type(model).__name__}")
        self.model = model
        self._specs = parse_layers(layers)
        summarised = [s.key for s in self._specs if s.keep != "full"]
        if summarised:
            raise ConfigError(f"keep: summary/both ({', '.join(summarised)}) is for ur.record; a Scorer returns "
                              "every unit's response")
        self._ablate = parse_ablation(ablate)
        self.device = check_device(device)
        self._input_size = tuple(input_size) if input_size is not None else None
        self._plans: dict[tuple, _Plan] = {}
        self._last: _Plan | None = None

    # ------------------------------------------------------------------ what it scores
    @property
    def sites(self) -> list[Site]:
        """The resolved sites of the last call (at `input_size` before the first call)."""
        return self._plan_or_default().sites

    @property
    def units(self) -> Any:
        """One row per output column: ``site`` and the unit's coordinates (a pandas DataFrame)."""
        import pandas as pd

        plan = self._plan_or_default()
        if plan.table is None:
            rows = _unit_rows(plan.sites)
            table = pd.DataFrame(rows)
            for column in ("channel", "y", "x", "token"):  # integers, missing where they do not apply
                if column in table:
                    table[column] = pd.array(rows[column], dtype="Int64")
            for column in ("rf_center_y", "rf_center_x"):
                if column in table:
                    table[column] = table[column].astype(float)
            plan.table = table
        return plan.table

    def _plan_or_default(self) -> _Plan:
        if self._last is None:
            if self._input_size is None:
                raise ConfigError("the Scorer maps the model on its first batch: call it once (scorer(x)), or give "
                                  "input_size=(3, H, W), before asking for its units or sites")
            weight = next((p for p in self.model.parameters() if p.is_floating_point()), None)
            dtype = weight.dtype if weight is not None else torch.float32
            self._plan_for(torch.zeros((1, *self._input_size), device=self._model_device(), dtype=dtype))
        assert self._last is not None
        return self._last

    def _model_device(self) -> torch.device:
        return next((p.device for p in self.model.parameters()), self.device)

    # ------------------------------------------------------------------ scoring
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Responses ``(N, U)`` of the chosen units to `x` ``(N, C, H, W)``: differentiable with
        respect to `x` if it requires grad, else computed without autograd."""
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
            raise ConfigError(f"a Scorer takes a preprocessed float batch (N, C, H, W), got "
                              f"{type(x).__name__}{tuple(x.shape) if isinstance(x, torch.Tensor) else ''}")
        if x.dim() == 3:
            raise ConfigError(f"a Scorer takes a batch (N, C, H, W), got {tuple(x.shape)}: one image? give x[None]")
        weight = next((p for p in self.model.parameters() if p.is_floating_point()), None)
        if weight is not None and x.dtype != weight.dtype:
            raise ConfigError(f"the batch is {x.dtype} and the model's weights are {weight.dtype}; give "
                              f"x.to({weight.dtype})")
        if x.shape[0] == 0:
            raise ConfigError("a Scorer needs at least one image in the batch, got an empty batch")
        if self._model_device() != self.device:
            self.model.to(self.device)
        x = x.to(self.device)
        plan = self._plan_for(x)
        values: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        # gradients flow to the input only: the weights' would cost time in every loop and pile up
        frozen = [p for p in self.model.parameters() if p.requires_grad] if x.requires_grad else []
        last = max(plan.sites, key=lambda s: s.event)

        def take(name: str, site_list: list[Site], value: Any, counter: str) -> None:
            for site, tensor in called(site_list, value, counter, counts):
                kept = site.selection.apply(tensor)
                if kept.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr():
                    kept = kept.clone()  # an in-place op later in the forward must not reach it
                values[site.key] = kept.reshape(kept.shape[0], -1)
            if any(s is last and s.key in values for s in site_list):
                raise StopForward

        handles = []
        was_training = self.model.training
        try:
            for p in frozen:
                p.requires_grad_(False)
            plan.lesions.attach()
            handles.append(self.model.register_forward_pre_hook(lambda m, a: counts.clear()))
            handles += hook_sites(self.model, plan.sites, take)
            self.model.eval()
            with torch.set_grad_enabled(x.requires_grad):
                try:
                    self.model(x)
                except StopForward:
                    pass
        finally:
            for handle in handles:
                handle.remove()
            plan.lesions.detach()
            self.model.train(was_training)
            for p in frozen:
                p.requires_grad_(True)
        missing = [s.key for s in plan.sites if s.key not in values]
        if missing:
            raise RecordingError(f"sites {missing} were not reached in this forward pass (the model's control "
                                 "flow differs from the traced pass)")
        out = torch.cat([values[s.key] for s in plan.sites], dim=1) if len(plan.sites) > 1 else \
            values[plan.sites[0].key]
        if out.shape[1] != plan.n_units:
            raise RecordingError(f"the sites gave {out.shape[1]} units where the trace planned {plan.n_units}: the "
                                 "model's control flow depends on its input's values (UNITREC_TRACE=real)")
        return out

    def _plan_for(self, x: torch.Tensor) -> _Plan:
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        plan = self._plans.get(key)
        if plan is not None and plan.state == _state(self.model):
            self._last = plan
            return plan
        example = x[:1].detach()
        sites, trace = resolve_sites(self.model, self._specs, example)
        lesions = Lesions(self.model, self._ablate, trace)
        plan = _Plan(sites, trace, lesions, _state(self.model))
        self._plans[key] = self._last = plan
        return plan


class _Plan:
    """What one input shape needs: sites, lesions, and the state they were made for."""

    def __init__(self, sites: list[Site], trace: Trace, lesions: Lesions, state: tuple) -> None:
        self.sites, self.trace, self.lesions, self.state = sites, trace, lesions, state
        self.n_units = sum(int(np.prod(s.shape)) for s in sites)
        self.table: Any = None


def _state(model: nn.Module) -> tuple:
    """What a trace depends on, taken without hashing: module objects under their names, their
    classes' and their own forward, hook functions, plain settings (compared by value, dicts,
    lists and sets by their contents) and parameter and buffer shapes. Compared with ``==``."""
    from torch.nn.modules import module as _module

    out: list[Any] = [tuple(_module._global_forward_hooks.values()), tuple(_module._global_forward_pre_hooks.values())]
    for name, m in model.named_modules():
        plain = []
        for k, v in m.__dict__.items():
            if k in _INTERNALS:
                continue
            if isinstance(v, dict):
                v = tuple((a, _Same(b)) for a, b in v.items())
            elif isinstance(v, (list, set, tuple)):
                v = tuple(_Same(b) for b in v)
            else:
                v = _Same(v)
            plain.append((k, v))
        out.append((name, id(m), type(m), type(m).forward, tuple(plain),
                    tuple((k, t.shape, t.dtype) for k, t in m._parameters.items() if t is not None),
                    tuple((k, t.shape, t.dtype) for k, t in m._buffers.items() if t is not None)))
    return tuple(out)


class _Same:
    """A value compared by identity, then by ``==`` where that gives a plain bool (never a tensor's)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Same):
            return NotImplemented
        a, b = self.value, other.value
        if a is b:
            return True
        if isinstance(a, (torch.Tensor, np.ndarray, nn.Module)) or type(a) is not type(b):
            return False
        try:
            same = a == b
        except Exception:  # noqa: BLE001 - a value whose == raises is compared by identity only
            return False
        return same if isinstance(same, bool) else False

    __hash__ = None  # type: ignore[assignment]


def _unit_rows(sites: Sequence[Site]) -> dict[str, list]:
    """Columns of ``Scorer.units``: one row per unit, in the order the output concatenates them."""
    rows: dict[str, list] = {"site": []}
    for site in sites:
        sel = site.selection
        dims = ("unit",) if sel.kind == "units" else tuple(sel.dims)
        n = int(np.prod(site.shape))
        rows["site"].extend([site.key] * n)
        coords = site.coords()
        grid = np.indices(site.shape).reshape(len(site.shape), -1) if site.shape else np.zeros((0, 1), int)
        for column in _COLUMNS:
            if column not in coords:
                continue
            dim, labels = coords[column]
            if dim not in dims:
                continue
            picked = np.asarray(labels)[grid[dims.index(dim)]]
            rows.setdefault(column, [None] * (len(rows["site"]) - n)).extend(picked.tolist())
        for column, filled in rows.items():
            if len(filled) < len(rows["site"]):
                filled.extend([None] * (len(rows["site"]) - len(filled)))
    return rows
