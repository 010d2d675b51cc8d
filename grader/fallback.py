"""`--fallback reference`: train with the parts a learner has written and the reference's for the rest.

    mix = compose(load("my_impl"), load("reference"))
    mix.impl          # an Implementation: the learner's names where written, the reference's elsewhere
    mix.table()       # which chapter (and which names) came from where
    mix.record()      # the same as JSON, for the run folder's sources.json

Which names are written is read from the learner's source, never by calling their code: a function is *not written*
while its body still holds, at its top level, the stub's `raise NotImplementedError(...)` (what `llmkata exercises`
writes); a class is not written while any method in its body still does (its constructor and private helpers
included), because a class is taken whole from one side, never mixed method by method; a name the module does not
define at all, or a module that is not there, is taken from the reference too.

The granularity is the module-level name, as the pipeline reaches it (`impl.layers.RMSNorm`) *and* as the
learner's other modules reach it. Modules of an implementation import each other (`from .layers import RMSNorm`
in model.py), so replacing `layers.RMSNorm` alone would leave model.py holding the stub. The learner's package is
therefore imported afresh, under a private name, and in every one of its modules each global that is a replaced
stub is set to the reference's object. So the learner's model.py builds its blocks from the reference's RMSNorm
when theirs is a stub, and from their own when it is written. The other way round does not hold: a name taken
from the reference brings the reference's own parts with it (the reference's Transformer is built from the
reference's layers, whatever the learner has written).

The learner's own package is left as it was: only the fresh copy is patched.

Left out: stubs that a written function reaches through a helper of the learner's own (the helper is not a
contract name: its NotImplementedError stops the run as before), classes that inherit a stub method from a base
class of the learner's, and absolute imports of the learner's package inside itself.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.util
import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from llmkata.spec.contract import CHAPTERS
from llmkata.spec.impl import Implementation

CHOICES = ("", "reference")  # the values of --fallback: "" (stop at the first part not written yet), reference
YOURS, REFERENCE = "yours", "reference"
# Why a name comes from the reference.
STUB, MISSING, NO_MODULE, RECORDED = "a stub", "missing", "no module", "as recorded"
MODEL_PARTS = ("layers", "rope", "attention")  # the chapters the Transformer is built from

_copies = itertools.count()


class FallbackError(ValueError):
    """The learner's code cannot be read (a syntax error), so nothing can be decided about it."""


# ------------------------------------------------------------------------------------------------ reading the source


def _raises_not_implemented(statement: ast.stmt) -> bool:
    """`raise NotImplementedError` or `raise NotImplementedError("...")`."""
    if not isinstance(statement, ast.Raise) or statement.exc is None:
        return False
    exc = statement.exc.func if isinstance(statement.exc, ast.Call) else statement.exc
    return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"


def is_stub(node: ast.AST) -> bool:
    """A function whose body raises NotImplementedError at its top level (after a `kernels` branch, say, as
    RMSNorm.forward's stub does); a class with any such method. A raise nested in an `if` is the learner's own
    refusal of a case, not a stub.

    Example: is_stub(ast.parse("def f(x):\\n    '''doc'''\\n    raise NotImplementedError('f')").body[0]) -> True
    """
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return any(_raises_not_implemented(statement) for statement in node.body)
    if isinstance(node, ast.ClassDef):
        return any(is_stub(child) for child in node.body if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return False


def top_level_definitions(tree: ast.Module) -> dict[str, ast.AST]:
    """Each name the module binds at its top level (also inside top-level if/try/with blocks), with the statement
    that binds it last: a def, a class, an assignment or an import.

    Example: top_level_definitions(ast.parse("import math\\ndef f(): pass\\nf = 1")) -> {"math": Import, "f": Assign}
    """
    found: dict[str, ast.AST] = {}

    def visit(statements: list[ast.stmt]) -> None:
        for statement in statements:
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found[statement.name] = statement
            elif isinstance(statement, (ast.Import, ast.ImportFrom)):
                for alias in statement.names:
                    found[(alias.asname or alias.name).split(".")[0]] = statement
            elif isinstance(statement, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
                for target in targets:
                    for node in ast.walk(target):
                        if isinstance(node, ast.Name):
                            found[node.id] = statement
            elif isinstance(statement, ast.If):
                visit(statement.body)
                visit(statement.orelse)
            elif isinstance(statement, ast.Try):
                visit(statement.body)
                for handler in statement.handlers:
                    visit(handler.body)
                visit(statement.orelse)
                visit(statement.finalbody)
            elif isinstance(statement, (ast.With, ast.AsyncWith)):
                visit(statement.body)

    visit(tree.body)
    return found


def _parse(module: ModuleType) -> dict[str, ast.AST] | None:
    """The top-level definitions of a module's source file; None when it has no Python source to read."""
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py"):
        return None
    try:
        source = Path(path).read_text(encoding="utf-8")
        return top_level_definitions(ast.parse(source, path))
    except SyntaxError as error:
        raise FallbackError(f"{path}, line {error.lineno}: {error.msg}: fix it first") from None


# ------------------------------------------------------------------------------------------------ the mix


@dataclass
class Mix:
    """An implementation made of the learner's written names and the reference's for the rest."""

    impl: Implementation  # what the run works with
    learner: str  # the learner's implementation, as it was named
    sources: dict[str, str] = field(default_factory=dict)  # "module.Name" -> yours | reference, in contract order
    why: dict[str, str] = field(default_factory=dict)  # "module.Name" of the reference's -> a stub | missing | ...
    is_reference: bool = False  # the learner's implementation is the reference itself: nothing to mix

    def names(self, module: str, source: str) -> list[str]:
        return [q.split(".", 1)[1] for q, s in self.sources.items() if q.split(".", 1)[0] == module and s == source]

    def chapters(self) -> dict[str, str]:
        """module -> yours, reference or mixed.  Example: {"text": "yours", "layers": "mixed", "rope": "reference"}"""
        result = {}
        for chapter in CHAPTERS:
            ours, theirs = self.names(chapter.module, YOURS), self.names(chapter.module, REFERENCE)
            result[chapter.module] = "mixed" if ours and theirs else YOURS if ours else REFERENCE
        return result

    @property
    def mixes(self) -> bool:
        """Whether any name of the learner's implementation was replaced."""
        return not self.is_reference and REFERENCE in self.sources.values()

    def _cell(self, module: str) -> str:
        ours, theirs = self.names(module, YOURS), self.names(module, REFERENCE)
        if self.is_reference:
            return "reference"
        if not theirs:
            return "yours"
        if not ours:
            whys = {self.why[f"{module}.{name}"] for name in theirs}
            return "reference" + (" (you have no such module)" if whys == {NO_MODULE} else "")
        if len(theirs) <= len(ours):
            return "yours, but the reference's " + ", ".join(
                f"{name} ({self.why[f'{module}.{name}']})" for name in theirs)
        return "the reference's, but yours: " + ", ".join(ours)

    def table(self) -> str:
        """Which chapter, and which names, came from where: a few lines to print."""
        if self.is_reference:
            head = "--fallback reference: the implementation is the reference, so nothing is mixed"
        elif not self.mixes:
            head = f"--fallback reference: every part of {self.learner} is written, so nothing is mixed"
        else:
            head = (f"--fallback reference: {self.learner} where it is written, the reference for the rest (a part "
                    "taken from the reference is built from the reference's own parts)")
        width = max(len(chapter.module) for chapter in CHAPTERS)
        rows = [f"  {chapter.number:>2}  {chapter.module:<{width}}  {self._cell(chapter.module)}"
                for chapter in CHAPTERS]
        unused = [m for m in MODEL_PARTS if self.names(m, YOURS)]
        if self.mixes and self.sources.get("model.Transformer") == REFERENCE and unused:
            rows.append(f"The model is the reference's Transformer, built from the reference's layers, rope and "
                        f"attention: your {' and '.join(unused)} take no part in it until the model chapter is "
                        "written.")
        return "\n".join([head, *rows])

    def line(self) -> str:
        """One line: the chapters of each side.  Example: 'yours: text, tokenizer; the reference's: rope, ...'"""
        if self.is_reference:
            return "the reference (nothing to mix)"
        chapters = self.chapters()
        parts = []
        for kind, label in ((YOURS, "yours"), ("mixed", "mixed"), (REFERENCE, "the reference's")):
            modules = [m for m, k in chapters.items() if k == kind]
            if modules:
                parts.append(f"{label}: {', '.join(modules)}")
        return "; ".join(parts)

    def record(self) -> dict:
        """What sources.json holds: the choice, each chapter's side, each name's side, and why."""
        return {"fallback": REFERENCE, "impl": self.learner, "is_reference": self.is_reference,
                "chapters": self.chapters(), "names": dict(self.sources), "why": dict(self.why)}

    def changed_from(self, recorded: dict) -> list[str]:
        """The names whose side differs from a recorded mix (record()): the learner's then, stubs now (a name the
        reference gave then, it gives again).  Example: ["layers.RMSNorm"]"""
        before = recorded.get("names", {}) if isinstance(recorded, dict) else {}
        return [name for name, side in self.sources.items() if name in before and before[name] != side]


def _fresh_copy(package: str, missing: dict[str, ModuleType]) -> str:
    """Import `package` again under a private name (its modules' relative imports then resolve inside the copy),
    with `missing` (module -> module object) standing in for the modules it lacks; return the copy's name."""
    original = importlib.import_module(package)
    paths = list(getattr(original, "__path__", []))
    name = f"_llmkata_mix{next(_copies)}_{package.replace('.', '_')}"
    file = getattr(original, "__file__", None)
    if file and file.endswith(".py"):
        spec = importlib.util.spec_from_file_location(name, file, submodule_search_locations=paths)
    else:  # a plain folder of modules
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = paths
    copy = importlib.util.module_from_spec(spec)
    sys.modules[name] = copy
    for module, stand_in in missing.items():
        sys.modules[f"{name}.{module}"] = stand_in
        setattr(copy, module, stand_in)
    try:
        if spec.loader is not None:
            spec.loader.exec_module(copy)
    except BaseException:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
        raise
    return name


def compose(impl: Implementation, reference: Implementation, recorded: dict | None = None) -> Mix:
    """The learner's `impl` with the reference's names wherever theirs is not written (see the module docstring).

    `recorded` (a Mix.record() of an earlier run) takes from the reference every name it took then too, written
    since or not, so that a run is resumed, sampled and evaluated with the mix it was trained with. A name that was
    the learner's then and is a stub now has to come from the reference: changed_from() names it.
    """
    names = [(chapter.module, name, spec) for chapter in CHAPTERS for name, spec in chapter.names.items()]
    if impl.package == reference.package:
        return Mix(impl, impl.name, {f"{m}.{n}": REFERENCE for m, n, _ in names}, is_reference=True)
    forced = {q for q, side in (recorded or {}).get("names", {}).items() if side == REFERENCE}

    modules = list(dict.fromkeys(m for m, _, _ in names))
    missing = {m: reference.module(m) for m in modules
               if importlib.util.find_spec(f"{impl.package}.{m}") is None}
    copy = _fresh_copy(impl.package, missing)
    sources, why, replace = {}, {}, {}
    for module in modules:
        ours = importlib.import_module(f"{copy}.{module}")
        definitions = None if module in missing else _parse(ours)
        for m, name, spec in names:
            if m != module:
                continue
            qualified = f"{module}.{name}"
            if module in missing:
                reason = NO_MODULE
            elif not hasattr(ours, name):
                reason = MISSING
            elif definitions is not None and is_stub(definitions.get(name)):
                reason = STUB
            elif qualified in forced:
                reason = RECORDED
            else:
                sources[qualified] = YOURS
                continue
            sources[qualified], why[qualified] = REFERENCE, reason
            if module in missing:
                continue
            theirs = getattr(reference.module(module), name)
            if hasattr(ours, name):
                replace[id(getattr(ours, name))] = (getattr(ours, name), theirs)
            setattr(ours, name, theirs)

    if not why:  # everything is written: the learner's own package, as it is
        for key in [k for k in sys.modules if k == copy or k.startswith(copy + ".")]:
            del sys.modules[key]
        return Mix(impl, impl.name, sources, why)
    # Every global of the copy's modules that is a replaced object becomes the reference's: model.py's RMSNorm,
    # imported from .layers when model.py was run, is layers.RMSNorm's replacement too.
    for key, module in list(sys.modules.items()):
        if not (key == copy or key.startswith(copy + ".")) or getattr(module, "__name__", None) != key:
            continue  # a reference module standing in for a missing one is never patched
        for global_name, value in list(vars(module).items()):
            pair = replace.get(id(value))
            if pair is not None and pair[0] is value:
                setattr(module, global_name, pair[1])
    return Mix(Implementation(impl.name, copy, impl.overrides), impl.name, sources, why)
