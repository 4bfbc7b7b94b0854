"""Tests of unitrec.files: the file, writes that survive the world, shards, locks, readers."""
