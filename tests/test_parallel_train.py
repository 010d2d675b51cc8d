"""`llmkata train` in a world of 2 processes on the CPU (gloo): under torchrun with the parallel chapter's
DataParallel and with torch's FSDP2, and under accelerate launch. The same global batch gives the losses of one
process, and rank 0 alone writes the run folder."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from llmkata.pipeline import train
from llmkata.run_config import config_from_mapping

# A tiny run: a small slice of the default corpus, a 2-layer model, 4 steps, every step logged.
FIELDS = {"device": "cpu", "steps": 4, "warmup_steps": 1, "batch_size": 4, "context_length": 32, "d_model": 32,
          "n_layers": 2, "n_heads": 2, "vocab_size": 300, "max_documents": 60, "log_every": 1, "eval_every": 4,
          "eval_tokens": 256, "sample_tokens": 8, "progress": False, "threads": 1}
FLAGS = [f"--{name.replace('_', '-')}={value}" for name, value in FIELDS.items() if name != "progress"]
FLAGS.append("--no-progress")
BIN = Path(sys.executable).parent


def train_losses(folder: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "train"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> tuple[list[float], Path]:
    """The losses of one process, and its run folder (whose prepared data the other runs reuse)."""
    folder = tmp_path_factory.mktemp("one") / "run"
    train(config_from_mapping(FIELDS), folder, say=lambda message: None)
    return train_losses(folder), folder


def with_prepared_data(one_process, folder: Path) -> Path:
    """`folder`, holding the data the one-process run prepared (the same fields make it the same data)."""
    folder.mkdir()
    for name in ("data.json", "tokenizer.json", "train.npy", "val.npy"):
        shutil.copy(one_process[1] / name, folder / name)
    return folder


def launch(command: list[str], folder: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    run = subprocess.run([*command, "-m", "llmkata.cli", "train", *FLAGS, *extra, "--out", str(folder)], env=env,
                         capture_output=True, text=True, timeout=600, cwd=folder.parent, check=False)
    assert run.returncode == 0, f"{' '.join(command)} llmkata train failed:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    return run


def assert_same_losses(losses: list[float], expected: list[float], how: str) -> None:
    assert len(losses) == len(expected) == FIELDS["steps"], f"{how}: {len(losses)} train losses logged"
    for step, (got, want) in enumerate(zip(losses, expected), start=1):
        assert abs(got - want) <= 1e-5 * abs(want), (
            f"{how}: step {step}'s loss is {got}, one process on the same global batch gets {want}")


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_on_two_processes_trains_as_one_process(tmp_path, one_process, parallel):
    folder = with_prepared_data(one_process, tmp_path / "run")
    run = launch([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"], folder, f"--parallel={parallel}")
    assert_same_losses(train_losses(folder), one_process[0],
                       f"torchrun --nproc_per_node 2 llmkata train --parallel {parallel}")
    assert run.stdout.count('"val_loss"') == 1, "rank 0 alone prints the summary"
    for name in ("summary.json", "checkpoint.safetensors", "samples.txt", "config.toml"):
        assert (folder / name).exists(), f"rank 0 writes the run folder: {name} is missing"


def test_accelerate_launch_on_two_processes_trains_as_one_process(tmp_path, one_process):
    if not (BIN / "accelerate").exists():
        pytest.skip("accelerate is not installed")
    folder = with_prepared_data(one_process, tmp_path / "run")
    # accelerate launch --cpu starts a single process (its multi-CPU path goes through mpirun); --multi_gpu starts
    # the processes through torch.distributed.run, and on a machine without GPUs the run takes gloo on the CPU.
    run = launch([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                  "--main_process_port", "0"], folder)
    assert_same_losses(train_losses(folder), one_process[0], "accelerate launch --num_processes 2 llmkata train")
    assert run.stdout.count('"val_loss"') == 1, "rank 0 alone prints the summary"
