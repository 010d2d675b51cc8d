"""Hypothesis profiles, pinned by llmkata itself.

- `dev`: the default on a learner's machine: random examples, quick.
- `ci`: derandomized, so a red CI run is reproducible.
- `grade`: random seed (the grader records it): every grade draws other examples.
- `smoke`: derandomized, 5 examples: the whole spec quickly, where its setting is under test rather than the code.

Hypothesis would switch to a `ci` profile of its own when the `CI` variable is set; `load()` decides instead:
$LLMKATA_HYPOTHESIS_PROFILE if given, else `ci` under CI, else `dev`.
"""

import os

from hypothesis import HealthCheck, Phase, settings

# No `explain` phase: it reruns a failing test many times to annotate lines, which costs more than it tells here
# (every assertion already says which rule broke), and it dominates the cost of running the mutants.
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
COMMON = dict(deadline=None, phases=PHASES,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])

settings.register_profile("dev", max_examples=40, **COMMON)
settings.register_profile("ci", max_examples=40, derandomize=True, print_blob=True, **COMMON)
# A fresh seed every grade (recorded in the report), so that no two grades draw the same examples; as many as `ci`,
# within the grading budget (every example crosses to the sandboxed worker and back).
settings.register_profile("grade", max_examples=40, print_blob=True, **COMMON)
# A few derandomized examples per property: for checks that the whole spec runs in some setting (through the
# grader's sandboxed worker), not for its power.
settings.register_profile("smoke", max_examples=5, derandomize=True, print_blob=True, **COMMON)


def load() -> str:
    name = os.environ.get("LLMKATA_HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
    settings.load_profile(name)
    return name
