"""Stimuli: find and decode image files, generate parametric sets, load them in batches."""

from __future__ import annotations

from .dataset import METADATA_FILE, StimulusSet, as_stimulus_set
from .decode import IMAGE_EXTENSIONS, find_stimuli, load_rgb
from .generate import gabors, gratings

__all__ = [
    "IMAGE_EXTENSIONS",
    "METADATA_FILE",
    "StimulusSet",
    "as_stimulus_set",
    "find_stimuli",
    "gabors",
    "gratings",
    "load_rgb",
]
