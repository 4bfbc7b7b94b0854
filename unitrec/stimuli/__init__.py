"""Stimuli: find and decode image files, generate parametric sets (gratings, Gabors, the
grating protocols, sparse and white noise), load them in batches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .dataset import METADATA_FILE, StimulusSet, as_stimulus_set
from .decode import IMAGE_EXTENSIONS, find_stimuli, load_rgb
from .generate import gabors, gratings, protocols
from .noise import sparse_noise, white_noise

#: The generators by the ``kind`` that a config's ``stimuli.generate`` names them with
#: (``unitrec stimuli`` writes ``sparse-noise`` for ``sparse_noise``).
GENERATORS: dict[str, Callable[..., Path]] = {"gratings": gratings, "gabors": gabors, "protocols": protocols,
              "sparse_noise": sparse_noise, "white_noise": white_noise}

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
