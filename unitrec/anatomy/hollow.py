"""The hollow pass: what the dry trace may run on stand-in values, and what it puts back.

The trace (trace.py) needs shapes, not values. So it first runs *hollow*: plain 2-D
convolutions and linear layers return zeros of the shape they would compute
(:func:`stand_in`), and the trace follows every storage holding such stand-ins. This
module says when that is sound: the ops whose results depend on shapes and plain
arguments only (:data:`SHAPE_ONLY`), the arguments an op takes as data rather than as
a size or an index (:func:`operands`), the writes the trace cannot follow
(:data:`ESCAPES`, :func:`updates_running_stats`), and the model's state to put back
when the pass gives up (:class:`ModelState`). docs/design.md, "Data flow", lists every
case in which the trace gives up; tests/anatomy/test_setup_cache.py tests each one.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

__all__ = ["ARITHMETIC", "DIVISIONS", "ESCAPES", "RUNNING_STATS", "SHAPE_ONLY", "STAND_INS", "ModelState",
           "NeedsValues", "all_tensors", "conv_shape", "may_run_hollow", "operands", "rng_state", "set_rng_state",
           "stand_in", "storage", "tensor_list", "updates_running_stats"]


class NeedsValues(BaseException):
    """The hollow pass met an op whose result could depend on values.

    A BaseException, so that a model's own ``except Exception`` cannot swallow it
    (the mode also remembers it, in case a bare ``except`` does)."""


def tensor_list(obj: Any, out: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The tensors in `obj` (nested in lists, tuples and dicts), in order."""
    out = [] if out is None else out
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple, dict)):
        for item in obj.values() if isinstance(obj, dict) else obj:
            if isinstance(item, torch.Tensor):
                out.append(item)
            elif isinstance(item, (list, tuple, dict)):
                tensor_list(item, out)
    return out


def all_tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in `obj`, slice bounds included (``y[:, :k]``)."""
    if isinstance(obj, slice):
        return tensor_list([obj.start, obj.stop, obj.step])
    if isinstance(obj, (list, tuple, dict)):
        items = obj.values() if isinstance(obj, dict) else obj
        return [t for item in items for t in all_tensors(item)]
    return [obj] if isinstance(obj, torch.Tensor) else []


def storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


#: ops that return zeros of their output's shape in the hollow pass
STAND_INS = {"conv2d", "linear"}


def stand_in(name: str, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """Zeros of the shape a 2-D convolution or a linear layer would return, or None to
    compute the op: anything unusual is computed, so that its real error, strides,
    views and autograd state show."""
    if name not in STAND_INS or len(args) < 2 or kwargs.keys() - {"bias", "stride", "padding", "dilation", "groups"}:
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
    shape = conv_shape(x, w, *args[3:], **{k: v for k, v in kwargs.items() if k != "bias"})
    return None if shape is None else x.new_zeros((x.shape[0], *shape))


_FLOATS = {torch.float16, torch.bfloat16, torch.float32, torch.float64}


def _row_major(t: torch.Tensor) -> bool:
    """Laid out row-major, stride for stride (a size-1 dim's stride counts too)."""
    expected, step = [], 1
    for size in reversed(t.shape):
        expected.append(step)
        step *= max(int(size), 1)
    return t.stride() == tuple(reversed(expected)) and int(t.storage_offset()) == 0


def conv_shape(x: torch.Tensor, w: torch.Tensor, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
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
RUNNING_STATS = {"batch_norm", "instance_norm"}
DIVISIONS = {"div", "div_", "floor_divide", "floor_divide_", "remainder", "remainder_", "fmod", "fmod_",
              "__floordiv__", "__rfloordiv__", "__ifloordiv__", "__mod__", "__imod__", "__truediv__",
              "__rtruediv__", "__itruediv__", "true_divide", "true_divide_"}
#: ops through which values can be read or written out of the trace's sight
ESCAPES = {"numpy", "__array__", "__dlpack__", "untyped_storage", "storage", "_typed_storage", "data_ptr",
            "set_", "share_memory_"}


def operands(name: str, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors an op takes as data or operands (never as a size or an index)."""
    n, keys = _OPERANDS.get(name, (2, ()) if name in ARITHMETIC else (1, ()))
    if name == "__setitem__":
        chosen = [args[0], *args[2:3]]
    else:
        chosen = [*args[:n], *(kwargs.get(k) for k in keys), *(kwargs.get(k) for k in ("input", "other"))]
    return [t for item in chosen for t in tensor_list(item)]


def updates_running_stats(func: Any, name: str, args: tuple, kwargs: dict) -> bool:
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
ARITHMETIC = frozenset(_with_inplace("""
    add sub mul div true_divide floor_divide remainder fmod maximum minimum pow eq ne lt le gt ge
    logical_and logical_or
""") | set("""
    __add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ __mul__ __rmul__ __imul__ __truediv__
    __rtruediv__ __itruediv__ __floordiv__ __rfloordiv__ __mod__ __pow__ __rpow__ __ipow__ __eq__
    __ne__ __lt__ __le__ __gt__ __ge__ __and__ __or__ __xor__
""".split()))


#: ops whose result's shape (and every other property the trace reads) depends on
#: the shapes of their inputs and on plain arguments only, never on values
SHAPE_ONLY = ARITHMETIC | frozenset(_with_inplace("""
    relu relu6 leaky_relu elu selu celu gelu silu mish sigmoid tanh hardtanh hardswish hardsigmoid
    softplus softsign prelu glu logsigmoid threshold exp log log1p sqrt rsqrt square abs neg
    reciprocal sign clamp clip clamp_min clamp_max erf sin cos floor ceil round trunc lerp addcmul
    addcdiv masked_fill where logical_not
""") | set("""
    __neg__ __pos__ __abs__ __matmul__ __rmatmul__ __invert__
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
    __get__ __iter__
""".split()))
# (dim, size, numel and the other shape queries never get here: the trace answers them first)


def may_run_hollow(model: nn.Module) -> bool:
    """Not where a hook could keep what it sees (it would keep stand-in values), nor
    where the user asked for real passes (``UNITREC_TRACE=real``)."""
    if os.environ.get("UNITREC_TRACE", "").lower() == "real":
        return False
    from torch.nn.modules import module as M

    if M._global_forward_hooks or M._global_forward_pre_hooks:
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None


def set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


class ModelState:
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
            raise NeedsValues("buffers too large to set aside")
        self.tensors = [(t, storage(t), t.detach(), t.detach().clone() if i in buffers else None)
                        for i, t in {**params, **buffers}.items()]

    def changed(self) -> bool:
        """Whether a tensor was replaced or given new storage. (A write the trace did not
        see is one real pass's write, unless the pass gives up: then it is undone.)"""
        for m, before in self.held:
            now = _held(m)
            if now.keys() != before.keys() or any(now[k] is not before[k] for k in now):
                return True
        return any(storage(t) != ptr for t, ptr, _, _ in self.tensors)

    def restore(self) -> None:
        for m, before in self.held:
            for where, key in _held(m).keys() - before.keys():
                _place(m, where).pop(key, None)
            for (where, key), value in before.items():
                _place(m, where)[key] = value
        with torch.no_grad():
            for t, ptr, alias, copy in self.tensors:
                if storage(t) != ptr:  # `p.data = ...`
                    t.data = alias
                if copy is not None and not torch.equal(t, copy):  # a write the trace did not see
                    t.copy_(copy)


def _place(m: nn.Module, where: str) -> dict[str, Any]:
    return m._parameters if where == "p" else m._buffers if where == "b" else m.__dict__


def _held(m: nn.Module) -> dict[tuple[str, str], Any]:
    return {**{("p", k): v for k, v in m._parameters.items()}, **{("b", k): v for k, v in m._buffers.items()},
            **{("a", k): v for k, v in vars(m).items() if isinstance(v, torch.Tensor)}}
