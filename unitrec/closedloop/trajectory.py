"""The evolution file: its layout, its per-generation writes, and :func:`load_evolution`.

One HDF5 file per evolution, preallocated for every generation (NaN until written):
``codes`` (generation, individual, code) float32, ``scores`` and ``clean_scores``
(generation, individual) float64, ``best_image`` (generation, 3, H, W) uint8 (each
generation's best individual), a ``done`` mask, and ``optimizer_state`` (the
pickled CMA-ES object after the last done generation, bytes in a uint8 dataset,
rewritten each generation). Its root attributes are the provenance and the
``evolve_key`` that decides whether a rerun continues or reuses it.

Reading imports no torch: only h5py, numpy, xarray and torch-free parts of unitrec.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from unitrec._text import text_of, where_they_differ
from unitrec.errors import RecordingError
from unitrec.files.disk import datasync, open_existing
from unitrec.files.layout import partial_path

__all__ = ["EVOLUTION_FORMAT", "KIND", "check_evolve_key", "create_layout", "done_count", "load_evolution",
           "restore_state", "write_generation"]

KIND = "unitrec evolution"  # the ``kind`` attribute that tells an evolution from a recording
EVOLUTION_FORMAT = "1"
_STATE = "optimizer_state"


def create_layout(h5: h5py.File, *, generations: int, population: int, code_size: int,
                  image_hw: tuple[int, int], attrs: dict[str, Any]) -> None:
    """Make the datasets of a new evolution in `h5`, every row unwritten, and its attributes."""
    g, p = generations, population
    # one generation per chunk: a generation's writes touch whole chunks and nothing else
    h5.create_dataset("codes", shape=(g, p, code_size), dtype="f4", chunks=(1, p, code_size), fillvalue=np.nan)
    for name in ("scores", "clean_scores"):
        h5.create_dataset(name, shape=(g, p), dtype="f8", chunks=(1, p), fillvalue=np.nan)
    h5.create_dataset("best_image", shape=(g, 3, *image_hw), dtype="u1", chunks=(1, 3, *image_hw))
    h5.create_dataset("done", shape=(g,), dtype="u1", fillvalue=0)
    state = h5.create_dataset(_STATE, shape=(0,), maxshape=(None,), dtype="u1", chunks=(1 << 16,))
    state.attrs["generation"] = -1
    dims = {"codes": ("generation", "individual", "code"), "scores": ("generation", "individual"),
            "clean_scores": ("generation", "individual"), "best_image": ("generation", "channel", "y", "x"),
            "done": ("generation",)}
    for name, names in dims.items():
        h5[name].attrs["dims"] = json.dumps(names)
    h5["scores"].attrs["long_name"] = "score the optimiser was told (with noise, when noise > 0)"
    h5["clean_scores"].attrs["long_name"] = "the objective's score, without noise"
    h5["best_image"].attrs["long_name"] = "each generation's best individual (by clean_scores, noise aside), 8-bit RGB"
    for key, value in attrs.items():
        h5.attrs[key] = value
    h5.attrs["kind"] = KIND
    h5.attrs["evolution_format"] = EVOLUTION_FORMAT
    h5.attrs["status"] = "partial"


def done_count(h5: h5py.File) -> int:
    """How many generations are done, from the first on (a later one done after a gap is not counted)."""
    done = h5["done"][...]
    gaps = np.flatnonzero(done != 1)
    return int(gaps[0]) if gaps.size else len(done)


def write_generation(h5: h5py.File, g: int, *, codes: np.ndarray, scores: np.ndarray, clean: np.ndarray,
                     best_image: np.ndarray, state: bytes) -> None:
    """Write generation `g` and mark it done, crash-safely.

    The rows first, flushed and synced; then the optimiser state (with the generation
    it follows) and the done mark, flushed together. A kill before the mark leaves
    generation `g` to be computed again; a kill between the state and the mark leaves a
    state one generation ahead of ``done``, which :func:`restore_state` does not use.
    """
    h5["codes"][g] = codes
    h5["scores"][g] = scores
    h5["clean_scores"][g] = clean
    h5["best_image"][g] = best_image
    h5.flush()
    datasync(h5.id.get_vfd_handle())  # the rows are on disk before a mark says they are
    ds = h5[_STATE]
    ds.attrs["generation"] = -1  # while the bytes change, they belong to no generation
    ds.resize((len(state),))
    ds[...] = np.frombuffer(state, dtype=np.uint8)
    ds.attrs["nbytes"] = len(state)
    ds.attrs["generation"] = g
    h5["done"][g] = 1
    h5.flush()


def restore_state(h5: h5py.File, last: int) -> bytes | None:
    """The pickled optimiser after generation `last`, or None where the file holds another one."""
    ds = h5[_STATE]
    if int(ds.attrs.get("generation", -1)) != last or int(ds.attrs.get("nbytes", -1)) != ds.shape[0]:
        return None
    return ds[...].tobytes()


def check_evolve_key(h5: h5py.File, key: dict[str, Any], path: Path, message: str) -> None:
    """Refuse a file made by another evolution, naming each difference (file vs now)."""
    if text_of(h5.attrs.get("kind", "")) != KIND:
        raise RecordingError(f"{path} is not a unitrec evolution (a recording, or another program's file); "
                             "choose another output path")
    if text_of(h5.attrs.get("evolution_format", "")) != EVOLUTION_FORMAT:
        raise RecordingError(f"{path} was written by another version of unitrec (evolution format "
                             f"{text_of(h5.attrs.get('evolution_format', '?'))}, this one writes {EVOLUTION_FORMAT}); "
                             "rerun with overwrite=True to start over")
    stored = json.loads(text_of(h5.attrs.get("evolve_key", "{}")))
    differ = [k for k in sorted(set(stored) | set(key)) if stored.get(k) != key.get(k)]
    if not differ:
        return
    parts = []
    for k in differ:
        was, now = where_they_differ(text_of(stored.get(k, "none")), text_of(key.get(k, "none")))
        parts.append(f"{k} (file: {was}; now: {now})")
    raise RecordingError(message.format(path=path, what="; ".join(parts)))


def best_of(scores: np.ndarray) -> tuple[int, int]:
    """(generation, individual) of the highest score, the earliest among equals."""
    flat = int(np.argmax(scores.reshape(-1)))
    return divmod(flat, scores.shape[1])


def load_evolution(path: str | Path) -> Any:
    """Read an evolution file written by ``evolve`` as an ``xarray.Dataset``.

    Parameters
    ----------
    path
        The finished file (``out``), or an unfinished ``<out>.partial.h5`` (also found
        from ``out`` when only the partial file is there): then only the done
        generations are read.

    Returns
    -------
    xarray.Dataset
        ``scores`` and ``clean_scores`` (generation, individual): the scores the
        optimiser was told (with noise where ``noise > 0``) and the objective's own;
        ``codes`` (generation, individual, code); ``best_image`` (generation, channel,
        y, x), each generation's best individual as float32 in [0, 1] (stored 8-bit);
        ``best_score`` and ``best_individual`` (generation); the file's provenance in
        ``attrs`` (``status`` is ``partial`` for an unfinished file).

    Raises
    ------
    RecordingError
        No file there, or a file that is not a unitrec evolution.

    Examples
    --------
    >>> ds = load_evolution("evo.h5")  # doctest: +SKIP
    >>> ds.best_score.plot()  # doctest: +SKIP
    >>> ds.best_image.isel(generation=-1).transpose("y", "x", "channel").plot.imshow()  # doctest: +SKIP
    """
    import xarray as xr

    path = Path(path)
    if not path.exists() and partial_path(path).exists():
        import warnings

        from unitrec.errors import UnitrecWarning

        warnings.warn(f"{path} is not finished: reading the generations done so far from {partial_path(path).name}",
                      UnitrecWarning, stacklevel=2)
        path = partial_path(path)
    if not path.is_file():
        raise RecordingError(f"no evolution at {path}: the file does not exist (ur.evolve writes it)")
    if not h5py.is_hdf5(path):
        raise RecordingError(f"{path} is not an HDF5 file, so not a unitrec evolution")
    with open_existing(path) as h5:
        if text_of(h5.attrs.get("kind", "")) != KIND or "done" not in h5:
            raise RecordingError(f"{path} is not a unitrec evolution (recordings are read with ur.load_layer)")
        n = done_count(h5)
        scores, clean = h5["scores"][:n], h5["clean_scores"][:n]
        codes, images = h5["codes"][:n], h5["best_image"][:n]
        attrs = {k: text_of(v) if isinstance(v, (bytes, str)) else v.item() if isinstance(v, np.generic) else v
                 for k, v in h5.attrs.items()}
    gen = ("generation",)
    best = np.argmax(scores, axis=1) if n else np.zeros(0, dtype=np.int64)
    data = {
        "scores": (("generation", "individual"), scores),
        "clean_scores": (("generation", "individual"), clean),
        "codes": (("generation", "individual", "code"), codes),
        "best_image": (("generation", "channel", "y", "x"), images.astype(np.float32) / np.float32(255)),
        "best_score": (gen, scores.max(axis=1) if n else np.zeros(0)),
        "best_individual": (gen, best.astype(np.int64)),
    }
    coords = {"generation": np.arange(n), "individual": np.arange(scores.shape[1]),
              "channel": ["red", "green", "blue"]}
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    ds["scores"].attrs["long_name"] = "score the optimiser was told (with noise, when noise > 0)"
    ds["clean_scores"].attrs["long_name"] = "the objective's score, without noise"
    return ds
