"""The unit atlas (``ur.atlas``): a recording as a static web folder that browses every unit.

Named ``web``, not ``atlas``: a subpackage ``unitrec.atlas``, once imported, would be the
attribute ``unitrec.atlas`` in place of the function. ``build.py`` (:func:`~unitrec.atlas`:
the folder and its manifest), ``units.py`` (each site's unit table,
ranked stimuli and tuning, from its summary or its full responses), ``data.py`` (the
data files, written in chunks), ``images.py`` (stimulus thumbnails as the network saw
them, receptive-field maps), ``extras.py`` (feature visualisations and evolutions
matched to their units) and ``static/`` (the page: HTML, CSS and JavaScript written by
the project, no library, no server). Imports the base modules, ``stimuli``, ``files``,
``analysis`` and the torch-free reader of ``closedloop``. :func:`atlas` is re-exported
by ``unitrec``.
"""

from unitrec.web.build import atlas

__all__ = ["atlas"]
