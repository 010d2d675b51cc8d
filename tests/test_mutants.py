"""The spec catches wrong implementations: every mutant fails the spec tests it names, and every spec property
is shown to catch at least one mutant."""

import importlib
import inspect
import itertools

from pathlib import Path

import pytest

import llmkata.spec

from llmkata.spec.impl import load
from mutants import Mutant, all_mutants

MUTANTS = all_mutants()
SPEC_DIR = Path(llmkata.spec.__path__[0])
SPEC_MODULES = sorted(path.stem.removeprefix("test_") for path in SPEC_DIR.glob("test_*.py"))


def mutant_ids(mutants: list[Mutant]) -> list[str]:
    """'target:replacement' for each mutant, in order; a later mutant of the same target and name gets '#2', '#3'...

    Example: mutants of layers.softmax named no_max, no_max, wrong_dim -> layers.softmax:no_max,
    layers.softmax:no_max#2, layers.softmax:wrong_dim
    """
    ids, count = [], {}
    for mutant in mutants:
        base = f"{mutant.target}:{getattr(mutant.replacement, '__name__', type(mutant.replacement).__name__)}"
        count[base] = count.get(base, 0) + 1
        ids.append(base if count[base] == 1 else f"{base}#{count[base]}")
    return ids


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


@pytest.mark.parametrize("mutant", MUTANTS, ids=mutant_ids(MUTANTS))
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


def test_mutant_ids_are_unique_and_stable():
    ids = mutant_ids(MUTANTS)
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    assert not repeated, f"two mutants share a test id: {repeated}"
    assert ids == mutant_ids(all_mutants()), "a mutant's id is the same in every run"
    assert all(i.startswith(f"{m.target}:") for i, m in zip(ids, MUTANTS)), "an id names the target first"


def test_mutants_of_one_target_with_one_name_get_numbered_ids():
    def no_max(x):
        return x

    twins = [Mutant("layers.softmax", no_max, ("test_a",)), Mutant("layers.softmax", no_max, ("test_b",)),
             Mutant("layers.gelu", no_max, ("test_c",)), Mutant("layers.softmax", no_max, ("test_d",))]
    assert mutant_ids(twins) == ["layers.softmax:no_max", "layers.softmax:no_max#2", "layers.gelu:no_max",
                                 "layers.softmax:no_max#3"]
