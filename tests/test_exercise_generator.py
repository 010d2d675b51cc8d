"""The exercise generator: stubs from solution markers, clear errors for bad markers, a check for staleness."""

import textwrap
from pathlib import Path

import pytest

from llmkata import cli
from llmkata.exercise_generator import MarkerError, find_regions, generate, make_exercise, stale
from llmkata.impl import load

REFERENCE = Path(__file__).resolve().parents[1] / "reference"
EXERCISES = Path(__file__).resolve().parents[1] / "exercises"

SOURCE = textwrap.dedent('''\
    """A module."""


    def helper(x):
        return x + 1


    class Norm:
        def forward(self, x):
            """Normalise x."""
            y = helper(x)
            # BEGIN SOLUTION
            y = y * 2
            return y
            # END SOLUTION


    def softmax(x, dim=-1):
        """Docstring kept."""
        # BEGIN SOLUTION
        return x
        # END SOLUTION
''')


def test_stub_replaces_each_region_and_keeps_the_rest():
    out = make_exercise(SOURCE, "layers", "reference/layers.py")
    assert "def helper(x):\n    return x + 1" in out, "unmarked helpers are kept"
    assert '"""Docstring kept."""' in out and "def softmax(x, dim=-1):" in out, "signatures and docstrings are kept"
    assert "y = y * 2" not in out and "return x\n" not in out, "marked solutions are removed"
    assert "        y = helper(x)\n        raise NotImplementedError(" in out, "the stub sits at the region's indentation"
    assert "`layers.Norm.forward` is not implemented yet — chapter 4 (layers): read spec/test_layers.py." in out
    assert "`layers.softmax` is not implemented yet" in out
    compile(out, "exercise", "exec")


def test_a_module_level_region_is_left_out_of_the_exercise():
    source = SOURCE.replace('def helper(x):', '# BEGIN SOLUTION\ndef _fast_softmax(x):\n    return x\n# END SOLUTION\n\n\ndef helper(x):')
    out = make_exercise(source, "layers", "reference/layers.py")
    assert "_fast_softmax" not in out and "BEGIN SOLUTION" not in out, "the region and its markers are gone"
    assert '"""A module."""\n\n\ndef helper(x):' in out, "the blank lines after the region go with it"
    assert "`layers.softmax` is not implemented yet" in out, "the regions inside functions are still stubs"
    compile(out, "exercise", "exec")


@pytest.mark.parametrize("source, complaint", [
    ("def f():\n    # BEGIN SOLUTION\n    return 1\n", ":2: # BEGIN SOLUTION is never closed"),
    ("def f():\n    return 1\n    # END SOLUTION\n", ":3: # END SOLUTION without a # BEGIN SOLUTION"),
    ("def f():\n    # BEGIN SOLUTION\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n", ":3: # BEGIN SOLUTION inside"),
    ("class C:\n    # BEGIN SOLUTION\n    x = 1\n    # END SOLUTION\n", ":2: a solution region must sit inside a function"),
    ("def f():\n    return 1  # BEGIN SOLUTION\n", ":2: a solution marker must stand alone"),
])
def test_bad_markers_give_one_clear_error_with_file_and_line(source, complaint):
    with pytest.raises(MarkerError, match=complaint):
        find_regions(source, "bad.py")
    with pytest.raises(MarkerError, match=r"^bad\.py:"):
        find_regions(source, "bad.py")


def test_bad_markers_write_nothing(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    ref.mkdir()
    (ref / "good.py").write_text("def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n")
    (ref / "bad.py").write_text("def f():\n    # BEGIN SOLUTION\n    return 1\n")
    with pytest.raises(MarkerError):
        generate(ref, out)
    assert not out.exists() or not any(out.iterdir()), "a bad marker anywhere must leave the exercises untouched"


def test_check_reports_stale_missing_and_extra_files(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    ref.mkdir()
    (ref / "a.py").write_text("def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n")
    assert stale(ref, out) == ["a.py"]
    assert generate(ref, out) == ["a.py"] and stale(ref, out) == []
    (out / "a.py").write_text("edited by hand\n")
    (out / "extra.py").write_text("")
    assert stale(ref, out) == ["a.py", "extra.py"]
    generate(ref, out)
    assert stale(ref, out) == [] and not (out / "extra.py").exists()


def test_shipped_exercises_are_in_sync_with_the_reference(capsys):
    assert cli.main(["exercises", "--check"]) == 0, capsys.readouterr().err


def test_exercises_can_be_written_to_a_fresh_folder_and_graded_from_there(tmp_path, capsys):
    target = tmp_path / "my_impl"
    assert cli.main(["exercises", "--out", str(target)]) == 0
    assert stale(REFERENCE, target) == []
    impl = load(str(target))
    assert impl.package == "my_impl"
    with pytest.raises(NotImplementedError, match=r"`layers\.softmax` is not implemented yet — chapter 4"):
        impl.layers.softmax(None)


def test_writing_over_a_file_is_one_clear_message(tmp_path, capsys):
    target = tmp_path / "not_a_folder"
    target.write_text("")
    assert cli.main(["exercises", "--out", str(target)]) == 2
    assert "llmkata exercises:" in capsys.readouterr().err
