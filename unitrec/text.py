"""Short texts for one-line messages: sizes and values cut to a width.

Kept apart from the recording stack so that reading a file (``unitrec info``) can use
them without importing torch.
"""

from __future__ import annotations

__all__ = ["human_size", "shorten"]


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
