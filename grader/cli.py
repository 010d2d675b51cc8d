"""The `llmkata` command line.

    llmkata grade [IMPL]                        # the spec against an implementation, scored by chapter
    llmkata grade IMPL --gradescope results.json --junit report.xml   # reports for graders and CI
    llmkata grade-many submissions/*.zip --out grades --jobs 2          # a class, into grades/summary.csv
    llmkata autograder gradescope|prairielearn|github --out DIR         # a ready autograder for a platform
    llmkata exercises [--check | --out DIR]     # the stubs, written from the reference (--out never overwrites)
    llmkata bench [--impl X] [--device cpu|cuda] [--only attention|tokenizer|train|data] [--quick] [--json FILE]
                  [--plot FILE]   # speed ratios, attention throughput
    llmkata train                               # default corpus, default model, a few minutes on 2 CPU cores
    llmkata train --impl exercises              # the same, with your own components
    llmkata train --impl exercises --fallback reference   # yours where written, the reference's for the rest
    llmkata train --data notes/ --steps 2000    # your files (.txt, .md, .jsonl, folders), or a Hugging Face dataset
    llmkata train --config run.toml --lr 1e-3   # a TOML file, then flags on top
    llmkata train --resume runs/20250101-120000 # continue a run where its last checkpoint left it (Ctrl-C saves one)
    llmkata train --resume RUN --steps 1200     # extend a run to more steps (the lr schedule spans the new total)
    torchrun --nproc_per_node 2 -m llmkata.cli train --device cpu   # data parallel (--parallel ddp|fsdp)
    llmkata train --corpus tasks --out runs/base                 # pre-train on llmkata's synthetic tasks
    llmkata train --stage sft --from runs/base --out runs/sft    # then: sft [--lora 8], reward, ppo, dpo, grpo
    llmkata sample --prompt "The with statement"
    llmkata eval --run runs/20250101-120000

The train, sample and eval commands only parse arguments and report: the run itself is `llmkata.pipeline`, its
configuration `llmkata.run_config`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from itertools import chain
from pathlib import Path

import llmkata.exercise_generator as generator
from llmkata.run_config import (EOT, ConfigError, RunConfig, add_config_arguments, config_from_mapping, flags_given,
                                read_toml, resumed_config)
from llmkata.stage_config import add_stage_arguments, stage_flags_given


def _package_dir(name: str) -> Path:
    import importlib
    return Path(importlib.import_module(f"llmkata.{name}").__path__[0])


def cmd_grade(args) -> int:
    from llmkata.grade import grade
    from llmkata.reports import Rubric, grade_tests, to_json, write_reports

    reports = {"json": args.json, "gradescope": args.gradescope, "prairielearn": args.prairielearn,
               "junit": args.junit}
    try:
        rubric = Rubric.load(args.rubric)
        for path in filter(None, reports.values()):
            if not Path(path).parent.is_dir():
                raise ValueError(f"cannot write the report {path}: its folder does not exist")
        if args.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
        table, scores, run, seed = grade(args.impl, seed=args.seed, extra=["-k", args.k] if args.k else [],
                                         chapter=args.chapter, jobs=args.jobs, forbidden=rubric.forbidden)
    except (RuntimeError, ValueError, OSError) as error:
        print(f"llmkata grade: {error}", file=sys.stderr)
        return 2
    graded = grade_tests(scores, rubric)
    report = to_json(args.impl, seed, graded, run)
    print(table, end="")
    print(f"score: {report['score']:g} / {report['max_score']:g} points ({100 * report['fraction']:.1f}%)")
    for path in write_reports(reports, report, graded):
        print(f"wrote {path}")
    failed = any(chapter.failures for chapter in scores.values())
    below = args.min_score is not None and report["fraction"] < args.min_score
    return 1 if (args.strict and failed) or below else 0


def cmd_grade_many(args) -> int:
    from llmkata.grade_many import grade_many
    from llmkata.reports import Rubric

    try:
        if args.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
        reports = grade_many(args.submissions, Path(args.out), jobs=args.jobs, seed=args.seed,
                             extra=["-k", args.k] if args.k else [], rubric=Rubric.load(args.rubric))
    except (RuntimeError, ValueError, OSError) as error:
        print(f"llmkata grade-many: {error}", file=sys.stderr)
        return 2
    print(f"{len(reports)} submission(s); summary in {Path(args.out) / 'summary.csv'}")
    return 0


AUTOGRADERS = ("gradescope", "prairielearn", "github")


def cmd_autograder(args) -> int:
    """Write a ready autograder for a platform into --out; a file already there is never replaced."""
    from importlib import resources

    source = resources.files("llmkata").joinpath("data", "autograders", args.platform)
    out = Path(args.out or f"{args.platform}-autograder")
    files = sorted((entry.name, entry) for entry in source.iterdir() if entry.is_file())
    there = [name for name, _ in files if (out / name).exists()]
    if there:
        print(f"llmkata autograder: {out} already has {', '.join(there)}; nothing was written (choose another "
              "--out, or remove them)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    from llmkata.atomic import write_text_atomic
    for name, entry in files:
        write_text_atomic(out / name, entry.read_text(encoding="utf-8"))
        if not name.endswith((".yml", "Dockerfile")):
            (out / name).chmod(0o755)
    print(f"wrote {', '.join(name for name, _ in files)} to {out}")
    return 0


def cmd_exercises(args) -> int:
    reference = _package_dir("reference")
    target = Path(args.out) if args.out else _package_dir("exercises")
    if args.force and not args.out:
        print("llmkata exercises: --force goes with --out (the package's own exercises are always rewritten)",
              file=sys.stderr)
        return 2
    try:
        if args.check:
            stale = generator.stale(reference, target)
            if stale:
                print(f"exercises are out of date with reference: {', '.join(stale)}; run `llmkata exercises`",
                      file=sys.stderr)
                return 1
            print("exercises are up to date")
            return 0
        if args.out:  # a learner's folder: their work is never overwritten without a backup
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            copy = generator.write_copy(reference, target, force=args.force, stamp=stamp)
        else:
            written = generator.generate(reference, target)
    except (generator.MarkerError, OSError) as error:
        print(f"llmkata exercises: {error}", file=sys.stderr)
        return 2
    if not args.out:
        print(f"wrote {len(written)} file(s) to {target}" + (f": {', '.join(written)}" if written else ""))
        return 0
    print(f"wrote {len(copy.written)} file(s) to {target}" + (f": {', '.join(copy.written)}" if copy.written else ""))
    for backup in copy.backups:
        print(f"  your previous {backup.name.split('.bak-')[0]} is saved as {backup}")
    if copy.kept:
        print(f"llmkata exercises: kept {len(copy.kept)} file(s) in {target} that differ from their stubs (your "
              f"work, or stubs of an older llmkata): {', '.join(copy.kept)}. To replace them with fresh stubs, "
              f"keeping a backup of each: llmkata exercises --out {args.out} --force", file=sys.stderr)
    return 0


# `llmkata bench --quick`: the knobs the benchmarks read, set to a smaller run, and the slowest benchmarks left out.
QUICK_KNOBS = {"LLMKATA_BENCH_ROUNDS": "1", "LLMKATA_BENCH_MB": "1", "LLMKATA_BENCH_TEXTBOOK_MB": "0.05",
               "LLMKATA_BENCH_MEMORY_N": "4096", "LLMKATA_BENCH_SWEEP": "quick"}
QUICK_DESELECT = "not N4096 and not peak_memory"


def _bench_topics() -> list[str]:
    """The benchmark files by topic: bench_attention.py -> 'attention'."""
    return sorted(path.stem.removeprefix("bench_") for path in _package_dir("benchmarks").glob("bench_*.py"))


def bench_ratios(report: dict) -> list[tuple[str, str, float]]:
    """(benchmark, field, value) of every ratio to a baseline in a pytest-benchmark JSON report: the fields of
    `extra_info` named `<what>_vs_<baseline>` (throughput_vs_sdpa, ratio_vs_builtin, time_vs_hf_tokenizers, ...)."""
    return [(bench.get("name", "?"), key, value) for bench in report.get("benchmarks", [])
            for key, value in bench.get("extra_info", {}).items()
            if "_vs_" in key and isinstance(value, (int, float)) and not isinstance(value, bool)]


def render_ratios(ratios: list[tuple[str, str, float]]) -> str:
    if not ratios:
        return "llmkata bench: no ratio was reported (did every benchmark run?)"
    width_name = max(len(name) for name, _, _ in ratios)
    width_key = max(len(key) for _, key, _ in ratios)
    rows = [("llmkata bench — ratios to baselines timed in the same run: X_vs_Y is ours (or X) over Y, so a time "
             "or cpu ratio below 1 and a throughput, speed or plain ratio above 1 mean faster"), ""]
    previous = None
    for name, key, value in ratios:
        rows.append(f"{(name if name != previous else ''):<{width_name}}  {key:<{width_key}}  {value:g}")
        previous = name
    return "\n".join(rows)


def cmd_bench(args, extra: list[str]) -> int:
    import subprocess
    import tempfile

    folder = _package_dir("benchmarks")
    targets = [str(folder / f"bench_{args.only}.py")] if args.only else [str(folder)]
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see _quiet_threads: spinning OpenMP threads skew every timing
    env.setdefault("LLMKATA_BENCH_PROGRESS", "1")  # benchmarks/conftest.py: a progress bar on stderr
    if args.device:
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                print("llmkata bench --device cuda: torch sees no CUDA device (install a CUDA build of torch, or "
                      "run on a machine with a GPU)", file=sys.stderr)
                return 2
        env["LLMKATA_BENCH_DEVICE"] = args.device
    for option, value in (("--json", args.json), ("--plot", args.plot)):  # refused now, not after the run
        if not value:
            continue
        folder = Path(value).resolve().parent
        problem = ("is a folder: name a file" if Path(value).is_dir() else
                   f"goes into {folder}, which does not exist" if not folder.is_dir() else None)
        if problem:
            print(f"llmkata bench {option} {value}: {problem}", file=sys.stderr)
            return 2
    quick = []
    if args.quick:
        env.update({name: value for name, value in QUICK_KNOBS.items() if name not in os.environ})
        quick = ["-k", QUICK_DESELECT]  # a -k among the extra arguments comes later, and wins
    with tempfile.TemporaryDirectory(prefix="llmkata-bench-") as workdir:
        # pytest-benchmark writes into the scratch folder; --json and --plot get whole files once the run is over
        report = Path(workdir) / "bench.json"
        # The file pattern is given here: from an installed wheel there is no pyproject.toml to say `bench_*.py`.
        command = [sys.executable, "-m", "pytest", *targets, "--impl", args.impl, "-p", "no:cacheprovider",
                   "-o", "addopts=", "-o", "python_files=bench_*.py", f"--benchmark-json={report}", *quick, *extra]
        code = subprocess.run(command, env=env).returncode
        if report.exists():
            from llmkata.atomic import write_bytes_atomic
            from llmkata.benchmarks.common import SWEEP_TEST, plot_sweep, render_sweep, sweep_rows

            try:
                raw = report.read_bytes()
                data = json.loads(raw)
            except (OSError, ValueError) as error:
                print(f"llmkata bench: could not read pytest-benchmark's report: {error}", file=sys.stderr)
            else:
                rows = sweep_rows(data)  # the attention sweep has a table of its own
                ratios = [r for r in bench_ratios(data) if not r[0].startswith(SWEEP_TEST)]
                if ratios or not rows:
                    print("\n" + render_ratios(ratios))
                if rows:
                    print("\n" + render_sweep(rows))
                if args.plot:
                    if rows:
                        picture = Path(workdir) / "plot.png"
                        plot_sweep(rows, picture)
                        write_bytes_atomic(args.plot, picture.read_bytes())
                        print(f"\nthroughput against N: {args.plot}")
                    else:
                        print("llmkata bench --plot: no attention sweep ran, nothing to plot", file=sys.stderr)
                if args.json:
                    write_bytes_atomic(args.json, raw)
                    print(f"\nthe whole report: {args.json}")
    return code


def _quiet_threads() -> None:
    """Threads that sleep while they wait. OpenMP's default is to spin, which costs little on an idle machine but,
    on one shared with other processes every small op waits for a descheduled thread (benchmarks/results/
    attention.md: tiled attention fell from about 0.6x to 0.19x of SDPA that way). Read once, when torch loads,
    so this runs before anything imports torch (the pipeline, or an implementation)."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _train_config(args) -> tuple[RunConfig, Path]:
    """The configuration and run folder of `llmkata train`: a new run's, or the saved one of the run to resume."""
    flags = flags_given(args)
    if args.resume:
        run = Path(args.resume)
        if not (run / "config.toml").exists():
            raise ConfigError(f"--resume {run}: there is no run there (config.toml is missing)")
        if (run / "stage.toml").exists():
            raise ConfigError(f"--resume {run}: a --stage run is not resumed; run the stage again")
        if args.config:
            raise ConfigError("--resume takes its configuration from the run folder: drop --config")
        saved = config_from_mapping(read_toml(run / "config.toml"), where=str(run / "config.toml"))
        return resumed_config(saved, flags, where=f"--resume {run}"), run
    base = config_from_mapping(read_toml(args.config), where=args.config) if args.config else RunConfig()
    config = config_from_mapping(flags, base=base, where="the flags")
    run = Path(args.out) if args.out else Path("runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    from llmkata.pipeline import CHECKPOINT

    if (run / CHECKPOINT).exists():
        raise ConfigError(f"{run} already holds a run: --resume {run} continues it, or choose another --out")
    return config, run


def cmd_train(args) -> int:
    _quiet_threads()
    stage = stage_flags_given(args)
    if stage:  # --stage, --from and the stages' own flags: llmkata.stages
        from llmkata.stages import command

        return command(args, stage)
    from llmkata import pipeline

    try:
        config, run = _train_config(args)
        pipeline.pick_device(config.device)  # a device this machine lacks: said before anything else
    except ConfigError as error:
        print(f"llmkata train: {error}", file=sys.stderr)
        return 2
    say = (lambda message: print(message, file=sys.stderr, flush=True))
    if os.environ.get("RANK", "0") != "0":  # another process of a torchrun / accelerate world: rank 0 reports
        say = (lambda message: None)
    say(f"llmkata train: run folder {run}, implementation {config.impl}")
    try:
        summary = pipeline.train(config, run, resume=bool(args.resume), say=say)
    except ConfigError as error:
        print(f"llmkata train: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, pipeline.Interrupted):
            where = f"stopped after step {interrupt.step} of {config.steps} and saved a checkpoint there"
        elif (run / pipeline.CHECKPOINT).exists():
            step = pipeline.checkpoint_step(run / pipeline.CHECKPOINT)
            where = f"stopped; the last checkpoint is at step {'unknown' if step is None else step}"
        elif (run / "config.toml").exists():
            where = "stopped before the first checkpoint"
        else:
            print("llmkata train: stopped before training started; nothing was kept", file=sys.stderr)
            return 130
        print(f"llmkata train: {where}: `llmkata train --resume {run}` continues", file=sys.stderr)
        return 130
    except pipeline.NOT_YET as error:
        hint = "" if config.fallback else (" To train now with the reference's code for every part not written "
                                           "yet: --fallback reference")
        print(f"llmkata train --impl {config.impl}: {str(error).splitlines()[0]}{hint}", file=sys.stderr)
        return 2
    except FloatingPointError as error:
        checkpoint = run / pipeline.CHECKPOINT
        last = "no checkpoint was written yet"
        if checkpoint.exists():
            step = pipeline.checkpoint_step(checkpoint)
            last = f"the last good checkpoint is {checkpoint} (step {'unknown' if step is None else step})"
        print(f"llmkata train: the loss stopped being a number at {error}. Training stopped; {last}. "
              "Try a lower --lr or a longer --warmup-steps in a new run.", file=sys.stderr)
        return 1
    if not summary:  # not rank 0 of a world
        return 0
    print(json.dumps(summary, indent=1))
    say(f"done in {summary['train_seconds']:.0f} s of training: validation loss {summary['val_loss']:.3f}, "
        f"{summary['val_bits_per_byte']:.3f} bits/byte. Next: llmkata sample --run {run} --prompt \"...\"")
    return 0


def _sample_flags_problem(args) -> str | None:
    """What is wrong with the sampling flags, checked before anything is loaded or printed; None if nothing."""
    if args.max_new_tokens < 0:
        return f"--max-new-tokens must be >= 0, got {args.max_new_tokens}"
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        return f"--temperature must be a number >= 0 (0: greedy), got {args.temperature}"
    if args.top_k < 0:
        return f"--top-k must be >= 0 (0: no top-k filter), got {args.top_k}"
    if not 0 < args.top_p <= 1:
        return f"--top-p must be in (0, 1] (1: no top-p filter), got {args.top_p}"
    return None


def _say_sources(command: str, run) -> None:
    """For a run trained with --fallback reference: one line on stderr saying which chapters are whose."""
    if run.mix is None:
        return
    how = "as the run was trained (sources.json in the run folder names each part)" if run.as_recorded else (
        f"decided now for {run.config.impl}")
    print(f"llmkata {command}: --fallback reference, {how}: {run.mix.line()}", file=sys.stderr)
    if run.changed:
        print(f"llmkata {command}: the reference's now, since yours are not written any more: "
              f"{', '.join(run.changed)}", file=sys.stderr)


def cmd_sample(args) -> int:
    _quiet_threads()
    problem = _sample_flags_problem(args)
    if problem:
        print(f"llmkata sample: {problem}", file=sys.stderr)
        return 2
    import torch

    from llmkata import pipeline

    try:
        folder = pipeline.find_run(args.run_folder)
        run = pipeline.Run.open(folder, args.impl)
        _say_sources("sample", run)
        tokenizer = run.tokenizer
        eot = tokenizer.special_tokens[EOT]
        prompt = tokenizer.encode(args.prompt) if args.prompt else []
        if not prompt:
            prompt = [eot]  # an empty prompt starts a new document
        seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
        generator = torch.Generator().manual_seed(seed)
        tokens = iter(run.impl.generate.generate(run.model, prompt, args.max_new_tokens,
                                                 temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                                 stop_tokens=[eot], generator=generator, use_cache=not args.no_cache))
        first = next(tokens, None)  # a generate that checks its arguments lazily does it here, before any output
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
        produced, shown = [], ""
        for token in chain([] if first is None else [first], tokens):
            produced.append(token)
            text = tokenizer.decode(produced)
            if text.endswith("\ufffd"):
                continue  # a character cut between tokens: wait for its other bytes
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
        sys.stdout.write(tokenizer.decode(produced)[len(shown):] + "\n")
        sys.stdout.flush()
    except (ValueError, *pipeline.NOT_YET) as error:
        print(f"llmkata sample: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"[{len(produced)} tokens, seed {seed}, run {folder}]", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    _quiet_threads()
    from llmkata import pipeline

    try:
        if args.tasks and not Path(args.tasks).is_file():
            raise ConfigError(f"--tasks {args.tasks}: no such file")
        folder = pipeline.find_run(args.run_folder)
        run = pipeline.Run.open(folder, args.impl)
        _say_sources("eval", run)
        val = run.validate(run.tokens("val"))
        choice = run.multiple_choice(args.tasks)
    except (ValueError, *pipeline.NOT_YET) as error:
        print(f"llmkata eval: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    # The checkpoint's step: a run killed after it logged later steps is evaluated as its checkpoint left it.
    result = {"run": str(folder), "step": run.step, "validation": val, "multiple_choice": choice}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    rows = [("run", str(folder)), ("steps trained", str(result["step"])),
            ("validation tokens", f"{val['targets']:,}"), ("validation loss", f"{val['loss']:.4f} nats/token"),
            ("perplexity", f"{val['perplexity']:.2f}"), ("bits per byte", f"{val['bits_per_byte']:.4f}")]
    if choice is None and args.tasks:
        rows += [(f"multiple choice ({Path(args.tasks).name})", "no task fits the context")]
    if choice:
        skipped = f", {choice['skipped']} longer than the context left out" if choice["skipped"] else ""
        rows += [(f"multiple choice ({choice['tasks']}, {choice['n']} tasks{skipped})",
                  f"accuracy {choice['accuracy']:.3f}, per byte {choice['accuracy_norm']:.3f}, "
                  f"chance {choice['chance']:.3f}")]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name.ljust(width)}  {value}" for name, value in rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmkata", description="Build an LLM from scratch, one specified part at a time.")
    sub = parser.add_subparsers(dest="command", required=True)

    grade = sub.add_parser("grade", help="run the spec against an implementation and score it by chapter")
    grade.add_argument("impl", nargs="?", default="exercises",
                       help="exercises (default), reference, a folder or a module name")
    grade.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random, printed)")
    grade.add_argument("-k", default=None, help="only tests matching this pytest -k expression")
    grade.add_argument("--chapter", default=None, metavar="NAME",
                       help="list the failing properties of this chapter (name or number; default: the first "
                            "chapter not finished)")
    grade.add_argument("--strict", action="store_true",
                       help="exit 1 if any test fails (skipped tests are listed, and do not fail it)")
    grade.add_argument("--min-score", type=float, default=None, metavar="X",
                       help="exit 1 if the score's fraction of the points is below X (0 to 1)")
    grade.add_argument("--jobs", type=int, default=2, help="spec files graded at once, each in its own sandbox")
    grade.add_argument("--rubric", default=None, metavar="FILE", help="points per chapter and property (TOML; "
                       "default: the shipped rubric.toml)")
    grade.add_argument("--json", default=None, metavar="FILE", help="write llmkata's JSON report here")
    grade.add_argument("--gradescope", default=None, metavar="FILE", help="write Gradescope's results.json here")
    grade.add_argument("--prairielearn", default=None, metavar="FILE",
                       help="write PrairieLearn's results.json here")
    grade.add_argument("--junit", default=None, metavar="FILE", help="write a JUnit XML report here")
    grade.set_defaults(run=cmd_grade)

    many = sub.add_parser("grade-many", help="grade a class (folders or zip files) into one summary, resumable")
    many.add_argument("submissions", nargs="+", help="submission folders or .zip files")
    many.add_argument("--out", default="grades", help="reports and summary.csv go here (default: ./grades)")
    many.add_argument("--jobs", type=int, default=2, help="submissions graded at once")
    many.add_argument("--seed", type=int, default=0, help="hypothesis seed, the same for every submission")
    many.add_argument("-k", default=None, help="only tests matching this pytest -k expression")
    many.add_argument("--rubric", default=None, metavar="FILE", help="points per chapter and property (TOML)")
    many.set_defaults(run=cmd_grade_many)

    autograder = sub.add_parser("autograder", help="write a ready autograder for Gradescope, PrairieLearn or GitHub")
    autograder.add_argument("platform", choices=AUTOGRADERS)
    autograder.add_argument("--out", default=None, help="folder to write (default: PLATFORM-autograder)")
    autograder.set_defaults(run=cmd_autograder)

    ex = sub.add_parser("exercises", help="write exercise stubs from the reference")
    ex.add_argument("--check", action="store_true", help="fail if exercises/ is out of date")
    ex.add_argument("--out", default=None,
                    help="write the stubs to this folder instead; files that differ from their stub are kept")
    ex.add_argument("--force", action="store_true",
                    help="with --out: replace files that differ from their stub, saving each as NAME.bak-<time>")
    ex.set_defaults(run=cmd_exercises)

    bench = sub.add_parser("bench", help="run the benchmarks and print each ratio to its baseline",
                           description="Check each result, then time it against a baseline measured in the same "
                                       "run, and print the ratios. Extra arguments go to pytest.")
    bench.add_argument("--impl", default="reference", help="reference (default), exercises, a folder or a module name")
    bench.add_argument("--only", choices=_bench_topics(), default=None, help="one benchmark file")
    bench.add_argument("--quick", action="store_true",
                       help="one round, 1 MB of text, the largest sizes left out (" +
                            ", ".join(f"{k}={v}" for k, v in QUICK_KNOBS.items()) + f", -k '{QUICK_DESELECT}')")
    bench.add_argument("--json", default=None, metavar="FILE",
                       help="keep pytest-benchmark's JSON report here (saved runs compare with "
                            "`pytest-benchmark compare A.json B.json`)")
    bench.add_argument("--device", choices=["cpu", "cuda"], default=None,
                       help="where the attention sweep runs (default: cuda when there is one)")
    bench.add_argument("--plot", default=None, metavar="FILE",
                       help="write the attention sweep's FLOP/s against N as a PNG")
    bench.set_defaults(run=cmd_bench)

    train = sub.add_parser("train", help="train a small model end to end (default corpus, a few CPU minutes)")
    train.add_argument("--config", default=None, help="a TOML file of fields (flags given here override it)")
    train.add_argument("--out", default=None, help="the run folder (default: runs/<date-time>)")
    train.add_argument("--resume", default=None, metavar="RUN",
                       help="continue the run in this folder from its checkpoint (Ctrl-C saves one); with a larger "
                            "--steps, extend it")
    add_config_arguments(train)
    add_stage_arguments(train)
    train.set_defaults(run=cmd_train)

    sample = sub.add_parser("sample", help="continue a prompt with a trained run, streaming the text")
    sample.add_argument("--run", dest="run_folder", default=None,
                        help="run folder (default: the newest under ./runs)")
    sample.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    sample.add_argument("--max-new-tokens", type=int, default=200)
    sample.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    sample.add_argument("--top-k", type=int, default=40, help="0: no top-k filter")
    sample.add_argument("--top-p", type=float, default=1.0, help="1: no top-p filter")
    sample.add_argument("--seed", type=int, default=None, help="seed of the sampler (default: random)")
    sample.add_argument("--impl", default=None, help="implementation (default: the run's)")
    sample.add_argument("--no-cache", action="store_true", help="recompute every position at every step")
    sample.set_defaults(run=cmd_sample)

    evaluate = sub.add_parser("eval", help="validation loss, bits per byte and multiple-choice accuracy of a run")
    evaluate.add_argument("--run", dest="run_folder", default=None,
                          help="run folder (default: the newest under ./runs)")
    evaluate.add_argument("--tasks", default=None,
                          help="a multiple-choice JSONL file (default: the shipped example set)")
    evaluate.add_argument("--impl", default=None, help="implementation (default: the run's)")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.set_defaults(run=cmd_eval)

    args, extra = parser.parse_known_args(argv)
    if args.command != "bench" and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.run(args, extra) if args.command == "bench" else args.run(args)


if __name__ == "__main__":
    sys.exit(main())
