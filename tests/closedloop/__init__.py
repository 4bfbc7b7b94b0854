"""Tests of unitrec.closedloop: scoring, lesions, feature visualisation, evolution."""
