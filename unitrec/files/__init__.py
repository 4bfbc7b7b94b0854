"""Files: the HDF5 recording on disk, written, stitched, merged and read.

The layout and its names (``layout.py``), writes that survive a full disk and a crash
(``disk.py``), the writer (``writer.py``), summaries' saved state (``summary.py``), one
writer per output (``lock.py``), shard files (``shards.py``), stitching and merging
(``stitch.py``, ``merge.py``), the checks before a file is continued (``resume.py``) and
reading (``load.py``, ``opening.py``, ``info.py``).
Imports the base modules, ``anatomy`` (what a site is) and ``stimuli`` (a stimulus
file's identity), never ``recording`` or ``analysis``; reading imports no torch. The
public names are re-exported by ``unitrec``.
"""
