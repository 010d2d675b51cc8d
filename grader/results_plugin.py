"""A pytest plugin, loaded in the grading child, that writes one JSON line per test to $LLMKATA_RESULTS.

Each line holds what a learner needs to act on the test without reading its traceback:

    {"nodeid": "spec/test_layers.py::test_softmax_rows_sum_to_one", "when": "call", "outcome": "failed",
     "message": "softmax rows must sum to 1 ...", "example": "x=tensor([[0.5, 1.0]])", "line": 41}

`message` is one line: a stub's sentence, an assertion's own message, `SyntaxError: invalid syntax — path, line 88:
def broken(:` for a module that does not compile, or the error type and its message with the line of the
implementation that raised it; for a skipped test, the reason. `example` is hypothesis's shrunk failing example,
its arguments on one line (the implementation argument left out). `line` is where the test is defined.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
from pathlib import Path

import pytest

EXAMPLE_WIDTH = 160  # a shrunk example is shown on one line, cut to this many characters
EXAMPLE_HEADS = ("Falsifying example", "Failing test case", "Falsifying explicit example", "Failing explicit example")
STUB_ERRORS = ("NotImplementedError", "Missing", "StubReached")


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _innermost(error: BaseException) -> BaseException:
    """The first error of a group (hypothesis reports several distinct bugs of one test as a group)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _syntax_error(error: BaseException) -> SyntaxError | None:
    """The SyntaxError behind `error`, if compiling a module is what failed (also when re-raised as another)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, SyntaxError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def describe_syntax_error(error: SyntaxError) -> str:
    """`SyntaxError: invalid syntax — my_impl/layers.py, line 88: def broken(:`"""
    where = f"{error.filename}, line {error.lineno}" if error.filename else f"line {error.lineno}"
    text = f": {error.text.strip()}" if error.text and error.text.strip() else ""
    return f"{type(error).__name__}: {error.msg} — {where}{text}"


def _raised_at(error: BaseException, folder: str | None) -> str:
    """` — at my_impl/layers.py, line 12: return x @ w`: the innermost frame inside `folder`, or ''."""
    if not folder or error.__traceback__ is None:
        return ""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if Path(frame.filename).resolve().is_relative_to(folder)]
    if not frames:
        return ""
    frame = frames[-1]
    line = f": {frame.line.strip()}" if frame.line and frame.line.strip() else ""
    return f" — at {frame.filename}, line {frame.lineno}{line}"


def _implementation_folder(config) -> str | None:
    try:
        return str(Path(config.llmkata_impl.location).resolve())
    except Exception:  # an implementation that cannot even say where it is: the message does without
        return None


def _is_stub(error: BaseException) -> bool:
    error = _innermost(error)
    return type(error).__name__ in STUB_ERRORS or type(error.__cause__).__name__ in STUB_ERRORS


def describe(error: BaseException, folder: str | None) -> str:
    """One line a learner can act on, for an error raised while running a test."""
    error = _innermost(error)
    syntax = _syntax_error(error)
    if syntax is not None:
        return describe_syntax_error(syntax)
    kind = type(error).__name__
    text = _first_line(str(error))
    if kind in STUB_ERRORS:
        return text or "not implemented yet"
    if isinstance(error, AssertionError):
        return text or "an assertion failed"
    return f"{kind}: {text}" + _raised_at(error, folder) if text else kind + _raised_at(error, folder)


def shrunk_example(error: BaseException) -> str:
    """Hypothesis's failing example on one line, without the implementation argument.

    Example: a note `Failing test case: test_x(impl=..., x=tensor([1.]), dim=0)` -> `x=tensor([1.]), dim=0`
    """
    error = _innermost(error)
    for note in getattr(error, "__notes__", ()):
        if not note.startswith(EXAMPLE_HEADS) or "(" not in note:
            continue
        arguments = note.split("(", 1)[1].rstrip().removesuffix(")")
        arguments = re.sub(r"impl=Implementation\([^()]*\),?", "", arguments)
        example = " ".join(line.strip() for line in arguments.splitlines() if line.strip()).strip().rstrip(",")
        return example if len(example) <= EXAMPLE_WIDTH else example[:EXAMPLE_WIDTH - 3] + "..."
    return ""


_current_file = None


def pytest_runtest_setup(item):
    """A new spec file: where the implementation runs in the grader's worker, its own time starts."""
    global _current_file
    if item.path != _current_file:
        _current_file = item.path
        remote = sys.modules.get("llmkata.remote")
        if remote is not None:
            remote.start_file()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if call.excinfo is not None:
        error = call.excinfo.value
        if call.excinfo.errisinstance(pytest.skip.Exception):
            report.llmkata_message = _first_line(getattr(error, "msg", "") or str(error))
        else:
            report.llmkata_message = describe(error, _implementation_folder(item.config))
            # A stub, or a module that does not compile, fails the same way for every input: no example to show.
            same_for_all = _syntax_error(_innermost(error)) or _is_stub(error)
            report.llmkata_example = "" if same_for_all else shrunk_example(error)
    return report


def _message(report) -> str:
    if isinstance(report.longrepr, str):  # a stub: spec/conftest.py made it one sentence already
        return _first_line(report.longrepr)
    if report.outcome == "skipped" and isinstance(report.longrepr, tuple):  # (path, line, "Skipped: reason")
        return _first_line(report.longrepr[2].removeprefix("Skipped: "))
    if getattr(report, "llmkata_message", ""):
        return report.llmkata_message
    text = report.longreprtext.strip() if report.longrepr is not None else ""
    lines = [line for line in text.splitlines() if line.startswith("E ")]
    return (lines[0][2:].strip() if lines else text.splitlines()[-1]) if text else ""


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        record = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                  "message": _message(report) if report.outcome != "passed" else "",
                  "example": getattr(report, "llmkata_example", "") if report.outcome == "failed" else "",
                  "line": report.location[1] + 1 if report.location[1] is not None else None}
        with open(os.environ["LLMKATA_RESULTS"], "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
