"""Lesions: a module's output edited as if its forward had been, so every consumer sees it.

Each lesion names a site (a module's output, ``name:k`` for its k-th call) and units
with the layer-entry keys (``channels``, ``units: center``, ``positions``; none: the
whole site), and what they become: ``set: 0`` (any number), ``set: mean`` with
``from: FILE`` (each unit's mean in that recording: its summary, else its full data)
or ``scale: f``. A forward hook, registered before every other hook of the module,
returns the edited tensor (never written in place, so autograd and the module's own
tensors are untouched): ``torch.where(mask, value, output)`` or ``output * where(mask,
f, 1)``, bit for bit what a hand-written hook assigning those units gives.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unitrec.anatomy.sites import Site, resolve_sites
from unitrec.anatomy.trace import Trace
from unitrec.errors import ConfigError, UnitrecWarning
from unitrec.schema import AblationSpec, LayerSpec, parse_ablation

__all__ = ["Lesions", "lesion_identity", "source_run_id"]


@dataclass
class _Lesion:
    spec: AblationSpec
    site: Site
    mask: torch.Tensor  # bool, the site's per-stimulus shape
    value: torch.Tensor | None  # set: a scalar or per-unit tensor
    factor: float | None  # scale:
    source_run: str | None = None  # set: mean: the run id of the recording the means come from

    def describe(self) -> dict[str, Any]:
        """The lesion as the file's ``ablation`` attribute holds it (the run key: without ``from``)."""
        spec = self.spec
        out: dict[str, Any] = {"site": self.site.key}
        for key in ("units", "channels", "positions"):
            value = getattr(spec, key)
            if value is not None:
                out[key] = [list(v) for v in value] if key == "positions" else value
        if spec.scale is not None:
            out["scale"] = float(spec.scale)
        elif spec.set_to == "mean":
            out.update({"set": "mean", "from": spec.source, "from_run_id": self.source_run})
        else:
            out["set"] = float(spec.set_to)  # type: ignore[arg-type]
        out["n_units"] = int(self.mask.sum())
        return out


class Lesions:
    """The lesions of one model, resolved against its trace; hooks attached and detached together.

    Parameters
    ----------
    model
        The network.
    ablate
        Lesion entries (dicts with ``name``, ``channels`` / ``units`` / ``positions``,
        and ``set`` (+ ``from``) or ``scale``) or :class:`~unitrec.schema.AblationSpec`.
    trace
        The model's trace at the input size it will see.
    """

    def __init__(self, model: nn.Module, ablate: Any, trace: Trace) -> None:
        self.model = model
        self.specs = parse_ablation(ablate)
        self._lesions = [self._resolve(spec, trace) for spec in self.specs]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._counts: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self._lesions)

    def describe(self) -> list[dict[str, Any]]:
        """Every lesion, in order: for the run key and the ``ablation`` attribute."""
        return [lesion.describe() for lesion in self._lesions]

    def text(self) -> str:
        """The ``ablation`` attribute: every lesion, ``from:`` paths included."""
        return json.dumps(self.describe(), sort_keys=True)

    def key_text(self) -> str:
        """The run key's ``ablation``: the source recordings by run id, not by path, so a moved
        folder is the same job and a recording made again under the same name is not."""
        return json.dumps([{k: v for k, v in d.items() if k != "from"} for d in self.describe()], sort_keys=True)

    # ------------------------------------------------------------------ resolving
    def _resolve(self, spec: AblationSpec, trace: Trace) -> _Lesion:
        if "@" in spec.name:
            raise ConfigError(f"lesion {spec.name!r}: a lesion edits a module's output; name the module "
                              "(without @input), or lesion the module whose output feeds it")
        entry = LayerSpec(name=spec.name, units=spec.units, channels=spec.channels, positions=spec.positions)
        site = resolve_sites(self.model, [entry], trace=trace)[0][0]
        full = tuple(site.call.output_shape[1:]) if site.call.output_shape else ()
        if not full:
            raise ConfigError(f"lesion {spec.name!r}: {site.call.type} returns no tensor (a tuple or a "
                              "dict?); lesion one of its submodules, whose output is a tensor")
        index = torch.arange(int(np.prod(full)), dtype=torch.long).reshape(1, *full)
        picked = site.selection.apply(index).flatten()
        mask = torch.zeros(index.numel(), dtype=torch.bool)
        mask[picked] = True
        mask = mask.reshape(full)
        value, factor, run = None, None, None
        if spec.scale is not None:
            factor = float(spec.scale)
        elif spec.set_to == "mean":
            value, run = _means(spec, site.key, full)
        else:
            value = torch.tensor(float(spec.set_to))  # type: ignore[arg-type]
        return _Lesion(spec, site, mask, value, factor, run)

    # ------------------------------------------------------------------ hooks
    def attach(self) -> None:
        """Register the hooks: first among each module's forward hooks, so recorders see the lesion."""
        if self._handles or not self._lesions:
            return
        modules = dict(self.model.named_modules())
        by_module: dict[str, list[_Lesion]] = {}
        for lesion in self._lesions:
            by_module.setdefault(lesion.site.module, []).append(lesion)
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._begin))
            for name, lesions in by_module.items():
                self._handles.append(modules[name].register_forward_hook(self._hook(name, lesions), prepend=True))
        except BaseException:
            self.detach()
            raise

    def detach(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> Lesions:
        self.attach()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def _begin(self, module: nn.Module, args: Any) -> None:
        self._counts.clear()

    def _hook(self, name: str, lesions: list[_Lesion]):
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            index = self._counts.get(name, 0)
            self._counts[name] = index + 1
            for lesion in lesions:
                if lesion.site.index != index:
                    continue
                if not isinstance(output, torch.Tensor):
                    raise ConfigError(f"lesion {lesion.spec.name!r}: {type(module).__name__} returned "
                                      f"{type(output).__name__}, not a tensor; lesion one of its submodules")
                output = _edit(output, lesion)
            return output
        return hook


def _edit(output: torch.Tensor, lesion: _Lesion) -> torch.Tensor:
    if tuple(output.shape[1:]) != tuple(lesion.mask.shape):
        raise ConfigError(f"lesion {lesion.spec.name!r}: the module returned {tuple(output.shape[1:])} per "
                          f"stimulus where the trace gave {tuple(lesion.mask.shape)}; lesion at the input size "
                          "the model was mapped with")
    mask = lesion.mask.to(output.device)
    if lesion.factor is not None:
        one = torch.ones((), dtype=output.dtype, device=output.device)
        return output * torch.where(mask, torch.tensor(lesion.factor, dtype=output.dtype, device=output.device), one)
    assert lesion.value is not None
    return torch.where(mask, lesion.value.to(device=output.device, dtype=output.dtype), output)


def lesion_identity(specs: list[AblationSpec]) -> list[dict[str, Any]]:
    """What identifies lesions without a model at hand (an evolution's key): the entries, and a
    ``set: mean`` source by its run id instead of its path."""
    out = []
    for spec in specs:
        entry = spec.model_dump(by_alias=True, exclude_defaults=True)
        if spec.source:
            entry.pop("from")
            entry["from_run_id"] = source_run_id(spec.name, spec.source)
        out.append(entry)
    return out


def source_run_id(name: str, source: str) -> str:
    """The run id of the recording a ``set: mean`` lesion reads (one line if it is not one)."""
    import h5py

    from unitrec.files.layout import partial_path

    path = os.fspath(source)
    if not os.path.isfile(path):
        where = " (an unfinished recording is beside it: let it finish)" if partial_path(Path(path)).exists() else ""
        raise ConfigError(f"lesion {name!r}: from: {path} is not a recording{where}; record the site there first")
    try:
        with h5py.File(path, "r") as h5:
            run = h5.attrs.get("run_id")
    except OSError as exc:
        raise ConfigError(f"lesion {name!r}: from: {path} cannot be read ({' '.join(str(exc).split())[:80]})") from None
    return run.decode() if isinstance(run, bytes) else str(run)


def _means(spec: AblationSpec, key: str, full: tuple[int, ...]) -> tuple[torch.Tensor, str]:
    """Each unit's mean response from a recording of the whole site (summary first, else full data)."""
    from unitrec.files.info import recording_info
    from unitrec.files.load import load_layer, load_summary, sites_in, summaries_in

    path = os.fspath(spec.source or "")
    summaries, sites = summaries_in(path), sites_in(path)
    info = recording_info(path)
    if info.get("status") != "complete":
        warnings.warn(f"lesion {spec.name!r}: {path} is an unfinished recording; set: mean takes the means over the "
                      f"{info['n_recorded']} of {info['n_stimuli']} stimuli recorded so far", UnitrecWarning,
                      stacklevel=5)
    if key in summaries:
        data = load_summary(path, key)
        means, run = np.asarray(data["mean"].values, dtype=np.float64), str(data.attrs.get("run_id", ""))
    elif key in sites:
        da = load_layer(path, key)
        means, run = np.asarray(da.mean("stimulus").values, dtype=np.float64), str(da.attrs.get("run_id", ""))
    else:
        held = ", ".join(sorted(set(summaries) | set(sites))) or "no sites"
        raise ConfigError(f"lesion {spec.name!r}: set: mean reads each unit's mean from site {key!r} of {path}, "
                          f"which holds {held}; record the whole site there first")
    if means.shape != full:
        raise ConfigError(f"lesion {spec.name!r}: {path} holds site {key!r} as {means.shape} units, the module "
                          f"gives {full}; set: mean needs the whole site (no units/channels/pool) recorded at the input "
                          "size the lesioned model runs at")
    if not np.isfinite(means).all():
        raise ConfigError(f"lesion {spec.name!r}: the means of site {key!r} in {path} are not all finite "
                          "(an unfinished recording?); record the site to the end first")
    return torch.from_numpy(means.astype(np.float32)), run
