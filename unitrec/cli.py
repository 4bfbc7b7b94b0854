"""The ``unitrec`` command: a thin layer over the public API.

Errors a user can cause print as one or two lines on stderr (no traceback) and
exit with status 1; an interrupted run says how to resume.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

from unitrec._text import human_size as _size

__all__ = ["main"]


def _rows_by_cols(values) -> str:
    """A receptive-field size or stride: ``7`` when square, ``159×255`` (rows × columns) if not."""
    if values is None or len(values) == 0:
        return "-"
    parts = [f"{v:g}" for v in values]
    return parts[0] if len(set(parts)) == 1 else "×".join(parts)


def _cmd_run(args: argparse.Namespace) -> int:
    import unitrec as ur

    from unitrec.files.shards import parse_shard

    shard = parse_shard(args.shard) if args.shard is not None else None
    started = datetime.datetime.now(datetime.timezone.utc)
    start = time.perf_counter()
    path = ur.run_config(args.config, overwrite=args.overwrite, progress=False if args.no_progress else None,
                         shard=shard)
    _print_summary(path, time.perf_counter() - start, started)
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    import unitrec as ur
    from unitrec.files.info import recording_info

    path = ur.merge(args.out, copy=args.copy, overwrite=args.overwrite)
    info = recording_info(path)
    how = ("a self-contained copy" if args.copy else
           f"virtual datasets over {Path(info['shards'][0]['file']).parent}/, {_size(info['shards_size'])}")
    print(f"stitched {len(info['shards'])} shards → {path} ({_size(info['file_size'])}; {how}): "
          f"{info['n_recorded']} of {info['n_stimuli']} stimuli recorded")
    return 0


def _print_synthesis(path: Path, seconds: float, started: datetime.datetime) -> bool:
    """The summary of a ``kind: evolve`` / ``kind: visualize`` run; False for a recording."""
    import h5py

    with h5py.File(path, "r") as h5:
        kind = h5.attrs.get("kind")
        kind = kind.decode() if isinstance(kind, bytes) else kind
        finished = h5.attrs.get("finished")
        finished = finished.decode() if isinstance(finished, bytes) else finished
        # finished before this run began: the stored result, nothing was run
        if kind == "unitrec evolution" and finished and datetime.datetime.fromisoformat(str(finished)) < started:
            print(f"{path} already holds this evolution, finished {str(h5.attrs.get('finished', ''))[:19]}: "
                  "nothing was run (overwrite: true, or --overwrite, evolves it again)")
            return True
        if kind == "unitrec evolution":
            import numpy as np

            clean = h5["clean_scores"][...]
            done = int(h5["done"][...].sum())
            best = np.unravel_index(np.nanargmax(clean), clean.shape)
            print(f"evolved {done} generations of {clean.shape[1]} images in {seconds:.1f} s → {path}: best score "
                  f"{clean[best]:.4g} (generation {best[0]}); figure {path.with_suffix('.png').name}")
            return True
        if kind == "unitrec visualizations":
            n = h5["image"].shape[0]
            print(f"visualised {n} unit{'s' * (n != 1)} in {seconds:.1f} s → {path}; figure "
                  f"{path.with_suffix('.png').name}")
            return True
    return False


def _print_summary(path: Path, seconds: float, started: datetime.datetime) -> None:
    from unitrec.files.info import recording_info

    if _print_synthesis(Path(path), seconds, started):
        return
    info = recording_info(path)
    if "shard" in info:  # a shard whose siblings are not all finished yet
        part = info["shard"]
        out = Path(path).parent.with_suffix("")  # <out>.shards/00001-of-00003.h5 → <out>
        print(f"shard {part['index']}/{part['count']} (rows {part['rows'][0]}-{part['rows'][1]} of {part['of']}) "
              f"is recorded in {path}; {out} is stitched when every shard is (by the last one to finish, or "
              f"by `unitrec merge {out}`)")
        return
    finished = info.get("finished")
    from unitrec.files.disk import finisher

    by = info.get("finished_by")
    if by is not None and by != finisher() and "shards" in info:
        print(f"{path} was stitched by another process (a shard that finished at the same time, or an earlier "
              f"run): {info['n_recorded']} of {info['n_stimuli']} stimuli, finished {str(finished)[:19]}")
        return
    if (finished and datetime.datetime.fromisoformat(finished) < started) or (by is not None and by != finisher()):
        print(f"nothing to record: {path} already holds this job's finished recording "
              f"({info['n_recorded']} of {info['n_stimuli']} stimuli, finished {str(finished)[:19]}); "
              "--overwrite records it again")
        return
    print(f"\nrecorded {info['n_recorded']} of {info['n_stimuli']} stimuli"
          + (f" ({info['n_skipped']} skipped, listed in the file)" if info["n_skipped"] else "")
          + f" → {path} ({_size(info['file_size'])})")
    if "shards" in info:
        print(f"stitched from {len(info['shards'])} shards ({_stitching(info)})")
    print(f"model: {info.get('model')} — {info.get('model_description')}")
    for site in info["sites"]:
        dims = ", ".join(f"{d}={n}" for d, n in zip(site["dims"], site["shape"]))
        print(f"  {site['name']:<28} ({dims})  {site.get('selection', '')}{_kept(site)}")
    rate = info.get("last_run_images_per_second")
    if rate:
        print(f"{rate:.1f} images/s (this run: {info.get('last_run_seconds', 0):.1f} s; wall time "
              f"including model set-up {seconds:.1f} s)")


def _reader_notes(info: dict) -> list[str]:
    """What other programs need to read this file's storage (the reader table of docs/user-guide/the-file.md)."""
    notes = []
    if any(site.get("dtype") == "float16" for site in info["sites"]):
        notes.append("note: float16 data: netCDF-C readers (netCDF4-python, xarray engine='netcdf4', ncdump) "
                     "crash on it; read it with unitrec, h5py or xarray engine='h5netcdf'")
    if any(site.get("compression") == "zstd" for site in info["sites"]):
        notes.append("note: zstd-compressed: h5py/xarray need `import hdf5plugin`, other HDF5 programs "
                     "HDF5_PLUGIN_PATH=$(python -c 'import hdf5plugin; print(hdf5plugin.PLUGIN_PATH)')")
    return notes


def _kept(site: dict) -> str:
    """What a summary site holds, for the site lines of `info` and of a run's report."""
    if site.get("keep", "full") == "full":
        return ""
    what = "summary" if site["keep"] == "summary" else "+ summary"
    return f"  {what} of {site['summary_of']} stimuli (top/bottom {site['top']})"


def _stitching(info: dict) -> str:
    if info.get("stitched") == "copy":
        return "copied into this file"
    folder = Path(info["shards"][0]["file"]).parent
    return f"virtual: activations read from {folder}/, {_size(info['shards_size'])}"


def _cmd_layers(args: argparse.Namespace) -> int:
    import unitrec as ur
    from unitrec.anatomy.layers import stages
    from unitrec.anatomy.sites import trace_example
    import torch

    if args.input_size is not None and args.input_size < 1:
        from unitrec.errors import ConfigError

        raise ConfigError(f"--input-size must be a positive number of pixels, got {args.input_size}")
    model = ur.load_model(args.model, weights=args.weights, checkpoint=args.checkpoint)
    size = (3, args.input_size, args.input_size) if args.input_size else getattr(model, "unitrec_input_size",
                                                                                   (3, 224, 224))
    trace = trace_example(model, torch.randn(1, *size, generator=torch.Generator().manual_seed(0)), every=True)
    rows = ur.list_layers(model, size, trace=trace)
    if args.stages:
        keep = set(stages(model, trace))
        rows = [r for r in rows if r.name in keep]
    if args.grep:
        rows = [r for r in rows if args.grep.lower() in r.name.lower()]
    if args.json:
        print(json.dumps([r.__dict__ | {"provenance": r.provenance} for r in rows], default=list, indent=1))
        return 0
    header = ("site", "type", "output", "units", "calls", "rf size", "rf stride", "pooled rf", "channels")
    table = [header]
    for r in rows:
        shape = "×".join(map(str, r.output_shape)) if r.output_shape is not None else "-"
        table.append((r.name, r.type, shape, str(r.units), str(r.calls), _rows_by_cols(r.rf_size),
                      _rows_by_cols(r.rf_stride), _rows_by_cols(r.rf_size_pooled), r.provenance))
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    print(f"\n{len(rows)} sites of {args.model} at input {size}. Sites called more than once per "
          "forward are indexed (name:k); add @input to record what enters a module. rf size: the field "
          "of one position; pooled rf: of a unit pooled over the whole map (pool: mean | max).")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from unitrec.files.opening import damage_is_one_line

    with damage_is_one_line(args.file):  # a garbled attribute (JSON, a type) of a damaged file: one line
        return _print_info(args)


def _synthesis_info(path: str) -> dict[str, Any] | None:
    """What an evolution or visualisation file holds, for `unitrec info`; None for anything else."""
    import h5py

    try:
        h5 = h5py.File(path, "r")
    except OSError:
        return None  # recording_info says what the file is
    with h5:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()}
        if attrs.get("kind") == "unitrec evolution":
            import numpy as np

            done = h5["done"][...].astype(bool)
            clean = h5["clean_scores"][...][done]
            attrs["generations_done"] = f"{int(done.sum())} of {len(done)}"
            if clean.size:
                g, i = np.unravel_index(np.nanargmax(clean), clean.shape)
                attrs["best_clean_score"] = f"{clean[g, i]:.6g} (generation {int(np.flatnonzero(done)[g])})"
        elif attrs.get("kind") == "unitrec visualizations":
            attrs["units"] = int(h5["image"].shape[0])
        else:
            return None
    attrs.pop("anatomy", None)  # the packed per-module description: long, and in the key's digest
    return {"file": os.path.abspath(path), "file_size": os.path.getsize(path), **attrs}


def _print_info(args: argparse.Namespace) -> int:
    from unitrec.files.info import recording_info

    synthesis = _synthesis_info(args.file) if os.path.isfile(args.file) else None
    if synthesis is not None:
        if args.json:
            print(json.dumps(synthesis, default=str, indent=1))
            return 0
        keys = ("kind", "status", "generations_done", "best_clean_score", "units", "model", "weights_sha256",
                "objective", "arguments", "settings", "optimizer", "unitrec_version", "created", "finished")
        print(f"{'file:':<18}{synthesis['file']} ({_size(synthesis['file_size'])})")
        for key in keys:
            if key in synthesis:
                print(f"{key.replace('_', ' ') + ':':<18}{str(synthesis[key])[:300]}")
        return 0
    info = recording_info(args.file)
    if args.json:
        print(json.dumps(info, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o), indent=1))
        return 0
    print(f"file:          {info['file']} ({_size(info['file_size'])})")
    print(f"status:        {info.get('status')}  ({info['n_recorded']} of {info['n_stimuli']} stimuli recorded"
          f"{', %d skipped' % info['n_skipped'] if info['n_skipped'] else ''})")
    if "shards" in info:
        print(f"sharded:       {len(info['shards'])} shards, {_stitching(info)}")
    if "shard" in info:
        part = info["shard"]
        print(f"shard:         {part['index']} of {part['count']} (rows {part['rows'][0]}-{part['rows'][1]} of "
              f"{part['of']}, batches of {part['batch_size']})")
    print(f"model:         {info.get('model')} — {info.get('model_description')}")
    weights = f"checkpoint {info['checkpoint']}" if info.get("checkpoint") else info.get("weights")
    print(f"weights:       {weights} (state_dict sha256 {info.get('weights_sha256')})")
    print(f"preprocessing: {info.get('preprocessing')}")
    print(f"stimuli:       {info.get('stimuli')} (sha256 {str(info.get('stimulus_set_sha256'))[:16]}…)")
    versions = json.loads(info.get("library_versions", "{}"))
    print(f"made with:     unitrec {info.get('unitrec_version')}, torch {versions.get('torch')}, "
          f"created {info.get('created')}, run id {info.get('run_id')}")
    print("sites:")
    for site in info["sites"]:
        dims = ", ".join(f"{d}={n}" for d, n in zip(site["dims"], site["shape"]))
        rf = f"  rf {_rows_by_cols(site['rf_size'].tolist())} px" if "rf_size" in site else ""
        if "rf_size_pooled" in site:
            rf += f" (pooled over the map: {_rows_by_cols(site['rf_size_pooled'].tolist())} px)"
        stored = site["dtype"] + (f", {site['compression']}" if site.get("compression") else "") + \
            (f", keepbits {site['keepbits']}" if site.get("keepbits") else "")
        print(f"  {site['name']:<28} {site.get('module_type', ''):<18} ({dims}) {stored}{rf}{_kept(site)}")
    print(*_reader_notes(info), sep="\n", end="\n" if _reader_notes(info) else "")
    for reason in info["skipped"][:10]:
        print(f"skipped: {reason}")
    if len(info["skipped"]) > 10:
        print(f"... and {len(info['skipped']) - 10} more skipped (unitrec info --json lists all)")
    if not args.no_config:
        print("config:\n  " + info.get("config", "").rstrip().replace("\n", "\n  "))
    return 0


def _cmd_stimuli(args: argparse.Namespace) -> int:
    from unitrec.errors import ConfigError
    from unitrec.schema import GENERATOR_KEYS
    from unitrec.stimuli import GENERATORS, generate
    from unitrec.stimuli.folder import METADATA

    kind = args.kind.replace("-", "_")
    kwargs = {"size": args.size, "overwrite": args.overwrite}
    for name in dict.fromkeys(n for names in GENERATOR_KEYS.values() for n in names):
        if getattr(args, name) is None:
            continue
        if name not in GENERATOR_KEYS[kind]:
            takes = [k.replace("_", "-") for k, names in GENERATOR_KEYS.items() if name in names]
            raise ConfigError(f"--{name.replace('_', '-')} is for {' and '.join(takes)}, not {args.kind}")
        kwargs["kind" if name == "distribution" else name] = getattr(args, name)
    out = GENERATORS[kind](args.out_dir, **kwargs)
    if kind == "protocols":
        import csv

        with open(Path(out) / METADATA, newline="", encoding="utf-8") as handle:
            protocols = [row["protocol"] for row in csv.DictReader(handle)]
        counts = ", ".join(f"{name} {protocols.count(name)}" for name in generate.PROTOCOLS)
        print(f"wrote {len(protocols)} gratings of the protocols ({counts}) and metadata.csv to {out}")
        return 0
    n = sum(1 for p in Path(out).iterdir() if p.suffix == ".png")
    print(f"wrote {n} {args.kind} images and metadata.csv to {out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from unitrec.report import write_report

    index = write_report(args.file, args.out_dir, by=args.by, units_per_site=args.units_per_site, force=args.force,
                         progress=not args.no_progress)
    print(f"report: {index}")
    return 0


def _cmd_atlas(args: argparse.Namespace) -> int:
    from unitrec.web import atlas

    options = {k: getattr(args, k) for k in ("visualizations", "evolutions", "stimulus_root", "by", "ranks")}
    print(f"atlas: {atlas(args.file, args.out, **options, max_units=args.max_units, progress=not args.no_progress)}")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from unitrec.schema import json_schema

    print(json.dumps(json_schema(), indent=1))
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    """Write the example configs (the package's copy of the repository's configs/) into a folder."""
    import shlex
    from importlib.resources import files

    from unitrec.errors import UnitrecError

    folder = Path(args.dir)
    configs = sorted((c for c in files("unitrec._configs").iterdir() if c.name.endswith(".yaml")),
                     key=lambda c: (c.name != "demo.yaml", c.name))
    targets = [folder / c.name for c in configs]
    there = [t for t in targets if t.exists()]
    if there and not args.force:
        raise UnitrecError(f"{', '.join(map(str, there))} already exist{'s' * (len(there) == 1)}; "
                           "nothing written (--force overwrites them)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for config, target in zip(configs, targets):
            # written for configs/ in a clone, with outputs in the clone's runs/: here, DIR/runs/
            target.write_text(config.read_text(encoding="utf-8").replace("../runs/", "runs/"), encoding="utf-8")
    except OSError as exc:
        raise UnitrecError(f"cannot write the configs into {folder}: {exc.strerror or exc}") from None
    print(f"wrote {len(targets)} example configs (outputs go to {folder / 'runs'}/):")
    for target in targets:
        print(f"  {target}{'  (overwritten)' if target in there else ''}")
    print(f"next: unitrec run {shlex.quote(str(folder / 'demo.yaml'))}")
    return 0


def _parser() -> argparse.ArgumentParser:
    from unitrec._version import __version__

    p = argparse.ArgumentParser(
        prog="unitrec",
        description="In-silico electrophysiology: record units of PyTorch vision models to HDF5.",
        epilog="Start with: unitrec init DIR, then unitrec run DIR/demo.yaml. Docs: docs/ in a clone or the sdist (a site: mkdocs build)",
    )
    p.add_argument("--version", action="version", version=f"unitrec {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    init = sub.add_parser("init", help="write the example configs (demo, V1 protocols, evolve, visualize) into DIR",
                          description="Write the example configs into DIR, with their outputs in DIR/runs/; "
                                      "then `unitrec run DIR/demo.yaml`.")
    init.add_argument("dir", metavar="DIR", help="folder to write them into (created if missing)")
    init.add_argument("--force", action="store_true", help="overwrite configs of the same names in DIR")
    init.set_defaults(func=_cmd_init)

    run = sub.add_parser("run", help="run an experiment config (YAML): record, then report if asked",
                         description="Record the sites a YAML config lists. Rerunning the same config "
                                     "resumes an interrupted run.")
    run.add_argument("config", help="path of the YAML config, e.g. configs/demo.yaml")
    run.add_argument("--overwrite", action="store_true", help="start over even if the output exists or an "
                                                             "unfinished run of another config does")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--shard", default=None, metavar="I/N",
                     help="record only shard I of N (from 0) into <output>.shards/; the last shard to finish "
                          "stitches the output (under torchrun each process is its RANK/WORLD_SIZE already)")
    run.set_defaults(func=_cmd_run)

    merge = sub.add_parser("merge", help="stitch the shards of a sharded recording into one file",
                           description="Stitch <OUT>.shards/*-of-*.h5 into OUT: virtual datasets over the "
                                       "shards (nothing copied), or with --copy one self-contained file. Refuses "
                                       "shards that are missing, unfinished or from another job.")
    merge.add_argument("out", help="the output the shards were recorded for, e.g. runs/x/activations.h5")
    merge.add_argument("--copy", action="store_true", help="copy the activations into OUT (self-contained)")
    merge.add_argument("--overwrite", action="store_true", help="replace an OUT that is not a stitch of these shards "
                                                               "(kept whole until the new one is written)")
    merge.set_defaults(func=_cmd_merge)

    layers = sub.add_parser("layers", help="list every recording site of a model",
                            description="List recording sites: type, output shape, units, calls per "
                                        "forward, receptive field, channel provenance of concatenations.")
    layers.add_argument("model", help="torchvision name (resnet50, densenet121, ...), timm:NAME "
                                      "(timm:inception_resnet_v2, ...) or package.module:factory")
    layers.add_argument("--input-size", type=int, help="input height = width (default: a timm model's own, else 224)")
    for flag, what in (("weights", "weights enum name (default: random init)"), ("checkpoint", "local state_dict file")):
        layers.add_argument(f"--{flag}", help=what)
    layers.add_argument("--stages", action="store_true", help="only the classic stages (blocks, pools, fc)")
    layers.add_argument("--grep", default=None, metavar="TEXT", help="only sites whose name contains TEXT (any case)")
    layers.add_argument("--json", action="store_true", help="machine-readable output")
    layers.set_defaults(func=_cmd_layers)

    info = sub.add_parser("info", help="describe a recording: model, weights, sites, status",
                          description="Print the provenance and contents of a recording file.")
    info.add_argument("file", help="a .h5 recording (or its .partial.h5)")
    info.add_argument("--no-config", action="store_true", help="leave out the stored config")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_cmd_info)

    stim = sub.add_parser("stimuli", help="generate stimuli (gratings, gabors, protocols, sparse/white noise) with metadata.csv",
                          description="Write a parametric stimulus set and its metadata.csv; the columns "
                                      "become coordinates of every recording of that folder. `protocols` writes "
                                      "the grating protocols (phase, size, contrast) that "
                                      "unitrec.analysis analyses.")
    stim.add_argument("kind", choices=["gratings", "gabors", "protocols", "sparse-noise", "white-noise"])
    stim.add_argument("out_dir", help="folder to write (must be empty unless --overwrite)")
    stim.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    stim.add_argument("--orientations", type=float, nargs="+", help="degrees")
    stim.add_argument("--spatial-frequencies", type=float, nargs="+", help="cycles per image")
    stim.add_argument("--phases", type=float, nargs="+", help="degrees")
    stim.add_argument("--contrasts", type=float, nargs="+", help="Michelson contrast in (0, 1]")
    stim.add_argument("--sigmas", type=float, nargs="+", help="gabors only: envelope widths")
    stim.add_argument("--apertures", type=float, nargs="+", metavar="D",
                      help="gratings only: draw each grating in circular apertures of these diameters (pixels) "
                           "instead of full field")
    stim.add_argument("--aperture-center", type=float, nargs=2, metavar=("ROW", "COL"),
                      help="gratings and protocols: aperture centre in pixels (default: the image centre)")
    stim.add_argument("--size-spatial-frequencies", type=float, nargs="+", metavar="F",
                      help="protocols only: cycles per image of the size protocol")
    stim.add_argument("--diameters", type=float, nargs="+", metavar="D",
                      help="protocols only: aperture diameters of the size protocol (pixels)")
    stim.add_argument("--contrast-spatial-frequencies", type=float, nargs="+", metavar="F",
                      help="protocols only: cycles per image of the contrast protocol")
    stim.add_argument("--grid", type=int, metavar="PX",
                      help="sparse-noise only: side of each square in pixels, dividing --size (default size/16)")
    stim.add_argument("--polarities", nargs="+", choices=["on", "off"],
                      help="sparse-noise only: bright (on) and/or dark (off) squares (default both)")
    stim.add_argument("--contrast", type=float,
                      help="sparse-noise and white-noise: contrast of the squares / of the noise (default 1)")
    stim.add_argument("--repeats", type=int, help="sparse-noise only: copies of every square (default 1)")
    stim.add_argument("--n", type=int, help="white-noise only: number of images (default 2000)")
    stim.add_argument("--block", type=int, metavar="PX",
                      help="white-noise only: pixels per noise element (default 1)")
    stim.add_argument("--seed", type=int, help="white-noise only: image i is drawn from (seed, i) (default 0)")
    stim.add_argument("--distribution", choices=["binary", "gaussian"],
                      help="white-noise only: binary (default) or Gaussian pixels")
    stim.add_argument("--overwrite", action="store_true")
    stim.set_defaults(func=_cmd_stimuli)

    report = sub.add_parser("report", help="figures of a recording (PNG + HTML index)",
                            description="Tuning curves, RDMs, layer similarity and preferred stimuli.")
    report.add_argument("file", help="a .h5 recording")
    report.add_argument("out_dir", help="folder for the figures and index.html")
    report.add_argument("--by", help="stimulus coordinate for tuning curves (default: orientation if present)")
    report.add_argument("--units-per-site", type=int, default=8, metavar="N", help="tuning curves per site (default 8)")
    report.add_argument("--force", action="store_true", help="write the report even if OUT_DIR holds the report of "
                                                            "this recording with these options")
    report.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    report.set_defaults(func=_cmd_report)

    at = sub.add_parser("atlas", help="a static web page to browse every unit of a recording",
                        description="A folder (index.html, data, thumbnails) to browse every recorded unit; it opens "
                                    "from file://, no server needed.")
    at.add_argument("file", help="a .h5 recording")
    at.add_argument("-o", "--out", metavar="DIR", help="folder to write (default: atlas/ beside the recording)")
    for flag, what in (("visualizations", "kind: visualize"), ("evolutions", "ur.evolve / kind: evolve")):
        at.add_argument(f"--{flag}", nargs="+", default=[], metavar="FILE", help=f"files of {what} runs to show")
    at.add_argument("--stimulus-root", metavar="DIR", help="where the stimulus images are now, if they moved")
    at.add_argument("--by", help="stimulus parameter of the tuning curves (default: orientation or direction)")
    at.add_argument("--ranks", type=int, default=9, metavar="N", help="top and bottom stimuli per unit (default 9)")
    at.add_argument("--max-units", type=int, default=200_000, metavar="N",
                    help="sites with more units are listed without them (default 200000)")
    at.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    at.set_defaults(func=_cmd_atlas)

    schema = sub.add_parser("schema", help="print the config's JSON Schema (for YAML editors)",
                            description="The JSON Schema of a config file, generated from the schema that validates "
                                        "it: point a YAML editor at it (e.g. `# yaml-language-server: $schema=…`).")
    schema.set_defaults(func=_cmd_schema)
    return p


def _one_line_warnings(show):
    """unitrec's own warnings as ``unitrec: warning: ...`` lines; others as Python prints them."""
    from unitrec.errors import UnitrecWarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UnitrecWarning):
            print(f"unitrec: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


def _log_to_stdout() -> None:
    """unitrec's own messages (``logging``, level INFO) on stdout, as plain lines."""
    import logging

    class Stdout(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            print(self.format(record), file=sys.stdout)  # today's sys.stdout, also when it was replaced

    logger = logging.getLogger("unitrec")
    if not any(type(h).__name__ == "Stdout" for h in logger.handlers):
        logger.addHandler(Stdout())
    logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``unitrec`` and ``python -m unitrec``."""
    from unitrec.errors import UnitrecError

    args = _parser().parse_args(argv)
    _log_to_stdout()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            return args.func(args)
    except UnitrecError as exc:
        print(f"unitrec: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nunitrec: interrupted; " + ("the atlas folder was left as it was" if args.command == "atlas" else
                                            "rerun the same command to resume where it stopped"), file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
