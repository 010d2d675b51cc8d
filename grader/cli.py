"""The `llmkata` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import llmkata.exercise_generator as generator


def _package_dir(name: str) -> Path:
    import importlib
    return Path(importlib.import_module(f"llmkata.{name}").__path__[0])


def cmd_grade(args) -> int:
    from llmkata.grade import grade

    try:
        table, scores = grade(args.impl, seed=args.seed, extra=["-k", args.k] if args.k else [])
    except (RuntimeError, ValueError) as error:
        print(f"llmkata grade: {error}", file=sys.stderr)
        return 2
    print(table)
    failed = any(chapter.passed < chapter.total for chapter in scores.values())
    return 1 if args.strict and failed else 0


def cmd_exercises(args) -> int:
    reference = _package_dir("reference")
    target = Path(args.out) if args.out else _package_dir("exercises")
    try:
        if args.check:
            stale = generator.stale(reference, target)
            if stale:
                print(f"exercises are out of date with reference: {', '.join(stale)}; run `llmkata exercises`",
                      file=sys.stderr)
                return 1
            print("exercises are up to date")
            return 0
        written = generator.generate(reference, target)
    except (generator.MarkerError, OSError) as error:
        print(f"llmkata exercises: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} file(s) to {target}" + (f": {', '.join(written)}" if written else ""))
    return 0


def cmd_bench(args, extra: list[str]) -> int:
    import subprocess

    command = [sys.executable, "-m", "pytest", str(_package_dir("benchmarks")), "--impl", args.impl,
               "-p", "no:cacheprovider", "-o", "addopts=", *extra]
    return subprocess.run(command).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmkata", description="Build an LLM from scratch, one specified part at a time.")
    sub = parser.add_subparsers(dest="command", required=True)

    grade = sub.add_parser("grade", help="run the spec against an implementation and score it by chapter")
    grade.add_argument("impl", nargs="?", default="exercises",
                       help="exercises (default), reference, a folder or a module name")
    grade.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random, printed)")
    grade.add_argument("-k", default=None, help="only tests matching this pytest -k expression")
    grade.add_argument("--strict", action="store_true", help="exit 1 unless every test passes")
    grade.set_defaults(run=cmd_grade)

    ex = sub.add_parser("exercises", help="write exercise stubs from the reference")
    ex.add_argument("--check", action="store_true", help="fail if exercises/ is out of date")
    ex.add_argument("--out", default=None, help="write a fresh copy of the stubs to this folder instead")
    ex.set_defaults(run=cmd_exercises)

    bench = sub.add_parser("bench", help="run the benchmarks (extra arguments go to pytest)")
    bench.add_argument("--impl", default="reference", help="reference (default), exercises, a folder or a module name")
    bench.set_defaults(run=cmd_bench)

    from llmkata.train_run import register as register_train_sample_eval

    register_train_sample_eval(sub)

    args, extra = parser.parse_known_args(argv)
    if args.command != "bench" and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.run(args, extra) if args.command == "bench" else args.run(args)


if __name__ == "__main__":
    sys.exit(main())
