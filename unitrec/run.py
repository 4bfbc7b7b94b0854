"""``run_config``: an experiment from a YAML file (or mapping), through the public API."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, overload

import yaml

from unitrec.errors import ConfigError, UnitrecWarning
from unitrec.schema import AtlasSpec, ClosedLoopConfig, Config, OutputSpec, ReportSpec, parse

__all__ = ["load_config", "run_config"]

_log = logging.getLogger(__name__)


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first
            except TypeError:  # an unhashable key: the base loader says so
                continue
            if seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first on line {first[key]}); keep one of them",
                    key_node.start_mark)
            first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_config(source: str | os.PathLike | Mapping[str, Any]
                ) -> tuple[Config | ClosedLoopConfig, dict[str, Any], Path]:
    """Read and validate a config; returns (config, raw mapping, folder for relative paths).

    ``kind: visualize`` and ``kind: evolve`` configs are :class:`ClosedLoopConfig`; every
    other (``kind: record``, the default) is a recording's :class:`Config`."""
    if isinstance(source, Mapping):
        raw, base = dict(source), Path.cwd()
    else:
        path = Path(source)
        try:
            with open(path, "rb") as handle:
                hdf5 = handle.read(8) == b"\x89HDF\r\n\x1a\n"
            if hdf5:
                raise ConfigError(f"{path} is an HDF5 file (a recording?), not a YAML config; "
                                  f"`unitrec info {path}` describes it")
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config {path} is not a text file; give a YAML config such as "
                              "configs/demo.yaml") from None
        try:
            raw = yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 (a SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise ConfigError(f"config {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config {path} must be a mapping with keys model, stimuli, layers, output")
        base = path.resolve().parent
    kind = raw.get("kind")
    if kind in ("visualize", "evolve"):
        return parse(ClosedLoopConfig, raw), raw, base
    if kind not in (None, "record"):
        raise ConfigError(f"kind must be record (the default: a recording), visualize or evolve; got {kind!r}")
    return parse(Config, raw), raw, base


@overload
def _resolve(base: Path, value: str) -> Path: ...
@overload
def _resolve(base: Path, value: None) -> None: ...
@overload
def _resolve(base: Path, value: str | None) -> Path | None: ...
def _resolve(base: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    p = Path(os.path.expanduser(value))
    return (p if p.is_absolute() else base / p).resolve()


def run_config(source: str | os.PathLike | Mapping[str, Any], *, overwrite: bool = False,
               progress: bool | None = None, shard: tuple[int, int] | None = None) -> Path:
    """Run the experiment a config describes; returns the path of the recording (or, for
    ``kind: visualize`` / ``kind: evolve``, of the visualisations' or evolution's file).

    Relative paths in the config resolve against the config file's folder. The
    whole config is stored in the file's attributes. `shard` ``(i, n)`` records one
    shard (see :func:`record`); the report, if configured, is written by the shard
    that stitches the output.

    Examples
    --------
    >>> path = ur.run_config("configs/demo.yaml")  # doctest: +SKIP
    """
    from unitrec.anatomy.model import load_model
    from unitrec.anatomy.preprocess import build_transform
    from unitrec.recording.record import record

    cfg, raw, base = load_config(source)
    if isinstance(cfg, ClosedLoopConfig):
        if shard is not None:
            raise ConfigError(f"--shard splits a recording's stimuli; a kind: {cfg.kind} run has none to split")
        return _closed_loop(cfg, raw, base, overwrite, progress)
    out_spec = cfg.output if isinstance(cfg.output, OutputSpec) else OutputSpec(path=cfg.output)
    out = _resolve(base, out_spec.path)
    with check_code(cfg.model.name, cfg.model.allow_code, base):
        model = load_model(cfg.model.name, weights=cfg.model.weights,
                           checkpoint=_resolve(base, cfg.model.checkpoint), seed=cfg.model.seed,
                           kwargs=cfg.model.kwargs)
    stimuli = _stimuli(cfg, base, out)
    asked = {"report.by": cfg.report.by if cfg.report is not None else None,
             "atlas.by": cfg.atlas.by if isinstance(cfg.atlas, AtlasSpec) else None}
    for what, by in asked.items():  # checked now, not after the whole recording
        from unitrec.stimuli.dataset import as_stimulus_set

        coords = sorted(as_stimulus_set(stimuli).coords) if by else []
        if by and by not in coords:
            raise ConfigError(f"{what} {by!r} is not a stimulus coordinate of {stimuli}; it has: "
                              f"{', '.join(coords) or 'none (add a metadata.csv, or class subfolders)'}")
    if cfg.atlas:  # its folder too: refused now, not after the whole recording
        from unitrec.web.build import check_output

        spec = cfg.atlas if isinstance(cfg.atlas, AtlasSpec) else AtlasSpec()
        check_output(_resolve(base, spec.path) if spec.path else None, out)
    transform = None
    if cfg.preprocess is not None or getattr(model, "unitrec_transform", None) is None:
        transform = build_transform(cfg.preprocess)
    rec = cfg.record
    path = record(
        model, stimuli, cfg.layers, out, transform=transform, batch_size=rec.batch_size,
        device=rec.device, num_workers=rec.num_workers, progress=rec.progress if progress is None else progress,
        dtype=rec.dtype, compression=rec.compression, keepbits=rec.keepbits, stop_early=rec.stop_early,
        on_error=cfg.stimuli.on_error, background=cfg.stimuli.background,
        overwrite=overwrite or out_spec.overwrite, shard=shard, config=raw,
        ablate=[s.model_copy(update={"source": str(_resolve(base, s.source))}) if s.source else s
                for s in cfg.ablate or []],  # from: a recording, relative to the config's folder
    )
    if cfg.report is not None and path == out:  # not a shard waiting for the others
        _report(path, cfg.report, _resolve(base, cfg.report.path) if cfg.report.path else path.parent / "report",
                rec.progress if progress is None else progress)
    if cfg.atlas and path == out:
        _atlas(path, cfg.atlas if isinstance(cfg.atlas, AtlasSpec) else AtlasSpec(), base,
               rec.progress if progress is None else progress)
    return path


def _closed_loop(cfg: ClosedLoopConfig, raw: dict[str, Any], base: Path, overwrite: bool,
                 progress: bool | None) -> Path:
    """A ``kind: visualize`` or ``kind: evolve`` config: the synthesis, its file and its figure."""
    from unitrec.anatomy.model import load_model

    out_spec = cfg.output if isinstance(cfg.output, OutputSpec) else OutputSpec(path=cfg.output)
    out = _resolve(base, out_spec.path)
    overwrite = overwrite or out_spec.overwrite
    show = cfg.progress if progress is None else progress
    with check_code(cfg.model.name, cfg.model.allow_code, base):
        model = load_model(cfg.model.name, weights=cfg.model.weights,
                           checkpoint=_resolve(base, cfg.model.checkpoint), seed=cfg.model.seed,
                           kwargs=cfg.model.kwargs)
    ablate = [s.model_copy(update={"source": str(_resolve(base, s.source))}) if s.source else s
              for s in cfg.ablate or []]
    figure = out.with_suffix(".png")
    if cfg.kind == "evolve":
        from unitrec.closedloop.evolve import evolve

        spec = cfg.evolve
        assert spec is not None  # ClosedLoopConfig checks it
        generator = None
        if spec.generator is not None:
            g = spec.generator
            with check_code(g.name, g.allow_code, base):
                generator = load_model(g.name, weights=g.weights, checkpoint=_resolve(base, g.checkpoint),
                                       seed=g.seed, kwargs=g.kwargs)
        extra = {"sigma0": spec.sigma0} if spec.sigma0 is not None else {}
        result = evolve(model, spec.unit, out, generator=generator, code_size=spec.code_size, size=spec.size,
                        generations=spec.generations, population=spec.population, noise=spec.noise,
                        fit_rf=spec.fit_rf, seed=spec.seed, device=spec.device, normalize=spec.normalize,
                        ablate=ablate, progress=show, overwrite=overwrite, **extra)
        _figure(lambda: _plot("plot_evolution", result.path), figure)
        return result.path
    from unitrec.closedloop.gallery import save_visualizations
    from unitrec.closedloop.visualize import visualize

    vspec = cfg.visualize
    assert vspec is not None
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; choose another output, or rerun with --overwrite (overwrite: true)")
    results = [visualize(model, unit, size=vspec.size, steps=vspec.steps, param=vspec.param,
                         decorrelate=vspec.decorrelate, transforms=vspec.transforms, lr=vspec.lr, seed=vspec.seed,
                         device=vspec.device, normalize=vspec.normalize, ablate=ablate, progress=show)
               for unit in vspec.units]
    provenance = {"model": cfg.model.name, "config": yaml.safe_dump(raw, sort_keys=False),
                  **_model_identity(model)}
    path = save_visualizations(results, out, provenance=provenance, overwrite=overwrite)
    _figure(lambda: _plot("plot_visualizations", results), figure)
    return path


def _model_identity(model: Any) -> dict[str, str]:
    from unitrec._version import __version__
    from unitrec.anatomy.fingerprint import anatomy_of
    from unitrec.anatomy.model import state_dict_sha256

    return {"weights_sha256": state_dict_sha256(model), "anatomy_sha256": anatomy_of(model).digest,
            "unitrec_version": __version__}


def _plot(name: str, what: Any) -> Any:
    from unitrec.closedloop import figures

    return getattr(figures, name)(what)


def _figure(draw: Any, path: Path) -> None:
    """Save a figure beside the output; without matplotlib, say how to get it and go on."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        warnings.warn(f"no figure written ({path.name}): matplotlib is missing; pip install 'unitrec[plots]'",
                      UnitrecWarning, stacklevel=3)
        return
    draw().savefig(path, dpi=110)


@contextlib.contextmanager
def check_code(name: str, allow: list[str], base: Path) -> Iterator[None]:
    """Let a config import and call ``module:function`` only from a module beside it, or
    from a package it names in ``model.allow_code``.

    A YAML file alone must not run code: ``name: "os:system"`` would call a shell. A
    module beside the config is code the user put there; a package named in
    ``allow_code`` is a deliberate opt-in. Zoo names (``resnet50``, ``timm:...``) need
    neither. The config's folder comes first on the module path while the model is
    built, and the module imported must be the file found there.
    """
    if ":" not in name or name.startswith("timm:"):
        yield
        return
    module = name.partition(":")[0]
    top = module.split(".")[0]
    allowed = {a.split(".")[0] for a in allow}
    stdlib = getattr(sys, "stdlib_module_names", frozenset()) | {"builtins", "__main__"}
    if top in stdlib:
        raise ConfigError(f"model.name {name!r} names Python's standard library, which holds no model "
                          f"factories; a config never imports and calls it (allow_code cannot allow it)")
    beside = [p for p in (base / f"{top}.py", base / top / "__init__.py") if p.is_file()]
    if top not in allowed and not beside:
        raise ConfigError(
            f"model.name {name!r} would import {module!r} and call {name.partition(':')[2]!r}; a config runs code "
            f"only from a module beside it (no {top}.py or {top}/ in {base}) or from a package it names in "
            f"model.allow_code (allow_code: [{top}]), so that a YAML file alone cannot run a command")
    if top not in allowed:  # allowed because it lies beside the config: import that file, nothing else
        loaded = sys.modules.get(top)
        found = getattr(loaded, "__file__", None)
        if loaded is not None and (found is None or Path(found).resolve() != beside[0].resolve()):
            raise ConfigError(
                f"model.name {name!r}: a module {top!r} is already imported from {found or 'Python itself'}, "
                f"so {beside[0]} would not be the code that runs; rename that file, or name the package in "
                "model.allow_code")
    sys.path.insert(0, str(base))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(base))


def _report(path: Path, spec: ReportSpec, folder: Path, progress: bool) -> None:
    from unitrec.report import write_report

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        warnings.warn("report skipped: figures need matplotlib (pip install 'unitrec[plots]')", UnitrecWarning,
                      stacklevel=3)
        return
    index = write_report(path, folder, by=spec.by, units_per_site=spec.units_per_site, force=spec.force,
                         progress=progress)
    _log.info("report: %s", index)


def _atlas(path: Path, spec: AtlasSpec, base: Path, progress: bool) -> None:
    from unitrec.web import atlas

    index = atlas(path, _resolve(base, spec.path) if spec.path else None,
                  visualizations=[_resolve(base, v) for v in spec.visualizations],
                  evolutions=[_resolve(base, e) for e in spec.evolutions],
                  stimulus_root=_resolve(base, spec.stimulus_root) if spec.stimulus_root else None, by=spec.by,
                  ranks=spec.ranks, max_units=spec.max_units, progress=progress)
    _log.info("atlas: %s", index)


def _stimuli(cfg: Config, base: Path, out: Path) -> Path:
    spec = cfg.stimuli
    if spec.generate is None:
        assert spec.path is not None  # StimuliSpec asks for path or generate
        return _resolve(base, spec.path)
    from unitrec.stimuli import GENERATORS

    folder = _resolve(base, spec.path) if spec.path else out.parent / "stimuli"
    gen = spec.generate
    kwargs = gen.arguments()  # the schema let through only the keys this kind takes
    make = GENERATORS[gen.kind]
    # The set is generated aside, then compared: a folder that already holds exactly it
    # is left untouched, so that runs of one config at once (shards, torchrun ranks, a
    # second run) never delete the images another one is reading. Another set there is
    # replaced (only a set unitrec generated: a folder of the user's own files is
    # refused by the generator, whatever overwrite says), one process at a time.
    from unitrec.files.lock import output_lock

    aside = folder.parent / f".{folder.name}.generating-{os.getpid()}"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        make(aside, overwrite=True, **kwargs)
        with output_lock(folder, wait=True):
            if not _same_files(aside, folder):
                make(folder, overwrite=True, **kwargs)
    except ConfigError as exc:
        raise ConfigError(f"stimuli.generate: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"stimuli.generate: cannot write {folder}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(aside, ignore_errors=True)
    return folder


def _same_files(a: Path, b: Path) -> bool:
    """Both folders hold the same files (names and bytes), hidden ones aside."""
    if not b.is_dir():
        return False
    names = sorted(p.name for p in a.iterdir() if not p.name.startswith("."))
    if names != sorted(p.name for p in b.iterdir() if not p.name.startswith(".")):
        return False
    return all((b / n).is_file() and (a / n).read_bytes() == (b / n).read_bytes() for n in names)
