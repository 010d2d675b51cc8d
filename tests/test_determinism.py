"""Two runs of `llmkata train` with the same configuration, on the same machine, are the same run, bit for bit.

Each run is a process of its own, as a user starts it: the default model shape and the pipeline's default number of
threads (torch's: one per core), which must be two or more for the test to mean anything, since the nondeterminism
it guards against is a race between threads (the gradient of repeated ids in the embedding, added by atomic adds).
Only the data and the number of steps are cut down, so that a test takes seconds, and the second run starts from the
first one's prepared data (the tokenizer trainers are pinned by the spec; the textbook one takes most of a run's
time). Both model paths are checked: chapter 14's fast paths (`--kernels on`, the reference's default) and the
definitions (`--kernels off`).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmkata.pipeline import CHECKPOINT

# Ten steps: with weight[ids] in the embedding, a step's gradient differed between two runs in about half of the
# steps on a busy 2-core machine, so ten steps all alike would be a rare miss.
SHORT = ["--steps", "10", "--warmup-steps", "1", "--log-every", "1", "--max-documents", "120", "--eval-tokens", "512",
         "--no-progress"]
PREPARED = ("data.json", "tokenizer.json", "train.npy", "val.npy")
# `llmkata train` in a fresh process, without the multiple-choice evaluation at the end: it only reads the trained
# model, and takes most of a short run's time.
CHILD = ("import sys; from llmkata import cli, pipeline; pipeline.Run.multiple_choice = lambda self, path=None: None; "
         "sys.exit(cli.main(sys.argv[1:]))")


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def train(run: Path, kernels: str) -> None:
    """A default run but for its length, in a fresh process with torch's default number of threads (two on a
    machine with one core, where the default of one could not race)."""
    threads = [] if cores() >= 2 else ["--threads", "2"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `llmkata train` sets it, before CHILD's imports load torch
    done = subprocess.run([sys.executable, "-c", CHILD, "train", "--out", str(run), "--kernels", kernels, *SHORT,
                           *threads], capture_output=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def train_losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "train"]


@pytest.mark.parametrize("kernels", ["on", "off"])
def test_two_default_runs_write_the_same_checkpoint_bit_for_bit(tmp_path, kernels):
    first, second = tmp_path / "first", tmp_path / "second"
    train(first, kernels)
    second.mkdir()
    for name in PREPARED:
        shutil.copy(first / name, second / name)
    train(second, kernels)
    a, b = load_file(first / CHECKPOINT), load_file(second / CHECKPOINT)
    assert a.keys() == b.keys(), "the two checkpoints hold different tensors"
    different = sorted(k for k in a if not torch.equal(a[k], b[k]))
    losses = list(zip(train_losses(first), train_losses(second)))
    step = next((i + 1 for i, (x, y) in enumerate(losses) if x != y), None)
    assert not different, (
        f"two identical runs (--kernels {kernels}, the default number of threads) wrote different checkpoints: "
        f"{len(different)} of {len(a)} tensors differ, e.g. {different[:4]}; their training losses "
        + (f"first differ at step {step}" if step else "are the same"))
    assert (first / "samples.txt").read_text() == (second / "samples.txt").read_text(), "the samples differ"
