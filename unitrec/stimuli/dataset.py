"""A stimulus set: what to show, in which order, with which labels, and how to load it.

Folders are listed by :func:`~unitrec.stimuli.decode.find_stimuli` (sorted relative
paths); a ``metadata.csv`` in the folder adds one coordinate per column; a folder
organised in class subfolders adds a ``label`` coordinate. Tensors and datasets are
accepted too, labelled by their index.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import StimulusError
from .decode import IMAGE_EXTENSIONS, find_stimuli, load_rgb

__all__ = ["METADATA_FILE", "Item", "StimulusSet", "as_stimulus_set"]

METADATA_FILE = "metadata.csv"
_PATH_COLUMNS = ("path", "stimulus", "file", "filename")


@dataclass
class Item:
    """One loaded stimulus: its row, the model input, or why it could not be loaded."""

    index: int
    tensor: torch.Tensor | None
    error: str | None = None


@dataclass
class StimulusSet:
    """An ordered, labelled set of stimuli.

    Attributes
    ----------
    labels
        One unique label per stimulus: the path relative to `root` (POSIX), or the
        index for tensors and datasets.
    coords
        Extra coordinates on the stimulus dimension (``label``, metadata columns).
    root
        The folder the labels are relative to, if the stimuli are files.
    """

    labels: list[str]
    coords: dict[str, np.ndarray] = field(default_factory=dict)
    root: Path | None = None
    source: Any = None  # tensor or Dataset when not files
    description: str = ""
    _sha256: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def sha256(self) -> str:
        """Identifies the set: labels plus file sizes (files) or the bytes (tensors).

        Computed once and cached: a set does not change during a run.
        """
        if self._sha256 is None:
            digest = hashlib.sha256()
            for label in self.labels:
                digest.update(label.encode() + b"\0")
                if self.root is not None:
                    digest.update(str(os.path.getsize(self.root / label)).encode())
            if isinstance(self.source, torch.Tensor):
                # row by row through a memoryview: no copy of the whole tensor
                for row in self.source.detach().cpu():
                    digest.update(memoryview(row.contiguous().numpy()).cast("B"))
            self._sha256 = digest.hexdigest()
        return self._sha256

    def dataset(self, transform: Callable | None, background=(255, 255, 255),
                rows: Sequence[int] | None = None) -> torch.utils.data.Dataset:
        """A torch Dataset over `rows` (default: all) that yields :class:`Item` objects."""
        return _Loading(self, transform, background, list(range(len(self)) if rows is None else rows))


class _Loading(torch.utils.data.Dataset):
    def __init__(self, stimuli: StimulusSet, transform, background, rows: list[int]) -> None:
        self.stimuli, self.transform, self.background, self.rows = stimuli, transform, background, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Item:
        index = self.rows[i]
        s = self.stimuli
        try:
            if s.root is not None:
                x = load_rgb(s.root / s.labels[index], self.background)
            elif isinstance(s.source, torch.Tensor):
                return Item(index, s.source[index])
            else:
                x = s.source[index]
                if isinstance(x, (tuple, list)):  # (image, target) datasets
                    x = x[0]
            if self.transform is not None and not isinstance(x, torch.Tensor):
                x = self.transform(x)
            if not isinstance(x, torch.Tensor):
                raise StimulusError(f"stimulus {s.labels[index]} became {type(x).__name__}, not a tensor; "
                                    "give a transform that returns a tensor")
            return Item(index, x)
        except StimulusError as exc:
            return Item(index, None, str(exc))
        except Exception as exc:  # a transform failing on one image must not kill a night's run
            return Item(index, None, f"cannot preprocess stimulus {s.labels[index]}: {type(exc).__name__}: {exc}")


def collate(items: list[Item]) -> tuple[list[int], torch.Tensor | None, list[Item]]:
    """Stack the loaded items; keep the failed ones aside (rows, batch, failures)."""
    good = [it for it in items if it.tensor is not None]
    bad = [it for it in items if it.tensor is None]
    batch = torch.stack([it.tensor for it in good]) if good else None
    return [it.index for it in good], batch, bad


def _read_metadata(root: Path, labels: list[str]) -> dict[str, np.ndarray]:
    path = root / METADATA_FILE
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    key = next((c for c in _PATH_COLUMNS if c in rows[0]), None)
    if key is None:
        raise StimulusError(f"{path}: needs a column naming the image ({' or '.join(_PATH_COLUMNS)})")
    by_path = {r[key].replace("\\", "/"): r for r in rows}
    missing = [lab for lab in labels if lab not in by_path]
    if missing:
        raise StimulusError(f"{path}: no row for {len(missing)} stimuli, e.g. {missing[0]}")
    coords = {}
    for col in rows[0]:
        if col == key or not col:
            continue
        values = [by_path[lab][col] for lab in labels]
        coords[_coord_name(col)] = _typed(values)
    return coords


def _coord_name(col: str) -> str:
    # names that would clash with our own dims get a prefix
    return f"meta_{col}" if col in ("stimulus", "unit", "channel", "y", "x", "done") else col


def _typed(values: list[str]) -> np.ndarray:
    for kind in (int, float):
        try:
            return np.array([kind(v) for v in values])
        except ValueError:
            continue
    return np.array(values, dtype=object)


def as_stimulus_set(stimuli: Any) -> StimulusSet:
    """Accept a folder, a list of image paths, a tensor ``(N, C, H, W)`` or a Dataset."""
    if isinstance(stimuli, StimulusSet):
        return stimuli
    if isinstance(stimuli, (str, os.PathLike)):
        root = Path(stimuli)
        labels = find_stimuli(root)
        coords = {}
        if all("/" in lab for lab in labels):
            coords["label"] = np.array([lab.split("/", 1)[0] for lab in labels], dtype=object)
        coords.update(_read_metadata(root, labels))
        return StimulusSet(labels, coords, root=root.resolve(), description=str(root))
    if isinstance(stimuli, torch.Tensor):
        if stimuli.dim() != 4:
            raise StimulusError(f"a stimulus tensor must be (N, C, H, W), got shape {tuple(stimuli.shape)}")
        width = len(str(len(stimuli) - 1))
        return StimulusSet([f"{i:0{width}d}" for i in range(len(stimuli))], source=stimuli,
                           description=f"tensor {tuple(stimuli.shape)}")
    if isinstance(stimuli, torch.utils.data.Dataset):
        n = len(stimuli)  # type: ignore[arg-type]
        width = len(str(n - 1))
        return StimulusSet([f"{i:0{width}d}" for i in range(n)], source=stimuli,
                           description=type(stimuli).__name__)
    if isinstance(stimuli, Sequence) and stimuli and all(isinstance(p, (str, os.PathLike)) for p in stimuli):
        paths = [Path(p).resolve() for p in stimuli]
        for p in paths:
            if not p.is_file():
                raise StimulusError(f"stimulus file not found: {p}")
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                raise StimulusError(f"not an image file: {p}")
        root = Path(os.path.commonpath([str(p.parent) for p in paths]))
        labels = [p.relative_to(root).as_posix() for p in paths]
        if len(set(labels)) != len(labels):
            raise StimulusError("the stimulus list names the same file twice")
        order = np.argsort(labels, kind="stable")
        return StimulusSet([labels[i] for i in order], root=root, description=f"{len(labels)} files")
    raise StimulusError(
        f"stimuli must be a folder, a list of image paths, a tensor or a Dataset; got {type(stimuli).__name__}"
    )
