"""Theoretical receptive fields, propagated op by op through a traced forward pass.

Each spatial tensor carries, per axis, the input-pixel interval seen by its first
position and the step between positions: position ``i`` sees pixels
``[lo + i*stride, hi + i*stride]``. Convolutions and pools grow the interval,
elementwise ops and concatenations take the union over their inputs (so a residual
block's field is the largest over its paths), and anything else ends the chain
(the field becomes unknown rather than wrong).

Three things keep a field without widening it:

- channel gates: a tensor pooled to 1 × 1 (squeeze-excitation's global mean, through
  its 1 × 1 convolutions and sigmoid) that rescales a map by broadcasting. The map's
  field is kept: the gate depends on the whole image, but it only scales channels,
  as the literature's field tables for EfficientNet and MobileNet-v3 assume.
- channel-last permutes (ConvNeXt's ``permute(0, 2, 3, 1)``) and transposes: the
  field follows its rows and columns to their new axes (:attr:`Field.axes`), through
  the ops that act on the last (channel) axis only — ``layer_norm``, ``linear`` — and back.
- reshapes that keep the rows, the columns and every dim after them (ShuffleNet's
  channel shuffle), ``torch.stack`` of maps (a new axis; the union of their fields, as
  ``torch.cat``), and reductions over axes other than rows and columns (``stack(...).sum(1)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["Axis", "Field", "image_field", "propagate"]


@dataclass(frozen=True)
class Axis:
    """One spatial axis of a receptive field, in input pixels."""

    lo: float
    hi: float
    stride: float

    @property
    def size(self) -> float:
        return self.hi - self.lo + 1

    def center(self, index: int) -> float:
        return (self.lo + self.hi) / 2 + index * self.stride

    def window(self, kernel: int, stride: int, pad: int, dilation: int = 1) -> Axis:
        return Axis(
            self.lo - pad * self.stride,
            self.hi + (-pad + (kernel - 1) * dilation) * self.stride,
            self.stride * stride,
        )

    def union(self, other: Axis) -> Axis:
        return Axis(min(self.lo, other.lo), max(self.hi, other.hi), max(self.stride, other.stride))


@dataclass(frozen=True)
class Field:
    """Receptive field of a (…, H, W) tensor: one :class:`Axis` for rows, one for columns.

    ``axes`` are the tensor dims of rows and columns, counted from the end:
    ``(-2, -1)`` for (N, C, H, W), ``(-3, -2)`` for channel-last (N, H, W, C).
    """

    y: Axis
    x: Axis
    axes: tuple[int, int] = (-2, -1)

    @property
    def size(self) -> tuple[float, float]:
        return (self.y.size, self.x.size)

    @property
    def stride(self) -> tuple[float, float]:
        return (self.y.stride, self.x.stride)

    def union(self, other: Field) -> Field:
        return Field(self.y.union(other.y), self.x.union(other.x), self.axes)

    def hw(self, shape: Sequence[int]) -> tuple[int, int]:
        """Rows and columns of a tensor of `shape` that has this field."""
        return (int(shape[self.axes[0]]), int(shape[self.axes[1]]))

    def at(self, axes: tuple[int, int]) -> Field:
        return Field(self.y, self.x, axes)


def image_field() -> Field:
    """The field of the input image itself: every pixel sees itself."""
    return Field(Axis(0, 0, 1), Axis(0, 0, 1))


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return (int(value[0]), int(value[-1])) if len(value) else (0, 0)
    return (int(value), int(value))


# Parameter order of the functional ops whose geometry we know; builtins have no
# inspectable signature, so positional arguments are matched by these lists.
_PARAMS = {
    "conv2d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "max_pool2d": ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    "max_pool2d_with_indices": ("input", "kernel_size", "stride", "padding", "dilation"),
    "avg_pool2d": ("input", "kernel_size", "stride", "padding", "ceil_mode"),
    "lp_pool2d": ("input", "norm_type", "kernel_size", "stride", "ceil_mode"),
    "adaptive_avg_pool2d": ("input", "output_size"),
    "adaptive_max_pool2d": ("input", "output_size"),
    "pad": ("input", "pad", "mode", "value"),
}


def _bind(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = dict(zip(_PARAMS[name], args))
    bound.update(kwargs)
    return bound


def _window(name: str, p: dict[str, Any], field: Field, in_hw: tuple[int, int]) -> Field | None:
    if name == "conv2d":
        kernel = tuple(p["weight"].shape[-2:])
        stride, dilation = _pair(p.get("stride", 1)), _pair(p.get("dilation", 1))
        padding = p.get("padding", 0)
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            padding = tuple((k - 1) * d // 2 for k, d in zip(kernel, dilation))
        padding = _pair(padding)
    elif name in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
        out = p["output_size"]
        out = _pair(out) if out is not None else in_hw
        out = tuple(o if o is not None else n for o, n in zip(out, in_hw))
        if any(n % o for n, o in zip(in_hw, out)):
            return None  # uneven bins: no single kernel describes every position
        kernel = stride = tuple(n // o for n, o in zip(in_hw, out))
        padding, dilation = (0, 0), (1, 1)
    elif name == "pad":
        pads = list(p["pad"]) + [0, 0, 0, 0]
        left, top = pads[0], pads[2]
        return Field(field.y.window(1, 1, top), field.x.window(1, 1, left))
    else:  # pools
        kernel = _pair(p["kernel_size"])
        stride = _pair(p.get("stride") or kernel)
        padding = _pair(p.get("padding", 0) if name != "lp_pool2d" else 0)
        dilation = _pair(p.get("dilation", 1) if name.startswith("max") else 1)
    return Field(
        field.y.window(kernel[0], stride[0], padding[0], dilation[0]),
        field.x.window(kernel[1], stride[1], padding[1], dilation[1]),
    )


_GLOBAL = {"mean", "amax", "amin", "sum", "max", "min", "logsumexp"}  # reductions to a gate
_SAME_SHAPE = {"reshape", "view", "contiguous", "flatten", "unflatten"}
_REDUCTIONS = _GLOBAL | {"prod", "std", "var", "nansum", "nanmean", "median"}
_TRANSPOSES = {"transpose", "swapaxes", "swapdims"}


def propagate(
    name: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    inputs: list[tuple[tuple[int, ...], Field]],
    out_shape: tuple[int, ...],
) -> Field | None:
    """Field of an op's output, from its name, arguments and its inputs' fields.

    `inputs` lists ``(shape, field)`` of the op's tensor arguments whose field is
    known. Returns None when the output has no spatial layout we can vouch for.
    """
    if len(out_shape) < 3 or not inputs:
        return None
    first_shape, first_field = inputs[0]
    if name in _PARAMS:
        if len(first_shape) < 3 or first_field.axes != (-2, -1):
            return None
        return _window(name, _bind(name, args, kwargs), first_field, (first_shape[-2], first_shape[-1]))
    if name == "permute":
        return _permuted(args, kwargs, first_shape, first_field, out_shape)
    if name in _TRANSPOSES:
        return _transposed(args, kwargs, first_shape, first_field, out_shape)
    if name in _SAME_SHAPE:
        # rows, columns and what follows them unchanged: only the dims before them are regrouped
        start = first_field.axes[0]
        keeps = len(out_shape) > -start and tuple(first_shape[start:]) == tuple(out_shape[start:])
        return first_field if len(inputs) == 1 and keeps else None
    if name == "stack":
        return _stacked(args, kwargs, inputs, out_shape)
    if name in _REDUCTIONS and len(out_shape) < len(first_shape):
        return _reduced(args, kwargs, first_shape, first_field, out_shape)
    spatial = [(s, f) for s, f in inputs if len(s) >= 3 and len(s) == len(out_shape)]
    if not spatial:
        return None
    axes = spatial[0][1].axes
    out_hw = (out_shape[axes[0]], out_shape[axes[1]])
    if name in _GLOBAL and out_hw == (1, 1) and len(spatial) == 1:
        h, w = spatial[0][1].hw(spatial[0][0])  # pooled to a channel gate: a window over the map
        return Field(spatial[0][1].y.window(h, h, 0), spatial[0][1].x.window(w, w, 0), axes)
    # a 1 × 1 operand that broadcasts over the map is a channel gate: it scales, not widens
    gates = [(s, f) for s, f in spatial if f.hw(s) == (1, 1) and out_hw != (1, 1)]
    maps = [(s, f) for s, f in spatial if (s, f) not in gates]
    if not maps or (name == "linear" and maps[0][1].axes[1] == -1):
        return None  # a linear layer over the columns mixes them
    if any(f.axes != axes or f.hw(s) != out_hw for s, f in maps):
        return None  # reshapes, interpolation, ...: unknown geometry
    field = maps[0][1]
    for _, other in maps[1:]:
        field = field.union(other)
    return field


def _permuted(args: Sequence[Any], kwargs: dict[str, Any], shape: tuple[int, ...], field: Field,
              out_shape: tuple[int, ...]) -> Field | None:
    """The field of a permuted tensor: rows and columns moved to their new dims."""
    dims = args[1:] if len(args) > 1 else kwargs.get("dims", ())
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = dims[0]
    n = len(shape)
    if len(dims) != n or len(out_shape) != n:
        return None
    order = [int(d) % n for d in dims]
    y, x = (field.axes[0] % n, field.axes[1] % n)
    new_y, new_x = order.index(y) - n, order.index(x) - n
    if new_y >= new_x:
        return None  # rows after columns: not a layout the sites describe
    return field.at((new_y, new_x))


def _transposed(args: Sequence[Any], kwargs: dict[str, Any], shape: tuple[int, ...], field: Field,
                out_shape: tuple[int, ...]) -> Field | None:
    """The field of ``transpose(input, dim0, dim1)``: a permute that swaps two dims."""
    given = list(args[1:3])
    dims = [*given, *(kwargs.get(k) for k in ("dim0", "dim1")[len(given):])]
    first, second = dims[0], dims[1]
    if not isinstance(first, int) or not isinstance(second, int):
        return None
    order = list(range(len(shape)))
    a, b = first % len(shape), second % len(shape)
    order[a], order[b] = order[b], order[a]
    return _permuted((None, *order), {}, shape, field, out_shape)


def _stacked(args: Sequence[Any], kwargs: dict[str, Any], inputs: list[tuple[tuple[int, ...], Field]],
             out_shape: tuple[int, ...]) -> Field | None:
    """The field of ``torch.stack`` of maps: their union, on axes moved past the new one."""
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    n = len(out_shape)
    if not isinstance(dim, int) or any(len(s) != n - 1 for s, _ in inputs):
        return None
    new = dim % n
    shape, field = inputs[0]
    if any(f.axes != field.axes or f.hw(s) != field.hw(shape) for s, f in inputs):
        return None
    axes = tuple(p + (p >= new) - n for p in (a % (n - 1) for a in field.axes))
    for _, other in inputs[1:]:
        field = field.union(other)
    return field.at(axes) if axes[0] > -n else None  # type: ignore[arg-type]


def _reduced(args: Sequence[Any], kwargs: dict[str, Any], shape: tuple[int, ...], field: Field,
             out_shape: tuple[int, ...]) -> Field | None:
    """The field of a reduction over dims other than rows and columns (``x.sum(1)``),
    which keeps each position: on axes moved up by the dims removed after them."""
    dims = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis"))
    dims = [dims] if isinstance(dims, int) else dims
    if not isinstance(dims, (list, tuple)) or not dims or not all(isinstance(d, int) for d in dims):
        return None
    n = len(shape)
    gone = {int(d) % n for d in dims}
    y, x = field.axes[0] % n, field.axes[1] % n
    if y in gone or x in gone or len(out_shape) != n - len(gone):
        return None
    axes = (y - n + sum(d > y for d in gone), x - n + sum(d > x for d in gone))
    return field.at(axes) if axes[0] > -len(out_shape) else None


def finite(value: float) -> float | int:
    """Render a coordinate as an int when it is whole (for files and tables)."""
    return int(value) if float(value).is_integer() and math.isfinite(value) else float(value)
