"""The package's import graph in numbers: modules, import arrows between them, floors, arrows that run back up.

A module imports another when any ``import`` / ``from ... import`` in it (at any depth: lazy imports inside
functions count too) names a module of the package. Floors: the longest import chain below a module (a
module that imports nothing of the package is on floor 0); an arrow runs back up when it is part of a
cycle. With ``--folders``, every subpackage is one room (its modules merged) and the package's top-level
modules rooms of their own. Also the largest module (lines) and the longest function (lines, with its
decorators). Run from a checkout: ``python bench/import_graph.py [--root sbmoe_ray] [--folders]``.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports (the longest known prefix of each imported name)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for full in names:
            parts = full.split(".")
            for cut in range(len(parts), 0, -1):
                if ".".join(parts[:cut]) in known:
                    found.add(".".join(parts[:cut]))
                    break
    return found - {name}


def room(name: str, folders: bool) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if folders and len(parts) > 1 else name


def floors(edges: dict[str, set[str]]) -> tuple[int, int]:
    """(number of floors, arrows inside cycles), by the longest path over the graph's strongly connected parts."""
    index, low, stack, on, parts, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = set()
            while True:
                w = stack.pop()
                on.discard(w)
                part.add(w)
                if w == v:
                    break
            parts.append(part)

    for v in edges:
        if v not in index:
            strong(v)
    part_of = {v: i for i, p in enumerate(parts) for v in p}
    back = sum(1 for v in edges for w in edges[v] if part_of[v] == part_of[w])
    height: dict[int, int] = {}
    for i, part in enumerate(parts):          # Tarjan emits a part after every part it reaches
        below = [height[part_of[w]] + 1 for v in part for w in edges[v] if part_of[w] != i]
        height[i] = max(below, default=0)
    return max(height.values(), default=0) + 1, back


def longest_function(files: list[Path]) -> tuple[int, str]:
    best = (0, "")
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                best = max(best, (node.end_lineno - start + 1, f"{path}:{node.name}"))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("sbmoe_ray"))
    parser.add_argument("--folders", action="store_true", help="one room per subpackage")
    args = parser.parse_args()
    files = sorted(args.root.rglob("*.py"))
    names = {module_name(p, args.root): p for p in files}
    edges: dict[str, set[str]] = {}
    for name, path in names.items():
        targets = {room(t, args.folders) for t in imports(path, name, set(names))}
        edges.setdefault(room(name, args.folders), set()).update(targets)
    for v in edges:
        edges[v].discard(v)
    count, back = floors(edges)
    largest = max(files, key=lambda p: len(p.read_text().splitlines()))
    length, where = longest_function(files)
    print(f"{len(edges)} rooms ({len(files)} files), {sum(map(len, edges.values()))} import arrows, {count} floors, "
          f"{back} arrows inside cycles (running back up)")
    print(f"largest module {largest} ({len(largest.read_text().splitlines())} lines); longest function {where} "
          f"({length} lines)")


if __name__ == "__main__":
    main()
