"""The grade's reports in the formats graders read: llmkata's JSON, Gradescope, PrairieLearn and JUnit XML.

Points come from the rubric (`grader/data/rubric.toml`, or `--rubric FILE`): each chapter is worth its points,
shared among its properties by weight (1 each unless the rubric says otherwise). A skipped property earns nothing
and stays in the total; a contract check scores nothing.

llmkata's JSON (`--json FILE`), schema version 1:

    {"schema": 1, "implementation": str, "seed": int, "score": float, "max_score": float, "fraction": float,
     "sandbox": {"layers": [str], "warning": str}, "trusted_chapters": [module], "problems": [str],
     "seconds": {"spec_file[ + spec_file...]": float},  # one run of one file, or of trusted files together
     "chapters": [{"number": int, "module": str, "score": float, "max_score": float, "passed": int, "total": int,
                   "tests": [{"name": str, "outcome": "passed" | "failed" | "skipped", "score": float,
                              "max_score": float, "message": str, "example": str}]}]}
"""

from __future__ import annotations

import json
import tomllib
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from llmkata.atomic import write_text_atomic

SCHEMA = 1


@dataclass
class Rubric:
    chapters: dict[str, float]  # module -> points
    weights: dict[str, float] = field(default_factory=dict)  # test name (without parameters) -> weight
    default_points: float = 10.0
    forbidden: dict[str, list[str]] = field(default_factory=dict)  # module -> torch names it may not use

    @classmethod
    def load(cls, path: str | Path | None = None) -> Rubric:
        text = (Path(path).read_text(encoding="utf-8") if path else
                resources.files("llmkata").joinpath("data/rubric.toml").read_text(encoding="utf-8"))
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"the rubric {path or 'rubric.toml'} is not valid TOML: {error}") from None
        chapters, weights = data.get("chapters", {}), data.get("weights", {})
        for table, values in (("chapters", chapters), ("weights", weights)):
            bad = {k: v for k, v in values.items() if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0}
            if bad:
                raise ValueError(f"the rubric's [{table}] must give numbers ≥ 0, got {bad}")
        forbidden = data.get("forbidden", {})
        if not all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in forbidden.values()):
            raise ValueError("the rubric's [forbidden] must give each module a list of names")
        return cls({k: float(v) for k, v in chapters.items()}, {k: float(v) for k, v in weights.items()},
                   float(data.get("default_points", 10.0)), forbidden)

    def weight(self, test: str) -> float:
        return self.weights.get(test.split("[")[0], 1.0)


@dataclass
class Graded:
    name: str
    chapter: str
    number: int
    outcome: str
    score: float
    max_score: float
    message: str = ""
    example: str = ""


def grade_tests(scores: dict, rubric: Rubric) -> list[Graded]:
    """Every scoring property with its points: the chapter's points shared by weight."""
    graded = []
    for chapter in sorted(scores.values(), key=lambda c: c.number):
        failures = {f.name: f for f in chapter.failures if not f.contract}
        skipped = {s.name: s for s in chapter.skipped}
        names = chapter.names
        if not names:
            continue
        weights = {name: rubric.weight(name) for name in names}
        points = rubric.chapters.get(chapter.module, rubric.default_points)
        total = sum(weights.values()) or 1.0
        for name in names:
            worth = points * weights[name] / total
            if name in failures:
                outcome, message, example = "failed", failures[name].message, failures[name].example
            elif name in skipped:
                outcome, message, example = "skipped", skipped[name].reason, ""
            else:
                outcome, message, example = "passed", "", ""
            graded.append(Graded(name, chapter.module, chapter.number, outcome,
                                 worth if outcome == "passed" else 0.0, worth, message, example))
    return graded


def to_json(impl: str, seed: int, graded: list[Graded], run) -> dict:
    chapters: dict[str, dict] = {}
    for test in graded:
        entry = chapters.setdefault(test.chapter, {"number": test.number, "module": test.chapter, "score": 0.0,
                                                   "max_score": 0.0, "passed": 0, "total": 0, "tests": []})
        entry["score"] += test.score
        entry["max_score"] += test.max_score
        entry["passed"] += test.outcome == "passed"
        entry["total"] += 1
        entry["tests"].append({"name": test.name, "outcome": test.outcome, "score": round(test.score, 6),
                               "max_score": round(test.max_score, 6), "message": test.message,
                               "example": test.example})
    score = sum(t.score for t in graded)
    maximum = sum(t.max_score for t in graded)
    for entry in chapters.values():
        entry["score"], entry["max_score"] = round(entry["score"], 6), round(entry["max_score"], 6)
    return {"schema": SCHEMA, "implementation": impl, "seed": seed, "score": round(score, 6),
            "max_score": round(maximum, 6), "fraction": round(score / maximum, 6) if maximum else 0.0,
            "sandbox": {"layers": list(run.layers), "warning": run.warning},
            "trusted_chapters": list(getattr(run, "trusted", [])), "problems": list(run.problems),
            "seconds": dict(run.seconds), "chapters": list(chapters.values())}


def _output(test: Graded) -> str:
    return "\n".join(part for part in (test.message, f"example: {test.example}" if test.example else "") if part)


def to_gradescope(report: dict, graded: list[Graded]) -> dict:
    """Gradescope's results.json: tests with name, score, max_score, output, visibility."""
    notes = [f"llmkata, hypothesis seed {report['seed']}; sandbox: {', '.join(report['sandbox']['layers'])}"]
    notes += [report["sandbox"]["warning"]] if report["sandbox"]["warning"] else []
    notes += report["problems"]
    return {"score": report["score"], "output": "\n".join(notes), "visibility": "visible",
            "tests": [{"name": f"{t.number} {t.chapter}: {t.name}", "score": round(t.score, 6),
                       "max_score": round(t.max_score, 6), "status": "passed" if t.outcome == "passed" else "failed",
                       "output": _output(t), "visibility": "visible"} for t in graded]}


def to_prairielearn(report: dict, graded: list[Graded]) -> dict:
    """PrairieLearn's external-grader results.json: score in [0, 1], tests with points / max_points."""
    return {"gradable": True, "score": report["fraction"],
            "message": f"hypothesis seed {report['seed']}; sandbox: {', '.join(report['sandbox']['layers'])}",
            "tests": [{"name": f"{t.number} {t.chapter}: {t.name}", "points": round(t.score, 6),
                       "max_points": round(t.max_score, 6), "output": _output(t)} for t in graded]}


def to_junit(report: dict, graded: list[Graded]) -> str:
    """JUnit XML: one testsuite per chapter, one testcase per property."""
    suites = ElementTree.Element("testsuites", name="llmkata", tests=str(len(graded)),
                                 failures=str(sum(t.outcome == "failed" for t in graded)),
                                 skipped=str(sum(t.outcome == "skipped" for t in graded)))
    properties = ElementTree.SubElement(suites, "properties")
    ElementTree.SubElement(properties, "property", name="seed", value=str(report["seed"]))
    ElementTree.SubElement(properties, "property", name="sandbox", value=", ".join(report["sandbox"]["layers"]))
    by_chapter: dict[str, list[Graded]] = {}
    for test in graded:
        by_chapter.setdefault(f"{test.number} {test.chapter}", []).append(test)
    for name, tests in by_chapter.items():
        suite = ElementTree.SubElement(suites, "testsuite", name=name, tests=str(len(tests)),
                                       failures=str(sum(t.outcome == "failed" for t in tests)),
                                       skipped=str(sum(t.outcome == "skipped" for t in tests)))
        for test in tests:
            case = ElementTree.SubElement(suite, "testcase", classname=f"llmkata.spec.test_{test.chapter}",
                                          name=test.name)
            if test.outcome == "failed":
                ElementTree.SubElement(case, "failure", message=test.message[:500]).text = _output(test)
            elif test.outcome == "skipped":
                ElementTree.SubElement(case, "skipped", message=test.message[:500])
    ElementTree.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(suites, encoding="unicode") + "\n"


def write_reports(paths: dict[str, str | None], report: dict, graded: list[Graded]) -> list[str]:
    """Write each report asked for (json, gradescope, prairielearn, junit), atomically; returns the paths."""
    makers = {"json": lambda: json.dumps(report, indent=1),
              "gradescope": lambda: json.dumps(to_gradescope(report, graded), indent=1),
              "prairielearn": lambda: json.dumps(to_prairielearn(report, graded), indent=1),
              "junit": lambda: to_junit(report, graded)}
    written = []
    for kind, path in paths.items():
        if path:
            write_text_atomic(path, makers[kind]())
            written.append(path)
    return written
