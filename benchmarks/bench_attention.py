"""Attention benchmarks: the definition and the kernels against torch's fused kernel, and KV-cache decoding.

- `kernels.tiled_attention` (plain PyTorch, online softmax) against `torch.nn.functional.scaled_dot_product_attention`
  on CPU in float32, B=4 H=8 D=64, N in {1024, 4096}, causal and not. Throughput by the flash-attention
  convention: 4·B·H·N²·D FLOPs forward, half of it when causal. Each round times SDPA and then the tiled kernel,
  so both see the same machine load. Target: throughput ratio >= 0.6.
- Forward + backward at N = 1024, causal, for each path the model can take: the definition
  (`attention.scaled_dot_product_attention`, differentiated by autograd), `kernels.attention` (its hand-written
  backward pass) and `kernels.tiled_attention`, against SDPA: what each kernel buys over the definition.
- Peak memory of tiled attention at N = 16384 (causal), in a fresh process: peak RSS above what the inputs take,
  beside the B·H·N² float32 score matrix (34 GB) that the naive definition would have to hold.
- Greedy decoding after a 1024-token prompt, one token at a time: with the KV cache against recomputing the
  whole prefix for every new token, on a small Llama-shaped model. Target: tokens/s ratio >= 5.

- The two choices inside the kernels, on one (B·H, 128, 256) tile of causal scores: `torch.exp2` of the scores
  times log₂e against `torch.exp`, and the mask added as a 0/−inf bias against `masked_fill_` with the boolean
  mask. Reported as the speed of the kernels' choice over the alternative.

    pytest benchmarks/bench_attention.py --benchmark-columns=min,mean,rounds

- The throughput sweep (test_attention_throughput): forward, and forward + backward, of every path at once: the
  definition, `kernels.attention`, `kernels.tiled_attention`, `kernels.flash_attention` (Triton, on a GPU), and
  torch SDPA with its default choice and with each backend that runs here (math, flash, efficient, cuDNN); for an
  implementation other than the reference (--impl), the reference's three paths beside its own. Each
  case is checked against the float64 definition (batch 0, head 0, values and gradients) before it is timed.
  Reported per row: FLOP/s by the flash-attention convention, the ratio to default SDPA on the same case, the
  share of one large matmul's FLOP/s in the same dtype (measured in the same run), and peak memory above the
  inputs (the CUDA allocator's peak on a GPU, torch profiler's running total of tensor allocations on a CPU). On a
  GPU the standard sweep: 16k tokens per batch (B = 16384 / N), N from 512 to 16k, head dims 64 and 128
  (H·D = 2048), causal and not, bfloat16 and float16: the median CUDA-event time after warm-up
  (triton.testing.do_bench). On a CPU, float32, B=2 H=8 D=64, N from 256 to 2048 (LLMKATA_BENCH_SWEEP=quick: N 256
  and 512, backward at 256 only): the fastest of the rounds, SDPA and the path in turn.

Knobs: LLMKATA_BENCH_ROUNDS (default 3), LLMKATA_BENCH_THREADS (torch threads; default torch's choice),
LLMKATA_BENCH_MEMORY_N (default 16384), LLMKATA_BENCH_DEVICE (cpu or cuda; default cuda when there is one),
LLMKATA_BENCH_SWEEP (full or quick).
"""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from .common import (attention_flops, device_seconds, matmul_ceiling, peak_memory_mb, seconds,
                     synchronize)

ROUNDS = int(os.environ.get("LLMKATA_BENCH_ROUNDS", "3"))
if os.environ.get("LLMKATA_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["LLMKATA_BENCH_THREADS"]))
B, H, D = 4, 8, 64


def attention_inputs(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(B, H, n, D, generator=generator) for _ in range(3))


@pytest.mark.parametrize("n, causal", [(1024, False), (1024, True), (4096, False), (4096, True)],
                         ids=["N1024", "N1024-causal", "N4096", "N4096-causal"])
def test_tiled_attention_vs_torch_sdpa(benchmark, impl, n, causal):
    q, k, v = attention_inputs(n)
    tiled = impl.kernels.tiled_attention

    # correctness first: the same output as torch's kernel, and lse = logsumexp of the scores on a slice
    out, lse = tiled(q, k, v, is_causal=causal)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=causal), rtol=1e-4, atol=1e-5)
    rows = slice(n - 64, n)  # the last 64 queries of one head: query i sees keys 0..i when causal
    scores = q[0, 0, rows] @ k[0, 0].T / math.sqrt(D)  # (64, N)
    if causal:
        scores = scores.masked_fill(~torch.ones(64, n, dtype=torch.bool).tril(n - 64), float("-inf"))
    torch.testing.assert_close(lse[0, 0, rows], torch.logsumexp(scores, -1), rtol=1e-4, atol=1e-4)

    sdpa_times = []
    benchmark.pedantic(tiled, args=(q, k, v), kwargs={"is_causal": causal}, rounds=ROUNDS, iterations=1,
                       setup=lambda: sdpa_times.append(
                           seconds(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))),
                       warmup_rounds=0)
    tiled_seconds, sdpa_seconds = benchmark.stats.stats.min, min(sdpa_times)
    flops = 4 * B * H * n * n * D / (2 if causal else 1)
    benchmark.extra_info.update({
        "threads": torch.get_num_threads(),
        "tiled_gflops": round(flops / tiled_seconds / 1e9, 1),
        "sdpa_gflops": round(flops / sdpa_seconds / 1e9, 1),
        "tiled_s": round(tiled_seconds, 4),
        "sdpa_s": round(sdpa_seconds, 4),
        "throughput_vs_sdpa": round(sdpa_seconds / tiled_seconds, 2),  # target >= 0.6
    })


PATHS = {
    "definition": lambda impl: impl.attention.scaled_dot_product_attention,
    "kernel": lambda impl: impl.kernels.attention,
    "tiled": lambda impl: (lambda q, k, v, is_causal: impl.kernels.tiled_attention(q, k, v, is_causal=is_causal)[0]),
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_attention_paths_forward_backward_vs_torch_sdpa(benchmark, impl, path):
    n = 1024
    q, k, v = (t.requires_grad_() for t in attention_inputs(n))
    attention = PATHS[path](impl)
    grad_out = torch.randn(B, H, n, D, generator=torch.Generator().manual_seed(1))

    def gradients(function):
        return torch.autograd.grad(function(q, k, v, is_causal=True), (q, k, v), grad_out)

    # correctness first: the values and gradients of torch's kernel
    for got, expected in zip(gradients(attention), gradients(F.scaled_dot_product_attention)):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    sdpa_times = []
    benchmark.pedantic(lambda: gradients(attention), rounds=ROUNDS, iterations=1, warmup_rounds=1,
                       setup=lambda: sdpa_times.append(seconds(lambda: gradients(F.scaled_dot_product_attention))))
    ours_s, sdpa_s = benchmark.stats.stats.min, min(sdpa_times)
    flops = 3.5 * 4 * B * H * n * n * D / 2  # forward + backward (2.5× forward), causal
    benchmark.extra_info.update({
        "threads": torch.get_num_threads(),
        "gflops": round(flops / ours_s / 1e9, 1),
        "sdpa_gflops": round(flops / sdpa_s / 1e9, 1),
        "throughput_vs_sdpa": round(sdpa_s / ours_s, 2),
    })


def causal_tile(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One tile of scores (B·H, 128, 256) as the kernels see it, and its causal mask (True = masked)."""
    scores = torch.randn(B * H, 128, 256, generator=generator) * 3
    return scores, torch.ones(128, 256, dtype=torch.bool).triu(129)


@pytest.mark.parametrize("choice", ["exp2_vs_exp", "bias_vs_masked_fill"])
def test_kernel_choices_on_one_tile(benchmark, choice):
    scores, masked = causal_tile(torch.Generator().manual_seed(0))
    out = torch.empty_like(scores)
    if choice == "exp2_vs_exp":
        scores = scores.masked_fill(masked, float("-inf"))  # exp is slow on −inf; the kernels' scores have them
        base2 = scores * math.log2(math.e)
        torch.testing.assert_close(torch.exp2(base2), torch.exp(scores), rtol=1e-5, atol=0)
        ours, theirs = (lambda: torch.exp2(base2, out=out)), (lambda: torch.exp(scores, out=out))
    else:
        bias = torch.zeros(masked.shape).masked_fill_(masked, float("-inf"))
        assert torch.equal(out.copy_(scores).add_(bias), scores.masked_fill(masked, float("-inf")))
        ours, theirs = (lambda: out.copy_(scores).add_(bias)), (lambda: out.copy_(scores).masked_fill_(masked,
                                                                                                      float("-inf")))
    repeats, alternative_times = 20, []
    benchmark.pedantic(lambda: [ours() for _ in range(repeats)], rounds=ROUNDS, iterations=1, warmup_rounds=1,
                       setup=lambda: alternative_times.append(seconds(lambda: [theirs() for _ in range(repeats)])))
    ours_s, theirs_s = benchmark.stats.stats.min / repeats, min(alternative_times) / repeats
    benchmark.extra_info.update({
        "threads": torch.get_num_threads(),
        "ms": round(ours_s * 1000, 3),
        "alternative_ms": round(theirs_s * 1000, 3),
        "speed_vs_alternative": round(theirs_s / ours_s, 2),
    })


PEAK_SCRIPT = textwrap.dedent("""
    import json, resource, sys, time
    import torch
    from llmkata.spec.impl import load

    which, kernel, n, b, h, d = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
    if len(sys.argv) > 7:
        torch.set_num_threads(int(sys.argv[7]))
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=generator) for _ in range(3))
    if kernel == "tiled":
        attention = load(which).kernels.tiled_attention
        run = lambda: attention(q, k, v, is_causal=True)[0]
    else:
        run = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    def rss_mb():  # resident set size now
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    before = rss_mb()
    start = time.perf_counter()
    out = run()
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"inputs_mb": 3 * q.numel() * 4 / 2**20, "output_mb": out.numel() * 4 / 2**20,
                      "peak_above_inputs_mb": peak - before, "seconds": elapsed}))
""")


def peak_memory(which: str, kernel: str, n: int) -> dict:
    command = [sys.executable, "-c", PEAK_SCRIPT, which, kernel, str(n), str(B), str(H), str(D)]
    if os.environ.get("LLMKATA_BENCH_THREADS"):
        command.append(os.environ["LLMKATA_BENCH_THREADS"])
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads peak RSS from /proc and getrusage (Linux)")
def test_tiled_attention_peak_memory_at_16k(benchmark, impl):
    n = int(os.environ.get("LLMKATA_BENCH_MEMORY_N", "16384"))
    # correctness first, on a size the naive definition can still hold
    q, k, v = attention_inputs(512)
    out, _ = impl.kernels.tiled_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), rtol=1e-4, atol=1e-5)

    tiled = benchmark.pedantic(peak_memory, args=(impl.name, "tiled", n), rounds=1, iterations=1)
    sdpa = peak_memory(impl.name, "sdpa", n)
    naive_scores_mb = B * H * n * n * 4 / 2**20
    benchmark.extra_info.update({
        "n": n,
        "inputs_mb": round(tiled["inputs_mb"]),
        "output_mb": round(tiled["output_mb"]),
        "tiled_peak_above_inputs_mb": round(tiled["peak_above_inputs_mb"]),
        "sdpa_peak_above_inputs_mb": round(sdpa["peak_above_inputs_mb"]),
        "naive_score_matrix_mb": round(naive_scores_mb),
        "tiled_s": round(tiled["seconds"], 2),
        "sdpa_s": round(sdpa["seconds"], 2),
    })
    assert tiled["peak_above_inputs_mb"] < naive_scores_mb / 20, (
        "tiled attention must not need anything near the N×N score matrix")


PROMPT, NEW_TOKENS = 1024, 8


def decoding_model(impl):
    torch.manual_seed(0)
    config = impl.model.ModelConfig(vocab_size=512, d_model=256, n_layers=4, n_heads=8, n_kv_heads=4,
                                    max_seq_len=PROMPT + NEW_TOKENS)
    return impl.model.Transformer(config).eval()


@torch.no_grad()
def decode_recomputing(model, prompt: torch.Tensor) -> list[int]:
    ids = prompt
    for _ in range(NEW_TOKENS):
        token = model(ids)[:, -1].argmax(-1, keepdim=True)  # the whole prefix, every time
        ids = torch.cat([ids, token], dim=1)
    return ids[0, prompt.shape[1]:].tolist()


@torch.no_grad()
def prefill(model, prompt: torch.Tensor):
    cache = model.make_cache(1)
    return cache, model(prompt, cache=cache)[:, -1].argmax(-1, keepdim=True)


@torch.no_grad()
def decode_cached(model, cache, token) -> list[int]:
    tokens = [token.item()]
    for _ in range(NEW_TOKENS - 1):
        token = model(token, cache=cache)[:, -1].argmax(-1, keepdim=True)  # one new position
        tokens.append(token.item())
    return tokens


def test_kv_cache_decoding_vs_recomputing(benchmark, impl):
    model = decoding_model(impl)
    prompt = torch.randint(0, 512, (1, PROMPT), generator=torch.Generator().manual_seed(0))

    # correctness first: the same greedy continuation both ways
    expected = decode_recomputing(model, prompt)
    assert decode_cached(model, *prefill(model, prompt)) == expected, "cached decoding must pick the same tokens"

    recompute_seconds = min(seconds(lambda: decode_recomputing(model, prompt)) for _ in range(ROUNDS))
    prefill_seconds = min(seconds(lambda: prefill(model, prompt)) for _ in range(ROUNDS))
    # the first new token comes from the prefill, so the cached loop makes NEW_TOKENS − 1 steps: time per token
    benchmark.pedantic(decode_cached, setup=lambda: ((model, *prefill(model, prompt)), {}), rounds=ROUNDS,
                       iterations=1)
    cached_per_token = benchmark.stats.stats.min / (NEW_TOKENS - 1)
    recompute_per_token = recompute_seconds / NEW_TOKENS
    benchmark.extra_info.update({
        "threads": torch.get_num_threads(),
        "context": PROMPT,
        "cached_tokens_per_s": round(1 / cached_per_token, 1),
        "recompute_tokens_per_s": round(1 / recompute_per_token, 2),
        "prefill_s": round(prefill_seconds, 3),
        "tokens_per_s_vs_recompute": round(recompute_per_token / cached_per_token, 1),  # target >= 5
    })


# ---------------------------------------------------------------------------------------- the throughput sweep


def sweep_device() -> str:
    device = os.environ.get("LLMKATA_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise pytest.UsageError(f"LLMKATA_BENCH_DEVICE must be cpu or cuda, got {device!r}")
    return device


SDPA_BACKENDS = {"sdpa-math": "MATH", "sdpa-flash": "FLASH_ATTENTION", "sdpa-efficient": "EFFICIENT_ATTENTION",
                 "sdpa-cudnn": "CUDNN_ATTENTION"}
IMPL_PATHS = ("definition", "kernels.attention", "kernels.tiled_attention")  # the implementation under test
REFERENCE_PATHS = tuple(f"reference.{path}" for path in IMPL_PATHS)  # beside another implementation


def sweep_cases(device: str, quick: bool, reference_too: bool = False) -> list[tuple]:
    """(pass, path, dtype name, head dim, causal, n, batch, heads) of every row of the sweep; reference_too: the
    reference's paths as well, for an implementation that is not the reference."""
    if device == "cuda":
        sizes = [1024, 4096, 16384] if quick else [512, 1024, 2048, 4096, 8192, 16384]
        dtypes, head_dims = ["bfloat16"] if quick else ["bfloat16", "float16"], [64, 128]
        shape = lambda n, d: (16384 // n, 2048 // d)  # noqa: E731 (16k tokens per batch, H·D = 2048)
        paths = ["sdpa", "kernels.flash_attention", *SDPA_BACKENDS, *IMPL_PATHS]
        # the definition and kernels.attention hold B·H·N² scores, and tiled attention is a loop of small ops
        small_only = {"sdpa-math": 2048, "definition": 1024, "kernels.attention": 1024,
                      "kernels.tiled_attention": 2048}
        small_only.update({f"reference.{path}": small_only[path] for path in IMPL_PATHS})
    else:
        sizes = [256, 512] if quick else [256, 512, 1024, 2048]
        dtypes, head_dims = ["float32"], [64]
        shape = lambda n, d: (2, 8)  # noqa: E731
        paths = ["sdpa", "sdpa-math", "sdpa-flash", *IMPL_PATHS]  # the SDPA backends a CPU has
        small_only = {}
    if reference_too:
        paths += REFERENCE_PATHS
    largest_backward = 256 if quick and device != "cuda" else sizes[-1]  # --quick on a CPU: backward at N=256
    # the headline cases first (the largest head dim, causal), so that a run stopped by a time limit has them
    return [(which, path, dtype, d, causal, n, *shape(n, d))
            for dtype in dtypes for d in reversed(head_dims) for causal in (True, False)
            for which in ("forward", "forward+backward") for n in sizes for path in paths
            if n <= small_only.get(path, n) and (which == "forward" or n <= largest_backward)]


def sweep_id(case) -> str:
    which, path, dtype, d, causal, n = case[:6]
    return f"{which}-{path}-{dtype}-d{d}-{'causal' if causal else 'full'}-N{n}"


SWEEP_DEVICE = sweep_device()
_baselines: dict = {}  # (pass, dtype, d, causal, n) -> seconds of default SDPA, measured in this run
_ceilings: dict = {}  # dtype -> FLOP/s of a large matmul, measured in this run


def attention_path(impl, path: str):
    """f(q, k, v, is_causal) -> out for a path of the sweep; None when it cannot run here."""
    if path == "sdpa":
        return lambda q, k, v, is_causal: F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    if path in SDPA_BACKENDS:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, SDPA_BACKENDS[path], None)
        if backend is None:
            return None

        def sdpa_backend(q, k, v, is_causal):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)

        return sdpa_backend
    if path.startswith("reference."):
        from llmkata.spec.impl import load

        return attention_path(load("reference"), path.removeprefix("reference."))
    if path == "definition":
        return lambda q, k, v, is_causal: impl.attention.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    if path == "kernels.attention":
        return lambda q, k, v, is_causal: impl.kernels.attention(q, k, v, is_causal=is_causal)
    if path == "kernels.tiled_attention":
        return lambda q, k, v, is_causal: impl.kernels.tiled_attention(q, k, v, is_causal=is_causal)[0]
    assert path == "kernels.flash_attention"
    return lambda q, k, v, is_causal: impl.kernels.flash_attention(q, k, v, is_causal=is_causal)[0]


def runner(attention, q, k, v, causal: bool, backward: bool, grad_out):
    """A call of the path, forward only or forward + backward (gradients of q, k, v). It does not wait for a GPU:
    CUDA-event timing brackets the queued work itself, and a wait inside would add the host's latency to every
    call."""
    if not backward:
        return lambda: attention(q, k, v, causal)
    return lambda: torch.autograd.grad(attention(q, k, v, causal), (q, k, v), grad_out)


def check_against_float64(result, q, k, v, causal: bool, backward: bool, grad_out, dtype, what: str) -> None:
    """Batch 0, head 0 of the path's output (or gradients) against the float64 definition, relative to the largest
    element; and never all zeros."""
    q0, k0, v0 = (t[0, 0].detach().double().requires_grad_() for t in (q, k, v))
    scores = q0 @ k0.T / math.sqrt(q.shape[-1])
    if causal:
        n_queries, n_keys = q.shape[-2], k.shape[-2]
        allowed = torch.ones(n_queries, n_keys, dtype=torch.bool, device=q.device).tril(n_keys - n_queries)
        scores = scores.masked_fill(~allowed, float("-inf"))
    expected = torch.softmax(scores, -1) @ v0
    if backward:
        expected = torch.autograd.grad(expected, (q0, k0, v0), grad_out[0, 0].double())
        got = [g[0, 0] for g in result]
    else:
        expected, got = [expected], [result[0, 0]]
    bound = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    for name, g, e in zip(("q", "k", "v") if backward else ("out",), got, expected):
        size = e.abs().max().item()
        error = (g.double() - e).abs().max().item()
        assert size > 0 and g.abs().max().item() > 0, f"{what}: {name} is all zeros"
        assert error <= bound * size, (
            f"{what}: {name} differs from the float64 definition by {error:.3g}, more than {bound} of its largest "
            f"element {size:.3g}")


def pytest_generate_tests(metafunc):
    """The sweep's cases, once the implementation is known: another implementation is timed beside the reference."""
    if metafunc.function.__name__ == "test_attention_throughput":
        cases = sweep_cases(SWEEP_DEVICE, os.environ.get("LLMKATA_BENCH_SWEEP", "full") == "quick",
                            reference_too=metafunc.config.llmkata_impl.name != "reference")
        metafunc.parametrize("case", cases, ids=[sweep_id(case) for case in cases])


def test_attention_throughput(benchmark, impl, case):
    which, path, dtype_name, d, causal, n, batch, heads = case
    device, dtype, backward = SWEEP_DEVICE, getattr(torch, dtype_name), which == "forward+backward"
    if device == "cuda" and not torch.cuda.is_available():
        pytest.fail("LLMKATA_BENCH_DEVICE=cuda, but torch sees no CUDA device")
    attention = attention_path(impl, path)
    if path == "kernels.flash_attention" and device != "cuda":
        pytest.skip("the Triton kernel is timed on a GPU only")
    if path == "kernels.flash_attention":
        pytest.importorskip("triton")
    generator = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(batch, heads, n, d, generator=generator, device=device, dtype=torch.float32).to(dtype)
               .requires_grad_(backward) for _ in range(3))
    grad_out = torch.randn(batch, heads, n, d, generator=generator, device=device, dtype=torch.float32).to(dtype)
    what = f"{sweep_id(case)} (B={batch}, H={heads})"
    if attention is None:
        pytest.skip(f"{path} is not in this torch")
    run = runner(attention, q, k, v, causal, backward, grad_out)
    try:
        result = run()
    except RuntimeError as error:  # an SDPA backend that does not take this dtype, size or device
        if path.startswith("sdpa-"):
            pytest.skip(f"{path} does not run this case here: {str(error).splitlines()[0][:200]}")
        raise
    check_against_float64(result, q, k, v, causal, backward, grad_out, dtype, what)  # correctness first
    del result

    if dtype_name not in _ceilings:
        _ceilings[dtype_name] = matmul_ceiling(device, dtype)
    peak = peak_memory_mb(run, device)
    baseline = runner(attention_path(impl, "sdpa"), q, k, v, causal, backward, grad_out)
    if device == "cuda":  # a GPU of its own: default SDPA timed once per case
        key = (which, dtype_name, d, causal, n)
        if key not in _baselines:
            _baselines[key] = device_seconds(baseline, device)
        sdpa_s = _baselines[key]
        ours = sdpa_s if path == "sdpa" else device_seconds(run, device)
    else:  # a shared CPU: SDPA and the path in turn, round by round, so that both see the same load
        times = [(seconds(baseline), seconds(run)) for _ in range(max(ROUNDS, 2))]
        sdpa_s, ours = min(t for t, _ in times), min(t for _, t in times)
        ours = sdpa_s if path == "sdpa" else ours
    # one more call, waited for, for pytest-benchmark's report
    benchmark.pedantic(lambda: (run(), synchronize(device)), rounds=1, iterations=1)
    flop_per_s = attention_flops(batch, heads, n, d, causal, backward) / ours
    benchmark.extra_info.update({
        "pass": which, "path": path, "dtype": dtype_name, "head_dim": d, "causal": causal, "n": n, "batch": batch,
        "heads": heads, "device": device, "threads": torch.get_num_threads(), "seconds": ours,
        "flop_per_s": flop_per_s, "throughput_vs_sdpa": round(sdpa_s / ours, 3),
        "ceiling_flops": _ceilings[dtype_name], "of_ceiling": flop_per_s / _ceilings[dtype_name], "peak_mb": peak,
    })
