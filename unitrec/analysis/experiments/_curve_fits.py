"""Curve fits of the grating protocols: a Gaussian in log2 spatial frequency and the
Naka–Rushton contrast response, each with its Jacobian and start, fitted per unit with
scipy (imported when a fit is asked for).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from unitrec.errors import UnitrecError

_FIT_PROGRESS = 500  # units above which the curve fits show a progress bar
_MAX_NFEV = 400  # evaluations per fit; exact curves converge in tens, a fit still going after 400 fails


def log_gaussian(x: np.ndarray, b: float, a: float, mu: float, sigma: float) -> np.ndarray:
    return b + a * np.exp(-((x - mu) ** 2) / (2 * sigma**2))


def log_gaussian_jacobian(x: np.ndarray, b: float, a: float, mu: float, sigma: float) -> np.ndarray:
    d = x - mu
    e = np.exp(-(d**2) / (2 * sigma**2))
    return np.stack([np.ones_like(x), e, a * e * d / sigma**2, a * e * d**2 / sigma**3], axis=1)


def gaussian_start(x: np.ndarray, y: np.ndarray) -> tuple[list[float], tuple[list[float], list[float]]]:
    """Start and bounds: the baseline within the curve's range (and one range below), the
    amplitude up to 4 ranges, the peak within an octave of the frequencies, the width
    from 0.05 octave to their span (at least 1), so a flat-topped curve is not fitted by
    a parabola-like Gaussian on a far-off baseline."""
    span, rng = float(x.max() - x.min()), float(np.ptp(y))
    top = max(span, 1.0)
    p0 = [float(y.min()), rng, float(x[np.argmax(y)]), min(max(span / 4, 0.25), top)]
    lower = [float(y.min()) - rng, 0.0, float(x.min()) - 1, 0.05]
    upper = [float(y.max()), 4 * rng, float(x.max()) + 1, top]
    return p0, (lower, upper)


def naka_rushton(c: np.ndarray, r_max: float, c50: float, n: float, b: float) -> np.ndarray:
    return r_max / (1 + np.power(c50 / c, n)) + b  # c^n / (c^n + c50^n), without overflow in c^n


def naka_rushton_jacobian(c: np.ndarray, r_max: float, c50: float, n: float, b: float) -> np.ndarray:
    u = 1 / (1 + np.power(c50 / c, n))
    slope = r_max * u * (1 - u)
    return np.stack([u, -slope * n / c50, slope * np.log(c / c50), np.ones_like(c)], axis=1)


def naka_rushton_start(c: np.ndarray, y: np.ndarray) -> tuple[list[float], tuple[list[float], list[float]]]:
    order = np.argsort(c)
    c, y = c[order], y[order]
    b0, rise = float(y[0]), float(y[-1] - y[0])
    half = np.flatnonzero((y - b0) * np.sign(rise or 1.0) >= abs(rise) / 2)
    c50 = float(c[half[0]]) if half.size else float(np.sqrt(c[0] * c[-1]))
    p0 = [rise if rise else float(np.ptp(y)), min(max(c50, 1e-3), 10.0), 2.0, b0]
    return p0, ([-np.inf, 1e-9, 0.1, -np.inf], [np.inf, 10.0, 10.0, np.inf])


def fit_curves(
    model: Callable[..., np.ndarray],
    jacobian: Callable[..., np.ndarray],
    x: np.ndarray,
    curves: np.ndarray,
    start: Callable[[np.ndarray, np.ndarray], tuple[list[float], tuple[list[float], list[float]]]],
    what: str,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Fit `model` to each row of `curves` over `x`: (parameters, r², failures); NaN where it fails."""
    try:
        from scipy.optimize import OptimizeWarning, curve_fit
    except ImportError as exc:
        raise UnitrecError(f"{what} fits curves with scipy: pip install 'unitrec[analysis]'") from exc
    n_params = model.__code__.co_argcount - 1
    params = np.full((curves.shape[0], n_params), np.nan)
    r2 = np.full(curves.shape[0], np.nan)
    units: Any = range(curves.shape[0])
    if curves.shape[0] > _FIT_PROGRESS and sys.stderr.isatty():  # a log gets no bar redrawn with \r
        from tqdm import tqdm

        units = tqdm(units, desc=f"{what}: fitting", unit="unit")
    x = np.asarray(x, dtype=float)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", OptimizeWarning)
        for i in units:
            y = curves[i]
            ok = np.isfinite(y)
            if ok.sum() < n_params or np.ptp(y[ok]) <= 1e-9 * np.abs(y[ok]).max():
                continue  # too few points, or flat up to rounding: nothing to fit
            p0, bounds = start(x[ok], y[ok])
            try:
                fitted, _ = curve_fit(model, x[ok], y[ok], p0=p0, bounds=bounds, jac=jacobian, max_nfev=_MAX_NFEV)
            except (RuntimeError, ValueError, np.linalg.LinAlgError):
                continue
            residual = y[ok] - model(x[ok], *fitted)
            total = np.sum((y[ok] - y[ok].mean()) ** 2)
            if np.all(np.isfinite(fitted)) and np.all(np.isfinite(residual)):
                params[i] = fitted
                r2[i] = 1 - np.sum(residual**2) / total
    return params, r2, int(np.sum(~np.isfinite(r2)))
