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
from torch.utils._python_dispatch import TorchDispatchMode

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


def assert_rounded_once(got, exact, terms, what):
    """got, in half precision, is exact (float64) rounded once: within half a unit in got's last place, plus what the
    float32 steps before the rounding may add (2⁻¹⁶ of the size of the terms: float32 keeps 24 bits)."""
    __tracebackhide__ = True
    bits = 8 if got.dtype == torch.bfloat16 else 11  # significand bits, the leading one included
    got64 = got.detach().double()
    smallest = torch.finfo(got.dtype).smallest_normal * 2.0 ** (1 - bits)  # the spacing of subnormal numbers
    half_ulp = torch.exp2(torch.floor(torch.log2(got64.abs())) - bits).clamp(min=smallest / 2)
    error = (got64 - exact).abs()
    excess = error - half_ulp - 2.0**-16 * terms
    worst = int(excess.argmax())
    assert excess.max() <= 0, (
        f"{what}: {got.dtype} results must be the float64 values rounded once, within half a unit in the last place; "
        f"{got64.flatten()[worst].item()!r} is {error.flatten()[worst].item():.3g} from "
        f"{exact.flatten()[worst].item()!r} (a rounding of every step in {got.dtype} loses more)")


@given(st.integers(8, 32).map(lambda half: 2 * half), half_dtypes, seeds)
def test_half_precision_kernels_round_once(impl, n, dtype, seed):
    """SwiGLU and the RoPE rotation in half precision compute in float32 and round once, values and gradients."""
    generator = torch.Generator().manual_seed(seed)
    gate, up, grad = ((torch.randn(4, n, generator=generator, dtype=torch.float64) * 3).to(dtype) for _ in range(3))
    g, u, dh = gate.double(), up.double(), grad.double()
    sig = torch.sigmoid(g)
    leaf_gate, leaf_up = gate.clone().requires_grad_(), up.clone().requires_grad_()
    h = impl.kernels.SwiGLUFunction.apply(leaf_gate, leaf_up)
    d_gate, d_up = torch.autograd.grad(h, (leaf_gate, leaf_up), grad)
    assert_rounded_once(h, g * sig * u, (g * sig * u).abs(), f"SwiGLUFunction in {dtype}")
    assert_rounded_once(d_up, dh * g * sig, (dh * g * sig).abs(), f"the gradient of SwiGLUFunction for up in {dtype}")
    derivative, derivative_terms = sig + g * sig * (1 - sig), sig + (g * sig).abs() * (1 - sig)  # SiLU'(gate)
    assert_rounded_once(d_gate, dh * u * derivative, (dh * u).abs() * derivative_terms,
                        f"the gradient of SwiGLUFunction for gate in {dtype}")
    angles = torch.rand(4, n // 2, generator=generator, dtype=torch.float64) * 20 - 10
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    c, s_ = cos.double(), sin.double()
    x = gate.clone().requires_grad_()
    y = impl.kernels.RotateFunction.apply(x, cos, sin, False)
    (dx,) = torch.autograd.grad(y, (x,), grad)
    for name, got, vector, sign in (("RotateFunction", y, g, 1.0), ("the gradient of RotateFunction", dx, dh, -1.0)):
        v1, v2 = vector.chunk(2, -1)
        exact = torch.cat((v1 * c - sign * v2 * s_, sign * v1 * s_ + v2 * c), -1)
        terms = torch.cat(((v1 * c).abs() + (v2 * s_).abs(), (v1 * s_).abs() + (v2 * c).abs()), -1)
        assert_rounded_once(got, exact, terms, f"{name} in {dtype}")


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


def q_k_v_that_do_not_fit():
    """(what, q, k, v, what the error must name): shapes that do not fit, and each of q, k, v alone in float64."""
    def zeros(*shape, dtype=torch.float32):
        return torch.zeros(shape, dtype=dtype)

    f64 = torch.float64
    return [("q with leading dimension 2, k and v with 3", zeros(2, 3, 4), zeros(3, 5, 4), zeros(3, 5, 4),
             ["(2, 3, 4)", "(3, 5, 4)"]),
            ("5 keys with 6 values", zeros(3, 4), zeros(5, 4), zeros(6, 2), ["(3, 4)", "(5, 4)", "(6, 2)"]),
            ("q with d = 4, k with d = 6", zeros(3, 4), zeros(5, 6), zeros(5, 2), ["(3, 4)", "(5, 6)"]),
            ("a 1-D q", zeros(4), zeros(5, 4), zeros(5, 4), ["(4,)"]),
            ("float64 q, float32 k and v", zeros(3, 4, dtype=f64), zeros(3, 4), zeros(3, 4), ["float32", "float64"]),
            ("float64 k alone", zeros(3, 4), zeros(3, 4, dtype=f64), zeros(3, 4), ["float32", "float64"]),
            ("float64 v alone", zeros(3, 4), zeros(3, 4), zeros(3, 4, dtype=f64), ["float32", "float64"])]


def test_attention_kernel_rejects_mismatched_inputs(impl):
    attention = impl.kernels.attention
    for what, q, k, v, named in q_k_v_that_do_not_fit():
        assert_rejects(lambda q=q, k=k, v=v: attention(q, k, v), *named,
                       what=f"kernels.attention of {what} (q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)})")
    q = torch.zeros(3, 4)
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


MATRIX_PRODUCTS = {"bmm": 0, "mm": 0, "baddbmm": 1, "baddbmm_": 1, "addmm": 1, "addmm_": 1}  # -> first matrix's index


class MatmulWork(TorchDispatchMode):
    """Counts the multiply-adds of the matrix products run inside it: (…, n, k) @ (…, k, m) costs (…)·n·k·m, whether
    written as bmm, baddbmm, mm or addmm (in place or not), or as @ and einsum, which come down to those."""

    def __init__(self):
        super().__init__()
        self.multiply_adds = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        first = MATRIX_PRODUCTS.get(func.overloadpacket.__name__)
        if first is not None:
            a, b = args[first], args[first + 1]
            self.multiply_adds += a.numel() * b.shape[-1]
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("n_queries, n_keys, is_causal", [(32, 32, True), (40, 24, True), (32, 20, False)])
def test_tiled_attention_multiplies_only_the_tiles_it_needs(impl, n_queries, n_keys, is_causal):
    """Blocks of 8 × 8: a tile of scores is needed when one of its queries sees one of its keys. Causal, the tiles
    wholly above the diagonal, and the query blocks that see no key at all, are skipped. On the needed tiles the
    forward pass multiplies q kᵀ and P v; the backward pass q kᵀ again (P is recomputed, not saved), dv = Pᵀ dout,
    dP = dout vᵀ, dq = dS k and dk = dSᵀ q; a fifth more is allowed for anything else."""
    generator = torch.Generator().manual_seed(0)
    d = dv = 4
    q, k, v = (torch.randn(1, length, width, generator=generator, requires_grad=True)
               for length, width in ((n_queries, d), (n_keys, d), (n_keys, dv)))
    allowed = causal64(n_queries, n_keys) if is_causal else torch.ones(n_queries, n_keys, dtype=torch.bool)
    needed = sum(int(tile.any()) * tile.numel() for rows in allowed.split(8, 0) for tile in rows.split(8, 1))
    forward_bound, backward_bound = needed * (d + dv), needed * (3 * d + 2 * dv)  # needed: (query, key) pairs
    where = f"tiled_attention(Tq={n_queries}, Tk={n_keys}, is_causal={is_causal}, blocks 8×8)"
    with MatmulWork() as forward:
        out, lse = impl.kernels.tiled_attention(q, k, v, is_causal=is_causal, block_size_q=8, block_size_k=8)
    assert forward.multiply_adds <= 1.2 * forward_bound, (
        f"{where} did {forward.multiply_adds} multiply-adds in matrix products, more than the {forward_bound} of the "
        "tiles it needs (plus a fifth): each tile of scores is computed once, and causal attention skips the tiles "
        "above the diagonal")
    with MatmulWork() as backward:
        (out.sum() + torch.where(torch.isfinite(lse), lse, 0.0).sum()).backward()
    assert backward.multiply_adds <= 1.2 * backward_bound, (
        f"the backward pass of {where} did {backward.multiply_adds} multiply-adds in matrix products, more than the "
        f"{backward_bound} of the tiles it needs (plus a fifth): causal attention skips the tiles above the diagonal "
        "in the backward pass too")


def test_tiled_attention_rejects_bad_blocks_and_mismatched_inputs(impl):
    tiled = impl.kernels.tiled_attention
    q = torch.zeros(3, 4)
    assert_rejects(lambda: tiled(q, q, q, block_size_q=0), "block_size_q", what="tiled_attention(block_size_q=0)")
    assert_rejects(lambda: tiled(q, q, q, block_size_k=-2), "block_size_k", what="tiled_attention(block_size_k=-2)")
    for what, q, k, v, named in q_k_v_that_do_not_fit():
        assert_rejects(lambda q=q, k=k, v=v: tiled(q, k, v), *named,
                       what=f"tiled_attention of {what} (q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)})")


# ---------------------------------------------------------------- what every kernel keeps to


def test_kernels_shift_each_row_by_its_own_maximum(impl):
    """Rows whose logits (or scores) sit hundreds apart, in float32: e^(z − m) must take m from the row itself. A
    maximum shared by all rows underflows every row far below it to 0: a loss of inf, a query that sees nothing."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, generator=generator) + torch.tensor([[0.0], [300.0], [-300.0]])
    targets = torch.tensor([1, 2, 3])
    for entry in ("cross_entropy", "Function"):
        assert_close(cross_entropy_through(impl, entry)(logits, targets), nll64(logits, targets),
                     f"kernels.{entry} of logit rows offset by 0, +300 and −300 must equal the definition: each row "
                     "is shifted by its own maximum", dtype=torch.float32, scale=10)
    q = torch.randn(1, 3, 4, generator=generator) * torch.tensor([[1.0], [100.0], [-100.0]])  # scores ~1, ~100
    k, v = torch.randn(1, 6, 4, generator=generator), torch.randn(1, 6, 2, generator=generator)
    expected = weights64(q, k) @ v.double()
    assert_close(impl.kernels.attention(q, k, v), expected,
                 "kernels.attention of queries whose scores sit hundreds apart must equal the definition: each row "
                 "is shifted by its own maximum", scale=10)
    out, lse = impl.kernels.tiled_attention(q, k, v, block_size_q=3, block_size_k=4)
    assert_close(out, expected, "tiled_attention (one block of 3 queries, keys in blocks of 4) of queries whose "
                 "scores sit hundreds apart must equal the definition: each row keeps its own running maximum",
                 scale=10)
    assert_close(lse, lse64(q, k), "tiled_attention of queries whose scores sit hundreds apart must return each "
                 "row's own log-sum-exp", scale=10)


def test_kernels_run_on_the_device_of_their_inputs_without_reading_numbers_back(impl):
    """On the meta device (shapes, no numbers) every result must be a meta tensor: a kernel makes its buffers and
    masks on its inputs' device, never on the default one, and reads no number back into Python (on a GPU that
    would stall it)."""
    kernels = impl.kernels
    x = torch.zeros(2, 3, 8, device="meta")
    mask = torch.ones(3, 3, dtype=torch.bool, device="meta")
    tables = torch.zeros(3, 4, device="meta")
    runs = {
        "RMSNormFunction": lambda: [kernels.RMSNormFunction.apply(x, torch.ones(8, device="meta"), 1e-6)],
        "SwiGLUFunction": lambda: [kernels.SwiGLUFunction.apply(x, x)],
        "RotateFunction": lambda: [kernels.RotateFunction.apply(x, tables, tables, False)],
        "kernels.attention with a mask and is_causal": lambda: [kernels.attention(x, x, x, mask, is_causal=True)],
        "tiled_attention with is_causal, blocks 2×2": lambda: list(
            kernels.tiled_attention(x, x, x, is_causal=True, block_size_q=2, block_size_k=2)),
    }
    for name, run in runs.items():
        try:
            results = run()
        except NotImplementedError:  # a stub (NotImplementedError is a RuntimeError): the spec says where to start
            raise
        except RuntimeError as error:  # a tensor on another device met the inputs, or .item() met a meta tensor
            raise AssertionError(f"{name} must run on meta tensors: every tensor a kernel makes must be made on the "
                                 f"device of its inputs, and no number read back; it raised: {error}") from None
        for result in results:
            assert result.device.type == "meta", (
                f"{name} of meta tensors must return meta tensors, got one on {result.device}: every tensor a "
                "kernel makes must be made on the device of its inputs")


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
@example(documents=[" dada d"], extra=3, pattern="gpt4", specials=[])  # a stale entry goes back with its own pair
@example(documents=["bcbabc ba"], extra=5, pattern="gpt4", specials=[])  # a merged pair's leftover entries: dropped
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
    assert fast.pattern == plain.pattern, (
        f"the tokenizer kernels.train_bpe returns must split text by the pattern it was trained with ({pattern!r}), "
        "as tokenizer.train_bpe's does")


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
    for name, data, workers in [("a text", text, 1), ("a text", text, None), ("a file", path, 2)]:
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


def test_bpe_kernel_counts_a_long_document_with_no_special_token_to_cut_at(impl):
    """A document of 1.2 million characters, more than a chunk, that has no special token to cut at past its start
    (or no special tokens at all): it is counted whole, read in blocks and joined again without a seam."""
    text = "abcde " * 200_000  # the blocks of a million characters end inside a word
    for name, document, specials in [("with <|endoftext|> only at its start", "<|endoftext|>" + text,
                                      ["<|endoftext|>"]),
                                     ("without special tokens", text, [])]:
        vocab_size = 256 + len(specials) + 10  # more than the document has pairs for
        fast = _train_fast(impl, [document], vocab_size, specials, "gpt4", num_workers=1)
        _, merges = textbook_bpe([document], vocab_size, specials, GPT4)
        assert fast.merges == merges, (
            f"on a document of {len(document):,} characters {name}, kernels.train_bpe must learn the textbook merges "
            f"{merges}, got {fast.merges}: a long document is counted as one text")


def test_bpe_kernel_rejects_what_the_textbook_trainer_rejects(impl, tmp_path):
    train = impl.kernels.train_bpe
    size = 256 + len(SPECIALS) - 1
    assert_rejects(lambda: train(corpus_text(), size, SPECIALS), str(size),
                   what=f"kernels.train_bpe with vocab_size={size}, too small for 256 bytes and {len(SPECIALS)} "
                        "special tokens")
    for empty in ("", [], [""]):
        assert_rejects(lambda: train(empty, 300, SPECIALS), what=f"kernels.train_bpe on the empty corpus {empty!r}")
    assert_rejects(lambda: train(["fine text", "x\udcff y"], 300, SPECIALS), repr("\udcff"), "corpus",
                   what="kernels.train_bpe on text with a lone surrogate (the error names the corpus)")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café au lait".encode("latin-1"))
    assert_rejects(lambda: train([latin1], 300, SPECIALS), "latin1.txt",
                   what="kernels.train_bpe on a file that is not UTF-8 (the error names the file)")
    assert_rejects(lambda: train(corpus_text(), 400, ["<|x|>", ""]), "''",
                   what="kernels.train_bpe with an empty special token")


def test_bpe_kernel_warns_only_when_the_corpus_runs_out_of_pairs(impl):
    documents = ["abcabc abd"]  # pairs enough for 5 merges, and no more
    for vocab_size, should_warn in ((256 + 4, False), (256 + 5, False), (256 + 9, True)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tokenizer = impl.kernels.train_bpe(documents, vocab_size, [], "gpt4")
        if not should_warn:
            assert not caught, (f"kernels.train_bpe({documents}, vocab_size={vocab_size}) reaches its vocabulary "
                                f"({len(tokenizer.vocab)} tokens) and must not warn; it warned: {caught[0].message}")
            continue
        assert len(caught) == 1 and str(vocab_size) in str(caught[0].message), (
            f"kernels.train_bpe({documents}, vocab_size={vocab_size}) runs out of pairs and must warn once, naming "
            f"vocab_size={vocab_size}; got {[str(w.message) for w in caught]}")


def test_bpe_kernel_rejects_bad_num_workers(impl):
    for bad in (0, -2, 1.5, "2"):
        assert_rejects(lambda: impl.kernels.train_bpe(corpus_text(), 300, SPECIALS, "gpt4", num_workers=bad),
                       "num_workers", str(bad), what=f"kernels.train_bpe with num_workers={bad!r}")


# ---------------------------------------------------------------- flash attention in Triton (GPU)
#
# kernels.flash_attention runs Triton kernels: compiled on a CUDA GPU, or on CPU tensors in Triton's interpreter
# (TRITON_INTERPRET=1, switched on below before the implementation builds its kernels). The interpreter runs each
# program of the grid in Python: the CPU properties take small shapes (blocks of 16 there, so up to 2 blocks per
# side) and few examples. Without triton installed they are skipped. bfloat16 is checked on the GPU only: the
# interpreter multiplies bfloat16 matrices as raw 16-bit integers. The GPU versions below run only with CUDA.


def interpret_triton_without_a_gpu() -> None:
    """TRITON_INTERPRET=1 when there is no GPU, set when this file is imported: Triton reads it when it decorates a
    kernel, its own library functions (tl.max, tl.sum) included, and those are decorated when triton is imported."""
    import os

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


interpret_triton_without_a_gpu()


def flash_device() -> str:
    """'cuda' when there is a GPU, else 'cpu' (Triton's interpreter). Skips when triton is missing, or when it was
    imported in this process before TRITON_INTERPRET=1 was set (torch._dynamo imports it): then its own library
    functions were built for a GPU, and the interpreter cannot run them."""
    pytest.importorskip("triton")  # the reason names the package, and `llmkata grade` the extra that installs it
    if torch.cuda.is_available():
        return "cuda"
    import triton.language as tl

    if type(tl.max).__name__ != "InterpretedFunction":
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set: run the flash-attention properties in a "
                    "process that sets it first (pytest spec/test_kernels.py -k flash)")
    return "cpu"


@st.composite
def flash_cases(draw, max_len=24, dtype=torch.float32):
    """(q (B, H, Tq, d), k (B, Hkv, Tk, d), v (B, Hkv, Tk, dv), is_causal, scale): H a multiple of Hkv, Tq ≠ Tk
    allowed, lengths that are not multiples of any block, d and dv any size (padded to the kernel's tile)."""
    batch, n_kv_heads, group = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    n_queries, n_keys = draw(st.integers(1, max_len)), draw(st.integers(1, max_len))
    d, dv = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    generator = torch.Generator().manual_seed(draw(seeds))
    q = torch.randn(batch, n_kv_heads * group, n_queries, d, generator=generator, dtype=torch.float64) * 2
    k = torch.randn(batch, n_kv_heads, n_keys, d, generator=generator, dtype=torch.float64) * 2
    v = torch.randn(batch, n_kv_heads, n_keys, dv, generator=generator, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype), draw(st.booleans()), draw(scales)


def flash_definition(q, k, v, is_causal, scale):
    """(out, lse) in float64: softmax(q kᵀ · scale) v with kv head h // (H / Hkv) for query head h; a query that sees
    no key gets out 0 and lse −inf. Differentiable (lse's −inf rows carry no gradient)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q.double() @ k.transpose(-2, -1) * scale
    if is_causal:
        scores = scores.masked_fill(~causal64(q.shape[-2], k.shape[-2]).to(scores.device), float("-inf"))
    lse = torch.logsumexp(scores, -1)
    sees = torch.isfinite(lse)[..., None]
    weights = torch.where(sees, torch.softmax(torch.where(sees, scores, 0.0), -1), 0.0)
    return weights @ v, lse


def flash_where(q, k, v, is_causal, scale) -> str:
    return (f"flash_attention(q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, {q.dtype}, "
            f"is_causal={is_causal}, scale={scale})")


def check_flash_values(impl, q, k, v, is_causal, scale, tolerance_scale=10.0, entry="flash_attention"):
    __tracebackhide__ = True
    out, lse = flash_through(impl, entry)(q, k, v, is_causal=is_causal, scale=scale)
    expected, expected_lse = flash_definition(q, k, v, is_causal, scale)
    where = flash_where(q, k, v, is_causal, scale)
    assert out.dtype == q.dtype and lse.dtype == torch.float32, (
        f"{where} must return out in {q.dtype} and lse in float32, got {out.dtype} and {lse.dtype}")
    assert_close(out, expected, f"{where} must equal softmax(q kᵀ · scale) v, kv head h // (H / Hkv) serving query "
                 "head h (0 for a query that sees no key)", dtype=q.dtype, scale=tolerance_scale)
    assert torch.equal(torch.isinf(lse), torch.isinf(expected_lse)), (
        f"{where}: the log-sum-exp must be −inf exactly for the queries that see no key")
    finite = torch.isfinite(expected_lse)
    assert_close(lse[finite], expected_lse[finite], f"{where} must return lse_i = log Σ_j exp(scale · q_i·k_j) "
                 "over the keys query i sees", dtype=torch.float32 if q.dtype == torch.float32 else q.dtype,
                 scale=tolerance_scale)


def check_flash_gradients(impl, q, k, v, is_causal, scale, seed, tolerance_scale=100.0):
    """The gradients of (out · g_out).sum() + (lse · g_lse).sum() with respect to q, k and v, against float64.

    g_out is rounded to q's dtype first, as it reaches the kernel. In half precision a gradient is a sum of many
    rounded products that cancel: it is compared relative to its largest element (each tensor as a whole).
    """
    __tracebackhide__ = True
    generator = torch.Generator().manual_seed(seed)
    expected_out, expected_lse = flash_definition(q, k, v, is_causal, scale)
    grad_out = torch.randn(expected_out.shape, generator=generator, dtype=torch.float64).to(q.dtype).double()
    grad_out = grad_out.to(q.device)
    grad_lse = torch.randn(expected_lse.shape, generator=generator, dtype=torch.float64).float().double()
    grad_lse = grad_lse.to(q.device)
    grad_lse = torch.where(torch.isfinite(expected_lse), grad_lse, 0.0)

    def loss(out, lse):  # both outputs carry gradient; rows that see no key are left out of lse's part
        return (out.double() * grad_out).sum() + (torch.where(torch.isfinite(lse), lse.double(), 0.0) * grad_lse).sum()

    ours = [t.clone().requires_grad_() for t in (q, k, v)]
    got = torch.autograd.grad(loss(*impl.kernels.flash_attention(*ours, is_causal=is_causal, scale=scale)), ours)
    theirs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    expected = torch.autograd.grad(loss(*flash_definition(*theirs, is_causal, scale)), theirs)
    where = flash_where(q, k, v, is_causal, scale)
    for name, gradient, want, given_ in zip("qkv", got, expected, (q, k, v)):
        assert gradient.dtype == given_.dtype, f"{where}: the gradient of {name} must be {given_.dtype}"
        size = 1.0 if q.dtype == torch.float32 else max(want.abs().max().item(), 1e-3)
        assert_close(gradient.double() / size, want / size, f"{where}: the gradient with respect to {name} (out and "
                     "lse both used) must equal that of the definition" + (" (relative to its largest element)"
                                                                           if size != 1.0 else ""),
                     dtype=q.dtype, scale=tolerance_scale)


# GQA (4 query heads on 2 kv heads), causal with more keys than queries, several blocks each way
_FLASH_GQA = (*(torch.randn(shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64).float()
                for i, shape in enumerate(((1, 4, 18, 8), (1, 2, 21, 8), (1, 2, 21, 8)))), True, None)
# causal with more queries than keys: the first queries see no key at all
_FLASH_MORE_QUERIES = (*(torch.randn(shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64).float()
                         for i, shape in enumerate(((2, 2, 23, 5), (2, 1, 17, 5), (2, 1, 17, 3)))), True, 0.25)


def flash_through(impl, entry: str):
    """kernels.flash_attention, or FlashAttentionFunction.apply with the scale given."""
    if entry == "flash_attention":
        return impl.kernels.flash_attention
    return lambda q, k, v, is_causal=False, scale=None: impl.kernels.FlashAttentionFunction.apply(
        q, k, v, is_causal, 1 / math.sqrt(q.shape[-1]) if scale is None else scale)


@settings(max_examples=15)  # Triton's interpreter runs every program in Python: a fraction of a second a call
@given(flash_cases(), st.sampled_from(["flash_attention", "Function"]))
@example(case=_FLASH_GQA, entry="flash_attention")
@example(case=_FLASH_MORE_QUERIES, entry="flash_attention")
def test_flash_attention_equals_the_definition_in_values_and_log_sum_exp(impl, case, entry):
    device = flash_device()
    q, k, v, is_causal, scale = case
    check_flash_values(impl, q.to(device), k.to(device), v.to(device), is_causal, scale, entry=entry)


@settings(max_examples=12)  # a forward and three backward kernels in the interpreter per example
@given(flash_cases(), seeds)
@example(case=_FLASH_GQA, seed=0)
@example(case=_FLASH_MORE_QUERIES, seed=0)
def test_flash_attention_gradients_equal_the_definition(impl, case, seed):
    device = flash_device()
    q, k, v, is_causal, scale = case
    check_flash_gradients(impl, q.to(device), k.to(device), v.to(device), is_causal, scale, seed)


@settings(max_examples=8)  # interpreter: see above
@given(flash_cases(dtype=torch.float16), seeds)
def test_flash_attention_in_half_precision(impl, case, seed):
    """float16 inputs (bfloat16 too on a GPU): out in their dtype, values and gradients within its precision."""
    device = flash_device()
    q, k, v, is_causal, scale = case
    dtypes = [torch.float16, torch.bfloat16] if device == "cuda" else [torch.float16]
    for dtype in dtypes:
        inputs = [t.to(device=device, dtype=dtype) for t in (q, k, v)]
        check_flash_values(impl, *inputs, is_causal, scale)
        check_flash_gradients(impl, *inputs, is_causal, scale, seed, tolerance_scale=10.0)


def test_flash_attention_rejects_what_it_cannot_compute(impl):
    flash = impl.kernels.flash_attention
    q, kv = torch.zeros(1, 3, 4, 8), torch.zeros(1, 2, 4, 8)
    assert_rejects(lambda: flash(q.double(), q.double(), q.double()), "float64",
                   what="flash_attention of float64 tensors (it computes in float16, bfloat16 or float32)")
    assert_rejects(lambda: flash(q, kv, kv), "3", "2", what="flash_attention with 3 query heads on 2 kv heads")
    assert_rejects(lambda: flash(q, q.half(), q.half()), "float32", "float16",
                   what="flash_attention of float32 q and float16 k, v")
    assert_rejects(lambda: flash(q[0], q[0], q[0]), "(3, 4, 8)", what="flash_attention of (H, T, d) tensors")


# On a GPU: the sizes it is written for. Lengths that are not multiples of any block, Tq ≠ Tk, GQA; each head
# dimension the model uses, in each dtype. Compared with the float64 definition on the GPU.
FLASH_GPU_CASES = [  # (head_dim, dtype, is_causal, (B, H, Hkv, Tq, Tk))
    (64, torch.bfloat16, True, (2, 8, 2, 1000, 1000)),
    (64, torch.float16, False, (2, 8, 8, 777, 1029)),
    (128, torch.bfloat16, False, (1, 8, 4, 1100, 1100)),
    (128, torch.float16, True, (1, 4, 1, 600, 1500)),
    (32, torch.float32, True, (2, 4, 2, 513, 700)),
    (256, torch.bfloat16, True, (1, 4, 2, 640, 640)),
]
FLASH_GPU_TOLERANCE = {torch.float32: 10.0, torch.float16: 10.0, torch.bfloat16: 4.0}  # × the dtype's tolerance


def flash_gpu_inputs(head_dim, dtype, shape, seed):
    batch, n_heads, n_kv_heads, n_queries, n_keys = shape
    generator = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(*lead, head_dim, generator=generator, device="cuda", dtype=torch.float32).to(dtype)
            for lead in ((batch, n_heads, n_queries), (batch, n_kv_heads, n_keys), (batch, n_kv_heads, n_keys))]


@pytest.mark.parametrize("head_dim, dtype, is_causal, shape", FLASH_GPU_CASES)
def test_flash_attention_on_the_gpu_equals_the_definition(impl, head_dim, dtype, is_causal, shape):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    flash_device()
    q, k, v = flash_gpu_inputs(head_dim, dtype, shape, 0)
    check_flash_values(impl, q, k, v, is_causal, None, tolerance_scale=FLASH_GPU_TOLERANCE[dtype])


@pytest.mark.parametrize("head_dim, dtype, is_causal, shape", FLASH_GPU_CASES)
def test_flash_attention_on_the_gpu_gradients_equal_the_definition(impl, head_dim, dtype, is_causal, shape):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    flash_device()
    q, k, v = flash_gpu_inputs(head_dim, dtype, shape, 1)
    check_flash_gradients(impl, q, k, v, is_causal, None, 2, tolerance_scale=2 * FLASH_GPU_TOLERANCE[dtype])


def test_flash_attention_on_the_gpu_in_the_model_equals_the_model_without_kernels(impl):
    """A kernels=True model on a GPU may attend through flash_attention (the reference does): in float32 it must be
    as close to the float64 model as the plain float32 model is, in logits, gradients and cached decoding (43
    queries after 257 cached positions), with GQA and lengths off the blocks."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    flash_device()
    kwargs = dict(vocab_size=97, d_model=256, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=512)
    exact = build(impl, kwargs, 0).cuda()
    plain, fast = (impl.model.Transformer(impl.model.ModelConfig(**kwargs, kernels=kernels)).cuda()
                   for kernels in (False, True))
    for model in (plain, fast):
        model.load_state_dict(exact.state_dict())
    ids = token_ids(kwargs, 0, 2, 300).cuda()
    grad = torch.randn(2, 300, 97, generator=torch.Generator().manual_seed(0), dtype=torch.float64).cuda()

    def run(model):
        logits = model(ids)
        grads = grads_of(logits, list(model.parameters()), grad.to(logits.dtype))
        cache = model.make_cache(2)
        with torch.no_grad():
            decoded = torch.cat([model(ids[:, :257], cache=cache), model(ids[:, 257:], cache=cache)], 1)
        return [("logits", logits), *zip((name for name, _ in model.named_parameters()), grads),
                ("cached decoding", decoded)]

    for (name, expected), (_, baseline), (_, got) in zip(run(exact), run(plain), run(fast)):
        error = (got.detach().double() - expected.detach()).abs().max().item()
        allowed = 4 * (baseline.detach().double() - expected.detach()).abs().max().item()
        assert error <= allowed + 1e-6 * expected.abs().max().item(), (
            f"on a GPU, ModelConfig(kernels=True) in float32: {name} differs from the float64 model's by {error:.3g}, "
            f"more than 4× the plain float32 model's difference ({allowed / 4:.3g})")
