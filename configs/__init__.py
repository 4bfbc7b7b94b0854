"""The example configs, installed with unitrec as the package ``unitrec._configs``.

This folder is the one copy: a clone runs them in place (``unitrec run configs/demo.yaml``,
outputs in ../runs/), and the wheel carries them for ``unitrec init DIR``, which writes
them into DIR with their outputs in DIR/runs/. Nothing here is meant to be imported.
"""
