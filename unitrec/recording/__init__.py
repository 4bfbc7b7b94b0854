"""Recording: stimuli through the model, responses to the file.

Hooks that copy a module's value at return (``recorder.py``); ``record`` (``record.py``)
with its job (``job.py``) and batch loop (``stream.py``); per-unit statistics on the
device (``accumulate.py``); what a file says about how it was made
(``provenance.py``); lesions, hooks that edit a module's output (``lesion.py``).
Imports the base modules, ``anatomy``, ``stimuli`` and ``files``. The public names
are re-exported by ``unitrec``.
"""
