"""The attention throughput sweep and its place in `llmkata bench`: --device, --plot, the table, the GPU script.

Everything here runs on a CPU in a few seconds: the CLI is given a made-up report, and one tiny case of the sweep
runs for real.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmkata import cli
from llmkata.benchmarks import common

ROOT = Path(__file__).resolve().parent.parent


def sweep_entry(path: str, n: int, seconds: float, ratio: float) -> dict:
    flops = common.attention_flops(2, 8, n, 64, causal=True, backward=False)
    return {"name": f"test_attention_throughput[forward-{path}-float32-d64-causal-N{n}]", "extra_info": {
        "pass": "forward", "path": path, "dtype": "float32", "head_dim": 64, "causal": True, "n": n, "batch": 2,
        "heads": 8, "device": "cpu", "threads": 2, "seconds": seconds, "flop_per_s": flops / seconds,
        "throughput_vs_sdpa": ratio, "ceiling_flops": 1e11, "of_ceiling": flops / seconds / 1e11, "peak_mb": None}}


REPORT = {"benchmarks": [
    {"name": "test_tiled_attention_vs_torch_sdpa[N1024]", "extra_info": {"throughput_vs_sdpa": 0.72}},
    sweep_entry("sdpa", 256, 0.002, 1.0), sweep_entry("kernels.tiled_attention", 256, 0.004, 0.5),
    sweep_entry("sdpa", 512, 0.006, 1.0), sweep_entry("kernels.tiled_attention", 512, 0.010, 0.6),
]}


def fake_bench(monkeypatch, report=REPORT):
    seen = {}

    def fake_run(command, env=None, **kwargs):
        seen["command"], seen["env"] = command, env
        path = next(arg for arg in command if arg.startswith("--benchmark-json=")).split("=", 1)[1]
        Path(path).write_text(json.dumps(report))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    return seen


def test_attention_flops_follow_the_flash_attention_convention():
    assert common.attention_flops(1, 1, 1024, 64, causal=False, backward=False) == 4 * 1024 * 1024 * 64
    assert common.attention_flops(2, 3, 512, 128, causal=True, backward=False) == 4 * 2 * 3 * 512**2 * 128 / 2
    assert common.attention_flops(1, 1, 256, 64, causal=False, backward=True) == 3.5 * 4 * 256**2 * 64


def test_bench_help_names_the_new_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    usage = capsys.readouterr().out
    for option in ("--device", "cpu", "cuda", "--plot"):
        assert option in usage, f"{option} is missing from `llmkata bench --help`:\n{usage}"


def test_bench_prints_the_sweep_table_and_plots_it(monkeypatch, tmp_path, capsys):
    seen = fake_bench(monkeypatch)
    monkeypatch.delenv("LLMKATA_BENCH_SWEEP", raising=False)
    plot = tmp_path / "throughput.png"
    assert cli.main(["bench", "--only", "attention", "--quick", "--device", "cpu", "--plot", str(plot)]) == 0
    env = seen["env"]
    assert env["LLMKATA_BENCH_DEVICE"] == "cpu" and env["LLMKATA_BENCH_SWEEP"] == "quick", env
    assert env["LLMKATA_BENCH_PROGRESS"] == "1", "a progress bar while the benchmarks run"
    out = capsys.readouterr().out
    assert "attention throughput" in out and "GFLOP/s" in out and "% ceiling" in out, out
    row = next(line for line in out.splitlines() if "kernels.tiled_attention" in line and " 512 " in line)
    assert "0.60" in row and "10.000" in row, f"the row carries its ratio to SDPA and its time in ms: {row}"
    ratio_table = out.split("attention throughput")[0]
    assert "test_attention_throughput" not in ratio_table, "sweep rows are in their own table, not in the ratios"
    assert "throughput_vs_sdpa  0.72" in ratio_table, "the other benchmarks' ratios are still printed"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "--plot writes a PNG"


def test_bench_plot_without_a_sweep_says_so(monkeypatch, tmp_path, capsys):
    fake_bench(monkeypatch, {"benchmarks": REPORT["benchmarks"][:1]})
    plot = tmp_path / "none.png"
    assert cli.main(["bench", "--only", "attention", "--plot", str(plot)]) == 0
    assert not plot.exists() and "nothing to plot" in capsys.readouterr().err


def test_bench_json_and_plot_are_whole_files_written_after_the_run(monkeypatch, tmp_path, capsys):
    saved, plot = tmp_path / "saved.json", tmp_path / "plot.png"
    saved.write_text("an earlier report")
    seen = fake_bench(monkeypatch)
    assert cli.main(["bench", "--only", "attention", "--json", str(saved), "--plot", str(plot)]) == 0
    assert not any(str(saved) in arg for arg in seen["command"]), "pytest-benchmark writes a scratch report"
    assert json.loads(saved.read_text()) == REPORT and plot.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no temporary file is left"

    def failed_run(command, env=None, **kwargs):  # a run stopped before pytest-benchmark wrote anything
        return subprocess.CompletedProcess(command, 2)

    monkeypatch.setattr(subprocess, "run", failed_run)
    before = saved.read_bytes()
    assert cli.main(["bench", "--only", "attention", "--json", str(saved)]) == 2
    assert saved.read_bytes() == before, "a run that made no report leaves the earlier one as it was"


def test_bench_into_a_missing_folder_or_onto_a_folder_fails_before_running(monkeypatch, tmp_path, capsys):
    seen = fake_bench(monkeypatch)
    (tmp_path / "kept").mkdir()
    for option in ("--json", "--plot"):
        target = tmp_path / "no-such-folder" / "out"
        assert cli.main(["bench", option, str(target)]) == 2
        assert "does not exist" in capsys.readouterr().err and "command" not in seen, "nothing runs"
        assert not target.parent.exists()
        assert cli.main(["bench", option, str(tmp_path / "kept")]) == 2
        assert "is a folder" in capsys.readouterr().err and "command" not in seen, "nothing runs"
        assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())


def test_peak_memory_on_a_cpu_counts_the_tensors_the_call_allocates():
    import torch

    held = torch.randn(1024, 1024)

    def two_buffers():  # 8 MB, then 8 MB more while the first is alive
        ones = torch.ones(2**21)
        return (ones * 2).sum()

    assert common.peak_memory_mb(two_buffers, "cpu") == pytest.approx(16, abs=0.1)
    assert common.peak_memory_mb(lambda: held.sum(), "cpu") == pytest.approx(0, abs=0.1), "what was there before"


def test_gpu_timing_is_the_median_after_warm_up(monkeypatch):
    """device_seconds on a GPU, with the GPU's clock played by a counter: triton's do_bench asked for the median,
    and without triton the median of CUDA-event timings once the first calls have warmed up."""
    import torch

    clock = [0.0]  # milliseconds, as CUDA events count them

    class Event:
        def __init__(self, enable_timing=False):
            self.at = None

        def record(self):
            self.at = clock[0]

        def elapsed_time(self, end):
            return end.at - self.at

    durations = iter([100.0] * 3 + [5.0, 1.0, 2.0, 30.0, 3.0, 4.0, 2.5, 1.5, 3.5, 2.0])

    def call():
        clock[0] += next(durations)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setitem(sys.modules, "triton.testing", None)  # no triton
    assert common.device_seconds(call, "cuda", rounds=1) == pytest.approx(3.0e-3), "the median of the 10 timed calls"

    seen = {}

    def do_bench(function, **kwargs):
        seen.update(kwargs)
        return 2.0

    monkeypatch.setitem(sys.modules, "triton.testing", type(sys)("triton.testing"))
    sys.modules["triton.testing"].do_bench = do_bench
    assert common.device_seconds(call, "cuda") == pytest.approx(2.0e-3) and seen["return_mode"] == "median", seen


def test_bench_on_cuda_without_a_gpu_fails_clearly(monkeypatch, capsys):
    import torch

    seen = fake_bench(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["bench", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err and "command" not in seen, "nothing runs"


def test_markdown_and_main_write_the_table_and_the_plot(tmp_path):
    report = tmp_path / "bench.json"
    report.write_text(json.dumps(REPORT))
    markdown, plot = tmp_path / "table.md", tmp_path / "plot.png"
    assert common.main([str(report), str(markdown), str(plot)]) == 0
    lines = markdown.read_text().splitlines()
    assert lines[2].startswith("| pass | path |") and len([x for x in lines if x.startswith("| forward")]) == 4
    assert plot.exists()


def test_the_cpu_sweep_is_small_and_the_gpu_sweep_is_the_standard_one():
    from llmkata.benchmarks.bench_attention import sweep_cases

    quick = sweep_cases("cpu", quick=True)
    assert {case[5] for case in quick} == {256, 512} and {case[2] for case in quick} == {"float32"}
    assert len(quick) == 36, "6 paths, causal and not, forward at 256 and 512, forward + backward at 256"
    gpu = sweep_cases("cuda", quick=False)
    assert {case[5] for case in gpu} == {512, 1024, 2048, 4096, 8192, 16384}
    assert {case[3] for case in gpu} == {64, 128} and {case[2] for case in gpu} == {"bfloat16", "float16"}
    assert all(case[5] * case[6] == 16384 and case[3] * case[7] == 2048 for case in gpu), "16k tokens, H·D = 2048"
    assert {"sdpa", "kernels.flash_attention", "sdpa-cudnn", "definition"} <= {case[1] for case in gpu}
    assert gpu[0][:5] == ("forward", "sdpa", "bfloat16", 128, True), "the headline case comes first"
    beside = sweep_cases("cpu", quick=True, reference_too=True)
    assert len(beside) == 54 and {"reference.definition", "reference.kernels.tiled_attention"} <= {
        case[1] for case in beside}, "another implementation is timed beside the reference's paths"
    assert {c[5] for c in sweep_cases("cuda", False, True) if c[1] == "reference.definition"} == {512, 1024}


def test_bench_of_the_sweep_alone_prints_no_empty_ratio_table(monkeypatch, capsys):
    fake_bench(monkeypatch, {"benchmarks": REPORT["benchmarks"][1:]})
    assert cli.main(["bench", "--only", "attention"]) == 0
    out = capsys.readouterr().out
    assert "attention throughput" in out and "no ratio was reported" not in out, out


def test_one_case_of_the_sweep_runs_checks_and_reports(tmp_path):
    report = tmp_path / "bench.json"
    env = {**os.environ, "LLMKATA_BENCH_SWEEP": "quick", "LLMKATA_BENCH_ROUNDS": "1", "LLMKATA_BENCH_DEVICE": "cpu",
           "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "benchmarks" / "bench_attention.py"), "-q",
                           "-p", "no:cacheprovider", "-o", "addopts=", "-o", "python_files=bench_*.py",
                           "-k", "throughput and forward-kernels and tiled and causal and N256",
                           f"--benchmark-json={report}"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = common.sweep_rows(json.loads(report.read_text()))
    assert [(row["path"], row["n"], row["causal"]) for row in rows] == [("kernels.tiled_attention", 256, True)]
    assert rows[0]["flop_per_s"] > 0 and rows[0]["throughput_vs_sdpa"] > 0 and rows[0]["of_ceiling"] > 0
    assert rows[0]["peak_mb"] >= 2 * 8 * 256 * 64 * 4 / 2**20, "peak memory on a CPU too: the output at least"
    again = tmp_path / "again.json"
    again.write_bytes(report.read_bytes())  # a saved run beside this one
    compared = subprocess.run([sys.executable, "-c", "from pytest_benchmark.cli import main; main()", "compare",
                               str(report), str(again)],
                              capture_output=True, text=True, timeout=120)
    assert compared.returncode == 0 and "test_attention_throughput" in compared.stdout, (
        "pytest-benchmark compare reads the report: " + compared.stdout[-2000:] + compared.stderr[-2000:])


def test_another_implementation_is_timed_beside_the_reference(tmp_path):
    import shutil

    import llmkata.reference

    mine = tmp_path / "mine"
    shutil.copytree(llmkata.reference.__path__[0], mine, ignore=shutil.ignore_patterns("__pycache__"))
    report = tmp_path / "bench.json"
    env = {**os.environ, "LLMKATA_BENCH_SWEEP": "quick", "LLMKATA_BENCH_ROUNDS": "1", "LLMKATA_BENCH_DEVICE": "cpu",
           "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "benchmarks" / "bench_attention.py"), "-q",
                           "-p", "no:cacheprovider", "-o", "addopts=", "-o", "python_files=bench_*.py",
                           "--impl", str(mine), "-k", "throughput and forward- and tiled and causal and N256",
                           f"--benchmark-json={report}"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = common.sweep_rows(json.loads(report.read_text()))
    assert sorted(row["path"] for row in rows) == ["kernels.tiled_attention", "reference.kernels.tiled_attention"]


def test_gpu_check_dry_run_prints_every_step():
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    for step in ("flash_attention_on_the_gpu", "LLMKATA_BENCH_DEVICE=cuda", "--benchmark-json=", "timeout -s INT",
                 "llmkata.benchmarks.common"):
        assert step in done.stdout, f"{step!r} is missing from the dry run:\n{done.stdout}"


def test_gpu_check_quick_fits_one_ten_minute_command():
    import re

    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "GPU_CHECK_QUICK": "1"})
    limits = [(int(kill), int(limit)) for kill, limit in re.findall(r"timeout -s INT -k (\d+) (\d+) ", done.stdout)]
    assert len(limits) == 3 and "LLMKATA_BENCH_SWEEP=quick" in done.stdout, done.stdout
    assert sum(kill + limit for kill, limit in limits) <= 540, f"{limits}: a minute is left for the installs"


def test_gpu_check_without_a_gpu_stops_with_a_clear_message(tmp_path):
    fake_python = tmp_path / "python"  # a python whose torch sees no GPU, without importing torch here
    fake_python.write_text("#!/bin/sh\nexec " + sys.executable + " -c 'import sys; sys.exit(1)'\n")
    fake_python.chmod(0o755)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHON": str(fake_python)})
    assert done.returncode == 2 and "no CUDA device" in done.stderr, done.stdout + done.stderr
