"""Anatomy: the model and what can be recorded in it, before any stimulus is shown.

Loading a model (``model.py``), what it computes beyond its weights
(``fingerprint.py``), the trace of one forward pass (``trace.py``, hollow where sound:
``hollow.py``), receptive fields (``receptive_field.py``), a ViT's tokens
(``tokens.py``), unit selections (``selection.py``), sites (``sites.py``) and the
model's input transform (``preprocess.py``). Imports only the base modules
(``errors``, ``schema``, ``_text``, ``_version``). The public names are re-exported by
``unitrec``.
"""
