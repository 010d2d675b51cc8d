"""Plausible wrong implementations, one file per chapter module: the spec must catch every one.

A mutant is registered where it is defined, with the name it replaces and the spec tests that must catch it:

    @mutant("layers.softmax", "test_softmax_survives_large_logits", why="no max subtracted: exp overflows")
    def softmax_without_max_subtraction(x, dim=-1):
        ...

A replacement made by a factory is registered by calling the decorator on it, next to the factory:
`mutant("attention.tiled_attention", "test_...", why=...)(tiled_with(plain_tiles(rescale=False)))`.
`tests/test_mutants.py` runs each mutant's `caught_by` spec tests against the reference with `target` replaced, and
asserts that every one of them fails with an AssertionError (a broken property, not a crash).
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


REGISTERED: list[Mutant] = []


def mutant(target: str, *caught_by: str, why: str = "", spec: str = ""):
    """Register the decorated function or class as a wrong implementation of `target`; returns it unchanged."""
    if not caught_by:
        raise ValueError(f"a mutant of {target} must name the spec tests that catch it")

    def register(replacement):
        REGISTERED.append(Mutant(target, replacement, tuple(caught_by), why, spec))
        return replacement

    return register


def all_mutants() -> list[Mutant]:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return list(REGISTERED)
