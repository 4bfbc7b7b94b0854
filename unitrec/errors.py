"""The one exception family of unitrec.

Every error a user can provoke is a :class:`UnitrecError`; each subclass also
inherits the builtin a Python user would catch for that kind of mistake, so
``except KeyError`` keeps working around :func:`unitrec.load_layer`.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "LayerNotFoundError",
    "ModelError",
    "RecordingError",
    "SelectionError",
    "StimulusError",
    "UnitrecError",
    "UnitrecWarning",
]


class UnitrecError(Exception):
    """Base class of every error raised on purpose by unitrec."""


class ConfigError(UnitrecError, ValueError):
    """A configuration (YAML or keyword arguments) is invalid."""


class LayerNotFoundError(UnitrecError, KeyError):
    """A recording site does not exist in the model or in a recording."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ModelError(UnitrecError, ValueError):
    """A model cannot be built or its weights cannot be had."""


class SelectionError(UnitrecError, IndexError):
    """A unit selection falls outside a site's shape."""


class StimulusError(UnitrecError, OSError):
    """Stimuli are missing, empty, or cannot be decoded."""


class RecordingError(UnitrecError, RuntimeError):
    """A recording cannot be written, resumed, or read back."""


class UnitrecWarning(UserWarning):
    """Something a user should know about a run that still goes on (skipped images,
    float16 overflow, an adopted batch size). The CLI prints each as one line."""
