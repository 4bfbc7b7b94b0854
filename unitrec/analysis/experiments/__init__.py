"""Experiments on a model or a recording: the grating protocols (F1/F0, SF, size,
contrast), receptive-field mapping (gradients, STA, on/off maps) and encoding models to
neural data. Computation only: their figures live in ``unitrec.analysis.figures``.
Public names are re-exported by ``unitrec.analysis``.
"""
