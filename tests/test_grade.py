"""`llmkata grade`: runs the spec in a child process and prints a table per chapter, then every failing property of
the chapter being worked on, with its message and shrunk example, and every skipped test with its reason."""

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmkata.grade import find_chapter, install_hint, render, run_spec, score
from llmkata.sandbox import Limits, Sandbox
from llmkata.results_plugin import describe_syntax_error, shrunk_example

ROOT = Path(__file__).resolve().parents[1]


def grade(*args):
    return subprocess.run([sys.executable, "-m", "llmkata.cli", "grade", *args], capture_output=True, text=True, cwd=ROOT)


def test_grading_the_stubs_prints_a_table_then_the_failing_properties_of_the_chapter():
    run = grade("exercises", "-k", "layers and softmax", "--seed", "1")
    assert run.returncode == 0, run.stderr
    rows = run.stdout.splitlines()
    at = next(i for i, row in enumerate(rows) if " layers " in row)
    assert rows[at].split()[2] == "0" and "test_" in rows[at], f"no property passes on stubs:\n{run.stdout}"
    assert "hypothesis seed 1" in run.stdout and "total" in run.stdout
    details = run.stdout[run.stdout.index("Chapter 4 (layers)"):]
    assert details.count("✗ test_") >= 5 and details.count("`layers.softmax` is not implemented yet") >= 4, (
        f"every failing property of the chapter is listed, each with its message:\n{run.stdout}")
    assert "Read: " in details and "layers.py" in details, run.stdout


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


def test_an_init_that_does_not_compile_is_one_clear_message(tmp_path):
    folder = tmp_path / "my_impl"
    folder.mkdir()
    (folder / "__init__.py").write_text("x = 1\ndef broken(:\n")
    run = grade(str(folder))
    assert run.returncode == 2 and "Traceback" not in run.stderr and "INTERNALERROR" not in run.stderr, run.stderr
    assert "SyntaxError" in run.stderr and "__init__.py, line 2: def broken(:" in run.stderr, run.stderr


def test_an_unknown_chapter_is_one_clear_message_before_anything_runs():
    run = grade("exercises", "--chapter", "nope")
    assert run.returncode == 2 and "no such chapter" in run.stderr and "layers" in run.stderr, run.stderr
    assert find_chapter("4") == find_chapter("Layers") == "layers"


# ---------------------------------------------------------------- one graded run of a broken implementation

SELECTED = ("(test_layers.py and softmax_rows) or (test_layers.py and softmax_equals_its_definition_along) "
            "or (test_rope.py and position_zero) or tiktoken_export_of_a_vocabulary_built_by_hand")


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """A copy of the reference with a wrong softmax (normalised along the last axis whatever `dim` is), a rope.py
    that does not compile, and tiktoken made unimportable; graded once, its records are rendered by the tests."""
    folder = tmp_path_factory.mktemp("graded") / "broken_impl"
    shutil.copytree(ROOT / "reference", folder, ignore=shutil.ignore_patterns("__pycache__"))
    layers = (folder / "layers.py").read_text()
    wrong = layers.replace("return exp / exp.sum(dim=dim, keepdim=True)", "return exp / exp.sum(dim=-1, keepdim=True)")
    assert wrong != layers, "the reference's softmax changed: update this test's mutation"
    (folder / "layers.py").write_text(wrong)
    rope = (folder / "rope.py").read_text().splitlines()
    rope.append("def broken(:")
    (folder / "rope.py").write_text("\n".join(rope) + "\n")
    # The grading child ignores PYTHONPATH and the like (python -I, a clean environment): the implementation itself
    # makes tiktoken unimportable. That skips the property only where the spec shares the submission's process: a
    # machine without bubblewrap (as here); with the sandboxed worker only the grader's own imports decide (below).
    (folder / "__init__.py").write_text("import sys\n\nsys.modules['tiktoken'] = None\n")
    in_process = dataclasses.replace(Sandbox.detect(hidden=(ROOT / "reference",)), bwrap=None)
    records = run_spec(str(folder), seed=1, extra=["-k", SELECTED], sandbox=in_process).records
    return folder, records, len(rope)


@pytest.mark.skipif(Sandbox.detect().bwrap is None, reason="the sandboxed worker needs bubblewrap")
def test_a_chapter_that_hangs_spends_its_own_time_and_the_others_of_its_run_are_still_graded(tmp_path):
    folder = tmp_path / "hanging_impl"
    shutil.copytree(ROOT / "reference", folder, ignore=shutil.ignore_patterns("__pycache__"))
    with (folder / "rope.py").open("a") as rope:
        rope.write("\n\ndef apply_rope(*args, **kwargs):\n    while True:\n        pass\n")
    run = run_spec(str(folder), seed=1, jobs=1, limits=Limits(wall_seconds=15),
                   extra=["-k", "(test_rope.py and position_zero) or (test_layers.py and softmax_rows)"])
    outcomes = {record["nodeid"].split("::")[0].split("/")[-1]: record for record in run.records}
    assert outcomes["test_layers.py"]["outcome"] == "passed", run.records
    assert outcomes["test_rope.py"]["outcome"] == "failed" and "time limit" in outcomes["test_rope.py"]["message"], (
        run.records)
    assert [set(files.split(" + ")) for files in run.seconds] == [{"test_layers.py", "test_rope.py"}], run.seconds
    assert not run.problems, run.problems  # one run of both files, within its time


@pytest.mark.skipif(Sandbox.detect().bwrap is None, reason="the sandboxed worker needs bubblewrap")
def test_a_submission_that_hides_a_package_cannot_make_a_property_skip(tmp_path):
    folder = tmp_path / "hiding_impl"
    shutil.copytree(ROOT / "reference", folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "__init__.py").write_text("import sys\n\nsys.modules['tiktoken'] = None\n")
    run = run_spec(str(folder), seed=1, extra=["-k", "tiktoken_export_of_a_vocabulary_built_by_hand"])
    outcomes = {record["outcome"] for record in run.records}
    assert outcomes == {"failed"} and any("tiktoken" in record.get("message", "") for record in run.records), (
        run.records)


def test_every_failing_property_of_the_first_unfinished_chapter_is_listed_with_its_example(broken):
    folder, records, _ = broken
    out = render(str(folder), 1, score(records))
    details = out[out.index("Chapter 4 (layers)"):]
    for name, message in [("test_softmax_equals_its_definition_along_any_dim", "must equal exp(x) / sum(exp(x))"),
                          ("test_softmax_rows_are_probability_distributions", "must sum to 1")]:
        assert f"✗ {name}" in details, f"{name} fails and must be listed:\n{out}"
        block = details[details.index(name):].split("✗")[0]
        assert message in block and "example: " in block and "tensor(" in block, (
            f"{name} is shown with its message and hypothesis's shrunk example:\n{block}")
    assert "Chapter 5" not in out, "only the chapter being worked on is detailed"
    assert "test_layers.py" in details.split("Read: ")[1].splitlines()[0], "a hint says which spec file to read"


def test_a_module_that_does_not_compile_shows_the_error_file_line_and_code(broken):
    folder, records, line = broken
    out = render(str(folder), 1, score(records), chapter="rope")
    details = out[out.index("Chapter 5 (rope)"):]
    assert "SyntaxError" in details and "rope.py" in details and f"line {line}" in details, details
    assert "def broken(:" in details, f"the offending line is shown:\n{details}"


def test_a_skipped_test_counts_in_the_total_and_says_what_to_install(broken):
    folder, records, _ = broken
    scores = score(records)
    tokenizer = scores["tokenizer"]
    assert (tokenizer.passed, tokenizer.total, len(tokenizer.skipped)) == (0, 1, 1), tokenizer
    out = render(str(folder), 1, scores)
    row = next(line for line in out.splitlines() if " tokenizer " in line)
    assert row.split()[2:6] == ["0", "/", "1", "1"], f"the table shows the skipped test:\n{out}"
    skipped = out[out.index("Skipped:"):]
    assert "test_tiktoken_export_of_a_vocabulary_built_by_hand" in skipped and "could not import 'tiktoken'" in skipped
    assert "pip install" in skipped and "[interop]" in skipped, skipped


# ------------------------------------------------------------------------------------- scoring and rendering

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


def test_score_counts_a_failure_in_any_phase_and_a_skip_in_the_total():
    records = [
        {"nodeid": "spec/test_layers.py::test_a", "when": "call", "outcome": "passed", "message": ""},
        {"nodeid": "spec/test_layers.py::test_a", "when": "teardown", "outcome": "failed", "message": "boom"},
        {"nodeid": "spec/test_layers.py::test_b", "when": "call", "outcome": "passed", "message": ""},
        {"nodeid": "spec/test_layers.py::test_c", "when": "setup", "outcome": "skipped", "message": "no gpu"},
    ]
    layers = score(records)["layers"]
    assert (layers.passed, layers.total, layers.first_failure) == (1, 3, "test_a: boom")
    assert [(s.name, s.reason) for s in layers.skipped] == [("test_c", "no gpu")]


def test_the_chapter_asked_for_is_detailed_and_the_first_unfinished_one_by_default():
    records = [
        {"nodeid": "spec/test_text.py::test_a", "when": "call", "outcome": "passed", "message": ""},
        {"nodeid": "spec/test_layers.py::test_b", "when": "call", "outcome": "failed", "message": "b broke",
         "example": "x=1", "line": 7},
        {"nodeid": "spec/test_layers.py::test_c", "when": "call", "outcome": "failed", "message": "c broke"},
        {"nodeid": "spec/test_rope.py::test_d", "when": "call", "outcome": "failed", "message": "d broke"},
    ]
    out = render("exercises", 0, score(records))
    assert "Chapter 4 (layers): 2 of 2 properties fail" in out and "b broke" in out and "c broke" in out, out
    assert "example: x=1" in out and "test_layers.py:7" in out, out
    assert "d broke" not in out and "1 failing, first test_d" in out, out
    out = render("exercises", 0, score(records), chapter="rope")
    assert "Chapter 5 (rope)" in out and "d broke" in out and "b broke" not in out, out
    everything = render("exercises", 0, score(records[:1]))
    assert "Every property passes." in everything, everything


def test_the_install_hint_names_the_extra_that_brings_a_missing_package():
    assert "[interop]" in install_hint("could not import 'transformers': No module named 'transformers'")
    assert install_hint("could not import 'nosuchthing': No module named 'nosuchthing'") == "pip install nosuchthing"
    assert install_hint("needs a GPU") == ""


def test_a_syntax_error_is_described_on_one_line():
    try:
        compile("x = 1\ndef broken(:\n", "my_impl/layers.py", "exec")
    except SyntaxError as error:
        line = describe_syntax_error(error)
    assert line.startswith("SyntaxError: ") and "my_impl/layers.py, line 2: def broken(:" in line, line


def test_the_shrunk_example_is_one_line_without_the_implementation():
    error = AssertionError("rows must sum to 1")
    error.add_note("Failing test case: test_rows(\n    impl=Implementation('x', package='x'),\n    x=tensor([1.]),\n"
                   "    dim=0,\n)")
    assert shrunk_example(error) == "x=tensor([1.]), dim=0"
    short = AssertionError("no")
    short.add_note("Falsifying example: test_rows(impl=Implementation('x', package='x'), n=3)")
    assert shrunk_example(short) == "n=3"
