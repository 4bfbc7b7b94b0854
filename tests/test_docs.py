"""The docs site: every public name has its reference entry, every page is in the navigation,
the generated references cover the schema and the parser, and the site builds in strict mode."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import unitrec
import unitrec.analysis as A
import unitrec.stimuli as S

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
_spec = importlib.util.spec_from_file_location("unitrec_docs_hooks", DOCS / "hooks.py")
assert _spec is not None and _spec.loader is not None
hooks = importlib.util.module_from_spec(_spec)  # docs/hooks.py: the generated references
_spec.loader.exec_module(hooks)


def _nav_pages(nav) -> list[str]:
    pages = []
    for item in nav:
        for value in (item.values() if isinstance(item, dict) else [item]):
            pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_public_name_has_a_reference_entry():
    api = (DOCS / "reference" / "api.md").read_text(encoding="utf-8")
    names = [f'"ur.{n}"' for n in unitrec.__all__ if n not in ("analysis", "stimuli", "__version__")]
    names += [f'"A.{n}"' for n in A.__all__]
    names += [f'"unitrec.stimuli.{n}"' for n in S.__all__ if callable(getattr(S, n))]
    assert [n for n in names if f"heading: {n}" not in api] == []


def test_every_page_is_in_the_navigation():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
    listed = set(_nav_pages(config["nav"]))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*") if p.suffix in (".md", ".ipynb")}
    assert pages - listed == set() and listed - pages == set()


def test_the_references_are_generated_from_the_code():
    from unitrec.cli import _parser
    from unitrec.schema import ClosedLoopConfig, Config

    config = hooks.config_reference()
    for model in (Config, ClosedLoopConfig):
        for name, field in model.model_fields.items():
            assert f"`{field.alias or name}`" in config, name
    assert "| `keep` |" in config and "| `generations` |" in config  # nested sections too
    cli = hooks.cli_reference()
    subcommands = next(a for a in _parser()._subparsers._group_actions).choices
    assert all(f"## `unitrec {name}`" in cli for name in subcommands)


@pytest.mark.slow
def test_the_site_builds_in_strict_mode(tmp_path):
    if shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists():
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]'")
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).parent / "mkdocs")
    done = subprocess.run([mkdocs, "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "api" / "index.html").stat().st_size > 100_000


def test_the_json_schema_accepts_every_shipped_config_and_names_a_wrong_key(capsys):
    jsonschema = pytest.importorskip("jsonschema")
    from unitrec.cli import main

    assert main(["schema"]) == 0
    schema = __import__("json").loads(capsys.readouterr().out)
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        jsonschema.validate(yaml.safe_load(path.read_text(encoding="utf-8")), schema)
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**demo, "recrod": {}}, schema)  # a misspelt section
