"""No module of the tree imports in a cycle.

The graph is read from the source with `ast`, every import statement included: those inside functions
too (a cycle hidden in a function-level import still breaks whoever imports the wrong end first) but
not those under `if TYPE_CHECKING:`, which never run. An edge goes to the module an import names:
`from a.b import c` to a.b.c when that is a module, else to a.b. A module's own packages are not
edges: importing a.b.c runs a and a.b first whatever it names, so a package's __init__ importing its
submodules, or a submodule reading its package's __version__, is not a cycle.
bench/ and scripts/ are folders of scripts: a bare `import name` there may mean a file beside it (a
script's folder is on sys.path).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contract", "train", "export", "serve", "scripts", "bench")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return test is not None and (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
                                 or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node, at any depth, except under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = list(ast.iter_child_nodes(node))
        if _type_checking_only(node):
            children = list(node.orelse)
        stack.extend(children)


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """module -> the modules of the tree it imports (anywhere in its source)."""
    files = {module_name(p, root): p for top in packages for p in sorted((root / top).rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}

    def resolve(name: str, importer: str) -> str | None:
        beside = f"{importer.split('.')[0]}.{name}"
        if not (root / importer.split(".")[0] / "__init__.py").exists() and beside in files:
            return beside  # a script importing a file in its own folder
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            for target in targets:
                found = resolve(target, module)
                if found is not None and found != module and not module.startswith(found + "."):
                    graph[module].add(found)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as [a, b, ..., a], or None when the graph is acyclic (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_no_module_in_the_tree_imports_in_a_cycle():
    graph = import_graph(ROOT, PACKAGES)
    assert "train.config" in graph["train.trainer"] and "contract.card" in graph["serve.app"]  # the graph is read
    assert "bench.gateway_load" in graph["bench.bulk"]  # a script's import of the file beside it
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from pkg import a\n")  # a package importing its modules: no cycle
    (package / "a.py").write_text("from pkg.b import run\nfrom pkg import __doc__\n")  # its own package: no edge
    (package / "b.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    from pkg import c\n\n"
                                  "def run():\n    from . import c\n    return c\n")
    (package / "c.py").write_text("import os\n\ndef later():\n    from pkg.a import run\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    (package / "c.py").write_text("import os\n")
    assert find_cycle(import_graph(tmp_path, ("pkg",))) is None
