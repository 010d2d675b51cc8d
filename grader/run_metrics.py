"""A run's metrics.jsonl (one JSON object per log line, kept across a kill and a resume) and its loss.png.

    {"step": 10, "split": "train", "loss": 5.91, "lr": 0.001, "grad_norm": 1.2, "tokens": 20480, ...}
    {"step": 100, "split": "val", "loss": 4.02, "perplexity": 55.7, "bits_per_byte": 2.31, ...}

Left out: any other logging back end (TensorBoard, Weights & Biases); the file is easy to read into either.
"""

from __future__ import annotations

import json
from itertools import accumulate
from pathlib import Path

from llmkata.atomic import write_text_atomic


def read_metrics(run: Path) -> list[dict]:
    """Every whole record of run/metrics.jsonl, in order (a line cut by a kill is skipped)."""
    return _records(Path(run) / "metrics.jsonl")


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return records


class Metrics:
    """metrics.jsonl, appended one record per line and flushed, so a killed run keeps what it logged."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        # What was logged after the checkpoint goes: the resumed run logs those steps again.
        kept = [record for record in _records(path) if record.get("step", 0) <= resume_step]
        write_text_atomic(path, "".join(json.dumps(record) + "\n" for record in kept))
        self.file = open(path, "a", encoding="utf-8")

    def write(self, **record) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def running_mean(values: list[float], window: int) -> list[float]:
    """The mean of each value and the up to window - 1 before it.  Example: ([1, 3, 5, 7], 2) -> [1, 2, 4, 6]"""
    totals = [0.0, *accumulate(values)]
    return [(totals[i + 1] - totals[max(0, i + 1 - window)]) / min(i + 1, window) for i in range(len(values))]


def plot_losses(run: Path) -> Path | None:
    """loss.png: training loss (and its running mean) and validation loss against tokens seen; None when nothing
    was logged. ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run)
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    if not train:
        return None
    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=110)
    x = [r["tokens"] / 1e6 for r in train]
    y = [r["loss"] for r in train]
    axis.plot(x, y, color="#9ecae1", linewidth=1, label="train")
    axis.plot(x, running_mean(y, max(1, len(y) // 20)), color="#3182bd", linewidth=1.8, label="train (running mean)")
    if val:
        axis.plot([r["tokens"] / 1e6 for r in val], [r["loss"] for r in val], "o-", color="#e6550d",
                  label="validation")
    axis.set_xlabel("tokens seen (millions)")
    axis.set_ylabel("cross-entropy (nats per token)")
    axis.set_title(f"llmkata train — {run.name}")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path = run / "loss.png"
    figure.savefig(path)
    plt.close(figure)
    return path
