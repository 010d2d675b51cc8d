"""What the benchmarks share: a corpus of Python's own text, and best-of timing."""

import functools
import os
import sysconfig
import time
from pathlib import Path

ROUNDS = int(os.environ.get("LLMKATA_BENCH_ROUNDS", "3"))


@functools.cache
def python_corpus(megabytes: float, skip_containing: str = "") -> tuple[str, ...]:
    """Documents of text that ships with Python, in a fixed order, until `megabytes` of UTF-8: the pydoc topics,
    then the standard library's sources (files containing `skip_containing`, when given, are left out)."""
    from pydoc_data.topics import topics

    documents = [topics[name] for name in sorted(topics)]
    size = sum(len(d.encode()) for d in documents)
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if size >= megabytes * 1e6:
            break
        text = path.read_text(encoding="utf-8", errors="replace")
        if skip_containing and skip_containing in text:
            continue
        documents.append(text)
        size += len(text.encode())
    return tuple(documents)


def best_of(function, rounds: int = ROUNDS) -> float:
    """The fastest of `rounds` wall-clock timings of `function()`, in seconds."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def seconds(function) -> float:
    """The wall-clock time of one call of `function()`, in seconds."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start
