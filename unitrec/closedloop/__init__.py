"""Closed-loop experiments: score units fast, lesion them, synthesise the images that drive them.

``scorer.py`` (:class:`~unitrec.Scorer`: units' responses to a batch, differentiable),
``visualize.py`` (feature visualisation by gradient ascent, with ``parametrize.py``:
pixel and Fourier images, decorrelated colour, robustness transforms), ``evolve.py``
(CMA-ES over a generator's codes, streamed to HDF5 and resumable; read back by
``trajectory.py``) and ``figures.py``. Lesions themselves are hooks and live in
``unitrec.recording.lesion``. Imports the base modules, ``anatomy``, ``stimuli``,
``files``, ``recording`` and ``analysis``. The public names are re-exported by
``unitrec``.
"""
