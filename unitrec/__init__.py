"""unitrec: in-silico electrophysiology for PyTorch vision models.

Pick units in a network the way a physiologist picks cells, show them a stimulus
set, and get their responses back as labelled populations on disk.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from unitrec._version import __version__
from unitrec.errors import (
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
    "load_layer": "files.load",
    "load_population": "files.load",
    "load_summary": "files.load",
    "open_recording": "files.load",
    "load_model": "anatomy.model",
    "record": "recording.record",
    "Recorder": "recording.recorder",
    "run_config": "run",
    "merge": "files.merge",
    "list_layers": "anatomy.layers",
    "build_transform": "anatomy.preprocess",
    "Scorer": "closedloop.scorer",
    "visualize": "closedloop.visualize",
    "evolve": "closedloop.evolve",
    "load_evolution": "closedloop.trajectory",
    "plot_evolution": "closedloop.figures",
    "plot_visualizations": "closedloop.figures",
    "atlas": "web.build",
}
_SUBMODULES = ("analysis", "stimuli")

if _TYPE_CHECKING:  # for type checkers and IDEs: the names as if imported here
    from unitrec import analysis, stimuli
    from unitrec.files.load import load_layer, load_population, load_summary, open_recording
    from unitrec.anatomy.model import load_model
    from unitrec.recording.record import record
    from unitrec.recording.recorder import Recorder
    from unitrec.closedloop.evolve import evolve
    from unitrec.closedloop.figures import plot_evolution, plot_visualizations
    from unitrec.closedloop.scorer import Scorer
    from unitrec.closedloop.trajectory import load_evolution
    from unitrec.closedloop.visualize import visualize
    from unitrec.run import run_config
    from unitrec.files.merge import merge
    from unitrec.anatomy.layers import list_layers
    from unitrec.anatomy.preprocess import build_transform
    from unitrec.web.build import atlas


def __getattr__(name: str) -> _Any:
    if name in _SUBMODULES:
        return _importlib.import_module(f".{name}", __name__)
    if name in _WHERE:
        value = getattr(_importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'unitrec' has no attribute {name!r}")


def __dir__() -> list[str]:  # the public API, and nothing imported to build it
    return sorted(__all__)


__all__ = [
    "ConfigError",
    "LayerNotFoundError",
    "ModelError",
    "Recorder",
    "RecordingError",
    "Scorer",
    "SelectionError",
    "StimulusError",
    "UnitrecError",
    "UnitrecWarning",
    "__version__",
    "analysis",
    "atlas",
    "build_transform",
    "evolve",
    "list_layers",
    "load_evolution",
    "load_layer",
    "load_model",
    "load_population",
    "load_summary",
    "merge",
    "open_recording",
    "plot_evolution",
    "plot_visualizations",
    "record",
    "run_config",
    "stimuli",
    "visualize",
]
