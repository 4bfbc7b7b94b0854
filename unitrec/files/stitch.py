"""The stitched file: one recording written from a job's checked shards, and read back safely.

Per site ``activation`` is an HDF5 virtual dataset over the shards' datasets, named
by paths relative to ``<out>``'s folder (HDF5 looks there first, so the folder can be
moved), or with ``copy`` a real dataset; everything else (stimulus coordinates,
``done``, file identity, provenance, site coordinates) is real data, so the file
opens like a one-process recording of the same job and equals it. See
docs/design.md, "Shards".
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from unitrec.errors import RecordingError
from unitrec.files import summary as summaries
from unitrec.files.disk import finisher, no_space, reserve_space, written_whole
from unitrec.files.layout import chunk_shape, digests_sha256, load_plugins
from unitrec.files.shards import Part, job_key

__all__ = ["changed_sources", "check_sources", "is_current", "missing_sources", "open_file", "source_chunks",
           "stitch"]

_DIMENSION_ATTRS = ("CLASS", "NAME", "REFERENCE_LIST", "DIMENSION_LIST")  # remade, never copied
_RUN_ONLY = ("shard", "last_run_seconds", "last_run_images_per_second")  # describe one shard's run
_COPY_BYTES = 64 << 20
_SUMMARY = {*summaries.FINALS, "rank", "rectified_sum", "rectified_sum_sq"}  # a summary site's own datasets


def open_file(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except (OSError, RuntimeError) as exc:
        raise RecordingError(f"cannot read {path}: {' '.join(str(exc).split())}") from None


def _listing(out: Path, files: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for path in files:
        with open_file(path) as h5:
            part = Part.from_attr(h5.attrs["shard"])
            rows.append({"file": _relative(path, out), "rows": [part.start, part.stop],
                         **_identity(h5)})
    return rows


def _identity(h5: h5py.File) -> dict[str, str]:
    """What tells one recording of a shard from another: when it was made and finished, its run."""
    return {"finished": str(h5.attrs.get("finished", "")), "created": str(h5.attrs.get("created", "")),
            "run_id": str(h5.attrs.get("run_id", ""))}


def _relative(path: Path, out: Path) -> str:
    return Path(os.path.relpath(path, out.parent)).as_posix()


def is_current(out: Path, files: list[Path]) -> bool:
    """`out` was stitched from exactly these shards, as they are now."""
    try:
        with h5py.File(out, "r") as h5:
            listed = json.loads(h5.attrs.get("shards", "null"))
    except (OSError, RuntimeError, ValueError):
        return False
    return listed == _listing(out, files)


def stitch(out: Path, files: list[Path], *, copy: bool) -> Path:
    """Write `out` from checked shards: under a temporary name, fsynced, then renamed."""
    listing = _listing(out, files)
    try:
        with ExitStack() as stack:
            shards = [stack.enter_context(open_file(p)) for p in files]
            with written_whole(out.with_name(out.name + ".stitching.h5"), out) as dst:
                _write(dst, shards, listing, out, copy)
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, RecordingError):
            raise
        raise RecordingError(f"stitching {out} failed: {type(exc).__name__}: {' '.join(str(exc).split())}") \
            from None
    return out


def _write(dst: h5py.File, shards: list[h5py.File], listing: list[dict], out: Path, copy: bool) -> None:
    first = shards[0]
    for key, value in first.attrs.items():
        if key not in _RUN_ONLY:
            dst.attrs[key] = value
    key_text = json.dumps(job_key(first), sort_keys=True)
    dst.attrs["run_key"] = key_text  # what a one-process run of the job has: the same run_id
    dst.attrs["run_id"] = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    dst.attrs["created"] = min(str(s.attrs.get("created", "")) for s in shards)
    skipped = [r for s in shards for r in json.loads(s.attrs.get("skipped", "[]"))]
    if skipped:
        dst.attrs["skipped"] = json.dumps(skipped, ensure_ascii=False)
    elif "skipped" in dst.attrs:
        del dst.attrs["skipped"]
    datasets: list[str] = []
    summarised: list[str] = []
    for name, obj in first.items():
        if isinstance(obj, h5py.Dataset):  # per stimulus: the shards' rows one after another
            _concatenate(dst, name, [s[name] for s in shards])
            datasets.append(name)
        elif isinstance(obj, h5py.Group):
            group = dst.create_group(name, track_order=True)
            _copy_attrs(obj, group)
            if obj.attrs.get("keep") in ("summary", "both"):
                summarised.append(name)
            for child, ds in obj.items():
                path = f"{name}/{child}"
                if name in summarised and child in _SUMMARY:
                    continue  # merged below, once the site's dimension scales exist
                if child == "activation":
                    _activation(group, [s[path] for s in shards], listing, out, copy)
                elif _on_stimulus(ds):  # a site's copy of a stimulus coordinate: every shard's rows
                    _concatenate(group, child, [s[path] for s in shards])
                else:
                    _copy_attrs(ds, group.create_dataset(child, data=ds[...], dtype=ds.dtype))
                datasets.append(path)
    if "file_sha256" in dst:  # over every file's hash, as a one-process run computes it
        dst.attrs["stimulus_content_sha256"] = digests_sha256(dst["file_sha256"][...])
    _dimension_scales(first, dst, datasets)
    for name in summarised:
        _merge_summary(dst[name], [s[name] for s in shards], listing)
    dst.attrs["status"] = "complete"
    dst.attrs["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")
    dst.attrs["stitched"] = "copy" if copy else "virtual"
    dst.attrs["finished_by"] = finisher()
    dst.attrs["history"] = (f"{first.attrs.get('history', '')}\n{dst.attrs['finished']} stitched from "
                            f"{len(shards)} shards ({dst.attrs['stitched']})").lstrip()
    dst.attrs["shards"] = json.dumps(listing)


def _merge_summary(group: h5py.Group, parts: list[h5py.Group], listing: list[dict]) -> None:
    """The shards' summaries combined in row order: what one process would have summarised."""
    ref = parts[0]["mean"]
    top = int(parts[0].attrs["top"])
    state = summaries.State.merged([summaries.read_finals(p).shifted(entry["rows"][0])
                                    for p, entry in zip(parts, listing)], top)
    dims = [ref.dims[i][0].name.rsplit("/", 1)[-1] for i in range(ref.ndim)]
    coordinates = ref.attrs.get("coordinates", "")
    summaries.write_finals(group, state, top, ref.shape, [group[d] for d in dims],
                           coordinates.decode() if isinstance(coordinates, bytes) else str(coordinates))


def _on_stimulus(ds: h5py.Dataset) -> bool:
    """A dataset whose first dim is the file's stimulus dim (one value per row)."""
    return ds.ndim >= 1 and any(scale.name == "/stimulus" for scale in ds.dims[0].values())


def _copy_attrs(src, dst) -> None:
    for key, value in src.attrs.items():
        if key not in _DIMENSION_ATTRS:
            dst.attrs[key] = value


def _concatenate(dst: h5py.File, name: str, parts: list[h5py.Dataset]) -> None:
    ref = parts[0]
    info = h5py.check_string_dtype(ref.dtype)
    if info is not None and info.length is None:  # variable-length text
        data = np.concatenate([p.asstr()[...] for p in parts]).astype(object)
    else:
        data = np.concatenate([p[...] for p in parts])
    _copy_attrs(ref, dst.create_dataset(name, data=data, dtype=ref.dtype))


def _activation(group: h5py.Group, parts: list[h5py.Dataset], listing: list[dict], out: Path,
                copy: bool) -> None:
    ref = parts[0]
    shape = (sum(p.shape[0] for p in parts), *ref.shape[1:])
    if copy:
        ds = _create_like(group, ref, shape, int(json.loads(ref.file.attrs["shard"])["batch_size"]))
        for part, entry in zip(parts, listing):
            start = entry["rows"][0]
            row_bytes = int(np.prod(ref.shape[1:], dtype=np.int64)) * ref.dtype.itemsize
            step = max(1, _COPY_BYTES // max(1, row_bytes))
            stored = part.id.get_storage_size() / max(1, part.size * part.dtype.itemsize)  # < 1 compressed
            for a in range(0, part.shape[0], step):
                b = min(a + step, part.shape[0])
                _reserve(ds, int((b - a) * row_bytes * stored) + 1, out)
                ds[start + a : start + b] = part[a:b]
    else:
        layout = h5py.VirtualLayout(shape=shape, dtype=ref.dtype)
        for part, entry in zip(parts, listing):
            a, b = entry["rows"]
            # relative to out's folder, where HDF5 looks first; '%' is HDF5's pattern character
            layout[a:b] = h5py.VirtualSource(entry["file"].replace("%", "%%"), part.name, shape=part.shape)
        ds = group.create_virtual_dataset("activation", layout, fillvalue=np.nan)
    _copy_attrs(ref, ds)
    overflow = sum(int(p.attrs.get("float16_overflow", 0)) for p in parts)
    if overflow:
        ds.attrs["float16_overflow"] = overflow


def _reserve(ds: h5py.Dataset, nbytes: int, out: Path) -> None:
    """Room on the disk for the next rows of a copy, before HDF5 writes them: HDF5 cannot recover
    from a write that fails for lack of space (see ``writer.reserve_space``)."""
    try:
        reserve_space(ds.file, nbytes)
    except OSError as exc:
        if not no_space(exc):
            raise
        raise RecordingError(f"no space left on device copying the shards into {out}; free some space and run "
                             f"`unitrec merge {out} --copy` again, or stitch without --copy (nothing is copied)") \
            from None


def _create_like(group: h5py.Group, ref: h5py.Dataset, shape: tuple[int, ...], batch_size: int) -> h5py.Dataset:
    """A real dataset with the shards' storage (dtype, filters, fill value), chunked for `shape`."""
    load_plugins()  # the Zstd filter, for shards recorded with compression
    dcpl = ref.id.get_create_plist()
    dcpl.set_chunk(chunk_shape(shape, batch_size, ref.dtype.itemsize))
    space = h5py.h5s.create_simple(shape)
    return h5py.Dataset(h5py.h5d.create(group.id, b"activation", ref.id.get_type(), space, dcpl=dcpl))


def _dimension_scales(src: h5py.File, dst: h5py.File, names: list[str]) -> None:
    """Make the scales and attach them as they are in the shards (netCDF dimensions)."""
    for name in names:
        if h5py.h5ds.is_scale(src[name].id):
            label = src[name].attrs.get("NAME", name.rsplit("/", 1)[-1])
            dst[name].make_scale(label.decode() if isinstance(label, bytes) else str(label))
    for name in names:
        for axis, dim in enumerate(src[name].dims):
            for scale in dim.values():
                if scale.name.lstrip("/") != name:
                    dst[name].dims[axis].attach_scale(dst[scale.name])


# ------------------------------------------------------------------ reading
def missing_sources(h5: h5py.File) -> list[str]:
    """Shard files a stitched recording reads through virtual datasets that are not there.

    HDF5 silently reads a missing source as the fill value (NaN), and falls back to
    the working directory, so readers check first: sources are looked for where HDF5
    looks first (``HDF5_VDS_PREFIX``, else the recording's folder).
    """
    return [entry["file"] for entry, path in _sources(h5) if path is None]


def _sources(h5: h5py.File) -> list[tuple[dict[str, Any], Path | None]]:
    """Each shard a virtual stitched file lists, with the file HDF5 reads for it (None: none there)."""
    if h5.attrs.get("stitched") != "virtual":
        return []
    folder = Path(os.path.abspath(h5.filename)).parent
    prefix = os.environ.get("HDF5_VDS_PREFIX")
    out = []
    for entry in json.loads(h5.attrs.get("shards", "[]")):
        name = entry["file"]
        where = [p for p in [*([Path(prefix) / name] if prefix else []), folder / name] if p.is_file()]
        out.append((entry, where[0] if where else None))
    return out


def changed_sources(h5: h5py.File) -> list[str]:
    """Shard files of a stitched recording that are not the ones it was stitched from.

    A virtual dataset reads whatever file now lies at a source's path: a shard
    recorded again (another job, or the same one anew) would be read under this
    file's provenance. Each source's identity (its created and finished stamps and
    run id, listed in the ``shards`` attribute when stitched) is compared with the
    file there now; a file whose inode, size and modification time are unchanged
    since it was last compared is not opened again.
    """
    changed = []
    for entry, path in _sources(h5):
        name = entry["file"]
        if path is None:
            continue  # missing: missing_sources says so
        want: dict[str, str] = {k: str(entry[k]) for k in ("finished", "created", "run_id") if k in entry}
        try:
            st = path.stat()
        except OSError:
            continue
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        seen = _SEEN.get(str(path))
        if seen is not None and seen[0] == stamp and seen[1] == want:
            continue
        try:
            with h5py.File(path, "r") as src:
                have = {k: v for k, v in _identity(src).items() if k in want}
        except (OSError, RuntimeError):
            changed.append(f"{name} (unreadable)")
            continue
        if have != want:
            when = f"finished {have.get('finished') or '?'}, not {want.get('finished') or '?'}"
            changed.append(f"{name} ({when})")
        else:
            _SEEN[str(path)] = (stamp, want)
    return changed


#: shard path -> ((inode, size, mtime), identity) of a source found to be the one stitched
_SEEN: dict[str, tuple[tuple[int, int, int], dict[str, str]]] = {}


def check_sources(path: str | os.PathLike, h5: h5py.File | None = None) -> None:
    """Refuse to read a stitched recording whose shard files are missing or were recorded again."""
    if h5 is None:
        with open_file(Path(path)) as h5:
            return check_sources(path, h5)
    missing = missing_sources(h5)
    if missing:
        raise RecordingError(
            f"{path} reads its activations from shard files that are not there: {_some(missing, 3)} (looked in "
            f"{os.path.dirname(os.path.abspath(path))}); move the .shards folder together with the file (or, "
            f"while both are there, make one self-contained file: `unitrec merge {path} --copy`)")
    changed = changed_sources(h5)
    if changed:
        raise RecordingError(
            f"{path} was stitched from shard files that have been recorded again since: {_some(changed, 2)}; its "
            "virtual datasets would read the new files' values under its own provenance, so it is not read. "
            "Stitch the shards as they are now with `unitrec merge` on the output they were recorded for, or "
            "record this job again")
    return None


def _some(names: list[str], shown: int) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def source_chunks(ds: h5py.Dataset) -> dict[str, int] | None:
    """A virtual dataset's first source's chunks by dimension name, for dask (``chunks={}``).

    A virtual dataset has no chunks of its own, so dask would read a stitched site
    as one block; its shards' chunks keep blocks the size a one-process file has.
    """
    if not ds.is_virtual:
        return None
    source = ds.virtual_sources()[0]
    path = Path(os.path.abspath(ds.file.filename)).parent / source.file_name.replace("%%", "%")
    try:
        with h5py.File(path, "r") as h5:
            chunks = h5[source.dset_name].chunks
    except (OSError, RuntimeError, KeyError):
        return None
    if chunks is None:
        return None
    dims = [ds.dims[i][0].name.rsplit("/", 1)[-1] if len(ds.dims[i]) else f"dim_{i}" for i in range(ds.ndim)]
    return dict(zip(dims, chunks))
