"""The code's shape, checked from its own imports: no module import cycles, no private names across modules.

`lint-imports` (contracts in pyproject.toml) checks the layers between packages; these tests check what it
does not: cycles between single modules (imports inside functions count, `if TYPE_CHECKING:` ones do not)
and underscore-prefixed names imported from another module.
"""

import ast
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("provisioner", "drivers", "templates", "engine")


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(sorted(component))
    return found


def test_strongly_connected_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert sorted(strongly_connected(graph)) == [["a", "b", "c"], ["e"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


@pytest.fixture(scope="module")
def import_graph():
    return grimp.build_graph("dockyard", exclude_type_checking_imports=True, cache_dir=None)


def test_no_import_cycle_between_modules(import_graph):
    graph = {m: set(import_graph.find_modules_directly_imported_by(m)) for m in import_graph.modules}
    cycles = strongly_connected(graph)
    assert not cycles, "modules that import each other in a circle: " + "; ".join(" <-> ".join(c) for c in cycles)


def private_imports(path: Path, root: Path = ROOT) -> list[str]:
    """`from dockyard.x import _name` lines in one file (dunder names such as __version__ are public)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith(("dockyard", "tests"))
        ):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.relative_to(root)}:{node.lineno} imports {alias.name} from {node.module}")
    return found


def test_private_imports_are_found(tmp_path):
    (tmp_path / "x.py").write_text("from dockyard.a import _b, c\nfrom dockyard import __version__\n")
    assert private_imports(tmp_path / "x.py", tmp_path) == ["x.py:1 imports _b from dockyard.a"]


def test_no_private_name_imported_from_another_module():
    hits = []
    for folder in (*SOURCE_DIRS, "tests", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            hits += private_imports(path)
    assert not hits, "underscore names imported across modules:\n" + "\n".join(hits)


def test_one_top_level_package_links_the_folders():
    for name in SOURCE_DIRS:
        link = ROOT / "dockyard" / name
        assert link.is_symlink() and link.resolve() == ROOT / name, f"dockyard/{name} must link ../{name}"
