"""``record``: show a stimulus set to a model and stream the chosen sites to HDF5.

The loop: a DataLoader decodes and preprocesses batches (in worker processes if
asked); each batch runs through the model with the recorder's hooks, stopping after
the deepest site; the selected values are copied once into a ring of host buffers
(pinned on CUDA); a background thread writes them, flushes, and marks the rows done.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .errors import RecordingError, StimulusError
from .model import state_dict_sha256
from .preprocess import build_transform, describe_transform
from .provenance import file_attrs, run_key
from .recorder import Recorder
from .schema import parse_layers
from .sites import Site, resolve_sites
from .stimuli.dataset import StimulusSet, as_stimulus_set, collate
from .writer import AsyncWriter, RecordingFile, partial_path

__all__ = ["record"]

_QUEUE = 2  # batches waiting for the disk; the ring holds _QUEUE + 2 buffers


def record(
    model: nn.Module,
    stimuli: Any,
    layers: Any,
    out: str | os.PathLike,
    *,
    transform: Callable | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    dtype: str = "float32",
    compression: str | None = None,
    stop_early: bool = True,
    on_error: str = "skip",
    background: Sequence[int] = (255, 255, 255),
    overwrite: bool = False,
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
        ``sample``), see DESIGN.md.
    out
        Path of the finished file. Until it is finished the data lives in
        ``<out>.partial.h5``; rerunning the same job resumes it.
    transform
        PIL RGB image → CHW float tensor. Default: the weights' own preprocessing,
        else resize 256, centre crop 224, ImageNet normalisation.
    batch_size, device, num_workers
        Loading and compute. Batch size never changes a value.
    progress
        Show a tqdm progress bar.
    dtype
        ``"float32"`` (default) or ``"float16"`` storage.
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
    config
        The experiment config to store in the file (set by :func:`run_config`).

    Returns
    -------
    pathlib.Path
        The finished file.

    Examples
    --------
    >>> import unitrec as ur
    >>> model = ur.load_model("resnet18")
    >>> path = ur.record(model, "stimuli/", ["layer1", "layer4.1"], "acts.h5")  # doctest: +SKIP
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    out = Path(out).expanduser().resolve()
    _check_output_folder(out)
    specs = parse_layers(layers)
    stim = as_stimulus_set(stimuli)
    device = torch.device(device)
    if transform is None and stim.root is not None:
        transform = getattr(model, "unitrec_transform", None) or build_transform()
    preprocessing = describe_transform(transform) if transform is not None else "none (tensor stimuli)"

    with _lock(out):
        if out.exists() and not overwrite:
            _check_finished(out, stim)
            return out
        training = model.training
        try:
            model.to(device).eval()
            return _record(model, stim, specs, out, transform, preprocessing, batch_size, device,
                           num_workers, progress, dtype, compression, stop_early, on_error,
                           tuple(background), overwrite, config)
        finally:
            model.train(training)


def _record(model, stim: StimulusSet, specs, out: Path, transform, preprocessing, batch_size, device,
            num_workers, progress, dtype, compression, stop_early, on_error, background, overwrite, config):
    loading = stim.dataset(transform, background)
    example = _first_good(loading, on_error)
    sites, trace = resolve_sites(model, specs, example.unsqueeze(0).to(device))
    desc = dict(getattr(model, "unitrec_description", {"name": type(model).__name__}))
    weights_sha = state_dict_sha256(model)
    key = run_key(model=desc, weights_sha256=weights_sha, preprocessing=preprocessing,
                  sites=[s.spec.model_dump(by_alias=True, exclude_defaults=True) for s in sites],
                  stimuli_sha256=stim.sha256(), n_stimuli=len(stim), dtype=dtype, device=str(device))
    config = config or _implicit_config(desc, stim, preprocessing, specs, batch_size, device, dtype, out)
    partial = partial_path(out)
    if overwrite:
        for p in (partial, out):
            p.unlink(missing_ok=True)
    if partial.exists():
        rec_file = RecordingFile.reopen(out, sites, key)
    else:
        attrs = file_attrs(model=desc, weights_sha256=weights_sha, preprocessing=preprocessing,
                           config=config, stimuli_sha256=stim.sha256(), key=key,
                           stimuli_description=stim.description,
                           stimulus_root=str(stim.root) if stim.root is not None else "")
        rec_file = RecordingFile.create(out, stim.labels, stim.coords, sites, attrs,
                                        batch_size=batch_size, dtype=dtype, compression=compression)
    try:
        todo = rec_file.todo()
        elapsed = _stream(model, sites, trace, stim, rec_file, todo, transform, background, batch_size,
                          device, num_workers, progress, dtype, stop_early, on_error)
        if len(todo):
            rec_file.h5.attrs["last_run_seconds"] = round(elapsed, 3)
            rec_file.h5.attrs["last_run_images_per_second"] = round(len(todo) / max(elapsed, 1e-9), 2)
        return rec_file.finish()
    finally:
        rec_file.close()


def _stream(model, sites: list[Site], trace, stim, rec_file: RecordingFile, todo, transform, background,
            batch_size, device, num_workers, progress, dtype, stop_early, on_error) -> float:
    if len(todo) == 0:
        return 0.0
    cuda = device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        stim.dataset(transform, background, rows=todo.tolist()), batch_size=batch_size,
        num_workers=num_workers, collate_fn=collate, pin_memory=cuda,
        persistent_workers=False, prefetch_factor=4 if num_workers else None,
    )
    torch_dtype = torch.float16 if dtype == "float16" else torch.float32
    ring = [{s.key: torch.empty((batch_size, *s.shape), dtype=torch_dtype, pin_memory=cuda) for s in sites}
            for _ in range(_QUEUE + 2)]
    writer = AsyncWriter(maxsize=_QUEUE)
    bar = _progress(progress, len(stim), len(stim) - len(todo))
    recorder = Recorder.from_sites(model, sites, trace)
    start = time.perf_counter()
    try:
        with recorder:
            for step, (rows, x, failed) in enumerate(loader):
                if failed:
                    _skip(writer, rec_file, failed, on_error)
                if x is None:
                    bar.update(len(failed))
                    continue
                buffers = {k: v[: len(rows)] for k, v in ring[step % len(ring)].items()}

                def sink(site: Site, value: torch.Tensor, buffers=buffers, n=len(rows)) -> None:
                    buffers[site.key].copy_(value[:n], non_blocking=cuda)

                if len(rows) == 1:
                    # PyTorch picks other CPU kernels for a single image (last-bit
                    # differences); a batch of two keeps values independent of batching
                    x = torch.cat([x, x])
                recorder.run(x.to(device, non_blocking=cuda), stop_early=stop_early, sink=sink)
                if cuda:
                    torch.cuda.current_stream(device).synchronize()
                writer.submit(rec_file.write, np.asarray(rows), {k: v.numpy() for k, v in buffers.items()})
                bar.update(len(rows) + len(failed))
        writer.close()
    except BaseException:
        with contextlib.suppress(BaseException):
            writer.close()  # let batches already handed over reach the disk
        raise
    finally:
        bar.close()
    return time.perf_counter() - start


def _skip(writer: AsyncWriter, rec_file: RecordingFile, failed, on_error: str) -> None:
    if on_error == "raise":
        raise StimulusError(failed[0].error)
    for item in failed:
        warnings.warn(f"skipped: {item.error}", stacklevel=3)
    # through the writer, so the mark lands in order with the batch's rows
    writer.submit(rec_file.mark_skipped, [it.index for it in failed], [it.error for it in failed])


def _first_good(loading, on_error: str) -> torch.Tensor:
    for i in range(len(loading)):
        item = loading[i]
        if item.tensor is not None:
            return item.tensor
        if on_error == "raise":
            raise StimulusError(item.error)
    raise StimulusError("no stimulus could be decoded; see the warnings above")


def _progress(enabled: bool, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="recording", disable=not enabled,
                dynamic_ncols=True)


def _check_output_folder(out: Path) -> None:
    folder = out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecordingError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK):
        raise RecordingError(f"output folder {folder} is not writable; choose another output path")


def _check_finished(out: Path, stim: StimulusSet) -> None:
    """A finished file is never rewritten unless asked; same job → nothing to do."""
    import h5py

    try:
        with h5py.File(out, "r") as h5:
            same = h5.attrs.get("stimulus_set_sha256") == stim.sha256()
    except OSError as exc:
        raise RecordingError(f"{out} exists and is not a readable HDF5 file ({exc}); "
                             "use --overwrite to replace it") from None
    if not same:
        raise RecordingError(f"{out} already holds a finished recording of other stimuli; "
                             "use --overwrite (overwrite=True) to replace it, or another output path")


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """Refuse a second process writing the same output at the same time.

    An advisory lock on ``<out>.lock``, removed at the end. A process that locked
    a lock file which was removed meanwhile (the inode no longer at the path) has
    locked nothing, and tries again on the new file.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; HDF5's own locking still applies
        yield
        return
    lock_path = out.with_name(out.name + ".lock")
    for _ in range(5):
        fh = open(lock_path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise RecordingError(
                f"another process is writing {out} right now (lock {lock_path}); wait for it or "
                "choose another output"
            ) from None
        try:
            current = os.stat(lock_path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fh.fileno()).st_ino:
            break
        fh.close()  # locked a file that was removed meanwhile: try the new one
    else:
        raise RecordingError(f"cannot take the lock {lock_path}; is another process writing {out}?")
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)  # while still holding the lock
        fh.close()


def _implicit_config(desc, stim: StimulusSet, preprocessing, specs, batch_size, device, dtype, out) -> dict:
    """The config a Python call is equivalent to, stored like a YAML run's."""
    return {
        "model": {k: desc.get(k) for k in ("name", "weights", "checkpoint", "seed") if k in desc},
        "stimuli": {"path": str(stim.root) if stim.root is not None else stim.description},
        "preprocess": preprocessing,
        "layers": [s.model_dump(by_alias=True, exclude_defaults=True) for s in specs],
        "record": {"batch_size": batch_size, "device": str(device), "dtype": dtype},
        "output": str(out),
    }
