"""Plausible wrong implementations, one file per chapter module: the spec must catch every one.

Each chapter file defines `MUTANTS: list[Mutant]`. `tests/test_mutants.py` runs each mutant's `caught_by` spec
tests against the reference with `target` replaced, and asserts that every one of them fails with an
AssertionError (a broken property, not a crash).
"""

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Mutant:
    target: str  # "module.name" in the contract, e.g. "layers.softmax"
    replacement: Any  # the wrong implementation: a function or a class
    caught_by: tuple[str, ...]  # names of spec tests in spec/test_<module>.py that must fail
    why: str = ""  # the mistake, in words
    spec: str = ""  # the spec file's module when it is not the target's (e.g. "contract")

    @property
    def spec_module(self) -> str:
        return self.spec or self.target.split(".")[0]


def all_mutants() -> list[Mutant]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        found.extend(importlib.import_module(f"{__name__}.{info.name}").MUTANTS)
    return found
