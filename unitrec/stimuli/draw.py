"""Drawing parametric stimuli: gratings and Gabor patches, in apertures, as 8-bit RGB."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["grating_image", "luminance", "to_rgb8"]


def luminance(
    size: int,
    orientation: float,
    spatial_frequency: float,
    phase: float,
    contrast: float,
    background: float,
    sigma: float | None = None,
) -> np.ndarray:
    """Luminance in [0, 1] of one grating or Gabor, shape ``(size, size)``."""
    centres = (np.arange(size) + 0.5) / size - 0.5
    x = centres[None, :]
    y = -centres[:, None]  # rows go down, y goes up
    theta = np.deg2rad(orientation)
    carrier = np.sin(
        2 * np.pi * spatial_frequency * (x * np.cos(theta) + y * np.sin(theta))
        + np.deg2rad(phase)
    )
    if sigma is not None:
        carrier = carrier * np.exp(-(x**2 + y**2) / (2 * sigma**2))
    return np.clip(background + contrast / 2 * carrier, 0.0, 1.0)


def to_rgb8(luminance: np.ndarray) -> np.ndarray:
    grey = np.round(luminance * 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def grating_image(size: int, background: float, setting: dict[str, Any]) -> np.ndarray:
    """The RGB image of one row of a set: a grating or Gabor, in its aperture if it has one."""
    lum = luminance(size, setting["orientation"], setting["spatial_frequency"], setting["phase"],
                     setting["contrast"], background, setting.get("sigma"))
    diameter = setting.get("aperture_diameter")
    if diameter is not None and np.isfinite(diameter):
        rows, cols = np.arange(size)[:, None], np.arange(size)[None, :]
        inside = (rows - setting["aperture_y"]) ** 2 + (cols - setting["aperture_x"]) ** 2 <= (diameter / 2) ** 2
        lum = np.where(inside, lum, background)
    return to_rgb8(lum)
