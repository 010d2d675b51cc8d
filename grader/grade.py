"""`llmkata grade`: run the spec against an implementation in a child process and score it by chapter.

The child is a fresh `python -m pytest` over the installed spec with `--impl`, so nothing the implementation does
can change the grader's own state; it reports each test's outcome to a file the parent then reads.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import llmkata.spec
from llmkata.spec.contract import BY_MODULE, CHAPTERS

SPEC_DIR = Path(llmkata.spec.__path__[0])


@dataclass
class ChapterScore:
    number: int
    module: str
    passed: int = 0
    total: int = 0
    first_failure: str = ""
    failures: list[str] = field(default_factory=list)


def _chapter_module(nodeid: str) -> str:
    """'spec/test_layers.py::test_x[1]' -> 'layers'; 'spec/test_contract.py::test_y[rope.apply_rope]' -> 'rope'"""
    module = Path(nodeid.split("::")[0]).stem.removeprefix("test_")
    if module == "contract" and "[" in nodeid:  # a contract check belongs to the chapter of the name it checks
        return nodeid.split("[", 1)[1].split(".", 1)[0]
    return module


def score(records: list[dict]) -> dict[str, ChapterScore]:
    scores = {c.module: ChapterScore(c.number, c.module) for c in CHAPTERS}
    outcomes: dict[str, tuple[str, str]] = {}
    for record in records:  # a failure in setup, call or teardown fails the test
        previous = outcomes.get(record["nodeid"])
        if previous is None or previous[0] == "passed":
            outcomes[record["nodeid"]] = (record["outcome"], record["message"])
    # A chapter's own properties come before its contract checks: they say more about what to do first.
    for nodeid, (outcome, message) in sorted(outcomes.items(), key=lambda item: "test_contract.py" in item[0]):
        module = _chapter_module(nodeid)
        if module not in scores:
            scores[module] = ChapterScore(BY_MODULE[module].number if module in BY_MODULE else 99, module)
        chapter = scores[module]
        if outcome == "skipped":
            continue
        # Only properties score: a stub with the right signature passes its contract check, and earns nothing.
        # A contract check that fails is still reported (a wrong signature breaks the properties that call it).
        is_property = "test_contract.py" not in nodeid
        chapter.total += is_property
        if outcome == "passed":
            chapter.passed += is_property
        else:
            name = nodeid.split("::")[-1]
            chapter.failures.append(name)
            if not chapter.first_failure:
                chapter.first_failure = f"{name}: {message}"
    return scores


def run_spec(impl: str, seed: int, extra: list[str] = (), timeout: float = 1800) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="llmkata-grade-") as workdir:
        results = Path(workdir) / "results.jsonl"
        results.touch()
        env = {**os.environ, "LLMKATA_RESULTS": str(results), "LLMKATA_HYPOTHESIS_PROFILE": "grade"}
        impl_path = Path(impl).expanduser()
        impl_arg = str(impl_path.resolve()) if impl_path.is_dir() else impl
        command = [
            sys.executable, "-m", "pytest", str(SPEC_DIR), "--impl", impl_arg, "-q", "--no-header", "-rN",
            "-p", "llmkata.results_plugin", "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(SPEC_DIR),
            f"--hypothesis-seed={seed}", *extra,
        ]
        try:
            child = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the spec did not finish within {timeout:.0f} s; is something stuck in a loop?") from None
        records = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines() if line]
        if child.returncode not in (0, 1) or not records:
            raise RuntimeError(f"the spec did not run (exit {child.returncode}):\n{child.stdout[-3000:]}{child.stderr[-3000:]}")
        return records


def render(impl: str, seed: int, scores: dict[str, ChapterScore]) -> str:
    rows = [f"llmkata grade — implementation: {impl} (hypothesis seed {seed})", ""]
    rows.append(f"{'#':>3}  {'chapter':<12} {'passed':>11}   first failing property")
    passed = total = 0
    for chapter in sorted(scores.values(), key=lambda c: c.number):
        if chapter.total == 0:
            continue
        passed, total = passed + chapter.passed, total + chapter.total
        name, _, message = chapter.first_failure.partition(": ")
        rows.append(f"{chapter.number:>3}  {chapter.module:<12} {chapter.passed:>5} / {chapter.total:<5}   {name or 'all pass'}")
        if message:
            rows.append(f"{'':>32}↳ {message if len(message) <= 200 else message[:197] + '...'}")
    rows += ["", f"     {'total':<12} {passed:>5} / {total:<5}   {100.0 * passed / max(total, 1):.1f}%"]
    return "\n".join(rows)


def grade(impl: str, seed: int | None = None, extra: list[str] = ()) -> tuple[str, dict[str, ChapterScore]]:
    seed = random.randrange(2**31) if seed is None else seed
    scores = score(run_spec(impl, seed, extra))
    return render(impl, seed, scores), scores
