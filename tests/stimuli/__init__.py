"""Tests of unitrec.stimuli: finding, decoding, generating and loading stimuli."""
