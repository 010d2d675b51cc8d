"""`llmkata grade`: runs the spec in a child process and prints a table per chapter."""

import subprocess
import sys
from pathlib import Path

from llmkata.grade import score

ROOT = Path(__file__).resolve().parents[1]


def grade(*args):
    return subprocess.run([sys.executable, "-m", "llmkata.cli", "grade", *args], capture_output=True, text=True, cwd=ROOT)


def test_grading_the_stubs_prints_a_table_with_the_first_failing_property():
    run = grade("exercises", "-k", "layers", "--seed", "1")
    assert run.returncode == 0, run.stderr
    rows = run.stdout.splitlines()
    at = next(i for i, row in enumerate(rows) if " layers " in row)
    assert rows[at].split()[2] == "0" and "test_" in rows[at], f"no property passes on stubs:\n{run.stdout}"
    assert "`layers." in rows[at + 1] and "is not implemented yet" in rows[at + 1], run.stdout
    assert "hypothesis seed 1" in run.stdout and "total" in run.stdout


def test_grading_the_reference_scores_full_marks_and_strict_passes():
    run = grade("reference", "-k", "layers", "--strict")
    assert run.returncode == 0, run.stdout + run.stderr
    line = next(row for row in run.stdout.splitlines() if " layers " in row)
    passed, total = (int(n) for n in line.split()[2:5:2])
    assert passed == total > 20 and "all pass" in line, run.stdout


def test_strict_fails_when_anything_fails():
    assert grade("exercises", "-k", "silu", "--strict").returncode == 1


def test_bad_implementation_is_one_clear_message():
    run = grade("./no/such/folder")
    assert run.returncode == 2 and "no implementation at" in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_contract_checks_do_not_score_but_their_failures_are_reported():
    records = [
        {"nodeid": "spec/test_contract.py::test_signature_matches_the_contract[layers.silu]", "when": "call",
         "outcome": "failed", "message": "wrong signature"},
        {"nodeid": "spec/test_contract.py::test_signature_matches_the_contract[layers.gelu]", "when": "call",
         "outcome": "passed", "message": ""},
        {"nodeid": "spec/test_layers.py::test_a", "when": "call", "outcome": "passed", "message": ""},
    ]
    layers = score(records)["layers"]
    assert (layers.passed, layers.total) == (1, 1)
    assert layers.first_failure == "test_signature_matches_the_contract[layers.silu]: wrong signature"


def test_score_counts_a_failure_in_any_phase():
    records = [
        {"nodeid": "spec/test_layers.py::test_a", "when": "call", "outcome": "passed", "message": ""},
        {"nodeid": "spec/test_layers.py::test_a", "when": "teardown", "outcome": "failed", "message": "boom"},
        {"nodeid": "spec/test_layers.py::test_b", "when": "call", "outcome": "passed", "message": ""},
        {"nodeid": "spec/test_layers.py::test_c", "when": "setup", "outcome": "skipped", "message": ""},
    ]
    layers = score(records)["layers"]
    assert (layers.passed, layers.total, layers.first_failure) == (1, 2, "test_a: boom")
