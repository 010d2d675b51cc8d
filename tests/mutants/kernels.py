"""Wrong implementations of the kernels chapter that a learner could plausibly write."""

from . import Mutant

MUTANTS: list[Mutant] = []

# ---------------------------------------------------------------- the incremental BPE trainer

BPE_MUTANTS: list[Mutant] = []
MUTANTS += BPE_MUTANTS
