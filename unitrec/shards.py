"""Shards: one recording split into contiguous blocks of whole batches, stitched into one file.

Shard ``i`` of ``n`` records rows ``[start, stop)`` of the sorted stimulus list into
``<out>.shards/<iiiii>-of-<nnnnn>.h5``, an ordinary recording whose run key also
names the shard. Boundaries fall on multiples of the batch size (the batches are
split as ``np.array_split`` splits them), so every row is computed in the same
batch as in a one-process run and the stitched file equals it value for value.

This module plans the rows, finds a job's shards beside ``<out>`` and checks that
they belong together; the last shard to finish (or :func:`merge`) then has
:mod:`unitrec.stitch` write ``<out>``. See docs/design.md, "Shards".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from .errors import ConfigError, RecordingError, UnitrecWarning
from .lock import output_lock

if TYPE_CHECKING:
    import torch

    from .recording import Job

__all__ = ["Part", "check_counts", "check_shard", "job_key", "launched_shard", "merge", "parse_shard", "plan",
           "shard_folder", "shard_part", "shard_path", "stitch_if_complete"]

_NAME = re.compile(r"^(\d{5})-of-(\d{5})\.h5(\.partial\.h5)?$")


# ------------------------------------------------------------------ naming and planning
def shard_folder(out: Path) -> Path:
    """The folder beside `out` that holds its shards: ``<out>.shards``."""
    return out.with_name(out.name + ".shards")


def shard_path(out: Path, index: int, count: int) -> Path:
    """Where shard `index` of `count` is recorded: ``<out>.shards/00003-of-00064.h5``."""
    return shard_folder(out) / f"{index:05d}-of-{count:05d}.h5"


def check_shard(shard: Any) -> tuple[int, int]:
    """``(index, count)`` checked: integers, ``0 ≤ index < count``."""
    ok = isinstance(shard, (tuple, list)) and len(shard) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shard)
    if not ok:
        raise ConfigError(f"shard must be (index, count), e.g. (3, 64) for shard 3 of 64; got {shard!r}")
    index, count = int(shard[0]), int(shard[1])
    if count < 1:
        raise ConfigError(f"shard count must be at least 1, got {count}")
    if not 0 <= index < count:
        raise ConfigError(f"shard index {index} is out of range for {count} shards: use 0 to {count - 1} "
                          "(shards count from 0)")
    return index, count


def parse_shard(text: str) -> tuple[int, int]:
    """``"3/64"`` → ``(3, 64)``, the command line's ``--shard INDEX/COUNT``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise ConfigError(f"--shard must be INDEX/COUNT, e.g. 3/64 for shard 3 of 64 (counting from 0); "
                          f"got {text!r}")
    return check_shard((int(match.group(1)), int(match.group(2))))


def plan(n_stimuli: int, batch_size: int, count: int) -> list[tuple[int, int]]:
    """The rows ``(start, stop)`` of each of `count` shards: whole batches, split as evenly as can be.

    The first shards get one batch more when the batches do not divide evenly
    (``np.array_split``'s rule); the last batch may be short, as in any run.
    """
    blocks = -(-n_stimuli // batch_size)
    if count > n_stimuli:
        raise ConfigError(f"{count} shards of {n_stimuli} stimuli: the shard count cannot be larger than the "
                          f"number of stimuli; use at most {blocks} shards (each records whole batches)")
    if count > blocks:
        raise ConfigError(f"{count} shards of {n_stimuli} stimuli in batches of {batch_size} ({blocks} "
                          f"batches): each shard records whole batches, so that its values equal a one-process "
                          f"run; use at most {blocks} shards or a smaller batch_size")
    q, r = divmod(blocks, count)
    edges = np.cumsum([0] + [q + (k < r) for k in range(count)]) * batch_size
    return [(int(a), int(min(b, n_stimuli))) for a, b in zip(edges[:-1], edges[1:])]


@dataclass(frozen=True)
class Part:
    """One shard of a job: which rows of how many, in batches of which size."""

    index: int
    count: int
    start: int
    stop: int
    total: int
    batch_size: int

    @property
    def name(self) -> str:
        return f"{self.index:05d}-of-{self.count:05d}.h5"

    def describe(self) -> str:
        """The shard's entry in the run key (a resume of another shard, or plan, is refused)."""
        return (f"{self.index}/{self.count}: rows {self.start}-{self.stop} of {self.total} "
                f"in batches of {self.batch_size}")

    def to_attr(self) -> str:
        return json.dumps({"index": self.index, "count": self.count, "rows": [self.start, self.stop],
                           "of": self.total, "batch_size": self.batch_size})

    @classmethod
    def from_attr(cls, text: str) -> Part:
        d = json.loads(text)
        return cls(d["index"], d["count"], d["rows"][0], d["rows"][1], d["of"], d["batch_size"])


def shard_part(path: Path, n_stimuli: int, job: Job) -> Part:
    """This shard's rows. The batch size is the one the shard's own file (finished or
    unfinished), else a finished sibling, was recorded with, so that every shard of a
    job cuts the list at the same places; otherwise the one asked for."""
    assert job.shard is not None  # called for a shard's job only
    index, count = job.shard
    batch = job.batch_size
    if not job.overwrite:
        own = [path, path.with_name(path.name + ".partial.h5")]
        siblings = sorted(p for p in path.parent.glob(f"*-of-{count:05d}.h5") if p != path)
        for candidate in own + siblings:
            stored = _stored_batch_size(candidate)
            if stored is not None:
                if stored != batch:
                    warnings.warn(f"{candidate.name} was recorded with batch_size {stored}; keeping it for every "
                                  f"shard (asked: {batch}), so that shards cut the stimulus list alike and "
                                  "values do not depend on kernels chosen by batch size", UnitrecWarning,
                                  stacklevel=5)
                batch = stored
                break
    start, stop = plan(n_stimuli, batch, count)[index]
    return Part(index, count, start, stop, n_stimuli, batch)


def _stored_batch_size(path: Path) -> int | None:
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as h5:
            value = h5.attrs.get("batch_size")
    except (OSError, RuntimeError):  # being written by its own task, or damaged: its run will say
        return None
    return int(value) if value is not None else None


# ------------------------------------------------------------------ torchrun
def launched_shard(shard: tuple[int, int] | None, device: str | torch.device,
                   progress: bool) -> tuple[tuple[int, int] | None, str | torch.device, bool]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): this process's shard, device and progress bar.

    Rank ``RANK`` of ``WORLD_SIZE`` records that shard, on ``cuda:LOCAL_RANK`` when the
    device asked for is ``cuda`` without an index; only rank 0 shows progress.
    """
    env = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    if env["WORLD_SIZE"] is None:
        return shard, device, progress
    try:
        world, rank, local = int(env["WORLD_SIZE"]), int(env["RANK"] or 0), int(env["LOCAL_RANK"] or 0)
    except ValueError:
        raise ConfigError(f"torchrun's environment is not understood: RANK={env['RANK']!r}, "
                          f"WORLD_SIZE={env['WORLD_SIZE']!r}, LOCAL_RANK={env['LOCAL_RANK']!r}") from None
    if world <= 1:
        return shard, device, progress
    if shard is not None:
        raise ConfigError(f"--shard (shard=) cannot be combined with torchrun, which already makes this process "
                          f"shard {rank}/{world} (RANK/WORLD_SIZE); drop --shard, or run without torchrun")
    if str(device) == "cuda":
        device = f"cuda:{local}"
    return (rank, world), device, bool(progress) and rank == 0


# ------------------------------------------------------------------ finding shards
def _survey(out: Path) -> dict[int, dict[int, dict[str, Path]]]:
    """count → index → {"done": finished file, "partial": unfinished file} found beside `out`."""
    found: dict[int, dict[int, dict[str, Path]]] = {}
    folder = shard_folder(out)
    if not folder.is_dir():
        return found
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m:
            index, count = int(m.group(1)), int(m.group(2))
            found.setdefault(count, {}).setdefault(index, {})["partial" if m.group(3) else "done"] = p
    return found


def _count_clash(out: Path, found: dict) -> RecordingError:
    names = ", ".join(f"{len(found[c])} of {c} ({min(found[c]):05d}-of-{c:05d}.h5 …)" for c in sorted(found))
    return RecordingError(f"{shard_folder(out)} holds shards of {len(found)} different shard counts: {names}; "
                          "one output has one shard count: remove the set you do not want (or choose another "
                          "output)")


def check_counts(out: Path, count: int) -> None:
    """Refuse to start a shard of `count` beside shards of another count (one output, one count)."""
    other = {c: v for c, v in _survey(out).items() if c != count}
    if other:
        names = ", ".join(f"{i:05d}-of-{c:05d}.h5" for c in sorted(other) for i in sorted(other[c]))
        more = f" ({sum(map(len, other.values()))} files)" if len(names) > 80 else ""
        raise RecordingError(f"this run is one of {count} shards, but {shard_folder(out)} holds shards of another "
                             f"shard count: {names[:80]}{'…' if more else ''}{more}; one output has one shard "
                             "count: remove them (or choose another output)")


def job_key(h5: h5py.File) -> dict[str, Any]:
    """A recording's run key without its shard entry: what every shard of one job shares."""
    return {k: v for k, v in json.loads(h5.attrs.get("run_key", "{}")).items() if k != "shard"}


def _collect(out: Path, count: int | None, *, waiting: bool) -> tuple[int, list[Path]] | None:
    """The finished shards of `out`, all checked to belong together.

    With `waiting` (a shard that just finished), missing or unfinished shards mean
    "not yet" (None); by hand they are refused, named. Shards of another job, or of
    two shard counts, are always refused.
    """
    found = _survey(out)
    if count is None:
        if not found:
            raise RecordingError(f"no shards of {out} in {shard_folder(out)}; record them with "
                                 "`unitrec run CONFIG --shard I/N` (or under torchrun)")
        if len(found) > 1:
            raise _count_clash(out, found)
        count = next(iter(found))
    elif set(found) - {count}:
        raise _count_clash(out, found)
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
    from .writer import _where_they_differ

    out = []
    for k in sorted(set(key) | set(ref)):
        if key.get(k) != ref.get(k):
            was, now = _where_they_differ(str(key.get(k, "none")), str(ref.get(k, "none")))
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
    from .stitch import is_current, stitch

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
    from .stitch import stitch

    out = Path(out).expanduser().resolve()
    with output_lock(out, wait=True):
        _, files = _collect(out, None, waiting=False)  # type: ignore[misc]
        other = _not_this_job(out, files)
        if other and not overwrite:
            raise RecordingError(f"{out} already holds {other}; move it away first, or replace it with "
                                 "`unitrec merge --overwrite` (overwrite=True)")
        if other:
            from .writer import refuse_foreign

            refuse_foreign(out, "move it away first")
        if copy:
            _room_for_copy(out, files)
        return stitch(out, files, copy=copy)


def _room_for_copy(out: Path, files: list[Path]) -> None:
    """Refuse a copy the disk cannot hold before writing anything: it is about the shards' size."""
    from .text import human_size
    from .writer import reserve_margin

    need = sum(f.stat().st_size for f in files) + reserve_margin(0, 0)
    free = shutil.disk_usage(out.parent).free
    if free < need:
        raise RecordingError(f"not enough space to copy the shards into {out}: it needs about {human_size(need)}, "
                             f"{human_size(free)} is free; free some space, or stitch without --copy (virtual "
                             "datasets over the shards: nothing is copied)")
