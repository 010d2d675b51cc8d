"""Mechanical mutation testing of the reference's solution regions, one chapter at a time, with mutmut.

    pip install -e ".[mutation]"
    .venv/bin/python tests/mutation/run.py --chapter layers
    .venv/bin/python tests/mutation/run.py --chapter train --time-limit 1200 --keep /tmp/train --json train.json
    .venv/bin/python tests/mutation/run.py --chapter train --keep /tmp/train --report-only   # report it again

tests/mutants/ holds hand-written mutants, each a plausible learner's bug. This script complements them with
mutmut's mechanical ones (`+` → `-`, `<` → `<=`, a number plus one, an argument dropped, `x = ...` → `x = None`, ...),
made only where a learner writes code: between `# BEGIN SOLUTION` and `# END SOLUTION` of `reference/CHAPTER.py`.
Each mutant is run against `spec/test_CHAPTER.py` alone, under the `ci` hypothesis profile, with `-x` and without
pytest-randomly; mutmut runs only the tests of that file that reached the mutated function in a first, clean run.

Nothing in the repository is touched. The script builds a scratch project in a temporary folder:

    reference/   a copy of reference/; in CHAPTER.py every line outside a solution region ends in
                 `# pragma: no mutate`, and a decorated function with a solution in it is decorated after its
                 definition instead (`step = torch.no_grad()(step)`), since mutmut leaves decorated functions alone
    spec/        a copy of spec/
    setup.cfg    tests/mutation/mutmut.cfg, for this chapter
    pytest.ini   empty, so that pytest looks for no configuration above the scratch project

runs `mutmut run` there, and reports: mutants generated, killed, survived, timed out, the score
(killed + timed out) / generated, and every mutant that no spec test caught, as `file:line  old → new`. A survivor
whose change sits in a `raise` statement can only change an error's message; those are listed apart, and the score
without them is given too.

mutmut mutates the bodies of functions and methods only: a solution region's module-level statements (a constant,
say) get no mutant, and neither do the solutions of a function it cannot wrap (a `@property`).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tokenize
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmkata.exercise_generator import find_regions

try:  # the diff `mutmut show` prints
    from mutmut.mutation.diff_apply import get_diff_for_mutant
except ImportError:
    sys.exit('mutmut is not installed: pip install -e ".[mutation]"')

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("mutmut.cfg")
PRAGMA = "# pragma: no mutate"
PACKAGE = "reference"  # the scratch copy's folder name, so mutants read `reference.layers.x_softmax__mutmut_1`
UNWRAPPED = {"staticmethod", "classmethod"}  # the only decorators mutmut mutates through
CAUGHT = {"killed", "timeout"}


@dataclass
class Marked:
    """A chapter module prepared for mutmut: its text, and for each line the reference's line number (None for a
    line the preparation added)."""

    text: str
    origin: list[int | None]
    regions: list[tuple[int, int]]  # (BEGIN line, END line) in the reference
    raising: set[int]  # lines of the reference's `raise` statements
    statement: dict[int, int]  # reference line -> first line of the innermost statement holding it


@dataclass
class Mutant:
    name: str
    status: str
    line: int | None = None  # in reference/CHAPTER.py
    change: str = ""  # `old → new`, one line
    in_raise: bool = False  # the change is in a `raise` statement: only the error's message can differ
    reached: bool = True  # the spec runs the mutated statement (in a clean run against the unmutated copy)


@dataclass
class Report:
    chapter: str
    mutmut: str
    command: str
    seconds: float
    source: str = ""  # the commit, and the two files under test: `a00c597; reference 1a2b3c4d5e6f (modified), ...`
    generated: int = 0
    killed: int = 0
    survived: int = 0
    timed_out: int = 0
    survived_in_raise: int = 0  # survivors on a `raise` statement the spec runs: only the message changed
    not_reached: int = 0  # survivors on a statement the chapter's spec never runs
    other: dict[str, int] = field(default_factory=dict)  # "no tests", "not checked", "suspicious", ...
    outside_regions: list[str] = field(default_factory=list)  # must stay empty: the marking leaked
    survivors: list[Mutant] = field(default_factory=list)

    @property
    def score(self) -> float:
        return (self.killed + self.timed_out) / self.generated if self.generated else float("nan")

    @property
    def score_without_messages(self) -> float:
        """The score when the mutants that change only an error's message, and survive, are left out."""
        counted = self.generated - self.survived_in_raise
        return (self.killed + self.timed_out) / counted if counted else float("nan")


# ------------------------------------------------------------------------------------------------ preparation


def _decorated_solutions(tree: ast.Module, regions: list[tuple[int, int]]) -> list[ast.FunctionDef]:
    """Functions with a decorator mutmut would not mutate through, and a solution region inside or around them."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.decorator_list:
            continue
        names = [d.id for d in node.decorator_list if isinstance(d, ast.Name)]
        if len(node.decorator_list) == 1 and names and names[0] in UNWRAPPED:
            continue
        first = node.decorator_list[0].lineno
        if any(begin <= node.end_lineno and first <= end for begin, end in regions):
            found.append(node)
    return found


def mark(source: str, filename: str) -> Marked:
    """The module with `# pragma: no mutate` on every line outside its solution regions.

    A decorated function that holds a solution is decorated after its definition instead, with the same effect:

        @torch.no_grad()                        # @torch.no_grad()
        def step(self): ...          ->         def step(self): ...
                                                step = torch.no_grad()(step)
    """
    regions = [(r.begin, r.end) for r in find_regions(source, filename)]
    inside = {n for begin, end in regions for n in range(begin, end + 1)}
    lines = source.splitlines()
    tree = ast.parse(source, filename)
    raising = {n for node in ast.walk(tree) if isinstance(node, ast.Raise)
               for n in range(node.lineno, node.end_lineno + 1)}
    statement: dict[int, int] = {}
    for node in ast.walk(tree):  # outer statements first: an inner one overwrites its own lines
        if isinstance(node, ast.stmt):
            for n in range(node.lineno, node.end_lineno + 1):
                statement[n] = node.lineno
    commented: set[int] = set()
    after: dict[int, list[str]] = {}  # reference line -> statements added after it
    for node in _decorated_solutions(tree, regions):
        indent = re.match(r"\s*", lines[node.lineno - 1]).group()
        for decorator in node.decorator_list:
            commented.update(range(decorator.lineno, decorator.end_lineno + 1))
        added = [f"{indent}{node.name} = {ast.unparse(d)}({node.name})" for d in reversed(node.decorator_list)]
        after.setdefault(node.end_lineno, []).extend(added)

    out: list[str] = []
    origin: list[int | None] = []
    for number, line in enumerate(lines, start=1):
        if number in commented:
            line = re.sub(r"^(\s*)", r"\1# ", line, count=1)
        out.append(line)
        origin.append(number)
        for added in after.get(number, []):
            out.append(added)
            origin.append(None)

    # A comment fits at the end of a line that ends a statement or sits inside brackets (tokenize's NEWLINE / NL),
    # never inside a string or after a backslash.
    text = "\n".join(out) + "\n"
    ends = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(text).readline)
            if tok.type in (tokenize.NEWLINE, tokenize.NL)}
    for index, line in enumerate(out):
        number = index + 1
        if number in ends and line.strip() and (origin[index] is None or origin[index] not in inside):
            out[index] = f"{line}  {PRAGMA}"
    return Marked("\n".join(out) + "\n", origin, regions, raising, statement)


def scratch_project(chapter: str, where: Path) -> Marked:
    """Lay out the scratch project for `chapter` in the empty folder `where`."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "reference", where / PACKAGE, ignore=ignore)
    shutil.copytree(ROOT / "spec", where / "spec", ignore=ignore)
    module = where / PACKAGE / f"{chapter}.py"
    marked = mark(module.read_text(encoding="utf-8"), f"reference/{chapter}.py")
    module.write_text(marked.text, encoding="utf-8")
    (where / "setup.cfg").write_text(CONFIG.read_text(encoding="utf-8").replace("CHAPTER", chapter), encoding="utf-8")
    (where / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")  # stops pytest's search for a config above
    return marked


# ------------------------------------------------------------------------------------------------ running


def provenance(where: Path, chapter: str) -> str:
    """The commit of the repository and a short hash of the two files the run used, each marked `modified` when
    it differs from that commit."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(ROOT), *args], check=False, capture_output=True, text=True)

    commit = git("rev-parse", "--short", "HEAD").stdout.strip() or "no commit"
    parts = [commit]
    for label, copy, tracked in (("reference", ROOT / "reference" / f"{chapter}.py", f"reference/{chapter}.py"),
                                 ("spec", where / "spec" / f"test_{chapter}.py", f"spec/test_{chapter}.py")):
        text = copy.read_bytes()
        at_commit = git("show", f"HEAD:{tracked}")
        modified = at_commit.returncode != 0 or at_commit.stdout.encode() != text
        parts.append(f"{label} {hashlib.sha256(text).hexdigest()[:12]}" + (" (modified)" if modified else ""))
    return "; ".join(parts)


def run_mutmut(where: Path, jobs: int, time_limit: float | None, log: Path) -> bool:
    """`mutmut run` in `where`; False when it was stopped at the time limit (its results so far are kept)."""
    env = dict(os.environ, LLMKATA_HYPOTHESIS_PROFILE="ci")
    env.pop("LLMKATA_IMPL", None)
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs)],
                                   cwd=where, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            process.wait(timeout=time_limit)
            finished = True
        except subprocess.TimeoutExpired:
            finished = False
            os.killpg(process.pid, signal.SIGINT)  # mutmut stops its workers and saves what it has
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    if finished and process.returncode != 0:
        sys.exit(f"mutmut failed (exit code {process.returncode}); its output is in {log}:\n"
                 + log.read_text(errors="replace")[-4000:])
    return finished


def executed_lines(where: Path, chapter: str, marked: Marked) -> set[int]:
    """The lines of reference/CHAPTER.py that the chapter's spec runs, in one run under coverage against the
    unmutated copy (reference line numbers)."""
    env = dict(os.environ, LLMKATA_HYPOTHESIS_PROFILE="ci")
    env.pop("LLMKATA_IMPL", None)
    data, report_file = where / "coverage.data", where / "coverage.json"
    module = where / PACKAGE / f"{chapter}.py"
    subprocess.run([sys.executable, "-m", "coverage", "run", f"--data-file={data}", f"--include={module}",
                    "-m", "pytest", f"spec/test_{chapter}.py", "--impl", f"./{PACKAGE}", "-q", "-p", "no:randomly",
                    "-p", "no:cacheprovider"], cwd=where, env=env, capture_output=True, check=False)
    subprocess.run([sys.executable, "-m", "coverage", "json", f"--data-file={data}", "-o", str(report_file)],
                   cwd=where, capture_output=True, check=False)
    if not report_file.exists():
        return set()
    files = json.loads(report_file.read_text())["files"]
    lines = next(iter(files.values()))["executed_lines"] if files else []
    return {marked.origin[n - 1] for n in lines if marked.origin[n - 1] is not None}


def statuses(where: Path) -> dict[str, str]:
    """Every mutant's status, as `mutmut results --all true` prints them."""
    listing = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=where,
                             capture_output=True, text=True, check=True).stdout
    found = {}
    for line in listing.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name.startswith(f"{PACKAGE}."):
            found[name] = status
    return found


def _function_span(tree: ast.Module, mutant: str) -> tuple[int, int]:
    """First and last line of the function a mutant belongs to, decorators included.
    Example: reference.layers.xǁRMSNormǁforward__mutmut_3 -> the lines of `def forward` inside `class RMSNorm`."""
    mangled = mutant.rpartition(".")[2].rpartition("__mutmut_")[0]
    if mangled.startswith("xǁ"):
        class_name, function = mangled[2:].split("ǁ")
        scope = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name).body
    else:
        function, scope = mangled[2:], tree.body
    node = next(n for n in scope if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == function)
    return min([node.lineno] + [d.lineno for d in node.decorator_list]), node.end_lineno


def _strip(line: str) -> str:
    return line.replace(PRAGMA, "").strip()


def locate(where: Path, chapter: str, marked: Marked, mutant: Mutant) -> None:
    """Fill in the mutant's line in the reference and its change, from the diff mutmut shows for it.

    The diff is of the function alone, so its line numbers are not the file's: the hunk's old side (context and
    removed lines) is looked up among the function's lines instead."""
    here = os.getcwd()
    os.chdir(where)
    try:
        diff = get_diff_for_mutant(mutant.name, path=f"{PACKAGE}/{chapter}.py").splitlines()
    finally:
        os.chdir(here)
    old_side: list[str] = []  # the hunk's lines as they read in the file, less their indentation
    first_removed = None  # index into old_side
    old, new = [], []
    for line in diff:
        if line.startswith(("---", "+++", "@@")):
            continue
        if line.startswith("+"):
            new.append(_strip(line[1:]))
            continue
        if line.startswith("-"):
            old.append(_strip(line[1:]))
            first_removed = len(old_side) if first_removed is None else first_removed
        old_side.append(line[1:].strip())  # a method is shown dedented
    lines = marked.text.splitlines()
    begin, end = _function_span(ast.parse(marked.text), mutant.name)
    while begin > 1 and lines[begin - 2].lstrip().startswith("#"):  # mutmut shows the comments just above too
        begin -= 1
    found = None
    # the hunk may show the comment lines after the function's last statement (`# END SOLUTION`) as context
    for top in range(begin - 1, min(end + len(old_side), len(lines)) - len(old_side) + 1):  # the hunk's first line
        if [text.strip() for text in lines[top:top + len(old_side)]] == old_side:
            found = top + (first_removed or 0) + 1
            break
    mutant.line = marked.origin[found - 1] if found else None
    mutant.change = f"{' ⏎ '.join(old)}  →  {' ⏎ '.join(new) or '(removed)'}"


def inside(marked: Marked, mutant: Mutant) -> bool:
    return mutant.line is not None and any(begin < mutant.line < end for begin, end in marked.regions)


def report(chapter: str, jobs: int, time_limit: float | None, keep: Path | None, again: bool = False) -> Report:
    from importlib.metadata import version

    where = Path(tempfile.mkdtemp(prefix=f"llmkata-mutation-{chapter}-")) if keep is None else keep
    if keep is not None and not again:
        if keep.exists():
            shutil.rmtree(keep)
        keep.mkdir(parents=True)
    command = f"python tests/mutation/run.py --chapter {chapter} --jobs {jobs}" + (
        f" --time-limit {time_limit:g}" if time_limit else "")
    result = Report(chapter=chapter, mutmut=version("mutmut"), command=command, seconds=0.0)
    started = time.monotonic()
    try:
        if again:  # the results of an earlier run kept in `where`
            marked = mark((ROOT / "reference" / f"{chapter}.py").read_text(encoding="utf-8"),
                          f"reference/{chapter}.py")
            if marked.text != (where / PACKAGE / f"{chapter}.py").read_text(encoding="utf-8"):
                sys.exit(f"reference/{chapter}.py changed since the run kept in {where}: run it again")
            finished = True
        else:
            marked = scratch_project(chapter, where)
            (where / "source.txt").write_text(provenance(where, chapter))
            finished = run_mutmut(where, jobs, time_limit, where / "mutmut.log")
        if again:
            seconds = where / "seconds.txt"
            result.seconds = float(seconds.read_text()) if seconds.exists() else 0.0
        else:
            result.seconds = round(time.monotonic() - started, 1)
            (where / "seconds.txt").write_text(str(result.seconds))
        result.source = (where / "source.txt").read_text() if (where / "source.txt").exists() else ""
        executed = executed_lines(where, chapter, marked)
        for name, status in sorted(statuses(where).items()):
            mutant = Mutant(name, status)
            locate(where, chapter, marked, mutant)
            if not inside(marked, mutant):
                result.outside_regions.append(f"{name} (line {mutant.line}): {mutant.change}")
                continue
            mutant.in_raise = mutant.line in marked.raising
            mutant.reached = not executed or marked.statement.get(mutant.line, mutant.line) in executed
            result.generated += 1
            if status == "killed":
                result.killed += 1
            elif status == "survived":
                result.survived += 1
            elif status == "timeout":
                result.timed_out += 1
            else:
                result.other[status] = result.other.get(status, 0) + 1
            if status not in CAUGHT:
                result.survivors.append(mutant)
                result.survived_in_raise += mutant.in_raise and mutant.reached
                result.not_reached += not mutant.reached
        if not finished:
            result.other["stopped at the time limit"] = 1
    finally:
        if keep is None:
            shutil.rmtree(where, ignore_errors=True)
        else:
            print(f"scratch project kept in {where}", file=sys.stderr)
    result.survivors.sort(key=lambda m: (m.line or 0, m.name))
    return result


HEADER = ("| chapter | generated | killed | survived | timed out | other | score | not caught, never run "
          "| not caught, in messages | score without messages | time |\n|---|---|---|---|---|---|---|---|---|---|---|")


def markdown(result: Report) -> str:
    other = ", ".join(f"{k}: {v}" for k, v in sorted(result.other.items())) or "—"
    lines = [
        (f"| {result.chapter} | {result.generated} | {result.killed} | {result.survived} | {result.timed_out} | "
         f"{other} | {result.score:.1%} | {result.not_reached} | {result.survived_in_raise} "
         f"| {result.score_without_messages:.1%} "
         f"| {result.seconds:.0f} s |"),
    ]
    for title, group in (("Not caught, on a statement the spec never runs",
                          [m for m in result.survivors if not m.reached]),
                         ("Not caught", [m for m in result.survivors if m.reached and not m.in_raise]),
                         ("Not caught, in a `raise` statement the spec runs (only the message differs)",
                          [m for m in result.survivors if m.reached and m.in_raise])):
        if group:
            lines += ["", f"{title} in `reference/{result.chapter}.py` ({len(group)}):", ""]
        for mutant in group:
            tag = "" if mutant.status == "survived" else f" ({mutant.status})"
            lines.append(f"- `reference/{result.chapter}.py:{mutant.line}`{tag} `{mutant.change}`")
    if result.outside_regions:
        lines += ["", "Mutants outside the solution regions (the marking leaked; not counted):", ""]
        lines += [f"- {text}" for text in result.outside_regions]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chapter", required=True, help="module name: reference/CHAPTER.py, spec/test_CHAPTER.py")
    parser.add_argument("--jobs", type=int, default=1, help="mutants tested at once (default 1)")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds; mutmut is stopped then and the mutants not tested count as 'not checked'")
    parser.add_argument("--keep", type=Path, default=None, help="build the scratch project here and keep it")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    parser.add_argument("--report-only", action="store_true",
                        help="report the results of the run kept in --keep, without running mutmut again")
    args = parser.parse_args(argv)
    if args.report_only and args.keep is None:
        parser.error("--report-only reads the run kept in --keep DIR")
    if not (ROOT / "reference" / f"{args.chapter}.py").exists():
        parser.error(f"no chapter {args.chapter!r}: reference/{args.chapter}.py does not exist")
    result = report(args.chapter, args.jobs, args.time_limit, args.keep, again=args.report_only)
    print(f"{result.command}  (mutmut {result.mutmut}; {result.source})")
    print(HEADER)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps({**asdict(result), "score": result.score,
                                         "score_without_messages": result.score_without_messages},
                                        indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
