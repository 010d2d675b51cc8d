"""Chapter 14 — kernels: the fast paths of chapters 2, 4, 5, 6 and 8, each equal to its chapter's definition.

Every kernel is checked against the definition computed in float64, values and gradients, for shapes that are not
multiples of any block, Tq ≠ Tk, fully masked rows, non-default scales, and half precision (float32 accumulation);
the model with kernels equals the model without, also through a wrapped projection and a training step; the
incremental BPE trainer learns exactly the merges of the textbook one.
"""

import functools
import math
import warnings

import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from .checks import assert_rejects, grads_of
from .strategies import float_dtypes, seeds, shapes, tensors
from .test_attention import attention_inputs, causal64, lse64, weights64
from .test_model import PROJECTIONS, build, configs, token_ids, wrap_and_merge
from .test_tokenizer import (GPT2, GPT4, SPECIALS, corpus_documents, corpus_text, small_corpora,
                             textbook_bpe)
from .test_train import logits_and_targets, nll64
from .tolerances import assert_close

half_dtypes = st.sampled_from([torch.bfloat16, torch.float16])
any_dtypes = st.sampled_from([torch.float64, torch.float32, torch.bfloat16])


def definition_and_kernel_grads(definition, kernel, inputs, seed):
    """(kernel output, kernel grads, definition output in float64, definition grads) for one random upstream grad."""
    ours = [t.clone().requires_grad_() for t in inputs]
    theirs = [t.detach().double().requires_grad_() for t in inputs]
    out, expected = kernel(*ours), definition(*theirs)
    grad_out = torch.randn(expected.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return out, grads_of(out, ours, grad_out.to(out.dtype)), expected, grads_of(expected, theirs, grad_out)


def check_kernel(name, definition, kernel, inputs, seed, scale=1.0):
    __tracebackhide__ = True
    out, grads, expected, expected_grads = definition_and_kernel_grads(definition, kernel, inputs, seed)
    dtype = inputs[0].dtype
    assert out.dtype == dtype, f"{name} of {dtype} inputs must return {dtype}, got {out.dtype}"
    assert_close(out, expected, f"{name} must equal its definition", dtype=dtype, scale=scale)
    for i, (got, want) in enumerate(zip(grads, expected_grads)):
        assert got.dtype == inputs[i].dtype, (
            f"the gradient {name} passes to input {i} must have that input's dtype {inputs[i].dtype}, got {got.dtype}")
        assert_close(got, want, f"the gradient of {name} with respect to input {i} must equal that of its definition",
                     dtype=dtype, scale=10 * scale)


# ---------------------------------------------------------------- RMSNorm and SwiGLU (chapter 4)


def rms_norm64(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def norm_rows(**kwargs):
    return tensors(min_dims=1, max_dims=3, min_side=2, scale=3.0, **kwargs).filter(
        lambda x: bool((x.double().std(-1, unbiased=False) > 0.1).all()))


@given(norm_rows(dtype=torch.float64), seeds, st.sampled_from([1e-6, 1e-2, 1.0]))
def test_rmsnorm_function_equals_the_definition_in_values_and_gradients(impl, x, seed, eps):
    weight = torch.randn(x.shape[-1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    check_kernel(f"RMSNormFunction(eps={eps})", lambda x, w: rms_norm64(x, w, eps),
                 lambda x, w: impl.kernels.RMSNormFunction.apply(x, w, eps), [x, weight], seed)


@given(st.integers(1, 3), st.integers(64, 512), half_dtypes, seeds)
def test_rmsnorm_function_in_half_precision(impl, rows, n, dtype, seed):
    # Rows of hundreds of numbers: the mean of their squares must not be summed in half precision.
    x = (torch.randn(rows, n, generator=torch.Generator().manual_seed(seed)) * 30).to(dtype)
    weight = (1 + torch.rand(x.shape[-1], generator=torch.Generator().manual_seed(seed))).to(dtype)
    check_kernel(f"RMSNormFunction in {dtype}", lambda x, w: rms_norm64(x, w, 1e-6),
                 lambda x, w: impl.kernels.RMSNormFunction.apply(x, w, 1e-6), [x, weight], seed)


def swiglu64(gate, up):
    return gate * torch.sigmoid(gate) * up


@given(tensors(dtype=torch.float64, scale=3.0), seeds)
def test_swiglu_function_equals_the_definition_in_values_and_gradients(impl, gate, seed):
    up = torch.randn(gate.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    check_kernel("SwiGLUFunction", swiglu64, impl.kernels.SwiGLUFunction.apply, [gate, up], seed)


@given(tensors(scale=3.0), half_dtypes, seeds)
def test_swiglu_function_in_half_precision(impl, gate, dtype, seed):
    up = torch.randn(gate.shape, generator=torch.Generator().manual_seed(seed))
    check_kernel(f"SwiGLUFunction in {dtype}", swiglu64, impl.kernels.SwiGLUFunction.apply,
                 [gate.to(dtype), up.to(dtype)], seed)


# ---------------------------------------------------------------- the RoPE rotation (chapter 5)


def rotate64(x, cos, sin, interleaved):
    d = x.shape[-1]
    x1, x2 = (x[..., 0::2], x[..., 1::2]) if interleaved else (x[..., : d // 2], x[..., d // 2:])
    r1, r2 = x1 * cos - x2 * sin, x1 * sin + x2 * cos
    return torch.stack((r1, r2), -1).flatten(-2) if interleaved else torch.cat((r1, r2), -1)


@given(st.integers(1, 6), shapes(min_dims=0, max_dims=2, max_side=3), st.integers(1, 5), st.booleans(),
       st.sampled_from(["x", "tables"]), any_dtypes, seeds)
def test_rotate_function_equals_the_definition_in_values_and_gradients(impl, half, lead, length, interleaved,
                                                                         wider, dtype, seed):
    """The tables broadcast against x, or x against the tables (the gradient is then summed back to x's shape)."""
    generator = torch.Generator().manual_seed(seed)
    x_shape, table_shape = ((*lead, length, 2 * half), (length, half)) if wider == "x" else \
        ((length, 2 * half), (*lead, length, half))
    x = torch.randn(x_shape, generator=generator, dtype=torch.float64).to(dtype)
    angles = torch.rand(table_shape, generator=generator, dtype=torch.float64) * 20 - 10
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    check_kernel(f"RotateFunction(interleaved={interleaved}, x {tuple(x_shape)}, tables {tuple(table_shape)})",
                 lambda x: rotate64(x, cos.double(), sin.double(), interleaved),
                 lambda x: impl.kernels.RotateFunction.apply(x, cos, sin, interleaved), [x], seed)


# ---------------------------------------------------------------- cross-entropy (chapter 8)


def cross_entropy_through(impl, entry: str):
    """kernels.cross_entropy, or CrossEntropyFunction.apply on the flattened (N, V) logits and (N,) targets."""
    if entry == "cross_entropy":
        return lambda z, y, ignore_index=-100: impl.kernels.cross_entropy(z, y, ignore_index=ignore_index)
    return lambda z, y, ignore_index=-100: impl.kernels.CrossEntropyFunction.apply(
        z.reshape(-1, z.shape[-1]), y.reshape(-1), ignore_index)


entries = st.sampled_from(["cross_entropy", "Function"])


@given(logits_and_targets(), seeds, st.sampled_from([-100, -1, 0]), st.sampled_from([0.0, 0.5]), entries)
def test_cross_entropy_kernel_equals_the_definition_in_values_and_gradients(impl, case, seed, ignore_index, rate,
                                                                           entry):
    logits, targets = case
    generator = torch.Generator().manual_seed(seed)
    targets = torch.where(torch.rand(targets.shape, generator=generator) < rate, ignore_index, targets)
    counted_id = 1 if ignore_index == 0 else 0  # one target that counts, so the mean is defined
    assume(counted_id < logits.shape[-1])
    targets.view(-1)[0] = counted_id
    loss = cross_entropy_through(impl, entry)
    check_kernel(f"kernels.{entry}(ignore_index={ignore_index})", lambda z: nll64(z, targets, ignore_index),
                 lambda z: loss(z, targets, ignore_index), [logits.double()], seed)


@given(logits_and_targets(scale=1.0), half_dtypes, st.sampled_from([1.0, 1e4]), entries)
def test_cross_entropy_kernel_in_half_precision_and_at_large_logits(impl, case, dtype, big, entry):
    logits, targets = case
    logits = (logits * 3 + big).to(dtype).requires_grad_()  # large: the digits of the differences must survive
    loss = cross_entropy_through(impl, entry)(logits, targets)
    assert loss.dtype == torch.float32, (
        f"kernels.{entry} of {dtype} logits must be computed and returned in float32, got {loss.dtype}")
    assert_close(loss, nll64(logits, targets), f"kernels.{entry} of {dtype} logits around {big} must equal the "
                 "definition on the same (rounded) logits", dtype=torch.float32, scale=10)
    loss.backward()
    assert logits.grad.dtype == dtype, f"the gradient of {dtype} logits must be {dtype}, got {logits.grad.dtype}"


def test_cross_entropy_kernel_rejects_what_the_definition_rejects(impl):
    ce = impl.kernels.cross_entropy
    assert_rejects(lambda: ce(torch.zeros(2, 5), torch.tensor([1, 5])), 5, what="a target of 5 in a vocabulary of 5")
    assert_rejects(lambda: ce(torch.zeros(2, 5), torch.tensor([1, 2, 3])), "(2, 5)", "(3,)",
                   what="logits (2, 5) with targets (3,)")


# ---------------------------------------------------------------- attention (chapter 6)


scales = st.sampled_from([None, 0.25, 2.0])


def attention64(q, k, v, mask, is_causal, scale):
    allowed = allowed_keys(mask, is_causal, q.shape[-2], k.shape[-2])
    if allowed is None:
        return weights64(q, k, None, scale) @ v
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1) * scale).masked_fill(~allowed, float("-inf"))
    sees = allowed.any(-1, keepdim=True)
    return (torch.softmax(scores.masked_fill(~sees, 0.0), -1) * sees) @ v


def attention_through(impl, entry: str, mask, is_causal: bool, scale):
    """kernels.attention, or AttentionFunction.apply on flattened (N, T, d) batches with the mask as a 0/−inf bias."""
    if entry == "attention":
        return lambda q, k, v: impl.kernels.attention(q, k, v, mask=mask, is_causal=is_causal, scale=scale)

    def through_function(q, k, v):
        lead, n_queries, n_keys = q.shape[:-2], q.shape[-2], k.shape[-2]
        allowed = allowed_keys(mask, is_causal, n_queries, n_keys)
        bias = None
        if allowed is not None:
            bias = torch.zeros(allowed.shape, dtype=q.dtype).masked_fill(~allowed, float("-inf"))
            bias = bias.expand(*lead, n_queries, n_keys).reshape(-1, n_queries, n_keys)
        out = impl.kernels.AttentionFunction.apply(
            q.reshape(-1, n_queries, q.shape[-1]), k.reshape(-1, n_keys, k.shape[-1]),
            v.reshape(-1, n_keys, v.shape[-1]), bias, 1 / math.sqrt(q.shape[-1]) if scale is None else scale)
        return out.reshape(*lead, n_queries, v.shape[-1])

    return through_function


def allowed_keys(mask, is_causal: bool, n_queries: int, n_keys: int):
    allowed = mask
    if is_causal:
        causal = causal64(n_queries, n_keys)
        allowed = causal if allowed is None else allowed & causal
    return allowed


_MORE_KEYS_THAN_QUERIES = (*(torch.randn(2, length, d, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
                              for i, (length, d) in enumerate(((3, 4), (5, 4), (5, 3)))), None, True)  # q, k, v


@given(attention_inputs(), scales, seeds, st.sampled_from(["attention", "Function"]))
@example(case=_MORE_KEYS_THAN_QUERIES, scale=None, seed=0, entry="attention")  # causal: query i sees keys ≤ 2 + i
def test_attention_kernel_equals_the_definition_in_values_and_gradients(impl, case, scale, seed, entry):
    q, k, v, mask, is_causal = case
    check_kernel(f"kernels.{entry}(Tq={q.shape[-2]}, Tk={k.shape[-2]}, mask={mask is not None}, "
                 f"is_causal={is_causal}, scale={scale})",
                 lambda q, k, v: attention64(q, k, v, mask, is_causal, scale),
                 attention_through(impl, entry, mask, is_causal, scale), [q, k, v], seed, scale=10)


@given(attention_inputs(max_len=12), scales, seeds, st.sampled_from(["attention", "Function"]))
def test_attention_kernel_in_half_precision(impl, case, scale, seed, entry):
    q, k, v, mask, is_causal = case
    q, k, v = q.to(torch.bfloat16), k.to(torch.bfloat16), v.to(torch.bfloat16)
    # No extra tolerance: computed in float32 and rounded once, values and gradients are within bfloat16's.
    check_kernel(f"kernels.{entry} in bfloat16 (Tq={q.shape[-2]}, Tk={k.shape[-2]}, is_causal={is_causal})",
                 lambda q, k, v: attention64(q, k, v, mask, is_causal, scale),
                 attention_through(impl, entry, mask, is_causal, scale), [q, k, v], seed)


def test_attention_kernel_rejects_mismatched_inputs(impl):
    attention = impl.kernels.attention
    q, k = torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.float64)
    assert_rejects(lambda: attention(q, k, k), "float32", "float64", what="kernels.attention of float32 q, float64 k")
    assert_rejects(lambda: attention(q, q, q, mask=torch.ones(3, 3)), "bool",
                   what="kernels.attention with a float mask")


# ---------------------------------------------------------------- tiled (flash) attention


@st.composite
def tiled_cases(draw, max_len=20, dtype=None):
    """q, k, v (Tq ≠ Tk allowed) in `dtype` when given, is_causal, block sizes that need not divide them, a scale."""
    q, k, v, _, is_causal = draw(attention_inputs(max_len))
    if dtype is not None:
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    blocks = draw(st.integers(1, max_len + 4)), draw(st.integers(1, max_len + 4))
    return q, k, v, is_causal, blocks, draw(scales)


def tiled_through(impl, entry: str):
    """kernels.tiled_attention, or TiledAttentionFunction.apply on flattened (N, T, d) batches."""
    if entry == "tiled_attention":
        return impl.kernels.tiled_attention

    def through_function(q, k, v, is_causal, block_size_q, block_size_k, scale):
        lead = q.shape[:-2]
        out, lse = impl.kernels.TiledAttentionFunction.apply(
            q.reshape(-1, *q.shape[-2:]), k.reshape(-1, *k.shape[-2:]), v.reshape(-1, *v.shape[-2:]), is_causal,
            block_size_q, block_size_k, 1 / math.sqrt(q.shape[-1]) if scale is None else scale)
        return out.reshape(*lead, *out.shape[-2:]), lse.reshape(*lead, lse.shape[-1])

    return through_function


tiled_entries = st.sampled_from(["tiled_attention", "Function"])


@given(tiled_cases(), tiled_entries)
def test_tiled_attention_equals_naive_values_and_log_sum_exp(impl, case, entry):
    q, k, v, is_causal, (block_q, block_k), scale = case
    out, lse = tiled_through(impl, entry)(q, k, v, is_causal, block_q, block_k, scale)
    allowed = causal64(q.shape[-2], k.shape[-2]) if is_causal else None
    where = (f"tiled_attention(Tq={q.shape[-2]}, Tk={k.shape[-2]}, is_causal={is_causal}, block_size_q={block_q}, "
             f"block_size_k={block_k}, scale={scale})")
    assert_close(out, weights64(q, k, allowed, scale) @ v.double(),
                 f"{where} must equal softmax(q kᵀ · scale) v (0 for a query that sees no key)", dtype=q.dtype,
                 scale=10)
    expected_lse = lse64(q, k, allowed, scale)
    assert torch.equal(torch.isinf(lse), torch.isinf(expected_lse)), (
        f"{where}: the log-sum-exp must be −inf exactly for the queries that see no key")
    finite = torch.isfinite(expected_lse)
    assert_close(lse[finite], expected_lse[finite],
                 f"{where} must return lse_i = log Σ_j exp(scale · q_i·k_j) over the keys query i sees",
                 dtype=q.dtype, scale=10)


@given(tiled_cases(max_len=40, dtype=torch.bfloat16), tiled_entries)
def test_tiled_attention_accumulates_half_precision_in_float32(impl, case, entry):
    q, k, v, is_causal, (block_q, block_k), scale = case
    out, lse = tiled_through(impl, entry)(q, k, v, is_causal, block_q, block_k, scale)
    allowed = causal64(q.shape[-2], k.shape[-2]) if is_causal else None
    assert out.dtype == torch.bfloat16, f"tiled_attention of bfloat16 inputs must return bfloat16, got {out.dtype}"
    assert_close(out, weights64(q, k, allowed, scale) @ v.double(),
                 f"tiled_attention in bfloat16 (blocks {block_q}×{block_k}) must equal the float64 definition to "
                 "bfloat16 precision: sums over tiles accumulate in float32", dtype=torch.bfloat16)


@settings(max_examples=25)  # each example runs a forward and a backward pass tile by tile
@given(tiled_cases(max_len=12, dtype=torch.float64), seeds, tiled_entries)
def test_tiled_attention_gradients_equal_naive(impl, case, seed, entry):
    q, k, v, is_causal, (block_q, block_k), scale = case
    allowed = causal64(q.shape[-2], k.shape[-2]) if is_causal else None
    generator = torch.Generator().manual_seed(seed)
    expected_lse = lse64(q, k, allowed, scale)
    grad_out = torch.randn(*q.shape[:-1], v.shape[-1], generator=generator, dtype=torch.float64)
    grad_lse = torch.where(torch.isfinite(expected_lse),
                           torch.randn(expected_lse.shape, generator=generator, dtype=torch.float64), 0.0)

    def loss(out, lse):  # both outputs carry gradient; rows that see no key are left out of lse's part
        return (out * grad_out).sum() + (torch.where(torch.isfinite(lse), lse, 0.0) * grad_lse).sum()

    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    tiled = torch.autograd.grad(loss(*tiled_through(impl, entry)(*inputs, is_causal, block_q, block_k, scale)),
                                inputs)
    nq, nk, nv = naive_inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    scores = (nq @ nk.transpose(-2, -1)) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    safe = torch.where(allowed.any(-1, keepdim=True), scores, 0.0) if allowed is not None else scores
    naive_out = torch.softmax(safe, -1) @ nv
    if allowed is not None:
        naive_out = torch.where(allowed.any(-1)[:, None], naive_out, 0.0)
    naive = torch.autograd.grad(loss(naive_out, torch.logsumexp(safe, -1)), naive_inputs)
    for name, got, expected in zip("qkv", tiled, naive):
        assert_close(got, expected, f"the gradient of tiled_attention (out and lse both used) with respect to {name} "
                                    f"must equal the naive one (is_causal={is_causal}, blocks {block_q}×{block_k}, "
                                    f"scale={scale})", scale=100)


def test_tiled_attention_saves_linear_memory_for_backward(impl):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 256, 8, requires_grad=True) for _ in range(3))
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out, lse = impl.kernels.tiled_attention(q, k, v, is_causal=True, block_size_q=64, block_size_k=64)
    budget = 4 * (q.numel() + k.numel() + v.numel())
    assert sum(saved) <= budget, (
        f"tiled_attention at T = 256 saved {sum(saved)} numbers for its backward pass, more than {budget}: it must "
        "keep O(T) tensors (q, k, v, out, lse) and recompute probabilities tile by tile, not save T×T scores")
    (out.sum() + lse.sum()).backward()
    assert q.grad is not None and k.grad is not None and v.grad is not None, "tiled_attention must pass gradients on"


def test_tiled_attention_rejects_bad_blocks_and_mismatched_inputs(impl):
    tiled = impl.kernels.tiled_attention
    q = torch.zeros(3, 4)
    assert_rejects(lambda: tiled(q, q, q, block_size_q=0), "block_size_q", what="tiled_attention(block_size_q=0)")
    assert_rejects(lambda: tiled(q, q, q, block_size_k=-2), "block_size_k", what="tiled_attention(block_size_k=-2)")
    assert_rejects(lambda: tiled(q, q.double(), q.double()), "float32", "float64",
                   what="tiled_attention of float32 q and float64 k")


# ---------------------------------------------------------------- the modules, the model and the trainer


MODULES = {
    "RMSNorm": lambda impl, kernels: impl.layers.RMSNorm(12, eps=1e-3, kernels=kernels),
    "SwiGLU": lambda impl, kernels: impl.layers.SwiGLU(12, 20, kernels=kernels),
    "RotaryEmbedding": lambda impl, kernels: impl.rope.RotaryEmbedding(12, 16, theta=500.0, interleaved=True,
                                                                       kernels=kernels),
    "CausalSelfAttention": lambda impl, kernels: impl.attention.CausalSelfAttention(12, 6, 2, max_seq_len=16,
                                                                                    kernels=kernels),
}


@pytest.mark.parametrize("name", sorted(MODULES))
@given(seeds, float_dtypes)
def test_modules_with_kernels_equal_the_modules_without(impl, name, seed, dtype):
    """Each module with kernels=True, in float32 or float64, against the same module without, in float64."""
    generator = torch.Generator().manual_seed(seed)
    plain, fast = MODULES[name](impl, False).double(), MODULES[name](impl, True).to(dtype)
    with torch.no_grad():
        for parameter in plain.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(6, 9, 12, generator=generator, dtype=torch.float64).to(dtype)
    positions = torch.randint(0, 16, (9,), generator=generator)
    run = (lambda module, x: module(x, positions)) if name == "RotaryEmbedding" else (lambda module, x: module(x))
    # scale 100: a float32 module sums products of float32 weights, as the model test allows for
    check_kernel(f"{name}(kernels=True) in {dtype}", lambda x: run(plain, x), lambda x: run(fast, x), [x], seed,
                 scale=100)


def model_pair(impl, kwargs, seed):
    """The same weights in a model without kernels and one with them."""
    plain = build(impl, kwargs, seed)
    fast = impl.model.Transformer(impl.model.ModelConfig(**kwargs, kernels=True)).double()
    fast.load_state_dict(plain.state_dict())
    return plain, fast


@settings(max_examples=20)  # each example runs two models forward and backward
@given(configs(llama=True), seeds, st.integers(1, 10))
def test_model_with_kernels_equals_the_model_without(impl, kwargs, seed, length):
    plain, fast = model_pair(impl, kwargs, seed)
    ids = token_ids(kwargs, seed, 2, length)
    logits_plain, logits_fast = plain(ids), fast(ids)
    assert_close(logits_fast, logits_plain, "ModelConfig(kernels=True) must compute the same logits", scale=100)
    grad = torch.randn(logits_plain.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    names = [name for name, _ in plain.named_parameters()]
    for name, got, expected in zip(names, grads_of(logits_fast, list(fast.parameters()), grad),
                                   grads_of(logits_plain, list(plain.parameters()), grad)):
        assert_close(got, expected, f"with kernels=True the gradient of {name} must equal that without", scale=100)
    cache = fast.make_cache(2)
    with torch.no_grad():
        pieces = [fast(ids[:, :1], cache=cache)] + ([fast(ids[:, 1:], cache=cache)] if length > 1 else [])
    assert_close(torch.cat(pieces, 1), logits_plain.detach(),
                 "with kernels=True, cached decoding must give the logits of the full forward", scale=100)


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_wrapped_projections_are_used_on_the_kernel_path(impl, projection):
    kwargs = dict(vocab_size=11, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=8)
    merged, wrapped = model_pair(impl, kwargs, 0)
    wrap_and_merge(wrapped, merged, projection, seed=1)
    ids = token_ids(kwargs, 0, 2, 6)
    assert_close(wrapped(ids), merged(ids),
                 f"with kernels=True and {projection} wrapped in a module that adds x·(BA)ᵀ, the model must compute "
                 f"what the plain model computes with W + BA as the weight: the kernel path calls every projection "
                 "as a module, never through its weight alone", scale=100)


@settings(max_examples=10)  # each example takes two optimizer steps
@given(configs(llama=True), seeds)
def test_train_step_with_kernels_equals_train_step_without(impl, kwargs, seed):
    plain, fast = model_pair(impl, kwargs, seed)
    ids = token_ids(kwargs, seed, 2, 8)
    targets = token_ids(kwargs, seed + 1, 2, 8)
    targets[0, :3] = -100
    results = []
    for model in (plain, fast):
        optimizer = impl.train.AdamW(model.parameters(), lr=1e-2)
        loss, norm = impl.train.train_step(model, optimizer, [(ids, targets), (ids.flip(1), targets.flip(1))])
        results.append((loss, norm, [p.detach().clone() for p in model.parameters()]))
    (loss_plain, norm_plain, weights_plain), (loss_fast, norm_fast, weights_fast) = results
    assert math.isclose(loss_fast, loss_plain, rel_tol=1e-9) and math.isclose(norm_fast, norm_plain, rel_tol=1e-9), (
        f"train_step on a kernels=True model must give the loss and norm of the plain model: ({loss_fast}, "
        f"{norm_fast}) vs ({loss_plain}, {norm_plain})")
    for got, expected in zip(weights_fast, weights_plain):
        assert_close(got, expected, "after train_step, a kernels=True model must hold the weights the plain one holds",
                     scale=100)


# ---------------------------------------------------------------- the incremental BPE trainer

def _train_fast(impl, data, vocab_size, special_tokens=SPECIALS, pattern="gpt4", **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return impl.kernels.train_bpe(data, vocab_size, special_tokens, pattern, **kwargs)


@given(documents=small_corpora, extra=st.integers(0, 40), pattern=st.sampled_from(["gpt2", "gpt4"]),
       specials=st.sampled_from([[], ["<|>"], ["c", "<|>"]]))
@example(documents=["abc", "abc", "bd", "bd", "ab"], extra=3, pattern="gpt4", specials=[])  # ties: bytes, not ids
@example(documents=["abc"] * 4 + ["ab"] + ["de"] * 3, extra=3, pattern="gpt4", specials=[])  # (b, c) gone after ab
@example(documents=["aaaa aaa", "aaaaa"], extra=10, pattern="gpt4", specials=[])
@example(documents=["x<|>y<|>z<|>w<|>"], extra=1, pattern="gpt4", specials=["<|>"])
def test_bpe_kernel_learns_the_textbook_merges(impl, documents, extra, pattern, specials):
    if not "".join(documents):
        documents = ["ab"]
    vocab_size = 256 + len(specials) + extra
    fast = _train_fast(impl, documents, vocab_size, specials, pattern)
    vocab, merges = textbook_bpe(documents, vocab_size, specials, GPT4 if pattern == "gpt4" else GPT2)
    assert fast.merges == merges, (
        f"kernels.train_bpe({documents!r}, {vocab_size}, {specials}, {pattern!r}) must learn the textbook merges "
        f"{merges} (most frequent pair first, ties to the greatest bytes), got {fast.merges}")
    assert fast.vocab == vocab, "kernels.train_bpe's vocabulary must be the bytes, the special tokens, then the merges"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = impl.tokenizer.train_bpe(documents, vocab_size, specials, pattern)
    assert (fast.merges, fast.vocab) == (plain.merges, plain.vocab), (
        f"kernels.train_bpe must learn exactly what tokenizer.train_bpe learns from {documents!r}")


def test_bpe_kernel_merges_do_not_depend_on_workers_or_how_the_corpus_is_given(impl, tmp_path):
    first = corpus_documents()[0]
    documents = [*corpus_documents(), first.replace("\n", "\r\n")]  # a file's "\r\n" is text like any other
    expected = _train_fast(impl, documents, 400, num_workers=1)
    text = "<|endoftext|>".join(documents)
    path = tmp_path / "corpus.txt"
    path.write_bytes(text.encode("utf-8"))
    halves = [tmp_path / "first.txt", tmp_path / "second.txt"]
    halves[0].write_bytes("<|endoftext|>".join(documents[:3]).encode("utf-8"))
    halves[1].write_bytes("<|endoftext|>".join(documents[3:]).encode("utf-8"))
    for name, data, workers in [("a text joined by <|endoftext|>", text, 1), ("a file", path, 2),
                                ("a list of two files", halves, None), ("the same list, 2 workers", documents, 2)]:
        other = _train_fast(impl, data, 400, num_workers=workers)
        assert other.merges == expected.merges, (
            f"documents given as {name} (num_workers={workers}) must train the merges of the list of documents "
            "with 1 worker: documents are independent, special tokens separate them, a file is read as it is")


@functools.cache
def many_chunks_text() -> str:
    """About 1.7 million characters, the documents 'abab' 50 000 times then 'cdcd' 52 000 times, joined by
    <|endoftext|>. As a whole it favours cd over ab; its first million characters alone favour ab, and so does
    the larger count of each part taken alone. Special tokens are 13 of every 17 characters: a cut at a place
    chosen without looking most likely splits one."""
    return "abab<|endoftext|>" * 50_000 + "cdcd<|endoftext|>" * 52_000


def test_bpe_kernel_counts_a_corpus_of_many_chunks_like_one_text(impl, tmp_path):
    text = many_chunks_text()
    path = tmp_path / "corpus.txt"
    path.write_bytes(text.encode("utf-8"))
    vocab_size = 256 + 1 + 10  # more than the corpus has pairs for: training stops early, with a warning
    vocab, merges = textbook_bpe([text], vocab_size, ["<|endoftext|>"], GPT4)
    for name, data, workers in [("a text", text, 1), ("a text", text, 2), ("a file", path, 2)]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fast = impl.kernels.train_bpe(data, vocab_size, ["<|endoftext|>"], "gpt4", num_workers=workers)
        assert fast.merges == merges, (
            f"on {len(text):,} characters given as {name} with num_workers={workers}, kernels.train_bpe must learn "
            f"the textbook merges {merges}, got {fast.merges}: however the corpus is cut into chunks, the pre-token "
            "counts must be those of the whole corpus (every chunk counted, counts added, no special token or "
            "pre-token cut in two)")
        assert fast.vocab == vocab, "the vocabulary must be the bytes, the special token, then the merged tokens"
        assert caught, "kernels.train_bpe must warn when the corpus runs out of pairs before vocab_size"


def test_bpe_kernel_rejects_what_the_textbook_trainer_rejects(impl):
    train = impl.kernels.train_bpe
    size = 256 + len(SPECIALS) - 1
    assert_rejects(lambda: train(corpus_text(), size, SPECIALS), str(size),
                   what=f"kernels.train_bpe with vocab_size={size}, too small for 256 bytes and {len(SPECIALS)} "
                        "special tokens")
    for empty in ("", [], [""]):
        assert_rejects(lambda: train(empty, 300, SPECIALS), what=f"kernels.train_bpe on the empty corpus {empty!r}")
    assert_rejects(lambda: train(["fine text", "x\udcff y"], 300, SPECIALS), repr("\udcff"),
                   what="kernels.train_bpe on text with a lone surrogate")
    assert_rejects(lambda: train(corpus_text(), 400, ["<|x|>", ""]), "''",
                   what="kernels.train_bpe with an empty special token")


def test_bpe_kernel_rejects_bad_num_workers(impl):
    for bad in (0, -2, 1.5, "2"):
        assert_rejects(lambda: impl.kernels.train_bpe(corpus_text(), 300, SPECIALS, "gpt4", num_workers=bad),
                       "num_workers", str(bad), what=f"kernels.train_bpe with num_workers={bad!r}")
