"""Figures: every ``plot_*`` of the analysis, drawn from what ``statistics`` and
``experiments`` compute (never the reverse). Needs the ``plots`` extra (matplotlib).
Public names are re-exported by ``unitrec.analysis``.
"""
