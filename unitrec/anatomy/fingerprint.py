"""What a model computes beyond its weights: module types, settings, hooks and forward code.

Two models with the same state_dict can compute different functions: a stride, a
BatchNorm ``eps`` or a LeakyReLU slope set otherwise, an activation swapped for
another type, a forward hook, a patched ``forward``, a non-persistent buffer (not in
the state_dict), googlenet's ``transform_input``. The *anatomy* is a description of
each module that holds all of these, comparable across processes (no object ids),
and its SHA-256 goes into a recording's run key beside the weights' hash, so that a
resume or a shard of a model changed this way is refused, naming the module.

Per module (by its ``named_modules()`` name):

- ``type``: the class, ``module.qualname``;
- ``settings``: every public attribute that is a plain value (numbers, strings,
  tuples, lists, dicts and sets of them; enums and dtypes by name; tensors that are
  neither parameters nor buffers by their bytes' hash; functions by their code);
- ``forward``: the class's ``forward`` (and an instance's own ``forward``) by
  qualified name, plus a hash of its source for code outside torch, torchvision and
  timm, whose code the recorded library versions identify;
- ``hooks``: forward and forward-pre hooks, by code (and the plain values they close
  over), in order; hooks registered on every module (``register_module_forward_hook``)
  are listed under the model itself;
- ``nonpersistent``: the SHA-256 of each buffer left out of the state_dict.

Not covered, and said so in the user guide (long runs): code that a forward calls beyond its own
body (a helper function, a global variable, an environment variable), the library
versions themselves (recorded in every file, not compared), and values the model
draws at random in its forward.
"""

from __future__ import annotations

import base64
import enum
import functools
import hashlib
import inspect
import json
import sys
import types
import zlib
from typing import Any

import torch
from torch import nn

__all__ = ["Anatomy", "anatomy_of", "code_identity", "explain", "pack", "recent", "unpack"]

# classes of these packages are identified by the library versions every file records
_LIBRARIES = ("torch.", "torchvision.", "timm.")
_IGNORED = {"training"}  # record() puts the model in eval mode itself
_SHOWN = 3  # differing modules named in a message


class Anatomy:
    """The anatomy of one model: per module, a mapping of what it is (see the module doc).

    ``digest`` goes into the run key; ``packed()`` into the file, so that a refusal can
    name the modules that differ.
    """

    def __init__(self, modules: dict[str, dict[str, Any]]) -> None:
        self.modules = modules
        self.text = json.dumps(modules, sort_keys=True, separators=(",", ":"))
        self.digest = hashlib.sha256(self.text.encode()).hexdigest()
        _RECENT[self.digest] = modules
        while len(_RECENT) > 8:
            _RECENT.pop(next(iter(_RECENT)))

    def packed(self) -> str:
        return pack(self.modules)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Anatomy) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"<Anatomy of {len(self.modules)} modules, sha256 {self.digest[:12]}>"


#: digest -> per-module description of the anatomies described lately, so that a refusal
#: that meets only the digest in a run key can still name the modules
_RECENT: dict[str, dict[str, dict[str, Any]]] = {}


def recent(digest: str | None) -> dict[str, dict[str, Any]] | None:
    """The description behind a digest this process computed lately (None if unknown)."""
    return _RECENT.get(digest) if digest else None


def anatomy_of(model: nn.Module) -> Anatomy:
    """Describe every module of `model` (see the module docstring)."""
    modules: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        entry: dict[str, Any] = {"type": _qualname(type(m))}
        settings = {k: _canonical(v) for k, v in vars(m).items()
                    if k not in _internals() and not k.startswith(("unitrec_", "_unitrec")) and k not in _IGNORED}
        settings = {k: v for k, v in settings.items() if v is not _SKIP}
        settings.update(_class_settings(type(m)))
        if settings:
            entry["settings"] = settings
        forward = _forward_of(m)
        if forward:
            entry["forward"] = forward
        hooks = [code_identity(h) for h in m._forward_pre_hooks.values()]
        hooks += [code_identity(h) for h in m._forward_hooks.values()]
        if hooks:
            entry["hooks"] = hooks
        hidden = {k: _tensor_digest(t) for k, t in m._buffers.items()
                  if t is not None and k in m._non_persistent_buffers_set}
        if hidden:
            entry["nonpersistent"] = hidden
        modules[name] = entry
    from torch.nn.modules import module as _module

    global_hooks = [code_identity(h) for h in (*_module._global_forward_pre_hooks.values(),
                                                *_module._global_forward_hooks.values())]
    if global_hooks:
        modules.setdefault("", {})["global_hooks"] = global_hooks
    return Anatomy(modules)


@functools.lru_cache(maxsize=1)
def _internals() -> frozenset[str]:
    """The attributes every nn.Module has (its parameter, buffer, hook dicts ...): not settings."""
    return frozenset(vars(nn.Module())) | {"_is_full_backward_hook", "_compiled_call_impl", "_version"}


def _class_settings(cls: type) -> dict[str, Any]:
    """Plain class attributes of a user's classes (``Block.gain = 3`` changes every instance)."""
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or klass.__module__.startswith(_LIBRARIES) or klass.__module__ == "builtins":
            continue
        for k, v in vars(klass).items():
            if k.startswith("__") or isinstance(v, (types.FunctionType, staticmethod, classmethod, property)):
                continue
            value = _canonical(v)
            if value is not _SKIP:
                out[f"class {k}"] = value
    return out


def pack(modules: dict[str, dict[str, Any]]) -> str:
    """The per-module description as a short ASCII attribute (zlib + base64 of its JSON)."""
    text = json.dumps(modules, sort_keys=True, separators=(",", ":")).encode()
    return base64.b64encode(zlib.compress(text, 9)).decode("ascii")


def unpack(packed: str | bytes | None) -> dict[str, dict[str, Any]] | None:
    """The description :func:`pack` wrote, or None if there is none (or it is damaged)."""
    if not packed:
        return None
    try:
        text = zlib.decompress(base64.b64decode(packed))
        value = json.loads(text)
    except (ValueError, zlib.error, TypeError):
        return None
    return value if isinstance(value, dict) else None


def explain(was: dict[str, dict[str, Any]] | None, now: dict[str, dict[str, Any]] | None) -> str:
    """Name the modules whose anatomy differs, and how: ``layer1.0.relu: type torch.nn...ReLU → GELU``."""
    if was is None or now is None:
        return "the module types, settings, hooks or forward code (the file does not describe them)"
    parts = []
    for name in [n for n in now if n not in was] + [n for n in was if n not in now]:
        parts.append(f"{name or 'the model'}: {'only now' if name in now else 'only in the file'}")
    for name in now:
        if name in was and was[name] != now[name]:
            parts.append(f"{name or 'the model'}: {_entry_diff(was[name], now[name])}")
    if not parts:
        return "the module order"
    more = f" (and {len(parts) - _SHOWN} more modules)" if len(parts) > _SHOWN else ""
    return "; ".join(parts[:_SHOWN]) + more


def _entry_diff(was: dict[str, Any], now: dict[str, Any]) -> str:
    out = []
    for key in sorted(set(was) | set(now)):
        a, b = was.get(key), now.get(key)
        if a == b:
            continue
        if key in ("settings", "nonpersistent") and isinstance(a, dict) | isinstance(b, dict):
            a, b = a or {}, b or {}
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    label = "non-persistent buffer " if key == "nonpersistent" else ""
                    out.append(f"{label}{k} {_short(a.get(k, 'unset'))} → {_short(b.get(k, 'unset'))}")
        elif key == "hooks" or key == "global_hooks":
            out.append(f"{'hooks' if key == 'hooks' else 'global hooks'} {len(a or [])} → {len(b or [])}"
                       if len(a or []) != len(b or []) else f"{key.replace('_', ' ')} (other code)")
        elif key == "type":
            short_a, short_b = str(a).rsplit(".", 1)[-1], str(b).rsplit(".", 1)[-1]
            out.append(f"type {short_a} → {short_b}" if short_a != short_b else f"type {_short(a)} → {_short(b)}")
        elif key == "forward":
            out.append(f"forward {_short(a or 'the class')} → {_short(b or 'the class')}")
        else:
            out.append(f"{key} {_short(a)} → {_short(b)}")
    return ", ".join(out)


def _short(value: Any, width: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if isinstance(value, str) and "@sha256:" in text:
        text = text.split("@sha256:")[0]
    return text if len(text) <= width else text[: width - 1] + "…"


class _Skip:
    pass


_SKIP: Any = _Skip()


def _canonical(value: Any, depth: int = 0) -> Any:
    """A JSON value for a setting, or _SKIP for what is not a plain value (modules, objects)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    if isinstance(value, enum.Enum):
        return f"{_qualname(type(value))}.{value.name}"
    if isinstance(value, (torch.dtype, torch.device, torch.Size)):
        return str(value) if not isinstance(value, torch.Size) else list(value)
    if depth > 6:
        return _SKIP
    if isinstance(value, nn.Module):
        # not a registered child (those are modules of their own here): held in a list, a dict,
        # a closure or a partial, outside the state_dict, so its weights are part of the job
        return {"module": _qualname(type(value)), "weights": _module_digest(value)}
    if isinstance(value, torch.Tensor):
        return {"tensor": _tensor_digest(value)}
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.generic):
        return _canonical(value.item(), depth + 1)
    if np is not None and isinstance(value, np.ndarray):
        return {"array": _bytes_digest(f"{value.dtype}{value.shape}", value)}
    if isinstance(value, (tuple, list)):
        items = [_canonical(v, depth + 1) for v in value]
        return items if all(v is not _SKIP for v in items) else _SKIP
    if isinstance(value, (set, frozenset)):
        items = [_canonical(v, depth + 1) for v in value]
        if any(v is _SKIP for v in items):
            return _SKIP
        return {"set": sorted(items, key=lambda v: json.dumps(v, sort_keys=True))}
    if isinstance(value, dict):
        if not all(isinstance(k, (str, int, float, bool)) for k in value):
            return _SKIP
        entries = {str(k): _canonical(v, depth + 1) for k, v in value.items()}
        return {k: v for k, v in entries.items() if v is not _SKIP}
    if isinstance(value, (types.FunctionType, types.MethodType, types.BuiltinFunctionType, functools.partial)):
        return code_identity(value)
    if isinstance(value, (types.ModuleType, type)):
        return _qualname(value) if isinstance(value, type) else f"module {value.__name__}"
    state = getattr(value, "__dict__", None)
    if isinstance(state, dict) and not type(value).__module__.startswith(_LIBRARIES):
        # a config object, a dataclass: its class and plain state
        return {"object": _qualname(type(value)),
                "state": _canonical({k: v for k, v in state.items() if not k.startswith("__")}, depth + 1)}
    return _SKIP


def _module_digest(m: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, t in m.state_dict().items():
        digest.update(key.encode() + _tensor_digest(t).encode())
    return digest.hexdigest()[:16]


def _bytes_digest(header: str, array: Any) -> str:
    import numpy as np

    digest = hashlib.sha256(header.encode())
    if array.dtype.kind == "O":
        digest.update(repr(array.tolist()).encode())
    else:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _tensor_digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _forward_of(m: nn.Module) -> str | None:
    """The forward a module runs, where it is not simply its class's own: a patch is named."""
    own = m.__dict__.get("forward")
    if own is not None:
        return "instance: " + code_identity(own)
    fn = getattr(type(m), "forward", None)
    fn = getattr(fn, "__func__", fn)
    if fn is None:
        return None
    defined = next((c for c in type(m).__mro__ if "forward" in c.__dict__), None)
    natural = defined is not None and getattr(fn, "__qualname__", "") == f"{defined.__qualname__}.forward" \
        and getattr(fn, "__module__", None) == defined.__module__
    if natural and defined is not None and defined.__module__.startswith(_LIBRARIES) and _library_code(fn):
        return None  # torch's, torchvision's or timm's own: identified by the library version
    return code_identity(fn)


def code_identity(fn: Any) -> str:
    """``module.qualname@sha256:…`` of a callable's source (or code), closed-over plain values
    and defaults included; library functions by name alone."""
    if isinstance(fn, functools.partial):
        args = [_jsonable(_canonical(list(fn.args))), _jsonable(_canonical(dict(fn.keywords)))]
        return f"partial({code_identity(fn.func)}, {json.dumps(args, sort_keys=True)})"
    owner = getattr(fn, "__self__", None)
    bound = ""
    if isinstance(fn, types.MethodType) and owner is not None and not isinstance(owner, (type, types.ModuleType)):
        # a bound method: its object's state steers it as a closure would
        state = {"module": _qualname(type(owner))} if isinstance(owner, nn.Module) else \
            _canonical(dict(getattr(owner, "__dict__", {})))
        bound = f"[{json.dumps(_jsonable(state), sort_keys=True)}]"
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    name = _qualname(fn)
    if code is None:  # a builtin, or a callable object
        if not isinstance(fn, (types.BuiltinFunctionType, types.FunctionType)) and hasattr(fn, "__call__"):
            kind = type(fn)
            state = _canonical(dict(vars(fn))) if hasattr(fn, "__dict__") else None
            call = getattr(kind, "__call__", None)
            how = code_identity(call) if isinstance(call, types.FunctionType) else ""
            return f"{_qualname(kind)}({json.dumps(_jsonable(state), sort_keys=True)}){how}"
        return name
    if _library_code(fn):
        return name + bound
    digest = hashlib.sha256(_source(code).encode())
    closure = [_canonical(c.cell_contents) if _has_contents(c) else None for c in (fn.__closure__ or ())]
    extra = {"closure": [_jsonable(c) for c in closure], "defaults": _jsonable(_canonical(list(fn.__defaults__ or ())))}
    digest.update(json.dumps(extra, sort_keys=True).encode())
    return f"{name}@sha256:{digest.hexdigest()[:16]}{bound}"


def _jsonable(value: Any) -> Any:
    """A canonical value, with what is not a plain value written as "?" (never an address)."""
    return "?" if value is _SKIP else value


def _library_code(fn: Any) -> bool:
    """A function of torch, torchvision or timm, by its name *and* by the file its code is in
    (``functools.wraps`` copies the name onto a patch, not the code)."""
    code = getattr(fn, "__code__", None)
    if code is None or hasattr(fn, "__wrapped__"):
        return False
    path = str(code.co_filename).replace("\\", "/")
    return str(getattr(fn, "__module__", "") or "").startswith(_LIBRARIES) and \
        any(f"/{lib}/" in path for lib in ("torch", "torchvision", "timm"))


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # an empty cell
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _source(code: types.CodeType) -> str:
    """A function's source text (stable across Python versions) with the names and constants of
    the code that runs (two lambdas on one line; a file edited after it was imported), else its
    bytecode; never a memory address."""
    try:
        text = inspect.getsource(code)
    except (OSError, TypeError):
        text = repr(code.co_code)
    return text + "\0" + _code_constants(code)


def _code_constants(code: types.CodeType) -> str:
    consts = [_code_constants(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts]
    return repr((code.co_names, consts))
