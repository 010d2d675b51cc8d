"""The spec catches wrong implementations: every mutant fails the spec tests it names, and every spec property
is shown to catch at least one mutant."""

import importlib
import inspect
import itertools

from pathlib import Path

import pytest

import llmkata.spec

from llmkata.impl import load
from mutants import Mutant, all_mutants

MUTANTS = all_mutants()
SPEC_DIR = Path(llmkata.spec.__path__[0])
SPEC_MODULES = sorted(path.stem.removeprefix("test_") for path in SPEC_DIR.glob("test_*.py"))


def spec_module(name: str):
    return importlib.import_module(f"llmkata.spec.test_{name}")


def parameter_sets(test) -> list[dict]:
    """Every combination of the test's @pytest.mark.parametrize values ([{}] when it has none)."""
    axes = []
    for mark in getattr(test, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names = [n.strip() for n in mark.args[0].split(",")] if isinstance(mark.args[0], str) else list(mark.args[0])
        values = [v if len(names) > 1 else (v,) for v in mark.args[1]]
        axes.append([dict(zip(names, v)) for v in values])
    return [dict(kv for d in combo for kv in d.items()) for combo in itertools.product(*axes)] or [{}]


def fails(test, impl, tmp_path) -> BaseException | None:
    """The AssertionError the test raises for `impl` under some parameter set, else None."""
    takes = inspect.signature(test).parameters
    extra = {"tmp_path": tmp_path} if "tmp_path" in takes else {}
    for params in parameter_sets(test):
        try:
            test(impl=impl, **params, **extra)
        except AssertionError as error:
            return error
        except BaseExceptionGroup as group:  # hypothesis found several distinct failures
            if group.subgroup(AssertionError) is not None:
                return group
    return None


@pytest.mark.parametrize("mutant", MUTANTS, ids=[f"{m.target}:{getattr(m.replacement, '__name__', '?')}" for m in MUTANTS])
def test_spec_catches_mutant(mutant: Mutant, tmp_path):
    impl = load("reference").replacing({mutant.target: mutant.replacement})
    module = spec_module(mutant.spec_module)
    for name in mutant.caught_by:
        test = getattr(module, name, None)
        assert test is not None, f"spec/test_{mutant.spec_module}.py has no test {name}"
        assert fails(test, impl, tmp_path) is not None, (
            f"{name} passed on a wrong implementation of {mutant.target} ({mutant.why}): the property cannot fail")


@pytest.mark.parametrize("module", SPEC_MODULES)
def test_every_property_catches_some_mutant(module):
    tests = {name for name, obj in vars(spec_module(module)).items() if name.startswith("test_") and callable(obj)}
    named = {name for m in MUTANTS if m.spec_module == module for name in m.caught_by}
    unproven = sorted(tests - named)
    assert not unproven, f"spec/test_{module}.py properties not shown to catch any mutant: {unproven}"
