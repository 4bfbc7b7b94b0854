"""Hooks that copy site values out of a forward pass, exactly as they were returned.

The value is taken at the hook, reduced to the selected units on the model's
device, and copied once; in-place operations that run later in the forward
(``ReLU(inplace=True)``, ``out += identity``) cannot reach the copy. A module that
runs several times per forward is counted per call, so ``layer1.0.relu:1`` is the
second call and nothing else.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from unitrec.anatomy.sites import Site, resolve_sites
from unitrec.anatomy.trace import Trace, first_tensor
from unitrec.errors import ConfigError, RecordingError
from unitrec.recording.lesion import Lesions
from unitrec.schema import Layers, parse_ablation

__all__ = ["Recorder", "StopForward", "called", "hook_sites"]

Sink = Callable[[Site, torch.Tensor], None]
#: ``take(module name, sites, value, counter)``: what a hooked module's call hands on
Take = Callable[[str, list[Site], Any, str], None]


def hook_sites(model: nn.Module, sites: list[Site], take: Take) -> list[torch.utils.hooks.RemovableHandle]:
    """Hook every module a site reads, its sites grouped per module and capture: `take` gets the
    module's output when it returns, or its arguments when it is called (``@input`` sites).

    The counter names the call stream (``layer1`` or ``layer1@input``) that :func:`called`
    counts per forward. On an error the hooks made so far are removed."""
    modules = dict(model.named_modules())
    grouped: dict[tuple[str, str], list[Site]] = {}
    for site in sites:
        grouped.setdefault((site.module, site.capture), []).append(site)
    handles = []
    try:
        for (name, capture), group in grouped.items():
            if capture == "input":
                handles.append(modules[name].register_forward_pre_hook(_pre_hook(take, name, group)))
            else:
                handles.append(modules[name].register_forward_hook(_post_hook(take, name, group)))
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    return handles


# closures of library code, not partials: a model's fingerprint names them and does not read
# what they hold, should it be taken while they are attached
def _pre_hook(take: Take, name: str, sites: list[Site]) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any) -> None:
        take(name, sites, args, name + "@input")
    return hook


def _post_hook(take: Take, name: str, sites: list[Site]) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        take(name, sites, output, name)
    return hook


def called(sites: list[Site], value: Any, counter: str, counts: dict[str, int]) -> Iterator[tuple[Site, torch.Tensor]]:
    """The sites this call of a module is for (calls counted per forward in `counts`), each with
    the tensor it reads: `value` itself, or the first tensor in a tuple or dict."""
    index = counts.get(counter, 0)
    counts[counter] = index + 1
    for site in sites:
        if site.index != index:
            continue
        tensor = value if isinstance(value, torch.Tensor) else first_tensor(value)
        if tensor is None:
            raise RecordingError(f"site {site.key!r}: the module's {site.capture} is not a tensor")
        yield site, tensor


class StopForward(BaseException):
    """Raised by the hook of the last site to skip the rest of the forward pass.

    A BaseException, so that a model's own ``except Exception`` cannot swallow it.
    """


class Recorder:
    """Record sites of a model in memory, for notebooks and small experiments.

    Hooks are attached when the ``with`` block is entered and removed when it is
    left, also when the forward pass raises. Each forward pass of the model inside
    the block appends one batch to :attr:`activations`.

    Parameters
    ----------
    model
        The network.
    layers
        Site names or layer entries (dicts with ``name``, ``units``, ``channels``,
        ``positions``, ``pool``, ``sample``, ``capture``), see docs/design.md,
        "Layer entries".
    input_size
        ``(channels, height, width)`` of one input, used once to map the model
        (call counts, shapes, receptive fields) when the block is entered.
    ablate
        Lesions applied inside the block (see :func:`unitrec.record`): every
        consumer of a lesioned module, recorded sites included, sees its edited output.

    Examples
    --------
    >>> import torch, unitrec as ur
    >>> model = ur.load_model("resnet18")
    >>> with ur.Recorder(model, ["layer1.0.bn2", "layer1.0.relu:1"]) as rec:
    ...     _ = model(torch.randn(2, 3, 64, 64))
    >>> rec.activations["layer1.0.bn2"].shape
    torch.Size([2, 64, 16, 16])
    """

    def __init__(self, model: nn.Module, layers: Layers, *, input_size: Sequence[int] = (3, 224, 224),
                 example: torch.Tensor | None = None, ablate: Any = None) -> None:
        self.model = model
        self._layers = layers
        self._input_size = tuple(input_size)
        self._example = example
        self.sites: list[Site] = []
        self.trace: Trace | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._counts: dict[str, int] = {}
        self._seen: set[str] = set()
        self._stop_at: Site | None = None
        self._sink: Sink = self._keep
        self._batches: dict[str, list[torch.Tensor]] = {}
        self._ablate = parse_ablation(ablate)
        self._lesions: Lesions | None = None

    @classmethod
    def from_sites(cls, model: nn.Module, sites: list[Site], trace: Trace) -> Recorder:
        """A recorder for sites already resolved against `model` (no second trace)."""
        rec = cls(model, [s.spec for s in sites])
        rec.sites, rec.trace = sites, trace
        return rec

    # ------------------------------------------------------------------ set-up
    def __enter__(self) -> Recorder:
        self.attach()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def __repr__(self) -> str:
        state = "attached" if self._handles else "detached"
        return f"<Recorder {state}: {', '.join(s.key for s in self.sites) or '(not resolved)'}>"

    def attach(self) -> None:
        """Map the model, check every site and register the hooks."""
        if self._handles:
            return
        if not isinstance(self.model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module (e.g. ur.load_model('resnet18')), got "
                              f"{type(self.model).__name__} {self.model!r:.60}")
        if getattr(self.model, "_unitrec_recording", False):
            raise RecordingError("this model already has a Recorder attached (a `with ur.Recorder(...)` block "
                                 "is open on it); give one Recorder all the sites, or close the other first")
        if not self.sites:
            example = self._example
            if example is None:
                device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
                gen = torch.Generator().manual_seed(0)
                example = torch.randn((1, *self._input_size), generator=gen).to(device)
            self.sites, self.trace = resolve_sites(self.model, self._layers, example)
            summarised = [s.key for s in self.sites if s.summarised]
            if summarised:
                raise ConfigError(f"keep: summary/both ({', '.join(summarised)}) is for ur.record, which writes "
                                  "the summary to its file; a Recorder keeps every value in memory")
        if self._ablate and self._lesions is None:
            assert self.trace is not None  # the sites were just resolved with it
            self._lesions = Lesions(self.model, self._ablate, self.trace)
        try:
            object.__setattr__(self.model, "_unitrec_recording", True)
            if self._lesions is not None:
                self._lesions.attach()
            self._handles.append(self.model.register_forward_pre_hook(self._begin))
            self._handles += hook_sites(self.model, self.sites, self._take)
        except BaseException:
            self.detach()
            raise

    def detach(self) -> None:
        """Remove every hook (safe to call twice)."""
        if self._handles:
            self.model.__dict__.pop("_unitrec_recording", None)
        if self._lesions is not None:
            self._lesions.detach()
        while self._handles:
            self._handles.pop().remove()

    # ------------------------------------------------------------------ hooks
    def _begin(self, module: nn.Module, args: Any) -> None:
        self._counts.clear()
        self._seen.clear()
        x = first_tensor(args)
        self._given = tuple(x.shape[1:]) if x is not None else None

    def _take(self, name: str, sites: list[Site], value: Any, counter: str) -> None:
        stop = False
        for site, tensor in called(sites, value, counter, self._counts):
            with torch.no_grad():
                kept = site.selection.apply(tensor.detach())
            if tuple(kept.shape[1:]) != site.shape:  # never broadcast into a buffer of another shape
                if tuple(kept.shape) == site.shape:
                    raise RecordingError(
                        f"site {site.key!r} gave values of shape {tuple(kept.shape)}, without a batch dim: the "
                        "model squeezes a batch of 1 (x.squeeze()); record with batch_size 2 or more, or "
                        "keep the batch in the model (x.flatten(1))")
                mapped = tuple(self.trace.input_shape) if self.trace is not None else None
                given = getattr(self, "_given", None)
                if mapped is not None and given is not None and mapped != given:
                    raise RecordingError(
                        f"site {site.key!r}: the Recorder mapped the model at input {mapped} and this batch is "
                        f"{given} per stimulus; give the size it will see: ur.Recorder(model, layers, "
                        f"input_size={given}) (or example=x)")
                raise RecordingError(
                    f"site {site.key!r} gave values of shape {tuple(kept.shape[1:])} per stimulus where the "
                    f"traced pass gave {site.shape}: the model's control flow depends on its input's values "
                    "(set UNITREC_TRACE=real to trace with real values), or record a site whose shape does "
                    "not change")
            self._sink(site, kept)
            self._seen.add(site.key)
            stop = stop or site is self._stop_at
        if stop:  # only after every entry on this call has its value
            raise StopForward

    # ------------------------------------------------------------------ use
    def _keep(self, site: Site, value: torch.Tensor) -> None:
        # copy=True: on the CPU .to() would otherwise alias the live tensor
        self._batches.setdefault(site.key, []).append(value.to("cpu", copy=True))

    @property
    def activations(self) -> dict[str, torch.Tensor]:
        """Recorded values per site, batches concatenated along the first dim."""
        return {k: torch.cat(v) if len(v) > 1 else v[0] for k, v in self._batches.items()}

    def clear(self) -> None:
        """Forget what was recorded so far."""
        self._batches.clear()

    def run(self, x: torch.Tensor, *, stop_early: bool = True, sink: Sink | None = None) -> None:
        """One forward pass that records every site, stopping after the last one.

        With ``stop_early`` the rest of the network after the deepest site is not
        computed (the values are the same: a site's value is complete when its
        module returns). `sink` receives ``(site, value)`` instead of memory.
        """
        if not self._handles:
            raise RecordingError("Recorder.run() needs the hooks: use it inside 'with Recorder(...)'")
        self._stop_at = max(self.sites, key=lambda s: s.event) if stop_early else None
        self._sink = sink or self._keep
        try:
            with torch.inference_mode():
                self.model(x)
        except StopForward:
            pass
        finally:
            self._stop_at, self._sink = None, self._keep
        missing = [s.key for s in self.sites if s.key not in self._seen]
        if missing:
            raise RecordingError(
                f"sites {missing} were not reached in this forward pass (the model's control "
                "flow differs from the traced pass); record with stop_early=False"
            )
