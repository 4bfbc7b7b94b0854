"""Merging a job's shards: checked to belong together, then stitched into ``<out>``.

The last shard to finish calls :func:`stitch_if_complete`; ``unitrec merge`` and
:func:`merge` do it by hand (waiting for nothing: a missing or unfinished shard is
refused, named). Shards of another job, or of two shard counts, are always refused.
See docs/design.md, "Shards".
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import h5py

from unitrec._text import human_size, where_they_differ
from unitrec.errors import RecordingError
from unitrec.files.disk import refuse_foreign
from unitrec.files.layout import reserve_margin
from unitrec.files.lock import output_lock
from unitrec.files.shards import Part, count_clash, job_key, plan, shard_folder, survey
from unitrec.files.stitch import is_current, stitch

__all__ = ["merge", "stitch_if_complete"]


def _collect(out: Path, count: int | None, *, waiting: bool) -> tuple[int, list[Path]] | None:
    """The finished shards of `out`, all checked to belong together.

    With `waiting` (a shard that just finished), missing or unfinished shards mean
    "not yet" (None); by hand they are refused, named. Shards of another job, or of
    two shard counts, are always refused.
    """
    found = survey(out)
    if count is None:
        if not found:
            raise RecordingError(f"no shards of {out} in {shard_folder(out)}; record them with "
                                 "`unitrec run CONFIG --shard I/N` (or under torchrun)")
        if len(found) > 1:
            raise count_clash(out, found)
        count = next(iter(found))
    elif set(found) - {count}:
        raise count_clash(out, found)
    have = found.get(count, {})
    missing = [i for i in range(count) if i not in have]
    # a partial file beside a finished one is an --overwrite run still recording it anew
    unfinished = [i for i in range(count) if i in have and ("done" not in have[i] or "partial" in have[i])]
    if waiting and (missing or unfinished):
        return None
    files = [have[i]["done"] for i in range(count) if i in have and "done" in have[i] and i not in unfinished]
    keys, parts, broken = {}, {}, []
    for path in files:
        try:
            with h5py.File(path, "r") as h5:
                if h5.attrs.get("status") != "complete" or "shard" not in h5.attrs:
                    raise OSError("not a finished shard")
                keys[path] = job_key(h5)
                parts[path] = Part.from_attr(h5.attrs["shard"])
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            broken.append(f"{path.name} ({' '.join(str(exc).split())[:80]})")
    problems = []
    ref = _reference(keys, parts)
    if missing or unfinished:
        rows = (lambda i: " (rows {}-{})".format(*plan(ref[1].total, ref[1].batch_size, count)[i])) if ref \
            else (lambda i: "")
        if missing:
            problems.append("missing " + ", ".join(f"{i:05d}-of-{count:05d}.h5{rows(i)}" for i in missing)
                            + " (run their tasks: --shard I/N; a deleted shard is recorded again the same way)")
        if unfinished:
            problems.append("unfinished " + ", ".join(f"{i:05d}-of-{count:05d}.h5{rows(i)}" for i in unfinished)
                            + " (still recording, or interrupted: rerun their tasks to resume)")
    if broken:
        problems.append("unreadable " + ", ".join(broken))
    if ref is not None:
        ref_key, ref_part = ref
        counted = Counter(json.dumps(k, sort_keys=True) for k in keys.values())
        tie = len(counted) > 1 and len(set(counted.values())) == 1
        ref_name = next(p.name for p in keys if keys[p] == ref_key)
        for path in keys:
            index = int(path.name[:5])
            want = Part(index, count, *plan(ref_part.total, ref_part.batch_size, count)[index], ref_part.total,
                        ref_part.batch_size)
            differ = _differences(keys[path], ref_key)
            if parts[path] != want:
                differ.append(f"shard (file: {parts[path].describe()}; expected: {want.describe()}; record it "
                              f"again in the others' batches: --shard {index}/{count} --overwrite with batch_size "
                              f"{ref_part.batch_size})")
            if differ:
                if tie:
                    problems.append(f"{path.name} and {ref_name} are from different jobs (as many shards of "
                                    f"each): they differ in {'; '.join(differ)}")
                else:
                    problems.append(f"{path.name} is from another job: it differs in {'; '.join(differ)}")
    if problems:
        raise RecordingError(f"cannot stitch {out}: " + "; ".join(problems))
    return count, files


def _reference(keys: dict[Path, dict], parts: dict[Path, Part]) -> tuple[dict, Part] | None:
    """The job most shards belong to (ties: the lowest shard's)."""
    if not keys:
        return None
    counts = Counter(json.dumps(k, sort_keys=True) for k in keys.values())
    best = max(counts.values())
    path = next(p for p in keys if counts[json.dumps(keys[p], sort_keys=True)] == best)
    return keys[path], parts[path]


def _differences(key: dict, ref: dict) -> list[str]:
    out = []
    for k in sorted(set(key) | set(ref)):
        if key.get(k) != ref.get(k):
            was, now = where_they_differ(str(key.get(k, "none")), str(ref.get(k, "none")))
            out.append(f"{k} (this shard: {was}; the others: {now})")
    return out


# ------------------------------------------------------------------ stitching
def stitch_if_complete(out: Path, count: int, *, replace: bool = False) -> Path | None:
    """Called by a shard that has just finished: stitch `out` if every shard is done.

    Under the output's lock, so of several shards finishing together exactly one
    stitches and the others find it done. Returns `out`, or None while shards are
    still missing or unfinished. An existing `out` that is not a stitch of this job
    (a one-process recording, another job's) is never replaced, unless `replace`
    (the shard was run with --overwrite).
    """
    with output_lock(out, wait=True):
        try:
            found = _collect(out, count, waiting=True)
        except RecordingError as exc:
            raise RecordingError(f"this shard is recorded, but {exc}") from None
        if found is None:
            return None
        if out.exists() and is_current(out, found[1]):
            return out
        if not replace:
            other = _not_this_job(out, found[1])
            if other:
                raise RecordingError(
                    f"this shard is recorded and all {count} shards are done, but {out} already holds {other}; "
                    f"it was left as it is. Move it away and run `unitrec merge {out}`, or replace it with "
                    f"`unitrec merge {out} --overwrite`")
        return stitch(out, found[1], copy=False)


def _not_this_job(out: Path, files: list[Path]) -> str | None:
    """What `out` holds when it is not a stitch of the job of `files` (None: absent, or this job's)."""
    if not out.exists() and not out.is_symlink():
        return None
    if not out.is_file() or out.is_symlink():
        return "something that is not a recording file (a folder or a link)"
    try:
        with h5py.File(out, "r") as h5:
            key, stitched = job_key(h5), "shards" in h5.attrs
            status = h5.attrs.get("status")
    except (OSError, RuntimeError, ValueError):
        return "a file that is not a readable recording"
    with h5py.File(files[0], "r") as h5:
        ours = job_key(h5)
    if stitched and key == ours:
        return None  # a stitch of this job from shards since recorded again: stitched anew
    what = "a stitch of another job's shards" if stitched else \
        ("a recording made in one process" if status == "complete" else "an unfinished recording")
    differ = _differences(key, ours)
    return what + (f" (it differs in {differ[0]})" if differ and key else "")


def merge(out: str | os.PathLike, copy: bool = False, overwrite: bool = False) -> Path:
    """Stitch the shards of `out` (``<out>.shards/*-of-*.h5``) into `out`.

    The last shard to finish does this by itself; this is the same by hand.

    Parameters
    ----------
    out
        The recording the shards were made for.
    copy
        False (default): each site's ``activation`` is an HDF5 virtual dataset over
        the shards' files (no data copied; keep the ``.shards`` folder beside `out`,
        moving them together is fine). True: one self-contained file.
    overwrite
        Replace an existing `out` that is not a stitch of these shards' job (a
        one-process recording, another job's). Without it such a file is refused.
        The old file stays whole until the new one is written.

    Returns
    -------
    pathlib.Path
        `out`.

    Raises
    ------
    RecordingError
        Naming the shards that are missing, unfinished, unreadable or from another
        job, or when shards of two shard counts lie beside `out`.

    Examples
    --------
    >>> ur.merge("runs/imagenet/activations.h5")  # doctest: +SKIP
    """
    out = Path(out).expanduser().resolve()
    with output_lock(out, wait=True):
        _, files = _collect(out, None, waiting=False)  # type: ignore[misc]
        other = _not_this_job(out, files)
        if other and not overwrite:
            raise RecordingError(f"{out} already holds {other}; move it away first, or replace it with "
                                 "`unitrec merge --overwrite` (overwrite=True)")
        if other:
            refuse_foreign(out, "move it away first")
        if copy:
            _room_for_copy(out, files)
        return stitch(out, files, copy=copy)


def _room_for_copy(out: Path, files: list[Path]) -> None:
    """Refuse a copy the disk cannot hold before writing anything: it is about the shards' size."""
    need = sum(f.stat().st_size for f in files) + reserve_margin(0, 0)
    free = shutil.disk_usage(out.parent).free
    if free < need:
        raise RecordingError(f"not enough space to copy the shards into {out}: it needs about {human_size(need)}, "
                             f"{human_size(free)} is free; free some space, or stitch without --copy (virtual "
                             "datasets over the shards: nothing is copied)")
