"""One dry forward pass that maps a model's anatomy.

The trace runs a single input through the model with a forward (pre-)hook on every
module and a TorchFunctionMode that sees every torch function. It is cached per
model and input shape while the model's anatomy stays the same.

The trace needs shapes, not values, so it first runs *hollow*: plain 2-D convolutions
and linear layers return zeros of the shape they would compute, at a fraction of their
cost. That is only sound while no value can steer the pass or outlast it, so every
storage that holds stand-in values is followed, and the hollow pass is abandoned for a
real one (docs/design.md, "Data flow", lists every case) where such a tensor reaches
an op whose result could depend on its values (anything outside :data:`_SHAPE_ONLY`,
or a stand-in where an op may read a size or an index), before anything is written
into the model's tensors or the example, where a tensor made out of the trace's sight
enters, where a stand-in outlives the pass, or where the pass fails; what it changed in
the model is put back first. Models with hooks of their own, and every model under
``UNITREC_TRACE=real``, are traced for real. What the hollow pass cannot see is a value
read inside a TorchScript function or a compiled extension that returns a Python
number; for such a model set ``UNITREC_TRACE=real``. From it we learn,
for every call of every module: the order of calls, input and output shapes, the
theoretical receptive field of the output, and — for outputs that are a channel
concatenation — which child produced each channel and which channels were changed
after the concatenation. Nothing here is specific to a model family: a user's own
network that concatenates its children is mapped the same way as a DenseNet block.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode

from .receptive_field import Field, image_field, propagate
from .tokens import TokenGrid, find_grid

__all__ = ["Call", "Trace", "trace_model"]

_CAT = {"cat", "concat", "concatenate"}
_SHAPE_QUERIES = {"dim", "size", "numel", "nelement", "ndimension", "__len__"}
_PROPERTIES = {"shape", "dtype", "device", "ndim", "layout", "is_cuda", "requires_grad"}
# in-place ops not named `*_` (`y[:, :4] = 0`); `y += x` reaches the mode as `add_`
_IN_PLACE = {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__",
             "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__imatmul__"}


@dataclass
class Call:
    """One call of one module during the traced forward pass."""

    module: str
    index: int
    type: str
    start: int  # event number when the module was entered
    end: int  # event number when it returned
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    input_field: Field | None = None
    output_field: Field | None = None
    sources: list[tuple[str, int]] | None = None  # (child, channels) in channel order
    # the same for the input, when it is a concatenation made by the module's siblings
    # (Block35's conv2d takes cat(branch0, branch1, branch2)): labels relative to the parent
    input_sources: list[tuple[str, int]] | None = None


@dataclass
class Trace:
    """Every module call of one forward pass, in the order the calls returned."""

    calls: list[Call]
    counts: dict[str, int]  # calls per forward, per module name
    input_shape: tuple[int, ...]
    tokens: TokenGrid | None = None  # a vision transformer's token layout

    def find(self, module: str, index: int) -> Call:
        for call in self.calls:
            if call.module == module and call.index == index:
                return call
        raise KeyError((module, index))


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _tensor_list(obj: Any, out: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The tensors in `obj`, in the order :func:`_tensors` gives them (faster, for every op)."""
    out = [] if out is None else out
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple, dict)):
        for item in obj.values() if isinstance(obj, dict) else obj:
            if isinstance(item, torch.Tensor):
                out.append(item)
            elif isinstance(item, (list, tuple, dict)):
                _tensor_list(item, out)
    return out


def _all_tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in `obj`, slice bounds included (``y[:, :k]``)."""
    if isinstance(obj, slice):
        return _tensor_list([obj.start, obj.stop, obj.step])
    if isinstance(obj, (list, tuple, dict)):
        items = obj.values() if isinstance(obj, dict) else obj
        return [t for item in items for t in _all_tensors(item)]
    return [obj] if isinstance(obj, torch.Tensor) else []


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _first_tensor(obj: Any) -> torch.Tensor | None:
    return next(_tensors(obj), None)


class _NeedsValues(BaseException):
    """The hollow pass met an op whose result could depend on values.

    A BaseException, so that a model's own ``except Exception`` cannot swallow it
    (the mode also remembers it, in case a bare ``except`` does)."""


class _Mode(TorchFunctionMode):
    """Follows receptive fields and concatenations through every torch function.

    With `hollow` (the storages holding stand-in values, see the module's docstring),
    plain 2-D convolutions and linear layers return zeros of their output shape."""

    def __init__(self, keep: list[Any], events: list[int], hollow: set[int] | None = None,
                 kept: Sequence[torch.Tensor] = ()) -> None:
        super().__init__()
        self.hollow = hollow
        # the model's parameters and buffers, and the example: the hollow pass writes into none of them
        self.kept = {id(t) for t in kept}
        self.kept_storage = {_storage(t) for t in kept if t.numel()} if hollow is not None else set()
        self.known = set(self.kept)  # tensors whose origin the trace saw
        self.needs_values: str | None = None
        self.stand_ins: list[StorageWeakRef] = []  # every storage holding stand-in values
        self.keep = keep  # holds every tensor seen, so that id() stays unique
        self.events = events  # the clock shared with the module hooks: one tick per call
        self.born: dict[int, int] = {}  # when each tensor was made
        self.writes: dict[int, list[tuple[int, Any]]] = {}  # in-place writes: (when, channels)
        self.fields: dict[int, Field] = {}
        # tensors computed from the image whose field nobody can vouch for (after a
        # global mean, a reshape, ...): whatever they touch has an unknown field too,
        # rather than the field of the other operand (squeeze-excitation, attention)
        self.unknown: set[int] = set()
        self.cats: dict[int, list[torch.Tensor]] = {}
        self.ops: dict[int, tuple[str, list[torch.Tensor]]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.events[0] += 1
        name = getattr(func, "__name__", "")
        if name in _SHAPE_QUERIES or (  # read no values, make no tensors: the hooks ask often
                name == "__get__" and getattr(getattr(func, "__self__", None), "__name__", "") in _PROPERTIES):
            return func(*args, **kwargs)
        target = _written(name, args, kwargs)
        base = target if target is None or target._base is None else target._base
        if base is not None and base.dim() >= 2:
            self.keep.append(base)
            self.writes.setdefault(id(base), []).append(
                (self.events[0], _channels_written(base, target, name, args)))
        inputs = _tensor_list((args, kwargs))
        out = None
        if self.hollow is not None:
            self._check_hollow(func, name, args, kwargs, inputs, base)
            out = _stand_in(name, args, kwargs)
        if out is None:
            out = func(*args, **kwargs)
        if self.hollow is not None:
            self._follow_hollow(name, out, inputs, base)
        if name == "__get__" or not isinstance(out, (torch.Tensor, tuple, list)):
            return out
        input_ids = {id(t) for t in inputs}
        known = [(tuple(t.shape), self.fields[id(t)]) for t in inputs if id(t) in self.fields]
        tainted = any(id(t) in self.unknown for t in inputs)
        derived = tainted or bool(known)
        for result in _tensor_list(out):
            self.keep.append(result)
            fld = None if tainted else propagate(name.rstrip("_"), args, kwargs, known, tuple(result.shape))
            if fld is not None:
                self.fields[id(result)] = fld
                self.unknown.discard(id(result))
            elif derived:
                self.fields.pop(id(result), None)
                self.unknown.add(id(result))
            if id(result) not in input_ids:
                self.born[id(result)] = self.events[0]
                if result.dim() >= 2:
                    self.ops[id(result)] = (name, [t for t in inputs if t.dim() >= 2])
        if name in _CAT and isinstance(out, torch.Tensor):
            tensors = list(args[0]) if args else list(kwargs.get("tensors", ()))
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            if out.dim() >= 2 and dim % out.dim() == 1:
                self.cats[id(out)] = tensors
        return out

    # Stand-in values are followed by storage, not by tensor object, so that a view, a
    # `.data` alias or a tensor written in place is seen to hold them too.
    def _is_hollow(self, t: torch.Tensor) -> bool:
        assert self.hollow is not None
        return t.numel() > 0 and _storage(t) in self.hollow

    def _check_hollow(self, func: Any, name: str, args: tuple, kwargs: dict, inputs: list[torch.Tensor],
                      base: torch.Tensor | None) -> None:
        """Give up the hollow pass, before the op runs, where values could steer it or outlast it."""
        if any(id(t) not in self.known and (t._base is None or id(t._base) not in self.known)
               for t in _all_tensors((args, kwargs))):
            self._give_up(f"{name} got a tensor made outside the trace")
        if base is not None and (id(base) in self.kept or _storage(base) in self.kept_storage):
            # a buffer updated in forward, an input changed in place: a real pass does it once
            self._give_up(f"{name} writes into the model's tensors or its input")
        if (name in _ESCAPES or name.startswith("_foreach") or isinstance(kwargs.get("out"), (tuple, list))
                or getattr(getattr(func, "_schema", None), "is_mutable", False) and base is None
                or name in _RUNNING_STATS and _updates_running_stats(func, name, args, kwargs)):
            # writes the trace cannot follow: through numpy or a storage, several outputs, running statistics
            self._give_up(f"{name} may write where the trace cannot follow")
        hollow = [t for t in _all_tensors((args, kwargs)) if self._is_hollow(t)]
        if not hollow:
            return
        if name not in _SHAPE_ONLY:
            self._give_up(f"{name} may read values")
        # anywhere but the data and an op's tensor operands, a tensor may be read as a
        # size, a slice bound or an index (`y[:, :k]`, `view(k, -1)`, `adaptive_avg_pool2d(x, t)`)
        operands = _operands(name, args, kwargs)
        if any(not any(t is o for o in operands) for t in hollow):
            self._give_up(f"{name} may take a size or an index from values")
        if name in _DIVISIONS and any(not t.is_floating_point() for t in hollow):
            self._give_up(f"{name} of integers may divide by zero for real")
        if name == "where" and len(args) + len(kwargs) < 3:
            self._give_up("where(condition) has a shape that depends on values")

    def _give_up(self, why: str) -> None:
        self.needs_values = why
        raise _NeedsValues(why)

    def _follow_hollow(self, name: str, out: Any, inputs: list[torch.Tensor], base: torch.Tensor | None) -> None:
        assert self.hollow is not None
        results = _tensor_list(out)
        self.known.update(id(t) for t in results)
        if name in _STAND_INS or any(self._is_hollow(t) for t in inputs):
            # a result that is a view of an input with real values (`expand_as`) keeps them
            real = {_storage(t) for t in inputs if not self._is_hollow(t)}
            made = [t for t in results if _storage(t) not in real]
            if base is not None:  # written in place (`y[:, :4] = hollow` returns None)
                made.append(base)
            self.hollow.update(_storage(t) for t in made)
            self.stand_ins.extend(StorageWeakRef(t.untyped_storage()) for t in made)
        self.keep.extend(results)

    def changed(self, t: torch.Tensor, after: int, before: int) -> set[int]:
        """Channels of `t` written in place between two events."""
        return set().union(*(ch for when, ch in self.writes.get(id(t), ()) if after < when < before))


def _written(name: str, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The tensor an in-place op writes into (``y += x``, ``y.relu_()``,
    ``F.relu(y, inplace=True)``, ``y[:, :4] = 0``, ``out=y``), else None."""
    if isinstance(kwargs.get("out"), torch.Tensor):
        return kwargs["out"]
    first = args[0] if args else kwargs.get("input")
    in_place = (name in _IN_PLACE or kwargs.get("inplace") is True
                or (name.endswith("_") and not name.startswith("_")))
    return first if in_place and isinstance(first, torch.Tensor) else None


def _channels_written(base: torch.Tensor, target: torch.Tensor, name: str, args: tuple) -> Any:
    """The channels (dim 1) of `base` that an in-place op on `target`, a view of `base`
    or `base` itself, writes: found by laying `target` over a map of channel numbers."""
    if target is base and name not in _IN_PLACE:
        return range(int(base.shape[1]))
    shape = [1] * base.dim()
    shape[1] = -1
    numbers = torch.empty_strided(base.shape, base.stride(), dtype=torch.int32)
    numbers.copy_(torch.arange(base.shape[1], dtype=torch.int32).view(shape).expand(base.shape))
    region = numbers.as_strided(target.shape, target.stride(), target.storage_offset() - base.storage_offset())
    if name == "__setitem__" and _first_tensor(args[1]) is None:  # a tensor index: assume all of it
        region = region[args[1]]
    return set(region.unique().tolist())


# ------------------------------------------------------------------ the hollow pass
#: ops that return zeros of their output's shape in the hollow pass
_STAND_INS = {"conv2d", "linear"}


def _stand_in(name: str, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """Zeros of the shape a 2-D convolution or a linear layer would return, or None to
    compute the op: anything unusual is computed, so that its real error, strides,
    views and autograd state show."""
    if name not in _STAND_INS or len(args) < 2 or kwargs.keys() - {"bias", "stride", "padding", "dilation", "groups"}:
        return None
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    if not (isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor)) or x.dtype not in _FLOATS:
        return None
    if (x.dtype, x.device) != (w.dtype, w.device) or torch.is_autocast_enabled(x.device.type):
        return None
    if bias is not None and not (isinstance(bias, torch.Tensor) and (bias.dtype, bias.device) == (x.dtype, x.device)
                                 and tuple(bias.shape) == (w.shape[0],)):
        return None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w, bias)):
        return None
    if not (_row_major(x) and _row_major(w)):  # channels_last or a view: the real output's strides may differ
        return None
    if name == "linear":  # more dims: the real output may be a view of a 2-D product
        if w.dim() != 2 or x.dim() not in (1, 2) or x.shape[-1] != w.shape[1]:
            return None
        return x.new_zeros((*x.shape[:-1], w.shape[0]))
    if x.dim() != 4 or w.dim() != 4 or x.shape[0] == 0:
        return None
    shape = _conv_shape(x, w, *args[3:], **{k: v for k, v in kwargs.items() if k != "bias"})
    return None if shape is None else x.new_zeros((x.shape[0], *shape))


_FLOATS = {torch.float16, torch.bfloat16, torch.float32, torch.float64}


def _row_major(t: torch.Tensor) -> bool:
    """Laid out row-major, stride for stride (a size-1 dim's stride counts too)."""
    expected, step = [], 1
    for size in reversed(t.shape):
        expected.append(step)
        step *= max(int(size), 1)
    return t.stride() == tuple(reversed(expected)) and int(t.storage_offset()) == 0


def _conv_shape(x: torch.Tensor, w: torch.Tensor, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
                groups: Any = 1) -> tuple[int, ...] | None:
    """A convolution's output shape without the batch, by the formula of the PyTorch
    docs; None where the arguments are not plain (the caller asks the op)."""
    n = w.dim() - 2

    def each(v: Any) -> tuple[int, ...] | None:
        v = (v,) * n if isinstance(v, int) else tuple(v) if isinstance(v, (tuple, list)) else None
        return v if v is not None and len(v) == n and all(type(i) is int for i in v) else None
    s, p, d = each(stride), each(padding), each(dilation)
    if s is None or p is None or d is None or type(groups) is not int or groups < 1 or x.shape[1] != w.shape[1] * groups:
        return None
    if min(s) < 1 or min(p) < 0 or min(d) < 1:
        return None
    sizes = [(size + 2 * pad - dil * (k - 1) - 1) // st + 1
             for size, pad, dil, k, st in zip(x.shape[2:], p, d, w.shape[2:], s)]
    if min(sizes) < 1 or w.shape[0] % groups:
        return None
    return (int(w.shape[0]), *sizes)


#: ops that take several tensor operands: the positional arguments (and keywords) that
#: may hold stand-ins; any other op takes them in its first argument only
_OPERANDS: dict[str, tuple[int, tuple[str, ...]]] = {
    **{n: (3, ()) for n in ("matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "addmm", "baddbmm", "where",
                            "masked_fill", "masked_fill_", "lerp", "lerp_", "addcmul", "addcmul_", "addcdiv",
                            "addcdiv_", "expand_as", "view_as", "reshape_as", "type_as")},
    **{n: (3, ("min", "max")) for n in ("clamp", "clamp_", "clip", "clip_")},
    "__setitem__": (3, ()),  # the index (second) is checked on its own below
    "einsum": (99, ()),
    "scaled_dot_product_attention": (4, ("attn_mask",)),
    "multi_head_attention_forward": (3, ("key_padding_mask", "attn_mask")),
    **{n: (5, ("weight", "bias", "running_mean", "running_var")) for n in (
        "batch_norm", "instance_norm", "layer_norm", "group_norm", "linear", "bilinear", "conv1d", "conv2d",
        "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")},
}
_RUNNING_STATS = {"batch_norm", "instance_norm"}
_DIVISIONS = {"div", "div_", "floor_divide", "floor_divide_", "remainder", "remainder_", "fmod", "fmod_",
              "__floordiv__", "__rfloordiv__", "__ifloordiv__", "__mod__", "__imod__", "__truediv__",
              "__rtruediv__", "__itruediv__", "true_divide", "true_divide_"}
#: ops through which values can be read or written out of the trace's sight
_ESCAPES = {"numpy", "__array__", "__dlpack__", "untyped_storage", "storage", "_typed_storage", "data_ptr",
            "set_", "share_memory_"}


def _operands(name: str, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors an op takes as data or operands (never as a size or an index)."""
    n, keys = _OPERANDS.get(name, (2, ()) if name in _ARITHMETIC else (1, ()))
    if name == "__setitem__":
        chosen = [args[0], *args[2:3]]
    else:
        chosen = [*args[:n], *(kwargs.get(k) for k in keys), *(kwargs.get(k) for k in ("input", "other"))]
    return [t for item in chosen for t in _tensor_list(item)]


def _updates_running_stats(func: Any, name: str, args: tuple, kwargs: dict) -> bool:
    """Whether a batch or instance norm in training mode (use_input_stats) writes running statistics."""
    def arg(i: int, key: str, default: Any) -> Any:
        return args[i] if len(args) > i else kwargs.get(key, default)
    # F.batch_norm(input, running_mean, running_var, weight, bias, training, ...);
    # torch.batch_norm(input, weight, bias, running_mean, running_var, training, ...)
    first = 1 if getattr(func, "__module__", "") == "torch.nn.functional" else 3
    if arg(first, "running_mean", None) is None and arg(first + 1, "running_var", None) is None:
        return False
    return bool(arg(5, "training", False) if name == "batch_norm" else arg(5, "use_input_stats", True))


def _with_inplace(names: str) -> set[str]:
    return {n for name in names.split() for n in (name, name + "_")}


#: elementwise ops whose first two arguments are operands (a one-element tensor there is a value)
_ARITHMETIC = frozenset(_with_inplace("""
    add sub mul div true_divide floor_divide remainder fmod maximum minimum pow eq ne lt le gt ge
    logical_and logical_or
""") | set("""
    __add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ __mul__ __rmul__ __imul__ __truediv__
    __rtruediv__ __itruediv__ __floordiv__ __rfloordiv__ __mod__ __pow__ __rpow__ __ipow__ __eq__
    __ne__ __lt__ __le__ __gt__ __ge__ __and__ __or__ __xor__
""".split()))


#: ops whose result's shape (and every other property the trace reads) depends on
#: the shapes of their inputs and on plain arguments only, never on values
_SHAPE_ONLY = frozenset(_with_inplace("""
    relu relu6 leaky_relu elu selu celu gelu silu mish sigmoid tanh hardtanh hardswish hardsigmoid
    softplus softsign prelu glu logsigmoid threshold exp log log1p sqrt rsqrt square pow abs neg
    reciprocal sign clamp clip clamp_min clamp_max erf sin cos floor ceil round trunc add sub mul div
    true_divide floor_divide remainder fmod maximum minimum lerp addcmul addcdiv masked_fill where
    eq ne lt le gt ge logical_and logical_or logical_not
""") | set("""
    __add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ __mul__ __rmul__ __imul__ __truediv__
    __rtruediv__ __itruediv__ __floordiv__ __rfloordiv__ __mod__ __neg__ __pos__ __abs__ __pow__
    __rpow__ __ipow__ __matmul__ __rmatmul__ __eq__ __ne__ __lt__ __le__ __gt__ __ge__ __and__
    __or__ __xor__ __invert__
    batch_norm layer_norm group_norm instance_norm local_response_norm normalize rms_norm
    max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices avg_pool1d
    avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d
    adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool2d_with_indices lp_pool2d
    conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d linear bilinear matmul mm
    bmm addmm baddbmm einsum scaled_dot_product_attention multi_head_attention_forward softmax
    log_softmax dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout
    view view_as reshape reshape_as flatten unflatten permute transpose swapaxes swapdims t movedim
    contiguous expand expand_as repeat tile unsqueeze squeeze chunk split unbind cat
    concat concatenate stack hstack vstack flip roll narrow select __getitem__ __setitem__ pad
    interpolate pixel_shuffle pixel_unshuffle unfold fold diagonal tril triu
    mean sum amax amin max min std var norm logsumexp prod cumsum argmax argmin topk sort all any
    clone detach detach_ to type type_as float half double bfloat16 cpu cuda requires_grad_
    new_zeros new_ones new_empty new_full zeros_like ones_like empty_like full_like
    __get__ dim size numel nelement ndimension __len__ __iter__
""".split()))


# Ops that keep every channel where it was (elementwise or per channel): a module that
# returns relu(cat(...)) still has the cat's channel provenance, each label marked `+`.
_CHANNELWISE = {
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "gelu", "silu", "mish",
    "sigmoid", "tanh", "hardtanh", "hardtanh_", "hardswish", "hardsigmoid", "softplus",
    "batch_norm", "dropout", "clone", "contiguous", "detach",
}
# ... of which these keep the values too (dropout: the trace runs in eval mode)
_KEEPS_VALUES = {"dropout", "clone", "contiguous", "detach"}


def _channel_base(t: torch.Tensor, mode: _Mode, inputs: set[int],
                  end: int) -> tuple[torch.Tensor, int, bool]:
    """The tensor whose channels `t` carries in place, through channel-wise ops made
    after the module's input (`inputs`: the ids of its arguments); when the first of
    those ops read it (`end` if none); whether they change values."""
    changes = False
    for _ in range(64):
        if id(t) in mode.cats or id(t) in inputs or id(t) not in mode.ops:
            break
        name, args = mode.ops[id(t)]
        if name not in _CHANNELWISE or len(args) != 1 or args[0].shape != t.shape:
            break
        end, changes = mode.born[id(t)], changes or name not in _KEEPS_VALUES
        t = args[0]
    return t, end, changes


@dataclass
class _Made:
    """One module call that returned a given tensor object."""

    module: str
    index: int
    end: int


def _describe(t: torch.Tensor, call: Call, inputs: set[int], mode: _Mode,
              producers: dict[int, list[_Made]], counts: dict[str, int], before: int,
              depth: int = 0) -> list[tuple[str, int]]:
    """Label the channels of `t`, as it was at event `before`, relative to the call of
    a module: (label, channels) runs.

    A label names the descendant of the module whose recorded output the channels
    equal: the last one to return that tensor (``expand1x1_activation``, the in-place
    ReLU applied to ``expand1x1``'s output), relative to the module (``denselayer3``,
    ``branch2``, ``0.branch_a`` inside a Sequential), indexed ``name:k`` when that
    module runs several times per forward; ``input`` for channels passed through from
    the module's input; ``op(label)`` for a functional op applied to one of those;
    ``other`` when nothing is known. ``+`` is appended to the labels of channels
    changed in place after that, before `before` (``y += x`` after a concatenation).
    """
    owner = call.module
    channels = int(t.shape[1])
    prefix = owner + "." if owner else ""
    made = [p for p in producers.get(id(t), [])
            if p.module.startswith(prefix) and p.module != owner and call.start < p.end < before]
    if depth < 256 and id(t) in mode.cats and (made or id(t) not in inputs):
        # a concatenation, made here or by a descendant: label each part
        born = mode.born[id(t)]
        runs: list[tuple[str, int]] = []
        for part in mode.cats[id(t)]:
            runs.extend(_describe(part, call, inputs, mode, producers, counts, born, depth + 1))
        return _mark(runs, mode.changed(t, born, before))
    if made:
        best = made[-1]  # in the order they returned
        label = best.module[len(prefix):]
        if counts.get(best.module, 1) > 1:
            label += f":{best.index}"
        return _mark([(label, channels)], mode.changed(t, best.end, before))
    if id(t) in inputs:
        return _mark([("input", channels)], mode.changed(t, call.start, before))
    if depth < 256 and id(t) in mode.ops:
        name, args = mode.ops[id(t)]
        if len(args) == 1:
            born = mode.born[id(t)]
            inner = _describe(args[0], call, inputs, mode, producers, counts, born, depth + 1)
            if len(inner) == 1:
                return _mark([(f"{name}({inner[0][0]})", channels)], mode.changed(t, born, before))
    return [("other", channels)]


def _mark(runs: list[tuple[str, int]], changed: Any) -> list[tuple[str, int]]:
    """Append ``+`` to the labels of the channels in `changed` (a set or range)."""
    if not changed:
        return runs
    labels = [label for label, n in runs for _ in range(n)]
    return _merge([(lab + "+" if i in changed and not lab.endswith("+") else lab, 1)
                   for i, lab in enumerate(labels)])


def _merge(runs: list[tuple[str, int]]) -> list[tuple[str, int]]:
    merged: list[tuple[str, int]] = []
    for label, n in runs:
        if merged and merged[-1][0] == label:
            merged[-1] = (label, merged[-1][1] + n)
        else:
            merged.append((label, n))
    return merged


def trace_model(model: nn.Module, example: torch.Tensor) -> Trace:
    """Run `example` (a batch, usually of one) through `model` and map every call.

    The model is put in eval mode for the pass and its training flag restored. The
    pass is hollow where that is sound, else real (see the module's docstring); both
    give the same trace.

    The trace is cached per model object and input shape, dtype and device, and
    reused only while the model's anatomy is what it was: the same module objects
    under the same names, each with the same type, plain settings (stride, padding,
    ``inplace``, ``transform_input``, ...), parameter and buffer shapes, hooks and
    forward method. Any change there traces again.
    """
    key = (tuple(example.shape), example.dtype, str(example.device))
    anatomy = _anatomy(model)
    per_model = _CACHE.get(model)
    if per_model is not None and key in per_model and per_model[key][0] == anatomy:
        return per_model[key][1]
    trace = None
    if _may_run_hollow(model):
        rng = _rng_state()
        try:
            trace = _trace(model, example, hollow=True)
        except _NeedsValues:
            _set_rng_state(rng)  # the real pass draws what one pass draws
    if trace is None:
        trace = _trace(model, example)
    _CACHE.setdefault(model, {})[key] = (anatomy, trace)
    return trace


def _may_run_hollow(model: nn.Module) -> bool:
    """Not where a hook could keep what it sees (it would keep stand-in values), nor
    where the user asked for real passes (``UNITREC_TRACE=real``)."""
    if os.environ.get("UNITREC_TRACE", "").lower() == "real":
        return False
    from torch.nn.modules import module as M

    if M._global_forward_hooks or M._global_forward_pre_hooks:
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


#: model -> {(input shape, dtype, device): (anatomy, trace)}; entries go with the model
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[tuple, Trace]]] = weakref.WeakKeyDictionary()
_PLAIN = (bool, int, float, str, type(None))


def _plain(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def _anatomy(model: nn.Module) -> tuple:
    """What a trace depends on, for every module, comparable with ``==``."""
    parts: list[tuple] = []
    for name, m in model.named_modules():
        parts.append((
            name, id(m), type(m),
            tuple((k, v) for k, v in vars(m).items() if not k.startswith("_") and _plain(v)),
            tuple((k, tuple(t.shape), t.dtype) for k, t in m._parameters.items() if t is not None),
            tuple((k, tuple(t.shape), t.dtype) for k, t in m._buffers.items() if t is not None),
            tuple(m._forward_hooks), tuple(m._forward_pre_hooks), m.__dict__.get("forward"),
        ))
    return tuple(parts)


def _trace(model: nn.Module, example: torch.Tensor, hollow: bool = False) -> Trace:
    """The trace of one pass; hollow, it raises :class:`_NeedsValues` where values
    could matter, and where the pass fails (the real pass then shows the error),
    having put back the tensors the model held."""
    if not hollow:
        return _pass(model, example, None)[0]
    state = _ModelState(model, example)
    try:
        trace, stand_ins = _pass(model, example, state)
    except _NeedsValues:
        state.restore()
        raise
    # the pass has let go of its tensors: a stand-in still alive is kept elsewhere
    if not all(ref.expired() for ref in stand_ins):
        state.restore()
        raise _NeedsValues("stand-in values outlived the pass (kept by the model, a hook or a global)")
    return trace


@torch.no_grad()
def _pass(model: nn.Module, example: torch.Tensor,
          state: _ModelState | None) -> tuple[Trace, list[StorageWeakRef]]:
    """One traced forward pass, hollow where `state` (the model's tensors before it) is given."""
    hollow = state is not None
    keep: list[Any] = [example]
    producers: dict[int, list[_Made]] = {}
    calls: list[Call] = []
    counts: dict[str, int] = {}
    open_calls: dict[str, list[tuple[int, torch.Tensor | None, Field | None, set[int]]]] = {}
    concatenating: list[tuple[Call, torch.Tensor, set[int]]] = []
    fed_a_cat: list[tuple[Call, torch.Tensor]] = []  # calls whose input is a concatenation
    patch_calls: list[tuple[str, tuple[int, ...], Field]] = []  # convolutions with kernel = stride
    token_shapes: list[tuple[int, ...]] = []  # (batch, tokens, channels) outputs
    inputs_of: dict[tuple[str, int], set[int]] = {}
    events = [0]
    mode = _Mode(keep, events, hollow=set() if hollow else None,
                 kept=[example, *model.parameters(), *model.buffers()])
    mode.fields[id(example)] = image_field()

    def pre(name: str):
        def hook(module, args):
            x = _first_tensor(args)
            events[0] += 1
            fld = _layout_field(mode, x)
            open_calls.setdefault(name, []).append(
                (events[0], x, fld, {id(t) for t in _tensors(args)})
            )
        return hook

    def post(name: str):
        def hook(module, args, output):
            start, x, in_field, input_ids = open_calls[name].pop()
            events[0] += 1
            index = counts.get(name, 0)
            counts[name] = index + 1
            # a tuple (MultiheadAttention's (output, weights)) is recorded as its first tensor
            y = output if isinstance(output, torch.Tensor) else _first_tensor(output)
            call = Call(
                module=name, index=index, type=type(module).__name__, start=start, end=events[0],
                input_shape=tuple(x.shape) if x is not None else None,
                output_shape=tuple(y.shape) if y is not None else None,
                input_field=in_field,
                output_field=_layout_field(mode, y),
            )
            if y is not None:
                keep.append(y)
                if y.dim() >= 2 and id(_channel_base(y, mode, input_ids, call.end)[0]) in mode.cats:
                    concatenating.append((call, y, input_ids))
                producers.setdefault(id(y), []).append(_Made(name, index, events[0]))
            calls.append(call)
            inputs_of[(name, index)] = input_ids
            if y is not None and y.dim() == 3:
                token_shapes.append(tuple(y.shape))
            elif (isinstance(module, nn.Conv2d) and module.kernel_size == module.stride
                  and module.kernel_size != (1, 1) and call.output_field is not None):
                patch_calls.append((name, tuple(y.shape), call.output_field))
            if x is not None and x.dim() >= 2 and id(x) in mode.cats and id(x) not in producers:
                fed_a_cat.append((call, x))  # a concatenation no module returned (else: its sources)
        return hook

    handles = []
    training = model.training
    try:
        for name, module in model.named_modules():
            if not name:
                continue
            handles.append(module.register_forward_pre_hook(pre(name)))
            handles.append(module.register_forward_hook(post(name)))
        model.eval()
        with mode:
            model(example)
        if mode.needs_values is None and state is not None and state.changed():
            mode.needs_values = "the pass left tensors in the model"
    except Exception as exc:
        if hollow:
            mode.needs_values = f"the hollow pass failed: {exc}"
        else:
            raise
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    if mode.needs_values is not None:  # also where the model caught _NeedsValues and carried on
        raise _NeedsValues(mode.needs_values)
    # labelled once the pass is over, when every module's call count is known
    for call, y, input_ids in concatenating:
        base, read, changes = _channel_base(y, mode, input_ids, call.end)
        runs = _describe(base, call, input_ids, mode, producers, counts, read)
        if base is not y:  # channel-wise ops after the concatenation: relu, batch_norm, clone
            runs = _mark(runs, range(int(y.shape[1])) if changes
                         else mode.changed(y, mode.born[id(y)], call.end))
        runs = _merge(runs)
        if len(runs) > 1:
            call.sources = runs
    for call, x in fed_a_cat:
        parent = _parent_call(call, calls, example)
        ids = inputs_of.get((parent.module, parent.index), {id(example)})
        runs = _merge(_describe(x, parent, ids, mode, producers, counts, call.start))
        if len(runs) > 1:
            call.input_sources = runs
    trace = Trace(calls=calls, counts=counts, input_shape=tuple(example.shape[1:]),
                  tokens=find_grid(model, patch_calls, token_shapes) if token_shapes else None)
    return trace, mode.stand_ins


class _ModelState:
    """What a model holds (parameters, buffers, tensor attributes) and the example, to
    see whether a hollow pass changed any of it and to put it back before the real
    pass: a tensor replaced (``self.avg = 0.9 * self.avg + ...``, ``self.last = y``),
    given new storage (``p.data = ...``) or, buffers and the example, written by an op
    the trace could not see (they are copied first to that end). Stand-ins kept anywhere
    else, in a list, a deque or a global, are found as storages still alive when the
    pass lets go of its own."""

    #: larger buffers are not copied: such a model is traced for real
    LIMIT = 64 << 20

    def __init__(self, model: nn.Module, example: torch.Tensor) -> None:
        self.held = [(m, _held(m)) for m in model.modules()]
        buffers = {id(t): t for t in [example, *model.buffers()]}
        params = {id(p): p for p in model.parameters()}
        if sum(t.numel() * t.element_size() for t in buffers.values()) > self.LIMIT:
            raise _NeedsValues("buffers too large to set aside")
        self.tensors = [(t, _storage(t), t.detach(), t.detach().clone() if i in buffers else None)
                        for i, t in {**params, **buffers}.items()]

    def changed(self) -> bool:
        """Whether a tensor was replaced or given new storage. (A write the trace did not
        see is one real pass's write, unless the pass gives up: then it is undone.)"""
        for m, before in self.held:
            now = _held(m)
            if now.keys() != before.keys() or any(now[k] is not before[k] for k in now):
                return True
        return any(_storage(t) != ptr for t, ptr, _, _ in self.tensors)

    def restore(self) -> None:
        for m, before in self.held:
            now = _held(m)
            for (where, key), value in now.items():
                if (where, key) not in before:
                    (m._parameters if where == "p" else m._buffers if where == "b" else m.__dict__).pop(key, None)
            for (where, key), value in before.items():
                (m._parameters if where == "p" else m._buffers if where == "b" else m.__dict__)[key] = value
        with torch.no_grad():
            for t, ptr, alias, copy in self.tensors:
                if _storage(t) != ptr:  # `p.data = ...`
                    t.data = alias
                if copy is not None and not torch.equal(t, copy):  # a write the trace did not see
                    t.copy_(copy)


def _held(m: nn.Module) -> dict[tuple[str, str], Any]:
    return {**{("p", k): v for k, v in m._parameters.items()}, **{("b", k): v for k, v in m._buffers.items()},
            **{("a", k): v for k, v in vars(m).items() if isinstance(v, torch.Tensor)}}


def _layout_field(mode: _Mode, t: torch.Tensor | None) -> Field | None:
    """A tensor's field where its layout is (…, channel, y, x), as sites describe it."""
    fld = mode.fields.get(id(t)) if t is not None else None
    return fld if fld is not None and fld.axes == (-2, -1) else None


def _parent_call(call: Call, calls: list[Call], example: torch.Tensor) -> Call:
    """The call of the module's parent that was running when `call` started (the model
    itself, as a call from event 0, for a top-level module)."""
    parent = call.module.rpartition(".")[0]
    for other in calls:
        if other.module == parent and other.start < call.start < other.end:
            return other
    return Call(module="", index=0, type="", start=0, end=call.end + 1, input_shape=tuple(example.shape),
                output_shape=None)
