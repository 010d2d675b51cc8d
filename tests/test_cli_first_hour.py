"""A learner's first hour with an installed llmkata: `llmkata exercises --out` never loses their work, the spec runs
under plain pytest (`pytest --pyargs llmkata.spec --impl ...`), and `llmkata bench` finds its files and prints its
ratios without the repository's pyproject.toml."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from llmkata import cli
from llmkata.exercise_generator import expected_tree, write_copy

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "reference"


# ------------------------------------------------------------------------------------ exercises --out, again

def test_exercises_out_run_again_keeps_changed_files_and_writes_the_missing_ones(tmp_path, capsys):
    target = tmp_path / "my_impl"
    assert cli.main(["exercises", "--out", str(target)]) == 0
    mine = "def softmax(x, dim=-1):\n    return x.softmax(dim)  # my work\n"
    (target / "layers.py").write_text(mine)
    (target / "notes.py").write_text("# my own module\n")
    (target / "rope.py").unlink()
    capsys.readouterr()

    assert cli.main(["exercises", "--out", str(target)]) == 0
    out = capsys.readouterr()
    assert (target / "layers.py").read_text() == mine, "a file the learner changed is never overwritten"
    assert (target / "notes.py").read_text() == "# my own module\n", "the learner's own modules are never touched"
    assert (target / "rope.py").read_text() == expected_tree(REFERENCE)["rope.py"], "a missing stub is written"
    assert "layers.py" in out.err and "--force" in out.err, f"the kept files are named, with the way out:\n{out.err}"
    assert not list(target.glob("*.bak-*")), "nothing was replaced, so nothing is backed up"


def test_exercises_out_force_replaces_changed_files_and_backs_each_up(tmp_path, capsys):
    target = tmp_path / "my_impl"
    assert cli.main(["exercises", "--out", str(target)]) == 0
    (target / "layers.py").write_text("mine\n")
    capsys.readouterr()

    assert cli.main(["exercises", "--out", str(target), "--force"]) == 0
    out = capsys.readouterr().out
    (backup,) = target.glob("layers.py.bak-*")
    assert backup.read_text() == "mine\n", "the replaced file is saved first"
    assert str(backup) in out, f"the backup's path is printed:\n{out}"
    assert (target / "layers.py").read_text() == expected_tree(REFERENCE)["layers.py"]

    (target / "layers.py").write_text("mine again\n")
    write_copy(REFERENCE, target, force=True, stamp=backup.name.split(".bak-")[1])  # the same second
    assert sorted(p.read_text() for p in target.glob("layers.py.bak-*")) == ["mine\n", "mine again\n"], (
        "a second backup in the same second keeps the first")


def test_force_goes_with_out(capsys):
    assert cli.main(["exercises", "--force"]) == 2
    assert "--out" in capsys.readouterr().err


# --------------------------------------------------------------------------- the spec under plain pytest

def test_the_spec_declares_a_pytest_plugin_that_adds_impl():
    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["pytest11"]
    assert entry_points == {"llmkata": "llmkata.spec.plugin"}


def test_pytest_pyargs_runs_the_installed_spec_against_a_folder(tmp_path):
    target = tmp_path / "my_impl"
    assert cli.main(["exercises", "--out", str(target)]) == 0
    # As pytest sees it from there: an install from before the entry point existed needs the plugin named.
    registered = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; print(any(e.value == "
                                 "'llmkata.spec.plugin' for e in m.entry_points(group='pytest11')))"],
                                cwd=tmp_path, capture_output=True, text=True).stdout.strip() == "True"
    plugin = [] if registered else ["-p", "llmkata.spec.plugin"]
    run = subprocess.run([sys.executable, "-m", "pytest", *plugin, "--pyargs", "llmkata.spec.test_layers",
                          "--impl", "./my_impl", "-k", "softmax_rows", "-p", "no:cacheprovider"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert "unrecognized arguments" not in out, out[-3000:]
    assert run.returncode == 1 and "1 failed" in out, out[-3000:]
    assert "`layers.softmax` is not implemented yet" in out, "the spec's conftest.py is loaded: stubs are one sentence"
    assert "llmkata: implementation under test: ./my_impl" in out, "the header names the implementation"


# --------------------------------------------------------------------------------------------------- bench

def test_bench_help_names_its_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    usage = capsys.readouterr().out
    for option in ("--impl", "--only", "attention", "tokenizer", "train", "data", "--quick", "--json"):
        assert option in usage, f"{option} is missing from `llmkata bench --help`:\n{usage}"


REPORT = {"benchmarks": [
    {"name": "test_tiled_attention_vs_torch_sdpa[N1024]",
     "extra_info": {"threads": 2, "tiled_gflops": 10.0, "throughput_vs_sdpa": 0.72}},
    {"name": "test_training_step_vs_builtin_torch[kernels]", "extra_info": {"ratio_vs_builtin": 1.07, "mfu": 0.1}},
    {"name": "test_step_pieces_forward_backward_vs_builtin_torch[rope-kernels]",
     "extra_info": {"speed_vs_builtin": 1.7, "kernels": True}},
]}


def test_bench_passes_its_file_pattern_and_quiet_threads_and_prints_the_ratios(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_run(command, env=None, **kwargs):
        seen["command"], seen["env"] = command, env
        report = next(arg for arg in command if arg.startswith("--benchmark-json=")).split("=", 1)[1]
        Path(report).write_text(json.dumps(REPORT))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    for knob in ("OMP_WAIT_POLICY", "LLMKATA_BENCH_ROUNDS", "LLMKATA_BENCH_MB"):
        monkeypatch.delenv(knob, raising=False)
    kept = tmp_path / "bench.json"
    assert cli.main(["bench", "--only", "attention", "--quick", "--json", str(kept), "-x"]) == 0
    command, env = seen["command"], seen["env"]
    assert "python_files=bench_*.py" in command, "the file pattern must not depend on the repository's pyproject.toml"
    assert Path(command[command.index("pytest") + 1]).name == "bench_attention.py", command
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["LLMKATA_BENCH_ROUNDS"] == "1", env
    assert "-k" in command and command[-1] == "-x", "the quick selection, then the extra arguments for pytest"
    out = capsys.readouterr().out
    for name, key, value in [("test_tiled_attention_vs_torch_sdpa[N1024]", "throughput_vs_sdpa", "0.72"),
                             ("test_training_step_vs_builtin_torch[kernels]", "ratio_vs_builtin", "1.07"),
                             ("test_step_pieces_forward_backward_vs_builtin_torch[rope-kernels]", "speed_vs_builtin",
                              "1.7")]:
        row = next((line for line in out.splitlines() if key in line and value in line), None)
        assert row is not None and name in row, f"the ratio {key} of {name} is printed:\n{out}"
    assert "tiled_gflops" not in out and "mfu" not in out, "only ratios to a baseline are in the table"
    assert json.loads(kept.read_text()) == REPORT, "--json keeps the report"
