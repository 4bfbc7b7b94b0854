"""``evolve``: CMA-ES over a generator's codes to find images that drive a unit, streamed to HDF5.

Each generation the optimiser proposes ``population`` codes, the generator renders
them, the objective scores them, and the optimiser is told the scores. The whole
trajectory goes to one file (see :mod:`unitrec.closedloop.trajectory`), written
generation by generation as a recording is written batch by batch: into
``<out>.partial.h5`` under ``<out>.lock``, each generation flushed and then marked
done with the pickled optimiser, renamed to ``<out>`` when finished. A rerun of the
same evolution continues where the last one stopped and ends bit for bit as an
uninterrupted run would; another evolution is refused, naming what differs.

The optimiser is ``cmaes.CMA``: a small NumPy-only package (the ``evolve`` extra)
whose ask/tell object pickles whole, random state included, which is what an exact
resume needs.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unitrec._version import __version__
from unitrec.anatomy.fingerprint import anatomy_of
from unitrec.anatomy.model import state_dict_sha256
from unitrec.anatomy.preprocess import IMAGENET_MEAN, IMAGENET_STD
from unitrec.closedloop.generators import DCTBasis, check_generator, resolve_generator
from unitrec.closedloop.objective import Objective, objective
from unitrec.closedloop.trajectory import (best_of, check_evolve_key, create_layout, done_count,
                                           restore_state, write_generation)
from unitrec.errors import ConfigError, RecordingError
from unitrec.files.disk import fsync_folder, open_existing, refuse_foreign, written_whole
from unitrec.files.layout import creating_path, partial_path
from unitrec.files.lock import output_lock
from unitrec.recording.job import check_device
from unitrec.recording.stream import progress_bar
from unitrec.recording.lesion import lesion_identity
from unitrec.recording.provenance import library_versions, numerics
from unitrec.schema import parse_ablation

__all__ = ["Evolution", "evolve"]

Progress = bool | Callable[[int, np.ndarray], Any]


@dataclasses.dataclass(frozen=True, eq=False)
class Evolution:
    """What :func:`evolve` found, read back from its file.

    Attributes
    ----------
    path
        The evolution file.
    scores
        ``(generations, population)`` float64: the scores the optimiser was told (with
        noise where ``noise > 0``).
    clean_scores
        The same, without noise (the objective's own).
    best_score, best_generation, best_individual
        The highest of `clean_scores` over the whole run, and where (the earliest among equals).
    best_image
        ``(3, H, W)`` float32 in [0, 1]: that individual's image as the model saw it,
        from the file's 8-bit copy.
    best_code
        Its code (float32); ``generator(torch.from_numpy(best_code)[None])`` renders
        it again exactly.
    """

    path: Path
    scores: np.ndarray
    clean_scores: np.ndarray
    best_score: float
    best_generation: int
    best_individual: int
    best_image: np.ndarray
    best_code: np.ndarray

    def __repr__(self) -> str:
        g, p = self.scores.shape
        return (f"Evolution({str(self.path)!r}, {g} generations × {p}, best score {self.best_score:.4g} "
                f"in generation {self.best_generation})")


def evolve(model: nn.Module, unit: Any, out: str | os.PathLike, *, generator: nn.Module | None = None,
           code_size: int | None = None, size: int = 224, generations: int = 100, population: int = 40,
           sigma0: float = 0.5, noise: float = 0.0, fit_rf: bool = False, seed: int = 0,
           device: str | torch.device = "cpu", normalize: Any = "imagenet", ablate: Any = None,
           progress: Progress = True, overwrite: bool = False) -> Evolution:
    """Evolve images that drive `unit` with CMA-ES over a generator's codes; resumable.

    Parameters
    ----------
    model
        The network (its weights are not changed).
    unit
        What to maximise: a site name or layer entry, with ``weights`` or ``pattern``
        (see :func:`unitrec.closedloop.objective.objective`).
    out
        The HDF5 file of the trajectory (written as ``<out>.partial.h5`` until done).
    generator
        An ``nn.Module`` mapping codes ``(B, D)`` to images ``(B, 3, H, W)`` in [0, 1]
        (a GAN you loaded, say). Images of another size than `size` are resized to it.
        Default: :class:`~unitrec.closedloop.generators.DCTBasis`, low-frequency
        cosines, ``3 · k · k`` numbers per image (``k = 8``: 192).
    code_size
        ``D``; default ``generator.code_size``. For the built-in basis ``3 · k · k``
        (27, 48, 75, ... 192, ...) picks ``k``.
    size
        Side of the square images the model sees.
    generations, population
        How many generations, and images per generation (at least 2).
    sigma0
        CMA-ES's initial step size around code 0 (mid-grey for the built-in basis).
        0.5 suits the built-in basis: first images of moderate contrast, whose pixel
        logits have a standard deviation of about 0.5; a GAN's latent space wants about 1.
    noise
        ``σ``: each score is multiplied by ``max(0, 1 + σ · z)``, ``z`` standard normal
        drawn from ``numpy.random.default_rng([seed, generation])`` (so a resumed run
        draws the same), as a neuron's trial-to-trial variability. The optimiser is told
        the noisy scores, which ``scores`` holds; ``clean_scores`` holds the objective's.
    fit_rf
        Show each image only inside the unit's theoretical receptive field: resized to
        the field (its size in input pixels, clipped to the input) and pasted at its
        place on a mid-grey canvas. Needs an objective whose units share one position.
    seed
        Seeds the optimiser (``CMA(seed=...)``) and the noise.
    device
        Where the model and the generator run.
    normalize
        ``"imagenet"`` (mean and std), None, or ``(mean, std)``: applied to the images
        in [0, 1] before the model.
    ablate
        Lesions during every forward pass (see :func:`unitrec.record`).
    progress
        A progress bar (True), none (False), or a callable ``progress(generation, scores)``
        called after each generation is written.
    overwrite
        Start over, replacing whatever evolution is at `out` when the new one finishes.

    Returns
    -------
    Evolution
        The scores and the best image (see :class:`Evolution`); the best is the image
        with the highest ``clean_scores`` (the unit's own response, noise aside), in
        every generation and over the run. The same arguments on a finished file
        return it as stored, computing nothing.

    Raises
    ------
    ConfigError
        Arguments out of range, an unknown unit, a generator that does not make images.
    RecordingError
        `out` holds another evolution (the message names what differs: rerun with
        ``overwrite=True``), is not an HDF5 file, or the scores are not finite.

    Examples
    --------
    >>> model = ur.load_model("resnet18", weights="DEFAULT")  # doctest: +SKIP
    >>> evo = ur.evolve(model, {"name": "layer3", "channels": [5], "units": "center"},
    ...                 "evo.h5", generations=50, population=20)  # doctest: +SKIP
    >>> evo.best_score, evo.best_image.shape  # doctest: +SKIP
    (4.2, (3, 224, 224))
    """
    _check_numbers(size=size, generations=generations, population=population, sigma0=sigma0, noise=noise,
                   seed=seed)
    if not isinstance(fit_rf, bool):
        raise ConfigError(f"fit_rf must be True or False, got {fit_rf!r}")
    if not (isinstance(progress, bool) or callable(progress)):
        raise ConfigError(f"progress must be True, False or a callable progress(generation, scores), got "
                          f"{type(progress).__name__}")
    cma_class = _cma_class()
    out = Path(out)
    if out.is_dir():
        raise RecordingError(f"{out} is a folder; give evolve a file name such as {out / 'evolution.h5'}")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module (e.g. ur.load_model('resnet18')), got "
                          f"{type(model).__name__}")
    entry = _unit_entry(unit)
    gen, code_size, gen_text = resolve_generator(generator, code_size, size)
    mean, std = _normalization(normalize)
    device_name = str(check_device(device))
    desc = dict(getattr(model, "unitrec_description", {"name": type(model).__name__}))
    anatomy = anatomy_of(model)
    weights = state_dict_sha256(model)
    args = {"unit": entry, "generator": gen_text, "code_size": code_size, "size": size, "generations": generations,
            "population": population, "sigma0": float(sigma0), "noise": float(noise), "fit_rf": bool(fit_rf),
            "seed": seed, "normalize": [list(mean), list(std or ())] if mean is not None else None,
            "ablate": lesion_identity(parse_ablation(ablate))}
    key = {name: json.dumps(value, sort_keys=True) for name, value in args.items()}
    key.update({"model": desc.get("name", ""), "model_kwargs": json.dumps(desc.get("kwargs") or {}, sort_keys=True,
                                                                           default=str),
                "weights": weights, "anatomy": anatomy.digest, "device": device_name.split(":")[0],
                "numerics": numerics(device_name)})
    partial = partial_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecordingError(f"cannot make the folder of {out}: {exc.strerror or exc}") from None
    with output_lock(out):
        if overwrite:
            refuse_foreign(out, "choose another output path")  # never replaced unless it is HDF5
            refuse_foreign(partial, "remove it or choose another output path")
            partial.unlink(missing_ok=True)  # `out` stays whole until the new evolution replaces it
        elif out.exists():
            refuse_foreign(out, "choose another output path")
            with open_existing(out) as h5:
                if h5.attrs.get("status") != "complete":
                    raise RecordingError(f"{out} exists but is not a finished unitrec evolution; use overwrite=True "
                                         "to replace it, or another output path")
                check_evolve_key(h5, key, out, "{path} already holds a finished evolution of another job; it "
                                 "differs in {what}. Use overwrite=True to replace it, or another output path")
            return _result(out)
        else:
            refuse_foreign(partial, "remove it or choose another output path")
        obj = objective(model, entry, device=device, ablate=ablate, input_size=(3, size, size))
        gen.to(obj.scorer.device)
        check_generator(gen, code_size, device=obj.scorer.device)
        box = _field_box(obj, size) if fit_rf else None
        creating_path(out).unlink(missing_ok=True)  # left by a run killed while creating the file
        if not partial.exists():
            attrs = {
                "arguments": json.dumps(args, sort_keys=True), "objective": json.dumps(obj.describe()),
                "model": desc.get("name", ""), "model_description": desc.get("description", ""),
                "weights_sha256": weights, "anatomy_sha256": anatomy.digest, "anatomy": anatomy.packed(),
                "evolve_key": json.dumps(key, sort_keys=True), "unitrec_version": __version__,
                "library_versions": json.dumps({**library_versions(), "cmaes": _cmaes_version()}),
                "optimizer": f"cmaes.CMA (cmaes {_cmaes_version()}), seed {seed}, sigma0 {float(sigma0)}",
                "created": _now(), "rf_box": json.dumps(box) if box is not None else "",
                "title": f"unitrec evolution: {desc.get('name', '')} {entry.get('name')}",
            }
            with written_whole(creating_path(out), partial) as h5:
                create_layout(h5, generations=generations, population=population, code_size=code_size,
                              image_hw=(size, size), attrs=attrs)
        h5 = open_existing(partial, "a", unfinished=True)
        try:
            check_evolve_key(h5, key, partial, "{path} is an unfinished evolution of another job; it differs in "
                             "{what}. Rerun with overwrite=True to start over, or choose another output path")
            start = done_count(h5)
            opt = _optimizer(cma_class, h5, start, code_size, float(sigma0), seed, population, partial)
            render = _renderer(gen, size, box, mean, std, obj.scorer.device)
            _run(h5, opt, render, obj, start, generations, population, float(noise), seed, progress)
            h5.attrs["status"] = "complete"
            h5.attrs["finished"] = _now()
            h5.flush()
            os.fsync(h5.id.get_vfd_handle())
        finally:
            h5.close()
        os.replace(partial, out)
        fsync_folder(out.parent)
    return _result(out)


def _run(h5: h5py.File, opt: Any, render: Callable, obj: Objective, start: int, generations: int,
         population: int, noise: float, seed: int, progress: Progress) -> None:
    """Generations `start` .. `generations - 1`: ask, render, score, tell, write."""
    bar = progress_bar(True, generations, start, desc="evolving", unit="gen") if progress is True else None
    try:
        for g in range(start, generations):
            xs = [opt.ask() for _ in range(population)]
            codes = np.asarray(xs, dtype=np.float32)  # what the generator sees, and what the file keeps
            with torch.no_grad():
                shown, model_input = render(torch.from_numpy(codes))
                clean = obj(model_input).detach().double().cpu().numpy()
            z = np.random.default_rng([seed, g]).standard_normal(population)
            scores = clean * np.maximum(0.0, 1.0 + noise * z)
            opt.tell([(x, -float(s)) for x, s in zip(xs, scores)])  # CMA-ES minimises
            best = int(np.argmax(clean))  # the image that drives the unit most, noise aside
            image = np.round(shown[best].cpu().numpy().astype(np.float64) * 255).astype(np.uint8)
            write_generation(h5, g, codes=codes, scores=scores, clean=clean, best_image=image,
                             state=_state(opt))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(best=f"{scores[best]:.4g}", refresh=False)
            if callable(progress) and not isinstance(progress, bool):
                progress(g, scores)
    finally:
        if bar is not None:
            bar.close()


def _renderer(gen: nn.Module, size: int, box: list[int] | None, mean: Sequence[float] | None,
              std: Sequence[float] | None, device: torch.device) -> Callable:
    """codes -> (images in [0, 1] as shown, the model's input)."""
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1) if mean is not None else None
    s = torch.tensor(std, device=device).view(1, 3, 1, 1) if std is not None else None

    # the built-in basis ends in tanh: its pixels are in [0, 1] by construction, a user's are checked
    trusted = isinstance(gen, DCTBasis)

    def render(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        training = gen.training
        try:
            gen.eval()
            images = gen(codes.to(device))
        finally:
            gen.train(training)
        if not isinstance(images, torch.Tensor):
            raise RecordingError(f"the generator {type(gen).__name__} returned {type(images).__name__}, not an "
                                 "image batch; return a tensor (B, 3, H, W) in [0, 1]")
        lo, hi = torch.aminmax(images) if not trusted else (0.0, 1.0)  # one pass; NaN fails both tests
        if not (float(lo) >= 0 and float(hi) <= 1):
            raise RecordingError(f"the generator {type(gen).__name__} gave pixels that are not finite or not in "
                                 "[0, 1] for a code CMA-ES proposed; end it with a sigmoid, or lower sigma0")
        images = images.float()
        if box is not None:
            y0, y1, x0, x1 = box
            inner = _resize(images, (y1 - y0, x1 - x0))
            images = torch.full((len(images), 3, size, size), 0.5, device=images.device, dtype=images.dtype)
            images[:, :, y0:y1, x0:x1] = inner
        elif tuple(images.shape[2:]) != (size, size):
            images = _resize(images, (size, size))
        model_input = (images - m).div_(s) if m is not None and s is not None else images
        return images, model_input

    return render


def _resize(images: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[2:]) == hw:
        return images
    # antialiased bilinear: a convex mix of pixels, so [0, 1] stays [0, 1] up to rounding
    return F.interpolate(images, size=hw, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def _field_box(obj: Objective, size: int) -> list[int]:
    """``[y0, y1, x0, x1]``: the unit's theoretical receptive field in input pixels, clipped to the input."""
    units, sites = obj.scorer.units, obj.scorer.sites
    field = sites[0].field if len(sites) == 1 else None
    if field is None or "rf_center_y" not in units or units["rf_center_y"].isna().any():
        raise ConfigError(f"fit_rf needs a unit with a spatial receptive field (a position in a convolutional map, "
                          f"e.g. {{'name': 'layer3', 'channels': [5], 'units': 'center'}}); "
                          f"{obj.entry.get('name')!r} has none")
    centres = set(zip(units["rf_center_y"].astype(float), units["rf_center_x"].astype(float)))
    if len(centres) != 1:
        raise ConfigError(f"fit_rf needs units at one position; {obj.entry.get('name')!r} selects "
                          f"{len(centres)} positions: pick one with 'units': 'center' or a y and x")
    (cy, cx), (h, w) = centres.pop(), field.size
    if not all(math.isfinite(v) for v in (cy, cx, h, w)):
        raise ConfigError(f"fit_rf: the receptive field of {obj.entry.get('name')!r} is unknown; use fit_rf=False")
    y0, y1 = max(0, round(cy - (h - 1) / 2)), min(size, round(cy + (h - 1) / 2) + 1)
    x0, x1 = max(0, round(cx - (w - 1) / 2)), min(size, round(cx + (w - 1) / 2) + 1)
    if y1 <= y0 or x1 <= x0:
        raise ConfigError(f"fit_rf: the receptive field of {obj.entry.get('name')!r} lies outside the "
                          f"{size}×{size} input; use fit_rf=False or another unit")
    return [int(y0), int(y1), int(x0), int(x1)]


def _optimizer(cma_class: type, h5: h5py.File, done: int, code_size: int, sigma0: float, seed: int,
               population: int, path: Path) -> Any:
    """A fresh CMA at code 0, or the one after the last done generation."""
    def fresh() -> Any:
        opt = cma_class(mean=np.zeros(code_size), sigma=sigma0, seed=seed, population_size=population)
        history = getattr(opt, "_funhist_values", None)
        if isinstance(history, np.ndarray):  # np.empty: read only once written, but pickled as it is
            history[:] = 0
        return opt

    if done == 0:
        return fresh()
    state = restore_state(h5, done - 1)
    if state is not None:
        # unpickling runs code: only this job's own partial file (its key matched) gets here
        saved = pickle.loads(state)
        if isinstance(saved, dict) and saved.get("cmaes") == _cmaes_version() and isinstance(saved.get("state"), dict):
            opt: Any = object.__new__(cma_class)
            opt.__dict__.update(saved["state"])
            return opt
    # no state for that generation (killed between the state and its mark, another cmaes version):
    # replay the done generations; CMA's sampling is seeded, so ask gives the same codes
    opt = fresh()
    codes, scores = h5["codes"][:done], h5["scores"][:done]
    for g in range(done):
        xs = [opt.ask() for _ in range(population)]
        if not np.array_equal(np.asarray(xs, dtype=np.float32), codes[g]):
            raise RecordingError(f"{path}: generation {g} cannot be replayed (another cmaes version?); rerun with "
                                 "overwrite=True to start over")
        opt.tell([(x, -float(s)) for x, s in zip(xs, scores[g])])
    return opt


def _state(opt: Any) -> bytes:
    """The optimiser's whole state, pickled.

    Not ``pickle.dumps(opt)``: ``cmaes.CMA``'s own pickle leaves out its random state
    and keeps one triangle of the covariance, which is symmetric only to rounding after
    ``tell``; either way a resumed run would sample other codes. Its ``__dict__`` is
    kept instead, with the cmaes version that can read it back.
    """
    return pickle.dumps({"cmaes": _cmaes_version(), "state": dict(vars(opt))}, protocol=4)


def _result(path: Path) -> Evolution:
    with open_existing(path) as h5:
        scores, clean = h5["scores"][...], h5["clean_scores"][...]
        g, i = best_of(clean)
        image = h5["best_image"][g].astype(np.float32) / np.float32(255)
        code = h5["codes"][g, i]
    return Evolution(path=path, scores=scores, clean_scores=clean, best_score=float(clean[g, i]),
                     best_generation=g, best_individual=i, best_image=image, best_code=code)


# ---------------------------------------------------------------------------- arguments
def _check_numbers(**values: Any) -> None:
    # size as visualize's; CMA-ES's covariance update divides by terms that vanish below 4 (numpy warns)
    ints = {"size": 16, "generations": 1, "population": 4, "seed": 0}
    for name, least in ints.items():
        v = values[name]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least:
            raise ConfigError(f"{name} must be an integer ≥ {least}, got {v!r}")
    for name, positive in (("sigma0", True), ("noise", False)):
        v = values[name]
        ok = isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or (v <= 0 if positive else v < 0):
            raise ConfigError(f"{name} must be a finite number {'> 0' if positive else '≥ 0'}, got {v!r}"
                              + ("; 0.5 suits the built-in basis" if name == "sigma0" else ""))


def _cma_class() -> type:
    try:
        from cmaes import CMA  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError("evolution needs cmaes: pip install 'unitrec[evolve]'") from None
    return CMA


def _cmaes_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cmaes")
    except PackageNotFoundError:
        return "unknown"


def _unit_entry(unit: Any) -> dict[str, Any]:
    if isinstance(unit, str):
        return {"name": unit}
    if isinstance(unit, dict):
        return json.loads(json.dumps(unit, default=_plain))  # the entry as the file will hold it
    raise ConfigError(f"unit must be a site name or a layer entry like {{'name': 'layer3', 'channels': [5], "
                      f"'units': 'center'}}, got {type(unit).__name__} {unit!r:.60}")


def _plain(value: Any) -> Any:
    """Arguments as JSON values (lesions by their fields, arrays as lists)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "model_dump"):
        return value.model_dump(exclude_defaults=True)
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)


def _normalization(normalize: Any) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    if normalize is None:
        return None, None
    if isinstance(normalize, str):
        if normalize.lower() != "imagenet":
            raise ConfigError(f"normalize must be 'imagenet', None or (mean, std); got {normalize!r}")
        return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)
    try:
        mean_in, std_in = normalize
        mean = tuple(float(v) for v in np.broadcast_to(np.asarray(mean_in, float), (3,)))
        std = tuple(float(v) for v in np.broadcast_to(np.asarray(std_in, float), (3,)))
    except (TypeError, ValueError):
        raise ConfigError(f"normalize must be 'imagenet', None or (mean, std) with one or three numbers each; "
                          f"got {normalize!r:.60}") from None
    if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise ConfigError(f"normalize: mean must be finite and std positive, got {normalize!r:.60}")
    return mean, std


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
