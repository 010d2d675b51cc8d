"""`llmkata grade`: run the spec against an implementation in a child process and score it by chapter.

The child is a fresh `python -m pytest` over the installed spec with `--impl`, so nothing the implementation does
can change the grader's own state; it reports each test's outcome to a file the parent then reads
(`llmkata.results_plugin`).

The report is a table of every chapter (properties passed, skipped, failing), then every failing property of the
chapter being worked on — the first one not finished, or the one asked for — each with its one-line message and
hypothesis's shrunk example, and what to read next; then every skipped test with its reason and the command that
installs what it needs. A skipped property still counts in the total, so the denominator never depends on which
optional packages happen to be installed.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import llmkata.spec
from llmkata.results_plugin import describe_syntax_error
from llmkata.sandbox import Limits, Sandbox
from llmkata.spec.contract import BY_MODULE, CHAPTERS

SPEC_DIR = Path(llmkata.spec.__path__[0])
MESSAGE_WIDTH = 200  # a message is cut to this many characters, so that each stays on one line or two


@dataclass
class Failure:
    name: str  # the test function, with its parameters: 'test_softmax_rows_sum_to_one', 'test_x[layers.silu]'
    message: str = ""
    example: str = ""  # hypothesis's shrunk example, its arguments on one line
    line: int | None = None  # where the test is defined in its spec file
    contract: bool = False  # a contract check (spec/test_contract.py), which does not score


@dataclass
class Skip:
    name: str
    reason: str


@dataclass
class ChapterScore:
    number: int
    module: str
    passed: int = 0
    total: int = 0  # every property that was selected, skipped ones included
    failures: list[Failure] = field(default_factory=list)  # the chapter's properties first, then contract checks
    skipped: list[Skip] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # every property, in the order of the spec's ids

    @property
    def first_failure(self) -> str:
        return f"{self.failures[0].name}: {self.failures[0].message}" if self.failures else ""

    @property
    def finished(self) -> bool:
        return not self.failures


def _chapter_module(nodeid: str) -> str:
    """'spec/test_layers.py::test_x[1]' -> 'layers'; 'spec/test_contract.py::test_y[rope.apply_rope]' -> 'rope'"""
    module = Path(nodeid.split("::")[0]).stem.removeprefix("test_")
    if module == "contract" and "[" in nodeid:  # a contract check belongs to the chapter of the name it checks
        return nodeid.split("[", 1)[1].split(".", 1)[0]
    return module


NO_RESULT = ("no result came back for this test: the spec's run was stopped (time, memory or processes) or "
             "something interfered with its reporting")


def score(records: list[dict], expected: list[str] | None = None) -> dict[str, ChapterScore]:
    """Scores by chapter. With `expected` (the ids the grader collected itself), a test without a result, or with
    more than one result of one phase, fails; a record about any other test counts for nothing."""
    scores = {c.module: ChapterScore(c.number, c.module) for c in CHAPTERS}
    outcomes: dict[str, dict] = {}
    phases: dict[tuple[str, str], int] = {}
    wanted = None if expected is None else set(expected)
    for record in records:  # a failure in setup, call or teardown fails the test
        if wanted is not None and record["nodeid"] not in wanted:
            continue
        key = (record["nodeid"], record.get("when", "call"))
        phases[key] = phases.get(key, 0) + 1
        previous = outcomes.get(record["nodeid"])
        if previous is None or previous["outcome"] == "passed":
            outcomes[record["nodeid"]] = record
    for (nodeid, when), count in phases.items():
        if count > 1:
            outcomes[nodeid] = {"nodeid": nodeid, "outcome": "failed",
                                "message": f"the test's {when} reported {count} results; one was expected"}
    for nodeid in expected or ():
        if nodeid not in outcomes or (outcomes[nodeid]["outcome"] == "passed"
                                      and (nodeid, "call") not in phases):
            outcomes[nodeid] = {"nodeid": nodeid, "outcome": "failed", "message": NO_RESULT}
    # A chapter's own properties come before its contract checks: they say more about what to do first.
    for nodeid, record in sorted(outcomes.items(), key=lambda item: "test_contract.py" in item[0]):
        module = _chapter_module(nodeid)
        if module not in scores:
            scores[module] = ChapterScore(BY_MODULE[module].number if module in BY_MODULE else 99, module)
        chapter = scores[module]
        name = nodeid.split("::")[-1]
        # Only properties score: a stub with the right signature passes its contract check, and earns nothing.
        # A contract check that fails is still reported (a wrong signature breaks the properties that call it).
        is_property = "test_contract.py" not in nodeid
        chapter.total += is_property
        if is_property:
            chapter.names.append(name)
        if record["outcome"] == "skipped":
            chapter.skipped.append(Skip(name, (record.get("message") or "").strip().split("\n")[0]))
        elif record["outcome"] == "passed":
            chapter.passed += is_property
        else:
            chapter.failures.append(Failure(name, record.get("message", ""), record.get("example", ""),
                                            record.get("line"), contract=not is_property))
    return scores


def _check_package_compiles(impl: str) -> None:
    """A folder whose __init__.py does not compile stops every test before it starts: say so in one line.
    (Compiling runs none of its code; a module other than __init__.py that does not compile fails its tests.)"""
    init = Path(impl).expanduser() / "__init__.py"
    if not init.is_file():
        return
    try:
        compile(init.read_bytes(), str(init), "exec", dont_inherit=True)
    except SyntaxError as error:
        raise ValueError(f"{init} does not compile, so no test can import the implementation: "
                         f"{describe_syntax_error(error)}") from None


PLUGINS = ("llmkata.spec.plugin", "_hypothesis_pytestplugin", "llmkata.results_plugin")  # and no others
PYTEST_OPTIONS = ["-q", "--no-header", "-rN", "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(SPEC_DIR),
                  "--confcutdir", str(SPEC_DIR)]


@dataclass
class SpecRun:
    """What the spec's runs gave: each test's record, what went wrong around them, and how they were run."""

    records: list[dict]
    expected: list[str]
    problems: list[str] = field(default_factory=list)  # malformed lines, children killed at their time limit, ...
    layers: list[str] = field(default_factory=list)
    warning: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    trusted: list[str] = field(default_factory=list)  # chapters whose verdicts the submission took no part in


def expected_ids(extra: list[str] = ()) -> list[str]:
    """The spec's test ids, decided by the grader alone: collected in a child that loads no submitted code."""
    command = [sys.executable, "-m", "pytest", str(SPEC_DIR), "--collect-only", "--impl", "exercises",
               *PYTEST_OPTIONS, *extra]
    child = subprocess.run(command, capture_output=True, text=True, cwd=SPEC_DIR, timeout=600,
                           env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
                                "PYTEST_ADDOPTS": " ".join(f"-p {p}" for p in PLUGINS[:2])})
    ids = [line.strip() for line in child.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    if child.returncode not in (0, 5):
        raise RuntimeError(f"the spec could not be collected (exit {child.returncode}):\n{child.stdout[-3000:]}")
    return ids


def _hidden_folders() -> tuple[Path, ...]:
    """What a submission must not read: the reference (in the package and in a clone), and in a clone the git
    history and build folders that hold copies of it, and llmkata's own tests."""
    import importlib.util
    hidden = []
    found = importlib.util.find_spec("llmkata.reference")
    if found is not None and found.submodule_search_locations:
        hidden += [Path(p) for p in found.submodule_search_locations]
    root = SPEC_DIR.parent
    if (root / "pyproject.toml").exists():
        hidden += [root / name for name in ("reference", ".git", "build", "tests")]
    return tuple(hidden)


def _child_env(scratch: Path, results: Path, threads: int) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(scratch), "LANG": "C.UTF-8",
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "LLMKATA_RESULTS": str(results),
            "LLMKATA_HYPOTHESIS_PROFILE": "grade", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def _read_records(results: Path, allowed: set[str], problems: list[str], label: str) -> list[dict]:
    """The records of one child, kept only when well formed and about a test the grader expects there."""
    records = []
    try:
        lines = results.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            valid = (isinstance(record, dict) and record.get("nodeid") in allowed
                     and record.get("outcome") in ("passed", "failed", "skipped")
                     and record.get("when") in ("setup", "call", "teardown"))
        except ValueError:
            valid = False
        if not valid:
            ignored = sum(1 for p in problems if p.startswith(f"{label}: result line"))
            if ignored < 3:
                problems.append(f"{label}: result line {number} is malformed or names no expected test; ignored")
            elif ignored == 3:
                problems.append(f"{label}: result lines after {number - 1}: more are malformed; ignored")
            continue
        records.append({key: record.get(key) for key in ("nodeid", "when", "outcome", "message", "example", "line")})
    return records


# Every spec file runs in the grader's own process while the submission runs in a sandboxed worker that returns
# plain data (llmkata.remote), and the parallel chapter's worlds in a sandboxed host that does the same
# (llmkata.world_host): the submission takes no part in deciding the verdicts. Only the contract checks, which
# inspect signatures and score nothing, run whole in a sandboxed child, where code of the submission shares the
# process that reports the results.
WHOLE_IN_SANDBOX = ("test_contract.py",)


def _trusted_run(command: list[str], env: dict[str, str], wall_seconds: float):
    """Our own child (the spec, no submitted code), stopped at its time limit; its worker dies with it."""
    from llmkata.sandbox import Finished, _Tail

    started = time.monotonic()
    child = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True, cwd=SPEC_DIR)
    out, err = _Tail(child.stdout, 200_000), _Tail(child.stderr, 200_000)
    timed_out = False
    try:
        child.wait(timeout=wall_seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(child.pid, signal.SIGTERM)  # the spec's cleanup stops the worker and removes its cgroup
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    return Finished(None if timed_out else child.returncode, out.text(), err.text(), timed_out,
                    time.monotonic() - started)


def _run_file(sandbox: Sandbox, spec_files: tuple[str, ...], ids: list[str], impl: str, seed: int,
              extra: list[str], limits: Limits, threads: int, trusted: bool = False
              ) -> tuple[list[dict], list[str], float]:
    """Spec files against the implementation, on a copy of it in a fresh scratch folder: one file whole in a
    sandboxed child, or (`trusted`) files in a child of ours with the implementation in a sandboxed worker (one
    worker for them all: each costs seconds to start), with the time of that many chapters."""
    problems: list[str] = []
    spec_file = " + ".join(spec_files)  # as reports name the run
    with tempfile.TemporaryDirectory(prefix="llmkata-grade-") as workdir, \
            tempfile.TemporaryDirectory(prefix="llmkata-verdict-") as private:
        scratch = Path(workdir)
        impl_arg = impl
        folder = Path(impl).expanduser()
        if folder.is_dir():  # the submission works on a copy: its own files stay as they were
            impl_arg = str(scratch / folder.resolve().name)
            shutil.copytree(folder, impl_arg, ignore=shutil.ignore_patterns("__pycache__", ".git"))
        results = (Path(private) if trusted else scratch) / "results.jsonl"
        results.touch()
        command = [sys.executable, "-I", "-m", "pytest", *(str(SPEC_DIR / name) for name in spec_files),
                   "--impl", impl_arg, *PYTEST_OPTIONS, *(f"-p{plugin}" for plugin in PLUGINS),
                   f"--hypothesis-seed={seed}", *extra]
        if trusted:
            config = {"scratch": str(scratch), "hidden": [str(p) for p in sandbox.hidden],
                      "limits": {**dataclasses.asdict(limits), "wall_seconds": limits.wall_seconds}}
            shared = scratch / "tmp"  # the spec's temporary files, where the worker sees them at the same path
            shared.mkdir(mode=0o777)
            shared.chmod(0o777)
            env = {**_child_env(scratch, results, threads), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                   "LLMKATA_REMOTE": json.dumps(config), "LLMKATA_CALL_SECONDS": str(limits.wall_seconds),
                   "LLMKATA_FILE_SECONDS": str(limits.wall_seconds),
                   "TMPDIR": str(shared)}
            wall_seconds = limits.wall_seconds * len(spec_files)
            finished = _trusted_run(command + ["--basetemp", str(scratch / "pytest")], env, wall_seconds)
        else:
            wall_seconds = limits.wall_seconds
            finished = sandbox.run(command, scratch, _child_env(scratch, results, threads), limits)
        if finished.timed_out:
            problems.append(f"{spec_file}: stopped at its time limit of {wall_seconds:.0f} s")
        elif finished.returncode not in (0, 1):
            tail = (finished.stdout[-1500:] + finished.stderr[-1500:]).strip()
            problems.append(f"{spec_file}: the spec's run ended with exit code {finished.returncode}"
                            + (f":\n{tail}" if tail else ""))
        records = _read_records(results, set(ids), problems, spec_file)
        if impl_arg != impl:  # messages name the learner's folder, not the copy
            for record in records:
                for key in ("message", "example"):
                    if isinstance(record.get(key), str):
                        record[key] = record[key].replace(impl_arg, str(folder))
        return records, problems, finished.seconds


def _check_exists(impl: str) -> None:
    """A folder that is not there, or a module name that nothing provides: one clear error, and no code of the
    submission run in the grader's own process (a module is looked up, never imported)."""
    import importlib.util

    from llmkata.spec.impl import ALIASES
    folder = Path(impl).expanduser()
    if impl in ALIASES:
        return
    if folder.is_dir():
        if not folder.resolve().name.isidentifier():
            raise ValueError(f"cannot import the folder {folder} as a package: {folder.resolve().name!r} is not a "
                             "valid Python name")
    elif os.sep in impl or impl.startswith("."):
        raise ValueError(f"no implementation at {impl!r}: there is no such folder")
    elif importlib.util.find_spec(impl.split(".")[0]) is None:
        raise ValueError(f"no implementation {impl!r}: it is neither 'reference', 'exercises', a folder, nor an "
                         "importable module")


def run_spec(impl: str, seed: int, extra: list[str] = (), jobs: int = 2, limits: Limits | None = None,
             sandbox: Sandbox | None = None, expected: list[str] | None = None) -> SpecRun:
    """Every spec file in its own sandboxed child, `jobs` at a time; the ids to expect decided beforehand (by
    `expected_ids(extra)`, unless given)."""
    _check_package_compiles(impl)
    _check_exists(impl)
    expected = expected_ids(list(extra)) if expected is None else expected
    by_file: dict[str, list[str]] = {}
    for nodeid in expected:
        by_file.setdefault(Path(nodeid.split("::")[0]).name, []).append(nodeid)
    sandbox = sandbox or Sandbox.detect(hidden=() if impl == "reference" else _hidden_folders())
    limits = limits or Limits()
    threads = max(1, (os.cpu_count() or 1) // max(jobs, 1))
    run = SpecRun([], expected, layers=sandbox.layers, warning=sandbox.warning())
    # The worker needs the namespaces to be a boundary at all: without bubblewrap every file runs whole in its child.
    trusted = {name for name in by_file if name not in WHOLE_IN_SANDBOX and sandbox.bwrap and impl != "reference"}
    run.trusted = sorted(_chapter_module(name) for name in trusted)
    # The trusted files in one group per job, balanced by their number of properties; the others one by one.
    groups: list[list[str]] = [[] for _ in range(max(jobs, 1))] if trusted else []
    for name in sorted(trusted, key=lambda name: (-len(by_file[name]), name)):
        min(groups, key=lambda group: sum(len(by_file[n]) for n in group)).append(name)
    tasks = [(tuple(group), True) for group in groups if group]
    tasks += [((name,), False) for name in by_file if name not in trusted]
    # Largest first, so that the pool stays busy to the end.
    tasks.sort(key=lambda task: -sum(len(by_file[name]) for name in task[0]))
    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        futures = {files: pool.submit(_run_file, sandbox, files, [i for n in files for i in by_file[n]], impl, seed,
                                      list(extra), limits, threads, is_trusted) for files, is_trusted in tasks}
        for files, future in futures.items():
            records, problems, seconds = future.result()
            run.records += records
            run.problems += problems
            run.seconds[" + ".join(files)] = round(seconds, 1)
    return run


# ------------------------------------------------------------------------------------------------- the report

def find_chapter(name: str) -> str:
    """The module of a chapter given by module, title or number: 'layers', 'Layers' or '4' -> 'layers'."""
    wanted = name.strip().lower()
    for chapter in CHAPTERS:
        if wanted in (chapter.module, chapter.title.lower(), str(chapter.number)):
            return chapter.module
    known = ", ".join(f"{c.number} {c.module}" for c in CHAPTERS)
    raise ValueError(f"--chapter {name}: no such chapter; the chapters are {known}")


def _shown(path: Path) -> str:
    """A path as a reader types it: relative to the working folder when it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _impl_file(impl: str, module: str) -> str:
    """Where the learner's module is, without importing anything of the implementation."""
    folder = Path(impl).expanduser()
    if folder.is_dir():
        return _shown(folder / f"{module}.py")
    if impl in ("reference", "exercises"):  # ours: beside the spec, in a clone and in an installed wheel alike
        return _shown(SPEC_DIR.parent / impl / f"{module}.py")
    return f"`{impl}.{module}`"


def _in_clone() -> bool:
    """Is the spec running from a clone of the repository (rather than from an installed wheel)?"""
    return (SPEC_DIR.parent / "pyproject.toml").exists() and (SPEC_DIR.parent / "grader").is_dir()


def _extras() -> dict[str, str]:
    """Distribution name -> the llmkata extra that installs it: {'transformers': 'interop', ...}."""
    try:
        requirements = importlib.metadata.requires("llmkata") or []
    except importlib.metadata.PackageNotFoundError:
        requirements = []
    extras = {}
    for requirement in requirements:
        found = re.match(r"\s*([A-Za-z0-9_.\-]+).*?;\s*extra\s*==\s*['\"]([^'\"]+)['\"]", requirement)
        if found and found.group(1).lower() != "llmkata":
            extras.setdefault(found.group(1).lower().replace("_", "-"), found.group(2))
    return extras


def install_hint(reason: str) -> str:
    """The command that makes a test skipped for a missing package run:
    "could not import 'transformers': ..." -> 'pip install "llmkata[interop]"'; '' when the reason is not that."""
    found = re.search(r"could not import '([^']+)'", reason)
    if not found:
        return ""
    package = found.group(1).split(".")[0].lower().replace("_", "-")
    extra = _extras().get(package)
    if extra is None:
        return f"pip install {package}"
    if _in_clone():
        root = SPEC_DIR.parent
        where = "." if root.resolve() == Path.cwd().resolve() else str(root)
        return f'pip install -e "{where}[{extra}]"'
    return f'pip install "llmkata[{extra}]"'


def _cut(text: str, width: int = MESSAGE_WIDTH) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _status(chapter: ChapterScore, focus: str | None) -> str:
    if chapter.finished:
        return "all pass" if not chapter.skipped else "all that ran pass"
    properties = sum(not f.contract for f in chapter.failures)
    checks = len(chapter.failures) - properties
    count = f"{properties} failing" + (f" + {checks} contract check(s)" if checks else "")
    return f"{count}, first {chapter.failures[0].name}" + ("   (listed below)" if chapter.module == focus else "")


def _details(impl: str, chapter: ChapterScore) -> list[str]:
    title = BY_MODULE[chapter.module].title if chapter.module in BY_MODULE else chapter.module
    spec_file = SPEC_DIR / f"test_{chapter.module}.py"
    if not chapter.total and not chapter.failures:
        return [f"Chapter {chapter.number} ({title}): none of its tests ran (see -k)."]
    if chapter.finished:
        return [f"Chapter {chapter.number} ({title}): every property that ran passes."]
    properties = sum(not f.contract for f in chapter.failures)
    checks = len(chapter.failures) - properties
    rows = [f"Chapter {chapter.number} ({title}): {properties} of {chapter.total} properties fail"
            + (f", and {checks} contract check(s)" if checks else "")]
    for failure in chapter.failures:
        where = SPEC_DIR / "test_contract.py" if failure.contract else spec_file
        line = f":{failure.line}" if failure.line else ""
        rows.append(f"  ✗ {failure.name}   ({where.name}{line})")
        for part in _cut(failure.message or "failed, without a message").splitlines() or [""]:
            rows.append(f"      {part}")
        if failure.example:
            rows.append(f"      example: {failure.example}")
    rows.append(f"  Read: {_shown(spec_file)} (each test is named after the property it checks) and the docstrings "
                f"in {_impl_file(impl, chapter.module)}.")
    impl_arg = impl
    if Path(impl).expanduser().is_dir() and impl not in ("reference", "exercises"):
        impl_arg = _shown(Path(impl).expanduser())
        impl_arg = impl_arg if impl_arg.startswith(("/", ".", "~")) else f"./{impl_arg}"
    rows.append(f"  Tracebacks: pytest --pyargs llmkata.spec.test_{chapter.module} --impl {impl_arg} -x")
    return rows


def _skipped(scores: dict[str, ChapterScore]) -> list[str]:
    groups: dict[str, list[str]] = {}
    for chapter in sorted(scores.values(), key=lambda c: c.number):
        for skip in chapter.skipped:
            groups.setdefault(skip.reason, []).append(f"{chapter.module}: {skip.name}")
    if not groups:
        return []
    count = sum(len(names) for names in groups.values())
    rows = [f"Skipped: {count} test(s) did not run, and count as not passed:"]
    for reason, names in groups.items():
        hint = install_hint(reason)
        rows.append(f"  {_cut(reason or 'no reason given')}" + (f" — to run them: {hint}" if hint else ""))
        rows.extend(f"    {name}" for name in names)
    return rows


def focus_chapter(scores: dict[str, ChapterScore], chapter: str | None = None) -> str | None:
    """The chapter whose failures are listed: the one asked for, else the first one not finished."""
    if chapter:
        return find_chapter(chapter)
    unfinished = [c for c in sorted(scores.values(), key=lambda c: c.number) if c.total and not c.finished]
    unfinished += [c for c in scores.values() if not c.total and c.failures]  # contract checks alone
    return unfinished[0].module if unfinished else None


def render(impl: str, seed: int, scores: dict[str, ChapterScore], chapter: str | None = None,
           run: SpecRun | None = None) -> str:
    focus = focus_chapter(scores, chapter)
    rows = [f"llmkata grade — implementation: {impl} (hypothesis seed {seed})"]
    if run is not None:
        rows.append(f"sandbox: {', '.join(run.layers)}")
        if run.trusted:
            rows.append(f"verdicts decided outside the submission's process: {', '.join(run.trusted)}")
        rows += [run.warning] if run.warning else []
        rows += [f"problem: {_cut(problem, 400)}" for problem in run.problems]
    rows.append("")
    rows.append(f"{'#':>3}  {'chapter':<12} {'passed':^13}  {'skipped':>7}   status")
    passed = total = skipped = 0
    for score_ in sorted(scores.values(), key=lambda c: c.number):
        if score_.total == 0 and not score_.failures:
            continue
        passed, total, skipped = passed + score_.passed, total + score_.total, skipped + len(score_.skipped)
        rows.append(f"{score_.number:>3}  {score_.module:<12} {score_.passed:>5} / {score_.total:<5}  "
                    f"{len(score_.skipped):>7}   {_status(score_, focus)}")
    rows += [f"     {'total':<12} {passed:>5} / {total:<5}  {skipped:>7}   {100.0 * passed / max(total, 1):.1f}%", ""]
    if focus is not None and focus in scores:
        rows += _details(impl, scores[focus]) + [""]
    elif focus is None:
        rows += ["Every property that ran passes." if skipped else "Every property passes.", ""]
    rows += _skipped(scores)
    return "\n".join(rows).rstrip() + "\n"


def apply_shortcuts(scores: dict[str, ChapterScore], impl: str, forbidden: dict[str, list[str]]) -> None:
    """A chapter whose module uses a forbidden shortcut earns nothing: each property it passed fails, saying where."""
    folder = Path(impl).expanduser()
    if not folder.is_dir() or not forbidden:
        return
    from llmkata.shortcuts import scan
    for module, uses in scan(folder, forbidden).items():
        chapter = scores.get(module)
        if chapter is None:
            continue
        message = uses[0].message(_shown(folder / f"{module}.py")) + (
            f" (and {len(uses) - 1} more use(s))" if len(uses) > 1 else "")
        failed = {f.name for f in chapter.failures}
        for name in chapter.names:
            if name not in failed:
                chapter.failures.insert(0, Failure(name, message))
        chapter.passed = 0


def grade(impl: str, seed: int | None = None, extra: list[str] = (), chapter: str | None = None,
          jobs: int = 2, forbidden: dict[str, list[str]] | None = None
          ) -> tuple[str, dict[str, ChapterScore], SpecRun, int]:
    """Run and score; returns the printed report, the scores by chapter, the run, and the seed used."""
    if chapter:
        find_chapter(chapter)  # a wrong name is reported before the spec runs
    seed = random.randrange(2**31) if seed is None else seed
    run = run_spec(impl, seed, extra, jobs=jobs)
    scores = score(run.records, run.expected)
    apply_shortcuts(scores, impl, forbidden or {})
    return render(impl, seed, scores, chapter, run), scores, run, seed
