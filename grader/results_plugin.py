"""A pytest plugin, loaded in the grading child, that writes one JSON line per test to $LLMKATA_RESULTS."""

import json
import os


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        message = ""
        if report.outcome != "passed" and report.longrepr is not None:
            text = report.longreprtext.strip()
            # The most telling line: a one-sentence stub message, else the assertion's own message.
            lines = [line for line in text.splitlines() if line.startswith("E ")]
            message = (lines[0][2:].strip() if lines else text.splitlines()[-1]) if text else ""
        record = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome, "message": message}
        with open(os.environ["LLMKATA_RESULTS"], "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
