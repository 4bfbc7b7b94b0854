"""Is this file this job's? The checks before a file is continued or accepted as done.

A rerun continues a partial file, and accepts a finished one, only when the run key
(model, weights, anatomy, preprocessing, sites, stimuli, coordinates, numerics) is the
same and no recorded image file has changed since; a refusal names what differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from unitrec._text import shorten, text_of, where_they_differ
from unitrec.errors import RecordingError
from unitrec.files.disk import open_existing
from unitrec.files.layout import DONE, FORMAT_VERSION
from unitrec.files.stitch import changed_sources, missing_sources
from unitrec.stimuli.decode import file_sha256

__all__ = ["check_finished", "check_run_key", "check_stimulus_files", "coordinate_diff"]


def check_run_key(h5: h5py.File, run_key: dict[str, Any], path: Path, labels: list[str] | None = None,
                  message: str = "{path} was recorded by another job; it differs in {what}",
                  coords: dict[str, np.ndarray] | None = None) -> None:
    """Refuse to continue (or to accept) a file made by a different job, saying what differs."""
    if h5.attrs.get("format_version") != FORMAT_VERSION:
        raise RecordingError(f"{path} was written by another version of unitrec (file format "
                             f"{h5.attrs.get('format_version', '?')}, this one writes {FORMAT_VERSION}); "
                             "rerun with --overwrite (overwrite=True) to record it again")
    stored = json.loads(h5.attrs.get("run_key", "{}"))
    differ = [k for k in sorted(set(stored) | set(run_key)) if stored.get(k) != run_key.get(k)]
    if not differ:
        return
    parts = []
    for k in differ:
        stored_labels = [text_of(v) for v in h5["stimulus"][...]] if k == "stimuli" and "stimulus" in h5 else None
        if stored_labels is not None and labels is not None and stored_labels != labels:
            parts.append("stimuli (" + _stimulus_diff(stored_labels, labels) + ")")
        elif k == "sites":
            parts.append("sites (" + _site_diff(stored.get(k), run_key.get(k)) + ")")
        elif k == "anatomy":
            from unitrec.anatomy.fingerprint import explain, recent, unpack

            parts.append("the model's anatomy (" + explain(unpack(h5.attrs.get("anatomy")), recent(run_key.get(k)))
                         + ")")
        elif k == "coordinates" and coords is not None:
            parts.append("the stimulus coordinates, metadata.csv (" + coordinate_diff(h5, coords) + ")")
        else:
            was, now = where_they_differ(text_of(stored.get(k, "none")), text_of(run_key.get(k, "none")))
            parts.append(f"{k} (file: {was}; now: {now})")
    raise RecordingError(message.format(path=path, what="; ".join(parts)))


def check_finished(final: Path, run_key: dict[str, Any], stimuli: Any) -> int | None:
    """Check a finished file against this job: the same job passes (nothing to do), another is refused.

    Returns the batch size the file was recorded with.
    """
    with open_existing(final) as h5:
        if h5.attrs.get("status") != "complete" or "done" not in h5:
            raise RecordingError(f"{final} exists but is not a finished unitrec recording; use --overwrite "
                                 "(overwrite=True) to replace it, or another output path")
        check_run_key(h5, run_key, final, stimuli.labels,
                      "{path} already holds a finished recording of another job; it differs in {what}. Use "
                      "--overwrite (overwrite=True) to replace it, or another output path", coords=stimuli.coords)
        if h5.attrs.get("stitched") == "virtual":  # this job's stitch, but are its shards still this job's?
            lost = [f"{name} (missing)" for name in missing_sources(h5)] + changed_sources(h5)
            if lost:
                raise RecordingError(
                    f"{final} is this job's stitch, but reads shard files that are missing or were recorded again "
                    f"since: {', '.join(lost[:2])}{' …' if len(lost) > 2 else ''}; record those shards again "
                    "(--shard I/N; with --overwrite where another job's file is there), or --overwrite")
        check_stimulus_files(h5, stimuli, final, update=False)
        value = h5.attrs.get("batch_size")
        return int(value) if value is not None else None


def check_stimulus_files(h5: h5py.File, stimuli: Any, path: Path, *, update: bool) -> None:
    """Refuse if an image file whose responses the file holds has changed since.

    A file whose size and modification time are unchanged is taken as unchanged;
    otherwise its content hash is compared with the one recorded with it (a copy
    with new timestamps passes). With `update`, the new size and time are stored.
    """
    stats = stimuli.file_stats()
    if stats is None or "file_size" not in h5:
        return
    size, mtime = stats
    old_size, old_mtime = h5["file_size"][...], h5["file_mtime_ns"][...]
    moved = np.flatnonzero((size != old_size) | (mtime != old_mtime))
    if not moved.size:
        return
    done = h5["done"][...]
    changed = []
    for row in moved[done[moved] == DONE]:
        recorded = text_of(h5["file_sha256"][row])
        if size[row] != old_size[row] or file_sha256(stimuli.root / stimuli.labels[row]) != recorded:
            changed.append(stimuli.labels[row])
    if changed:
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise RecordingError(
            f"{len(changed)} stimulus file(s) changed after their responses were recorded in {path}: "
            f"{', '.join(changed[:5])}{more}. Restore them, or rerun with --overwrite (overwrite=True) to "
            "record everything again")
    if update:
        h5["file_size"][moved] = size[moved]
        h5["file_mtime_ns"][moved] = mtime[moved]
        h5.flush()


def coordinate_diff(h5: h5py.File, coords: dict[str, np.ndarray]) -> str:
    """Which stimulus coordinates (metadata.csv columns) differ between a file and this run."""
    stored = _root_coordinates(h5)
    parts = []
    for name in sorted(set(stored) | set(coords)):
        if name not in coords:
            parts.append(f"column {name!r} only in the file")
        elif name not in stored or name not in h5:
            parts.append(f"column {name!r} only now")
        else:
            was, now = h5[name][...], np.asarray(coords[name])
            if _kind(was) != _kind(now):
                parts.append(f"column {name!r} is {_kind(was)} in the file, {_kind(now)} now")
                continue
            if was.dtype.kind in "OS" or now.dtype.kind in "OUS":
                was = np.array([text_of(v) for v in was.tolist()], dtype=object)
                now = np.array([str(v) for v in now.tolist()], dtype=object)
            if was.shape != now.shape:
                parts.append(f"column {name!r} has {len(was)} rows in the file, {len(now)} now")
            else:
                differ = np.flatnonzero(~((was == now) | ((was != was) & (now != now))))
                if differ.size:
                    row = int(differ[0])
                    parts.append(f"column {name!r}: {differ.size} values differ, e.g. row {row}: "
                                 f"{_short(str(was[row]), 20)} in the file, {_short(str(now[row]), 20)} now")
    return "; ".join(parts) or "the same columns, in another form"


def _root_coordinates(h5: h5py.File) -> list[str]:
    coordinates = h5["done"].attrs.get("coordinates", b"") if "done" in h5 else b""
    return text_of(coordinates).split()


def _kind(values: np.ndarray) -> str:
    return "text" if values.dtype.kind in "OUS" else "numbers"


def _short(value: Any, width: int = 60) -> str:
    return shorten(text_of(value) if value is not None else "none", width)


def _site_diff(stored_json: str | None, now_json: str | None) -> str:
    """The layer entries only the file has and only this run has, each written compactly."""
    def entries(text: str | None) -> list[str]:
        try:
            items = json.loads(text or "[]")
        except ValueError:
            return [_short(text)]
        return [json.dumps(e, sort_keys=True, separators=(",", ":")) if isinstance(e, dict) and len(e) > 1
                else (e.get("name", "?") if isinstance(e, dict) else str(e)) for e in items]

    was, now = entries(stored_json), entries(now_json)
    only_file, only_now = [e for e in was if e not in now], [e for e in now if e not in was]
    if not only_file and not only_now:
        return f"file: {_short(', '.join(was))}; now: the same entries in another order"
    return f"file: {_short(', '.join(only_file) or '-', 120)}; now: {_short(', '.join(only_now) or '-', 120)}"


def _stimulus_diff(stored: list[str], now: list[str]) -> str:
    gone, new = sorted(set(stored) - set(now)), sorted(set(now) - set(stored))
    parts = []
    if new:
        parts.append(f"{len(new)} new, e.g. {new[0]}")
    if gone:
        parts.append(f"{len(gone)} gone, e.g. {gone[0]}")
    return ", ".join(parts) or f"{len(stored)} in the file, {len(now)} now, in another order or content"
