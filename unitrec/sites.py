"""Recording sites: from names a user writes to a checked plan of what to hook.

A site is a module's qualified name (``layer4.1``), with ``:k`` for the k-th call
of a module that runs several times per forward (``layer1.0.relu:2``) and
``@input`` to capture what enters the module instead of what leaves it.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .errors import LayerNotFoundError, ModelError, RecordingError, UnitrecError
from .receptive_field import Field, finite
from .schema import Layers, LayerSpec, parse_layers
from .selection import Selection, make_selection, neutral_dims
from .tokens import TokenGrid
from .trace import Call, Trace, trace_model

__all__ = ["LayerInfo", "Site", "list_layers", "resolve_sites", "site_names", "stages"]

_NAME = re.compile(r"^(?P<module>[^:@]+?)(?::(?P<index>\d+))?(?:@(?P<capture>input|output))?$")


@dataclass
class Site:
    """A resolved recording site: which call to hook, what to keep, how to label it."""

    key: str  # the group name in the file
    module: str
    index: int
    capture: str  # "output" or "input"
    spec: LayerSpec
    call: Call
    selection: Selection
    tokens: TokenGrid | None = None  # the token layout of a (token, channel) site

    @property
    def shape(self) -> tuple[int, ...]:
        return self.selection.shape

    @property
    def stored(self) -> bool:
        """Every response is stored (``keep: full`` or ``both``)."""
        return self.spec.keep != "summary"

    @property
    def summarised(self) -> bool:
        """A running summary is kept (``keep: summary`` or ``both``)."""
        return self.spec.keep != "full"

    @property
    def top(self) -> int:
        """Preferred (and least-driving) stimuli a summary keeps per unit."""
        from .summary import DEFAULT_TOP

        return self.spec.top or DEFAULT_TOP

    @property
    def field(self) -> Field | None:
        return self.call.input_field if self.capture == "input" else self.call.output_field

    @property
    def event(self) -> int:
        """When, in the traced forward, this site's value is complete."""
        return self.call.start if self.capture == "input" else self.call.end

    @property
    def _source_runs(self) -> list[tuple[str, int]] | None:
        return self.call.input_sources if self.capture == "input" else self.call.sources

    def sources(self) -> list[str] | None:
        """Per-channel provenance of a concatenating site (after selection)."""
        runs = self._source_runs
        if not runs:
            return None
        labels = np.array([label for label, n in runs for _ in range(n)], dtype=object)
        sel = self.selection
        if sel.kind == "units":
            return list(labels[sel.channel])
        return list(labels[sel.channel]) if sel.channel is not None else list(labels)

    def coords(self) -> dict[str, tuple[str, np.ndarray]]:
        """Coordinates of the kept dims: ``{name: (dim, values)}`` (no stimulus)."""
        sel, out = self.selection, {}
        full = self.call.input_shape if self.capture == "input" else self.call.output_shape
        full = full[1:] if full else ()
        if sel.kind == "units":
            out["unit"] = ("unit", np.arange(sel.shape[0]))
            out["channel"] = ("unit", np.asarray(sel.channel))
            if sel.y is not None:
                out["y"], out["x"] = ("unit", np.asarray(sel.y)), ("unit", np.asarray(sel.x))
        else:
            for dim, n in zip(sel.dims, sel.shape):
                out[dim] = (dim, np.arange(n))
            if "channel" in out and sel.channel is not None:
                out["channel"] = ("channel", np.asarray(sel.channel))
        if sel.layout == ATTENTION and self.tokens is not None:  # each query and key is a token
            labels = self.tokens.coords(np.arange(self.tokens.n_tokens))
            for dim in ("query", "key"):
                out.update({f"{dim}_{name}": (dim, labels[name]) for name in ("kind", "y", "x")})
        if self.tokens is not None and "token" in sel.dims:
            kept = sel._flat if sel.kind == "tokens" else np.arange(self.tokens.n_tokens)
            assert kept is not None
            out["token"] = ("token", np.asarray(kept))
            out.update({name: ("token", values) for name, values in self.tokens.coords(kept).items()})
        src = self.sources()
        if src is not None:
            dim = "unit" if sel.kind == "units" else "channel"
            # sources numbered in channel order (of the whole site), for groupby in that order
            runs = self._source_runs
            assert runs is not None  # src is None without them
            order = {label: i for i, label in enumerate(dict.fromkeys(s for s, _ in runs))}
            out["source"] = (dim, np.array(src, dtype=object))
            out["source_index"] = (dim, np.array([order[s] for s in src], dtype=np.int64))
        fld = self.field
        if fld is not None and sel.kind != "pooled" and len(full) == 3:
            if sel.kind == "units":
                assert sel.y is not None and sel.x is not None  # units of a (channel, y, x) site
                out["rf_center_y"] = ("unit", np.array([fld.y.center(v) for v in sel.y], float))
                out["rf_center_x"] = ("unit", np.array([fld.x.center(v) for v in sel.x], float))
            else:
                rows, cols = fld.hw(full)
                out["rf_center_y"] = ("y", np.array([fld.y.center(v) for v in range(rows)], float))
                out["rf_center_x"] = ("x", np.array([fld.x.center(v) for v in range(cols)], float))
        return out

    def attrs(self) -> dict[str, Any]:
        """Attributes stored with the site: module, call, selection, receptive field."""
        full = self.call.input_shape if self.capture == "input" else self.call.output_shape
        attrs: dict[str, Any] = {
            "site": self.key,
            "module": self.module,
            "module_type": self.call.type,
            "call_index": self.index,
            "capture": self.capture,
            "site_shape": list(full[1:]) if full else [],
            "selection": self.selection.description,
        }
        if self.selection.kind == "pooled":
            attrs["pool"] = self.selection.pool
        fld = self.field
        if fld is not None and full and len(full) == 4:
            attrs.update(self._field_attrs(fld, fld.hw(full)))
        if self.tokens is not None:  # a token's field is its patch's; the grid plays the map
            grid = self.tokens
            attrs["tokens"] = (f"{' + '.join(grid.kinds) + ' + ' if grid.kinds else ''}"
                               f"{grid.grid[0]}×{grid.grid[1]} patches of {grid.patch_embed}")
            attrs.update(self._field_attrs(grid.field, grid.grid))
            attrs["rf_note"] = ("the patch's field, which locates each token; after the first attention "
                                "layer a token can see the whole image")
        return attrs

    def _field_attrs(self, fld: Field, grid: Sequence[int]) -> dict[str, list[float | int]]:
        """``rf_size`` and ``rf_stride`` of one position of a `grid` (rows, columns) of
        positions, as ``unitrec layers`` lists them; for a pooled site also
        ``rf_size_pooled``, the union of every position, which its units see."""
        attrs = {"rf_size": [finite(s) for s in fld.size], "rf_stride": [finite(s) for s in fld.stride]}
        if self.selection.kind == "pooled":
            attrs["rf_size_pooled"] = [finite(s) for s in pooled_size(fld, grid)]
        return attrs


#: the dims of attention weights, ``(heads, tokens, tokens)`` per stimulus
ATTENTION = ("head", "query", "key")


def pooled_size(fld: Field, grid: Sequence[int]) -> tuple[float, float]:
    """The field of a unit pooled over a `grid` (rows, columns) of positions: their union."""
    return tuple(s + (n - 1) * st for s, n, st in zip(fld.size, grid, fld.stride))  # type: ignore[return-value]


def layout_of(shape: Sequence[int], fld: Field | None, tokens: TokenGrid | None) -> tuple[str, ...]:
    """The names of a site's per-stimulus dims (`shape`, no batch), from what the trace knows.

    A 3-D site is a map where the trace followed its field: ``channel``, ``y`` and ``x``
    wherever its rows and columns are (``(y, x, channel)`` after ConvNeXt's
    channel-last permute); ``(head, query, key)`` where both last dims are a vision
    transformer's tokens and no field is known; else ``dim_1``, ``dim_2``, ... (never a guess).
    """
    n = len(shape)
    if n == 1:
        return ("channel",)
    if n == 3 and fld is not None and -n <= fld.axes[0] < fld.axes[1] < 0:
        names = ["channel"] * n
        names[fld.axes[0]], names[fld.axes[1]] = "y", "x"
        return tuple(names)
    if n == 3 and fld is None and tokens is not None and shape[1] == shape[2] == tokens.n_tokens:
        return ATTENTION
    return neutral_dims(shape)


def site_names(trace: Trace) -> list[str]:
    """Every valid site name of a traced model, in forward order (indexed where reused)."""
    names = []
    for call in trace.calls:
        n = trace.counts[call.module]
        names.append(call.module if n == 1 else f"{call.module}:{call.index}")
    return names


def _not_found(name: str, trace: Trace, model_name: str | None) -> LayerNotFoundError:
    valid = site_names(trace)
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.6)
    hint = f" Closest: {', '.join(close)}." if close else ""
    return LayerNotFoundError(
        f"no recording site {name!r} in this model.{hint} "
        f"List every site with: unitrec layers {model_name or 'MODEL'}"
    )


def resolve_sites(
    model: nn.Module,
    layers: Layers,
    example: torch.Tensor | None = None,
    *,
    trace: Trace | None = None,
    model_name: str | None = None,
) -> tuple[list[Site], Trace]:
    """Check layer entries against the model and plan the hooks.

    Parameters
    ----------
    model
        The network.
    layers
        Names or dicts (see :class:`~unitrec.schema.LayerSpec`).
    example
        A batch to trace the model with (its values do not matter, its shape does).
    trace
        A trace already made, to skip the dry pass.
    """
    specs = parse_layers(layers)
    if trace is None:
        if example is None:
            raise ValueError("resolve_sites needs an example batch or a trace")
        trace = trace_example(model, example)
    modules = dict(model.named_modules())
    model_name = model_name or getattr(model, "unitrec_description", {}).get("name")
    sites = []
    for spec in specs:
        m = _NAME.match(spec.name)
        if not m:
            raise _not_found(spec.name, trace, model_name)
        module = m["module"]
        capture = m["capture"] or spec.capture
        if module not in modules or module == "":
            raise _not_found(spec.name, trace, model_name)
        count = trace.counts.get(module, 0)
        if count == 0:
            raise LayerNotFoundError(
                f"{module!r} ({type(modules[module]).__name__}) is never called in a forward "
                "pass in eval mode, so it has nothing to record"
            )
        if m["index"] is None and count > 1:
            indexed = ", ".join(f"{module}:{i}" for i in range(count))
            raise LayerNotFoundError(
                f"{module!r} is called {count} times per forward; record one call by its "
                f"index: {indexed}"
            )
        index = int(m["index"] or 0)
        if index >= count:
            raise LayerNotFoundError(
                f"{spec.name!r}: {module!r} is called {count} time(s) per forward, "
                f"so the index must be in 0..{count - 1}"
            )
        call = trace.find(module, index)
        shape = call.input_shape if capture == "input" else call.output_shape
        if shape is None:
            raise RecordingError(
                f"{spec.name!r}: the module's {capture} is not a tensor; record one of its "
                "children instead"
            )
        if not shape or shape[0] != trace.batch:
            if trace.batch == 1 and example is not None and len(example) == 1:
                # a batch of 1 squeezed away (`pool(x).squeeze()`): a batch of 2 keeps it
                return resolve_sites(model, specs, _two(example), model_name=model_name)
            raise RecordingError(
                f"{spec.name!r}: its {capture} has shape {shape} in a traced batch of {trace.batch}, whose first "
                "dim is not the batch (the model squeezes or folds it); record a module that keeps the batch "
                "first, or keep it in the model (x.flatten(1), not x.squeeze())"
            )
        tokens = trace.tokens if trace.tokens is not None and trace.tokens.matches(shape[1:]) else None
        fld = call.input_field if capture == "input" else call.output_field
        layout = layout_of(shape[1:], fld, trace.tokens)
        selection = make_selection(
            spec.name, shape[1:], units=spec.units, channels=spec.channels,
            positions=spec.positions, pool=spec.pool, sample=spec.sample, seed=spec.seed, tokens=tokens,
            layout=layout,
        )
        if layout == ATTENTION:
            tokens = trace.tokens  # labels its queries and keys
        key = spec.key
        if capture == "input" and not key.endswith("@input") and not spec.store_as:
            key += "@input"
        sites.append(Site(key, module, index, capture, spec, call, selection, tokens))
    return sites, trace


def _two(example: torch.Tensor) -> torch.Tensor:
    """A batch of 2 made of the first item of `example`."""
    return example[:1].expand(2, *example.shape[1:]).clone()


def trace_example(model: nn.Module, example: torch.Tensor, *, every: bool = False) -> Trace:
    """The trace of `example`; of a batch of 2 where a batch of 1 fails (a model that
    squeezes its batch, ``pool(x).squeeze()``, then breaks on ``flatten(1)``), and,
    with `every` (a listing of every site), where it gives fewer outputs without the
    batch first. Models that keep their batch are traced once."""
    try:
        trace = trace_model(model, example)
    except UnitrecError:
        raise
    except Exception as exc:
        if len(example) != 1:
            raise _forward_failed(example, exc) from exc
        try:
            return trace_model(model, _two(example))
        except Exception:
            raise _forward_failed(example, exc) from exc
    lost = _batchless(trace) if every and len(example) == 1 else 0
    if lost:
        two = trace_model(model, _two(example))
        if _batchless(two) < lost:
            return two
    return trace


def _forward_failed(example: torch.Tensor, exc: Exception) -> ModelError:
    """The model's own forward raised on the mapping pass: one line, with what it was given."""
    text = " ".join(str(exc).split())
    return ModelError(f"the model's forward failed on an input of shape {tuple(example.shape[1:])} per stimulus "
                      f"({type(exc).__name__}: {text[:300]}); check that the preprocessing gives what the model "
                      "takes (channels, input size: preprocess.resize/crop, or input_size=)")


def _batchless(trace: Trace) -> int:
    """How many calls return a tensor whose first dim is not the batch."""
    return sum(1 for c in trace.calls if c.output_shape is not None
               and (not c.output_shape or c.output_shape[0] != trace.batch))


@dataclass
class LayerInfo:
    """One row of :func:`list_layers`."""

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    units: int
    calls: int
    rf_size: tuple[float, float] | None
    rf_stride: tuple[float, float] | None
    sources: list[tuple[str, int]] | None
    #: the field of a unit pooled over the whole map (``pool: mean | max``): every position's
    rf_size_pooled: tuple[float, float] | None = None

    @property
    def provenance(self) -> str:
        """``cat(branch1:64, branch2:128, ...)`` for concatenating sites, else ''."""
        if not self.sources:
            return ""
        return "cat(" + ", ".join(f"{s}:{n}" for s, n in self.sources) + ")"


def list_layers(
    model: nn.Module,
    input_size: Sequence[int] = (3, 224, 224),
    *,
    trace: Trace | None = None,
) -> list[LayerInfo]:
    """Every recording site of a model, in forward order.

    Parameters
    ----------
    model
        The network (left in the training mode it had).
    input_size
        ``(channels, height, width)`` of one input.

    Returns
    -------
    list of LayerInfo
        name (indexed ``name:k`` for modules called k times), module type, output
        shape (without batch), unit count, calls per forward, receptive-field size and
        stride in input pixels ``(rows, columns)``, and channel provenance of
        concatenating sites. A module whose input is a concatenation made by its
        siblings (Inception-ResNet's ``Block35.conv2d``) also gets a ``name@input``
        row, before its own, with that concatenation's provenance.

    Examples
    --------
    >>> import unitrec as ur
    >>> rows = ur.list_layers(ur.load_model("resnet18"))
    >>> [(r.name, r.rf_size) for r in rows if r.name == "layer1"]
    [('layer1', (43, 43))]
    """
    if trace is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        gen = torch.Generator().manual_seed(0)
        example = torch.randn((1, *input_size), generator=gen).to(device)
        trace = trace_example(model, example, every=True)
    rows = []
    names = site_names(trace)
    for name, call in zip(names, trace.calls):
        if call.input_sources and call.input_shape is not None:  # it takes a concatenation: name@input
            rows.append(_layer_row(f"{name}@input", call, trace, call.input_shape, call.input_field,
                                   call.input_sources))
        rows.append(_layer_row(name, call, trace, call.output_shape, call.output_field, call.sources))
    return rows


def _layer_row(name: str, call: Call, trace: Trace, shape: tuple[int, ...] | None, fld: Field | None,
               sources: list[tuple[str, int]] | None) -> LayerInfo:
    """One listing row for what enters or leaves a call (`shape` with the batch)."""
    shape = shape[1:] if shape else None
    grid: tuple[int, int] | None = None
    if trace.tokens is not None and trace.tokens.matches(shape):
        fld, grid = trace.tokens.field, trace.tokens.grid  # a token site: its patch's field
    elif shape is None or len(shape) != 3:
        fld = None
    elif fld is not None:
        grid = fld.hw(shape)
    pooled = pooled_size(fld, grid) if fld is not None and grid is not None else None
    return LayerInfo(
        name=name, type=call.type, output_shape=shape,
        units=int(np.prod(shape)) if shape is not None else 0,
        calls=trace.counts[call.module],
        rf_size=(finite(fld.size[0]), finite(fld.size[1])) if fld else None,
        rf_stride=(finite(fld.stride[0]), finite(fld.stride[1])) if fld else None,
        sources=sources,
        rf_size_pooled=(finite(pooled[0]), finite(pooled[1])) if pooled else None,
    )


def _stage_level(model: nn.Module, trace: Trace) -> dict[str, nn.Module]:
    """The modules a stage list is made of: the model's children, with a Sequential
    trunk (``features``, ``classifier``) opened up into its own children.

    A Sequential is a trunk when some of its children are single layers (VGG's and
    DenseNet's ``features``, AlexNet's ``classifier``) or when its children change the
    spatial resolution more than once (MobileNet's ``features``); a Sequential of
    blocks at one resolution after a downsampling (ResNet's ``layer2``) is a stage.
    """
    first: dict[str, Call] = {}
    for call in trace.calls:
        first.setdefault(call.module, call)

    def resolution(shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
        return tuple(shape[-2:]) if shape is not None and len(shape) == 4 else None

    level: dict[str, nn.Module] = {}
    for name, child in model.named_children():
        trunk = False
        if isinstance(child, nn.Sequential) and name in first:
            kids = list(child.named_children())
            sizes = [resolution(first[name].input_shape)] + [
                resolution(first[f"{name}.{n}"].output_shape) for n, _ in kids if f"{name}.{n}" in first]
            changes = sum(a != b for a, b in zip(sizes, sizes[1:]) if a is not None and b is not None)
            trunk = changes > 1 or any(_leaf(c) for _, c in kids)
        if trunk:
            level.update({f"{name}.{n}": c for n, c in child.named_children()})
        else:
            level[name] = child
    return level


def _leaf(module: nn.Module) -> bool:
    """A module without children: a single layer."""
    return next(module.children(), None) is None


def _is_layer(module: nn.Module) -> bool:
    """A single layer with a weight matrix or kernel (conv, linear), not a block."""
    return _leaf(module) and any(p.dim() >= 2 for p in module.parameters())


def _follows(module: nn.Module) -> bool:
    """A single layer without a kernel, other than a pool (norm, activation, dropout)."""
    return (_leaf(module) and all(p.dim() <= 1 for p in module.parameters())
            and "Pool" not in type(module).__name__)


def stages(model: nn.Module, trace: Trace) -> list[str]:
    """The classic stages of a network, as site names: the outputs a figure would show.

    Read from the anatomy, not from a table. The candidates are the model's children,
    with a Sequential trunk (``features``, ``classifier``: one that holds single
    layers or changes resolution more than once) opened into its children. In forward
    order:

    - a conv or linear layer starts a stage that the normalisation, activation and
      dropout layers after it (same output shape) extend; the stage's site is the last
      of them that is not a dropout (so the rectified response: AlexNet ``features.1``,
      ResNet's stem ``relu``);
    - a block (a module with children: ``layer1``, ``features.denseblock2``,
      ``features.transition2``, ``inception4a``, ``Mixed_6e``) and a pooling layer are
      stages of their own;
    - anything else (a normalisation after a block, a lone dropout, a flatten) is not.

    ResNet: ``relu`` (the stem), ``maxpool``, ``layer1``..``layer4``, ``avgpool``,
    ``fc``. DenseNet: ``features.relu0``, ``features.pool0``, each ``denseblockK`` and
    ``transitionK``, ``classifier``. GoogLeNet / Inception v3: the stem convolutions
    and pools, each inception block, ``avgpool``, ``fc``.
    """
    level = _stage_level(model, trace)
    names = site_names(trace)
    out: list[str] = []
    open_stage = False  # the last stage is a conv/linear layer that followers extend
    last_shape: tuple[int, ...] | None = None
    for name, call in zip(names, trace.calls):
        module = level.get(call.module)
        if module is None or call.output_shape is None:
            continue
        if isinstance(module, (nn.Identity, nn.Flatten, nn.Unflatten)):
            continue
        if _is_layer(module):
            out.append(name)
            open_stage, last_shape = True, call.output_shape
        elif _follows(module):
            if open_stage and call.output_shape == last_shape:
                if not isinstance(module, nn.modules.dropout._DropoutNd):
                    out[-1] = name
            else:
                open_stage = False
        else:  # a block or a pool
            out.append(name)
            open_stage = False
    return out
