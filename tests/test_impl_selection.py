"""Choosing the implementation under test: reference, exercises, a folder, a module, $LLMKATA_IMPL."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import llmkata.reference.layers
from llmkata.spec.impl import Missing, load

ROOT = Path(__file__).resolve().parents[1]


def test_aliases_resolve_to_the_packaged_implementations():
    assert load("reference").package == "llmkata.reference"
    assert load("exercises").package == "llmkata.exercises"


def test_default_is_the_environment_variable_then_the_reference(monkeypatch):
    monkeypatch.delenv("LLMKATA_IMPL", raising=False)
    assert load().name == "reference"
    monkeypatch.setenv("LLMKATA_IMPL", "exercises")
    assert load().name == "exercises"


def test_a_folder_is_imported_under_its_own_name_without_touching_the_reference(tmp_path):
    folder = tmp_path / "learner_copy"
    shutil.copytree(ROOT / "reference", folder)
    impl = load(str(folder))
    assert impl.package == "learner_copy"
    softmax = impl.layers.softmax
    assert softmax.__module__ == "learner_copy.layers"
    assert Path(sys.modules["learner_copy.layers"].__file__).parent == folder
    assert softmax is not llmkata.reference.layers.softmax


def test_a_folder_without_init_works(tmp_path):
    folder = tmp_path / "bare_impl"
    folder.mkdir()
    (folder / "layers.py").write_text("def silu(x):\n    return 'mine'\n")
    assert load(str(folder)).layers.silu(1) == "mine"


def test_missing_module_and_name_fail_with_a_sentence(tmp_path):
    folder = tmp_path / "partial_impl"
    folder.mkdir()
    (folder / "layers.py").write_text("def silu(x):\n    return x\n")
    impl = load(str(folder))
    with pytest.raises(Missing, match=r"`layers\.softmax` is missing from .*partial_impl — chapter 4 \(layers\): read spec/test_layers\.py"):
        impl.layers.softmax
    with pytest.raises(Missing, match=r"module `rope` is missing"):
        impl.rope.apply_rope


def test_bad_choices_give_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        load(str(tmp_path / "nowhere") + "/")
    with pytest.raises(ValueError, match="neither 'reference', 'exercises', a folder, nor an importable module"):
        load("no_such_module_anywhere")
    clash = tmp_path / "json"
    clash.mkdir()
    with pytest.raises(ValueError, match="already loaded"):
        load(str(clash))


def run_spec(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pytest", "spec", "-p", "no:randomly", *args], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "300", **(env or {})})


def test_spec_against_exercises_runs_to_the_end_with_one_sentence_per_stub():
    run = run_spec("--impl", "exercises", "-k", "test_layers.py and not contract", "-q", "-rf")
    out = run.stdout
    assert run.returncode == 1, out[-2000:]
    assert "error" not in out.lower().split("short test summary")[-1], "no collection or setup errors: " + out[-2000:]
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert len(failed) >= 20 and all("is not implemented yet — chapter 4 (layers)" in line for line in failed), out[-3000:]
    assert " passed" not in out.splitlines()[-1], "no layers property passes on the stubs"


def test_report_header_names_the_implementation_under_test():
    run = run_spec("-k", "silu", env={"LLMKATA_IMPL": "exercises"})
    assert "llmkata: implementation under test: exercises (" in run.stdout, run.stdout[:2000]


def test_unknown_implementation_is_a_usage_error():
    run = run_spec("--impl", "./does/not/exist")
    assert run.returncode == 4 and "no implementation at './does/not/exist'" in run.stderr, run.stderr
