"""Stubs earn nothing: graded as generated, the exercises pass no property in any chapter.

A property that passes on stubs is a point given for code nobody wrote: usually a check that sits outside the
learner's region (validation in a constructor, say) or a property that a constant satisfies.
"""

from llmkata.grade import run_spec, score


def passed_properties(records: list[dict]) -> list[str]:
    """The spec properties (contract checks aside) whose every recorded phase passed."""
    outcomes: dict[str, set[str]] = {}
    for record in records:
        outcomes.setdefault(record["nodeid"], set()).add(record["outcome"])
    return sorted(nodeid for nodeid, seen in outcomes.items()
                  if seen == {"passed"} and "test_contract.py" not in nodeid)


def is_stub_sentence(message: str) -> bool:
    """Whether a failure's message is the sentence of a stub or a missing name, as the spec reports them."""
    first = message.split("\n")[0]
    return first.startswith("`") and (" is not implemented yet — " in first or " is missing from " in first)


def test_is_stub_sentence_tells_a_stub_from_a_property_that_wraps_it():
    stub = "`layers.softmax` is not implemented yet — chapter 4 (layers): see test_a in spec/test_layers.py."
    assert is_stub_sentence(stub) and is_stub_sentence("`layers.x` is missing from my_impl — chapter 4 (layers).")
    assert not is_stub_sentence(f"Linear must accept any x; it raised: {stub}")


def test_passed_properties_counts_only_properties_that_passed_in_every_phase():
    records = [
        {"nodeid": "spec/test_layers.py::test_a", "when": "call", "outcome": "passed"},
        {"nodeid": "spec/test_layers.py::test_b", "when": "call", "outcome": "passed"},
        {"nodeid": "spec/test_layers.py::test_b", "when": "teardown", "outcome": "failed"},
        {"nodeid": "spec/test_layers.py::test_c", "when": "setup", "outcome": "skipped"},
        {"nodeid": "spec/test_contract.py::test_signature_matches_the_contract[layers.silu]", "when": "call",
         "outcome": "passed"},
    ]
    assert passed_properties(records) == ["spec/test_layers.py::test_a"]


def test_untouched_exercises_pass_no_property_in_any_chapter():
    records = run_spec("exercises", seed=0).records
    scores = score(records)
    graded = {chapter.module: chapter for chapter in scores.values() if chapter.total}
    assert sum(chapter.total for chapter in graded.values()) > 200, f"the whole spec ran: {sorted(graded)}"
    earned = {module: chapter.passed for module, chapter in graded.items() if chapter.passed}
    passed = passed_properties(records)
    assert not earned and not passed, (
        f"properties pass on the untouched stubs (points by chapter: {earned}); move the code they check into the "
        "learner's solution region, or make the property fail on a stub:\n" + "\n".join(passed))
    # A property that catches the stub's NotImplementedError (a RuntimeError) and reports it as a broken rule hides
    # the one sentence that says where to start.
    disguised = sorted({f"{record['nodeid']}: {record.get('message', '')[:120]}" for record in records
                        if record["outcome"] == "failed" and "test_contract.py" not in record["nodeid"]
                        and not is_stub_sentence(record.get("message", ""))})
    assert not disguised, ("on the untouched stubs every property must fail with the stub's own sentence (let "
                           "NotImplementedError through); these say something else:\n" + "\n".join(disguised))
