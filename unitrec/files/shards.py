"""Shards: one recording split into contiguous blocks of whole batches, stitched into one file.

Shard ``i`` of ``n`` records rows ``[start, stop)`` of the sorted stimulus list into
``<out>.shards/<iiiii>-of-<nnnnn>.h5``, an ordinary recording whose run key also
names the shard. Boundaries fall on multiples of the batch size (the batches are
split as ``np.array_split`` splits them), so every row is computed in the same
batch as in a one-process run and the stitched file equals it value for value.

This module names and plans shards and surveys the ones beside ``<out>``;
``merge.py`` checks that they belong together and has ``stitch.py`` write ``<out>``
(when the last shard finishes, or by :func:`~unitrec.files.merge.merge`). See
docs/design.md, "Shards".
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from unitrec.errors import ConfigError, RecordingError, UnitrecWarning
from unitrec.files.layout import partial_path

__all__ = ["Part", "check_counts", "check_shard", "job_key", "parse_shard", "plan", "shard_folder", "shard_part",
           "shard_path", "survey"]

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


def shard_part(path: Path, n_stimuli: int, shard: tuple[int, int], batch_size: int, *, overwrite: bool) -> Part:
    """Shard ``(index, count)``'s rows. The batch size is the one the shard's own file
    (finished or unfinished), else a finished sibling, was recorded with, so that every
    shard of a job cuts the list at the same places; otherwise `batch_size`."""
    index, count = shard
    batch = batch_size
    if not overwrite:
        own = [path, partial_path(path)]
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


# ------------------------------------------------------------------ finding shards
def survey(out: Path) -> dict[int, dict[int, dict[str, Path]]]:
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


def count_clash(out: Path, found: dict) -> RecordingError:
    names = ", ".join(f"{len(found[c])} of {c} ({min(found[c]):05d}-of-{c:05d}.h5 …)" for c in sorted(found))
    return RecordingError(f"{shard_folder(out)} holds shards of {len(found)} different shard counts: {names}; "
                          "one output has one shard count: remove the set you do not want (or choose another "
                          "output)")


def check_counts(out: Path, count: int) -> None:
    """Refuse to start a shard of `count` beside shards of another count (one output, one count)."""
    other = {c: v for c, v in survey(out).items() if c != count}
    if other:
        names = ", ".join(f"{i:05d}-of-{c:05d}.h5" for c in sorted(other) for i in sorted(other[c]))
        more = f" ({sum(map(len, other.values()))} files)" if len(names) > 80 else ""
        raise RecordingError(f"this run is one of {count} shards, but {shard_folder(out)} holds shards of another "
                             f"shard count: {names[:80]}{'…' if more else ''}{more}; one output has one shard "
                             "count: remove them (or choose another output)")


def job_key(h5: h5py.File) -> dict[str, Any]:
    """A recording's run key without its shard entry: what every shard of one job shares."""
    return {k: v for k, v in json.loads(h5.attrs.get("run_key", "{}")).items() if k != "shard"}


