"""The exercise generator: stubs from solution markers that name the spec tests to read, no imports left unused,
clear errors for bad markers, a check for staleness."""

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmkata import cli
from llmkata.exercise_generator import (MESSAGE_WIDTH, MarkerError, drop_unused_imports, find_regions, generate,
                                        make_exercise, stale, stub_message, index_spec_tests)
from llmkata.spec.impl import load

REFERENCE = Path(__file__).resolve().parents[1] / "reference"
EXERCISES = Path(__file__).resolve().parents[1] / "exercises"

def stub_messages(source: str) -> list[str]:
    """The message of every `raise NotImplementedError("...")` in `source`."""
    return [ast.literal_eval(node.exc.args[0]) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args
            and getattr(node.exc.func, "id", "") == "NotImplementedError"]


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
    messages = stub_messages(out)
    assert "`layers.Norm.forward` is not implemented yet — chapter 4 (layers): read spec/test_layers.py." in messages, (
        "a stub no spec test reaches points to the spec file")
    assert any(m.startswith("`layers.softmax` is not implemented yet") for m in messages), messages
    compile(out, "exercise", "exec")


def test_a_module_level_region_is_left_out_of_the_exercise():
    source = SOURCE.replace('def helper(x):', '# BEGIN SOLUTION\ndef _fast_softmax(x):\n    return x\n# END SOLUTION\n\n\ndef helper(x):')
    out = make_exercise(source, "layers", "reference/layers.py")
    assert "_fast_softmax" not in out and "BEGIN SOLUTION" not in out, "the region and its markers are gone"
    assert '"""A module."""\n\n\ndef helper(x):' in out, "the blank lines after the region go with it"
    under_a_heading = SOURCE.replace(
        'def helper(x):', '# ---- helpers\n\n# BEGIN SOLUTION\ndef _fast(x):\n    return x\n# END SOLUTION\n\n\ndef helper(x):')
    assert "# ---- helpers\n\n\ndef helper(x):" in make_exercise(under_a_heading, "layers", "reference/layers.py"), (
        "the blank lines around a region left out become one run, as long as the longer of the two")
    assert any(m.startswith("`layers.softmax` is not implemented yet") for m in stub_messages(out)), (
        "the regions inside functions are still stubs")
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


# ------------------------------------------------------------------------------ stubs name the tests to read

SPEC = textwrap.dedent('''\
    import pytest

    CASES = {"silu": lambda x: x}


    def make_norm(impl, d):
        return impl.layers.RMSNorm(d)


    def test_softmax_sums_to_one(impl):
        assert impl.layers.softmax(1) == 1


    def test_norm_is_scale_invariant(impl):
        norm = make_norm(impl, 4)


    def test_through_an_alias(impl):
        layers = impl.layers
        layers.softmax(2)
        layers.gelu(2)


    @pytest.mark.parametrize("name", sorted(CASES))
    def test_by_name(impl, name):
        getattr(impl.layers, name)(1)


    def test_literal_getattr(impl):
        getattr(impl.rope, "apply_rope")


    def helper_that_is_not_a_test(impl):
        impl.layers.Linear(1, 1)
''')


def test_tests_are_found_through_helpers_aliases_and_getattr():
    found = index_spec_tests(SPEC)
    assert found[("layers", "softmax")] == ["test_softmax_sums_to_one", "test_through_an_alias"], "in file order"
    assert found[("layers", "RMSNorm")] == ["test_norm_is_scale_invariant"], "a helper's uses count for its caller"
    assert found[("layers", "gelu")] == ["test_through_an_alias"], "`layers = impl.layers` is followed"
    assert found[("layers", "silu")] == ["test_by_name"], "getattr with a name from a table of the same file"
    assert found[("rope", "apply_rope")] == ["test_literal_getattr"]
    assert ("layers", "Linear") not in found, "only test_* functions are tests"


def test_stub_message_names_the_tests_then_counts_the_rest():
    def message(*tests):
        return stub_message("layers", "RMSNorm.forward", list(tests))

    assert message("test_a") == (
        "`layers.RMSNorm.forward` is not implemented yet — chapter 4 (layers): see test_a in spec/test_layers.py.")
    assert "see test_a and test_b in spec/test_layers.py." in message("test_a", "test_b")
    assert "see test_a, test_b and test_c in" in message("test_a", "test_b", "test_c")
    assert "see test_a, test_b, test_c and 2 more in" in message("test_a", "test_b", "test_c", "test_d", "test_e")
    long = [f"test_{i}_" + "x" * 60 for i in range(5)]
    assert len(message(*long)) <= MESSAGE_WIDTH and f"see {long[0]} and 4 more in" in message(*long), (
        "long test names: fewer are named, so that the message stays readable")
    assert message().endswith("— chapter 4 (layers): read spec/test_layers.py."), "no test found: the spec file"


def test_stub_message_reads_the_installed_spec():
    softmax = stub_message("layers", "softmax")
    assert re.search(r"see test_softmax_\w+.* in spec/test_layers\.py\.$", softmax), softmax
    assert "test_rmsnorm_" in stub_message("layers", "RMSNorm.forward"), "a method names the tests of its class"


def test_every_shipped_stub_names_tests_and_fits_on_the_grade_table():
    texts = [message for path in EXERCISES.glob("*.py") for message in stub_messages(path.read_text())]
    assert texts and all(len(t) <= MESSAGE_WIDTH for t in texts), max(texts, key=len)
    assert sum(": see test_" in t for t in texts) > len(texts) / 2, "most stubs name the tests that exercise them"


def test_long_stub_messages_are_split_over_lines_that_fit():
    out = make_exercise(SOURCE, "layers", "reference/layers.py")
    assert max(map(len, out.splitlines())) <= 120, out
    compile(out, "exercise", "exec")


# ---------------------------------------------------------------------------------------- no unused imports


def test_imports_nothing_uses_are_dropped_whole_or_name_by_name():
    source = textwrap.dedent('''\
        from __future__ import annotations

        import heapq
        import math
        import os.path
        from collections import Counter, defaultdict, deque as dq
        from typing import Iterator

        from .files import write_bytes_atomic

        __all__ = ["deque_free", "dq"]
        CONSTANT = math.pi


        def f(kernels: "Iterator[int]", x: Counter) -> None:
            heapq = 1
            return os.path.join(heapq)
    ''')
    out = drop_unused_imports(source)
    assert "from __future__ import annotations\n" in out, "__future__ imports stay"
    assert "import heapq" not in out, "a name only a local of the same name shadows is unused"
    assert "import math\n" in out and "import os.path\n" in out, "used imports stay"
    assert "from collections import Counter, deque as dq\n" in out, "single unused names go, `as` is kept"
    assert "from typing import Iterator\n" in out, "names inside string annotations count as used"
    assert "write_bytes_atomic" not in out, "an unused relative import goes"
    assert "import os.path\nfrom collections" in out and "deque as dq\nfrom typing import Iterator\n\n__all__" in out, (
        "a statement removed from between blank lines takes one of them along:\n" + out)
    assert drop_unused_imports(out) == out, "nothing more to drop"
    compile(out, "exercise", "exec")


def test_a_shortened_import_too_long_for_one_line_is_wrapped():
    names = [f"name_number_{i}" for i in range(12)]
    source = f"from .layers import ({', '.join(names)}, unused)  # why\n\nx = [{', '.join(names)}]\n"
    out = drop_unused_imports(source)
    assert "unused" not in out and "# why" in out and out.startswith("from .layers import (\n    name_number_0,"), out
    assert max(len(line) for line in out.splitlines()[:-1]) <= 120, out
    compile(out, "exercise", "exec")


def unused_imports(folder: Path) -> list[str]:
    """What ruff reports as unused imports (F401) in `folder`, one line each."""
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--isolated", "--no-cache", "--select", "F401",
                          "--output-format", "concise", str(folder)], capture_output=True, text=True)
    assert run.returncode in (0, 1), f"ruff did not run (is the dev extra installed?): {run.stderr}"
    return [line for line in run.stdout.splitlines() if "F401" in line]


def test_the_unused_import_check_catches_one(tmp_path):
    source = (EXERCISES / "layers.py").read_text()
    (tmp_path / "layers.py").write_text(source.replace("import torch\n", "import torch\nimport heapq\n", 1))
    found = unused_imports(tmp_path)
    assert len(found) == 1 and "heapq" in found[0], found


def test_no_exercise_imports_what_it_does_not_use():
    found = unused_imports(EXERCISES)
    assert not found, "the exercises import names nothing in them uses:\n" + "\n".join(found)


# ------------------------------------------------------------- no mention of code the learner does not have


def top_level_names(source: str) -> set[str]:
    """The names a module (or a fragment of one) binds at its top level: defs, classes, assignments, imports."""
    names = set()
    for statement in ast.parse(source).body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(statement.name)
        elif isinstance(statement, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            names.update(n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(statement, (ast.Import, ast.ImportFrom)):
            names.update(alias.asname or alias.name.split(".")[0] for alias in statement.names)
    return names


def left_out_private_names(reference: Path, exercises: Path) -> dict[str, str]:
    """private name -> reference module, for each `_name` that only a module-level solution region defines."""
    left_out = {}
    for path in sorted(reference.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines(keepends=True)
        exercise = exercises / path.name
        kept = top_level_names(exercise.read_text(encoding="utf-8")) if exercise.exists() else set()
        for region in find_regions(source, str(path)):
            if not region.owner:
                for name in top_level_names("".join(lines[region.begin:region.end - 1])):
                    if name.startswith("_") and name not in kept:
                        left_out[name] = path.stem
    return left_out


def mentions_of_left_out_names(reference: Path, exercises: Path) -> list[str]:
    """'file:line: name' for each place an exercise mentions a private name the exercises do not have."""
    left_out = left_out_private_names(reference, exercises)
    found = []
    for path in sorted(exercises.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        own = top_level_names(text)
        for number, line in enumerate(text.splitlines(), start=1):
            for name, module in sorted(left_out.items()):
                if name not in own and re.search(rf"(?<!\w){re.escape(name)}(?!\w)", line):
                    found.append(f"exercises/{path.name}:{number}: `{name}` (only in reference/{module}.py): "
                                 f"{line.strip()}")
    return found


def test_the_mention_check_catches_a_docstring_naming_left_out_code(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    ref.mkdir()
    (ref / "layers.py").write_text(textwrap.dedent('''\
        # BEGIN SOLUTION
        def _fast_norm(x):
            return x
        # END SOLUTION


        def norm(x):
            """Uses _fast_norm, which the exercise does not have."""
            # BEGIN SOLUTION
            return _fast_norm(x)
            # END SOLUTION
    '''))
    generate(ref, out)
    found = mentions_of_left_out_names(ref, out)
    assert len(found) == 1 and "exercises/layers.py:" in found[0] and "`_fast_norm`" in found[0], found


def test_no_exercise_mentions_a_private_name_it_does_not_have():
    found = mentions_of_left_out_names(REFERENCE, EXERCISES)
    assert not found, "docstrings or comments of the exercises name code left out of them:\n" + "\n".join(found)
