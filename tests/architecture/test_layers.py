"""The house rules, checked on the source: no import cycles, no private names across modules,
plugins import only the public faces, modules stay small, nothing registers on import.

Parsed with ``ast`` (nothing is imported), so a violation anywhere in the tree fails here
with the file and line, whatever the tests that happen to run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "raysegment"
#: What plugins may import: the contract, pretrained weights, checkpoints and the conformance kit.
PUBLIC_FACES = ("raysegment.plugin", "raysegment.weights", "raysegment.checkpoint", "raysegment.testing")
MAX_LINES = 420  # "about 400"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def core_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                if hasattr(child, "lineno"):
                    lines.add(child.lineno)
    return lines


def imports(path: Path, package: str) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) for every raysegment import, at any depth, outside TYPE_CHECKING."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_lines(tree)
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0].startswith("raysegment")]
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = node.module
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module])
            if module.split(".")[0].startswith("raysegment"):
                out.append((node.lineno, module, [a.name for a in node.names]))
    return out


def resolve(module: str, names: list[str], known: dict[str, Path]) -> list[str]:
    """The core modules an import loads: ``from pkg import mod`` counts as ``pkg.mod``."""
    targets = [module] if module in known else []
    targets += [f"{module}.{n}" for n in names if f"{module}.{n}" in known]
    return targets


def import_graph() -> dict[str, set[str]]:
    known = core_modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for _, module, names in imports(path, package):
            edges.update(t for t in resolve(module, names, known) if t != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_private_name_imported_across_modules():
    bad = []
    for path in [*CORE.rglob("*.py"), *(ROOT / "plugins").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]:
        if ".venv" in path.parts:
            continue
        for line, module, names in imports(path, ""):
            bad += [f"{path.relative_to(ROOT)}:{line}: {module}.{n}" for n in names if n.startswith("_") and not n.endswith("__")]
            if any(part.startswith("_") for part in module.split(".")):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {module}")
    assert not bad, "private names imported from another module:\n" + "\n".join(bad)


def plugin_violations(folder: Path) -> list[str]:
    bad = []
    for path in sorted(folder.rglob("*.py")):
        for line, module, names in imports(path, ""):
            if not module.startswith("raysegment") or module.startswith("raysegment_"):
                continue
            full = [module] if module != "raysegment" else [f"raysegment.{n}" for n in names]
            for target in full:
                if target not in PUBLIC_FACES:
                    bad.append(f"{path.relative_to(folder.parent)}:{line}: imports {target}")
    return bad


def test_plugins_import_only_the_public_faces():
    bad = []
    for folder in sorted((ROOT / "plugins").iterdir()):
        if folder.is_dir():
            bad += plugin_violations(folder)
    assert not bad, f"plugins may import only {', '.join(PUBLIC_FACES)}:\n" + "\n".join(bad)


def test_the_face_check_catches_an_internal_import(tmp_path):
    plugin = tmp_path / "sneaky"
    plugin.mkdir()
    (plugin / "model.py").write_text(
        "from raysegment.plugin import SegmentationModel\n"
        "from raysegment.registry import get_registry\n"
        "from raysegment import inference\n"
        "import raysegment.plugin.registry\n"
        "def f():\n    from raysegment.infer.stages import Predictor\n"
    )
    bad = plugin_violations(plugin)
    assert [b.split(": imports ")[1] for b in bad] == [
        "raysegment.registry", "raysegment.inference", "raysegment.plugin.registry", "raysegment.infer.stages"]


@pytest.mark.parametrize("name", sorted(core_modules()))
def test_module_is_small(name):
    lines = len(core_modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by concept (limit about 400)"


def test_no_registration_at_import_time():
    """Registries are tables of built-ins plus register_* functions; no module calls one at its top level."""
    bad = []
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            call = node.value if isinstance(node, ast.Expr) else None
            if isinstance(call, ast.Call) and "register" in ast.unparse(call.func):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(call)[:80]}")
    assert not bad, "registration as an import side effect:\n" + "\n".join(bad)
