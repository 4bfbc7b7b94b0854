"""Tests of unitrec.analysis: statistics, experiments and figures."""
