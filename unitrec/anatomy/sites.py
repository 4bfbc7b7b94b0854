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

from unitrec.anatomy.receptive_field import Field, finite
from unitrec.anatomy.selection import Selection, make_selection, neutral_dims
from unitrec.anatomy.tokens import TokenGrid
from unitrec.anatomy.trace import Call, Trace, trace_model
from unitrec.errors import LayerNotFoundError, ModelError, RecordingError, UnitrecError
from unitrec.schema import DEFAULT_TOP, Layers, LayerSpec, parse_layers

__all__ = ["Site", "layout_of", "pooled_size", "resolve_sites", "site_names", "trace_example"]

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
            kept = sel.flat if sel.kind == "tokens" else np.arange(self.tokens.n_tokens)
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


