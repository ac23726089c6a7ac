"""Imports go one way: cli -> recipes -> components -> base utilities, with no cycle.

The graph is read from the source with `ast`, every import counted: at module level, inside functions
(a late import to dodge a cycle is still a dependency), and under `if TYPE_CHECKING:`. Relative imports
are resolved, `from pkg import submodule` points at the submodule, and a "sumtune.x.y:Name" string (a
method's registered implementation, imported by `methods.get_method`) counts as an import of
sumtune.x.y. `sumtune.methods` imports each of its sub-packages itself (`methods._discover`), so it
depends on every one of them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "sumtune"
# Only these may import a recipe: the command line and `python -m sumtune`.
RECIPE_USERS = ("sumtune.recipes", "sumtune.cli", "sumtune.__main__")
_IMPLEMENTATION = re.compile(r"^(sumtune(?:\.\w+)+):\w+$")


def module_files(src: Path = SRC) -> dict[str, Path]:
    """Module name -> file, for every module of the package (a package is its `__init__.py`)."""
    out = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The package module `name` loads: itself, else its longest known prefix (a name inside a module)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that `module` (source at `path`) imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {_target(a.name, modules) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from pkg import submodule` loads the submodule
                found.add(_target(f"{base}.{alias.name}", modules) if f"{base}.{alias.name}" in modules
                          else _target(base, modules))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = _IMPLEMENTATION.match(node.value)
            if match:
                found.add(_target(match.group(1), modules))
    if module == f"{PACKAGE}.methods":  # methods._discover imports every sub-package
        found |= {m for m in modules if m.count(".") == 2 and m.startswith(f"{module}.")
                  and modules[m].name == "__init__.py"}
    found.discard(module)
    return {m for m in found if m is not None and m != PACKAGE}


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    modules = module_files(src)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, iterative)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph.get(root, ())))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def _is_in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_graph_resolves_relative_late_and_submodule_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("def f():\n    from ..top import g\n")
    (pkg / "top.py").write_text("from sumtune.sub import leaf\nX = 'sumtune.other:Thing'\n")
    (pkg / "other.py").write_text("import sumtune.sub.leaf as leaf\n")
    graph = import_graph(tmp_path)
    assert graph == {"sumtune": set(), "sumtune.sub": {"sumtune.sub.leaf"}, "sumtune.sub.leaf": {"sumtune.top"},
                     "sumtune.top": {"sumtune.sub.leaf", "sumtune.other"}, "sumtune.other": {"sumtune.sub.leaf"}}
    assert find_cycle(graph) == ["sumtune.other", "sumtune.sub.leaf", "sumtune.top", "sumtune.other"]


def test_methods_depends_on_every_discovered_method():
    graph = import_graph()
    assert {"sumtune.methods.lora", "sumtune.methods.zero_shot"} <= graph["sumtune.methods"]
    assert "sumtune.methods.lora.method" in graph["sumtune.methods.lora"]  # its registered implementation


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_command_line_imports_a_recipe():
    wrong = sorted(f"{m} imports {t}" for m, targets in import_graph().items() if not _is_in(m, RECIPE_USERS)
                   for t in targets if _is_in(t, ("sumtune.recipes",)))
    assert not wrong, "a component imports a recipe: " + "; ".join(wrong)


LATE = "# late:"


def _is_type_checking(node: ast.stmt) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _late_blocks(body: list[ast.stmt], in_function: bool):
    """Each run of consecutive import statements inside a function, as a list of nodes."""
    block: list[ast.stmt] = []
    for node in body:
        is_import = isinstance(node, (ast.Import, ast.ImportFrom)) and not (
            isinstance(node, ast.ImportFrom) and node.module == "__future__")
        if in_function and is_import:
            block.append(node)
            continue
        if block:
            yield block
            block = []
        if _is_type_checking(node):
            yield from _late_blocks(node.orelse, in_function)
            continue
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            for child in getattr(node, field, None) or []:
                if isinstance(child, (ast.ExceptHandler, ast.match_case)):
                    yield from _late_blocks(child.body, inner)
            children = getattr(node, field, None)
            if isinstance(children, list) and children and isinstance(children[0], ast.stmt):
                yield from _late_blocks(children, inner)
    if block:
        yield block


def unmarked_late_imports(source: str) -> list[int]:
    """Lines of the imports inside functions that give no `# late:` reason, on their own line(s)
    or in the comment lines directly above their block of consecutive imports."""
    lines = source.splitlines()
    wrong = []
    for block in _late_blocks(ast.parse(source).body, in_function=False):
        above, i = [], block[0].lineno - 2
        while i >= 0 and lines[i].strip().startswith("#"):
            above.append(lines[i])
            i -= 1
        shared = any(LATE in line for line in above)
        wrong += [n.lineno for n in block
                  if not shared and not any(LATE in line for line in lines[n.lineno - 1:n.end_lineno])]
    return wrong


def test_late_import_check_finds_an_unmarked_import():
    source = '''
from __future__ import annotations
from typing import TYPE_CHECKING
import os

def f():
    # late: torch only when f runs
    import torch
    from torch import nn

    import numpy
    import json  # late: a reason on the line itself
    if TYPE_CHECKING:
        import yaml
    x = 1
    import re
    try:
        import gguf
    except ImportError:
        # late: optional
        import bert_score

class C:
    def g(self):
        # a comment with no reason
        from sumtune import io
'''
    assert unmarked_late_imports(source) == [16, 18, 26]


def test_every_late_import_says_why():
    wrong = []
    for path in module_files().values():
        wrong += [f"{path.relative_to(SRC.parent)}:{line}" for line in unmarked_late_imports(path.read_text())]
    assert not wrong, ("an import inside a function without a `# late: <reason>` comment (hoist it to the "
                       "module's top unless it is an optional or heavy dependency): " + ", ".join(wrong))
