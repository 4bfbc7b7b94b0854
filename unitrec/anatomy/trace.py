"""One dry forward pass that maps a model's anatomy.

The trace runs a single input through the model with a forward (pre-)hook on every
module and a TorchFunctionMode that sees every torch function. It is cached per
model and input shape while the model's anatomy stays the same.

The trace needs shapes, not values, so it first runs *hollow*: plain 2-D convolutions
and linear layers return zeros of their shape, and the pass gives way to a real one
wherever a value could steer it or outlast it (hollow.py says when). From the trace we
learn,
for every call of every module: the order of calls, input and output shapes, the
theoretical receptive field of the output, and — for outputs that are a channel
concatenation — which child produced each channel and which channels were changed
after the concatenation. Nothing here is specific to a model family: a user's own
network that concatenates its children is mapped the same way as a DenseNet block.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode

from unitrec.anatomy.fingerprint import anatomy_of
from unitrec.anatomy.hollow import (DIVISIONS, ESCAPES, RUNNING_STATS, SHAPE_ONLY, STAND_INS, ModelState, NeedsValues,
                     all_tensors, may_run_hollow, operands, rng_state, set_rng_state, stand_in, storage,
                     tensor_list, updates_running_stats)
from unitrec.anatomy.receptive_field import Field, image_field, propagate
from unitrec.anatomy.tokens import TokenGrid, find_grid

__all__ = ["Call", "Trace", "first_tensor", "trace_model"]

_CAT = {"cat", "concat", "concatenate"}
_SHAPE_QUERIES = {"dim", "size", "numel", "nelement", "ndimension", "__len__"}
_PROPERTIES = {"shape", "dtype", "device", "ndim", "layout", "is_cuda", "requires_grad"}
# in-place ops not named `*_`: `y[:, :4] = 0`, and the operators (`y ^= m`; `y += x` may
# reach the mode as `add_` instead)
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
    batch: int = 1  # the traced batch's size: every call's shapes include it

    def find(self, module: str, index: int) -> Call:
        for call in self.calls:
            if call.module == module and call.index == index:
                return call
        raise KeyError((module, index))


def first_tensor(obj: Any) -> torch.Tensor | None:
    found = tensor_list(obj)
    return found[0] if found else None


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
        self.kept_storage = {storage(t) for t in kept if t.numel()} if hollow is not None else set()
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
        inputs = tensor_list((args, kwargs))
        out = None
        if self.hollow is not None:
            self._check_hollow(func, name, args, kwargs, inputs, base)
            out = stand_in(name, args, kwargs)
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
        for result in tensor_list(out):
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
        return t.numel() > 0 and storage(t) in self.hollow

    def _check_hollow(self, func: Any, name: str, args: tuple, kwargs: dict, inputs: list[torch.Tensor],
                      base: torch.Tensor | None) -> None:
        """Give up the hollow pass, before the op runs, where values could steer it or outlast it."""
        every = all_tensors((args, kwargs))  # slice bounds too
        if any(id(t) not in self.known and (t._base is None or id(t._base) not in self.known) for t in every):
            self._give_up(f"{name} got a tensor made outside the trace")
        if base is not None and (id(base) in self.kept or storage(base) in self.kept_storage):
            # a buffer updated in forward, an input changed in place: a real pass does it once
            self._give_up(f"{name} writes into the model's tensors or its input")
        if (name in ESCAPES or name.startswith("_foreach") or isinstance(kwargs.get("out"), (tuple, list))
                or getattr(getattr(func, "_schema", None), "is_mutable", False) and base is None
                or name in RUNNING_STATS and updates_running_stats(func, name, args, kwargs)):
            # writes the trace cannot follow: through numpy or a storage, several outputs, running statistics
            self._give_up(f"{name} may write where the trace cannot follow")
        hollow = [t for t in every if self._is_hollow(t)]
        if not hollow:
            return
        if name not in SHAPE_ONLY:
            self._give_up(f"{name} may read values")
        # anywhere but the data and an op's tensor operands, a tensor may be read as a
        # size, a slice bound or an index (`y[:, :k]`, `view(k, -1)`, `adaptive_avg_pool2d(x, t)`)
        data = operands(name, args, kwargs)
        if any(not any(t is o for o in data) for t in hollow):
            self._give_up(f"{name} may take a size or an index from values")
        if name in DIVISIONS and any(not t.is_floating_point() for t in hollow):
            self._give_up(f"{name} of integers may divide by zero for real")
        if name == "where" and len(args) + len(kwargs) < 3:
            self._give_up("where(condition) has a shape that depends on values")

    def _give_up(self, why: str) -> None:
        self.needs_values = why
        raise NeedsValues(why)

    def _follow_hollow(self, name: str, out: Any, inputs: list[torch.Tensor], base: torch.Tensor | None) -> None:
        assert self.hollow is not None
        results = tensor_list(out)
        self.known.update(id(t) for t in results)
        if name in STAND_INS or any(self._is_hollow(t) for t in inputs):
            # a result that is a view of an input with real values (`expand_as`) keeps them
            real = {storage(t) for t in inputs if not self._is_hollow(t)}
            made = [t for t in results if storage(t) not in real]
            if base is not None:  # written in place (`y[:, :4] = hollow` returns None)
                made.append(base)
            self.hollow.update(storage(t) for t in made)
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
    if name == "__setitem__" and first_tensor(args[1]) is None:  # a tensor index: assume all of it
        region = region[args[1]]
    return set(region.unique().tolist())


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
    under the same names, each with the same parameter and buffer shapes and the same
    anatomy (see :mod:`unitrec.anatomy.fingerprint`: type, plain settings such as stride,
    ``inplace``, ``transform_input`` or a dict that steers ``forward``, hooks, the
    instance's and the class's ``forward``). Any change there traces again.
    """
    key = (tuple(example.shape), example.dtype, str(example.device))
    anatomy = _anatomy(model)
    per_model = _CACHE.get(model)
    if per_model is not None and key in per_model and per_model[key][0] == anatomy:
        return per_model[key][1]
    trace = None
    if may_run_hollow(model):
        rng = rng_state()
        try:
            trace = _trace(model, example, hollow=True)
        except NeedsValues:
            set_rng_state(rng)  # the real pass draws what one pass draws
    if trace is None:
        trace = _trace(model, example)
    _CACHE.setdefault(model, {})[key] = (anatomy, trace)
    return trace


#: model -> {(input shape, dtype, device): (anatomy, trace)}; entries go with the model
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[tuple, Trace]]] = weakref.WeakKeyDictionary()


def _anatomy(model: nn.Module) -> tuple:
    """What a trace depends on, comparable with ``==``: which module objects sit under
    which names, their parameter and buffer shapes, and the anatomy the run key holds
    (types, plain settings read afresh, dicts included, hooks, forward code)."""
    objects = tuple((name, id(m),
                     tuple((k, tuple(t.shape), t.dtype) for k, t in m._parameters.items() if t is not None),
                     tuple((k, tuple(t.shape), t.dtype) for k, t in m._buffers.items() if t is not None))
                    for name, m in model.named_modules())
    return objects, anatomy_of(model).text


def _trace(model: nn.Module, example: torch.Tensor, hollow: bool = False) -> Trace:
    """The trace of one pass; hollow, it raises :class:`NeedsValues` where values
    could matter, and where the pass fails (the real pass then shows the error),
    having put back the tensors the model held."""
    if not hollow:
        return _pass(model, example, None)[0]
    state = ModelState(model, example)
    try:
        trace, stand_ins = _pass(model, example, state)
    except NeedsValues:
        state.restore()
        raise
    # the pass has let go of its tensors: a stand-in still alive is kept elsewhere
    if not all(ref.expired() for ref in stand_ins):
        state.restore()
        raise NeedsValues("stand-in values outlived the pass (kept by the model, a hook or a global)")
    return trace


@torch.no_grad()
def _pass(model: nn.Module, example: torch.Tensor,
          state: ModelState | None) -> tuple[Trace, list[StorageWeakRef]]:
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
            x = first_tensor(args)
            events[0] += 1
            fld = _layout_field(mode, x)
            open_calls.setdefault(name, []).append(
                (events[0], x, fld, {id(t) for t in tensor_list(args)})
            )
        return hook

    def post(name: str):
        def hook(module, args, output):
            start, x, in_field, input_ids = open_calls[name].pop()
            events[0] += 1
            index = counts.get(name, 0)
            counts[name] = index + 1
            # a tuple (MultiheadAttention's (output, weights)) is recorded as its first tensor
            y = output if isinstance(output, torch.Tensor) else first_tensor(output)
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
    if mode.needs_values is not None:  # also where the model caught NeedsValues and carried on
        raise NeedsValues(mode.needs_values)
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
                  tokens=find_grid(model, patch_calls, token_shapes) if token_shapes else None,
                  batch=int(example.shape[0]))
    return trace, mode.stand_ins


def _layout_field(mode: _Mode, t: torch.Tensor | None) -> Field | None:
    """A tensor's field, where its rows and columns are dims after the batch: ``axes``
    says which (``(-2, -1)`` for (…, channel, y, x), ``(-3, -2)`` for channel-last)."""
    if t is None:
        return None
    fld = mode.fields.get(id(t))
    return fld if fld is not None and -t.dim() < fld.axes[0] < fld.axes[1] < 0 else None


def _parent_call(call: Call, calls: list[Call], example: torch.Tensor) -> Call:
    """The call of the module's parent that was running when `call` started (the model
    itself, as a call from event 0, for a top-level module)."""
    parent = call.module.rpartition(".")[0]
    for other in calls:
        if other.module == parent and other.start < call.start < other.end:
            return other
    return Call(module="", index=0, type="", start=0, end=call.end + 1, input_shape=tuple(example.shape),
                output_shape=None)
