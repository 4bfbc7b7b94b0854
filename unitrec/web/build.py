"""``ur.atlas``: a recording as a static web folder that browses every unit.

The folder opens from ``file://`` or any static host: ``index.html``, ``atlas.js`` and
``atlas.css`` (written by the project, in ``unitrec/web/static``), and the data as
JavaScript files that call ``unitrecAtlas.<loader>(...)`` (a page opened from
``file://`` may not ``fetch``, but may add a ``<script>``):

- ``data/manifest.js``: the recording's provenance, the messages, every site's anatomy;
- ``data/stimuli-<k>.js``: stimulus labels and parameters, 10,000 per file;
- ``data/<site key>/table-<k>.js``: the unit table (coordinates, mean, max, lifetime
  sparseness, selectivity), 5,000 units per file, loaded when the site is shown;
- ``data/<site key>/units-<k>.js``: per unit its top and bottom stimuli and responses,
  tuning curve, receptive-field map and synthesised images, 500 units per file,
  loaded when one of its units is shown;
- ``thumbs/<row>.jpg``: each ranked stimulus once, as the network saw it;
- ``images/<site key>/``: receptive-field maps, visualisations, evolutions.

The folder is built beside its place and renamed into it when whole, so a crash
leaves the previous atlas (or none), never half of one. A folder that holds anything
but an atlas is never written into.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unitrec.web.extras import Extra, read_extras, units_of
from unitrec.web.images import rf_map_png, thumbnails
from unitrec.web.units import SiteUnits, site_units
from unitrec.errors import ConfigError
from unitrec.files.info import recording_info
from unitrec.files.load import stimulus_coords, text_array
from unitrec.files.opening import check_file, open_h5

__all__ = ["atlas"]

MARKER = ".unitrec-atlas.json"  # in every atlas folder: what it was built from (and that it may be replaced)
STATIC = Path(__file__).with_name("static")
STIMULI_CHUNK = 10_000
TABLE_CHUNK = 5_000
DETAIL_CHUNK = 500
#: A site kept in full is read whole if its responses fit this many float64 bytes (else on dask blocks).
_IN_MEMORY = 512 * 2**20
_RF_MAP_BYTES = 256 * 2**20  # receptive-field maps of a site: above this, left out (with a note)


def atlas(path: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
          visualizations: Sequence[str | os.PathLike] = (), evolutions: Sequence[str | os.PathLike] = (),
          stimulus_root: str | os.PathLike | None = None, by: str | None = None, ranks: int = 9,
          max_units: int = 200_000, progress: bool = True) -> Path:
    """Write a static web folder to browse every unit of a recording; return its ``index.html``.

    Parameters
    ----------
    path
        A recording (a ``.partial.h5`` of a run in progress gives the stimuli recorded so far).
    out_dir
        The folder to write (default: ``atlas`` beside the recording). It is replaced
        if it holds an atlas; a folder holding anything else is refused.
    visualizations, evolutions
        Files of ``kind: visualize`` runs (``.nc``) and of ``ur.evolve`` (``.h5``): their
        images are shown with the units they were made for.
    stimulus_root
        Where the stimulus images are now, when they moved since the recording.
    by
        The stimulus parameter of the tuning curves (default: ``orientation`` or
        ``direction`` where the stimuli have one).
    ranks
        Top and bottom stimuli shown per unit (at most the summaries' ``top:``).
    max_units
        Sites with more units are listed with their anatomy only.
    progress
        One line on stderr per step.

    Returns
    -------
    pathlib.Path
        ``out_dir/index.html``: open it in a browser (no server needed).

    Raises
    ------
    ConfigError
        A bad argument, or ``out_dir`` holds something other than an atlas.
    RecordingError
        ``path`` is not a unitrec recording.
    """
    for name, value, low in (("ranks", ranks, 0), ("max_units", max_units, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"{name} must be an integer ≥ {low}, got {value!r}")
    visualizations, evolutions = _paths("visualizations", visualizations), _paths("evolutions", evolutions)
    path = Path(check_file(path))
    out = Path(out_dir) if out_dir is not None else path.parent / "atlas"
    _check_out(out, path)
    tell = _Progress(progress)
    info = recording_info(path)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        manifest = _build(path, info, work, tell, visualizations=visualizations, evolutions=evolutions,
                          stimulus_root=stimulus_root, by=by, ranks=int(ranks), max_units=int(max_units))
        for name in ("index.html", "atlas.js", "atlas.css"):
            shutil.copyfile(STATIC / name, work / name)
        (work / MARKER).write_text(json.dumps({"recording": str(path), "run_id": info.get("run_id"),
                                               "generated": manifest["generated"],
                                               "unitrec_version": manifest["unitrec_version"]}, indent=1),
                                   encoding="utf-8")
        _swap(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    for message in manifest["messages"]:
        tell.say(message, always=True)
    tell.say(f"{out / 'index.html'}")
    return out / "index.html"


def _paths(what: str, values: Any) -> list[str]:
    if isinstance(values, (str, os.PathLike)):
        values = [values]
    try:
        items = list(values)
    except TypeError:
        raise ConfigError(f"{what} must be a list of files, got {values!r}") from None
    for v in items:
        if not isinstance(v, (str, os.PathLike)):
            raise ConfigError(f"{what} must be a list of files, got {v!r} in it")
    return [os.fspath(v) for v in items]


def _check_out(out: Path, recording: Path) -> None:
    """Refuse a folder that is not ours to replace."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a folder: choose another output folder for the atlas")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ConfigError(f"{out} is not empty and holds no unitrec atlas: choose another (or an empty) folder")
    if out.resolve() in recording.resolve().parents:
        raise ConfigError(f"{out} holds the recording: choose another output folder for the atlas")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot make the folder {out.parent}: {exc.strerror or exc}") from None


def _swap(work: Path, out: Path) -> None:
    """Put the finished folder in place; the old atlas goes only once the new one is there."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(work, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class _Progress:
    def __init__(self, on: bool) -> None:
        self.on, self.start = on, time.perf_counter()

    def say(self, text: str, *, always: bool = False) -> None:
        if self.on or always:
            print(f"atlas: {text} ({time.perf_counter() - self.start:.1f} s)", file=sys.stderr, flush=True)


def _build(path: Path, info: dict[str, Any], work: Path, tell: _Progress, *, visualizations: list[str],
           evolutions: list[str], stimulus_root: Any, by: str | None, ranks: int, max_units: int) -> dict[str, Any]:
    messages: list[str] = []
    with open_h5(path) as h5:
        labels = text_array(h5["stimulus"][...]) if "stimulus" in h5 else np.zeros(0, dtype=str)
        done = np.asarray(h5["done"][...]) == 1 if "done" in h5 else np.ones(len(labels), dtype=bool)
        sizes = np.asarray(h5["file_size"][...]) if "file_size" in h5 else None
        digests = text_array(h5["file_sha256"][...]) if "file_sha256" in h5 else None
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()}
    rows = np.flatnonzero(done)
    if info.get("status") != "complete":
        messages.append(f"an unfinished recording: {len(rows)} of {len(labels)} stimuli recorded so far; "
                        "the atlas shows those")
    coords = _stimulus_coords(path)
    if by is not None and by not in coords:
        raise ConfigError(f"by={by!r} is not a stimulus parameter of {path.name}; it has: "
                          f"{', '.join(coords) or 'none'}")
    sites = [s for s in info.get("sites", []) if s.get("keep", "full") in ("full", "summary", "both")]
    if not sites:
        messages.append(f"{path.name} holds no site in full and no summary: there are no units to show")
    elif not len(rows):
        messages.append("no stimulus recorded yet: the sites are listed without units")
    extras, extra_messages = read_extras(visualizations, evolutions, str(attrs.get("weights_sha256", "")))
    messages += extra_messages
    square = all(c in coords for c in ("square_y", "square_x", "square_size", "polarity"))

    entries, ranked, matched = [], [np.zeros(0, dtype=np.int64)], set[int]()
    for number, site in enumerate(sites):  # each site written as soon as it is read, then let go
        key = f"s{number:02d}" if len(sites) <= 100 else f"s{number:04d}"
        entry, units = _site(path, site, key, rows, messages, ranks=ranks, by=by, max_units=max_units,
                             square=square, whole=_size(site, len(rows)) <= _IN_MEMORY)
        entries.append(entry)
        if units is not None:
            _write_site(work, entry, units, _site_extras(entry, units, extras, matched))
            ranked += [np.unique(units.top), np.unique(units.bottom)]
        tell.say(f"site {site['name']}: {entry['n_units']} units" + (f" ({entry['note']})" if entry["note"] else ""))
        del units
    for i, extra in enumerate(extras):
        if i not in matched:
            messages.append(f"{extra.kind} of {json.dumps(extra.entry, sort_keys=True)} ({Path(extra.file).name}) "
                            "matches no recorded unit: left out")
    needed = np.unique(np.concatenate(ranked))
    thumbs = thumbnails(attrs, labels, needed[needed >= 0], work / "thumbs", root=stimulus_root, sizes=sizes,
                        digests=digests)
    messages += thumbs.messages
    tell.say(f"{int(thumbs.made.sum())} stimuli thumbnailed")
    _write_stimuli(work, labels, thumbs.made, coords)
    manifest = {
        "format": 1,
        "title": f"unitrec atlas: {info.get('model', '')}, {len(rows)} stimuli",
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "unitrec_version": _version(),
        "messages": messages,
        "recording": _provenance(info),
        "stimuli": {"count": int(len(labels)), "recorded": int(len(rows)), "chunk": STIMULI_CHUNK,
                    "n_chunks": _chunks(len(labels), STIMULI_CHUNK), "thumbs": bool(thumbs.made.any()),
                    "thumb_size": list(thumbs.thumb_size) if thumbs.thumb_size else None,
                    "input_size": list(thumbs.input_size) if thumbs.input_size else None,
                    "coords": list(coords)},
        "sites": entries,
    }
    _write_js(work / "data" / "manifest.js", "manifest", [manifest])
    return manifest


def _version() -> str:
    from unitrec._version import __version__

    return __version__


def _size(site: dict[str, Any], n_rows: int) -> int:
    """Bytes of a site's full responses as float64 (0 for a summary only)."""
    if "stimulus" not in site.get("dims", []):
        return 0
    return int(np.prod(site.get("shape", [0])[1:])) * n_rows * 8


def _chunks(n: int, size: int) -> int:
    return max(0, -(-n // size))


def _stimulus_coords(path: Path) -> dict[str, np.ndarray]:
    """The stimuli's parameters (from their ``metadata.csv``), as numbers or text, per file row."""
    with open_h5(path) as h5:
        return {name: values for name, (_, values) in stimulus_coords(h5).items() if name not in ("stimulus", "done")}


def _site(path: Path, site: dict[str, Any], key: str, rows: np.ndarray, messages: list[str], *, ranks: int,
          by: str | None, max_units: int, square: bool, whole: bool) -> tuple[dict[str, Any], SiteUnits | None]:
    """A site's manifest entry, and its units (None: listed with its anatomy only)."""
    shape = [int(v) for v in site.get("shape", [])]
    keep = site.get("keep", "full")
    unit_shape = shape[1:] if "stimulus" in site.get("dims", []) else shape
    n_units = int(np.prod(unit_shape)) if unit_shape else 1
    dims = [d for d in site.get("dims", []) if d != "stimulus"]
    entry: dict[str, Any] = {
        "key": key, "name": site["name"], "module_type": site.get("module_type", ""), "keep": keep,
        "selection": site.get("selection", ""), "dims": dims, "shape": unit_shape, "n_units": n_units,
        "rf_size": None, "rf_stride": None, "sources": [], "pool": None, "note": "", "has_units": False,
        "table_chunk": TABLE_CHUNK, "n_table_chunks": 0, "detail_chunk": DETAIL_CHUNK, "n_detail_chunks": 0,
        "columns": [], "rf_center": False, "ranks": 0, "tuning": None, "rf_map": False, "extras": False,
        "module_shape": None,
    }
    if n_units > max_units:
        entry["note"] = (f"{n_units:,} units, more than max_units ({max_units:,}): listed without its units "
                         "(record fewer, e.g. units: center, or raise max_units)")
        messages.append(f"site {site['name']}: {entry['note']}")
        _anatomy(path, site, entry)
        return entry, None
    if not len(rows):
        entry["note"] = "no stimulus recorded yet"
        _anatomy(path, site, entry)
        return entry, None
    rf_bytes = n_units * 2 * 256 * 256 * 8  # on and off maps of at most a 256 × 256 input
    units = site_units(path, site, ranks=ranks, by=by, rows=rows, whole=whole,
                       rf_map=square and keep != "summary" and rf_bytes <= _RF_MAP_BYTES)
    _anatomy(path, site, entry)
    for note in units.notes:
        messages.append(f"site {site['name']}: {note}")
    entry["has_units"] = True
    entry["n_units"] = n = len(units.columns["unit"])
    entry["n_table_chunks"], entry["n_detail_chunks"] = _chunks(n, TABLE_CHUNK), _chunks(n, DETAIL_CHUNK)
    entry["ranks"] = int(units.top.shape[1])
    entry["rf_center"] = "rf_center_y" in units.columns and "rf_center_x" in units.columns
    entry["columns"] = _columns(units)
    if units.tuning is not None:
        entry["tuning"] = {"by": units.tuning_by, "levels": units.tuning_levels}
    return entry, units


def _anatomy(path: Path, site: dict[str, Any], entry: dict[str, Any]) -> None:
    """Receptive field, pooling and the ``source`` groups of a concatenation, from the file."""
    with open_h5(path) as h5:
        group = h5[site["name"]]
        a = {**group.attrs, **(group["activation"].attrs if "activation" in group else {})}
        for name in ("rf_size", "rf_stride"):
            value = a.get("rf_size_pooled" if name == "rf_size" and "rf_size_pooled" in a else name)
            if value is not None:
                values = np.asarray(value).reshape(-1)
                entry[name] = [float(v) if not float(v).is_integer() else int(v) for v in values]
        if "site_shape" in a:
            entry["module_shape"] = [int(v) for v in np.asarray(a["site_shape"]).reshape(-1)]
        pool = a.get("pool")
        entry["pool"] = (pool.decode() if isinstance(pool, bytes) else str(pool)) if pool is not None else None
        if "source" in group and "channel" in group:
            source = text_array(group["source"][...])
            channel = np.asarray(group["channel"][...])
            starts = [0, *[i for i in range(1, len(source)) if source[i] != source[i - 1]]]
            entry["sources"] = [{"name": str(source[s]), "start": int(channel[s]),
                                 "stop": int(channel[e - 1]) + 1}
                                for s, e in zip(starts, [*starts[1:], len(source)])]


_LABELS = {"mean": "mean", "max": "max", "sparseness": "lifetime sparseness"}


def _columns(units: SiteUnits) -> list[dict[str, Any]]:
    out = []
    for name, values in units.columns.items():
        if name in ("rf_center_y", "rf_center_x"):
            continue
        kind = ("int" if values.dtype.kind in "iub" else "float" if values.dtype.kind == "f" else "text")
        column: dict[str, Any] = {"name": name, "label": _LABELS.get(name, name), "kind": kind}
        if name == "selectivity":
            if units.selectivity == "peak z":
                column["label"] = "selectivity (peak z)"
                column["title"] = ("how far the best response stands above the mean, in standard deviations "
                                   "of the unit's responses: (max − mean) / std")
            else:
                column["label"] = f"selectivity ({units.selectivity})"
                column["title"] = (f"selectivity index of the tuning curve over {units.selectivity} of the "
                                   "rectified responses, in [0, 1] (analysis.tuning_curves: circular for "
                                   "orientation and direction)")
        if name == "sparseness":
            column["title"] = "Vinje–Gallant lifetime sparseness of the rectified responses (0: dense, 1: one stimulus)"
        out.append(column)
    return out


def _site_extras(entry: dict[str, Any], units: SiteUnits, extras: list[Extra], matched: set) -> dict[int, list]:
    """Per unit, the visualisations and evolutions made for it."""
    out: dict[int, list] = {}
    shape = entry.get("module_shape")
    for i, extra in enumerate(extras):
        for unit in units_of(extra.entry, entry["name"], units.columns, shape):
            out.setdefault(int(unit), []).append((i, extra))
            matched.add(i)
    return out


def _write_site(work: Path, entry: dict[str, Any], units: SiteUnits, site_extras: dict[int, list]) -> None:
    key, n = entry["key"], entry["n_units"]
    folder, images = work / "data" / key, work / "images" / key
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(entry["n_table_chunks"]):
        lo, hi = k * TABLE_CHUNK, min(n, (k + 1) * TABLE_CHUNK)
        columns = {name: _json_values(values[lo:hi], 7) for name, values in units.columns.items()}
        _write_js(folder / f"table-{k}.js", "table", [key, k, {"start": lo, "columns": columns}], raw=True)
    maps, names = None, []
    if units.rf_maps is not None:
        names = [str(p) for p in np.asarray(units.rf_maps["polarity"].values)]
        maps = np.asarray(units.rf_maps.values).reshape(units.rf_maps.sizes["polarity"], n,
                                                       *units.rf_maps.shape[-2:])
        entry["rf_map"] = True
        images.mkdir(parents=True, exist_ok=True)
    if site_extras:
        entry["extras"] = True
        images.mkdir(parents=True, exist_ok=True)
    written: dict[int, str] = {}
    for k in range(entry["n_detail_chunks"]):
        lo, hi = k * DETAIL_CHUNK, min(n, (k + 1) * DETAIL_CHUNK)
        detail: dict[str, Any] = {
            "start": lo,
            "top": _json_values(units.top[lo:hi]), "top_response": _json_values(units.top_response[lo:hi]),
            "bottom": _json_values(units.bottom[lo:hi]),
            "bottom_response": _json_values(units.bottom_response[lo:hi])}
        if units.tuning is not None and units.tuning_sem is not None:
            detail["tuning"] = _json_values(units.tuning[lo:hi], 7)
            detail["tuning_sem"] = _json_values(units.tuning_sem[lo:hi], 7)
        if maps is not None:
            paths = []
            size = entry["rf_size"]
            for u in range(lo, hi):
                box = None
                if entry["rf_center"] and size:
                    box = (float(units.columns["rf_center_y"][u]), float(units.columns["rf_center_x"][u]),
                           float(size[0]), float(size[-1]))
                name = f"rf-{u}.png"
                rf_map_png(maps[:, u], names, images / name, box)
                paths.append(f"images/{key}/{name}")
            detail["rf_map"] = json.dumps(paths)
            entry["rf_map_polarities"] = names  # the maps side by side, left to right
        if site_extras:
            lists = []
            for u in range(lo, hi):
                shown = []
                for i, extra in site_extras.get(u, []):
                    if i not in written:
                        written[i] = f"images/{key}/{extra.kind}-{i}.png"
                        _save_png(extra.image, work / written[i])
                    shown.append({"kind": extra.kind, "image": written[i], "title": extra.title,
                                  "score": extra.score if np.isfinite(extra.score) else None, "file": extra.file})
                lists.append(shown)
            detail["extras"] = json.dumps(lists)
        _write_js(folder / f"units-{k}.js", "units", [key, k, detail], raw=True)


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(image)).save(path)


def _write_stimuli(work: Path, labels: np.ndarray, made: np.ndarray, coords: dict[str, np.ndarray]) -> None:
    for k in range(_chunks(len(labels), STIMULI_CHUNK)):
        lo, hi = k * STIMULI_CHUNK, min(len(labels), (k + 1) * STIMULI_CHUNK)
        body = {"start": lo, "labels": json.dumps([str(v) for v in labels[lo:hi]], ensure_ascii=False),
                "thumb": json.dumps([bool(v) for v in made[lo:hi]]),
                "coords": {name: _json_values(values[lo:hi]) for name, values in coords.items()}}
        _write_js(work / "data" / f"stimuli-{k}.js", "stimuli", [k, body], raw=True)


def _json_values(values: np.ndarray, digits: int = 9) -> str:
    """JSON text of an array (any shape) of numbers or text; NaN as null; floats rounded to
    ``digits`` significant digits (9 give a float32 back exactly; 7 are as many as it holds)."""
    values = np.asarray(values)
    if values.dtype.kind in "iub":
        return json.dumps(values.astype(np.int64).tolist())
    if values.dtype.kind == "f":
        x = values.astype(np.float64)
        finite = np.isfinite(x)
        with np.errstate(all="ignore"):
            scale = 10.0 ** (digits - 1 - np.floor(np.log10(np.abs(np.where(finite & (x != 0), x, 1.0)))))
            rounded = np.where(finite, np.round(x * scale) / scale, 0.0)
        if finite.all():
            return json.dumps(rounded.tolist())
        items = rounded.astype(object)
        items[~finite] = None
        return json.dumps(items.tolist())
    return json.dumps(np.asarray(values, dtype=str).tolist(), ensure_ascii=False)


def _write_js(path: Path, loader: str, args: list[Any], *, raw: bool = False) -> None:
    """``unitrecAtlas.<loader>(arg, ...);`` — dict values that are already JSON text go in as they are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [_raw_json(a) if raw and isinstance(a, dict) else json.dumps(a, ensure_ascii=False, allow_nan=False)
             for a in args]
    text = f"unitrecAtlas.{loader}({', '.join(parts)});\n"
    path.write_text(text.replace("</", "<\\/"), encoding="utf-8")  # no "</script>" inside a script


def _raw_json(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_raw_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return value  # already JSON
    return json.dumps(value, allow_nan=False)


def _provenance(info: dict[str, Any]) -> dict[str, Any]:
    keep = ("file", "status", "run_id", "model", "model_description", "weights", "checkpoint", "weights_sha256",
            "preprocessing", "stimuli", "stimulus_root", "stimulus_set_sha256", "created", "finished",
            "finished_by", "unitrec_version", "n_stimuli", "n_recorded", "n_skipped", "config")
    out = {k: info[k] for k in keep if k in info and info[k] not in (None, "")}
    try:
        out["library_versions"] = json.loads(info.get("library_versions") or "{}")
    except ValueError:
        pass
    return json.loads(json.dumps(out, default=str))
