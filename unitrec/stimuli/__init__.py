"""Stimuli: find and decode image files, generate parametric sets (gratings, Gabors, the
grating protocols, sparse and white noise), load them in batches.

The names are imported on first use (PEP 562): decoding an image (``decode.py``: PIL
and numpy) must not pay for the torch datasets of ``dataset.py``.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

_WHERE = {
    "METADATA_FILE": "dataset", "StimulusSet": "dataset", "as_stimulus_set": "dataset",
    "IMAGE_EXTENSIONS": "decode", "find_stimuli": "decode", "load_rgb": "decode",
    "gabors": "generate", "gratings": "generate", "protocols": "generate",
    "sparse_noise": "noise", "white_noise": "noise",
}

if _TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from unitrec.stimuli.dataset import METADATA_FILE, StimulusSet, as_stimulus_set
    from unitrec.stimuli.decode import IMAGE_EXTENSIONS, find_stimuli, load_rgb
    from unitrec.stimuli.generate import gabors, gratings, protocols
    from unitrec.stimuli.noise import sparse_noise, white_noise

    GENERATORS: dict[str, Callable[..., Path]]


def __getattr__(name: str) -> _Any:
    if name == "GENERATORS":
        #: the generators by the ``kind`` a config's ``stimuli.generate`` names them with
        #: (``unitrec stimuli`` writes ``sparse-noise`` for ``sparse_noise``)
        value: _Any = {kind: __getattr__(kind) for kind in
                      ("gratings", "gabors", "protocols", "sparse_noise", "white_noise")}
    elif name in _WHERE:
        value = getattr(_importlib.import_module(f".{_WHERE[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:  # the public API, and nothing imported to build it
    return sorted(__all__)


__all__ = [
    "GENERATORS",
    "IMAGE_EXTENSIONS",
    "METADATA_FILE",
    "StimulusSet",
    "as_stimulus_set",
    "find_stimuli",
    "gabors",
    "gratings",
    "load_rgb",
    "protocols",
    "sparse_noise",
    "white_noise",
]
