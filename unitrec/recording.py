"""``record``: show a stimulus set to a model and stream the chosen sites to HDF5.

The loop: a DataLoader decodes and preprocesses batches (in worker processes if
asked); each batch runs through the model with the recorder's hooks, stopping after
the deepest site; the selected values are copied once into a ring of host buffers
(pinned on CUDA); a background thread writes them, flushes, and marks the rows done.

Batches are fixed blocks of the stimulus list (rows ``[k·B, (k+1)·B)`` for the file's
batch size B: the one asked for, or N where fewer stimuli than that), always computed whole: an undecodable image's slot and the end of the
last block are filled with copies of a good image. So a row is computed in the same
batch, at the same position, however the work is interrupted and resumed, and its
stored value never depends on how the run was split (see docs/design.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, cast

import numpy as np
import torch
from torch import nn

from .accumulate import Accumulator
from .errors import ConfigError, RecordingError, StimulusError, UnitrecWarning
from .lock import output_lock
from .model import HASH_THREADS, weights_sha256_on
from .preprocess import build_transform, describe_transform
from .anatomy import anatomy_of
from .provenance import coordinates_sha256, file_attrs, run_key
from .recorder import Recorder
from .schema import MAX_BATCH_SIZE, Layers, parse_layers
from .shards import (check_counts, check_shard, launched_shard, shard_part, shard_path,
                     stitch_if_complete)
from .sites import Site, resolve_sites
from .stimuli.dataset import Stimuli, StimulusSet, as_stimulus_set, collate
from .text import human_size
from .writer import (AsyncWriter, RecordingFile, check_finished, check_run_key, creating_path, open_existing,
                     partial_path, refuse_foreign, reserve_margin, reserved_names)

__all__ = ["Job", "record"]

_QUEUE = 2  # batches waiting for the disk; the ring holds _QUEUE + 2 buffers
_FLOAT16_LIMIT = 65520.0  # |v| ≥ this rounds to ±inf in float16 (65504 is the largest finite)
_WARN_SKIPPED = 10  # undecodable images named one by one; the rest are counted
_SAVE_ALWAYS_BYTES = 16 << 20  # summaries up to this size are saved with every batch
_SAVE_SECONDS = 30.0  # larger ones every this many seconds


@dataclass(frozen=True)
class Job:
    """How a recording is made: the settings that travel together through ``record``.

    Built once from ``record()``'s arguments (or a config's ``record`` section) and
    checked here, so every later function receives one validated object. `device`
    may be given as a str (``"cuda:1"``); it is stored as a :class:`torch.device`.
    `background` is an RGB colour (three integers in 0..255).
    """

    batch_size: int = 32
    device: torch.device = torch.device("cpu")
    num_workers: int = 0
    progress: bool = True
    dtype: Literal["float32", "float16"] = "float32"
    compression: Literal["zstd"] | None = None
    stop_early: bool = True
    on_error: Literal["skip", "raise"] = "skip"
    background: tuple[int, ...] = (255, 255, 255)
    overwrite: bool = False
    shard: tuple[int, int] | None = None  # (index, count): record one contiguous part of the rows

    def __post_init__(self) -> None:
        checks = [
            (isinstance(self.batch_size, int) and not isinstance(self.batch_size, bool)
             and 0 < self.batch_size <= MAX_BATCH_SIZE, f"batch_size must be an integer from 1 to {MAX_BATCH_SIZE} "
             f"(a batch is computed and held in memory whole), got {self.batch_size!r}"),
            (isinstance(self.num_workers, int) and not isinstance(self.num_workers, bool)
             and self.num_workers >= 0, f"num_workers must be an integer ≥ 0, got {self.num_workers!r}"),
            (self.dtype in ("float32", "float16"), f"dtype must be 'float32' or 'float16', got {self.dtype!r}"),
            (self.compression in (None, "zstd"), f"compression must be None or 'zstd', got {self.compression!r}"),
            (self.on_error in ("skip", "raise"), f"on_error must be 'skip' or 'raise', got {self.on_error!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        try:
            object.__setattr__(self, "device", torch.device(self.device))
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"device must be 'cpu', 'cuda', 'cuda:1', ...; got {self.device!r} ({exc})") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {str(self.device)!r}: this machine has no usable CUDA GPU "
                              "(torch.cuda.is_available() is False); use device: cpu")
        if self.device.type not in ("cpu", "cuda"):
            raise ConfigError(f"device {str(self.device)!r} is not supported; use 'cpu' or 'cuda'")
        from .stimuli.decode import _check_background  # here, not per image ("none could be decoded")

        object.__setattr__(self, "background", _check_background(self.background))
        if self.shard is not None:
            object.__setattr__(self, "shard", check_shard(self.shard))


def record(
    model: nn.Module,
    stimuli: Stimuli,
    layers: Layers,
    out: str | os.PathLike[str],
    *,
    transform: Callable[[Any], torch.Tensor] | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    dtype: Literal["float32", "float16"] = "float32",
    compression: Literal["zstd"] | None = None,
    stop_early: bool = True,
    on_error: Literal["skip", "raise"] = "skip",
    background: Sequence[int] = (255, 255, 255),
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Record sites of `model` for every stimulus into an HDF5 file.

    Parameters
    ----------
    model
        The network (moved to `device`; its training flag is restored afterwards).
    stimuli
        A folder (searched recursively, sorted by relative path), a list of image
        paths, a tensor ``(N, C, H, W)`` already preprocessed, or a Dataset.
    layers
        Site names (``"layer3.5"``, ``"layer1.0.relu:2"``, ``"fc@input"``) or layer
        entries (dicts with ``name`` and ``units``/``channels``/``positions``/``pool``/
        ``sample``), see docs/design.md, "Layer entries".
    out
        Path of the finished file. Until it is finished the data lives in
        ``<out>.partial.h5``; rerunning the same job resumes it.
    transform
        PIL RGB image → CHW float tensor. Default: the weights' own preprocessing,
        else resize 256, centre crop 224, ImageNet normalisation.
    batch_size, device, num_workers
        Loading and compute. Rows are computed in fixed blocks of `batch_size` (of
        N, the number of stimuli, where N is smaller); a resumed recording keeps the
        batch size it was started with, so a row's value never depends on interruptions.
    progress
        Show a tqdm progress bar.
    dtype
        ``"float32"`` (default) or ``"float16"`` storage (values beyond ±65504 become
        ±inf; they are counted, warned about and stored in the site's attributes).
    compression
        None (default) or ``"zstd"`` (level 1, needs ``hdf5plugin``).
    stop_early
        Skip the part of the network after the deepest site.
    on_error
        ``"skip"`` undecodable images (warned about and listed in the file) or
        ``"raise"``.
    background
        RGB colour that transparent pixels are composited on.
    overwrite
        Start over even if `out` or an unfinished recording of another run exists.
        A finished `out` is kept whole until the new recording is complete, then
        replaced by a rename. An interrupted overwrite goes on where it stopped
        when rerun *without* `overwrite` (with it, it starts over again).
    shard
        ``(i, n)``: record only shard `i` of `n` (counting from 0), a contiguous block
        of whole batches of the sorted stimulus list, into
        ``<out>.shards/<iiiii>-of-<nnnnn>.h5``, an ordinary recording of its own
        (resumable, locked, checked like any). The last shard to finish stitches
        `out` (see :func:`merge`). Under ``torchrun`` (``WORLD_SIZE`` > 1) every
        process is shard ``RANK`` of ``WORLD_SIZE`` on ``cuda:LOCAL_RANK`` when
        `device` is ``"cuda"``, and only rank 0 shows progress; `shard` must then
        be left out.
    config
        The experiment config to store in the file (set by :func:`run_config`).

    Returns
    -------
    pathlib.Path
        The finished file. If `out` already holds a finished recording of the same
        job, nothing is recorded and its path is returned. A shard returns `out` if
        it was the last to finish (or `out` was already there), else its own file.

    Examples
    --------
    >>> import unitrec as ur
    >>> model = ur.load_model("resnet18")
    >>> path = ur.record(model, "stimuli/", ["layer1", "layer4.1"], "acts.h5")  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module (e.g. ur.load_model('resnet18')), got "
                          f"{type(model).__name__} {model!r:.60}")
    if layers is None:
        raise ConfigError("layers must name at least one site, e.g. ['layer1', {'name': 'fc', 'units': 'all'}]; "
                          "`unitrec layers MODEL` lists them")
    shard, device, progress = launched_shard(shard, device, progress)
    # Job.__post_init__ turns a str device into a torch.device (and a bad one into ConfigError)
    job = Job(batch_size=batch_size, device=cast(torch.device, device), num_workers=num_workers, progress=progress, dtype=dtype,
              compression=compression, stop_early=stop_early, on_error=on_error,
              background=tuple(background), overwrite=overwrite, shard=shard)
    out = _check_output(out)
    specs = parse_layers(layers)
    stim = as_stimulus_set(stimuli)
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    if isinstance(stim.source, torch.Tensor) and weight is not None and stim.source.dtype != weight.dtype:
        raise StimulusError(f"the stimulus tensor is {stim.source.dtype} and the model's weights are {weight.dtype}; "
                            f"give stimuli of the model's type (x.to({weight.dtype}))")
    if 0 < len(stim) < job.batch_size:  # one block holds every row: compute N, not B (shards plan by this)
        job = dataclasses.replace(job, batch_size=len(stim))
    if transform is None and stim.root is not None:
        transform = getattr(model, "unitrec_transform", None) or build_transform()
    preprocessing = describe_transform(transform) if transform is not None else "none (tensor stimuli)"

    target = out
    if job.shard is not None:
        check_counts(out, job.shard[1])
        target = shard_path(out, *job.shard)
        if target.parent.exists() and not target.parent.is_dir():
            raise RecordingError(f"{target.parent} is a file, where the shards of {out.name} go; move it away "
                                 "and rerun")
        target.parent.mkdir(exist_ok=True)
    try:
        with output_lock(target):
            training = model.training
            try:
                model.to(job.device).eval()
                path = _record(model, stim, specs, out, transform, preprocessing, job, config)
            finally:
                model.train(training)
    except BaseException:
        if target != out:  # a shard refused at once (too many shards, ...) leaves no empty folder
            with contextlib.suppress(OSError):
                target.parent.rmdir()
        raise
    if path == out:
        return path
    assert job.shard is not None  # only a shard records into another file than `out`
    return stitch_if_complete(out, job.shard[1], replace=job.overwrite) or path


def _record(model, stim: StimulusSet, specs, out: Path, transform, preprocessing: str, job: Job,
            config) -> Path:
    example = _first_good(stim.dataset(transform, job.background), job.on_error)
    # the trace first, then the hashes. Beside the trace they would hash weights that
    # the trace's forward may still write where no version counter sees it (a numpy view,
    # a deferred `nn.init.*_(w.data)`); and on 2 cores both were slower (measured: set-up
    # 0.30-0.43 s beside, 0.24-0.37 s after)
    sites, trace = resolve_sites(model, specs, example.unsqueeze(0).to(job.device))
    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:  # SHA-256 on one thread, CRC-32s beside
        weights_digest = weights_sha256_on(pool, model)
        stim_digest = pool.submit(stim.sha256)
        weights_sha, stim_sha = weights_digest(), stim_digest.result()
    _check_names(sites, stim)
    desc = dict(getattr(model, "unitrec_description", {"name": type(model).__name__}))
    anatomy = anatomy_of(model)  # what the weights' hash cannot see: settings, hooks, forward code
    key = run_key(model=desc, weights_sha256=weights_sha, anatomy_sha256=anatomy.digest,
                  preprocessing=preprocessing,
                  sites=[s.spec.model_dump(by_alias=True, exclude_defaults=True) for s in sites],
                  stimuli_sha256=stim_sha, n_stimuli=len(stim), coordinates_sha256=coordinates_sha256(stim.coords),
                  dtype=job.dtype, device=str(job.device),
                  stimuli_description=stim.description if stim.root is None else None,
                  background=job.background if stim.root is not None else None)
    final, extra = out, {}
    if job.shard is not None:
        if job.overwrite:
            refuse_foreign(final)  # kept whole: the last shard's stitch replaces it
        elif final.exists() and not _lost_shard(final, shard_path(final, *job.shard)):
            # this job's stitched (or one-process) recording is already there
            _adopted(check_finished(final, key, stim), job.batch_size, final, "was recorded")
            return final
        out = shard_path(final, *job.shard)
        part = shard_part(out, len(stim), job)
        job = dataclasses.replace(job, batch_size=part.batch_size)
        key = {**key, "shard": part.describe()}
        extra = {"shard": part.to_attr()}
        stim = stim.subset(part.start, part.stop)
    partial = partial_path(out)
    _no_folder_at(partial, creating_path(out))
    if job.overwrite:
        refuse_foreign(out)  # the partial file's name is unitrec's own
        partial.unlink(missing_ok=True)  # `out` stays whole until the new recording replaces it
        if out.exists():  # which file this run replaces: only it may be replaced by a resume
            extra["replaces_run"] = _run_id(out)
    elif out.exists():
        refuse_foreign(out)
        if not _replacing(out, partial, key, stim):
            stored_batch = check_finished(out, key, stim)
            _adopted(stored_batch, job.batch_size, out, "was recorded")
            return out
    creating_path(out).unlink(missing_ok=True)  # left by a run killed while creating the file
    resumed = partial.exists()
    if resumed:
        rec_file = RecordingFile.reopen(out, sites, key, stim)
        batch_size = _adopted(rec_file.batch_size, job.batch_size, partial, "was started")
    else:
        config = config or _implicit_config(desc, stim, preprocessing, specs, job, final)
        attrs = file_attrs(model=desc, weights_sha256=weights_sha, preprocessing=preprocessing,
                           config=config, stimuli_sha256=stim_sha, key=key,
                           stimuli_description=stim.description,
                           stimulus_root=str(stim.root) if stim.root is not None else "",
                           anatomy=anatomy.packed()) | extra
        _check_space(out.parent, sites, len(stim), job)
        rec_file = RecordingFile.create(out, stim.labels, stim.coords, stim.file_stats(), sites, attrs,
                                        batch_size=job.batch_size, dtype=job.dtype,
                                        compression=job.compression)
        batch_size = job.batch_size
    failed = True
    try:
        todo = rec_file.todo()
        if resumed:
            _check_space(out.parent, sites, len(todo), job)
        elapsed = _stream(model, sites, trace, stim, rec_file, todo, transform, job, batch_size)
        if len(todo):
            rec_file.h5.attrs["last_run_seconds"] = round(elapsed, 3)
            rec_file.h5.attrs["last_run_images_per_second"] = round(len(todo) / max(elapsed, 1e-9), 2)
        overflow = rec_file.float16_overflow()
        path = rec_file.finish()
        failed = False
    finally:
        rec_file.close(quiet=failed)  # after a disk error, closing may fail too: keep the first error
    for site, count in overflow.items():
        warnings.warn(f"{site}: {count} values exceeded float16's range (±65504) and are stored as ±inf "
                      "(counted in the site's 'float16_overflow' attribute); record it as float32",
                      UnitrecWarning, stacklevel=3)
    return path


def _stream(model, sites: list[Site], trace, stim: StimulusSet, rec_file: RecordingFile, todo: np.ndarray,
            transform, job: Job, batch_size: int) -> float:
    if len(todo) == 0:
        return 0.0
    device, cuda = job.device, job.device.type == "cuda"
    blocks = _blocks(todo, len(stim), batch_size)
    is_todo = np.zeros(len(stim), dtype=bool)
    is_todo[todo] = True
    loader = torch.utils.data.DataLoader(
        stim.dataset(transform, job.background), batch_sampler=blocks, num_workers=job.num_workers,
        collate_fn=collate, pin_memory=cuda, persistent_workers=False,
        prefetch_factor=4 if job.num_workers else None,
        worker_init_fn=functools.partial(_die_with_parent, os.getpid()) if job.num_workers else None,
    )
    torch_dtype = torch.float16 if job.dtype == "float16" else torch.float32
    ring = [{s.key: torch.empty((batch_size, *s.shape), dtype=torch_dtype, pin_memory=cuda) for s in sites
             if s.stored} for _ in range(_QUEUE + 2)]
    accumulators = {s.key: Accumulator(rec_file.summary_states[s.key], s.top, device) for s in sites
                    if s.summarised}
    saving = _SummarySaving(accumulators)
    writer = AsyncWriter(maxsize=_QUEUE)
    bar = _progress(job.progress, len(stim), len(stim) - len(todo))
    recorder = Recorder.from_sites(model, sites, trace)
    n_skipped = 0
    start = time.perf_counter()
    batches = iter(loader)
    try:
        with recorder:
            for step, (block, (rows, x, failed, digests)) in enumerate(zip(blocks, batches)):
                failed = [it for it in failed if is_todo[it.index]]
                if failed:
                    _skip(writer, rec_file, failed, job.on_error, n_skipped)
                    n_skipped += len(failed)
                n_new = int(is_todo[block].sum())
                if x is None:
                    bar.update(n_new)
                    continue
                slots = [r - block[0] for r in rows]  # each good image keeps its place in the block
                buffers = {k: v[: len(rows)] for k, v in ring[step % len(ring)].items()}
                pick = None if slots == list(range(len(rows))) else torch.tensor(slots, device=device)
                overflow = {s.key: torch.zeros((), dtype=torch.int64, device=device) for s in sites if s.stored
                            } if torch_dtype == torch.float16 else None
                file_rows = torch.tensor(rows, dtype=torch.int64)

                def sink(site: Site, value: torch.Tensor, buffers=buffers, n=len(rows), pick=pick,
                         overflow=overflow, file_rows=file_rows) -> None:
                    value = value[:n] if pick is None else value.index_select(0, pick)
                    if site.summarised:  # from the model's own values, before any float16 rounding
                        accumulators[site.key].add(value, file_rows)
                    if not site.stored:
                        return
                    if overflow is not None:
                        overflow[site.key] += torch.count_nonzero(value.abs() >= _FLOAT16_LIMIT)
                    buffers[site.key].copy_(value, non_blocking=cuda)

                recorder.run(_whole_block(x, slots, batch_size).to(device, non_blocking=cuda),
                             stop_early=job.stop_early, sink=sink)
                if cuda:
                    torch.cuda.current_stream(device).synchronize()
                read = {k: int(v) for k, v in overflow.items()} if overflow is not None else {}
                counts = {k: n for k, n in read.items() if n}  # one device read per site, not two
                writer.submit(rec_file.write, np.asarray(rows), {k: v.numpy() for k, v in buffers.items()},
                              digests, counts, saving.due(block[-1] + 1, last=step == len(blocks) - 1))
                bar.update(n_new)
        if saving.unsaved:  # the last blocks were undecodable: save what the summaries hold
            writer.submit(rec_file.write, np.zeros(0, dtype=np.int64), {}, None, None, saving.due(None, last=True))
        writer.close()
    except BaseException:
        with contextlib.suppress(BaseException):
            writer.close()  # let batches already handed over reach the disk
        raise
    finally:
        bar.close()
        # after an error, torch would keep the workers until garbage collection and
        # then wait 5 s for each; stop them now
        getattr(batches, "_shutdown_workers", lambda: None)()
    if n_skipped > _WARN_SKIPPED:
        warnings.warn(f"{n_skipped} undecodable images skipped in all; `unitrec info {rec_file.final.name}` "
                      "lists them (they are in the file's 'skipped' attribute)", UnitrecWarning, stacklevel=3)
    return time.perf_counter() - start


class _SummarySaving:
    """When to save the summaries: after every batch while they are small, else every
    ``_SAVE_SECONDS`` and after the last batch (a crash loses the rows since the last save)."""

    def __init__(self, accumulators: dict[str, Accumulator]) -> None:
        self.accumulators = accumulators
        units = sum(a.snapshot()[1]["mean"].numel() * (6 + 4 * a.top) for a in accumulators.values())
        self.every = 0.0 if units * 8 <= _SAVE_ALWAYS_BYTES else _SAVE_SECONDS
        self.last = time.monotonic()
        self.through = 0
        self.unsaved = False

    def due(self, through: int | None, *, last: bool) -> tuple[int, dict[str, Any]] | None:
        """``(through, snapshots)`` to save with this batch, or None."""
        if not self.accumulators:
            return None
        self.through = through if through is not None else self.through
        if not last and time.monotonic() - self.last < self.every:
            self.unsaved = True
            return None
        self.last, self.unsaved = time.monotonic(), False
        return self.through, {k: a.snapshot() for k, a in self.accumulators.items()}


def _blocks(todo: np.ndarray, n: int, batch_size: int) -> list[list[int]]:
    """The fixed blocks of rows that hold at least one row still to do."""
    # bincount, not np.unique: the same sorted starts without importing numpy.ma (8 ms)
    starts = np.flatnonzero(np.bincount(np.asarray(todo, dtype=np.int64) // batch_size)) * batch_size
    return [list(range(int(s), min(int(s) + batch_size, n))) for s in starts]


def _whole_block(x: torch.Tensor, slots: list[int], batch_size: int) -> torch.Tensor:
    """The batch as the model always sees this block: `batch_size` images, each row in its slot.

    Slots of undecodable images and past the end of the stimulus list hold copies of
    the block's first good image (PyTorch picks its kernels by batch size, so the
    batch is always full size).
    """
    if len(slots) == batch_size:
        return x
    index = torch.zeros(batch_size, dtype=torch.long)
    index[slots] = torch.arange(len(slots))
    return x.index_select(0, index)


def _die_with_parent(parent: int, worker_id: int) -> None:
    """DataLoader worker set-up: die with the recording process (Linux).

    A worker orphaned by SIGKILL would otherwise keep the inherited lock and HDF5
    file handles for seconds, refusing an immediate rerun as "another process".
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above ran
        os._exit(0)


def _skip(writer: AsyncWriter, rec_file: RecordingFile, failed, on_error: str, already: int) -> None:
    if on_error == "raise":
        raise StimulusError(failed[0].error)
    for item in failed[: max(0, _WARN_SKIPPED - already)]:
        warnings.warn(f"skipped: {item.error}", UnitrecWarning, stacklevel=4)
    # through the writer, so the mark lands in order with the batch's rows
    writer.submit(rec_file.mark_skipped, [it.index for it in failed], [it.error for it in failed])


def _adopted(stored: int | None, asked: int, path: Path, what: str) -> int:
    """The batch size a file was made with wins over the one asked for, with a notice."""
    if stored is None or stored == asked:
        return asked
    warnings.warn(f"{path.name} {what} with batch_size {stored}; keeping it (asked: {asked}), because "
                  "PyTorch may compute other batch sizes with other kernels (last-bit differences)",
                  UnitrecWarning, stacklevel=4)
    return stored


def _first_good(loading, on_error: str) -> torch.Tensor:
    errors = []
    for i in range(len(loading)):
        item = loading[i]
        if item.tensor is not None:
            return item.tensor
        if on_error == "raise":
            raise StimulusError(item.error)
        errors.append(item.error)
    if not errors:
        raise StimulusError("the stimulus set is empty")
    raise StimulusError(f"none of the {len(errors)} stimuli could be decoded; the first: {errors[0]}")


def _progress(enabled: bool, total: int, initial: int):
    """A tqdm bar on a terminal or in a notebook; elsewhere (a SLURM log) a line now and then."""
    import sys

    if enabled and not sys.stderr.isatty() and "ipykernel" not in sys.modules:
        return _LineProgress(total, initial)
    if not enabled:  # tqdm.auto warns in a notebook without ipywidgets, even for a disabled bar
        from tqdm import tqdm
    else:
        from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="recording", disable=not enabled,
                dynamic_ncols=True)


class _LineProgress:
    """Progress for a log file: whole lines (no ``\\r`` redraws), at the start, at most once
    every ``interval`` seconds, and at the end."""

    def __init__(self, total: int, initial: int, interval: float = 60.0) -> None:
        import time

        self.total, self.done, self.first, self.interval = total, initial, initial, interval
        self.start = self.last = time.monotonic()
        self._line()

    def update(self, n: int = 1) -> None:
        import time

        self.done += n
        if time.monotonic() - self.last >= self.interval:
            self._line()

    def close(self) -> None:
        if self.done != self.shown:  # the last count, unless the last line said it
            self._line()

    def _line(self) -> None:
        import sys
        import time

        now = time.monotonic()
        self.last, self.shown = now, self.done
        rate = (self.done - self.first) / (now - self.start) if now > self.start else 0.0
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        left = f", {(self.total - self.done) / rate / 60:.1f} min left" if rate > 0 and self.done < self.total else ""
        print(f"recording: {self.done}/{self.total} img{share}, {rate:.1f} img/s{left}", file=sys.stderr, flush=True)


def _check_output(out: str | os.PathLike) -> Path:
    """The output path, resolved; its folder created and writable; not a folder itself."""
    if not isinstance(out, (str, os.PathLike)) or not os.fspath(out):
        raise ConfigError(f"output must be a file path such as 'runs/acts.h5', got {out!r}")
    out = Path(out).expanduser().resolve()
    if out.is_dir():
        raise ConfigError(f"output {out} is a folder; give a file path inside it, e.g. {out / 'activations.h5'}")
    folder = out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecordingError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK):
        raise RecordingError(f"output folder {folder} is not writable; choose another output path")
    return out


def _lost_shard(final: Path, shard: Path) -> bool:
    """`final` is stitched over shard files, and this shard's file is gone: record it again
    (the stitch is then made anew), rather than calling the job done."""
    if shard.exists() or partial_path(shard).exists():
        return False
    try:
        with open_existing(final) as h5:
            return h5.attrs.get("stitched") == "virtual"
    except RecordingError:
        return False


def _run_id(path: Path) -> str:
    """A finished file's identity: its run id and when it was finished."""
    try:
        with open_existing(path) as h5:
            return f"{h5.attrs.get('run_id', '')} {h5.attrs.get('finished', '')}"
    except RecordingError:
        return ""


def _no_folder_at(*paths: Path) -> None:
    """unitrec's own temporary names hold files; a folder there is refused in one line."""
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            raise RecordingError(f"{p} is a folder, where unitrec keeps a temporary file of this recording; "
                                 "move it away and rerun")


def _replacing(out: Path, partial: Path, key: dict[str, Any], stim: StimulusSet) -> bool:
    """`out` holds another job, and `partial` is this job's --overwrite run that was
    interrupted: resume it (it replaces `out` when it finishes)."""
    if not partial.exists():
        return False
    try:
        with open_existing(partial) as h5:
            check_run_key(h5, key, partial, stim.labels, coords=stim.coords)
            replaces = h5.attrs.get("replaces_run")
    except RecordingError:
        return False  # the partial file is another job's: left alone, and `out` is checked as it is
    try:
        check_finished(out, key, stim)
    except RecordingError:
        pass
    else:  # `out` is this job's, finished: an interrupted --overwrite of the same job adds nothing
        partial.unlink(missing_ok=True)
        warnings.warn(f"removed {partial.name}, an interrupted --overwrite of this same job: {out.name} already "
                      "holds it, finished", UnitrecWarning, stacklevel=4)
        return False
    if replaces is None or replaces != _run_id(out):
        return False  # not an --overwrite of the file there now (it was made after the partial one)
    warnings.warn(f"resuming {partial.name}, an --overwrite run of this job that was interrupted; it replaces "
                  f"{out.name} (another job's recording, kept until then) when it finishes", UnitrecWarning,
                  stacklevel=4)
    return True


def _check_names(sites: list[Site], stim: StimulusSet) -> None:
    """A site stored under a name the file already uses at its root would clash."""
    taken = set(reserved_names()) | set(stim.coords)
    for site in sites:
        if site.key in taken:
            what = "a stimulus coordinate (a metadata.csv column or the class label)" if site.key in stim.coords \
                else "a name the file itself uses"
            raise ConfigError(f"site {site.key!r} would be stored under {what}; store it under another "
                              f"name with as: (e.g. {{name: {site.spec.name}, as: {site.key}_site}})")


def _check_space(folder: Path, sites: list[Site], n_rows: int, job: Job) -> None:
    """Refuse to start what cannot fit: the uncompressed size of the rows still to record."""
    itemsize = 2 if job.dtype == "float16" else 4
    data = 0 if job.compression is not None else \
        n_rows * sum(int(np.prod(s.shape, dtype=np.int64)) for s in sites if s.stored) * itemsize
    # what the writer reserves per batch (data + 1/16 + 1 MiB), plus room for the layout;
    # compressed data has no honest estimate: only the margin is checked. Summaries are
    # never compressed: two save slots and the finished datasets, float64.
    summaries = sum(int(np.prod(s.shape, dtype=np.int64)) * 8 * (2 * (6 + 4 * s.top) + 9 + 4 * s.top)
                    for s in sites if s.summarised)
    need = data + data // 16 + summaries + reserve_margin(n_rows, len(sites))
    free = shutil.disk_usage(folder).free
    if need > free:
        raise RecordingError(f"this recording needs about {human_size(need)} more and {folder} has "
                             f"{human_size(free)} free; free some space or choose another output")


def _implicit_config(desc, stim: StimulusSet, preprocessing, specs, job: Job, out) -> dict:
    """The config a Python call is equivalent to, stored like a YAML run's."""
    return {
        "model": {k: desc.get(k) for k in ("name", "weights", "checkpoint", "seed") if k in desc},
        "stimuli": {"path": str(stim.root) if stim.root is not None else stim.description},
        "preprocess": preprocessing,
        "layers": [s.model_dump(by_alias=True, exclude_defaults=True) for s in specs],
        "record": {"batch_size": job.batch_size, "device": str(job.device), "dtype": job.dtype},
        "output": str(out),
    }
