"""The layout is the architecture: packages by concept, dependencies pointing one way.

Each subpackage's docstring says what lives there and, on a `May import:` line, which relay packages
and modules it may import; this test holds the code to those lines, so the docstrings stay true.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

import relay

RELAY = Path(relay.__file__).parent
MAX_LOOSE_MODULES = 10
MIN_SUBPACKAGES = 5


def _name(path: Path) -> str:
    parts = list(path.relative_to(RELAY.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {_name(path): path for path in sorted(RELAY.rglob("*.py"))}


def subpackages() -> list[str]:
    return sorted(_name(p.parent) for p in RELAY.glob("*/__init__.py"))


def imports(module: str) -> set[str]:
    """The relay modules `module` imports, at its top level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(modules()[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _ours(node.module):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules() else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if _ours(alias.name))
    return found


def _ours(name: str) -> bool:
    return name == "relay" or name.startswith("relay.")


def unit(module: str) -> str:
    """The node of the package graph: a subpackage as a whole, or a module directly in relay/."""
    package = ".".join(module.split(".")[:2])
    return package if package in subpackages() else module


def package_edges() -> Iterator[tuple[str, str, str]]:
    """(importer's unit, imported unit, importing module) across units."""
    for module in modules():
        for target in imports(module):
            if unit(target) != unit(module):
                yield unit(module), unit(target), module


def allowed(package: str) -> set[str]:
    doc = ast.get_docstring(ast.parse(modules()[package].read_text(encoding="utf-8"))) or ""
    lines = doc.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("May import:")), None)
    assert start is not None, f"{package}/__init__.py: the docstring has no 'May import:' line"
    line = lines[start]
    for more in lines[start + 1 :]:  # the clause may run on until a blank line
        if not more.strip():
            break
        line += " " + more.strip()
    if line.startswith("May import: all of relay but "):  # the top layer
        everything = {unit(module) for module in modules()} | {"relay"}
        return everything - _names(line.removeprefix("May import: all of relay but ")) - {package}
    return _names(line)


def _names(text: str) -> set[str]:
    return set(re.findall(r"\brelay(?:\.[a-z_]+)*", text))


def test_relay_is_grouped_by_concept() -> None:
    loose = sorted(p.name for p in RELAY.glob("*.py"))
    assert len(loose) <= MAX_LOOSE_MODULES, loose
    assert len(subpackages()) >= MIN_SUBPACKAGES, subpackages()


@pytest.mark.parametrize("package", subpackages())
def test_each_package_says_what_lives_there_and_what_it_may_import(package: str) -> None:
    doc = ast.get_docstring(ast.parse(modules()[package].read_text(encoding="utf-8"))) or ""
    first, second, *_ = [*doc.splitlines(), "", ""]
    assert first and not first.startswith("May import:"), f"{package}: the first line says what lives there"
    assert second.startswith("May import:"), f"{package}: the second line says what it may import"


@pytest.mark.parametrize("package", subpackages())
def test_each_package_imports_only_what_its_docstring_allows(package: str) -> None:
    permitted = allowed(package)
    assert all(name == "relay" or name in modules() for name in permitted), f"{package}: {permitted}"
    wrong = sorted(
        f"{module} imports {target}"
        for source, target, module in package_edges()
        if source == package
        if target not in permitted
    )
    assert wrong == [], f"{package}/__init__.py does not allow: {wrong}"


def test_no_import_cycle_between_packages_or_modules() -> None:
    between: dict[str, set[str]] = {}
    for source, target, _ in package_edges():
        between.setdefault(source, set()).add(target)
    within = {module: imports(module) - {module} for module in modules()}
    for graph in (between, within):
        try:
            tuple(TopologicalSorter(graph).static_order())
        except CycleError as exc:
            pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_scan_sees_the_imports_it_checks() -> None:
    """A scan that found nothing would pass everything above."""
    assert {"relay.dedupe.memory", "relay.types", "relay.errors"} <= imports("relay.pipeline.deliverer")
    assert ("relay.http", "relay.pipeline", "relay.http.app") in set(package_edges())
    assert "relay.mytpe.samples" in imports("relay.ops.cli")  # `from relay.mytpe import samples`


MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 200
# Rooms not yet split (issue 22): each may shrink, never grow, and a new one may not join them.
LARGE_MODULES: dict[str, int] = {}
LARGE_CLASSES: dict[str, int] = {}


def test_no_module_or_class_outgrows_a_reading() -> None:
    too_long = []
    for module, path in modules().items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > LARGE_MODULES.get(module, MAX_MODULE_LINES):
            too_long.append(f"{module}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                name, size = f"{module}.{node.name}", node.end_lineno - node.lineno + 1
                if size > LARGE_CLASSES.get(name, MAX_CLASS_LINES):
                    too_long.append(f"{name}: {size} lines")
    assert too_long == [], too_long


def private_uses(module: str, source: str) -> list[str]:
    """Private names `module` takes from elsewhere: `from relay.x import _name` out of another unit, or
    `something._name` read through an object other than self/cls when `module` does not define `_name`."""
    tree = ast.parse(source)
    own = {
        node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    own |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
    own |= {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _ours(node.module):
            if unit(node.module) != unit(module):
                found += [f"{module} imports {node.module}.{a.name}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own and _through(node):
            found.append(f"{module}:{node.lineno} reads .{node.attr}")
    return found


def _through(node: ast.Attribute) -> bool:
    """Read through an object other than self or cls."""
    return not (isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"})


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_nothing_outside_a_package_uses_its_private_names() -> None:
    found = [use for module, path in modules().items() for use in private_uses(module, path.read_text("utf-8"))]
    assert found == []


def test_the_private_scan_sees_what_it_forbids() -> None:
    source = (
        "from relay.spool.store import _row\nfrom relay.http.app import _summary\n\ndef f(x):\n    return x._conn\n"
    )
    assert private_uses("relay.http.probes", source) == [
        "relay.http.probes imports relay.spool.store._row",
        "relay.http.probes:5 reads ._conn",
    ]


# The request path's collaborators hold theirs privately: no one reaches through them to a third.
CLOSED = [
    "relay.pipeline.relay",
    "relay.pipeline.verifier",
    "relay.pipeline.deliverer",
    "relay.sources.attendant",
    "relay.http.upkeep",
    "relay.http.webhook",
]


@pytest.mark.parametrize("module", CLOSED)
def test_the_request_paths_collaborators_expose_no_collaborator(module: str) -> None:
    tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
    public = sorted(
        f"{module}:{node.lineno} self.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
        if isinstance(node.value, ast.Name) and node.value.id == "self" and not node.attr.startswith("_")
    )
    assert public == []
