"""unitrec: in-silico electrophysiology for PyTorch vision models.

Pick units in a network the way a physiologist picks cells, show them a stimulus
set, and get their responses back as labelled populations on disk.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import analysis, stimuli
from .errors import (
    ConfigError,
    LayerNotFoundError,
    ModelError,
    RecordingError,
    SelectionError,
    StimulusError,
    UnitrecError,
    UnitrecWarning,
)
from .load import load_layer, load_population, load_summary, open_recording
from .model import load_model
from .record import record
from .recorder import Recorder
from .run import run_config
from .shards import merge
from .sites import list_layers

__all__ = [
    "ConfigError",
    "LayerNotFoundError",
    "ModelError",
    "Recorder",
    "RecordingError",
    "SelectionError",
    "StimulusError",
    "UnitrecError",
    "UnitrecWarning",
    "__version__",
    "analysis",
    "list_layers",
    "load_layer",
    "load_model",
    "load_population",
    "load_summary",
    "merge",
    "open_recording",
    "record",
    "run_config",
    "stimuli",
]
