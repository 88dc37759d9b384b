"""The package's import graph: no cycles (function-level imports included) and every import in
the declared direction (ui -> services -> worker -> api -> decoding; adapters and store beside;
views read the store's records; models/ never imports explorer/)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Which parts of explorer/ each part may import (besides itself). A part is a sub-package of
# explorer/ or a top-level module; `models` is the embedded models' package beside explorer/.
ALLOWED: dict[str, set[str]] = {
    "decoding": set(),
    "adapters": {"decoding", "models"},
    "store": {"decoding"},
    "views": {"store", "decoding", "models"},  # a stored run (RunArrays), its record types; the story checker
    "branching": {"decoding", "store", "models"},  # models: the story grammar's checker
    "jobs": {"decoding", "branching"},
    "api": {"decoding", "adapters", "store", "branching"},
    "worker": {"api", "jobs", "decoding", "adapters", "store", "branching", "zerogpu"},
    "ray_pool": {"worker", "jobs", "adapters"},  # the pool of Ray actors (with sweeps.on_ray, the only Ray imports)
    "services": {"worker", "ray_pool", "adapters", "store", "presets"},
    "cli": {"api", "branching", "decoding", "adapters", "store", "models", "views", "__init__", "sweeps"},
    "sweeps": {"decoding", "adapters", "store", "models", "branching", "api", "views"},  # views: roc_auc
    "ui": {"services", "views", "store", "decoding", "jobs", "presets", "models", "branching", "sweeps"},
    "presets": set(),
    "zerogpu": set(),
    "recording": {"decoding", "store"},  # a generate() call run in the user's own code, stored as a run
    "__init__": {"api", "branching", "decoding", "store", "recording"},
    "__main__": {"cli"},
    "models": set(),  # the embedded models import nothing of the explorer
}
# Function-level imports of project modules, each with the reason it is not at the top.
LATE_IMPORTS = {
    ("explorer.adapters.families", "explorer.adapters.hf"): "keeps transformers out of processes that serve "
    "only the embedded model",
    ("explorer.adapters.families", "explorer.adapters.diffusion_gemma"): "the same for DiffusionGemma (transformers)",
    ("explorer.services", "explorer.ray_pool"): "imports Ray, which a server with local workers (the quick start) "
    "neither installs nor imports",
}


def module_files() -> dict[str, Path]:
    files = {}
    for package in ("explorer", "models"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    return files


def imports_of(path: Path, modules: set[str]) -> list[tuple[str, bool]]:
    """(project module imported, whether the import is inside a function), for every import."""
    tree = ast.parse(path.read_text(), filename=str(path))
    late = {
        id(node)
        for fn in ast.walk(tree)
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(fn)
    }
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` imports the submodule when there is one, else the package
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `import a.b.c` of a package path: its deepest module
                name = name.rpartition(".")[0]
            if name:
                out.append((name, id(node) in late))
    return out


def import_graph() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    files = module_files()
    graph: dict[str, set[str]] = {name: set() for name in files}
    late: set[tuple[str, str]] = set()
    for name, path in files.items():
        for target, in_function in imports_of(path, set(files)):
            if target != name:
                graph[name].add(target)
                if in_function:
                    late.add((name, target))
    return graph, late


def part(module: str) -> str:
    """explorer.decoding.engine -> decoding; explorer.api -> api; explorer -> __init__; models.x -> models."""
    pieces = module.split(".")
    if pieces[0] == "models":
        return "models"
    return pieces[1] if len(pieces) > 1 else "__init__"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def direction_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in graph.items():
        for target in targets:
            a, b = part(source), part(target)
            if a != b and b not in ALLOWED[a]:
                bad.append(f"{source} imports {target} ({a} may import only {sorted(ALLOWED[a]) or 'nothing'})")
    return sorted(bad)


def test_no_import_cycles():
    graph, _ = import_graph()
    assert len(graph) > 40  # the walk found the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_imports_follow_the_declared_direction():
    graph, _ = import_graph()
    assert set(map(part, graph)) <= set(ALLOWED), set(map(part, graph)) - set(ALLOWED)
    assert direction_violations(graph) == []


def test_function_level_imports_are_the_listed_ones():
    _, late = import_graph()
    assert late == set(LATE_IMPORTS), f"unlisted function-level imports: {sorted(late - set(LATE_IMPORTS))}"


def test_the_checks_catch_what_they_are_for():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert direction_violations({"explorer.decoding.engine": {"explorer.store.database"}}) == [
        "explorer.decoding.engine imports explorer.store.database (decoding may import only nothing)"
    ]
    assert direction_violations({"models.evaluate": {"explorer.decoding.engine"}})


@pytest.mark.parametrize(
    "source",
    [
        "import explorer.decoding.engine as e\n",
        "from explorer.decoding import engine\n",
        "def f():\n    from explorer.decoding.engine import iter_steps\n",
    ],
)
def test_every_form_of_import_is_seen(tmp_path, source):
    path = tmp_path / "m.py"
    path.write_text(source)
    modules = {"explorer", "explorer.decoding", "explorer.decoding.engine"}
    assert imports_of(path, modules) == [("explorer.decoding.engine", source.startswith("def"))]
