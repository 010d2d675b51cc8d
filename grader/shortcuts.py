"""Forbidden shortcuts: torch functions that would do a chapter's work for the learner.

The rubric lists, per module, the fully qualified names a submission's module may not use
(`torch.nn.functional.scaled_dot_product_attention` in attention.py, `torch.nn.functional.cross_entropy` in
train.py, ...). The grader reads the source, never runs it: every import is resolved to what it names
(`import torch.nn.functional as F` makes `F.x` mean `torch.nn.functional.x`; `from torch.nn import functional`,
`from torch.optim import AdamW` and the like too), and every attribute chain and every string constant is compared
with the list (a string catches `getattr(F, "scaled_dot_product_attention")`). A name ending in `.softmax` of the
form `torch.Tensor.NAME` stands for the tensor method: any `something.NAME(...)` whose root is not a module of the
implementation itself.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Shortcut:
    module: str
    line: int
    name: str

    def message(self, file: str) -> str:
        return (f"forbidden shortcut: {file}, line {self.line} uses {self.name}; this chapter asks you to write it "
                "yourself")


def _aliases(tree: ast.Module) -> tuple[dict[str, str], set[str]]:
    """Local name -> qualified name for every absolute import; and the names bound by relative imports."""
    aliases, local = {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    root = alias.name.split(".")[0]
                    aliases[root] = root
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                bound = alias.asname or alias.name
                if node.level:
                    local.add(bound)
                elif node.module:
                    aliases[bound] = f"{node.module}.{alias.name}"
    return aliases, local


def _chain(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def find(source: str, module: str, forbidden: list[str]) -> list[Shortcut]:
    """Every use of a forbidden name in one module's source (empty when it does not parse: the spec says so)."""
    if not forbidden:
        return []
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    aliases, local = _aliases(tree)
    methods = {name.removeprefix("torch.Tensor.") for name in forbidden if name.startswith("torch.Tensor.")}
    leaves = {name.rsplit(".", 1)[-1]: name for name in forbidden}
    found = []
    for node in ast.walk(tree):
        name = None
        if isinstance(node, (ast.Attribute, ast.Name)):
            chain = _chain(node)
            if chain and chain[0] in aliases:
                qualified = ".".join([aliases[chain[0]], *chain[1:]])
                name = next((f for f in forbidden if qualified == f or qualified.startswith(f + ".")), None)
            elif (chain and isinstance(node, ast.Attribute) and node.attr in methods and chain[0] not in local
                  and chain[0] != "self"):
                name = f"torch.Tensor.{node.attr}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in leaves:
            name = leaves[node.value]
        if name and (not found or found[-1] != Shortcut(module, node.lineno, name)):
            found.append(Shortcut(module, node.lineno, name))
    return sorted(set(found), key=lambda s: (s.line, s.name))


def scan(folder: Path, forbidden: dict[str, list[str]]) -> dict[str, list[Shortcut]]:
    """The shortcuts in each module of an implementation folder, by module."""
    found = {}
    for module, names in forbidden.items():
        path = folder / f"{module}.py"
        if path.is_file():
            uses = find(path.read_text(encoding="utf-8", errors="replace"), module, names)
            if uses:
                found[module] = uses
    return found
