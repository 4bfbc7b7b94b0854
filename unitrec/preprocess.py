"""The old home of ``build_transform`` (before the package moved into subpackages).

``from unitrec.preprocess import build_transform`` was in the shipped notebook; it keeps
working, with a FutureWarning pointing at ``ur.build_transform``.
"""

from __future__ import annotations

import warnings

from unitrec.anatomy.preprocess import build_transform, describe_transform

warnings.warn("unitrec.preprocess moved: use ur.build_transform (import unitrec as ur)", FutureWarning,
              stacklevel=2)

__all__ = ["build_transform", "describe_transform"]
