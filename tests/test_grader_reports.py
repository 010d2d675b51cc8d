"""The grade's reports (llmkata JSON, Gradescope, PrairieLearn, JUnit XML), the rubric, and forbidden shortcuts."""

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from llmkata.grade import SpecRun, apply_shortcuts, score
from llmkata.reports import Rubric, grade_tests, to_gradescope, to_json, to_junit, to_prairielearn
from llmkata.shortcuts import find, scan

ROOT = Path(__file__).resolve().parents[1]
RECORDS = [
    {"nodeid": "test_layers.py::test_a", "when": "call", "outcome": "passed"},
    {"nodeid": "test_layers.py::test_b[softmax]", "when": "call", "outcome": "failed", "message": "b broke",
     "example": "x=1"},
    {"nodeid": "test_layers.py::test_c", "when": "setup", "outcome": "skipped", "message": "no gpu"},
    {"nodeid": "test_rope.py::test_d", "when": "call", "outcome": "passed"},
]
EXPECTED = [record["nodeid"] for record in RECORDS]
RUN = SpecRun(RECORDS, EXPECTED, layers=["no network", "rlimits"], warning="", seconds={"test_layers.py": 1.0})


def _report(rubric: Rubric):
    graded = grade_tests(score(RECORDS, EXPECTED), rubric)
    return graded, to_json("my_impl", 7, graded, RUN)


def test_points_are_shared_by_weight_and_a_skip_earns_nothing():
    rubric = Rubric({"layers": 12.0, "rope": 5.0}, weights={"test_a": 2.0})
    graded, report = _report(rubric)
    points = {t.name: (t.score, t.max_score) for t in graded}
    assert points == {"test_a": (6.0, 6.0), "test_b[softmax]": (0.0, 3.0), "test_c": (0.0, 3.0),
                      "test_d": (5.0, 5.0)}, points
    assert (report["score"], report["max_score"], report["fraction"]) == (11.0, 17.0, round(11 / 17, 6))
    assert report["schema"] == 1 and report["seed"] == 7 and report["sandbox"]["layers"] == ["no network", "rlimits"]


def test_gradescope_prairielearn_and_junit_reports_carry_every_test():
    graded, report = _report(Rubric({"layers": 3.0, "rope": 1.0}))
    gradescope = to_gradescope(report, graded)
    assert gradescope["score"] == 2.0 and len(gradescope["tests"]) == 4
    failing = next(t for t in gradescope["tests"] if "test_b" in t["name"])
    assert failing["score"] == 0 and failing["max_score"] == 1.0 and "b broke" in failing["output"]
    assert "example: x=1" in failing["output"] and failing["visibility"] == "visible"
    prairie = to_prairielearn(report, graded)
    assert prairie["score"] == 0.5 and prairie["gradable"] is True
    assert sum(t["points"] for t in prairie["tests"]) == 2.0 and sum(t["max_points"] for t in prairie["tests"]) == 4.0
    root = ElementTree.fromstring(to_junit(report, graded).split("\n", 1)[1])
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("4", "1", "1")
    cases = {case.get("name"): case for case in root.iter("testcase")}
    assert cases["test_b[softmax]"].find("failure").get("message") == "b broke"
    assert cases["test_c"].find("skipped") is not None and cases["test_a"].find("failure") is None


@pytest.mark.parametrize("text, problem", [
    ("[chapters]\nlayers = -1\n", "numbers ≥ 0"),
    ("[chapters]\nlayers = 'ten'\n", "numbers ≥ 0"),
    ("[forbidden]\nlayers = 'torch.softmax'\n", "list of names"),
    ("[chapters\n", "not valid TOML"),
])
def test_a_bad_rubric_is_one_clear_error(tmp_path, text, problem):
    path = tmp_path / "rubric.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem):
        Rubric.load(path)


def test_the_shipped_rubric_forbids_nothing_the_reference_or_the_exercises_use():
    rubric = Rubric.load()
    assert rubric.forbidden["attention"] and rubric.chapters["layers"] > 0
    assert scan(ROOT / "reference", rubric.forbidden) == {} and scan(ROOT / "exercises", rubric.forbidden) == {}


def test_shortcuts_are_found_through_aliases_attributes_and_strings():
    forbidden = Rubric.load().forbidden
    source = ("import torch\nimport torch.nn.functional as F\nfrom torch.nn import functional\n"
              "from torch.nn.functional import scaled_dot_product_attention as sdpa\nfrom . import layers\n"
              "def attend(q, k, v, x):\n"
              "    ok = layers.softmax(x) @ v\n"                                        # line 7: the learner's own
              "    a = F.scaled_dot_product_attention(q, k, v)\n"                      # line 8
              "    b = functional.scaled_dot_product_attention(q, k, v)\n"             # line 9
              "    c = sdpa(q, k, v)\n"                                                # line 10
              "    d = getattr(F, 'scaled_dot_product_attention')(q, k, v)\n"          # line 11
              "    e = torch.nn.MultiheadAttention(4, 2)\n"                            # line 12
              "    return ok\n")
    lines = sorted({use.line for use in find(source, "attention", forbidden["attention"])})
    assert lines == [8, 9, 10, 11, 12], lines
    tensor_method = "from . import layers\ndef f(x):\n    return layers.softmax(x) + x.softmax(-1)\n"
    assert [(u.line, u.name) for u in find(tensor_method, "layers", forbidden["layers"])] == [
        (3, "torch.Tensor.softmax")]
    assert find("def broken(:\n", "layers", forbidden["layers"]) == []


def test_a_chapter_that_uses_a_shortcut_earns_nothing_and_says_where(tmp_path):
    folder = tmp_path / "my_impl"
    folder.mkdir()
    (folder / "layers.py").write_text("import torch\n\ndef softmax(x, dim=-1):\n    return torch.softmax(x, dim)\n")
    scores = score(RECORDS, EXPECTED)
    apply_shortcuts(scores, str(folder), Rubric.load().forbidden)
    layers, rope = scores["layers"], scores["rope"]
    assert layers.passed == 0 and rope.passed == 1
    assert "forbidden shortcut" in layers.first_failure and "line 4 uses torch.softmax" in layers.first_failure


def test_grade_writes_every_report_and_min_score_sets_the_exit_code(tmp_path):
    folder = tmp_path / "cheater"
    shutil.copytree(ROOT / "reference", folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "attention.py").write_text((folder / "attention.py").read_text()
                                         + "\n_fast = torch.nn.functional.scaled_dot_product_attention\n")
    paths = {kind: tmp_path / f"{kind}.out" for kind in ("json", "gradescope", "prairielearn", "junit")}
    flags = [part for kind, path in paths.items() for part in (f"--{kind}", str(path))]
    run = subprocess.run([sys.executable, "-m", "llmkata.cli", "grade", str(folder), "--seed", "3", "-k",
                          "softmax_rows or attention_weights_are_rows or run_world_returns", "--min-score", "0.9", *flags],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 1, f"attention scores nothing, so the score is below 0.9:\n{run.stdout}{run.stderr}"
    report = json.loads(paths["json"].read_text())
    chapters = {c["module"]: c for c in report["chapters"]}
    assert chapters["layers"]["passed"] == chapters["layers"]["total"] > 0, chapters["layers"]
    # A folder's own launcher starts processes that import it by name: they must find it in the sandbox too.
    assert chapters["parallel"]["passed"] == chapters["parallel"]["total"] > 0, chapters["parallel"]
    assert chapters["attention"]["passed"] == 0 and chapters["attention"]["total"] > 0, chapters["attention"]
    assert "forbidden shortcut" in chapters["attention"]["tests"][0]["message"]
    assert json.loads(paths["gradescope"].read_text())["score"] == report["score"]
    assert json.loads(paths["prairielearn"].read_text())["score"] == report["fraction"]
    assert ElementTree.parse(paths["junit"]).getroot().tag == "testsuites"
    assert "score:" in run.stdout and "sandbox:" in run.stdout, run.stdout


# ------------------------------------------------------------------------------------------------ grade-many

def test_grade_many_grades_folders_and_zips_into_a_summary_and_resumes(tmp_path):
    import csv
    import zipfile

    good = tmp_path / "alice"
    shutil.copytree(ROOT / "reference", good, ignore=shutil.ignore_patterns("__pycache__"))
    stubs = tmp_path / "bob.zip"
    with zipfile.ZipFile(stubs, "w") as zipped:
        for path in (ROOT / "exercises").glob("*.py"):
            zipped.write(path, f"bob_impl/{path.name}")
    evil = tmp_path / "mallory.zip"
    with zipfile.ZipFile(evil, "w") as zipped:
        zipped.writestr("../escaped.py", "x = 1\n")
    command = [sys.executable, "-m", "llmkata.cli", "grade-many", str(good), str(stubs), str(evil),
               "--out", str(tmp_path / "grades"), "-k", "softmax_rows"]
    first = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    rows = {row["submission"]: row for row in csv.DictReader(open(tmp_path / "grades" / "summary.csv"))}
    assert float(rows["alice"]["fraction"]) == 1.0 and float(rows["bob"]["fraction"]) == 0.0, rows
    assert "points outside the archive" in rows["mallory"]["error"], rows["mallory"]
    assert not (tmp_path / "escaped.py").exists()
    second = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert second.returncode == 0 and second.stdout.count("(already graded)") == 2, second.stdout


# ----------------------------------------------------------------------------------------------- autograders

@pytest.mark.parametrize("platform, files", [("gradescope", {"setup.sh", "run_autograder"}),
                                             ("prairielearn", {"Dockerfile", "run.sh"}),
                                             ("github", {"classroom.yml"})])
def test_autograder_writes_a_platform_bundle_and_never_replaces_a_file(tmp_path, platform, files):
    from llmkata.cli import main

    out = tmp_path / platform
    assert main(["autograder", platform, "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == files
    text = "\n".join(p.read_text() for p in out.iterdir())
    assert "llmkata grade" in text and "bubblewrap" in text, text
    for flag in ("--gradescope", "--prairielearn", "--junit"):
        if flag in text:
            assert flag in subprocess.run([sys.executable, "-m", "llmkata.cli", "grade", "--help"],
                                          capture_output=True, text=True).stdout
    (out / sorted(files)[0]).write_text("mine")
    assert main(["autograder", platform, "--out", str(out)]) == 2
    assert (out / sorted(files)[0]).read_text() == "mine", "a file already there is never replaced"
