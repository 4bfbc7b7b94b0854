"""Vision transformers' tokens: which one is the class token, which patch each other covers.

A ViT cuts the image into patches with a convolution whose kernel equals its stride
(``conv_proj``, ``patch_embed.proj``), flattens the ``(grid_y, grid_x)`` map into
patch tokens and puts prefix tokens in front: a class token (``cls``) and, in some
models, register tokens. Every later block keeps that ``(token, channel)`` layout, so
a site whose output is ``(batch, prefix + grid_y * grid_x, channels)`` is a token site.

A patch token's receptive field is stored as its patch's (``rf_size`` = ``rf_stride``
= the patch size, ``rf_center_y/x`` the patch centre): that is what it sees before the
first attention layer; after it, every token can see the whole image, which is the
theoretical field of every token site past the embedding. The patch field is the one
that locates a token in the image, so it is the one kept.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from unitrec.anatomy.receptive_field import Field

__all__ = ["TokenGrid"]

MAX_PREFIX = 32  # class and register tokens in front of the patches


@dataclass(frozen=True)
class TokenGrid:
    """The token layout of a vision transformer.

    Attributes
    ----------
    kinds : tuple of str
        The prefix tokens' kinds, in order (``"cls"``, ``"register"``).
    grid : (int, int)
        Patch rows and columns.
    field : Field
        The patch embedding's receptive field (per patch row and column).
    patch_embed : str
        The module that cuts the patches.
    """

    kinds: tuple[str, ...]
    grid: tuple[int, int]
    field: Field
    patch_embed: str

    @property
    def prefix(self) -> int:
        return len(self.kinds)

    @property
    def n_tokens(self) -> int:
        return self.prefix + self.grid[0] * self.grid[1]

    def matches(self, shape: tuple[int, ...] | None) -> bool:
        """Whether a per-stimulus shape is ``(tokens, channels)`` of this model."""
        return shape is not None and len(shape) == 2 and shape[0] == self.n_tokens

    def patch(self, y: int, x: int) -> int:
        """The token index of patch row `y`, column `x`."""
        return self.prefix + int(y) * self.grid[1] + int(x)

    @property
    def center(self) -> int:
        """The centre patch's token."""
        return self.patch(self.grid[0] // 2, self.grid[1] // 2)

    def coords(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        """Per-token labels: ``kind``, patch ``y``/``x`` (-1 for prefix tokens) and the
        patch centre ``rf_center_y/x`` in input pixels (NaN for prefix tokens)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        patch = tokens - self.prefix
        is_patch = patch >= 0
        y = np.where(is_patch, patch // self.grid[1], -1)
        x = np.where(is_patch, patch % self.grid[1], -1)
        kind = np.array([self.kinds[t] if t < self.prefix else "patch" for t in tokens.tolist()], dtype="U8")
        cy = np.array([self.field.y.center(v) if v >= 0 else np.nan for v in y.tolist()], dtype=float)
        cx = np.array([self.field.x.center(v) if v >= 0 else np.nan for v in x.tolist()], dtype=float)
        return {"kind": kind, "y": y, "x": x, "rf_center_y": cy, "rf_center_x": cx}


def find_grid(model, patch_calls: list[tuple[str, tuple[int, ...], Field]],
              token_shapes: list[tuple[int, ...]]) -> TokenGrid | None:
    """The token layout, from the patch-cutting convolutions a traced pass called
    (``(module, output shape, field)``, in call order) and the 3-D outputs it saw."""
    has_cls = any(getattr(model, name, None) is not None for name in ("class_token", "cls_token"))
    counts = Counter(int(shape[1]) for shape in token_shapes)
    for name, shape, fld in reversed(patch_calls):
        gy, gx = int(shape[-2]), int(shape[-1])
        # the token count most blocks share (the patch embedding alone has no prefix yet)
        for tokens, _ in counts.most_common():
            prefix = tokens - gy * gx
            if 0 <= prefix <= MAX_PREFIX:
                kinds = (["cls"] + ["register"] * (prefix - 1)) if has_cls and prefix else ["register"] * prefix
                return TokenGrid(tuple(kinds), (gy, gx), fld, name)
    return None
