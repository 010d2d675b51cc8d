"""Find and load the implementation under test.

An implementation is any Python package with the contract's module names: `reference`, `exercises`, a dotted
module name, or a folder on disk (imported under its own folder name, so grading `./my_impl` never touches the
reference). The spec reaches every name through an `Implementation`: `impl.layers.softmax`. A name that is missing
raises `Missing`, which the spec reports as one sentence for that test alone.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import FunctionType, GeneratorType, MethodType, ModuleType
from typing import Any

from .contract import BY_MODULE

ALIASES = {"reference": "llmkata.reference", "exercises": "llmkata.exercises"}
ENV_VAR = "LLMKATA_IMPL"
DEFAULT = "reference"


def kept(*methods: str):
    """Class decorator: objects of this class stay in the spec's process when the implementation runs in a worker
    of its own (remote grading); the implementation calls them, iterates over them and reads their data there, and
    may call the model protocol's methods and these `methods`, nothing else. For spec objects that record what the
    implementation does with them (a model that counts its calls, a cache that keeps the ids fed)."""

    def mark(cls):
        cls._llmkata_kept = frozenset(methods)
        return cls

    return mark


def kept_in_spec(obj) -> bool:
    """Does `obj` stay in the spec's process under remote grading: an object of a `kept` class, one of its bound
    methods, a generator, a lambda or a local function (which may hold the spec's own state)?"""
    if isinstance(obj, GeneratorType):
        return True
    if isinstance(obj, FunctionType):
        return "<" in obj.__qualname__
    if isinstance(obj, MethodType):
        return hasattr(type(obj.__self__), "_llmkata_kept") and not isinstance(obj.__self__, type)
    return hasattr(type(obj), "_llmkata_kept") and not isinstance(obj, type)


class Missing(Exception):
    """A module or name the contract asks for is not in the implementation."""


def _where(module: str) -> str:
    chapter = BY_MODULE.get(module)
    return chapter.where(module) if chapter else "it is not part of the contract"


class ModuleView:
    """One module of an implementation; attribute access fails with a sentence instead of an AttributeError."""

    def __init__(self, impl: Implementation, module: str):
        self._impl, self._module = impl, module

    def __getattr__(self, name: str) -> Any:
        qualified = f"{self._module}.{name}"
        if qualified in self._impl.overrides:
            return self._impl.overrides[qualified]
        module = self._impl.module(self._module)
        try:
            return getattr(module, name)
        except AttributeError:
            raise Missing(f"`{qualified}` is missing from {self._impl.name} — {_where(self._module)}.") from None

    def __repr__(self) -> str:
        return f"<{self._impl.name}.{self._module}>"


class Implementation:
    """The implementation under test: a package, plus optional replaced names (used to run mutants)."""

    def __init__(self, name: str, package: str, overrides: dict[str, Any] | None = None):
        self.name, self.package = name, package
        self.overrides = dict(overrides or {})

    @property
    def location(self) -> str:
        package = importlib.import_module(self.package)
        paths = list(getattr(package, "__path__", []))
        return paths[0] if paths else str(getattr(package, "__file__", "?"))

    def module(self, module: str) -> ModuleType:
        full = f"{self.package}.{module}"
        try:
            return importlib.import_module(full)
        except ModuleNotFoundError as error:
            if error.name == full:
                raise Missing(
                    f"module `{module}` is missing from {self.name} — {_where(module)}."
                ) from None
            raise

    def __getattr__(self, module: str) -> ModuleView:
        if module.startswith("_"):
            raise AttributeError(module)
        return ModuleView(self, module)

    @contextlib.contextmanager
    def without(self, module: str):
        """`import module` fails inside this block, as where the package is not installed."""
        missing = object()
        installed = sys.modules.get(module, missing)
        sys.modules[module] = None
        self._hide(module, True)
        try:
            yield
        finally:
            self._hide(module, False)
            if installed is missing:
                del sys.modules[module]
            else:
                sys.modules[module] = installed

    def alongside(self, cls, *args, **kwargs):
        """cls(*args, **kwargs), made where the implementation runs: for the spec's objects whose own state the
        implementation changes (a torch optimizer it steps and checkpoints, a model that notes the dtype it ran in),
        which the spec then reads back as data."""
        return cls(*args, **kwargs)

    def each(self, function, values, *args, **kwargs) -> list:
        """[function(v, *args, **kwargs) for v in values]: for the spec's loops over thousands of values (one request
        in all where the implementation runs in a worker of its own, not one per value)."""
        return [function(value, *args, **kwargs) for value in values]

    def _hide(self, module: str, hidden: bool) -> None:
        """Where the implementation runs elsewhere, hide the module there too."""

    def replacing(self, overrides: dict[str, Any]) -> Implementation:
        """The same implementation with some names replaced.  Example: impl.replacing({"layers.softmax": f})"""
        return Implementation(self.name, self.package, {**self.overrides, **overrides})

    def __repr__(self) -> str:
        return f"Implementation({self.name!r}, package={self.package!r})"


def _import_folder(folder: Path) -> str:
    name = folder.name
    if not name.isidentifier():
        raise ValueError(f"cannot import the folder {folder} as a package: {name!r} is not a valid Python name")
    existing = sys.modules.get(name)
    if existing is not None:
        paths = [Path(p).resolve() for p in getattr(existing, "__path__", [])]
        if folder in paths:
            return name
        where = paths[0] if paths else getattr(existing, "__file__", "built in")
        raise ValueError(
            f"cannot import the folder {folder} as package {name!r}: a module of that name is already loaded "
            f"from {where}; rename the folder"
        )
    init = folder / "__init__.py"
    if init.exists():
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(folder)])
    else:  # a plain folder of modules works too
        spec = importlib.util.spec_from_loader(name, loader=None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    if str(folder.parent) not in sys.path:  # importable by name in the processes it starts (chapter 13's worlds)
        sys.path.append(str(folder.parent))
    if spec.loader is not None:
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return name


def load(choice: str | None = None) -> Implementation:
    """Resolve `reference`, `exercises`, a folder path or a dotted module name (default: $LLMKATA_IMPL, else reference)."""
    choice = choice or os.environ.get(ENV_VAR) or DEFAULT
    if choice in ALIASES:
        return Implementation(choice, ALIASES[choice])
    folder = Path(choice).expanduser()
    if folder.is_dir():
        folder = folder.resolve()
        return Implementation(str(folder), _import_folder(folder))
    if os.sep in choice or choice.startswith("."):
        raise ValueError(f"no implementation at {choice!r}: there is no such folder")
    try:
        importlib.import_module(choice)
    except ModuleNotFoundError as error:
        raise ValueError(
            f"no implementation {choice!r}: it is neither 'reference', 'exercises', a folder, nor an importable "
            f"module ({error})"
        ) from None
    return Implementation(choice, choice)
