"""Write `exercises/` from `reference/`: every marked solution becomes a stub that says where to start.

A reference module marks what the learner writes:

    def softmax(x, dim=-1):
        '''docstring stays'''
        # BEGIN SOLUTION
        ...
        # END SOLUTION

Each marked region is replaced, at the indentation of its BEGIN line, by a stub that names the spec tests to read:

        raise NotImplementedError("`layers.softmax` is not implemented yet — chapter 4 (layers): see "
                                  "test_softmax_rows_sum_to_one, ... and 5 more in spec/test_layers.py.")

The tests are found statically: every `test_*` function of the chapter's spec file that reaches `impl.layers.softmax`,
itself or through a helper of the same file. A stub of `RMSNorm.forward` names the tests that touch
`impl.layers.RMSNorm`; with no test found, the stub names the spec file alone.

Everything else (signatures, type hints, docstrings, unmarked helpers, constructors) is kept as it is, except the
module-level imports that nothing in the exercise uses any more (`heapq`, say, when only a solution used it). Markers
must be balanced and not nested; a region must sit inside a function, so that the stub names it, or else start at the
left margin of the module: such a region holds code that only the reference's solutions use (a hand-written backward
pass, say), and the exercise leaves it out entirely, so the learner writes the marked functions in their own way.
"""

from __future__ import annotations

import ast
import functools
import importlib.resources
import re
import shutil
import symtable
from dataclasses import dataclass
from pathlib import Path

from llmkata.reference.files import write_text_atomic
from llmkata.spec.contract import BY_MODULE

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
HEADER = "# Generated from reference/{name} by `llmkata exercises`. This copy is yours: replace each stub.\n"
LINE_WIDTH = 120  # a stub's message is split over lines to fit
MESSAGE_WIDTH = 200  # a stub's message stays short enough to be read whole (the grade table shows 200 characters)
NAMED_TESTS = 3  # at most this many spec tests are named in a stub's message; the rest are counted


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


# ------------------------------------------------------------------------------------------ the tests to read


def _module_alias(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """The contract module that `node` stands for: `impl.layers` -> 'layers', or a name bound to it earlier."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "impl":
        return node.attr
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    return None


@dataclass
class _Touches:
    names: set[tuple[str, str]]  # (module, name) of each `impl.<module>.<name>` reached
    by_computed_name: set[str]  # modules reached by `getattr(impl.<module>, <a computed name>)`
    strings: set[str]  # every identifier written as a string literal: where a computed name may come from


def _touches(node: ast.AST) -> _Touches:
    """What `node` reaches of the implementation: `impl.<module>.<name>`, also through a local alias of
    `impl.<module>` (`layers = impl.layers; layers.softmax(x)`) and `getattr(impl.<module>, "<name>")`."""
    aliases: dict[str, str] = {}
    for child in ast.walk(node):
        if isinstance(child, (ast.Assign, ast.NamedExpr)) and (module := _module_alias(child.value, {})) is not None:
            targets = child.targets if isinstance(child, ast.Assign) else [child.target]
            for target in targets:  # layers = impl.layers
                if isinstance(target, ast.Name):
                    aliases[target.id] = module
        elif isinstance(child, ast.Assign) and isinstance(child.value, ast.Tuple):
            for target in child.targets:  # t, words = impl.text, text.split()
                if isinstance(target, ast.Tuple) and len(target.elts) == len(child.value.elts):
                    for name, value in zip(target.elts, child.value.elts):
                        if isinstance(name, ast.Name) and (module := _module_alias(value, {})) is not None:
                            aliases[name.id] = module
    touches = _Touches(set(), set(), set())
    for child in ast.walk(node):
        if isinstance(child, ast.Constant) and isinstance(child.value, str) and child.value.isidentifier():
            touches.strings.add(child.value)
        elif isinstance(child, ast.Attribute) and (module := _module_alias(child.value, aliases)) is not None:
            touches.names.add((module, child.attr))
        elif (isinstance(child, ast.Call) and isinstance(child.func, ast.Name) and child.func.id == "getattr"
              and len(child.args) >= 2 and (module := _module_alias(child.args[0], aliases)) is not None):
            named = child.args[1]
            if isinstance(named, ast.Constant) and isinstance(named.value, str):
                touches.names.add((module, named.value))
            else:
                touches.by_computed_name.add(module)
    return touches


def index_spec_tests(spec_source: str) -> dict[tuple[str, str], list[str]]:
    """(module, name) -> the `test_*` functions of one spec file that reach `impl.<module>.<name>`, in file order.

    A test reaches a name itself or through whatever it refers to that the same file defines at its top level
    (helper functions, strategies, tables of cases), followed to any depth. A test that looks a name up by a
    computed string (`getattr(impl.layers, name)`) reaches each name written as a string in what it refers to
    (the parameter list or table the name comes from).
    """
    tree = ast.parse(spec_source)
    defined: dict[str, list[ast.AST]] = {}
    for statement in tree.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.setdefault(statement.name, []).append(statement)
        elif isinstance(statement, (ast.Assign, ast.AnnAssign)):
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        defined.setdefault(name.id, []).append(statement)

    def reached(test: ast.AST) -> set[tuple[str, str]]:
        touches, seen, todo = _Touches(set(), set(), set()), set(), [test]
        while todo:
            node = todo.pop()
            found = _touches(node)
            touches.names |= found.names
            touches.by_computed_name |= found.by_computed_name
            touches.strings |= found.strings
            for child in ast.walk(node):
                if isinstance(child, ast.Name) and child.id in defined and child.id not in seen:
                    seen.add(child.id)
                    todo.extend(defined[child.id])
        return touches.names | {(module, name) for module in touches.by_computed_name for name in touches.strings}

    tests: dict[tuple[str, str], list[str]] = {}
    for statement in tree.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)) and statement.name.startswith("test_"):
            for touched in reached(statement):
                names = tests.setdefault(touched, [])
                if statement.name not in names:
                    names.append(statement.name)
    return tests


@functools.cache
def _spec_index(module: str) -> dict[tuple[str, str], list[str]]:
    """index_spec_tests of the installed spec file of `module` (the spec ships inside the package); {} without one."""
    try:
        source = importlib.resources.files("llmkata.spec").joinpath(f"test_{module}.py").read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError):
        return {}
    return index_spec_tests(source)


def _listing(names: list[str], total: int) -> str:
    """'a', 'a and b', 'a, b and c', or 'a, b, c and 4 more' when `total` exceeds the names given."""
    if total > len(names):
        return f"{', '.join(names)} and {total - len(names)} more"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def stub_message(module: str, owner: str, tests: list[str] | None = None) -> str:
    """The sentence a stub raises: what is missing, its chapter, and the spec tests that exercise it (those of
    `tests`, else those found in the installed spec; the spec file alone when none is found)."""
    chapter = BY_MODULE.get(module)
    what = f"`{module}.{owner}` is not implemented yet"
    if chapter is None:
        return f"{what} — see the module docstring."
    if tests is None:
        tests = _spec_index(module).get((module, owner.split(".")[0]), [])
    if not tests:
        return f"{what} — {chapter.where(module)}."
    for count in range(min(NAMED_TESTS, len(tests)), 0, -1):  # as many names as fit, at least one
        message = (f"{what} — chapter {chapter.number} ({chapter.title}): "
                   f"see {_listing(tests[:count], len(tests))} in {chapter.spec_file}.")
        if len(message) <= MESSAGE_WIDTH:
            break
    return message


def _raise_statement(indent: str, message: str) -> str:
    """`raise NotImplementedError(message)` at `indent`, the message split at spaces into literals that fit."""
    opening = f"{indent}raise NotImplementedError("
    words = re.findall(r"\S+\s*", message)
    chunks, current = [], ""
    for word in words:
        width = len(opening) + len(repr(current + word)) + 1  # room for the closing parenthesis
        if current and width > LINE_WIDTH:
            chunks.append(current)
            current = ""
        current += word
    chunks.append(current)
    continuation = "\n" + " " * len(opening)
    return opening + continuation.join(repr(chunk) for chunk in chunks) + ")\n"


# ------------------------------------------------------------------------------------------------ unused imports


def _used_names(source: str, tree: ast.Module) -> set[str]:
    """Every module-level name that `source` refers to: in module-level code, from any function or class (a
    parameter or local of the same name shadows it, as Python's own scoping says), in any annotation, also a
    string one (annotations need not be evaluated, so only their text tells), and in `__all__`."""
    used: set[str] = set()

    def scan(table: symtable.SymbolTable, top: bool) -> None:
        for symbol in table.get_symbols():
            if symbol.is_referenced() and (top or symbol.is_global()):
                used.add(symbol.get_name())
        for child in table.get_children():
            scan(child, top=False)

    scan(symtable.symtable(source, "<exercise>", "exec"), top=True)

    def annotation(node: ast.AST | None) -> None:
        for child in ast.walk(node) if node is not None else ():
            if isinstance(child, ast.Name):
                used.add(child.id)
            elif isinstance(child, ast.Constant) and isinstance(child.value, str):
                used.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", child.value))

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotation(node.returns)
        elif isinstance(node, (ast.arg, ast.AnnAssign)):
            annotation(node.annotation)
        elif (isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and node.value is not None
              and any(isinstance(t, ast.Name) and t.id == "__all__"
                      for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))):
            used.update(c.value for c in ast.walk(node.value)
                        if isinstance(c, ast.Constant) and isinstance(c.value, str))
    return used


def _bound_name(alias: ast.alias) -> str:
    """The name an import binds: `import a.b` binds `a`; `import a as b` and `from x import a as b` bind `b`."""
    return alias.asname or alias.name.split(".")[0]


def _import_source(statement: ast.Import | ast.ImportFrom, names: list[ast.alias]) -> str:
    """The source of `statement` importing only `names`, in parentheses over several lines when one is too long."""
    spelled = [f"{a.name} as {a.asname}" if a.asname else a.name for a in names]
    if isinstance(statement, ast.Import):
        return f"import {', '.join(spelled)}"
    head = f"from {'.' * statement.level}{statement.module or ''} import "
    if len(head) + len(", ".join(spelled)) <= LINE_WIDTH:
        return head + ", ".join(spelled)
    rows, row = [], "   "
    for name in spelled:
        if len(row) + len(name) + 2 > LINE_WIDTH:
            rows.append(row)
            row = "   "
        row += f" {name},"
    return head + "(\n" + "\n".join(rows + [row]) + "\n)"


def drop_unused_imports(source: str) -> str:
    """`source` without the module-level imports it does not use: whole statements, or single names of a
    `from x import a, b`. `from __future__` imports stay, and so does a statement sharing its lines with another."""
    tree = ast.parse(source)
    used = _used_names(source, tree)
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, str]] = []  # (first line, last line) 1-based, and what replaces them
    for statement in tree.body:
        if not isinstance(statement, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(statement, ast.ImportFrom) and statement.module == "__future__":
            continue
        keep = [a for a in statement.names if a.name == "*" or _bound_name(a) in used]
        if len(keep) == len(statement.names):
            continue
        first, last = statement.lineno, statement.end_lineno
        before = lines[first - 1][: statement.col_offset]
        after = lines[last - 1][statement.end_col_offset:]
        if before.strip() or after.strip() and not after.strip().startswith("#"):
            continue  # `import a; import b` on one line: left as it is
        if keep:
            edits.append((first, last, f"{before}{_import_source(statement, keep)}{after}"))
        else:
            edits.append((first, last, ""))
    for first, last, text in reversed(edits):
        replaced = [text] if text else []
        # A statement removed from between two blank lines takes one of them along.
        if not text and first >= 2 and last < len(lines) and not lines[first - 2].strip() and not lines[last].strip():
            last += 1
        lines[first - 1:last] = replaced
    return "".join(lines)


def make_exercise(source: str, module: str, filename: str) -> str:
    """The exercise version of one reference module's source."""
    lines = source.splitlines(keepends=True)
    regions = find_regions(source, filename)
    out, cursor = [HEADER.format(name=Path(filename).name)], 0
    for region in regions:
        out.extend(lines[cursor:region.begin - 1])
        if not region.owner:  # a module-level region: left out, and the blank lines around it become one run
            cursor = region.end
            while cursor < len(lines) and not lines[cursor].strip():
                cursor += 1
            before = len(out) - next((i for i in range(len(out) - 1, -1, -1) if out[i].strip()), -1) - 1
            out.extend("\n" for _ in range(cursor - region.end - before))
            continue
        indent = lines[region.begin - 1][: len(lines[region.begin - 1]) - len(lines[region.begin - 1].lstrip())]
        out.append(_raise_statement(indent, stub_message(module, region.owner)))
        cursor = region.end
    out.extend(lines[cursor:])
    return drop_unused_imports("".join(out))


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


@dataclass
class Copy:
    """What `write_copy` did to a learner's folder."""
    written: list[str]  # files that were missing (or replaced, with `force`)
    kept: list[str]  # files that differ from their stub (the learner's work), left as they were
    backups: list[Path]  # with `force`: where each replaced file was saved first


def write_copy(reference: Path, folder: Path, force: bool = False, stamp: str = "") -> Copy:
    """Write the stubs into a learner's `folder` without ever losing the learner's work.

    A missing file is written; a file that already equals its stub is left alone; a file that differs from its stub
    is kept as it is, unless `force`, which first saves it beside itself as `name.py.bak-<stamp>` and then writes
    the stub. Files that are not stubs (the learner's own modules) are never touched.
    """
    expected = expected_tree(reference)  # raises MarkerError before anything is touched
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    done = Copy([], [], [])
    for name, text in expected.items():
        path = folder / name
        if path.exists() and path.read_bytes() == text.encode("utf-8"):
            continue
        if path.exists() and not force:
            done.kept.append(name)
            continue
        if path.exists():
            backup = folder / f"{name}.bak-{stamp}"
            suffix = 1
            while backup.exists():  # two forced copies within one second: neither backup is lost
                backup, suffix = folder / f"{name}.bak-{stamp}-{suffix}", suffix + 1
            shutil.copy2(path, backup)  # byte for byte, whatever the encoding
            done.backups.append(backup)
        write_text_atomic(path, text)
        done.written.append(name)
    return done
