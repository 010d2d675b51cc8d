"""Write `exercises/` from `reference/`: every marked solution becomes a stub that says where to start.

A reference module marks what the learner writes:

    def softmax(x, dim=-1):
        '''docstring stays'''
        # BEGIN SOLUTION
        ...
        # END SOLUTION

Each marked region is replaced, at the indentation of its BEGIN line, by

        raise NotImplementedError("`layers.softmax` is not implemented yet — chapter 4 (layers): read spec/test_layers.py.")

Everything else (signatures, type hints, docstrings, unmarked helpers, constructors) is kept as it is. Markers must be
balanced and not nested; a region must sit inside a function, so that the stub names it, or else start at the left
margin of the module: such a region holds code that only the reference's solutions use (a hand-written backward pass,
say), and the exercise leaves it out entirely, so the learner writes the marked functions in their own way.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from llmkata.reference.files import write_text_atomic
from llmkata.spec.contract import BY_MODULE

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
HEADER = "# Generated from reference/{name} by `llmkata exercises`. This copy is yours: replace each stub.\n"


class MarkerError(ValueError):
    """Solution markers that are unbalanced, nested, or outside a function."""


@dataclass(frozen=True)
class Region:
    begin: int  # 1-based line numbers of the two markers
    end: int
    owner: str  # qualified name of the enclosing function, e.g. "RMSNorm.forward"; "" for a module-level region


def _functions(tree: ast.AST) -> list[tuple[int, int, str]]:
    """(first line, last line, qualified name) of every function, innermost last."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    found.append((child.lineno, child.end_lineno, name))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def find_regions(source: str, filename: str) -> list[Region]:
    lines = source.splitlines()
    functions = _functions(ast.parse(source, filename))
    regions, open_at = [], None
    for number, line in enumerate(lines, start=1):
        marker = line.strip()
        if marker == BEGIN:
            if open_at is not None:
                raise MarkerError(f"{filename}:{number}: {BEGIN} inside the region opened at line {open_at}")
            open_at = number
        elif marker == END:
            if open_at is None:
                raise MarkerError(f"{filename}:{number}: {END} without a {BEGIN} before it")
            owners = [name for first, last, name in functions if first < open_at <= last]
            at_margin = not lines[open_at - 1].startswith((" ", "\t")) and not line.startswith((" ", "\t"))
            if not owners and not at_margin:
                raise MarkerError(f"{filename}:{open_at}: a solution region must sit inside a function or start "
                                  "at the left margin of the module")
            regions.append(Region(open_at, number, owners[-1] if owners else ""))
            open_at = None
        elif BEGIN in line or END in line:
            raise MarkerError(f"{filename}:{number}: a solution marker must stand alone on its line")
    if open_at is not None:
        raise MarkerError(f"{filename}:{open_at}: {BEGIN} is never closed by {END}")
    return regions


def stub_message(module: str, owner: str) -> str:
    where = BY_MODULE[module].where(module) if module in BY_MODULE else "see the module docstring"
    return f"`{module}.{owner}` is not implemented yet — {where}."


def make_exercise(source: str, module: str, filename: str) -> str:
    """The exercise version of one reference module's source."""
    lines = source.splitlines(keepends=True)
    regions = find_regions(source, filename)
    out, cursor = [HEADER.format(name=Path(filename).name)], 0
    for region in regions:
        out.extend(lines[cursor:region.begin - 1])
        if not region.owner:  # a module-level region: left out, with the blank lines that follow it
            cursor = region.end
            while cursor < len(lines) and not lines[cursor].strip():
                cursor += 1
            continue
        indent = lines[region.begin - 1][: len(lines[region.begin - 1]) - len(lines[region.begin - 1].lstrip())]
        out.append(f"{indent}raise NotImplementedError({stub_message(module, region.owner)!r})\n")
        cursor = region.end
    out.extend(lines[cursor:])
    return "".join(out)


def expected_tree(reference: Path) -> dict[str, str]:
    """file name -> exercise source, for every module of the reference package."""
    return {
        path.name: make_exercise(path.read_text(encoding="utf-8"), path.stem, str(path))
        for path in sorted(reference.glob("*.py"))
    }


def stale(reference: Path, exercises: Path) -> list[str]:
    """Files of `exercises` that differ from what `reference` generates (missing, changed or extra)."""
    expected = expected_tree(reference)
    actual = {path.name: path.read_text(encoding="utf-8") for path in exercises.glob("*.py")}
    return sorted(name for name in expected.keys() | actual.keys() if expected.get(name) != actual.get(name))


def generate(reference: Path, exercises: Path) -> list[str]:
    """Rewrite `exercises` from `reference`; returns the files written. Nothing is written if any marker is bad."""
    expected = expected_tree(reference)  # raises MarkerError before anything is touched
    exercises.mkdir(parents=True, exist_ok=True)
    changed = stale(reference, exercises)
    for name in changed:
        if name in expected:
            write_text_atomic(exercises / name, expected[name])
        else:
            (exercises / name).unlink()
    return changed
