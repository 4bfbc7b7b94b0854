"""A stimulus set: what to show, in which order, with which labels, and how to load it.

Folders are listed by :func:`~unitrec.stimuli.decode.find_stimuli` (sorted relative
paths); a ``metadata.csv`` in the folder adds one coordinate per column; a folder
organised in class subfolders adds a ``label`` coordinate. Tensors and datasets are
accepted too, labelled by their index.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch

from unitrec.errors import StimulusError, UnitrecWarning
from unitrec.stimuli.decode import IMAGE_EXTENSIONS, file_sha256, find_stimuli, load_rgb

__all__ = ["METADATA_FILE", "Item", "StimulusSet", "as_stimulus_set"]

METADATA_FILE = "metadata.csv"
_PATH_COLUMNS = ("path", "stimulus", "file", "filename")


@dataclass
class Item:
    """One loaded stimulus: its row, the model input, or why it could not be loaded."""

    index: int
    tensor: torch.Tensor | None
    error: str | None = None
    digest: str | None = None  # SHA-256 of the image file's bytes, for file stimuli


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
    source: torch.Tensor | torch.utils.data.Dataset[Any] | None = None  # tensor or Dataset when not files
    description: str = ""
    _sha256: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def sha256(self) -> str:
        """Identifies the list: the labels in order, and the bytes of a tensor set.

        The content of image files is identified per file instead (see
        :meth:`file_stats` and the recording's ``file_sha256``), so that a resume can
        say which files changed. Computed once and cached.
        """
        if self._sha256 is None:
            digest = hashlib.sha256()
            for label in self.labels:
                digest.update(label.encode("utf-8", "surrogateescape") + b"\0")
            if isinstance(self.source, torch.Tensor):
                # row by row through a memoryview: no copy of the whole tensor
                for row in self.source.detach().cpu():
                    digest.update(memoryview(row.contiguous().numpy()).cast("B"))
            self._sha256 = digest.hexdigest()
        return self._sha256

    def file_stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Each image file's size in bytes and modification time in ns (None if not files).

        Read once per call (a ``stat`` per file, following symlinks).
        """
        if self.root is None:
            return None
        try:
            stats = [os.stat(self.root / label) for label in self.labels]
        except OSError as exc:
            raise StimulusError(f"stimulus file {exc.filename} cannot be read: {exc.strerror}") from None
        return (np.array([st.st_size for st in stats], dtype=np.int64),
                np.array([st.st_mtime_ns for st in stats], dtype=np.int64))

    def subset(self, start: int, stop: int) -> StimulusSet:
        """Rows ``start:stop`` as a set of their own (one shard); labels and coordinates unchanged."""
        source: torch.Tensor | torch.utils.data.Dataset[Any] | None
        if self.root is not None:
            source = None
        elif isinstance(self.source, torch.Tensor):
            source = self.source[start:stop]
        else:
            assert self.source is not None  # a set without files has a tensor or a Dataset
            source = torch.utils.data.Subset(self.source, range(start, stop))
        return StimulusSet(self.labels[start:stop], {k: v[start:stop] for k, v in self.coords.items()},
                           root=self.root, source=source, description=self.description)

    def dataset(self, transform: Callable | None, background: Sequence[int] = (255, 255, 255),
                rows: Sequence[int] | None = None) -> torch.utils.data.Dataset[Item]:
        """A torch Dataset over `rows` (default: all) that yields :class:`Item` objects."""
        return _Loading(self, transform, background, list(range(len(self)) if rows is None else rows))


class _SizeError(StimulusError):
    """Stimuli of different sizes; stays one line when a DataLoader worker raises it.

    The main process rebuilds a worker's exception as ``type(text)``, `text` being
    the worker's whole traceback; keep only the message on its last line.
    """

    def __init__(self, message: str) -> None:
        if message.startswith("Caught ") and "Traceback" in message:
            message = message.rstrip().splitlines()[-1].partition(": ")[2]
        super().__init__(message)


class _Loading(torch.utils.data.Dataset):
    def __init__(self, stimuli: StimulusSet, transform, background, rows: list[int]) -> None:
        self.stimuli, self.transform, self.background, self.rows = stimuli, transform, background, rows
        self._reference: tuple[str, tuple[int, ...]] | None = None  # first good stimulus, its shape

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Item:
        item = self._load(self.rows[i])
        if item.tensor is not None and not isinstance(self.stimuli.source, torch.Tensor):
            self._check_size(item)
        return item

    def __getitems__(self, indices: list[int]) -> list[Item | _Block]:
        """A batch; rows of a tensor set that follow each other come as one view, not copied."""
        rows = [self.rows[i] for i in indices]
        source = self.stimuli.source
        if isinstance(source, torch.Tensor) and rows and rows == list(range(rows[0], rows[0] + len(rows))):
            return [_Block(rows, source[rows[0] : rows[0] + len(rows)])]
        return list(map(self.__getitem__, indices))

    def _check_size(self, item: Item) -> None:
        """Every stimulus must give the shape of the set's first good one (batches are stacked)."""
        if self._reference is None:  # the same in every worker: the set's first good stimulus
            first = next(it for it in map(self._load, range(len(self.stimuli))) if it.tensor is not None)
            assert first.tensor is not None  # picked for it
            self._reference = (self.stimuli.labels[first.index], tuple(first.tensor.shape))
        label, shape = self._reference
        assert item.tensor is not None  # only loaded items are checked
        if tuple(item.tensor.shape) != shape:
            raise _SizeError(
                f"stimuli differ in size after preprocessing: {label} gives {_dims(shape)}, "
                f"{self.stimuli.labels[item.index]} gives {_dims(item.tensor.shape)}; set preprocess "
                "resize and crop (e.g. resize: 224, crop: 224) or give a transform that returns one size"
            )

    def _load(self, index: int) -> Item:
        s = self.stimuli
        digest = None
        try:
            if s.root is not None:
                path = s.root / s.labels[index]
                # read twice (the second time from the page cache): the hash is of the bytes on disk
                digest = file_sha256(path)
                x = load_rgb(path, self.background)
            elif isinstance(s.source, torch.Tensor):
                return Item(index, s.source[index])
            else:
                assert s.source is not None  # a set without files has a tensor or a Dataset
                x = s.source[index]
                if isinstance(x, (tuple, list)):  # (image, target) datasets
                    x = x[0]
            if self.transform is not None and not isinstance(x, torch.Tensor):
                x = self.transform(x)
            if not isinstance(x, torch.Tensor):
                raise StimulusError(f"stimulus {s.labels[index]} became {type(x).__name__}, not a tensor; "
                                    "give a transform that returns a tensor")
            return Item(index, x, digest=digest)
        except StimulusError as exc:
            return Item(index, None, str(exc))
        except Exception as exc:  # a transform failing on one image must not kill a night's run
            return Item(index, None, f"cannot preprocess stimulus {s.labels[index]}: {type(exc).__name__}: {exc}")


def _dims(shape) -> str:
    return "×".join(map(str, shape))


@dataclass
class _Block:
    """Consecutive rows of a tensor stimulus set, as a view of it."""

    rows: list[int]
    tensor: torch.Tensor


def collate(items: Sequence[Item | _Block]) -> tuple[list[int], torch.Tensor | None, list[Item], list[str | None]]:
    """Stack the loaded items; keep the failed ones aside (rows, batch, failures, file hashes)."""
    if len(items) == 1 and isinstance(items[0], _Block):
        return items[0].rows, items[0].tensor, [], [None] * len(items[0].rows)
    good = [it for it in items if isinstance(it, Item) and it.tensor is not None]
    bad = [it for it in items if isinstance(it, Item) and it.tensor is None]
    batch = torch.stack([it.tensor for it in good if it.tensor is not None]) if good else None
    return [it.index for it in good], batch, bad, [it.digest for it in good]


def _read_metadata(root: Path, labels: list[str]) -> dict[str, np.ndarray]:
    """One coordinate per column of ``metadata.csv``, in the order of `labels`.

    Refuses a file that is not UTF-8, lacks a path column, has two rows for one
    image or none for a stimulus. Warns once about renamed columns and once about
    empty cells (NaN in number columns, ``""`` in text columns).
    """
    path = root / METADATA_FILE
    if not path.is_file():
        return {}
    header, rows, lines = _read_csv(path)
    if not rows:
        return {}
    key = next((c for c in _PATH_COLUMNS if c in header), None)
    if key is None:
        raise StimulusError(f"{path}: needs a column naming the image ({' or '.join(_PATH_COLUMNS)})")
    k = header.index(key)
    by_path: dict[str, list[str | None]] = {}
    line_of: dict[str, int] = {}
    for row, line in zip(rows, lines):
        name = (row[k] or "").replace("\\", "/")
        while name.startswith("./"):  # `./a.png` names the stimulus `a.png`
            name = name[2:]
        if name in by_path:
            raise StimulusError(f"{path}: two rows for {name} (lines {line_of[name]} and {line}); "
                                "keep one row per image")
        by_path[name], line_of[name] = row, line
    missing = [lab for lab in labels if lab not in by_path]
    if missing:
        raise StimulusError(f"{path}: no row for {len(missing)} stimuli, e.g. {missing[0]}")
    coords, empty = {}, []
    for i, name in _coord_names(path, header, k, rows):
        coords[name], n_empty = _typed([by_path[lab][i] for lab in labels])
        if n_empty:
            stored = "NaN" if coords[name].dtype.kind == "f" else "''"
            empty.append(f"{header[i]!r} in {n_empty} of {len(labels)} rows (stored as {stored})")
    if empty:
        warnings.warn(f"{path}: empty cells in column {', '.join(empty)}", UnitrecWarning, stacklevel=3)
    return coords


def _read_csv(path: Path) -> tuple[list[str], list[list[str | None]], list[int]]:
    """Header, rows (short ones padded with None), and the line each row ends on.

    Refuses text that is not UTF-8. Rows are lists, not dicts, so that two columns
    with the same name (two unnamed ones, say) keep their own values.
    """
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise StimulusError(f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
                            "save it as UTF-8 (in a spreadsheet: CSV UTF-8) and run again") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[list[str | None]] = []
    lines: list[int] = []
    try:
        header = next(reader, [])
        for row in reader:
            if row:  # a blank line
                rows.append([*row, *[None] * (len(header) - len(row))])
                lines.append(reader.line_num)
    except csv.Error as exc:
        raise StimulusError(f"{path} line {reader.line_num}: not valid CSV ({exc})") from None
    return header, rows, lines


def _coord_names(path: Path, header: list[str], key: int, rows) -> list[tuple[int, str]]:
    """(column index, coordinate name) for each column but the path column `key`.

    Spaces and ``/`` cannot be in a stored name (netCDF splits its coordinate
    list on spaces; HDF5 reads ``/`` as a group): they become ``_``, an empty name
    becomes ``column_<position>``, with one warning. An unnamed column without
    values (a trailing comma) is dropped.
    """
    pairs: list[tuple[int, str]] = []
    renamed: list[str] = []
    prefixed: list[str] = []
    seen: dict[str, str] = {}
    for i, col in enumerate(header):
        if i == key or (not col.strip() and not any((r[i] or "").strip() for r in rows)):
            continue
        name = re.sub(r"[\s/]", "_", col.strip()) or f"column_{i + 1}"
        if name != col:
            renamed.append(f"{col!r} to {name!r}")
        if _coord_name(name) != name:
            prefixed.append(f"{name!r} as {_coord_name(name)!r}")
        name = _coord_name(name)
        if name in seen:
            raise StimulusError(f"{path}: columns {seen[name]!r} and {col!r} would both be stored as "
                                f"{name!r}; rename one of them")
        seen[name] = col
        pairs.append((i, name))
    if renamed:
        warnings.warn(f"{path}: renamed columns (names cannot hold spaces or '/', or be empty): "
                      f"{', '.join(renamed)}", UnitrecWarning, stacklevel=4)
    if prefixed:  # to_brainscore takes a 'stimulus_id' column back as the stimulus id
        warnings.warn(f"{path}: columns stored with a 'meta_' prefix (unitrec uses these names itself): "
                      f"{', '.join(prefixed)}; rename them in the file to keep your own names",
                      UnitrecWarning, stacklevel=4)
    return pairs


def _coord_name(col: str) -> str:
    # names that would clash with our own dims get a prefix
    # (a site group holds copies of the stimulus coordinates beside its own datasets, and
    # load_summary names a coordinate of the ranked stimuli top_<name>)
    own = ("stimulus", "unit", "channel", "y", "x", "done", "file_size", "file_mtime_ns", "file_sha256",
           "source", "source_index", "rf_center_y", "rf_center_x", "layer", "activation", "stimulus_id",
           "count", "mean", "std", "min", "max", "sparseness", "rank", "rectified_sum", "rectified_sum_sq",
           "summary_state", "response", "index")
    if col in own or col.startswith(("top_", "bottom_")):
        return f"meta_{col}"
    return col


def _typed(values: list[str | None]) -> tuple[np.ndarray, int]:
    """Numbers if every filled cell is one (pandas' parser), else text; also how many cells are empty.

    Empty cells (``""``, blanks, or ``None`` for a row shorter than the header) are
    NaN in numbers (so integers become floats) and ``""`` in text.
    """
    import pandas as pd

    cells = pd.Series(["" if v is None else v for v in values], dtype=object).str.strip()
    empty = cells.eq("").to_numpy()
    n_empty = int(empty.sum())
    if n_empty < len(values):
        try:
            numbers = pd.to_numeric(cells[~empty], errors="raise").to_numpy()
        except (ValueError, TypeError):
            numbers = None
        if numbers is not None and numbers.dtype.kind in "iuf":
            if not n_empty:
                return numbers, 0
            column = np.full(len(values), np.nan)
            column[~empty] = numbers
            return column, n_empty
    return np.array(["" if e else v for v, e in zip(values, empty)], dtype=object), n_empty


#: What ``stimuli=`` accepts: a folder, a list of image paths, a tensor ``(N, C, H, W)``,
#: a Dataset, or a :class:`StimulusSet` (see :func:`as_stimulus_set`).
Stimuli = Union[str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]], torch.Tensor,
                "torch.utils.data.Dataset[Any]", StimulusSet]


def as_stimulus_set(stimuli: Stimuli) -> StimulusSet:
    """Accept a folder, a list of image paths, a tensor ``(N, C, H, W)`` or a Dataset."""
    if isinstance(stimuli, StimulusSet):
        return stimuli
    if isinstance(stimuli, (str, os.PathLike)):
        root = Path(stimuli)
        labels = find_stimuli(root)
        coords = {}
        if all("/" in lab for lab in labels):
            coords["label"] = np.array([lab.split("/", 1)[0] for lab in labels], dtype=object)
        metadata = _read_metadata(root, labels)
        if "label" in coords and "label" in metadata:
            warnings.warn(f"{root / METADATA_FILE}: its column 'label' replaces the class-subfolder "
                          "label; rename the column to keep both", UnitrecWarning, stacklevel=2)
        coords.update(metadata)
        return StimulusSet(labels, coords, root=root.resolve(), description=str(root))
    if isinstance(stimuli, torch.Tensor):
        if stimuli.dim() != 4:
            raise StimulusError(f"a stimulus tensor must be (N, C, H, W), got shape {tuple(stimuli.shape)}")
        if not stimuli.is_floating_point():
            raise StimulusError(f"a stimulus tensor holds the preprocessed images the model takes, as floats; got "
                                f"{stimuli.dtype} (for 0-255 images: x.float() / 255, then normalise)")
        width = len(str(len(stimuli) - 1))
        return StimulusSet([f"{i:0{width}d}" for i in range(len(stimuli))], source=stimuli,
                           description=f"tensor {tuple(stimuli.shape)}")
    if isinstance(stimuli, torch.utils.data.IterableDataset) or (
            isinstance(stimuli, torch.utils.data.Dataset) and not hasattr(stimuli, "__len__")):
        raise StimulusError(f"a stimulus Dataset must have a length and items by index (a map-style Dataset, so "
                            f"that a resume can find each row); {type(stimuli).__name__} has none")
    if isinstance(stimuli, torch.utils.data.Dataset):
        n = len(stimuli)  # type: ignore[arg-type]
        width = len(str(n - 1))
        return StimulusSet([f"{i:0{width}d}" for i in range(n)], source=stimuli,
                           description=type(stimuli).__name__)
    if isinstance(stimuli, Sequence) and stimuli and all(isinstance(p, (str, os.PathLike)) for p in stimuli):
        paths = [Path(p).resolve() for p in stimuli]
        for p in paths:
            if p.is_dir():
                raise StimulusError(f"{p} is a folder: give the folder itself as stimuli, or a list of image files")
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
    what = type(stimuli).__name__
    if isinstance(stimuli, Sequence) and not stimuli:
        what = "an empty list"
    elif isinstance(stimuli, Sequence):
        what = f"a list holding {type(next(p for p in stimuli if not isinstance(p, (str, os.PathLike)))).__name__}"
    raise StimulusError(f"stimuli must be a folder, a list of image paths, a tensor or a Dataset; got {what}")
