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

This module sets a run up (stimuli, sites, the run key, resume or replace, shards)
and finishes it; the batch loop itself is ``stream.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, cast

import numpy as np
import torch
from torch import nn

from unitrec._text import human_size
from unitrec.anatomy.fingerprint import anatomy_of
from unitrec.anatomy.model import HASH_THREADS, weights_sha256_on
from unitrec.anatomy.preprocess import build_transform, describe_transform
from unitrec.anatomy.sites import Site, resolve_sites
from unitrec.errors import ConfigError, RecordingError, StimulusError, UnitrecWarning
from unitrec.files.disk import open_existing, refuse_foreign
from unitrec.files.layout import creating_path, partial_path, reserve_margin, reserved_names
from unitrec.files.lock import output_lock
from unitrec.files.merge import stitch_if_complete
from unitrec.files.resume import check_finished, check_run_key
from unitrec.files.shards import check_counts, shard_part, shard_path
from unitrec.files.writer import RecordingFile
from unitrec.recording.job import Job, launched_shard
from unitrec.recording.lesion import Lesions
from unitrec.recording.provenance import coordinates_sha256, file_attrs, run_key
from unitrec.recording.stream import first_good, stream
from unitrec.schema import AblationSpec, Layers, parse_ablation, parse_layers
from unitrec.stimuli.dataset import Stimuli, StimulusSet, as_stimulus_set

__all__ = ["record"]


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
    compression: Literal["gzip", "zstd"] | None = None,
    keepbits: int | None = None,
    stop_early: bool = True,
    on_error: Literal["skip", "raise"] = "skip",
    background: Sequence[int] = (255, 255, 255),
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    ablate: Any = None,
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
        None (default), ``"gzip"`` (shuffle + deflate level 1: every HDF5 and netCDF reader
        has it built in) or ``"zstd"`` (level 1, needs ``hdf5plugin`` to write and to read).
    keepbits
        None (default) or 1–23: store float32 values BitRounded to that many mantissa
        bits (round to nearest, ties to even; relative error ≤ 2^-(keepbits+1); NaN and
        ±inf kept), compressed with gzip unless ``compression="zstd"``. Needs dtype float32.
        Part of the run key; summaries are computed from the unrounded values.
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
    ablate
        Lesions applied while recording: a list of entries naming a site, its units
        with the layer-entry keys (``channels``, ``units: center``, ``positions``;
        none: the whole site) and ``set: 0`` (any number), ``set: "mean"`` with
        ``from: FILE`` (each unit's mean in that recording) or ``scale: f``, e.g.
        ``[{"name": "layer3.0", "channels": [5, 9], "set": 0}]``. Every consumer of
        the module sees the lesioned output. Part of the run key, and stored in the
        file's ``ablation`` attribute.
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
              compression=compression, keepbits=keepbits, stop_early=stop_early, on_error=on_error,
              background=tuple(background), overwrite=overwrite, shard=shard)
    out = _check_output(out)
    specs = parse_layers(layers)
    lesion_specs = parse_ablation(ablate)
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
                path = _record(model, stim, specs, out, transform, preprocessing, job, config, lesion_specs)
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
            config, lesion_specs: list[AblationSpec]) -> Path:
    example = first_good(stim.dataset(transform, job.background), job.on_error)
    # the trace first, then the hashes. Beside the trace they would hash weights that
    # the trace's forward may still write where no version counter sees it (a numpy view,
    # a deferred `nn.init.*_(w.data)`); and on 2 cores both were slower (measured: set-up
    # 0.30-0.43 s beside, 0.24-0.37 s after)
    sites, trace = resolve_sites(model, specs, example.unsqueeze(0).to(job.device))
    lesions = Lesions(model, lesion_specs, trace)
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
                  background=job.background if stim.root is not None else None,
                  ablation=lesions.key_text() if lesions else None, keepbits=job.keepbits)
    final, extra = out, {}
    if job.shard is not None:
        if job.overwrite:
            refuse_foreign(final)  # kept whole: the last shard's stitch replaces it
        elif final.exists() and not _lost_shard(final, shard_path(final, *job.shard)):
            # this job's stitched (or one-process) recording is already there
            _adopted(check_finished(final, key, stim), job.batch_size, final, "was recorded")
            return final
        out = shard_path(final, *job.shard)
        part = shard_part(out, len(stim), job.shard, job.batch_size, overwrite=job.overwrite)
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
        config = config or _implicit_config(desc, stim, preprocessing, specs, job, final, lesion_specs)
        attrs = file_attrs(model=desc, weights_sha256=weights_sha, preprocessing=preprocessing,
                           config=config, stimuli_sha256=stim_sha, key=key,
                           stimuli_description=stim.description,
                           stimulus_root=str(stim.root) if stim.root is not None else "",
                           anatomy=anatomy.packed()) | extra
        if lesions:
            attrs["ablation"] = lesions.text()
        if job.keepbits is not None:
            attrs["keepbits"] = job.keepbits
        _check_space(out.parent, sites, len(stim), job)
        rec_file = RecordingFile.create(out, stim.labels, stim.coords, stim.file_stats(), sites, attrs,
                                        batch_size=job.batch_size, dtype=job.dtype,
                                        compression=job.compression, keepbits=job.keepbits)
        batch_size = job.batch_size
    failed = True
    try:
        todo = rec_file.todo()
        if resumed:
            _check_space(out.parent, sites, len(todo), job)
        with lesions:
            elapsed = stream(model, sites, trace, stim, rec_file, todo, transform, job, batch_size)
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


def _adopted(stored: int | None, asked: int, path: Path, what: str) -> int:
    """The batch size a file was made with wins over the one asked for, with a notice."""
    if stored is None or stored == asked:
        return asked
    warnings.warn(f"{path.name} {what} with batch_size {stored}; keeping it (asked: {asked}), because "
                  "PyTorch may compute other batch sizes with other kernels (last-bit differences)",
                  UnitrecWarning, stacklevel=4)
    return stored


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


def _implicit_config(desc, stim: StimulusSet, preprocessing, specs, job: Job, out,
                     lesion_specs: list[AblationSpec]) -> dict:
    """The config a Python call is equivalent to, stored like a YAML run's."""
    config = {
        "model": {k: desc.get(k) for k in ("name", "weights", "checkpoint", "seed") if k in desc},
        "stimuli": {"path": str(stim.root) if stim.root is not None else stim.description},
        "preprocess": preprocessing,
        "layers": [s.model_dump(by_alias=True, exclude_defaults=True) for s in specs],
        "record": {"batch_size": job.batch_size, "device": str(job.device), "dtype": job.dtype,
                   **({"compression": job.compression} if job.compression else {}),
                   **({"keepbits": job.keepbits} if job.keepbits is not None else {})},
        "output": str(out),
    }
    if lesion_specs:
        config["ablate"] = [s.model_dump(by_alias=True, exclude_defaults=True) for s in lesion_specs]
    return config
