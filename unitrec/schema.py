"""The one place where user configuration is validated (YAML and Python alike).

pydantic models with ``extra="forbid"``: an unknown key is an error that names it
and lists the valid keys. :func:`parse` turns pydantic's report into a short
:class:`~unitrec.errors.ConfigError`.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Mapping, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, field_validator, model_validator

from unitrec._parse import parse
from unitrec.errors import ConfigError

__all__ = [
    "AblationSpec",
    "ClosedLoopConfig",
    "Config",
    "EvolveSpec",
    "GenerateSpec",
    "LayerSpec",
    "ModelSpec",
    "OutputSpec",
    "PreprocessSpec",
    "RecordSpec",
    "StimuliSpec",
    "VisualizeSpec",
    "parse",
    "parse_ablation",
    "json_schema",
    "parse_layers",
]


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


class AblationSpec(_Strict):
    """One lesion: a site's units and what their value becomes (docs/user-guide/closed-loop.md).

    The units are chosen with the layer-entry keys ``channels``, ``units``
    (``center``), ``positions``; none of them means the whole site. Exactly one of
    ``set`` (a number, or ``mean`` with ``from``: a recording holding the whole site)
    and ``scale`` says what happens to them.
    """

    name: str
    units: Optional[Literal["center", "centre"]] = None
    channels: Optional[list[int]] = None
    positions: Optional[list[tuple[int, int]]] = None
    set_to: Optional[Union[StrictFloat, StrictInt, Literal["mean"]]] = Field(default=None, alias="set")
    source: Optional[str] = Field(default=None, alias="from")
    scale: Optional[Union[StrictFloat, StrictInt]] = None

    @field_validator("units")
    @classmethod
    def _spelling(cls, v: Optional[str]) -> Optional[str]:
        return "center" if v == "centre" else v

    @model_validator(mode="after")
    def _one_edit(self) -> "AblationSpec":
        if (self.set_to is None) == (self.scale is None):
            raise ValueError(f"lesion {self.name!r}: give exactly one of set: (a number, or mean with from: "
                             "a recording) and scale: (a factor)")
        for what, value in (("set", self.set_to), ("scale", self.scale)):
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise ValueError(f"lesion {self.name!r}: {what}: must be a finite number, got {value!r}")
        if self.set_to == "mean" and not self.source:
            raise ValueError(f"lesion {self.name!r}: set: mean needs from: a recording of the site "
                             "(its summary or full data gives each unit's mean)")
        if self.source and self.set_to != "mean":
            raise ValueError(f"lesion {self.name!r}: from: is only for set: mean")
        if self.units is not None and self.positions is not None:
            raise ValueError(f"lesion {self.name!r}: choose units: or positions:, not both")
        return self


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
    compression: Optional[Literal["gzip", "zstd"]] = None
    keepbits: Optional[int] = Field(default=None, ge=1, le=23, strict=True)  # BitRound float32; implies gzip
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


class AtlasSpec(_Strict):
    """``atlas:`` of a config: the options of ``unitrec atlas`` (see :func:`unitrec.atlas`); ``true``: the defaults."""

    path: Optional[str] = None  # default: atlas/ beside the recording
    visualizations: list[str] = []  # files of kind: visualize runs (relative to the config's folder)
    evolutions: list[str] = []  # files of kind: evolve runs
    stimulus_root: Optional[str] = None
    by: Optional[str] = None  # stimulus parameter of the tuning curves; default orientation or direction
    ranks: int = Field(default=9, ge=0, strict=True)
    max_units: int = Field(default=200_000, ge=1, strict=True)


class Config(_Strict):
    """A whole experiment: model, stimuli, preprocessing, sites, recording, output."""

    kind: Optional[Literal["record"]] = None  # the default; closed-loop kinds: ClosedLoopConfig
    model: ModelSpec
    stimuli: StimuliSpec
    preprocess: Optional[PreprocessSpec] = None
    layers: list[LayerSpec]
    record: RecordSpec = RecordSpec()
    output: Union[str, OutputSpec]
    report: Optional[ReportSpec] = None
    atlas: Union[StrictBool, AtlasSpec] = False
    ablate: Optional[list[AblationSpec]] = None

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


UnitEntry = Union[str, dict[str, Any]]
#: ``normalize:`` of a synthesis: the ImageNet mean/std, none (the model takes [0, 1] images), or [mean, std]
Normalize = Union[None, Literal["imagenet"], tuple[tuple[float, float, float], tuple[float, float, float]]]


class VisualizeSpec(_Strict):
    """``visualize:`` of a ``kind: visualize`` config: the arguments of :func:`unitrec.visualize`, per unit."""

    units: list[UnitEntry]
    size: int = Field(default=224, ge=16, le=2048, strict=True)
    steps: int = Field(default=512, ge=1, strict=True)
    param: Literal["fourier", "pixel"] = "fourier"
    decorrelate: bool = True
    transforms: Union[None, Literal["standard"], list[Any]] = "standard"
    lr: float = Field(default=0.05, gt=0)
    seed: int = Field(default=0, ge=0)
    device: str = "cpu"
    normalize: Normalize = "imagenet"

    @field_validator("units", mode="before")
    @classmethod
    def _listed(cls, v: Any) -> Any:
        return [v] if isinstance(v, (str, dict)) else v

    @field_validator("units")
    @classmethod
    def _some(cls, v: list) -> list:
        if not v:
            raise ValueError("list at least one unit to visualise")
        return v


class EvolveSpec(_Strict):
    """``evolve:`` of a ``kind: evolve`` config: the arguments of :func:`unitrec.evolve`."""

    unit: UnitEntry
    generator: Optional[ModelSpec] = None  # a module:factory returning the generator (model: name's rules)
    code_size: Optional[int] = Field(default=None, gt=0, strict=True)
    size: int = Field(default=224, ge=16, le=2048, strict=True)
    generations: int = Field(default=100, ge=1, strict=True)
    population: int = Field(default=40, ge=2, strict=True)
    sigma0: Optional[float] = Field(default=None, gt=0)
    noise: float = Field(default=0.0, ge=0)
    fit_rf: bool = False
    seed: int = Field(default=0, ge=0)
    device: str = "cpu"
    normalize: Normalize = "imagenet"


class ClosedLoopConfig(_Strict):
    """A synthesis experiment: ``kind: visualize`` (feature visualisation) or ``kind: evolve`` (CMA-ES)."""

    kind: Literal["visualize", "evolve"]
    model: ModelSpec
    ablate: Optional[list[AblationSpec]] = None
    visualize: Optional[VisualizeSpec] = None
    evolve: Optional[EvolveSpec] = None
    output: Union[str, OutputSpec]
    progress: bool = True

    @model_validator(mode="after")
    def _its_section(self) -> "ClosedLoopConfig":
        own, other = (self.visualize, self.evolve) if self.kind == "visualize" else (self.evolve, self.visualize)
        if own is None:
            raise ValueError(f"kind: {self.kind} needs its {self.kind}: section (the arguments)")
        if other is not None:
            name = "evolve" if self.kind == "visualize" else "visualize"
            raise ValueError(f"kind: {self.kind} takes no {name}: section; write it in a config of its own")
        return self


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


def parse_ablation(ablate: Any) -> list[AblationSpec]:
    """``ablate=`` (None, one entry or a list of dicts / :class:`AblationSpec`) to validated lesions."""
    if ablate is None:
        return []
    if isinstance(ablate, (dict, AblationSpec)):
        ablate = [ablate]
    if isinstance(ablate, (str, bytes)) or not isinstance(ablate, Sequence):
        raise ConfigError(f"ablate must be a list of lesions like [{{'name': 'layer3.0', 'channels': [5], "
                          f"'set': 0}}], got {type(ablate).__name__} {ablate!r:.60}")
    return [e if isinstance(e, AblationSpec) else parse(AblationSpec, e, "lesion") for e in ablate]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a config file: a recording's, or a synthesis's (``kind: visualize | evolve``)."""
    record, synthesis = Config.model_json_schema(by_alias=True), ClosedLoopConfig.model_json_schema(by_alias=True)
    defs = {**record.pop("$defs", {}), **synthesis.pop("$defs", {})}
    # what validators take before the models see it: a bare site name, one entry instead of a list
    entry = {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/LayerSpec"}]}
    record["properties"]["layers"] = {"anyOf": [entry, {"type": "array", "items": entry, "minItems": 1}]}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "unitrec config",
            "description": "A unitrec experiment: a recording (kind: record, the default) or a synthesis "
                           "(kind: visualize or evolve)", "anyOf": [record, synthesis], "$defs": defs}
