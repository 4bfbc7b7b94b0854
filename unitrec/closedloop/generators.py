"""Image generators for evolution: codes ``(B, D)`` to images ``(B, 3, H, W)`` in [0, 1].

:class:`DCTBasis` is the built-in one: per colour channel a ``k × k`` block of
low-frequency 2-D cosine (DCT-II) coefficients, rendered at the image size and
squashed into [0, 1]; a few hundred parameters (``k = 8``: ``D = 192``) that CMA-ES
can search without a learned prior. :func:`check_generator` refuses, in one line, a
generator (the built-in one or a user's GAN) whose output is not such an image batch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from unitrec.anatomy.fingerprint import anatomy_of
from unitrec.anatomy.model import state_dict_sha256
from unitrec.errors import ConfigError

__all__ = ["DCTBasis", "check_generator", "resolve_generator"]


class DCTBasis(nn.Module):
    """Low-frequency images from 2-D cosine coefficients: ``3 · k · k`` numbers per image.

    Channel ``c`` of an image is ``0.5 + 0.5 · tanh(s)`` with
    ``s[y, x] = (2 / k) · Σ_uv code[c, u, v] · cos(π (2y + 1) u / 2H) · cos(π (2x + 1) v / 2W)``:
    code 0 is a mid-grey image, and a code of unit-variance entries gives ``s`` of
    about unit standard deviation (the ``2 / k`` makes the contrast independent of
    ``k``), so images are vivid without being saturated.

    Parameters
    ----------
    size
        Image height and width in pixels (an int for a square image, or ``(h, w)``).
    k
        Frequencies per axis and channel; ``code_size = 3 · k · k``.

    Examples
    --------
    >>> g = DCTBasis(64)
    >>> g.code_size
    192
    >>> tuple(g(torch.zeros(2, g.code_size)).shape)
    (2, 3, 64, 64)
    """

    rows: torch.Tensor  # (H, k) cosines, a buffer
    cols: torch.Tensor  # (W, k)

    def __init__(self, size: int | tuple[int, int] = 224, k: int = 8) -> None:
        super().__init__()
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if h < 1 or w < 1 or k < 1:
            raise ConfigError(f"a DCT basis needs a positive size and k, got size {size!r}, k {k!r}")
        self.size, self.k = (h, w), int(k)
        self.code_size = 3 * self.k * self.k
        # float64 tables, cast on use: the same basis on every device and dtype
        self.register_buffer("rows", _cosines(h, self.k), persistent=False)
        self.register_buffer("cols", _cosines(w, self.k), persistent=False)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.dim() != 2 or codes.shape[1] != self.code_size:
            raise ConfigError(f"the DCT basis takes codes (B, {self.code_size}), got {tuple(codes.shape)}")
        coeff = codes.reshape(-1, 3, self.k, self.k)
        rows, cols = self.rows.to(codes.dtype), self.cols.to(codes.dtype)
        # s = rows · C · colsᵀ per channel: (H, k) @ (k, k) @ (k, W)
        s = rows @ (coeff * (2.0 / self.k)) @ cols.T
        if torch.is_grad_enabled() and codes.requires_grad:
            return 0.5 + 0.5 * torch.tanh(s)
        return torch.tanh_(s).mul_(0.5).add_(0.5)  # in place: one pass over the images, not three

    def extra_repr(self) -> str:
        return f"size={self.size}, k={self.k}, code_size={self.code_size}"


def _cosines(n: int, k: int) -> torch.Tensor:
    """``cos(π (2i + 1) u / 2n)`` for pixels ``i < n`` and frequencies ``u < k``: ``(n, k)``."""
    i = torch.arange(n, dtype=torch.float64)[:, None]
    u = torch.arange(k, dtype=torch.float64)[None, :]
    return torch.cos(math.pi * (2 * i + 1) * u / (2 * n))


def check_generator(generator: Any, code_size: int, size: int | tuple[int, int] | None = None,
                    device: str | torch.device = "cpu") -> tuple[int, int]:
    """Run `generator` on two codes (zero and random) and refuse, in one line, what is not an image batch.

    Parameters
    ----------
    generator
        An ``nn.Module`` mapping codes ``(B, code_size)`` to images ``(B, 3, H, W)`` in [0, 1].
    code_size
        The code length ``D`` it takes.
    size
        If given, the ``(H, W)`` (or side) its images must have.
    device
        Where the codes are made (the generator should already be there).

    Returns
    -------
    tuple of int
        ``(H, W)`` of its images.

    Raises
    ------
    ConfigError
        A generator that fails on the codes, or whose output is not a finite float
        ``(2, 3, H, W)`` batch in [0, 1].

    Examples
    --------
    >>> check_generator(DCTBasis(32), 192)
    (32, 32)
    """
    if not isinstance(generator, nn.Module):
        raise ConfigError(f"generator must be a torch.nn.Module mapping codes (B, D) to images (B, 3, H, W), "
                          f"got {type(generator).__name__}")
    name = type(generator).__name__
    codes = torch.zeros(2, code_size, device=device)
    codes[1] = torch.randn(code_size, generator=torch.Generator().manual_seed(0)).to(device)
    training = generator.training
    try:
        generator.eval()
        with torch.no_grad():
            out = generator(codes)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of user code, said in one line
        text = " ".join(str(exc).split())[:160]
        raise ConfigError(f"the generator {name} failed on codes of shape (2, {code_size}) ({type(exc).__name__}: "
                          f"{text}); pass the code_size it takes") from None
    finally:
        generator.train(training)
    if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.dim() != 4 \
            or out.shape[0] != 2 or out.shape[1] != 3:
        got = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"the generator {name} must return a float image batch (2, 3, H, W) for codes (2, "
                          f"{code_size}), got {got}; make it return RGB images in [0, 1]")
    if not torch.isfinite(out).all():
        raise ConfigError(f"the generator {name} gave NaN or infinite pixels for a zero or random code; fix the "
                          "generator (its weights, or its output layer)")
    lo, hi = float(out.min()), float(out.max())
    if lo < 0 or hi > 1:
        raise ConfigError(f"the generator {name} gives pixels in [{lo:.3g}, {hi:.3g}], not in [0, 1]; end it with "
                          "a sigmoid, or rescale (e.g. (x + 1) / 2 for a tanh output)")
    hw = (int(out.shape[2]), int(out.shape[3]))
    if size is not None:
        want = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if hw != want:
            raise ConfigError(f"the generator {name} gives {hw[0]}×{hw[1]} images, not {want[0]}×{want[1]}; "
                              "make it render at that size")
    return hw


def resolve_generator(generator: nn.Module | None, code_size: int | None, size: int) -> tuple[nn.Module, int, str]:
    """The generator ``evolve`` uses, its code length, and the text that names it in a file's key.

    Without `generator`: the built-in :class:`DCTBasis` at `size`, ``k`` from
    ``code_size = 3 · k · k`` (``k = 8`` when None). With one: `code_size`, else its
    ``code_size`` attribute; it is named by class, weights SHA-256 and anatomy.
    """
    if code_size is not None and (isinstance(code_size, bool) or not isinstance(code_size, (int, np.integer))
                                  or code_size < 2):
        raise ConfigError(f"code_size must be an integer ≥ 2, got {code_size!r}")
    if generator is None:
        k = 8 if code_size is None else math.isqrt(int(code_size) // 3)
        if code_size is not None and 3 * k * k != code_size:
            raise ConfigError(f"the built-in basis takes 3·k·k numbers (27, 48, 75, ... 192 for k = 8), not "
                              f"code_size {code_size}; leave code_size out or pass a generator")
        return DCTBasis(size, k), 3 * k * k, f"built-in DCT basis, k {k}"
    if not isinstance(generator, nn.Module):
        raise ConfigError(f"generator must be a torch.nn.Module mapping codes (B, D) to images (B, 3, H, W) in "
                          f"[0, 1], got {type(generator).__name__}")
    if code_size is None:
        code_size = getattr(generator, "code_size", None)
        if isinstance(code_size, bool) or not isinstance(code_size, (int, np.integer)) or code_size < 2:
            raise ConfigError(f"pass code_size=D, the length of the codes {type(generator).__name__} takes (it "
                              "has no integer code_size attribute)")
    cls = type(generator)
    text = (f"{cls.__module__}.{cls.__qualname__}, weights sha256 {state_dict_sha256(generator)}, anatomy "
            f"{anatomy_of(generator).digest}")
    return generator, int(code_size), text
