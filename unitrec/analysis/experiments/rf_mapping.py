"""Receptive-field mapping: each unit's measured field, next to its theoretical one.

Every map has dims ``(..., input_y, input_x)`` in pixels of the network's input
(pixel-index coordinates, as ``rf_center_y`` / ``rf_center_x``) and carries the
theoretical field: the units' ``rf_center_y`` / ``rf_center_x`` coords and the attrs
``rf_size`` / ``rf_stride``, so :func:`~unitrec.analysis.plot_rf_map` can outline it.

- :func:`effective_rf`: gradients of a model's units with respect to its input
  (needs torch and the model);
- :func:`spike_triggered_average`: reverse correlation of recorded responses with
  the noise images that drove them (a recording only, no torch);
- :func:`sparse_noise_map`: mean response per square position and polarity of a
  recorded :func:`unitrec.stimuli.sparse_noise` set.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, cast

import numpy as np
import xarray as xr

from unitrec.analysis._units import (UNIT, as_population, block_size, check_choice, nan_rows,
                                     stimulus_blocks, stimulus_labels)
from unitrec.analysis.experiments._gradients import gradient_sum, prepare_site
from unitrec.analysis.experiments._images import background_colour, geometry, network_image, recording_attrs
from unitrec.errors import ConfigError, StimulusError, UnitrecWarning

if TYPE_CHECKING:
    import torch
    from torch import nn

    from unitrec.stimuli.dataset import Stimuli

__all__ = ["effective_rf", "sparse_noise_map", "spike_triggered_average"]

IN_Y, IN_X = "input_y", "input_x"
_GRADIENT = ("mean over stimuli of |d response / d input|, summed over the input's colour channels "
             "(the gradient at the model's input, after preprocessing)")
_STA = {"count": "spike-triggered average: sum_i r_i (s_i - mean s) / N, s_i the image's luminance in [0, 1]",
        "response": "response-weighted average: sum_i r_i (s_i - mean s) / sum_i r_i, s_i the image's "
                    "luminance in [0, 1]"}
_SPARSE = ("sparse-noise map: mean response to the squares covering each pixel, per polarity, minus the "
           "mean response to the whole set")


# ---------------------------------------------------------------- gradients

def effective_rf(
    model: nn.Module,
    site: str,
    stimuli: Stimuli,
    *,
    units: str | Sequence[Any] = "center",
    transform: Callable[[Any], torch.Tensor] | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    input_size: int | None = None,
) -> xr.DataArray:
    """Each unit's effective receptive field: the mean gradient magnitude over a stimulus set.

    Parameters
    ----------
    model
        The network (moved to `device`; run in eval mode, its training flag restored).
    site
        A site name as :func:`unitrec.record` takes it (``"layer1"``,
        ``"layer1.0.relu:1"``, ``"fc@input"``); see ``unitrec layers MODEL``.
    stimuli
        A folder, a list of image paths, a tensor ``(N, C, H, W)`` already
        preprocessed, a Dataset or a StimulusSet, as for :func:`unitrec.record`.
    units
        ``"center"``: every channel at the site's centre position; or a list of
        ``(channel, y, x)`` (``channel`` alone for a ``(channel,)`` site).
    transform
        PIL RGB image → CHW tensor, for file stimuli. Default: resize and centre
        crop to `input_size` with ImageNet normalisation when it is given, else
        the model's own preprocessing (``load_model``), else resize 256 / crop 224.
    batch_size, device
        As for :func:`unitrec.record`.
    input_size
        Side in pixels of the images the network sees (file stimuli without a
        `transform` only).

    Returns
    -------
    xarray.DataArray
        ``(unit, input_y, input_x)``, float64: for each unit ``r``,
        ``mean_i sum_c |∂r(x_i) / ∂x_i[c, y, x]|`` over the stimuli ``x_i``, the
        model's input after preprocessing, colour channels ``c`` summed. Coords on
        ``unit``: ``channel``, ``y``, ``x``, ``rf_center_y``, ``rf_center_x``;
        attrs: ``site``, ``model``, ``rf_size``, ``rf_stride`` (the theoretical
        field), ``n_stimuli``, ``method``, ``preprocessing``.

    Raises
    ------
    LayerNotFoundError
        For a site the model does not have.
    SelectionError
        For a unit outside the site.
    ConfigError
        For bad arguments or a site whose units are not ``(channel, y, x)`` or ``(channel,)``.

    Notes
    -----
    The site's value is taken where the network computes it and the forward pass
    stops there, so no later in-place op (``ReLU(inplace=True)``, ``out += identity``)
    can change it: the gradient is that of the site's output, not of what later
    layers wrote into its memory. Each image's gradient is its own in eval mode
    (samples do not interact), so one backward pass per unit serves a whole batch.

    Examples
    --------
    >>> import unitrec as ur
    >>> model = ur.load_model("resnet18")
    >>> erf = effective_rf(model, "layer1", "stim/noise", input_size=64)  # doctest: +SKIP
    >>> plot_rf_map(erf, units=[0, 1, 2, 3]).savefig("erf.png")            # doctest: +SKIP
    """
    import torch

    from unitrec.anatomy.preprocess import build_transform, describe_transform
    from unitrec.recording.job import Job
    from unitrec.stimuli.dataset import as_stimulus_set, collate

    # Job checks both, and turns a str device into a torch.device (a bad one into ConfigError)
    job = Job(batch_size=batch_size, device=cast("torch.device", device), progress=False)
    if not isinstance(site, str):
        raise ConfigError(f"site must be a site name such as 'layer1' or 'layer1.0.relu:1', got {site!r}")
    stim = as_stimulus_set(stimuli)
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer))
                                   or input_size < 1):
        raise ConfigError(f"input_size must be a positive integer (pixels), got {input_size!r}")
    if stim.root is not None and transform is None:
        transform = (build_transform({"resize": int(input_size), "crop": int(input_size)}) if input_size
                     else getattr(model, "unitrec_transform", None) or build_transform())
    loader = torch.utils.data.DataLoader(stim.dataset(transform), batch_size=job.batch_size, collate_fn=collate)
    sums: torch.Tensor | None = None
    count, skipped, capture, chosen = 0, [], None, None
    training = model.training
    try:
        model.to(job.device).eval()
        for _, batch, bad, _ in loader:
            skipped.extend(bad)
            if batch is None:
                continue
            x = batch.to(job.device)
            if input_size is not None and tuple(x.shape[-2:]) != (input_size, input_size):
                raise ConfigError(f"the stimuli are {x.shape[-2]}×{x.shape[-1]} after preprocessing, not "
                                  f"input_size={input_size}; leave input_size out or resize them")
            if capture is None:
                chosen, capture = prepare_site(model, site, units, x[:1])
                capture.attach()
                sums = torch.zeros((chosen.shape[0], *x.shape[-2:]), dtype=torch.float64, device=x.device)
            assert sums is not None and chosen is not None
            sums += gradient_sum(capture, chosen, x)
            count += len(x)
    finally:
        if capture is not None:
            capture.detach()
        model.train(training)
    if skipped:
        warnings.warn(f"{len(skipped)} stimuli could not be loaded and were left out; the first: "
                      f"{skipped[0].error}", UnitrecWarning, stacklevel=2)
    if sums is None or chosen is None:
        raise StimulusError(f"none of the {len(stim)} stimuli could be loaded" if len(stim)
                            else "the stimulus set is empty")
    maps = (sums / count).cpu().numpy()
    coords: dict[str, Any] = {k: v for k, v in chosen.coords().items() if v[0] == UNIT}
    coords[IN_Y], coords[IN_X] = np.arange(maps.shape[1]), np.arange(maps.shape[2])
    attrs = {k: v for k, v in chosen.attrs().items()
             if k in ("site", "module", "module_type", "rf_size", "rf_stride", "selection")}
    attrs.update(model=_model_name(model), n_stimuli=count, method=_GRADIENT, long_name="mean |∂r/∂x|",
                 preprocessing=describe_transform(transform) if transform is not None else "none (tensor stimuli)")
    return xr.DataArray(maps, dims=(UNIT, IN_Y, IN_X), coords=coords, name="effective_rf", attrs=attrs)


def _model_name(model: Any) -> str:
    return str(getattr(model, "unitrec_description", {}).get("name") or type(model).__name__)


# ---------------------------------------------------------------- reverse correlation

def spike_triggered_average(
    da: xr.DataArray,
    *,
    stimuli: str | os.PathLike[str] | np.ndarray | None = None,
    normalize: str = "count",
    chunk_size: int | None = None,
) -> xr.DataArray:
    """Reverse correlation: each unit's response-weighted mean image, from a recording of noise.

    Parameters
    ----------
    da : xarray.DataArray
        A recording (:func:`unitrec.load_layer`) of noise images, e.g. a
        :func:`unitrec.stimuli.white_noise` set; first dim ``stimulus``.
    stimuli : str, os.PathLike or numpy.ndarray, optional
        The folder the stimulus labels are relative to (default: the recording's
        ``stimulus_root``), or the images themselves as luminance in [0, 1],
        ``(stimulus, H, W)`` or ``(stimulus, H, W, 3)``, in the recording's
        stimulus order.
    normalize : {"count", "response"}
        ``"count"``: ``STA = sum_i r_i (s_i - s̄) / N``; ``"response"``:
        ``sum_i r_i (s_i - s̄) / sum_i r_i``, the classic spike-triggered average
        for non-negative responses (NaN where the responses sum to 0).
    chunk_size : int, optional
        Stimuli per streamed block (default: what fits in a sixteenth of memory).

    Returns
    -------
    xarray.DataArray
        ``(*unit_dims, input_y, input_x)``, float64, with the recording's unit
        coords (``rf_center_y``, ``rf_center_x``) and attrs (``rf_size``, ...).

    Raises
    ------
    ConfigError
        For bad arguments, a recording without images to read, or images whose
        geometry cannot be rebuilt from the recording's preprocessing.
    StimulusError
        If an image cannot be read.

    Notes
    -----
    ``s_i`` is the image as the network saw it (after the recording's resize and
    centre crop, before normalisation), as luminance: the mean of its RGB values
    / 255; ``s̄`` the mean image over the used stimuli. Stimuli with a NaN response
    (skipped while recording) are left out. For a linear unit ``r = k·s`` and white
    noise of variance ``σ²`` per pixel, ``STA → σ² k`` (minus nothing: the noise
    is mean-subtracted). Responses and images are streamed in blocks; the
    accumulated ``units × pixels`` float64 array is the result's size, so record
    ``units: center`` rather than a whole layer.
    """
    check_choice("normalize", normalize, tuple(_STA))
    pop = as_population(da)
    keep = ~nan_rows(pop)
    rows = np.flatnonzero(keep)
    if rows.size == 0:
        raise ConfigError("every response of this recording is NaN: no stimulus to correlate with")
    read = _image_reader(da, stimuli)
    first = read(rows[:1])
    n_pix = first[0].size
    step = block_size(chunk_size, pop.n_units + n_pix)
    rs = np.zeros((pop.n_units, n_pix))
    r_sum, s_sum = np.zeros(pop.n_units), np.zeros(n_pix)
    done = 0
    for block in stimulus_blocks(pop.data, step, keep):
        images = read(rows[done:done + len(block)]).reshape(len(block), -1)
        done += len(block)
        rs += block.T @ images
        r_sum += block.sum(axis=0)
        s_sum += images.sum(axis=0)
    sta = rs - np.outer(r_sum, s_sum / done)
    with np.errstate(divide="ignore", invalid="ignore"):
        sta = sta / done if normalize == "count" else sta / np.where(r_sum != 0, r_sum, np.nan)[:, None]
    attrs = _carried(da.attrs) | {"n_stimuli": int(done), "method": _STA[normalize],
                                  "long_name": "spike-triggered average" if normalize == "count"
                                  else "response-weighted average"}
    return _maps(pop, sta.reshape(pop.n_units, *first.shape[1:]), attrs, "sta")


def _image_reader(da: xr.DataArray, stimuli: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``rows -> (len(rows), H, W)`` float64 luminance of the recording's stimuli."""
    n = int(da.sizes["stimulus"])
    if isinstance(stimuli, np.ndarray):
        images = np.asarray(stimuli, dtype=np.float64)
        if images.ndim == 4 and images.shape[-1] == 3:
            images = images.mean(axis=-1)
        if images.ndim != 3 or len(images) != n:
            raise ConfigError(f"stimuli must be ({n}, H, W) or ({n}, H, W, 3) luminance in [0, 1], "
                              f"one image per recorded stimulus; got shape {stimuli.shape}")
        return lambda rows: images[rows]
    if stimuli is not None and not isinstance(stimuli, (str, os.PathLike)):
        raise ConfigError(f"stimuli must be a folder or an array of images, got {type(stimuli).__name__}")
    stored = recording_attrs(dict(da.attrs))
    root = stimuli if stimuli is not None else (da.attrs.get("stimulus_root") or stored.get("stimulus_root"))
    if not root:
        raise ConfigError("no images to correlate with: this recording stores no stimulus_root (tensor stimuli); "
                          "pass stimuli= the folder, or the images as an array")
    root = Path(str(root))
    labels = stimulus_labels(da)
    text = da.attrs.get("preprocessing")
    steps = geometry(str(text)) if text is not None else []
    if steps is None:
        raise ConfigError(f"the recording's preprocessing ({text}) cannot be rebuilt, so the images the network "
                          "saw are unknown; pass stimuli= the images as an array (N, H, W)")
    background = background_colour(stored.get("run_key", ""))

    def read(rows: np.ndarray) -> np.ndarray:
        return np.stack([_luminance(root / labels[i], steps, background) for i in rows])

    return read


def _luminance(path: Path, steps: list[tuple], background: tuple[int, int, int]) -> np.ndarray:
    """An image as the network saw it, as luminance in [0, 1]: the mean of R, G, B / 255."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            simple = (image.mode in ("L", "RGB") and image.getexif().get(0x0112, 1) == 1  # not rotated
                      and _keeps_geometry(steps, image.height, image.width))
            pixels = np.asarray(image.convert("RGB")) if simple else None
    except OSError as exc:
        raise StimulusError(f"cannot read stimulus image {path}: {exc}") from None
    if pixels is None:  # resized, cropped or with alpha: as the recording decoded it
        pixels = network_image(path, steps, None, background)
    return pixels.astype(np.float64).mean(axis=-1) / 255.0


def _keeps_geometry(steps: list[tuple], h: int, w: int) -> bool:
    """Whether resize / centre-crop `steps` leave an ``h × w`` image as it is."""
    for step in steps:
        size = list(step[1])
        if step[0] == "resize" and len(size) == 1:
            max_size = step[3][0] if step[3] else None
            if min(h, w) != size[0] or (max_size is not None and max(h, w) > max_size):
                return False
        elif (len(size) == 1 and (h, w) != (size[0], size[0])) or (len(size) == 2 and (h, w) != tuple(size)):
            return False
    return True


# ---------------------------------------------------------------- sparse noise

_SQUARE = ("square_y", "square_x", "square_size", "polarity")


def sparse_noise_map(da: xr.DataArray, *, chunk_size: int | None = None) -> xr.DataArray:
    """On and off maps from a recording of :func:`unitrec.stimuli.sparse_noise`.

    Parameters
    ----------
    da : xarray.DataArray
        A recording of a sparse-noise folder: its stimulus coords ``square_y``,
        ``square_x``, ``square_size`` and ``polarity`` come from ``metadata.csv``.
    chunk_size : int, optional
        Stimuli per streamed block.

    Returns
    -------
    xarray.DataArray
        ``(polarity, *unit_dims, input_y, input_x)``, ``polarity`` = ``"on"``,
        ``"off"`` (those recorded): at each pixel, the mean response to the squares
        of that polarity covering it, minus the mean response to the whole set;
        NaN where no square fell. Unit coords and attrs as the recording's.

    Raises
    ------
    ConfigError
        If the square coords are missing, or the preprocessing resized or cropped
        the images (the squares' pixels would not be the network's).
    """
    missing = [c for c in _SQUARE if c not in da.coords]
    if missing:
        raise ConfigError(f"sparse_noise_map needs the stimulus coords {', '.join(_SQUARE)} (missing: "
                          f"{', '.join(missing)}): record a folder written by unitrec.stimuli.sparse_noise")
    pop = as_population(da)
    keep = ~nan_rows(pop)
    cy, cx, side, pol = (np.asarray(da[c].values, dtype=np.float64)[keep] for c in _SQUARE)
    top, left = np.round(cy - (side - 1) / 2).astype(int), np.round(cx - (side - 1) / 2).astype(int)
    h, w = int((top + side).max()), int((left + side).max())
    _check_unscaled(da, h, w)
    keys, key_of = np.unique(np.stack([pol, top, left, side], axis=1), axis=0, return_inverse=True)
    key_of = key_of.reshape(-1)
    sums, total, done = np.zeros((len(keys), pop.n_units)), np.zeros(pop.n_units), 0
    for block in stimulus_blocks(pop.data, block_size(chunk_size, pop.n_units), keep):
        np.add.at(sums, key_of[done:done + len(block)], block)
        total += block.sum(axis=0)
        done += len(block)
    means = sums / np.bincount(key_of, minlength=len(keys))[:, None] - total / done
    names = [p for p, v in (("on", 1.0), ("off", -1.0)) if v in keys[:, 0]]
    out = np.zeros((len(names), pop.n_units, h, w))
    covered = np.zeros((len(names), h, w))
    for (p, t, lft, s), mean in zip(keys.astype(int), means):
        k = names.index("on" if p > 0 else "off")
        out[k, :, t:t + s, lft:lft + s] += mean[:, None, None]
        covered[k, t:t + s, lft:lft + s] += 1
    with np.errstate(invalid="ignore"):
        out /= np.where(covered > 0, covered, np.nan)[:, None]
    attrs = _carried(da.attrs) | {"n_stimuli": int(done), "method": _SPARSE, "long_name": "response − mean"}
    maps = [_maps(pop, out[k], attrs, "sparse_noise_map") for k in range(len(names))]
    return xr.concat(maps, dim=xr.DataArray(names, dims="polarity", name="polarity"))


def _check_unscaled(da: xr.DataArray, h: int, w: int) -> None:
    text = da.attrs.get("preprocessing")
    steps = geometry(str(text)) if text is not None else []
    if steps is None or not _keeps_geometry(steps, h, w):
        raise ConfigError(f"the recording's preprocessing ({text}) may resize or crop the {h}×{w} sparse-noise "
                          f"images, so the squares are not where the network saw them; generate them at the "
                          "network's input size (sparse_noise(size=...)) with resize and crop equal to it")


# ---------------------------------------------------------------- shared

def _carried(attrs: dict[Any, Any]) -> dict[str, Any]:
    """The recording's attrs a map keeps: what site and model, and the theoretical field."""
    keys = ("site", "model", "module", "module_type", "rf_size", "rf_stride", "selection", "recording",
            "preprocessing")
    return {k: attrs[k] for k in keys if k in attrs}


def _maps(pop: Any, values: np.ndarray, attrs: dict[str, Any], name: str) -> xr.DataArray:
    """``(unit, H, W)`` values as ``(*unit_dims, input_y, input_x)`` with the units' coords."""
    coords = {k: c for k, c in pop.data.coords.items() if c.dims == (UNIT,)}
    flat = xr.DataArray(values, dims=(UNIT, IN_Y, IN_X), coords=coords, name=name)
    flat = flat.assign_coords({IN_Y: np.arange(values.shape[1]), IN_X: np.arange(values.shape[2])})
    out = pop.restore(flat)
    dims = [d for d in out.dims if d not in (IN_Y, IN_X)]
    out = out.transpose(*dims, IN_Y, IN_X)
    out.attrs = attrs
    return out
