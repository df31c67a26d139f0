"""The layout as a test: every import in src/ (function-level ones included) points down.

The layers, top to bottom: the command line (``remask.commands``); the services (sft, chat,
evaluate, serve, integrations); training, sampling and likelihoods; model, objectives and data;
the ground (config, errors, file helpers, devices, rng). A library module never imports the
command layer, and no module reaches itself through a chain of imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "remask"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The remask modules a file imports anywhere in it (top level, functions, TYPE_CHECKING blocks
    excluded): ``from remask.x import y`` counts as remask.x.y when that is a module, else remask.x."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    guarded = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module") and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            found.add(node.args[0].value)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    from remask.commands import COMMANDS

    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {name: _imports(path, name, set(files)) for name, path in files.items()}
    # the command table loads each command's module by name when that command runs
    graph["remask.commands"] |= {f"remask.commands.{c.module}" for c in COMMANDS}
    return graph


def _is_command_layer(name: str) -> bool:
    return name in ("remask.__main__", "remask.commands") or name.startswith("remask.commands.")


def _parents(name: str) -> set[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path) or None. Package __init__ files that only re-export their own
    submodules are edges too: a cycle through them is a real import-order hazard."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_function_level_imports():
    graph = _graph()
    assert "remask.checkpoint" in graph["remask.commands.flags"]  # imported inside load()
    assert "remask.sampling.config" in graph["remask.commands.flags"]  # inside add_sampler_args
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_library_modules_never_import_the_command_layer():
    offenders = {name: sorted(filter(_is_command_layer, deps))
                 for name, deps in _graph().items() if not _is_command_layer(name)}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"library modules import the command layer: {offenders}"


def test_every_command_module_is_in_the_table():
    from remask.commands import COMMANDS

    modules = {p.stem for p in (SRC / PACKAGE / "commands").glob("*.py")} - {"__init__", "flags"}
    assert modules == {c.module for c in COMMANDS}
    doc = __import__("remask.commands", fromlist=["x"]).__doc__
    assert all(f"remask {c.name}" in doc for c in COMMANDS)  # the module docstring lists every command
