"""``run_config``: an experiment from a YAML file (or mapping), through the public API."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, overload

import yaml

from .errors import ConfigError, UnitrecWarning
from .schema import Config, OutputSpec, parse

__all__ = ["load_config", "run_config"]

_log = logging.getLogger(__name__)


def load_config(source: str | os.PathLike | Mapping[str, Any]) -> tuple[Config, dict[str, Any], Path]:
    """Read and validate a config; returns (config, raw mapping, folder for relative paths)."""
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
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise ConfigError(f"config {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config {path} must be a mapping with keys model, stimuli, layers, output")
        base = path.resolve().parent
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
    """Run the experiment a config describes; returns the path of the recording.

    Relative paths in the config resolve against the config file's folder. The
    whole config is stored in the file's attributes. `shard` ``(i, n)`` records one
    shard (see :func:`record`); the report, if configured, is written by the shard
    that stitches the output.

    Examples
    --------
    >>> path = ur.run_config("configs/demo.yaml")  # doctest: +SKIP
    """
    from .model import load_model
    from .preprocess import build_transform
    from .recording import record

    cfg, raw, base = load_config(source)
    out_spec = cfg.output if isinstance(cfg.output, OutputSpec) else OutputSpec(path=cfg.output)
    out = _resolve(base, out_spec.path)
    model = load_model(cfg.model.name, weights=cfg.model.weights,
                       checkpoint=_resolve(base, cfg.model.checkpoint), seed=cfg.model.seed,
                       kwargs=cfg.model.kwargs)
    stimuli = _stimuli(cfg, base, out)
    transform = None
    if cfg.preprocess is not None or getattr(model, "unitrec_transform", None) is None:
        transform = build_transform(cfg.preprocess)
    rec = cfg.record
    path = record(
        model, stimuli, cfg.layers, out, transform=transform, batch_size=rec.batch_size,
        device=rec.device, num_workers=rec.num_workers, progress=rec.progress if progress is None else progress,
        dtype=rec.dtype, compression=rec.compression, stop_early=rec.stop_early,
        on_error=cfg.stimuli.on_error, background=cfg.stimuli.background,
        overwrite=overwrite or out_spec.overwrite, shard=shard, config=raw,
    )
    if cfg.report is not None and path == out:  # not a shard waiting for the others
        _report(path, _resolve(base, cfg.report.path) if cfg.report.path else path.parent / "report")
    return path


def _report(path: Path, folder: Path) -> None:
    from .report import write_report

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        warnings.warn("report skipped: figures need matplotlib (pip install 'unitrec[plots]')", UnitrecWarning,
                      stacklevel=3)
        return
    index = write_report(path, folder)
    _log.info("report: %s", index)


def _stimuli(cfg: Config, base: Path, out: Path) -> Path:
    spec = cfg.stimuli
    if spec.generate is None:
        assert spec.path is not None  # StimuliSpec asks for path or generate
        return _resolve(base, spec.path)
    from .stimuli import GENERATORS

    folder = _resolve(base, spec.path) if spec.path else out.parent / "stimuli"
    gen = spec.generate
    kwargs = gen.arguments()  # the schema let through only the keys this kind takes
    make = GENERATORS[gen.kind]
    # replaces only a set unitrec generated there before; a folder of the user's own
    # files is refused by the generator, whatever overwrite says
    try:
        make(folder, overwrite=True, **kwargs)
    except ConfigError as exc:
        raise ConfigError(f"stimuli.generate: {exc}") from None
    return folder
