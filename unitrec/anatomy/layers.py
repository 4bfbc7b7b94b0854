"""``list_layers``: every recording site of a model as a table for people, and its stages.

One row per site: name, module type, output shape, unit count, calls per forward,
receptive field. ``stages`` names the blocks a network is built of (``layer1`` …),
for ``unitrec layers`` and the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from unitrec.anatomy.receptive_field import Field, finite
from unitrec.anatomy.sites import pooled_size, site_names, trace_example
from unitrec.anatomy.trace import Call, Trace

__all__ = ["LayerInfo", "list_layers", "stages"]


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
