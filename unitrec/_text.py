"""Short texts for one-line messages: sizes and values cut to a width.

Kept apart from the recording stack so that reading a file (``unitrec info``) can use
them without importing torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["human_size", "shorten", "text_of", "where_they_differ"]


def human_size(n: float) -> str:
    """``35.4 MB``: bytes in decimal units, as ``ls -h --si`` and disk vendors count."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def shorten(text: str, width: int = 60) -> str:
    """`text` on one line, cut to `width` characters with an ellipsis."""
    text = " ".join(text.split("\n"))
    return text if len(text) <= width else text[: width - 1] + "…"


def where_they_differ(a: str, b: str, width: int = 48) -> tuple[str, str]:
    """Both strings around their first difference, short enough for a one-line message."""
    if len(a) <= width and len(b) <= width:
        return a, b
    i = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    start = max(0, i - 12)
    cut = lambda s: ("…" if start else "") + s[start : start + width] + ("…" if len(s) > start + width else "")
    return cut(a), cut(b)


def text_of(value: Any) -> str:
    """An HDF5 string attribute or value as ``str`` (h5py gives ``bytes`` for fixed-length ones)."""
    return value.decode() if isinstance(value, bytes) else str(value)
