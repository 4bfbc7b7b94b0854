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
import glob
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unitrec.analysis.experiments._images import geometry
from unitrec.errors import ConfigError, UnitrecWarning
from unitrec.files.lock import output_lock
from unitrec.files.info import recording_info
from unitrec.files.load import stimulus_coords, text_array
from unitrec.files.opening import check_file, open_h5
from unitrec.web import data
from unitrec.web.data import STIMULI_CHUNK, chunks, write_js, write_site, write_stimuli
from unitrec.web.extras import Extra, read_extras, units_of
from unitrec.web.images import network_size, thumbnails, unchanged_stimuli
from unitrec.web.units import SiteUnits, site_units

__all__ = ["atlas", "check_output"]

MARKER = ".unitrec-atlas.json"  # in every atlas folder: what it was built from (and that it may be replaced)
STATIC = Path(__file__).with_name("static")
#: A site kept in full is read whole if its responses fit this many float64 bytes (else on dask blocks).
_IN_MEMORY = 128 * 2**20
MAX_RANKS = 64  # top and bottom stimuli per unit: more would not be looked at on one page
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
        The folder to write (default: ``atlas`` beside the recording; a link is written
        through). It is replaced if it holds an atlas and nothing else; a folder holding
        anything else is refused. One build of a folder at a time: a second waits.
    visualizations, evolutions
        Files of ``kind: visualize`` runs (``.nc``) and of ``ur.evolve`` (``.h5``): their
        images are shown with the units they were made for.
    stimulus_root
        Where the stimulus images are now, when they moved since the recording.
    by
        The stimulus parameter of the tuning curves (default: ``orientation`` or
        ``direction`` where the stimuli have one).
    ranks
        Top and bottom stimuli shown per unit, 0 to 64 (a summary site: at most its ``top:``).
    max_units
        Sites with more units are listed with their anatomy only.
    progress
        One line on stderr per step.

    Returns
    -------
    pathlib.Path
        ``out_dir/index.html``: open it in a browser (no server needed).

    Warns
    -----
    UnitrecWarning
        One per message the atlas shows (stimuli moved, an unfinished recording, a site
        listed without its units, a file of synthesised images left out, ...).

    Raises
    ------
    ConfigError
        A bad argument, or ``out_dir`` holds something other than an atlas.
    RecordingError
        ``path`` is not a unitrec recording.
    """
    for name, value, low, high in (("ranks", ranks, 0, MAX_RANKS), ("max_units", max_units, 1, None)):
        if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low
                or (high is not None and value > high)):
            raise ConfigError(f"{name} must be an integer from {low}" + (f" to {high}" if high else "")
                              + f", got {value!r}")
    visualizations, evolutions = _paths("visualizations", visualizations), _paths("evolutions", evolutions)
    path = Path(check_file(path))
    out = check_output(out_dir, path)
    tell = _Progress(progress)
    info = recording_info(path)
    with output_lock(out, wait=True):  # one build of a folder at a time; what a killed one left goes
        for stale in out.parent.glob(f".{glob.escape(out.name)}.building-*"):
            shutil.rmtree(stale, ignore_errors=True)
        check_output(out, path)  # again: another build may have written it while this one waited
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
        try:
            work.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700: the atlas follows the umask, like its files
            manifest = _build(path, info, work, tell, visualizations=visualizations, evolutions=evolutions,
                              stimulus_root=stimulus_root, by=by, ranks=int(ranks), max_units=int(max_units))
            for name in ("index.html", "atlas.js", "atlas.css"):
                shutil.copyfile(STATIC / name, work / name)
            written = sorted(p.name for p in work.iterdir()) + [MARKER]
            (work / MARKER).write_text(json.dumps({"recording": str(path), "run_id": info.get("run_id"),
                                                   "generated": manifest["generated"], "written": written,
                                                   "unitrec_version": manifest["unitrec_version"]}, indent=1),
                                       encoding="utf-8")
            _swap(work, out)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    for message in manifest["messages"]:  # as warnings: `unitrec: warning: ...` lines on the command line
        warnings.warn(message, UnitrecWarning, stacklevel=2)
    tell.say(f"{out / 'index.html'}")
    return out / "index.html"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def check_output(out_dir: str | os.PathLike | None, recording: Path) -> Path:
    """The atlas's folder (default: ``atlas`` beside the recording; a link: the folder it points
    to), once it is sure to be ours to replace: missing, empty, or an atlas holding nothing but
    what the atlas wrote. Called before a recording too (a config's ``atlas:``)."""
    out = Path(out_dir) if out_dir is not None else recording.parent / "atlas"
    if out.is_symlink():
        out = out.resolve()  # written through: the link keeps pointing at the new atlas
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a folder: choose another output folder for the atlas")
    if out.resolve() == recording.resolve().parent or out.resolve() in recording.resolve().parents:
        raise ConfigError(f"{out} holds the recording: choose another output folder for the atlas")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ConfigError(f"{out} is not empty and holds no unitrec atlas: choose another (or an empty) folder")
        try:
            written = set(json.loads((out / MARKER).read_text(encoding="utf-8"))["written"])
        except (OSError, ValueError, KeyError, TypeError):
            written = {"index.html", "atlas.js", "atlas.css", "data", "thumbs", "images", MARKER}  # an older atlas
        foreign = sorted(p.name for p in out.iterdir() if p.name not in written)
        if foreign:
            raise ConfigError(f"{out} holds files the atlas did not write ({', '.join(foreign[:3])}"
                              f"{', …' if len(foreign) > 3 else ''}): move them, or choose another folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot make the folder {out.parent}: {exc.strerror or exc}") from None
    return out


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
    mapping, why_not = _mapping(coords, rows)
    if mapping == "spike_triggered_average" and any(s.get("keep", "full") != "summary" for s in sites):
        # the maps correlate the responses with every image the recording read: all must be as they
        # were, and their geometry known (checked first: it reads no file)
        if geometry(str(attrs.get("preprocessing", ""))) is None:
            why_not = "the preprocessing cannot be rebuilt, so the images the network saw are unknown"
        else:
            why_not = unchanged_stimuli(attrs, labels, rows, root=stimulus_root, sizes=sizes, digests=digests)
        if why_not is not None:
            why_not = f"no receptive-field maps (spike-triggered averages) of the white noise: {why_not}"
            mapping = None
    if why_not is not None:
        messages.append(why_not)
    input_size = network_size(attrs, labels, rows, root=stimulus_root) if mapping else None

    entries, ranked, matched = [], [np.zeros(0, dtype=np.int64)], set[int]()
    for number, site in enumerate(sites):  # each site written as soon as it is read, then let go
        key = f"s{number:02d}" if len(sites) <= 100 else f"s{number:04d}"
        entry, units = _site(path, site, key, rows, messages, ranks=ranks, by=by, max_units=max_units,
                             mapping=mapping, input_size=input_size, stimulus_root=stimulus_root,
                             whole=_size(site, len(rows)) <= _IN_MEMORY)
        entries.append(entry)
        if units is not None:
            write_site(work, entry, units, _site_extras(entry, units, extras, matched))
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
    write_stimuli(work, labels, thumbs.made, coords)
    manifest = {
        "format": 1,
        "title": f"unitrec atlas: {info.get('model', '')}, {len(rows)} stimuli",
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "unitrec_version": _version(),
        "messages": messages,
        "recording": _provenance(info),
        "stimuli": {"count": int(len(labels)), "recorded": int(len(rows)), "chunk": STIMULI_CHUNK,
                    "n_chunks": chunks(len(labels), STIMULI_CHUNK), "thumbs": bool(thumbs.made.any()),
                    "thumb_size": list(thumbs.thumb_size) if thumbs.thumb_size else None,
                    "input_size": list(thumbs.input_size) if thumbs.input_size else None,
                    "coords": list(coords)},
        "sites": entries,
    }
    write_js(work / "data" / "manifest.js", "manifest", [manifest])
    return manifest


def _version() -> str:
    from unitrec._version import __version__

    return __version__


def _size(site: dict[str, Any], n_rows: int) -> int:
    """Bytes of a site's full responses as float64 (0 for a summary only)."""
    if "stimulus" not in site.get("dims", []):
        return 0
    return int(np.prod(site.get("shape", [0])[1:])) * n_rows * 8


def _stimulus_coords(path: Path) -> dict[str, np.ndarray]:
    """The stimuli's parameters (from their ``metadata.csv``), as numbers or text, per file row."""
    with open_h5(path) as h5:
        return {name: values for name, (_, values) in stimulus_coords(h5).items() if name not in ("stimulus", "done")}


def _site(path: Path, site: dict[str, Any], key: str, rows: np.ndarray, messages: list[str], *, ranks: int,
          by: str | None, max_units: int, mapping: str | None, input_size: tuple[int, int] | None,
          stimulus_root: Any, whole: bool) -> tuple[dict[str, Any], SiteUnits | None]:
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
        "table_chunk": data.TABLE_CHUNK, "n_table_chunks": 0, "detail_chunk": data.DETAIL_CHUNK, "n_detail_chunks": 0,
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
    rf_map = mapping if keep != "summary" else None
    maps = 2 if mapping == "sparse_noise_map" else 1  # on and off, or one spike-triggered average
    h, w = input_size or (256, 256)  # where the input's size is unknown, maps of up to 256 × 256
    if rf_map is not None and n_units * maps * h * w * 8 > _RF_MAP_BYTES:
        size = f"of a {h} × {w} input" if input_size else "of an input of unknown size (up to 256 × 256)"
        messages.append(f"site {site['name']}: no receptive-field maps: those of {n_units:,} units {size} would "
                        f"take {n_units * maps * h * w * 8 / 2**20:,.0f} MiB, more than {_RF_MAP_BYTES // 2**20} MiB "
                        "(record fewer units, e.g. units: center)")
        rf_map = None
    units = site_units(path, site, ranks=ranks, by=by, rows=rows, whole=whole, rf_map=rf_map,
                       stimulus_root=stimulus_root)
    _anatomy(path, site, entry)
    for note in units.notes:
        messages.append(f"site {site['name']}: {note}")
    entry["has_units"] = True
    if units.top.shape[1] < min(ranks, len(rows)):
        messages.append(f"site {site['name']}: its summary keeps {units.top.shape[1]} top and bottom stimuli "
                        f"per unit, so {units.top.shape[1]} are shown, not {ranks}")
    entry["n_units"] = n = len(units.columns["unit"])
    entry["n_table_chunks"] = chunks(n, entry["table_chunk"])
    entry["n_detail_chunks"] = chunks(n, entry["detail_chunk"])
    entry["ranks"] = int(units.top.shape[1])
    entry["rf_center"] = "rf_center_y" in units.columns and "rf_center_x" in units.columns
    entry["columns"] = _columns(units)
    if units.tuning is not None:
        entry["tuning"] = {"by": units.tuning_by, "levels": units.tuning_levels}
    if units.rf_maps is not None:
        entry["rf_map_method"] = rf_map  # the analysis function that made the maps
    return entry, units


def _mapping(coords: dict[str, np.ndarray], rows: np.ndarray) -> tuple[str | None, str | None]:
    """How the recording maps receptive fields: the analysis function for its stimuli, or
    None; and why there are no maps where a set is noise in part.

    Sparse noise (``stimuli.sparse_noise``: squares with their position and polarity) gives
    on and off maps; white noise (``stimuli.white_noise``, every recorded stimulus of it)
    a spike-triggered average.
    """
    if all(c in coords for c in ("square_y", "square_x", "square_size", "polarity")):
        return "sparse_noise_map", None
    if "noise" in coords and len(rows):
        white = int((np.asarray(coords["noise"])[rows].astype(str) == "white").sum())
        if white == len(rows):
            return "spike_triggered_average", None
        if white:
            return None, (f"no receptive-field maps: {white:,} of the {len(rows):,} stimuli recorded are white "
                          "noise, and a spike-triggered average needs every one to be")
    return None, None


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
