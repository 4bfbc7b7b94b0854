"""Build the model under study: a torchvision or timm network, or a user's own factory.

The model comes back in eval mode, with its weights either seeded random, the
zoo's pretrained weights (a torchvision weights enum, a timm pretrained tag), or a
local state_dict checkpoint. There is no silent
fallback: if pretrained weights cannot be had, the error says how to provide them.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import os
import re
import sys
import types
import weakref
import zlib
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from unitrec._text import shorten
from unitrec.errors import ConfigError, ModelError

__all__ = ["load_model", "model_description", "state_dict_sha256", "zoo_names"]


def zoo_names() -> list[str]:
    """Names of torchvision's classification models (``resnet50``, ``googlenet``, ...)."""
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _build(name: str, weights: Any, kwargs: dict[str, Any], checkpoint: bool = False) -> nn.Module:
    """The model; with `checkpoint`, named weights give the architecture they fit and
    their preprocessing, and the checkpoint their values (nothing is downloaded)."""
    if name.startswith("timm:"):
        return _build_timm(name[len("timm:"):], weights, kwargs, checkpoint)
    if ":" in name:
        return _build_factory(name, weights, kwargs)
    import torchvision.models as tvm

    names = zoo_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise ModelError(
            f"unknown model {name!r}: not a torchvision classification model.{hint} "
            "For your own network, give an importable 'package.module:factory'."
        )
    kwargs = dict(kwargs)
    if name in ("googlenet", "inception_v3") and weights is None and "init_weights" not in kwargs:
        # The aux classifiers only run in training; init_weights=True keeps
        # torchvision's documented initialisation and silences its warning.
        kwargs["init_weights"] = True
    if weights is not None:
        try:
            enum = tvm.get_model_weights(name)
            weights = enum.DEFAULT if str(weights).upper() == "DEFAULT" else enum[str(weights).split(".")[-1]]
        except KeyError:
            valid = ", ".join(["DEFAULT"] + [w.name for w in tvm.get_model_weights(name)])
            raise ModelError(f"unknown weights {weights!r} for {name!r}; valid: {valid}") from None
    try:
        if weights is not None and checkpoint:
            model = tvm.get_model(name, weights=None, **_fitting_kwargs(name, weights, kwargs))
        else:
            model = tvm.get_model(name, weights=weights, **kwargs)
    except TypeError as exc:  # an unknown keyword argument
        raise ModelError(f"{name!r} does not take kwargs {kwargs}: {exc}") from exc
    except (OSError, RuntimeError) as exc:  # urllib errors are OSErrors
        raise ModelError(
            f"cannot get weights {weights!r} for {name!r} ({type(exc).__name__}: {exc}). "
            "Download them on a machine with internet access and pass the state_dict "
            "file as checkpoint=PATH (YAML: model.checkpoint)."
        ) from exc
    if weights is not None:  # the weights' own preprocessing becomes record()'s default
        model.unitrec_transform = weights.transforms()
    return model


def _fitting_kwargs(name: str, weights: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments torchvision's builder sets when given `weights`, so that
    the model built without them has the architecture and forward they fit. Your own
    `kwargs` win."""
    fit: dict[str, Any] = {"num_classes": len(weights.meta["categories"])}
    if name in ("googlenet", "inception_v3"):  # the builders' defaults with weights
        fit.update(transform_input=True, aux_logits=name == "inception_v3", init_weights=False)
    elif name.startswith("vit_"):
        fit["image_size"] = weights.meta["min_size"][0]
    elif name == "maxvit_t":
        fit["input_size"] = weights.meta["min_size"]
    return {**fit, **kwargs}


def _build_timm(name: str, weights: Any, kwargs: dict[str, Any], checkpoint: bool = False) -> nn.Module:
    """A timm model; its data config (input size, resize, crop, mean/std) becomes the
    default preprocessing, with or without pretrained weights."""
    try:
        import timm
        import timm.data
    except ImportError:
        raise ModelError(f"timm:{name} needs timm: pip install 'unitrec[timm]'") from None
    arch, _, tag = name.partition(".")
    names = timm.list_models()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=5, cutoff=0.6)
        hint = f" Closest: {', '.join('timm:' + c for c in close)}." if close else ""
        raise ModelError(f"unknown model 'timm:{name}': not in timm.list_models().{hint}")
    if weights is not None and str(weights).upper() != "DEFAULT":
        if tag:
            raise ModelError(f"give the pretrained tag once: in the name 'timm:{name}' or as weights={weights!r}")
        tag = str(weights)
    full = f"{arch}.{tag}" if tag else arch
    try:
        # with a checkpoint, the tag still gives its data config (no download)
        model = timm.create_model(full, pretrained=weights is not None and not checkpoint, **kwargs)
    except TypeError as exc:
        raise ModelError(f"timm:{arch} does not take kwargs {kwargs}: {exc}") from exc
    except RuntimeError as exc:
        if "Unknown model" in str(exc) or "Invalid pretrained tag" in str(exc):
            tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
            raise ModelError(f"unknown weights {tag!r} for timm:{arch}; valid: "
                             f"{', '.join(['DEFAULT'] + tags) or 'none'}") from None
        raise _no_weights(f"timm:{full}", weights, exc) from exc
    except OSError as exc:  # no internet, no cached file
        raise _no_weights(f"timm:{full}", weights, exc) from exc
    config = timm.data.resolve_model_data_config(model)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)  # kwargs such as img_size=112
    if isinstance(size, (tuple, list)) and len(size) == 2 and tuple(size) != tuple(config["input_size"][1:]):
        config["input_size"] = (config["input_size"][0], int(size[0]), int(size[1]))
    model.unitrec_transform = timm.data.create_transform(**config, is_training=False)
    model.unitrec_input_size = tuple(config["input_size"])  # type: ignore[assignment]
    return model


def _no_weights(name: str, weights: Any, exc: BaseException) -> ModelError:
    return ModelError(
        f"cannot get weights {weights!r} for {name!r} ({type(exc).__name__}: {shorten(str(exc))}). "
        "Download them on a machine with internet access and pass the state_dict "
        "file as checkpoint=PATH (YAML: model.checkpoint)."
    )


_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_SEEDS = (-(1 << 63), (1 << 64) - 1)  # the seeds torch.manual_seed takes


def _build_factory(spec: str, weights: Any, kwargs: dict[str, Any]) -> nn.Module:
    """Import ``package.module:function`` and call it with ``kwargs``.

    This runs the user's code, as importing any Python file does. The current folder
    is on the module path (appended if absent), so ``unitrec`` and ``python -m
    unitrec`` find the same factories.
    """
    module_name, _, attr = spec.partition(":")
    if not (_DOTTED.fullmatch(module_name) and _DOTTED.fullmatch(attr)):
        raise ModelError(
            f"model {spec!r} is neither a torchvision name nor 'package.module:function' "
            "(an importable module, a colon, a function returning a torch.nn.Module)"
        )
    if weights is not None:
        raise ModelError(
            f"weights={weights!r} only applies to torchvision and timm models; give your own "
            "model's weights as checkpoint=PATH"
        )
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        factory = importlib.import_module(module_name)
        for part in attr.split("."):
            factory = getattr(factory, part)
            if isinstance(factory, types.ModuleType):  # `helpers:os.system`: not helpers' own function
                raise ModelError(f"model factory {spec!r} reaches through the module {factory.__name__!r} "
                                 f"that {module_name!r} imports; name the function where it is defined")
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot import model factory {spec!r}: {exc}") from exc
    if not callable(factory):
        raise ModelError(f"model factory {spec!r} is a {type(factory).__name__}, not a function")
    defined = str(getattr(factory, "__module__", None) or "")
    if defined.split(".")[0] != module_name.split(".")[0]:
        raise ModelError(f"model factory {spec!r} is not defined in {module_name!r} but in "
                         f"{defined or 'Python itself'!r}; name the function where it is defined")
    try:
        model = factory(**kwargs)
    except Exception as exc:  # the user's code: say which factory failed, in one line
        called = f"with {kwargs}" if kwargs else "with no arguments"
        raise ModelError(f"model factory {spec!r} called {called} failed: "
                         f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"model factory {spec!r} returned {type(model).__name__} "
                         f"{_short(model)}, not a torch.nn.Module")
    return model


def _short(value: Any) -> str:
    return shorten(repr(value))


def load_model(
    name: str,
    weights: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    seed: int = 0,
    kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Build a model in eval mode.

    Parameters
    ----------
    name
        A torchvision classification model name (``"resnet50"``, ``"densenet121"``,
        ``"googlenet"``, ``"inception_v3"``, ...), a timm model ``"timm:NAME"`` (any
        name of ``timm.list_models()``, e.g. ``"timm:inception_resnet_v2"``; needs the
        ``timm`` extra), or an importable factory ``"package.module:function"`` that
        returns an ``nn.Module``.
    weights
        ``None`` for random initialisation (seeded by `seed`); ``"DEFAULT"`` for the
        zoo's default pretrained weights; a torchvision weights enum name such as
        ``"IMAGENET1K_V2"``, or a timm pretrained tag such as ``"in1k"``. Needs
        internet the first time; torchvision and timm cache the file afterwards.
        With `checkpoint`, nothing is downloaded: the weights name gives the
        architecture they fit and their preprocessing, the checkpoint the values.
    checkpoint
        A local file holding a ``state_dict`` (or a dict with a ``"state_dict"`` or
        ``"model"`` entry), loaded strictly over the built model.
    seed
        Seed of the random initialisation.
    kwargs
        Keyword arguments for the model's constructor (torchvision's
        ``get_model``, timm's ``create_model``, or your factory), e.g.
        ``{"num_classes": 10}``.

    Returns
    -------
    torch.nn.Module
        The model, in eval mode, on the CPU. A timm model carries its data
        config's preprocessing (``unitrec_transform``), which ``record`` uses
        unless given another; so does a torchvision model with pretrained weights.

    Examples
    --------
    >>> model = load_model("resnet18")            # random weights, seed 0
    >>> model.training
    False
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not _SEEDS[0] <= seed <= _SEEDS[1]:
        raise ConfigError(f"model seed must be an integer from {_SEEDS[0]} to {_SEEDS[1]} (what torch.manual_seed "
                          f"takes), got {seed!r}; pick a smaller seed")
    if not isinstance(name, str) or not name:
        raise ModelError(f"model name must be a text such as 'resnet18', 'timm:convnext_tiny' or "
                         f"'mynets:build', got {name!r}")
    torch.manual_seed(seed)
    if isinstance(weights, str) and weights.lower() in ("none", "null", "random"):
        weights = None
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ModelError(f"model kwargs must be a mapping of keyword arguments, got {type(kwargs).__name__}")
    model = _build(name, weights, dict(kwargs or {}), checkpoint=checkpoint is not None)
    if checkpoint is not None:
        _load_checkpoint(model, checkpoint)
    model.eval()
    model.unitrec_description = model_description(name, weights, checkpoint, seed, kwargs)  # type: ignore[assignment]
    return model


def _load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike) -> None:
    path = os.fspath(checkpoint)
    if os.path.isdir(path):
        raise ModelError(f"checkpoint {path} is a folder; give the state_dict file inside it")
    if not os.path.isfile(path):
        raise ModelError(f"checkpoint file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise ModelError(f"checkpoint {path} was not loaded: {_checkpoint_problem(exc, path)}") from None
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise ModelError(f"checkpoint {path} does not hold a state_dict")
    # DataParallel / DDP checkpoints prefix every key with "module."
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    # torchvision's googlenet / inception_v3 files hold aux heads that its builder then
    # sets to None (aux_logits=False): their entries have no module to go to
    state = {k: v for k, v in state.items() if not (isinstance(k, str) and "." in k
                                                    and getattr(model, k.split(".")[0], 0) is None)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ModelError(
            f"checkpoint {path} does not fit the model: {' '.join(first[:3])[:500]}"
        ) from exc


_PLAIN = "give a file written by torch.save(model.state_dict(), PATH)"


def _checkpoint_problem(exc: Exception, path: str) -> str:
    """One line for why torch.load failed. torch's own text advises unpickling with
    ``weights_only=False``, which runs whatever code the file holds: never repeated here."""
    text = str(exc)
    if isinstance(exc, OSError) and not isinstance(exc, EOFError):
        return f"{exc.strerror or text}; {_PLAIN}"
    found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
    if found:
        return (f"it contains pickled Python code or objects ({found.group(1)}), not only tensors, and unpickling "
                "it could run arbitrary code. If you trust where it came from, convert it once to a plain "
                "state_dict (torch.save(model.state_dict(), NEW_PATH)) and give that file")
    what = _file_kind(path)
    if what:
        return f"it is not a PyTorch checkpoint but {what}; {_PLAIN}"
    if "zip archive" in text or "PytorchStreamReader" in text:
        return f"it is truncated or corrupted (an incomplete zip archive, as torch.save writes); {_PLAIN}"
    return f"it is not a PyTorch checkpoint (neither torch.save's zip archive nor its older pickle format); {_PLAIN}"


def _file_kind(path: str) -> str | None:
    """What a file that is not a checkpoint is, from its first bytes (None: it may be one)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return None
    if not head:
        return "an empty file"
    kinds = {b"\x89HDF\r\n\x1a\n": "an HDF5 file", b"\x93NUMPY": "a NumPy .npy file", b"%PDF": "a PDF file",
             b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"\x1f\x8b": "a gzip file"}
    for magic, kind in kinds.items():
        if head.startswith(magic):
            return kind
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None  # a zip archive (torch.save's format) or a pickle (its older one)
    if len(head) >= 9 and head[8:9] == b"{":
        return "a safetensors file (load it with safetensors.torch.load_file and save the dict with torch.save)"
    if all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return "a text file"
    return "a file of another format"


def model_description(
    name: str, weights: Any = None, checkpoint: Any = None, seed: int = 0, kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The provenance record of how a model was built (stored in every recording)."""
    if checkpoint is not None:
        how = f"checkpoint {os.path.abspath(os.fspath(checkpoint))}"
    elif weights is None:
        how = f"random init (seed {seed}), not trained"
    elif name.startswith("timm:"):
        how = f"timm pretrained weights {weights}"
    else:
        how = f"torchvision weights {weights}"
    if kwargs:
        how += f", kwargs {kwargs}"
    return {
        "name": name,
        "kwargs": dict(kwargs or {}),
        "weights": "none" if weights is None else str(weights),
        "checkpoint": "" if checkpoint is None else os.path.abspath(os.fspath(checkpoint)),
        "seed": seed,
        "description": how,
    }


def state_dict_sha256(model: nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers, in state_dict order.

    Equal hashes mean equal weights, not the same function: constructor kwargs, module
    settings (a stride, a BatchNorm ``eps``), a swapped activation, hooks, a patched
    ``forward`` and non-persistent buffers change what the model computes and leave
    this hash alone. A recording's run key therefore holds the model's anatomy
    (:mod:`unitrec.anatomy.fingerprint`) and kwargs beside it.

    The hash is cached per model and reused only while the weights are provably the
    ones hashed: every parameter and buffer is the same tensor object, with the same
    storage, shape, dtype and device, its version counter has not moved (an optimizer
    step, ``load_state_dict``, ``p.add_()`` under ``no_grad``), and its bytes have the
    same CRC-32 (a write that autograd does not count: ``p.data.add_()``, a numpy
    view). The CRC-32s are computed on several threads (zlib releases the GIL), so a
    cached check costs a fraction of hashing again.
    """
    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        return weights_sha256_on(pool, model)()


def weights_sha256_on(pool: Executor, model: nn.Module) -> Callable[[], str]:
    """Start :func:`state_dict_sha256` on `pool`; call what it returns for the digest.

    The model's tensors are taken now. Run no forward pass until the digest is in: a
    forward may write them where no version counter sees it (a numpy view, a deferred
    ``nn.init.*_(w.data)``), and the hash would be of weights that never ran, or torn.
    """
    tensors = _weight_bytes(model)
    stamp = _stamp(model)
    cached = _HASHES.get(model)
    # unknown weights: the SHA-256 on one thread while the others take the CRC-32s
    sha = pool.submit(_sha256, tensors) if cached is None or cached[0] != stamp else None
    crcs = [pool.submit(zlib.crc32, data) for *_, data in tensors]

    def digest() -> str:
        values = [f.result() for f in crcs]
        if sha is None and cached is not None and values == cached[1]:
            return cached[2]
        text = sha.result() if sha is not None else _sha256(tensors)
        _HASHES[model] = (stamp, values, text)
        return text

    return digest


#: model -> (stamp, CRC-32 per tensor, SHA-256); entries go with the model
_HASHES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, list[int], str]] = weakref.WeakKeyDictionary()
#: threads that hash weights and stimuli (zlib and hashlib release the GIL)
HASH_THREADS = max(2, min(8, os.cpu_count() or 1))


def _weight_bytes(model: nn.Module) -> list[tuple[str, torch.Tensor, memoryview]]:
    """(key, tensor, its bytes) per state_dict entry, without copying CPU tensors."""
    out = []
    for key, value in model.state_dict().items():
        t = value.detach().cpu().contiguous().reshape(-1)
        out.append((key, t, memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")))
    return out


def _sha256(tensors: list[tuple[str, torch.Tensor, memoryview]]) -> str:
    digest = hashlib.sha256()
    for key, t, data in tensors:
        digest.update(key.encode())
        digest.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        digest.update(data)
    return digest.hexdigest()


def _stamp(model: nn.Module) -> tuple:
    """Which tensors the weights are, and how often autograd saw them written."""
    return tuple((name, id(t), t.data_ptr(), t._version, tuple(t.shape), t.dtype, str(t.device))
                 for name, t in [*model.named_parameters(remove_duplicate=False),
                                 *model.named_buffers(remove_duplicate=False)])
