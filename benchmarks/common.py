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


# ------------------------------------------------------------------------------ attention throughput sweep
# What bench_attention.py's sweep (test_attention_throughput) and `llmkata bench` share: the FLOP convention,
# timing on either device, and the table, markdown and plot made from a pytest-benchmark report.

SWEEP_TEST = "test_attention_throughput"


def attention_flops(batch: int, heads: int, n: int, head_dim: int, causal: bool, backward: bool) -> float:
    """FLOPs by the flash-attention convention: 4·B·H·N²·D for the forward pass (q kᵀ and P v, 2·N²·D each), half of
    it when causal; the backward pass counts 2.5× the forward (five matmuls where the forward has two).

    Example: attention_flops(1, 1, 1024, 64, causal=False, backward=False) -> 268435456.0
    """
    forward = 4.0 * batch * heads * n * n * head_dim / (2 if causal else 1)
    return forward * (3.5 if backward else 1.0)


def synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def device_seconds(function, device: str, rounds: int = ROUNDS) -> float:
    """The time of one call of `function()`: on a GPU the median of CUDA-event timings after warm-up, by
    triton.testing.do_bench (as many calls as fit in ~50 ms, the L2 cache flushed between them) or, without
    triton, of `rounds` (at least 10) calls; on a CPU the fastest of `rounds` wall-clock timings. `function` need
    not wait for the GPU."""
    if device != "cuda":
        return best_of(function, rounds)
    import torch

    try:
        from triton.testing import do_bench
    except ImportError:
        for _ in range(3):
            function()
        times = []
        for _ in range(max(rounds, 10)):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            function()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return sorted(times)[len(times) // 2]
    return do_bench(function, warmup=10, rep=50, return_mode="median") / 1e3


def peak_memory_mb(function, device: str) -> float | None:
    """Memory the call allocates at its peak beyond what was allocated before it, in MB: on a GPU from the CUDA
    allocator's peak count; on a CPU from torch's profiler, which sees every tensor allocation with the running
    total (None where this torch's profiler does not report it)."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        function()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        result = function()
    del result
    try:
        events, allocations = list(profiler.profiler.kineto_results.experimental_event_tree()), []
        while events:
            event = events.pop()
            events.extend(event.children)
            fields = event.extra_fields
            if hasattr(fields, "alloc_size") and hasattr(fields, "total_allocated"):
                allocations.append((event.start_time_ns, fields.alloc_size, fields.total_allocated))
    except (AttributeError, RuntimeError):
        return None
    if not allocations:
        return 0.0
    allocations.sort()
    before = allocations[0][2] - allocations[0][1]  # the running total as the call began
    return max(0, max(total for _, _, total in allocations) - before) / 2**20


def matmul_ceiling(device: str, dtype) -> float:
    """FLOP/s of one large square matmul in `dtype` on `device`, measured now: the ceiling each row is held to."""
    import torch

    n = 8192 if device == "cuda" else 1024
    generator = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, generator=generator, device=device, dtype=torch.float32).to(dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)

    product = lambda: torch.matmul(a, b, out=out)  # noqa: E731
    product()
    return 2.0 * n**3 / device_seconds(product, device, rounds=max(ROUNDS, 5))


def sweep_rows(report: dict) -> list[dict]:
    """The extra_info of every sweep benchmark in a pytest-benchmark report, in order."""
    return [bench["extra_info"] for bench in report.get("benchmarks", [])
            if bench.get("name", "").startswith(SWEEP_TEST) and "flop_per_s" in bench.get("extra_info", {})]


def _unit(rows: list[dict]) -> tuple[str, float]:
    return ("TFLOP/s", 1e12) if any(row["device"] == "cuda" for row in rows) else ("GFLOP/s", 1e9)


def _cells(row: dict, divisor: float) -> list[str]:
    peak = row.get("peak_mb")
    ratio = row.get("throughput_vs_sdpa")
    return [row["pass"], row["path"], row["dtype"], "causal" if row["causal"] else "full", str(row["head_dim"]),
            str(row["n"]), f"{row['batch']}×{row['heads']}", f"{row['seconds'] * 1e3:.3f}",
            f"{row['flop_per_s'] / divisor:.2f}", "—" if ratio is None else f"{ratio:.2f}",
            f"{100 * row['of_ceiling']:.1f}", "—" if peak is None else f"{peak:.1f}" if peak < 100 else f"{peak:.0f}"]


def _headers(unit: str) -> list[str]:
    return ["pass", "path", "dtype", "mask", "D", "N", "B×H", "ms", unit, "×SDPA", "% ceiling", "peak MB"]


def render_sweep(rows: list[dict]) -> str:
    """The sweep as a plain-text table, with the matmul ceilings it was held to."""
    if not rows:
        return ""
    unit, divisor = _unit(rows)
    table = [_headers(unit)] + [_cells(row, divisor) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.rjust(width) if i >= 4 else cell.ljust(width) for i, (cell, width) in
                       enumerate(zip(line, widths))) for line in table]
    ceilings = sorted({(row["device"], row["dtype"], row["ceiling_flops"]) for row in rows})
    notes = ", ".join(f"{dtype} on {device}: {flops / divisor:.1f} {unit}" for device, dtype, flops in ceilings)
    return "\n".join([f"attention throughput (FLOPs: 4·B·H·N²·D forward, half when causal, backward 2.5× forward; "
                      f"×SDPA: over torch's default SDPA, same case, same run; ceiling: one large matmul, {notes})",
                      "", *lines])


def markdown_sweep(rows: list[dict]) -> str:
    unit, divisor = _unit(rows)
    lines = ["| " + " | ".join(_headers(unit)) + " |", "|" + "---|" * len(_headers(unit))]
    lines += ["| " + " | ".join(_cells(row, divisor)) + " |" for row in rows]
    return "\n".join(lines)


def plot_sweep(rows: list[dict], path) -> None:
    """Throughput against N, one line per path, one panel per (pass, mask, head dim, dtype); a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit, divisor = _unit(rows)
    panels = sorted({(row["pass"], row["causal"], row["head_dim"], row["dtype"]) for row in rows})
    columns = min(4, len(panels)) or 1
    lines = -(-len(panels) // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4.5 * columns, 3.5 * lines), squeeze=False)
    for axis, panel in zip(axes.flat, panels):
        chosen = [row for row in rows if (row["pass"], row["causal"], row["head_dim"], row["dtype"]) == panel]
        for line in dict.fromkeys(row["path"] for row in chosen):
            points = sorted((row["n"], row["flop_per_s"] / divisor) for row in chosen if row["path"] == line)
            axis.plot(*zip(*points), marker="o", label=line)
        axis.set_xscale("log", base=2)
        axis.set_title(f"{panel[0]}, {'causal' if panel[1] else 'full'}, D={panel[2]}, {panel[3]}", fontsize=9)
        axis.set_xlabel("N")
        axis.set_ylabel(unit)
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str]) -> int:
    """python -m llmkata.benchmarks.common REPORT.json TABLE.md PLOT.png: the sweep of a report as a printed table,
    a markdown table and a plot (benchmarks/gpu_check.sh)."""
    import json
    from pathlib import Path

    if len(argv) != 3:
        print(main.__doc__)
        return 2
    report, markdown, plot = argv
    rows = sweep_rows(json.loads(Path(report).read_text(encoding="utf-8")))
    if not rows:
        print(f"{report}: no attention sweep rows")
        return 1
    print(render_sweep(rows))
    Path(markdown).write_text(render_sweep(rows).split("\n")[0] + "\n\n" + markdown_sweep(rows) + "\n",
                              encoding="utf-8")
    plot_sweep(rows, plot)
    print(f"\n{len(rows)} rows: {markdown}, {plot}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
