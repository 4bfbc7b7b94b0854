"""``python -m unitrec``: the command line, as the ``unitrec`` script runs it."""

import sys

from unitrec.cli import main

sys.exit(main())
