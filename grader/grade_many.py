"""`llmkata grade-many`: grade a class — folders or zip files — into one summary, resumable.

    llmkata grade-many submissions/*.zip submissions/alice/ --out grades --jobs 2

Each submission is graded as `llmkata grade` grades one (every spec file in its own sandboxed child), `jobs`
submissions at a time, against the test ids collected once. `OUT/<name>.json` is each one's report (llmkata's JSON,
plus the SHA-256 of the submission's files); `OUT/summary.csv` and `OUT/summary.json` hold one row per submission,
rewritten after each. Run again, a submission whose report is there with the same SHA-256 is not graded again.

A zip file is unpacked into a temporary folder first, refusing absolute paths, `..`, links, more than
`MAX_FILES` files or `MAX_BYTES` bytes unpacked; the implementation is its one top-level folder if it has exactly
one, else its root.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
import stat
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from llmkata.atomic import write_text_atomic
from llmkata.grade import apply_shortcuts, expected_ids, run_spec, score
from llmkata.reports import Rubric, grade_tests, to_json
from llmkata.sandbox import Sandbox

MAX_FILES = 2000
MAX_BYTES = 50 * 2**20


@dataclass
class Submission:
    name: str  # a Python identifier, unique in the class: the report's file name and the package name
    path: Path


def _identifier(text: str) -> str:
    name = re.sub(r"\W", "_", text)
    return name if name and not name[0].isdigit() else f"s_{name}"


def submissions(paths: list[str]) -> list[Submission]:
    found, names = [], set()
    for given in paths:
        path = Path(given).expanduser()
        if not (path.is_dir() or (path.is_file() and path.suffix == ".zip")):
            raise ValueError(f"{given}: not a folder or a .zip file")
        name = base = _identifier(path.stem if path.suffix == ".zip" else path.resolve().name)
        count = 1
        while name in names:
            count += 1
            name = f"{base}_{count}"
        names.add(name)
        found.append(Submission(name, path))
    return found


def unpack(archive: Path, into: Path) -> Path:
    """The implementation folder inside a zip file, unpacked under `into`; a bad archive is one ValueError."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            if len(members) > MAX_FILES:
                raise ValueError(f"{archive}: {len(members)} entries, more than the {MAX_FILES} allowed")
            if sum(m.file_size for m in members) > MAX_BYTES:
                raise ValueError(f"{archive}: more than {MAX_BYTES // 2**20} MiB unpacked")
            for member in members:
                parts = PurePosixPath(member.filename).parts
                if member.filename.startswith(("/", "\\")) or ".." in parts or ":" in member.filename:
                    raise ValueError(f"{archive}: the entry {member.filename!r} points outside the archive")
                if stat.S_ISLNK(member.external_attr >> 16):
                    raise ValueError(f"{archive}: the entry {member.filename!r} is a link")
            zipped.extractall(into)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{archive}: not a zip file ({error})") from None
    entries = [p for p in into.iterdir() if p.name != "__MACOSX"]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else into


def digest(folder: Path) -> str:
    hasher = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            hasher.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return hasher.hexdigest()


def _grade_one(submission: Submission, out: Path, expected: list[str], seed: int, extra: list[str],
               rubric: Rubric, sandbox: Sandbox) -> tuple[dict, bool]:
    """The report of one submission: read back when it is there for the same files, else graded and written."""
    with tempfile.TemporaryDirectory(prefix="llmkata-class-") as workdir:
        folder = submission.path
        if folder.suffix == ".zip":
            try:
                folder = unpack(folder, Path(workdir) / "unpacked")
            except ValueError as error:
                return {"submission": submission.name, "path": str(submission.path), "error": str(error)}, False
        package = Path(workdir) / submission.name  # imported under a name that is unique in the class
        shutil.copytree(folder, package, ignore=shutil.ignore_patterns("__pycache__", ".git"))
        sha = digest(package)
        saved = out / f"{submission.name}.json"
        if saved.exists():
            try:
                report = json.loads(saved.read_text(encoding="utf-8"))
                if report.get("submission_sha256") == sha:
                    return report, True
            except ValueError:
                pass
        run = run_spec(str(package), seed, extra, jobs=1, sandbox=sandbox, expected=expected)
        scores = score(run.records, run.expected)
        apply_shortcuts(scores, str(package), rubric.forbidden)
        report = to_json(submission.name, seed, grade_tests(scores, rubric), run)
        report.update(submission=submission.name, path=str(submission.path), submission_sha256=sha)
        write_text_atomic(saved, json.dumps(report, indent=1))
        return report, False


def _summary_rows(reports: list[dict]) -> list[dict]:
    rows = []
    for report in sorted(reports, key=lambda r: r["submission"]):
        row = {"submission": report["submission"], "path": report.get("path", ""),
               "score": report.get("score", 0.0), "max_score": report.get("max_score", 0.0),
               "fraction": report.get("fraction", 0.0), "error": report.get("error", "")}
        for chapter in report.get("chapters", []):
            row[chapter["module"]] = chapter["score"]
        rows.append(row)
    return rows


def write_summary(out: Path, reports: list[dict]) -> None:
    rows = _summary_rows(reports)
    columns = ["submission", "path", "score", "max_score", "fraction", "error"]
    columns += sorted({key for row in rows for key in row} - set(columns))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "summary.csv", text.getvalue())
    write_text_atomic(out / "summary.json", json.dumps(rows, indent=1))


def grade_many(paths: list[str], out: Path, jobs: int = 2, seed: int = 0, extra: list[str] = (),
               rubric: Rubric | None = None, say=print) -> list[dict]:
    found = submissions(paths)
    out.mkdir(parents=True, exist_ok=True)
    rubric = rubric or Rubric.load()
    expected = expected_ids(list(extra))
    import llmkata.grade as grading
    sandbox = Sandbox.detect(hidden=grading._hidden_folders())
    if sandbox.warning():
        say(sandbox.warning())
    reports = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(_grade_one, s, out, expected, seed, list(extra), rubric, sandbox): s for s in found}
        for done, future in enumerate(as_completed(futures), 1):
            report, reused = future.result()
            reports.append(report)
            write_summary(out, reports)
            what = (f"error: {report['error']}" if "error" in report else
                    f"{report['score']:g} / {report['max_score']:g}" + (" (already graded)" if reused else ""))
            say(f"[{done}/{len(found)}] {futures[future].name}: {what}")
    return reports
