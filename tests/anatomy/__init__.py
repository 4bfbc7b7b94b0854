"""Tests of unitrec.anatomy: models, the trace, sites, selections, receptive fields, tokens."""
