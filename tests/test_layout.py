"""The package layout keeps its rules (docs/design.md, "Data flow, and where it lives").

Every import inside ``unitrec`` is read from the source (at module level, inside
functions and under ``TYPE_CHECKING`` alike), and the graph is checked: no circles
between modules, and each part imports only the parts below it in the table.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import unitrec

PACKAGE = Path(unitrec.__file__).parent

# Each part of the package, lowest first, with the parts it may import (a part allows its
# subparts too: "unitrec.analysis" allows "unitrec.analysis._units"). A module belongs
# to the longest entry that prefixes its name. `unitrec/__init__.py` (the public
# facade, importing on first use) and `__main__` stand above everything; only the CLI
# and the config runner may import the facade (they call the public API).
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "unitrec._version": (),
    "unitrec._text": (),
    "unitrec.errors": (),
    "unitrec._parse": ("unitrec.errors",),
    "unitrec.schema": ("unitrec.errors", "unitrec._parse"),
    "unitrec.anatomy": ("base",),
    "unitrec.stimuli": ("base",),
    "unitrec.files": ("base", "unitrec.anatomy", "unitrec.stimuli"),
    "unitrec.recording": ("base", "unitrec.anatomy", "unitrec.stimuli", "unitrec.files"),
    "unitrec.analysis._units": ("base",),
    "unitrec.analysis.statistics": ("base", "unitrec.files", "unitrec.analysis._units"),
    "unitrec.analysis.experiments": ("base", "unitrec.anatomy", "unitrec.stimuli", "unitrec.files",
                                     "unitrec.recording", "unitrec.analysis._units",
                                     "unitrec.analysis.statistics"),
    "unitrec.analysis.figures": ("base", "unitrec.stimuli", "unitrec.files", "unitrec.analysis._units",
                                 "unitrec.analysis.statistics", "unitrec.analysis.experiments"),
    "unitrec.analysis": ("base", "unitrec.analysis._units", "unitrec.analysis.statistics",
                         "unitrec.analysis.experiments", "unitrec.analysis.figures"),
    "unitrec.convert": ("base", "unitrec.files", "unitrec.analysis"),
    "unitrec.closedloop": ("base", "unitrec.anatomy", "unitrec.stimuli", "unitrec.files", "unitrec.recording",
                           "unitrec.analysis"),
    # the atlas shows synthesised images through closedloop's torch-free reader (trajectory.py)
    "unitrec.web": ("base", "unitrec.stimuli", "unitrec.files", "unitrec.analysis", "unitrec.closedloop"),
    "unitrec.report": ("base", "unitrec.stimuli", "unitrec.files", "unitrec.analysis"),
    "unitrec.run": ("base", "unitrec", "unitrec.anatomy", "unitrec.stimuli", "unitrec.files", "unitrec.recording",
                    "unitrec.analysis", "unitrec.report", "unitrec.closedloop", "unitrec.web"),
    "unitrec.cli": ("base", "unitrec", "unitrec.anatomy", "unitrec.stimuli", "unitrec.files", "unitrec.recording",
                    "unitrec.analysis", "unitrec.report", "unitrec.closedloop", "unitrec.web", "unitrec.run"),
}
BASE = ("unitrec._version", "unitrec._text", "unitrec.errors", "unitrec._parse", "unitrec.schema")
FACADES = ("unitrec", "unitrec.__main__", "unitrec.preprocess")  # the last: an old path, kept
LONGEST_MODULE = 500  # lines; longer ones are named here with the reason
LONGER = {
    "unitrec.anatomy.trace": "one TorchFunctionMode and the channel labelling that reads its private records "
                             "of ops, concatenations and in-place writes (539 lines)",
    "unitrec.report": "one page whose sections share the figures' state (532 lines); the atlas's page is a "
                      "JavaScript app of its own (unitrec/web/static), so there is no page module to share",
    "unitrec.cli": "one parser for every subcommand, and the one-line summaries each prints (about 560 lines)",
}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


#: modules that import by a name computed at run time: the public facades (PEP 562), and
#: the model loader (a user's own `package.module:factory`, never unitrec's)
DYNAMIC = ("unitrec", "unitrec.stimuli", "unitrec.anatomy.model")


def _imports(name: str, path: Path) -> set[str]:
    """The package's modules that `name` imports, anywhere in its source: import statements,
    ``import_module("unitrec.…")`` / ``__import__`` / ``sys.modules["unitrec.…"]`` with a
    literal name, and attribute chains on ``unitrec`` (``unitrec.files.load.x``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def add(dotted: str) -> None:  # the longest module that prefixes a dotted name
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in MODULES:
                found.add(".".join(parts[:i]))
                return

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Call):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if called in ("import_module", "__import__"):
                literal = node.args[0] if node.args and isinstance(node.args[0], ast.Constant) else None
                if literal is not None and isinstance(literal.value, str):
                    add(literal.value)
                elif name not in DYNAMIC:
                    found.add(f"<{called} of a computed name>")
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and \
                isinstance(node.slice.value, str) and node.slice.value.startswith("unitrec"):
            add(node.slice.value)  # sys.modules["unitrec.…"]
        elif isinstance(node, ast.Attribute):
            chain, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id == "unitrec":
                add(".".join(["unitrec", *reversed(chain)]))
    return {m for m in found if (m in MODULES or m.startswith("<")) and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _part(name: str) -> str:
    if name in BASE or name in FACADES:
        return name
    if name.startswith("<"):
        raise AssertionError(f"a module imports by a name computed at run time ({name}); import by name, "
                             "so that the layout can be checked")
    matches = [p for p in MAY_IMPORT if name == p or name.startswith(p + ".")]
    if not matches:
        raise AssertionError(f"{name} belongs to no part of the layout: add it to MAY_IMPORT "
                             f"and to docs/design.md")
    return max(matches, key=len)


def _allowed(part: str) -> set[str]:
    allowed = {part}
    for entry in MAY_IMPORT[part]:
        allowed.update(BASE if entry == "base" else (entry,))
    return allowed


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read():
    # the check would pass on an empty graph: make sure it sees known imports
    assert "unitrec.errors" in GRAPH["unitrec.schema"]
    assert "unitrec.files.load" in GRAPH["unitrec.analysis.statistics.preferred"]
    assert len(MODULES) > 40


def test_imports_by_string_and_attribute_are_read(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import importlib, sys\nimport unitrec\n"
                      "def f():\n"
                      "    importlib.import_module('unitrec.recording.record')\n"
                      "    __import__('unitrec.recording.stream')\n"
                      "    sys.modules['unitrec.analysis']\n"
                      "    return unitrec.files.load.load_layer\n"
                      "def g(name):\n"
                      "    return importlib.import_module(name)\n")
    found = _imports("unitrec.files.m", source)
    assert {"unitrec.recording.record", "unitrec.recording.stream", "unitrec.analysis", "unitrec.files.load",
            "<import_module of a computed name>"} <= found


def test_the_facades_import_what_their_tables_say():
    # `_WHERE` (used at run time) and the TYPE_CHECKING imports (read by type checkers and by
    # this test) must name the same module for every public name
    for facade in ("unitrec", "unitrec.stimuli"):
        module = importlib.import_module(facade)
        tree = ast.parse(MODULES[facade].read_text())
        typed = {alias.asname or alias.name: node.module for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module for alias in node.names}
        for public, where in module._WHERE.items():
            assert typed.get(public) == f"{facade}.{where}", (facade, public)


def test_no_import_circles():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """Imports that a part's row of MAY_IMPORT does not allow."""
    wrong = []
    for name, targets in graph.items():
        if name in FACADES:
            continue
        allowed = _allowed(_part(name))
        for target in sorted(targets):
            part = _part(target)
            if not any(part == a or (a not in FACADES and part.startswith(a + ".")) for a in allowed):
                wrong.append(f"{name} imports {target}")
    return wrong


def test_imports_point_down_the_layers():
    assert _upward(GRAPH) == []


def test_an_upward_import_is_found():
    assert _upward({"unitrec.files.load": {"unitrec.recording.record"},
                    "unitrec.anatomy.trace": {"unitrec.stimuli.decode"},
                    "unitrec.recording.record": {"unitrec"},
                    "unitrec.run": {"unitrec", "unitrec.report"}}) == [
        "unitrec.files.load imports unitrec.recording.record",
        "unitrec.anatomy.trace imports unitrec.stimuli.decode",
        "unitrec.recording.record imports unitrec",
    ]


def test_figures_are_apart_from_computation():
    # deleting figures/ must leave every computation importable (xarray's plot/ rule)
    for name, targets in GRAPH.items():
        if name.startswith(("unitrec.analysis.statistics", "unitrec.analysis.experiments")):
            assert not any(t.startswith("unitrec.analysis.figures") for t in targets), name


def test_modules_are_short():
    lines = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in lines.items() if n > LONGEST_MODULE and name not in LONGER} == {}
    # a stated reason holds only while the module stays about that long
    assert {name: lines[name] for name in LONGER if lines[name] > LONGEST_MODULE + 50} == {}


def test_every_module_has_a_docstring_saying_its_job():
    missing = [name for name, path in MODULES.items() if not ast.get_docstring(ast.parse(path.read_text()))]
    assert missing == []


def test_dir_shows_the_public_api_only():
    code = "import unitrec as ur; print(' '.join(n for n in dir(ur) if not n.startswith('_')))"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert shown == sorted(n for n in unitrec.__all__ if not n.startswith("_"))
    import unitrec.analysis as A
    import unitrec.stimuli as S

    for module in (A, S):
        assert [n for n in dir(module) if not n.startswith("_")] == sorted(module.__all__)


@pytest.mark.parametrize("name", sorted(unitrec.__all__))
def test_every_public_name_resolves(name):
    assert getattr(unitrec, name) is not None


def test_the_tests_mirror_the_layout():
    tests = Path(__file__).parent
    subpackages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert subpackages == ["analysis", "anatomy", "closedloop", "files", "recording", "stimuli", "web"]
    for name in subpackages:
        assert (tests / name / "__init__.py").is_file() and list((tests / name).glob("test_*.py")), name


def test_the_old_home_of_build_transform_still_works():
    code = ("import warnings, unitrec as ur\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    from unitrec.preprocess import build_transform\n"
            "assert build_transform is ur.build_transform\n"
            "assert any('ur.build_transform' in str(w.message) for w in caught)\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_module_of_the_package_hides_a_public_name():
    """Importing ``unitrec.X`` sets the attribute ``unitrec.X`` to the module: a module named like
    a public function (``atlas``, ``record``) would, once imported, replace the function."""
    import importlib
    import pkgutil

    import unitrec

    names = {m.name for m in pkgutil.iter_modules(unitrec.__path__)}
    assert names & set(unitrec.__all__) == {"analysis", "stimuli"}  # the two public submodules
    for module in ("unitrec.web", "unitrec.web.build", "unitrec.run", "unitrec.cli"):
        importlib.import_module(module)
    assert callable(unitrec.atlas) and unitrec.atlas.__module__ == "unitrec.web.build"
