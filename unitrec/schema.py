"""The one place where user configuration is validated (YAML and Python alike).

pydantic models with ``extra="forbid"``: an unknown key is an error that names it
and lists the valid keys. :func:`parse` turns pydantic's report into a short
:class:`~unitrec.errors.ConfigError`.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Optional, Sequence, Type, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from unitrec.errors import ConfigError

__all__ = [
    "Config",
    "GenerateSpec",
    "LayerSpec",
    "ModelSpec",
    "OutputSpec",
    "PreprocessSpec",
    "RecordSpec",
    "StimuliSpec",
    "parse",
    "parse_layers",
]

T = TypeVar("T", bound=BaseModel)


#: The largest batch size: a block is computed whole, so its images and every site's rows are held at once.
MAX_BATCH_SIZE = 1 << 16
#: Preferred stimuli a summary keeps per unit unless `top:` says; the most it may say.
DEFAULT_TOP = 16
MAX_TOP = 10_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


#: Names the file's root already uses (stimulus coordinates); a site stored under one would clash.
_ROOT_NAMES = ("stimulus", "done", "label", "path")


def _unstorable(key: str) -> Optional[str]:
    """Why `key` cannot name a site's group in the file, or None if it can."""
    if key in ("", ".", ".."):
        return f"{key!r} is not a name"
    if "/" in key:
        return "'/' would nest it in an HDF5 group"
    if not key.strip():
        return "it is blank"
    if "\0" in key:
        return "it holds a NUL character"
    if not key.isprintable():
        return "it holds a line break or another control character"
    if key in _ROOT_NAMES:
        return f"the file's root already holds {key!r} ({', '.join(_ROOT_NAMES)} are taken)"
    return None


class LayerSpec(_Strict):
    """One recording site and which of its units to keep (see docs/design.md, "Layer entries")."""

    name: str
    capture: Literal["output", "input"] = "output"
    units: Optional[Literal["center", "centre", "cls", "all"]] = None
    channels: Optional[list[int]] = None
    positions: Optional[list[tuple[int, int]]] = None
    pool: Optional[Literal["mean", "max"]] = None
    sample: Optional[int] = None
    seed: int = Field(default=0, ge=0, le=(1 << 32) - 1)  # numpy's default_rng takes seeds ≥ 0
    store_as: Optional[str] = Field(default=None, alias="as")
    keep: Literal["full", "summary", "both"] = "full"
    top: Optional[StrictInt] = None

    @field_validator("units")
    @classmethod
    def _spelling(cls, v: Optional[str]) -> Optional[str]:
        return {"centre": "center", "all": None}.get(v, v) if v else v

    @field_validator("name")
    @classmethod
    def _module_name(cls, v: str) -> str:
        if v and (not v.strip() or not v.isprintable()):
            why = "is blank" if not v.strip() else "holds a line break or another control character"
            raise ValueError(f"site {v!r} {why}: give a module's name as `unitrec layers MODEL` lists them")
        return v

    @field_validator("store_as")
    @classmethod
    def _storable(cls, v: Optional[str]) -> Optional[str]:
        why = None if v is None else _unstorable(v)
        if why:
            raise ValueError(f"{v!r} cannot name a site: {why}; choose another name (':', '@', '.' are fine)")
        return v

    @model_validator(mode="after")
    def _exclusive(self) -> "LayerSpec":
        modes = [k for k in ("units", "pool", "sample") if getattr(self, k) is not None]
        if self.positions is not None:
            modes.append("positions")
        if len(modes) > 1:
            raise ValueError(f"choose one of units / positions / pool / sample, not {' and '.join(modes)}")
        if self.sample is not None and self.channels is not None:
            raise ValueError("sample draws from every unit; it cannot be combined with channels")
        if self.top is not None and self.keep == "full":
            raise ValueError("top: sets how many preferred stimuli a summary keeps; add keep: summary (or both)")
        if self.top is not None and not 1 <= self.top <= MAX_TOP:
            raise ValueError(f"top must be an integer from 1 to {MAX_TOP:,}, got {self.top!r}")
        if self.keep != "full" and self.top is None:  # written out, so that `top: 16` is the same job
            self.top = DEFAULT_TOP
        return self

    @model_validator(mode="after")
    def _storable_name(self) -> "LayerSpec":
        why = None if self.store_as else _unstorable(self.key)
        if why:
            raise ValueError(f"site {self.key!r} cannot be stored under its own name: {why}; "
                             "give it another with 'as:'")
        return self

    @property
    def key(self) -> str:
        """Name of the site in the file: `as`, else the site name (with ``@input``)."""
        if self.store_as:
            return self.store_as
        return self.name + ("@input" if self.capture == "input" and "@" not in self.name else "")


#: One layer entry: a site name, a mapping of :class:`LayerSpec`'s keys (see
#: docs/design.md, "Layer entries") or a LayerSpec.
LayerEntry = Union[str, Mapping[str, Any], LayerSpec]
#: What ``layers=`` accepts: one entry (a name, a dict or a LayerSpec) or a sequence of entries.
Layers = Union[str, dict[str, Any], LayerSpec, Sequence[LayerEntry]]


class ModelSpec(_Strict):
    name: str
    weights: Optional[str] = None
    checkpoint: Optional[str] = None
    seed: int = Field(default=0, ge=-(1 << 63), le=(1 << 64) - 1)  # what torch.manual_seed takes
    kwargs: dict[str, Any] = {}
    # packages whose `package.module:function` a config may import and call, beyond the
    # modules that lie beside the config file (see run.check_code)
    allow_code: list[str] = []


_GRATING_KEYS = ("orientations", "spatial_frequencies", "phases", "contrasts")
#: The keys of `stimuli.generate` each generator takes, beside ``kind`` and ``size``.
GENERATOR_KEYS = {
    "gratings": _GRATING_KEYS + ("apertures", "aperture_center"),
    "gabors": _GRATING_KEYS + ("sigmas",),
    "protocols": _GRATING_KEYS + ("size_spatial_frequencies", "diameters", "contrast_spatial_frequencies",
                                  "aperture_center"),
    "sparse_noise": ("grid", "polarities", "contrast", "repeats"),
    "white_noise": ("n", "block", "seed", "contrast", "distribution"),
}


class GenerateSpec(_Strict):
    """``stimuli.generate``: the arguments of one generator of :mod:`unitrec.stimuli`."""

    kind: Literal["gratings", "gabors", "protocols", "sparse_noise", "white_noise"]
    size: int = 64
    orientations: Optional[list[float]] = None
    spatial_frequencies: Optional[list[float]] = None
    phases: Optional[list[float]] = None
    contrasts: Optional[list[float]] = None
    sigmas: Optional[list[float]] = None
    apertures: Optional[list[float]] = None
    aperture_center: Optional[tuple[float, float]] = None
    size_spatial_frequencies: Optional[list[float]] = None
    diameters: Optional[list[float]] = None
    contrast_spatial_frequencies: Optional[list[float]] = None
    grid: Optional[int] = None
    polarities: Optional[list[Literal["on", "off"]]] = None
    contrast: Optional[float] = None
    repeats: Optional[int] = None
    n: Optional[int] = None
    block: Optional[int] = None
    seed: Optional[int] = None
    distribution: Optional[Literal["binary", "gaussian"]] = None

    @model_validator(mode="after")
    def _keys_of_kind(self) -> "GenerateSpec":
        others = {k for keys in GENERATOR_KEYS.values() for k in keys} - set(GENERATOR_KEYS[self.kind])
        wrong = sorted(k for k in others if getattr(self, k) is not None)
        if wrong:
            owners = {k: [kind for kind, keys in GENERATOR_KEYS.items() if k in keys] for k in wrong}
            said = "; ".join(f"{k} is for kind {' or '.join(kinds)}" for k, kinds in owners.items())
            raise ValueError(f"kind {self.kind} does not take {', '.join(wrong)} ({said})")
        return self

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments of the generator, without the ones left unset."""
        args = {k: v for k, v in self.model_dump(exclude={"kind"}).items() if v is not None}
        if "distribution" in args:  # white_noise's own name for it is `kind`
            args["kind"] = args.pop("distribution")
        return args


class StimuliSpec(_Strict):
    path: Optional[str] = None
    generate: Optional[GenerateSpec] = None
    on_error: Literal["skip", "raise"] = "skip"
    background: tuple[int, int, int] = (255, 255, 255)

    @field_validator("background", mode="before")
    @classmethod
    def _rgb(cls, v: Any) -> Any:
        if not (isinstance(v, (list, tuple)) and len(v) == 3
                and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in v)):
            raise ValueError(f"must be three integers in 0..255 (an RGB colour, e.g. [255, 255, 255]), got {v!r}")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "StimuliSpec":
        if self.generate is None and self.path is None:
            raise ValueError("give stimuli.path (a folder) or stimuli.generate")
        return self


class PreprocessSpec(_Strict):
    resize: Optional[int] = 256
    crop: Optional[int] = 224
    normalize: Union[Literal["imagenet"], None, dict[str, list[float]]] = "imagenet"

    @field_validator("resize", "crop", mode="before")
    @classmethod
    def _pixels(cls, v: Any, info: Any) -> Any:
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            what = "resizing" if info.field_name == "resize" else "cropping"
            raise ValueError(f"must be a positive whole number of pixels, or null for no {what}; got {v!r}")
        return v

    @field_validator("normalize")
    @classmethod
    def _mean_std(cls, v: Any) -> Any:
        if isinstance(v, dict) and set(v) != {"mean", "std"}:
            raise ValueError(f"must be 'imagenet', null or {{mean, std}}; got keys {sorted(v)}")
        return v


class RecordSpec(_Strict):
    batch_size: int = Field(default=32, gt=0, le=MAX_BATCH_SIZE, strict=True)
    device: str = "cpu"
    num_workers: int = Field(default=0, ge=0, strict=True)
    dtype: Literal["float32", "float16"] = "float32"
    compression: Optional[Literal["zstd"]] = None
    stop_early: bool = True
    progress: bool = True


class OutputSpec(_Strict):
    path: str
    overwrite: bool = False


class ReportSpec(_Strict):
    """``report:`` of a config: the options of ``unitrec report`` (see :func:`unitrec.report.write_report`)."""

    path: Optional[str] = None
    by: Optional[str] = None  # stimulus coordinate of the tuning curves; default orientation when present
    units_per_site: int = Field(default=8, gt=0, strict=True)
    force: bool = False  # rebuild even when the folder holds the report of this very recording


class Config(_Strict):
    """A whole experiment: model, stimuli, preprocessing, sites, recording, output."""

    model: ModelSpec
    stimuli: StimuliSpec
    preprocess: Optional[PreprocessSpec] = None
    layers: list[LayerSpec]
    record: RecordSpec = RecordSpec()
    output: Union[str, OutputSpec]
    report: Optional[ReportSpec] = None

    @field_validator("layers", mode="before")
    @classmethod
    def _entries(cls, v: Any) -> Any:
        # a bare name is the entry {name: ...}, so errors point into one model, not a union
        if isinstance(v, (str, dict)):
            v = [v]
        return [{"name": e} if isinstance(e, str) else e for e in v] if isinstance(v, list) else v

    @field_validator("layers")
    @classmethod
    def _some(cls, v: list) -> list:
        if not v:
            raise ValueError("list at least one recording site")
        return v


def _where(loc: tuple) -> str:
    """``layers.0.units`` as ``layers[0].units``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


#: What a union field takes, said once for the field
_UNION_TAKES = {
    "normalize": "'imagenet', null or {mean: [r, g, b], std: [r, g, b]}",
    "output": "a file path or {path: ..., overwrite: ...}",
}


def _member_tags(model: Type[BaseModel], loc: tuple) -> set[int]:
    """Which parts of an error's location name a union's member (pydantic's
    `literal['imagenet']`, `OutputSpec`, `str`), found by walking the models."""
    tags: set[int] = set()
    ann: Any = model
    for i, part in enumerate(loc):
        args = [a for a in get_args(ann) if a is not type(None)] if get_origin(ann) is Union else [ann]
        fields = {k: f for a in args if isinstance(a, type) and issubclass(a, BaseModel)
                  for n, f in a.model_fields.items() for k in (n, f.alias) if k}
        if isinstance(part, str) and part in fields:
            ann = fields[part].annotation
        elif isinstance(part, int) and get_origin(args[0]) in (list, tuple) and get_args(args[0]):
            items = get_args(args[0])
            ann = items[min(part, len(items) - 1)] if get_origin(args[0]) is tuple else items[0]
        elif isinstance(part, str) and len(args) > 1:
            tags.add(i)
            ann = next((a for a in args if part == getattr(a, "__name__", None)  # a model: its class name
                        or (part.startswith("dict[") and get_origin(a) is dict)), Any)
        else:
            break
    return tags


def _per_field(errors: list[dict], model: Type[BaseModel]) -> list[dict]:
    """pydantic's errors with one per field: a union's members are not named.

    A union field that no member takes gives one error per member; the members that
    got inside the value (a mapping with a wrong key) say what is wrong there, else
    one error says what the field takes.
    """
    out: list[dict] = []
    unions: dict[tuple, list[dict]] = {}
    for err in errors:
        loc = tuple(err["loc"])
        tags = _member_tags(model, loc)
        if not tags:
            out.append(err)
            continue
        cut = min(tags)
        if loc[:cut] not in unions:
            unions[loc[:cut]] = []
            out.append({"loc": loc[:cut], "union": unions[loc[:cut]]})
        unions[loc[:cut]].append({**err, "loc": tuple(p for i, p in enumerate(loc) if i not in tags)})
    merged: list[dict] = []
    for err in out:
        if "union" not in err:
            merged.append(err)
            continue
        members = err["union"]
        inside = [e for e in members if len(e["loc"]) > len(err["loc"]) or e["type"] in ("missing", "extra_forbidden")
                  or not e["msg"].startswith("Input should be")]
        if inside:
            merged.extend(inside)
        else:
            field = str(err["loc"][-1]) if err["loc"] else ""
            takes = _UNION_TAKES.get(field, " or ".join(e["msg"].removeprefix("Input should be ") for e in members))
            merged.append({"loc": err["loc"], "type": "union", "msg": f"must be {takes}; got {members[0].get('input')!r}"})
    return merged


def _message(exc: ValidationError, what: str, model: Type[BaseModel]) -> str:
    lines = []
    errors = _per_field([dict(e) for e in exc.errors()], model)
    for err in errors[:3]:
        where = _where(err["loc"])
        if err["type"] == "extra_forbidden":
            parent = model
            for part in err["loc"][:-1]:
                field = parent.model_fields.get(str(part)) if isinstance(part, str) else None
                ann = getattr(field, "annotation", None)
                parent = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)
                               and issubclass(a, BaseModel)), parent)
            valid = ", ".join(f.alias or n for n, f in parent.model_fields.items())
            # inside a list entry, name the entry and the key within it: layers[0]: unknown key 'unit'
            cut = max((i + 1 for i, p in enumerate(err["loc"]) if isinstance(p, int)), default=0)
            entry = f"{_where(err['loc'][:cut])}: " if cut else ""
            key = ".".join(str(p) for p in err["loc"][cut:])
            lines.append(f"{entry}unknown key '{key}' (valid keys: {valid})")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {msg}" if where else msg)
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return f"invalid {what}: " + "; ".join(lines) + more


def parse(model: Type[T], data: Any, what: str = "config") -> T:
    """Validate `data` against `model`, raising ConfigError with a short message."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_message(exc, what, model)) from None


def parse_layers(layers: Layers) -> list[LayerSpec]:
    """Layer entries (names or dicts) to validated :class:`LayerSpec` objects."""
    if isinstance(layers, (str, dict, LayerSpec)):
        layers = [layers]
    specs = []
    for entry in layers:
        if isinstance(entry, LayerSpec):
            specs.append(entry)
        elif isinstance(entry, str):
            specs.append(parse(LayerSpec, {"name": entry}, "layer entry"))
        else:
            specs.append(parse(LayerSpec, entry, "layer entry"))
    keys = [s.key for s in specs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ConfigError(
            f"site {dup[0]!r} is listed twice; give one entry an 'as:' name to store both"
        )
    return specs
