"""The first hour from a wheel: build it, install it into a fresh virtual environment, and in an empty folder run
what a learner runs first — `llmkata exercises --out`, `llmkata grade`, the spec under plain pytest, a tiny
`llmkata train` on one text file, and `llmkata bench --quick`.

Nothing of the repository is on the path there: no pyproject.toml, no conftest.py, no editable install. Slow (a few
minutes: torch is installed from its wheel), so it is marked `wheel`: `pytest -m "not wheel"` leaves it out.
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # the CPU build pip finds first here, as in .ci/run
SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis",
                                 ".benchmarks", ".pytest_cache", "runs")


def run(command: list[str], cwd: Path, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    done.output = done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with torch and the wheel built from this working tree; its bin folder."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"  # built from a copy, so that the build leaves nothing in the working tree
    shutil.copytree(ROOT, source, ignore=SOURCES)
    built = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                 str(base / "dist"), str(source)], cwd=base, timeout=300)
    assert built.returncode == 0, built.output[-3000:]
    (wheel,) = (base / "dist").glob("llmkata-*.whl")
    created = run([sys.executable, "-m", "venv", str(base / "venv")], cwd=base, timeout=120)
    assert created.returncode == 0, created.output[-3000:]
    pip = [str(base / "venv" / "bin" / "python"), "-m", "pip", "install", "-q"]
    for step in ([TORCH], [str(wheel)]):
        installed = run(pip + step, cwd=base, timeout=600)
        assert installed.returncode == 0, installed.output[-3000:]
    return base / "venv" / "bin"


@pytest.fixture(scope="module")
def env(venv) -> dict:
    """The environment of a learner's shell with that virtual environment activated, and nothing of ours."""
    out = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "LLMKATA_IMPL", "LLMKATA_RESULTS", "PYTEST_ADDOPTS")
           and not k.startswith("PYTEST_")}
    out["PATH"] = f"{venv}{os.pathsep}{out.get('PATH', '')}"
    out["VIRTUAL_ENV"] = str(venv.parent)
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory, venv, env) -> Path:
    """An empty folder, then the stubs written into it: `llmkata exercises --out my_impl`."""
    here = tmp_path_factory.mktemp("learner")
    written = run([str(venv / "llmkata"), "exercises", "--out", "my_impl"], cwd=here, timeout=120, env=env)
    assert written.returncode == 0, written.output[-3000:]
    return here


def test_exercises_out_writes_the_stubs_into_an_empty_folder(folder):
    assert (folder / "my_impl" / "layers.py").exists() and (folder / "my_impl" / "__init__.py").exists()
    assert "raise NotImplementedError(" in (folder / "my_impl" / "layers.py").read_text()


def test_grade_of_the_fresh_stubs_passes_nothing_and_exits_0(folder, venv, env):
    graded = run([str(venv / "llmkata"), "grade", "./my_impl", "--seed", "0"], cwd=folder, timeout=900, env=env)
    assert graded.returncode == 0, graded.output[-3000:]
    total = next(line for line in graded.stdout.splitlines() if line.split()[:1] == ["total"])
    passed, of = int(total.split()[1]), int(total.split()[3])
    assert passed == 0 and of > 200, f"stubs earn nothing, out of the whole spec:\n{graded.stdout[-3000:]}"
    assert "Chapter 1 (text)" in graded.stdout and "is not implemented yet" in graded.stdout, graded.stdout[-3000:]


def test_the_installed_spec_runs_under_pytest_with_impl(folder, venv, env):
    ran = run([str(venv / "python"), "-m", "pytest", "--pyargs", "llmkata.spec.test_layers", "--impl", "./my_impl",
               "-k", "softmax_rows", "-p", "no:cacheprovider"], cwd=folder, timeout=300, env=env)
    assert "unrecognized arguments" not in ran.output, ran.output[-3000:]
    assert ran.returncode == 1 and "1 failed" in ran.output, ran.output[-3000:]
    assert "`layers.softmax` is not implemented yet" in ran.output, ran.output[-3000:]


def test_train_on_one_text_file(folder, venv, env):
    paragraph = textwrap.dedent("""\
        The with statement wraps the execution of a block with methods defined by a context manager. The
        context manager handles the entry into, and the exit from, the desired runtime context for the
        execution of the block of code. A for statement iterates over the elements of a sequence.
        """)
    (folder / "one_file.txt").write_text("\n".join(f"{i}. {paragraph}" for i in range(60)))
    tiny = ["--steps", "3", "--vocab-size", "280", "--d-model", "32", "--n-layers", "1", "--n-heads", "2",
            "--context-length", "32", "--batch-size", "4", "--warmup-steps", "1", "--eval-every", "3",
            "--eval-tokens", "256", "--sample-tokens", "4", "--threads", "1", "--no-progress"]
    trained = run([str(venv / "llmkata"), "train", "--data", "one_file.txt", "--out", "run", *tiny], cwd=folder,
                  timeout=300, env=env)
    assert trained.returncode == 0, trained.output[-3000:]
    assert (folder / "run" / "config.toml").exists(), trained.output[-3000:]


def test_bench_quick_finds_its_files_and_prints_its_ratios(folder, venv, env):
    benched = run([str(venv / "llmkata"), "bench", "--quick", "--only", "tokenizer"], cwd=folder, timeout=300,
                  env=env)
    assert benched.returncode == 0, benched.output[-3000:]
    assert "textbook_time_vs_kernel" in benched.stdout, f"the ratio table is printed:\n{benched.output[-3000:]}"
