"""What a user gets from pip: the example configs in the wheel (`unitrec init`), and an sdist
whose tests run.

The configs have one copy, the repository's configs/ folder; pyproject.toml maps it onto the
package ``unitrec._configs`` (in the wheel and in an editable install alike).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest

from unitrec.cli import main
from unitrec.run import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("demo.yaml", "evolve.yaml", "v1_protocols.yaml", "visualize.yaml")
TESTS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("*.py")
               if "__pycache__" not in p.parts)


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


# --- unitrec init -----------------------------------------------------------------------------

def test_the_package_carries_the_repository_configs():
    shipped = {c.name: c.read_text(encoding="utf-8") for c in files("unitrec._configs").iterdir()
               if c.name.endswith(".yaml")}
    assert sorted(shipped) == sorted(CONFIGS) == sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    for name in CONFIGS:
        assert shipped[name] == (ROOT / "configs" / name).read_text(encoding="utf-8")


def test_init_writes_the_configs_with_outputs_in_the_folder(tmp_path, capsys):
    folder = tmp_path / "my experiments"
    assert main(["init", str(folder)]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == sorted(CONFIGS)
    for name in CONFIGS:
        original = (ROOT / "configs" / name).read_text(encoding="utf-8")
        assert "../runs/" in original  # written for configs/ in a clone
        assert (folder / name).read_text(encoding="utf-8") == original.replace("../runs/", "runs/")
        assert str(folder / name) in out
    # the next command, quoted for the shell (the folder has a space)
    assert f"next: unitrec run '{folder / 'demo.yaml'}'" in out

    for name in CONFIGS:
        cfg, raw, base = load_config(folder / name)
        assert base == folder.resolve()
        output = cfg.output if isinstance(cfg.output, str) else cfg.output.path
        assert (base / output).resolve().is_relative_to(folder.resolve() / "runs")
    cfg, raw, _ = load_config(folder / "demo.yaml")
    assert raw["report"]["path"] == "runs/demo/report"


def test_init_refuses_to_overwrite_without_force(tmp_path, capsys):
    (tmp_path / "demo.yaml").write_text("# mine\n")
    assert main(["init", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "demo.yaml already exists" in err and "--force" in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["demo.yaml"]  # nothing written
    assert (tmp_path / "demo.yaml").read_text() == "# mine\n"

    assert main(["init", "--force", str(tmp_path)]) == 0
    assert "(overwritten)" in capsys.readouterr().out
    assert (tmp_path / "demo.yaml").read_text().startswith("# The unitrec demo")


def test_the_help_starts_with_init(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "Start with: unitrec init DIR, then unitrec run DIR/demo.yaml" in capsys.readouterr().out


# --- what the sdist and the wheel hold --------------------------------------------------------

def test_every_package_is_listed():
    """pyproject.toml lists its packages (the configs mapping needs a list, not `find`)."""
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "unitrec").rglob("__init__.py")
             if "__pycache__" not in p.parts}
    assert found - listed == set(), "add them to [tool.setuptools] packages in pyproject.toml"
    assert listed - found == {"unitrec._configs"}


def _sdist_files() -> set[str]:
    """The files MANIFEST.in adds, by setuptools' own template rules (no build)."""
    from setuptools._distutils.filelist import FileList

    skip = {".git", ".venv", "venv", "runs", "build", "dist", "__pycache__", "site", ".pytest_cache",
            ".mypy_cache"}
    found = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")]
        found += [os.path.relpath(os.path.join(folder, n), ROOT) for n in names]
    listing = FileList()
    listing.allfiles = sorted(found)
    for line in (ROOT / "MANIFEST.in").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            listing.process_template_line(line)
    # and what setuptools adds by itself: the package, pyproject.toml, the template
    package = {p.relative_to(ROOT).as_posix() for p in (ROOT / "unitrec").rglob("*.py")}
    return {Path(f).as_posix() for f in listing.files} | package | {"pyproject.toml", "MANIFEST.in"}


def _read_by_tests() -> set[str]:
    """Repository paths the tests name: `ROOT / "configs" / "demo.yaml"` and the like."""
    paths = set()
    for test in TESTS:
        text = (ROOT / test).read_text(encoding="utf-8")
        for match in re.finditer(r'\b(?:ROOT|REPO) / ("[^"]+"(?: / "[^"]+")*)', text):
            paths.add("/".join(re.findall(r'"([^"]+)"', match.group(1))))
    return paths


def test_the_sdist_carries_the_tests_and_what_they_read():
    shipped = _sdist_files()
    assert set(TESTS) <= shipped  # every module, conftest.py and each folder's __init__.py
    assert {"tests/__init__.py", "tests/conftest.py", "tests/anatomy/__init__.py"} <= shipped
    assert {f"configs/{name}" for name in CONFIGS} <= shipped
    assert {"notebooks/experiments.ipynb", "notebooks/closed_loop.ipynb", "README.md"} <= shipped
    read = _read_by_tests()
    assert "configs/demo.yaml" in read and "notebooks/closed_loop.ipynb" in read  # the scan works
    for path in sorted(read):
        if (ROOT / path).is_file():
            assert path in shipped, path
        elif (ROOT / path).is_dir():
            assert any(f.startswith(path + "/") for f in shipped), path
    assert not [f for f in shipped if f.startswith(("runs/", ".venv/")) or "__pycache__" in f]


def _build(tmp_path: Path, *what: str) -> Path:
    pytest.importorskip("build")
    out = tmp_path / "dist"
    res = subprocess.run([sys.executable, "-m", "build", "--no-isolation", *what, "-o", str(out), str(ROOT)],
                         capture_output=True, text=True)
    if res.returncode and "Missing dependencies" in res.stdout + res.stderr:
        pytest.skip("this environment lacks the build backend (setuptools>=77): "
                    + (res.stdout + res.stderr).strip().splitlines()[-1])
    assert res.returncode == 0, res.stdout + res.stderr
    return out


@pytest.mark.slow
def test_the_built_sdist_and_wheel_carry_tests_and_configs(tmp_path):
    out = _build(tmp_path)  # the sdist, then the wheel built from it
    (sdist,) = out.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert set(TESTS) <= names
    assert {f"configs/{name}" for name in CONFIGS} <= names

    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
    assert {f"unitrec/_configs/{name}" for name in CONFIGS} <= names
    assert "unitrec/py.typed" in names
    static = {f"unitrec/web/static/{p.name}" for p in (ROOT / "unitrec" / "web" / "static").iterdir()}
    assert static == {"unitrec/web/static/index.html", "unitrec/web/static/atlas.js", "unitrec/web/static/atlas.css"}
    assert static <= names  # the atlas's page
    assert not [n for n in names if n.startswith(("configs/", "tests/", "notebooks/"))]
    for name in CONFIGS:
        with zipfile.ZipFile(wheel) as whl:
            assert whl.read(f"unitrec/_configs/{name}") == (ROOT / "configs" / name).read_bytes()
