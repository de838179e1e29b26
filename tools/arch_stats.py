"""Architecture figures for the closing note of a structural change.

Prints: the longest functions (lines), the parameters of ``sweep``, imports that point
up the layer order (see ARCHITECTURE.md), and imports inside functions.

    python tools/arch_stats.py [--root workbench] [--layers a,b,c]
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

# Bottom to top; a module may import its own layer or any layer listed before it.
LAYERS = ["_version", "errors", "core", "data", "evaluation", "backbones", "training", "features",
          "heads", "baselines", "search", "report", "experiment", "demo", "cli", "__init__"]


def layer_of(mod: str, layers: list[str]) -> int | None:
    parts = mod.split(".")
    if parts[0] != "workbench":
        return None
    name = parts[1] if len(parts) > 1 else "__init__"
    return layers.index(name) if name in layers else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", default="workbench")
    ap.add_argument("--layers", default=",".join(LAYERS))
    ap.add_argument("--top", type=int, default=5)
    ns = ap.parse_args()
    layers = ns.layers.split(",")
    root = Path(ns.root)
    funcs, upward, inner, unknown = [], [], 0, set()
    for path in sorted(root.rglob("*.py")):
        rel = path.with_suffix("").relative_to(root.parent)
        mod = ".".join(rel.parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for ch in ast.iter_child_nodes(node):
                parents[ch] = node
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.append((node.end_lineno - node.lineno + 1, f"{path}:{node.lineno} {node.name}",
                              len(node.args.args) + len(node.args.kwonlyargs) + len(node.args.posonlyargs)))
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                p, in_func, type_only = parents.get(node), False, False
                while p is not None:
                    if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        in_func = True
                    if isinstance(p, ast.If) and "TYPE_CHECKING" in ast.unparse(p.test):
                        type_only = True
                    p = parents.get(p)
                targets = ([a.name for a in node.names] if isinstance(node, ast.Import)
                           else [f"workbench.{a.name}" for a in node.names] if node.module == "workbench"
                           else [node.module or ""])
                if isinstance(node, ast.ImportFrom) and node.level:
                    base = mod.split(".")[: len(mod.split(".")) - node.level + (1 if path.name == "__init__.py" else 0)]
                    targets = [".".join(base + ([node.module] if node.module else []))]
                for t in targets:
                    if not t.startswith("workbench"):
                        if in_func:
                            inner += 1
                        continue
                    if in_func:
                        inner += 1
                    src, dst = layer_of(mod, layers), layer_of(t, layers)
                    if src is None:
                        unknown.add(mod)
                    if src is not None and dst is not None and dst > src and not type_only:
                        upward.append(f"{path}:{node.lineno} {mod} -> {t}")
    funcs.sort(reverse=True)
    print(f"longest functions (top {ns.top}):")
    for n, where, nargs in funcs[: ns.top]:
        print(f"  {n:4d} lines  {nargs:2d} params  {where}")
    sw = [f for f in funcs if f[1].endswith(" sweep")]
    for n, where, nargs in sw:
        print(f"sweep: {n} lines, {nargs} parameters ({where})")
    print(f"imports inside functions: {inner}")
    print(f"upward imports: {len(upward)}")
    for u in upward:
        print("  " + u)
    if unknown:
        print("modules outside the layer list:", ", ".join(sorted(unknown)))


if __name__ == "__main__":
    main()
