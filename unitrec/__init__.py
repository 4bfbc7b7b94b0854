"""unitrec: in-silico electrophysiology for PyTorch vision models.

Pick units in a network the way a physiologist picks cells, show them a stimulus
set, and get their responses back as labelled populations on disk.
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib
from typing import TYPE_CHECKING, Any

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

# Imported on first use (PEP 562), so that reading a file, `unitrec info` and the
# analysis never import torch: only recording needs it.
_WHERE = {
    "load_layer": "load",
    "load_population": "load",
    "load_summary": "load",
    "open_recording": "load",
    "load_model": "model",
    "record": "recording",
    "Recorder": "recorder",
    "run_config": "run",
    "merge": "shards",
    "list_layers": "sites",
}
_SUBMODULES = ("analysis", "stimuli")

if TYPE_CHECKING:  # for type checkers and IDEs: the names as if imported here
    from . import analysis, stimuli
    from .load import load_layer, load_population, load_summary, open_recording
    from .model import load_model
    from .recording import record
    from .recorder import Recorder
    from .run import run_config
    from .shards import merge
    from .sites import list_layers


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'unitrec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
