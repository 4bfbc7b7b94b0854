"""CITATION.cff and CHANGELOG.md say what the package says (version, name, licence)."""

from __future__ import annotations

from pathlib import Path

import yaml

import unitrec

ROOT = Path(__file__).resolve().parents[1]


def test_the_citation_file_is_valid_cff_and_current():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert {"cff-version", "message", "title", "authors"} <= set(cff)  # CFF 1.2.0's required keys
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["version"] == unitrec.__version__
    assert cff["license"] == "MIT" and "MIT" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert all("name" in a or "family-names" in a for a in cff["authors"])


def test_the_changelog_names_this_version():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in text and f"Version {unitrec.__version__}, not yet released." in text
