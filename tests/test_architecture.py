"""The house plan (docs/architecture.md), checked: layers import only downwards, import chains stay
short, modules stay small. `python tests/test_architecture.py` prints the measures."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "saudial"

# Bottom to top. A module may import from its own layer and the layers below it, never above.
LAYERS = [
    "errors",
    "config",
    "data",
    "model",
    "process",
    "rundir",
    "training",
    "inference",
    "export",
    "publish",
    "jobs",
    "cli",
]
SIDE = {"devtools": {"devtools", "data", "config", "errors"}}  # test/demo helpers: may use only these
MAX_LINES = 300
MAX_DEPTH = 7


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    # saudial/__main__.py is `python -m saudial`'s two-line shim over cli.main, like entrypoint.py: not counted.
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "__main__.py"}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


@functools.cache
def imports() -> dict[str, set[str]]:
    """saudial module -> the saudial modules it imports at run time (TYPE_CHECKING blocks left out)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        skip = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        found: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                resolved = _resolve(target, known) if target.startswith("saudial") else None
                if resolved and resolved != name and resolved != "saudial":
                    found.add(resolved)
        graph[name] = found
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "errors"  # saudial/__init__ (the version) sits at the bottom


def depth(module: str, seen: tuple[str, ...] = ()) -> int:
    """Modules in the longest chain of imports that starts at `module`."""
    assert module not in seen, f"import cycle: {' -> '.join((*seen, module))}"
    return 1 + max((depth(m, (*seen, module)) for m in imports()[module]), default=0)


def longest_chain() -> list[str]:
    def chain(module: str) -> list[str]:
        below = [chain(m) for m in imports()[module]]
        return [module, *max(below, key=len, default=[])]

    return max((chain(m) for m in imports()), key=len)


def test_layers_import_only_downwards() -> None:
    wrong = []
    for module, targets in imports().items():
        mine = layer(module)
        for target in targets:
            theirs = layer(target)
            if mine in SIDE:
                allowed = theirs in SIDE[mine]
            else:
                allowed = theirs in LAYERS and LAYERS.index(theirs) <= LAYERS.index(mine)
            if not allowed:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers (docs/architecture.md):\n" + "\n".join(wrong)


def test_import_chains_are_short_and_acyclic() -> None:
    chain = longest_chain()
    assert len(chain) <= MAX_DEPTH, " -> ".join(chain)


def test_modules_are_small() -> None:
    big = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_no_test_module_imports_another() -> None:
    """Shared test helpers live in support modules (tests/entry.py, jobs.py, models.py, ...), so that a test
    file runs alone and its helpers do not drag another file's fixtures and tables along."""
    tests = Path(__file__).resolve().parent
    wrong = []
    for path in sorted(tests.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            wrong += [f"{path.name} -> {n}" for n in names if n.split(".")[-1].startswith("test_") and "tests" in n]
    assert not wrong, wrong


if __name__ == "__main__":
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    print(f"{len(sizes)} modules, largest {max(sizes.values())} lines ({max(sizes, key=lambda k: sizes[k])})")
    chain = longest_chain()
    print(f"longest import chain: {len(chain)} modules: {' -> '.join(chain)}")
