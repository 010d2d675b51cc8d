"""Training-step benchmark: the default model of `llmkata train`, built from the implementation's own components,
against the same architecture built from torch's: `nn.Linear`, `nn.Embedding`, `nn.RMSNorm`,
`F.scaled_dot_product_attention`, `F.cross_entropy`, `torch.nn.utils.clip_grad_norm_` and `torch.optim.AdamW`.

Correctness first: the built-in model loads the implementation's weights (the parameter names are the same,
Hugging Face Llama's) and must give the same logits, loss and gradient norm on one batch. Then each round times
`STEPS` optimizer steps of the baseline and `STEPS` of the implementation, one after the other, so both see the
same machine load; the fastest round of each counts. Reported in `benchmark.extra_info`:

    tokens_per_s, baseline_tokens_per_s   training tokens (batch × context) per second
    ratio_vs_builtin                      target >= 1.0
    mfu                                   tokens/s × FLOPs per token / the matmul peak measured in this run, with
                                          FLOPs per token = 6N + 12·n_layers·T·d (model.flops_per_token)
    *_ms                                  each part of a step alone, ours and built-in (model forward + backward
                                          with F.cross_entropy on both sides, the loss, clipping, the optimizer;
                                          torch's AdamW also with foreach=True, which is not its CPU default)

    pytest benchmarks/bench_train.py --benchmark-columns=min,mean,rounds

A second benchmark times the pieces of the step alone, forward + backward at the default model's shapes, each
against torch's own: RMSNorm (`nn.RMSNorm`), the SwiGLU feed-forward (`F.silu`, `nn.Linear`), RoPE's rotation
(the usual `torch.cat` version), causal attention (`F.scaled_dot_product_attention`) and the loss
(`F.cross_entropy`). Values and gradients are checked first; `speed_vs_builtin` is torch's time / ours.

Both benchmarks run twice: with chapter 14's kernels (what `llmkata train` uses for the reference) and with the
chapters' definitions differentiated by autograd, so a reader sees what each kernel buys.

Knobs: LLMKATA_BENCH_ROUNDS (default 3), LLMKATA_BENCH_THREADS (torch threads; default torch's choice).
"""

import math
import os
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmkata.pipeline import build_model
from llmkata.run_config import RunConfig

from .common import seconds

ROUNDS = int(os.environ.get("LLMKATA_BENCH_ROUNDS", "3"))
STEPS = 5  # optimizer steps per timed round
if os.environ.get("LLMKATA_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["LLMKATA_BENCH_THREADS"]))


def rotate_with_cat(x, cos, sin):
    """RoPE's rotation as it is usually written with torch (split halves)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class BuiltinAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, max_seq_len: int, theta: float):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=False)
        # RoPE, split halves (torch has no built-in): the angle of pair i at position m is m·θ^(−2i/d)
        frequencies = theta ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim)
        angles = torch.arange(max_seq_len, dtype=torch.float64)[:, None] * frequencies  # (T, d/2)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def rope(self, x):
        length = x.shape[-2]
        return rotate_with_cat(x, self.cos[:length], self.sin[:length])

    def forward(self, x):
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(self.rope(q), self.rope(k), v, is_causal=True,
                                             enable_gqa=self.n_kv_heads != self.n_heads)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class BuiltinMLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class BuiltinBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(c.d_model, eps=c.norm_eps)
        self.self_attn = BuiltinAttention(c.d_model, c.n_heads, c.n_kv_heads, c.max_seq_len, c.rope_theta)
        self.post_attention_layernorm = nn.RMSNorm(c.d_model, eps=c.norm_eps)
        self.mlp = BuiltinMLP(c.d_model, c.d_ff)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class BuiltinLlama(nn.Module):
    """The model chapter's Transformer (RMSNorm, SwiGLU, split-halves RoPE, untied head), from torch modules."""

    def __init__(self, c):
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(c.vocab_size, c.d_model)
        self.model.layers = nn.ModuleList(BuiltinBlock(c) for _ in range(c.n_layers))
        self.model.norm = nn.RMSNorm(c.d_model, eps=c.norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)

    def forward(self, ids):
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x)
        return self.lm_head(self.model.norm(x))


def builtin_step(model, optimizer, x, y, max_norm):
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss.item(), norm.item()


def matmul_peak_flops(n: int = 1024, repeats: int = 10) -> float:
    """The best float32 matmul throughput of this machine, measured now: 2·n³ FLOPs per product."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * n**3 / best


def best_ms(function, repeats: int = 5) -> float:
    function()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return round(best * 1000, 2)


def components(impl, model, baseline, optimizer, torch_optimizer, x, y, max_norm) -> dict:
    """Milliseconds of each part of a step, ours and built-in: where a gap in the whole step comes from."""
    vocab = model.config.vocab_size
    foreach_optimizer = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"]}
                                           for g in torch_optimizer.param_groups],
                                          lr=torch_optimizer.defaults["lr"], betas=torch_optimizer.defaults["betas"],
                                          foreach=True)
    logits = torch.randn(x.numel(), vocab, generator=torch.Generator().manual_seed(1)).requires_grad_()
    targets = y.reshape(-1)

    def model_pass(m):
        return lambda: F.cross_entropy(m(x).reshape(-1, vocab), targets).backward()

    return {
        "model_fwd_bwd_ms": best_ms(model_pass(model), 3), "builtin_model_fwd_bwd_ms": best_ms(model_pass(baseline), 3),
        "loss_fwd_bwd_ms": best_ms(lambda: impl.train.cross_entropy(logits, targets).backward()),
        "builtin_loss_fwd_bwd_ms": best_ms(lambda: F.cross_entropy(logits, targets).backward()),
        "clip_ms": best_ms(lambda: impl.train.clip_grad_norm(model.parameters(), max_norm)),
        "builtin_clip_ms": best_ms(lambda: torch.nn.utils.clip_grad_norm_(baseline.parameters(), max_norm)),
        "optimizer_ms": best_ms(optimizer.step), "builtin_optimizer_ms": best_ms(torch_optimizer.step),
        # torch's AdamW on CPU loops over the parameters by default; its multi-tensor variant, for comparison
        "builtin_foreach_optimizer_ms": best_ms(foreach_optimizer.step),
    }


@pytest.mark.parametrize("kernels", ["on", "off"], ids=["kernels", "definitions"])
def test_training_step_vs_builtin_torch(benchmark, impl, kernels):
    config = RunConfig(kernels=kernels)
    vocab = config.vocab_size
    model = build_model(impl, config, vocab)
    baseline = BuiltinLlama(model.config)
    baseline.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(vocab, (config.batch_size, config.context_length), generator=generator)
    y = torch.randint(vocab, (config.batch_size, config.context_length), generator=generator)

    # correctness first: the same function, the same loss and gradient norm
    with torch.no_grad():
        torch.testing.assert_close(model(x), baseline(x), rtol=1e-4, atol=1e-4)
    optimizer = impl.train.AdamW(impl.train.parameter_groups(model, config.weight_decay), lr=config.lr,
                                 betas=(config.beta1, config.beta2))
    groups = [{"params": [baseline.get_parameter(n) for n, p in model.named_parameters()
                          if any(p is q for q in group["params"])], "weight_decay": group["weight_decay"]}
              for group in impl.train.parameter_groups(model, config.weight_decay)]
    torch_optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2))
    loss, norm = impl.train.train_step(model, optimizer, [(x, y)], config.grad_clip, config.lr)
    base_loss, base_norm = builtin_step(baseline, torch_optimizer, x, y, config.grad_clip)
    assert math.isclose(loss, base_loss, rel_tol=1e-4), f"loss {loss} vs built-in {base_loss}"
    assert math.isclose(norm, base_norm, rel_tol=1e-3), f"gradient norm {norm} vs built-in {base_norm}"

    def ours():
        for _ in range(STEPS):
            impl.train.train_step(model, optimizer, [(x, y)], config.grad_clip, config.lr)

    def builtin():
        start = time.perf_counter()
        for _ in range(STEPS):
            builtin_step(baseline, torch_optimizer, x, y, config.grad_clip)
        builtin_times.append(time.perf_counter() - start)

    builtin_times = []
    builtin()  # warm-up of both
    ours()
    builtin_times.clear()
    benchmark.pedantic(ours, rounds=ROUNDS, iterations=1, setup=builtin, warmup_rounds=0)
    tokens = STEPS * config.batch_size * config.context_length
    ours_s, builtin_s = benchmark.stats.stats.min, min(builtin_times)
    flops_per_token = impl.model.flops_per_token(model.config, config.context_length)
    peak = matmul_peak_flops()
    benchmark.extra_info.update({
        "threads": torch.get_num_threads(),
        "kernels": kernels,
        "parameters": impl.model.count_parameters(model),
        "flops_per_token": flops_per_token,
        "tokens_per_s": round(tokens / ours_s, 1),
        "baseline_tokens_per_s": round(tokens / builtin_s, 1),
        "ratio_vs_builtin": round(builtin_s / ours_s, 3),  # target >= 1.0
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "mfu": round(tokens / ours_s * flops_per_token / peak, 4),
        "baseline_mfu": round(tokens / builtin_s * flops_per_token / peak, 4),
        **components(impl, model, baseline, optimizer, torch_optimizer, x, y, config.grad_clip),
    })


# ---------------------------------------------------------------- the pieces of a step, forward + backward

PIECE_REPEATS = 10  # forward + backward passes per timed round


def pieces(impl, name: str, kernels: bool):
    """(ours, built-in, inputs): two functions of the same inputs that must give the same values and gradients.

    Ours is the chapter's definition, or with `kernels` the fast path of chapter 14 that the model uses instead."""
    config, generator = RunConfig(), torch.Generator().manual_seed(0)
    batch, length, d_model, n_heads = config.batch_size, config.context_length, config.d_model, config.n_heads
    head_dim = d_model // n_heads
    x = torch.randn(batch, length, d_model, generator=generator)
    # q, k, v as attention makes them: (B, T, H, hd) projections viewed as (B, H, T, hd)
    heads = [torch.randn(batch, length, n_heads, head_dim, generator=generator).transpose(1, 2) for _ in range(3)]
    if name == "rmsnorm":
        ours, builtin = impl.layers.RMSNorm(d_model, kernels=kernels), nn.RMSNorm(d_model, eps=1e-5)
        with torch.no_grad():
            ours.weight.copy_(torch.rand(d_model, generator=generator) + 0.5)
            ours.eps = 1e-5
        builtin.load_state_dict(ours.state_dict())
        return ours, builtin, [x]
    if name == "swiglu":
        d_ff = build_model(impl, config, config.vocab_size).config.d_ff  # the default model's hidden size
        ours, builtin = impl.layers.SwiGLU(d_model, d_ff, kernels=kernels), BuiltinMLP(d_model, d_ff)
        builtin.load_state_dict(ours.state_dict())
        return ours, builtin, [x]
    if name == "rope":
        angles = torch.arange(length)[:, None] * 10000.0 ** (-torch.arange(0, head_dim, 2) / head_dim)
        cos, sin = angles.cos(), angles.sin()
        rotate = impl.kernels.RotateFunction.apply if kernels else impl.rope.rotate
        return (lambda q: rotate(q, cos, sin, False)), (lambda q: rotate_with_cat(q, cos, sin)), heads[:1]
    if name == "attention":
        attention = impl.kernels.attention if kernels else impl.attention.scaled_dot_product_attention
        return (lambda q, k, v: attention(q, k, v, is_causal=True),
                lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), heads)
    if name == "cross_entropy":
        logits = torch.randn(batch * length, config.vocab_size, generator=generator)
        targets = torch.randint(config.vocab_size, (batch * length,), generator=generator)
        loss = impl.kernels.cross_entropy if kernels else impl.train.cross_entropy
        return (lambda z: loss(z, targets)), (lambda z: F.cross_entropy(z, targets)), [logits]
    raise ValueError(name)


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "definitions"])
@pytest.mark.parametrize("name", ["rmsnorm", "swiglu", "rope", "attention", "cross_entropy"])
def test_step_pieces_forward_backward_vs_builtin_torch(benchmark, impl, name, kernels):
    ours, builtin, inputs = pieces(impl, name, kernels)
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = ours(*inputs)
    grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))

    def gradients(function):
        return torch.autograd.grad(function(*inputs), inputs, grad_output)

    # correctness first: the same values and the same gradients with respect to every input
    torch.testing.assert_close(out, builtin(*inputs), rtol=1e-4, atol=1e-5)
    for got, expected in zip(gradients(ours), gradients(builtin)):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    def passes(function):
        return lambda: [gradients(function) for _ in range(PIECE_REPEATS)]

    builtin_times = []
    benchmark.pedantic(passes(ours), rounds=ROUNDS, iterations=1, warmup_rounds=1,
                       setup=lambda: builtin_times.append(seconds(passes(builtin))))
    ours_s, builtin_s = benchmark.stats.stats.min / PIECE_REPEATS, min(builtin_times) / PIECE_REPEATS
    benchmark.extra_info.update({
        "threads": torch.get_num_threads(),
        "shape": "x".join(map(str, inputs[0].shape)),
        "ms": round(ours_s * 1000, 3),
        "builtin_ms": round(builtin_s * 1000, 3),
        "speed_vs_builtin": round(builtin_s / ours_s, 2),
    })
