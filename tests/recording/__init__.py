"""Tests of unitrec.recording: recorded values, resume, run keys, summaries, the batch loop."""
