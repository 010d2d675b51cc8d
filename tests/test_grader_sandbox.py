"""Hostile submissions against the grader's sandbox: each is graded, earns no point more than the plain stubs,
finishes within its limits, changes nothing outside its scratch folder, and leaves no process behind.

Each submission is a copy of the exercises whose `__init__.py` (run when the spec imports it) does something a
determined student might try. They are graded on a few properties of one chapter, two at a time.
"""

import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import llmkata.spec
from llmkata.grade import expected_ids, run_spec, score
from llmkata.sandbox import Limits, Sandbox

ROOT = Path(__file__).resolve().parents[1]
SELECTION = ["-k", "test_layers.py and (softmax_rows or log_softmax_equals)"]
LIMITS = Limits(wall_seconds=40, memory_bytes=3 * 2**30, processes=128, output_bytes=100_000)
MARK = "llmkata-hostile-marker"  # every process a submission starts carries it, so that leftovers can be found

SANDBOX = Sandbox.detect(hidden=(ROOT / "reference", ROOT / ".git", ROOT / "build", ROOT / "tests"))
if SANDBOX.missing:
    pytest.skip(f"the full sandbox is not available here: {SANDBOX.warning()} (install bubblewrap, run as root with "
                "cgroup v1 pids and memory)", allow_module_level=True)

HOSTILE = {
    "infinite_loop": "while True:\n    pass\n",
    "memory_bomb": "blocks = []\nwhile True:\n    blocks.append(bytearray(2**26))\n",
    "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "exit_zero_at_import": "import os\nos._exit(0)\n",
    "sys_exit_at_import": "import sys\nsys.exit(0)\n",
    "prints_100_mb": "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 2**20)\n",
    "skips_every_test": (
        "import pytest\nfrom . import layers\n"
        "def _skip(*args, **kwargs):\n    pytest.skip('nothing to see')\n"
        "layers.softmax = layers.log_softmax = _skip\n"),
    "reads_the_reference": (
        "import importlib, pathlib\n"
        "source = None\n"
        "for route in ('llmkata.reference.layers', 'reference.layers'):\n"
        "    try:\n        source = importlib.import_module(route)\n        break\n"
        "    except Exception:\n        pass\n"
        "for path in [pathlib.Path(llmkata_root) / 'reference' / 'layers.py' for llmkata_root in ROOTS]:\n"
        "    if path.exists():\n        source = path.read_text()\n"
        "assert source is None, 'the reference was reachable'\n"),
    "writes_the_spec": (
        "import pathlib\n"
        "for target in [pathlib.Path(SPEC) / 'test_layers.py', pathlib.Path(SPEC) / 'conftest.py']:\n"
        "    try:\n        target.write_text('def test_nothing():\\n    pass\\n')\n"
        "    except OSError:\n        pass\n"),
    "conftest_and_sitecustomize": "",  # the files below do the work, if anything loads them
    "connects_to_the_network": (
        "import socket\n"
        "try:\n    socket.create_connection(('127.0.0.1', PORT), timeout=3).sendall(b'stolen')\n"
        "except OSError:\n    pass\n"),
    "daemon_outlives_the_grade": (
        "import os, time\n"
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        os.execvp('sleep', ['sleep', '300', MARK])\n    os._exit(0)\n"),
    "grandchild_holds_the_pipe": (
        "import subprocess\nsubprocess.Popen(['sleep', '300', MARK])\nimport os\nos._exit(0)\n"),
    # The selected properties are of a chapter whose assertions run in the grader's process (every chapter but those
    # in WHOLE_IN_SANDBOX): what the submission patches in its own process cannot reach them.
    "forges_the_results": (
        "import atexit, glob, json, os\n"
        "def forge():\n"
        "    for path in glob.glob('/tmp/**/results.jsonl', recursive=True) + [os.environ.get('LLMKATA_RESULTS', '')]:\n"
        "        try:\n            open(path, 'a').write(json.dumps({'nodeid': 'x', 'when': 'call', "
        "'outcome': 'passed'}) + '\\n')\n"
        "        except OSError:\n            pass\n"
        "atexit.register(forge)\nforge()\n"),
    "patches_pytest_and_the_comparators": (
        "import torch, torch.testing\n"
        "torch.testing.assert_close = lambda *args, **kwargs: None\n"
        "torch.allclose = lambda *args, **kwargs: True\n"
        "try:\n    import _pytest.python\n"
        "    _pytest.python.Function.runtest = lambda self: None\n"
        "except ImportError:\n    pass\n"),
    "returns_a_tensor_that_equals_everything": (
        "import torch\nfrom . import layers\n"
        "class Equal(torch.Tensor):\n"
        "    def __eq__(self, other):\n        return True\n"
        "    def allclose(self, *args, **kwargs):\n        return True\n"
        "def _forged(x, dim=-1):\n    return torch.zeros_like(x).as_subclass(Equal)\n"
        "layers.softmax = layers.log_softmax = _forged\n"),
    "writes_the_graders_stdout_through_proc": (
        "import os\n"
        "for pid in os.listdir('/proc'):\n"
        "    if pid.isdigit() and pid != str(os.getpid()):\n"
        "        try:\n            open(f'/proc/{pid}/fd/1', 'w').write('FORGED 100%\\n')\n"
        "        except OSError:\n            pass\n"),
}


def _listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    received, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                connection, _ = server.accept()
                received.append(connection.recv(100))
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    return server, received, stop


def _digest(folder: Path, names: tuple[str, ...] = ("*",)) -> str:
    hasher = hashlib.sha256()
    for path in sorted(p for name in names for p in folder.rglob(name)):
        if path.is_file() and "__pycache__" not in path.parts:
            hasher.update(str(path).encode() + path.read_bytes())
    return hasher.hexdigest()


def _leftovers() -> list[str]:
    found = subprocess.run(["pgrep", "-af", MARK], capture_output=True, text=True).stdout.splitlines()
    return [line for line in found if "pgrep" not in line]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Every hostile submission graded once (two at a time), with the stubs as the baseline."""
    server, received, stop = _listener()
    spec_dir = Path(llmkata.spec.__path__[0])
    targets = ("test_layers.py", "conftest.py")  # what writes_the_spec tries to replace
    spec_before = _digest(spec_dir, targets)
    folders = {}
    for name, code in {"plain_stubs": "", **HOSTILE}.items():
        folder = tmp_path_factory.mktemp(name) / f"submission_{name}"
        shutil.copytree(ROOT / "exercises", folder, ignore=shutil.ignore_patterns("__pycache__"))
        header = (f"ROOTS = {[str(ROOT), str(Path(llmkata.spec.__path__[0]).parent)]!r}\nSPEC = {str(spec_dir)!r}\n"
                  f"PORT = {server.getsockname()[1]}\nMARK = {MARK!r}\n")
        (folder / "__init__.py").write_text(header + code)
        if name == "conftest_and_sitecustomize":
            forged = "import os\nos._exit(0)\n"
            (folder / "conftest.py").write_text(forged)
            (folder / "sitecustomize.py").write_text(forged)
            (folder / "usercustomize.py").write_text(forged)
        folders[name] = folder
    before = {name: _digest(folder) for name, folder in folders.items()}
    expected = expected_ids(SELECTION)

    def grade(name):
        started = time.monotonic()
        run = run_spec(str(folders[name]), seed=1, extra=SELECTION, jobs=1, limits=LIMITS, sandbox=SANDBOX,
                       expected=expected)
        return name, run, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {name: (run, seconds) for name, run, seconds in pool.map(grade, folders)}
    time.sleep(0.5)
    stop.set()
    server.close()
    return {"runs": runs, "received": received, "spec_changed": _digest(spec_dir, targets) != spec_before,
            "changed": [name for name, folder in folders.items() if _digest(folder) != before[name]],
            "leftovers": _leftovers(), "expected": expected}


def _points(run) -> int:
    return sum(chapter.passed for chapter in score(run.records, run.expected).values())


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_submission_earns_nothing_more_than_the_stubs_and_stays_in_its_limits(graded, name):
    run, seconds = graded["runs"][name]
    baseline, _ = graded["runs"]["plain_stubs"]
    assert _points(run) <= _points(baseline) == 0, f"{name} scored {_points(run)} points: {run.records}"
    scores = score(run.records, run.expected)
    assert sum(chapter.total for chapter in scores.values()) == len(graded["expected"]), (
        f"{name}: every expected test is in the denominator, whatever the submission did")
    assert seconds < LIMITS.wall_seconds + 30, f"{name} took {seconds:.0f} s, past its wall-clock limit"


def test_the_selected_chapter_is_decided_outside_the_submissions_process(graded):
    run, _ = graded["runs"]["forges_the_results"]
    assert run.trusted == ["layers"], run.trusted


def test_nothing_outside_the_scratch_folder_changes_and_no_process_is_left(graded):
    assert not graded["spec_changed"], "a submission changed the installed spec"
    assert not graded["changed"], f"a submission changed its own original folder: {graded['changed']}"
    assert not graded["leftovers"], f"processes outlived their grade: {graded['leftovers']}"
    assert graded["received"] == [], f"a submission reached the network: {graded['received']}"


def test_a_run_that_is_stopped_reports_why_and_the_tests_without_results_fail(graded):
    run, _ = graded["runs"]["infinite_loop"]
    assert any("time limit" in problem for problem in run.problems), run.problems
    scores = score(run.records, run.expected)
    failures = [f for chapter in scores.values() for f in chapter.failures]
    assert failures and all("no result came back" in f.message for f in failures), failures


def test_forged_and_unexpected_result_lines_count_for_nothing():
    expected = ["spec/test_layers.py::test_a", "spec/test_layers.py::test_b"]
    records = [
        {"nodeid": "spec/test_layers.py::test_a", "when": "call", "outcome": "passed"},
        {"nodeid": "spec/test_layers.py::test_a", "when": "call", "outcome": "passed"},  # reported twice
        {"nodeid": "spec/test_layers.py::test_invented", "when": "call", "outcome": "passed"},
    ]
    layers = score(records, expected)["layers"]
    assert (layers.passed, layers.total) == (0, 2), layers
    assert {f.name for f in layers.failures} == {"test_a", "test_b"}, layers.failures


def test_the_report_names_the_sandbox_layers_and_warns_when_one_is_missing():
    missing = Sandbox(bwrap=None, cgroups=False, missing=["namespaces (bubblewrap is not installed)"])
    assert "WARNING" in missing.warning() and "bubblewrap" in missing.warning()
    assert "no network" not in missing.layers and "rlimits" in missing.layers
    assert "no network" in SANDBOX.layers and "cgroup (pids, memory)" in SANDBOX.layers and not SANDBOX.warning()


def test_the_sandbox_caps_output_and_kills_every_descendant(tmp_path):
    script = ("import os, subprocess, sys\n"
              f"subprocess.Popen(['sleep', '300', {MARK!r}], start_new_session=True)\n"
              "sys.stdout.write('y' * 10_000_000)\n")
    finished = SANDBOX.run([os.sys.executable, "-I", "-c", script], tmp_path, {"PATH": os.environ["PATH"]},
                           Limits(wall_seconds=30, output_bytes=1000))
    assert finished.returncode == 0 and len(finished.stdout) == 1000 and finished.output_cut, finished
    assert not _leftovers(), "the sleeping child outlived the run"
