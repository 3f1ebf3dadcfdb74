"""The layering rules of the code base, checked from the source (no imports, no Ray).

* ``sepcore`` never imports Ray (it is the plain library, unit-tested without a cluster);
* a job module uses another job only through its public entry (``JOB``, ``main``,
  ``run`` and config classes): never a private name (``_x``) of another job;
* there is no import cycle among the project's modules (imports inside functions count:
  a cycle hidden in a function is still two modules that need each other).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sepcore", "ray_jobs")
#: Modules of ray_jobs that are not jobs: shared layers any job may use.
SHARED = {"ray_jobs", "ray_jobs.common", "ray_jobs.cli", "ray_jobs.trainer", "ray_jobs.prepare_mix"}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(module, imported name or None, line) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found += [(base, alias.name, node.lineno) for alias in node.names]
    return found


def _targets(module: str, name: str | None) -> list[str]:
    """The project modules an import statement loads."""
    full = f"{module}.{name}" if name else None
    if full in MODULES:
        return [full]
    return [module] if module in MODULES else []


def test_sepcore_never_imports_ray():
    offenders = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for name, path in MODULES.items() if name.startswith("sepcore")
        for module, _, line in _imports(name, path)
        if module == "ray" or module.startswith("ray.")
    ]  # fmt: skip
    assert not offenders, "sepcore must stay free of Ray:\n" + "\n".join(offenders)


def _job_aliases(tree: ast.AST) -> dict[str, str]:
    """Local names bound to another job module (``from ray_jobs import prepare as p``)."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "ray_jobs":
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"ray_jobs.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ray_jobs.") and alias.asname:
                    aliases[alias.asname] = alias.name
    return {k: v for k, v in aliases.items() if v not in SHARED}


@pytest.mark.parametrize("job", sorted(n for n in MODULES if n.startswith("ray_jobs.") and n not in SHARED))
def test_a_job_uses_other_jobs_only_through_public_names(job):
    path = MODULES[job]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    offenders = []
    for module, name, line in _imports(job, path):
        if module.startswith("ray_jobs.") and module not in SHARED and module != job and name and name.startswith("_"):
            offenders.append(f"line {line}: from {module} import {name}")
    aliases = _job_aliases(tree)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")):  # fmt: skip
            offenders.append(f"line {node.lineno}: {aliases[node.value.id]}.{node.attr}")
    assert not offenders, f"{path.relative_to(REPO)} uses private names of other jobs:\n" + "\n".join(offenders)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, as the list of its modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_there_is_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges = {t for module, imported, _ in _imports(name, path) for t in _targets(module, imported)}
        graph[name] = {t for t in edges if t != name and not name.startswith(t + ".")}  # a module's own packages load first
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
