"""Chapter 6 — attention: masked scaled dot-product attention, multi-head and grouped-query attention, the KV cache.

The operation is checked against softmax(QKᵀ/√d + M)V computed in float64; then the properties a language model
needs: causality (an output never depends on a later input), independent batch elements, GQA as MHA with shared
heads, cached decoding equal to the full forward; in bfloat16, to bfloat16's precision of the scores and values.
(Tiled attention and the hand-written backward pass are chapter 14's.)
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from .checks import assert_rejects, grads_of
from .strategies import float_dtypes, seeds, shapes, tensors
from .tolerances import assert_close, assert_close_to_the_terms

# ---------------------------------------------------------------- definitions in float64


def causal64(n_queries: int, n_keys: int) -> torch.Tensor:
    """Query i sits at position n_keys − n_queries + i and sees keys j ≤ that position."""
    return torch.ones(n_queries, n_keys, dtype=torch.bool).tril(diagonal=n_keys - n_queries)


def weights64(q, k, allowed=None, scale=None) -> torch.Tensor:
    """softmax(q kᵀ · scale) over allowed keys, 0 on rows that allow none."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q.double() @ k.double().transpose(-2, -1)) * scale
    if allowed is None:
        return torch.softmax(scores, -1)
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, -1)
    return torch.where(allowed.any(-1, keepdim=True), weights, torch.zeros_like(weights))


def lse64(q, k, allowed=None, scale=None) -> torch.Tensor:
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q.double() @ k.double().transpose(-2, -1)) * scale
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.logsumexp(scores, -1)


def rope64(x, positions, theta: float, interleaved: bool) -> torch.Tensor:
    """RoPE by its definition (chapter 5): pair i at position m turned by m·θ^(−2i/d)."""
    x, d = x.double(), x.shape[-1]
    angles = positions.double()[..., None] * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    x1, x2 = (x[..., 0::2], x[..., 1::2]) if interleaved else (x[..., : d // 2], x[..., d // 2:])
    r1, r2 = x1 * angles.cos() - x2 * angles.sin(), x1 * angles.sin() + x2 * angles.cos()
    return torch.stack((r1, r2), -1).flatten(-2) if interleaved else torch.cat((r1, r2), -1)


def score_spread(q, k, scale=None) -> torch.Tensor:
    """1 + the largest score a row could reach, |q|·|k|ᵀ·scale: (..., Tq, 1), in float64.

    A score s rounded to bfloat16 is off by up to about 2⁻⁹·|s|, and exp turns that absolute error into a relative
    error of the weight: the weights of a row whose scores reach R are known to (1 + R) times bfloat16's precision.
    """
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    return 1 + (q.double().abs() @ k.double().abs().transpose(-2, -1) * scale).amax(-1, keepdim=True)


def self_attention64(weights: dict, x, n_heads: int, n_kv_heads: int, theta: float, interleaved: bool,
                     use_rope: bool = True, positions=None, terms: bool = False):
    """Causal multi-head self-attention from the Hugging Face-named weights, head by head, in float64.

    Query head h uses key/value head h // (n_heads / n_kv_heads); positions are 0 .. T − 1 unless given, (T,) or
    (B, T). terms: also return the size of the terms each output is computed from (see `score_spread`).
    """
    x = x.double()
    _, length, d_model = x.shape
    head_dim, group = d_model // n_heads, n_heads // n_kv_heads
    q, k, v = (x @ weights[f"{name}.weight"].double().T for name in ("q_proj", "k_proj", "v_proj"))
    positions = torch.arange(length) if positions is None else positions
    heads, sizes = [], []
    for h in range(n_heads):
        kv = slice((h // group) * head_dim, (h // group + 1) * head_dim)
        qh, kh = q[..., h * head_dim:(h + 1) * head_dim], k[..., kv]
        if use_rope:
            qh, kh = rope64(qh, positions, theta, interleaved), rope64(kh, positions, theta, interleaved)
        attention = weights64(qh, kh, causal64(length, length))
        heads.append(attention @ v[..., kv])
        sizes.append((attention @ v[..., kv].abs()) * score_spread(qh, kh))
    o_proj = weights["o_proj.weight"].double()
    out = torch.cat(heads, -1) @ o_proj.T
    return (out, torch.cat(sizes, -1) @ o_proj.abs().T) if terms else out


# ---------------------------------------------------------------- inputs


@st.composite
def attention_inputs(draw, max_len: int = 6, dtype=None, any_layout: bool = False):
    """q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv), a boolean mask or None, is_causal.

    any_layout: a leading dimension may be 1 for k and v where q has it (one key/value head shared by every query
    head), or for q where k and v have it; a mask may be a padding mask (..., 1, Tk) that broadcasts over the
    queries; and q, k, v may be copies laid out in memory in another order (the same values, other strides).
    """
    dtype = dtype or draw(float_dtypes)
    lead = draw(shapes(min_dims=0, max_dims=2, max_side=3))
    q_lead = kv_lead = lead
    if any_layout:
        shared = [draw(st.sampled_from(["none", "q", "kv"])) for _ in lead]  # who has 1 in each leading dimension
        q_lead = tuple(1 if who == "q" else side for who, side in zip(shared, lead))
        kv_lead = tuple(1 if who == "kv" else side for who, side in zip(shared, lead))
    n_queries, n_keys = draw(st.integers(1, max_len)), draw(st.integers(1, max_len))
    d, dv = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    q = draw(tensors(shape=(*q_lead, n_queries, d), dtype=dtype, scale=2.0))
    k = draw(tensors(shape=(*kv_lead, n_keys, d), dtype=dtype, scale=2.0))
    v = draw(tensors(shape=(*kv_lead, n_keys, dv), dtype=dtype))
    if any_layout:
        q, k, v = (t.transpose(0, -1).contiguous().transpose(0, -1) if draw(st.booleans()) else t for t in (q, k, v))
    mask = None
    if draw(st.booleans()):
        generator = torch.Generator().manual_seed(draw(seeds))
        mask_shapes = [(n_queries, n_keys), (*lead, n_queries, n_keys)]
        if any_layout:
            mask_shapes += [(1, n_keys), (*lead, 1, n_keys)]
        mask = torch.rand(draw(st.sampled_from(mask_shapes)), generator=generator) < 0.7
    return q, k, v, mask, draw(st.booleans())


def allowed_of(mask, is_causal, n_queries, n_keys):
    allowed = mask
    if is_causal:
        causal = causal64(n_queries, n_keys)
        allowed = causal if allowed is None else allowed & causal
    return allowed


@st.composite
def attention_modules(draw):
    """(impl -> module in float64, x (B, T, d_model), n_heads, n_kv_heads, theta, interleaved)."""
    n_kv_heads, group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n_heads = n_kv_heads * group
    head_dim = 2 * draw(st.integers(1, 3))
    d_model = n_heads * head_dim
    theta, interleaved, seed = draw(st.sampled_from([10000.0, 100.0])), draw(st.booleans()), draw(seeds)
    batch, length = draw(st.integers(1, 3)), draw(st.integers(1, 7))
    x = draw(tensors(shape=(batch, length, d_model), dtype=torch.float64))

    def build(impl, n_kv=None, use_rope=True, max_seq_len=32):
        module = impl.attention.CausalSelfAttention(d_model, n_heads, n_kv_heads if n_kv is None else n_kv,
                                                    max_seq_len=max_seq_len, rope_theta=theta,
                                                    rope_interleaved=interleaved, use_rope=use_rope)
        module = module.double()
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64) * 0.5)
        return module

    return build, x, n_heads, n_kv_heads, theta, interleaved


# ---------------------------------------------------------------- the mask and the operation


@given(st.integers(0, 6), st.integers(0, 9), st.integers(0, 6))
def test_causal_mask_lets_query_i_see_keys_up_to_i_plus_offset(impl, n_queries, n_keys, offset):
    mask = impl.attention.causal_mask(n_queries, n_keys, offset=offset)
    expected = torch.zeros(n_queries, n_keys, dtype=torch.bool)
    for i in range(n_queries):
        expected[i, : max(0, min(n_keys, i + offset + 1))] = True
    assert mask.dtype == torch.bool, f"causal_mask must be boolean (True = may attend), got {mask.dtype}"
    assert mask.shape == expected.shape and torch.equal(mask, expected), (
        f"causal_mask({n_queries}, {n_keys}, offset={offset}) must be True exactly where key j ≤ query i + {offset}:\n"
        f"expected {expected.int().tolist()}, got {mask.int().tolist()}")
    default = impl.attention.causal_mask(n_queries, offset=offset)
    assert tuple(default.shape) == (n_queries, n_queries + offset), (
        f"causal_mask({n_queries}, offset={offset}) must have offset + n_queries = {n_queries + offset} keys by "
        f"default (the queries are the last positions), got shape {tuple(default.shape)}")


def shapes_of(q, k, v, mask) -> str:
    mask_shape = None if mask is None else tuple(mask.shape)
    return f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, mask {mask_shape}"


scales = st.none() | st.floats(0.1, 2.0)


@given(attention_inputs(any_layout=True), scales)
def test_attention_equals_softmax_of_scaled_scores_times_v_in_float64(impl, case, scale):
    q, k, v, mask, is_causal = case
    out = impl.attention.scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, scale=scale)
    allowed = allowed_of(mask, is_causal, q.shape[-2], k.shape[-2])
    assert out.dtype == q.dtype, f"attention must keep the dtype of its inputs ({q.dtype}), got {out.dtype}"
    assert_close(out, weights64(q, k, allowed, scale=scale) @ v.double(),
                 f"attention(mask={'given' if mask is not None else None}, is_causal={is_causal}, scale={scale}) must "
                 "equal softmax(q kᵀ · scale, −inf where masked) v, scale 1/√d by default; with is_causal the queries "
                 "are the last Tq of the Tk positions; leading dimensions and the mask broadcast "
                 f"({shapes_of(q, k, v, mask)})",
                 dtype=q.dtype, scale=10)


@given(attention_inputs(any_layout=True), scales, seeds)
def test_attention_gradients_equal_those_of_the_definition_in_float64(impl, case, scale, seed):
    q, k, v, mask, is_causal = (t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                                for t in case)
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = impl.attention.scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, scale=scale)
    grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected = weights64(q, k, allowed_of(mask, is_causal, q.shape[-2], k.shape[-2]), scale=scale) @ v
    grads, expected_grads = grads_of(out, (q, k, v), grad_output), grads_of(expected, (q, k, v), grad_output)
    for name, got, want in zip("qkv", grads, expected_grads):
        assert_close(got, want, f"the gradient of attention (mask={'given' if mask is not None else None}, "
                     f"is_causal={is_causal}, scale={scale}) with respect to {name} must be that of "
                     "softmax(q kᵀ · scale) v (summed over the dimensions where it broadcasts): with "
                     "P the weights, dv = Pᵀ dout and ds = P ⊙ (dout vᵀ − rowsum(dout ⊙ out))", scale=10)


@given(attention_inputs(any_layout=True), scales)
def test_attention_weights_are_rows_summing_to_one(impl, case, scale):
    q, k, _, mask, is_causal = case
    weights = impl.attention.attention_weights(q, k, mask=mask, is_causal=is_causal, scale=scale)
    allowed = allowed_of(mask, is_causal, q.shape[-2], k.shape[-2])
    expected = weights64(q, k, allowed, scale=scale)
    assert (weights >= 0).all(), "attention weights must never be negative"
    rows = expected.sum(-1)  # 1 where some key is allowed, 0 on a fully masked row
    assert_close(weights.sum(-1), rows.to(weights.dtype).expand_as(weights.sum(-1)),
                 "every row of attention weights must sum to 1 over the keys (0 where no key is allowed)",
                 scale=10)
    assert_close(weights, expected.to(weights.dtype),
                 f"attention_weights(scale={scale}) must be softmax(q kᵀ · scale) over the allowed keys (scale "
                 "1/√d by default), 0 at masked keys", scale=10)


@given(tensors(shape=(2, 4, 3)), tensors(shape=(2, 5, 3)), tensors(shape=(2, 5, 2)))
def test_fully_masked_rows_give_zero_not_nan(impl, q, k, v):
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1] = False  # query 1 may see nothing
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = impl.attention.scaled_dot_product_attention(q, k, v, mask=mask)
    assert not out.isnan().any(), "a fully masked row must not give NaN (exp(−inf − (−inf)) is NaN): its output is 0"
    assert (out[:, 1] == 0).all(), f"a query that may see no key must get the output 0, got {out[:, 1].tolist()}"
    out.sum().backward()
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        assert not tensor.grad.isnan().any(), f"the gradient of {name} must not be NaN when a row is fully masked"
    weights = impl.attention.attention_weights(q.detach(), k.detach(), mask=mask)
    assert (weights[:, 1] == 0).all(), "a fully masked row of attention weights must be all 0"
    short = impl.attention.scaled_dot_product_attention(q.detach(), k[:, :2].detach(), v[:, :2].detach(),
                                                        is_causal=True)
    assert not short.isnan().any() and (short[:, :2] == 0).all(), (
        "with is_causal and 4 queries over 2 keys, queries 0 and 1 sit before every key and must get 0, not NaN")


@pytest.mark.parametrize("entry", ["attention_weights", "scaled_dot_product_attention"])
@given(attention_inputs(dtype=torch.bfloat16, any_layout=True), scales)
def test_attention_in_bfloat16_gives_bfloat16_close_to_the_float64_definition(impl, entry, case, scale):
    q, k, v, mask, is_causal = case
    weights = weights64(q, k, allowed_of(mask, is_causal, q.shape[-2], k.shape[-2]), scale=scale)
    spread = score_spread(q, k, scale)
    if entry == "attention_weights":
        out = impl.attention.attention_weights(q, k, mask=mask, is_causal=is_causal, scale=scale)
        expected, terms = weights, weights * spread
    else:
        out = impl.attention.scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, scale=scale)
        expected, terms = weights @ v.double(), (weights @ v.double().abs()) * spread
    assert out.dtype == torch.bfloat16, f"{entry} of bfloat16 q, k, v must return bfloat16, got {out.dtype}"
    assert_close_to_the_terms(out, expected, terms,
                              f"{entry} in bfloat16 (mask={'given' if mask is not None else None}, is_causal="
                              f"{is_causal}, scale={scale}) must equal the float64 definition to bfloat16 precision "
                              f"of its scores and values ({shapes_of(q, k, v, mask)})")


@given(attention_inputs(), st.data())
def test_output_at_t_ignores_inputs_after_t(impl, case, data):
    q, k, v, _, _ = case
    length = min(q.shape[-2], k.shape[-2])
    q, k, v = q[..., :length, :], k[..., :length, :], v[..., :length, :]
    t = data.draw(st.integers(0, length - 1), label="t")
    later = torch.arange(length) > t
    q2, k2, v2 = (torch.where(later[:, None], x + 3.0, x) for x in (q, k, v))  # change everything after t
    before = impl.attention.scaled_dot_product_attention(q, k, v, is_causal=True)
    after = impl.attention.scaled_dot_product_attention(q2, k2, v2, is_causal=True)
    assert_close(after[..., : t + 1, :], before[..., : t + 1, :],
                 f"causal attention: outputs at positions 0..{t} must not change when inputs after {t} change")


def test_masks_are_built_on_the_device_of_the_inputs(impl):
    # `meta` tensors have a device and a shape but no values: on any machine they show where a tensor was made
    mask = impl.attention.causal_mask(3, 5, offset=2, device="meta")
    assert mask.device.type == "meta" and tuple(mask.shape) == (3, 5), (
        f"causal_mask(3, 5, offset=2, device='meta') must be a (3, 5) mask on meta, got {tuple(mask.shape)} on "
        f"{mask.device}")
    q, k, v = (torch.zeros(2, length, d, device="meta") for length, d in ((3, 4), (5, 4), (5, 6)))
    try:
        weights = impl.attention.attention_weights(q, k, is_causal=True)
        out = impl.attention.scaled_dot_product_attention(q, k, v, is_causal=True)
    except NotImplementedError:
        raise
    except RuntimeError as error:
        raise AssertionError("causal attention of q, k, v on a device (here meta) must build its causal mask on that "
                             f"device, not on the default one; it failed with: {error}") from None
    assert weights.device.type == "meta" and tuple(weights.shape) == (2, 3, 5), (
        f"causal attention_weights of meta q (2, 3, 4) and k (2, 5, 4) must be (2, 3, 5) on meta, got "
        f"{tuple(weights.shape)} on {weights.device}")
    assert out.device.type == "meta" and tuple(out.shape) == (2, 3, 6), (
        f"causal attention of meta q, k, v must give (2, 3, 6) on meta, got {tuple(out.shape)} on {out.device}")


# ---------------------------------------------------------------- heads


@given(tensors(min_dims=4, max_dims=4, max_side=3), st.integers(1, 3))
def test_repeat_kv_gives_query_head_h_the_kv_head_h_over_n_rep(impl, x, n_rep):
    out = impl.attention.repeat_kv(x, n_rep)
    batch, n_kv_heads, length, head_dim = x.shape
    assert tuple(out.shape) == (batch, n_kv_heads * n_rep, length, head_dim), (
        f"repeat_kv of {n_kv_heads} heads with n_rep = {n_rep} must give {n_kv_heads * n_rep} heads, "
        f"got shape {tuple(out.shape)}")
    for h in range(n_kv_heads * n_rep):
        assert torch.equal(out[:, h], x[:, h // n_rep]), (
            f"query head {h} must use key/value head {h} // {n_rep} = {h // n_rep} (groups of consecutive heads, "
            "as in Llama), not a tiled order")


@given(attention_modules(), st.integers(1, 20))
def test_attention_without_rope_sees_no_positions(impl, case, shift):
    build, x, n_heads, n_kv_heads, theta, interleaved = case
    module = build(impl, use_rope=False)
    expected = self_attention64(module.state_dict(), x, n_heads, n_kv_heads, theta, interleaved, use_rope=False)
    positions = torch.arange(x.shape[1]) + shift
    for out, where in ((module(x), "at positions 0..T−1"), (module(x, position_ids=positions), f"shifted by {shift}")):
        assert_close(out, expected, f"CausalSelfAttention(use_rope=False) {where} must attend with q and k as the "
                                    "projections made them, unrotated", scale=100)


@given(attention_modules())
def test_attention_module_equals_the_per_head_definition_in_float64(impl, case):
    build, x, n_heads, n_kv_heads, theta, interleaved = case
    module = build(impl)
    expected = self_attention64(module.state_dict(), x, n_heads, n_kv_heads, theta, interleaved)
    assert_close(module(x), expected,
                 f"CausalSelfAttention({x.shape[-1]}, n_heads={n_heads}, n_kv_heads={n_kv_heads}) must split q_proj "
                 "into heads of d_model/n_heads consecutive features, rotate q and k with RoPE at positions 0..T−1, "
                 "attend causally per head (query head h with kv head h // group) and apply o_proj to the "
                 "concatenated heads", scale=100)


@given(attention_modules(), st.booleans(), seeds)
def test_attention_module_rotates_q_and_k_to_the_given_positions(impl, case, per_row, seed):
    build, x, n_heads, n_kv_heads, theta, interleaved = case
    module = build(impl)
    batch, length, _ = x.shape
    # any positions in the table, one row per batch element or one for all: a shift common to a whole row would
    # change nothing (RoPE sees only differences), gaps and restarts do (e.g. documents packed into one row)
    generator = torch.Generator().manual_seed(seed)
    positions = torch.randint(0, 32, (batch, length) if per_row else (length,), generator=generator)
    expected = self_attention64(module.state_dict(), x, n_heads, n_kv_heads, theta, interleaved, positions=positions)
    assert_close(module(x, position_ids=positions), expected,
                 f"CausalSelfAttention(x, position_ids) with position_ids of shape {tuple(positions.shape)} "
                 f"({positions.tolist()}) must rotate the queries and keys of each row to its own positions",
                 scale=100)


@given(attention_modules())
def test_attention_module_in_bfloat16_gives_bfloat16_close_to_the_float64_definition(impl, case):
    build, x, n_heads, n_kv_heads, theta, interleaved = case
    module = build(impl).to(torch.bfloat16)
    x = x.to(torch.bfloat16)
    weights = {name: tensor.double() for name, tensor in module.state_dict().items()}
    expected, terms = self_attention64(weights, x, n_heads, n_kv_heads, theta, interleaved, terms=True)
    out = module(x)
    assert out.dtype == torch.bfloat16, (
        f"CausalSelfAttention in bfloat16 (weights and x) must return bfloat16, got {out.dtype}")
    assert_close_to_the_terms(out, expected, terms,
                              f"CausalSelfAttention({x.shape[-1]}, n_heads={n_heads}, n_kv_heads={n_kv_heads}) in "
                              "bfloat16 must equal its float64 definition to bfloat16 precision of the terms of each "
                              "sum (the scores, the weighted values, o_proj)")


@given(attention_modules())
def test_gqa_equals_mha_with_each_kv_head_repeated_for_its_group(impl, case):
    build, x, n_heads, n_kv_heads, _, _ = case
    gqa, mha = build(impl), build(impl, n_kv=n_heads)
    group, head_dim = n_heads // n_kv_heads, x.shape[-1] // n_heads
    state = gqa.state_dict()
    with torch.no_grad():
        mha.q_proj.weight.copy_(state["q_proj.weight"])
        mha.o_proj.weight.copy_(state["o_proj.weight"])
        for name in ("k_proj", "v_proj"):
            heads = state[f"{name}.weight"].view(n_kv_heads, head_dim, -1)
            getattr(mha, name).weight.copy_(heads.repeat_interleave(group, dim=0).reshape(n_heads * head_dim, -1))
    assert_close(gqa(x), mha(x),
                 f"GQA with {n_kv_heads} kv heads must equal multi-head attention whose {n_heads} kv heads repeat "
                 f"each GQA kv head for its group of {group} consecutive query heads", scale=100)


@given(attention_modules(), st.data())
def test_attention_module_output_at_t_ignores_inputs_after_t(impl, case, data):
    build, x, *_ = case
    module = build(impl)
    t = data.draw(st.integers(0, x.shape[1] - 1), label="t")
    changed = x.clone()
    changed[:, t + 1:] = torch.randn_like(changed[:, t + 1:])
    assert_close(module(changed)[:, : t + 1], module(x)[:, : t + 1],
                 f"CausalSelfAttention: outputs at positions 0..{t} must not change when inputs after {t} change")


@given(attention_modules())
def test_batch_elements_are_independent(impl, case):
    build, x, *_ = case
    module = build(impl)
    together = module(x)
    for b in range(x.shape[0]):
        assert_close(together[b:b + 1], module(x[b:b + 1]),
                     f"batch element {b} must get the same output alone as inside a batch of {x.shape[0]}")


# ---------------------------------------------------------------- the KV cache


@given(attention_modules(), st.lists(st.integers(1, 3), min_size=1, max_size=4))
def test_cached_decoding_equals_the_full_forward_at_any_split(impl, case, chunks):
    build, x, n_heads, n_kv_heads, *_ = case
    module = build(impl)
    batch, length, d_model = x.shape
    cache = impl.attention.KVCache(batch, n_kv_heads, d_model // n_heads, 16, dtype=torch.float64)
    with torch.no_grad():
        full = module(x)
        pieces, start = [], 0
        for size in chunks + [length]:  # whatever the chunks leave, in one last piece
            size = min(size, length - start)
            if size:
                pieces.append(module(x[:, start:start + size], cache=cache))
            start += size
    splits = [min(sum(chunks[:i + 1]), length) for i in range(len(chunks))]
    assert_close(torch.cat(pieces, dim=1), full,
                 f"decoding in pieces ending at {splits} with a KV cache must give the full forward's outputs "
                 "(new queries sit at positions after the cached ones, and attend to all of them)", scale=100)


@given(attention_modules(), st.data())
def test_a_context_of_exactly_max_seq_len_positions_fits(impl, case, data):
    build, x, n_heads, n_kv_heads, theta, interleaved = case
    batch, length, d_model = x.shape
    module = build(impl, max_seq_len=length)  # the sequence fills the context: positions 0 .. max_seq_len − 1
    split = data.draw(st.integers(0, length), label="split")
    cache = impl.attention.KVCache(batch, n_kv_heads, d_model // n_heads, length, dtype=torch.float64)
    try:
        with torch.no_grad():
            full = module(x)
            pieces = [module(piece, cache=cache) for piece in (x[:, :split], x[:, split:]) if piece.shape[1]]
    except ValueError as error:
        raise AssertionError(f"CausalSelfAttention(max_seq_len={length}) must take a sequence of exactly {length} "
                             f"tokens (positions 0..{length - 1}), at once and through a KVCache of {length} "
                             f"positions filled to the last (split at {split}); it raised: {error}") from None
    expected = self_attention64(module.state_dict(), x, n_heads, n_kv_heads, theta, interleaved)
    assert_close(full, expected, f"CausalSelfAttention(max_seq_len={length}) over {length} tokens must rotate them "
                                 f"to positions 0..{length - 1}, as the definition does", scale=100)
    assert_close(torch.cat(pieces, dim=1), full,
                 f"decoding {length} tokens split at {split} through a KVCache of exactly {length} positions must "
                 "give the full forward's outputs", scale=100)


@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), seeds)
def test_kv_cache_returns_everything_stored_so_far(impl, sizes, seed):
    generator = torch.Generator().manual_seed(seed)
    cache = impl.attention.KVCache(2, 3, 4, 16)
    for name, buffer in (("k", cache.k), ("v", cache.v)):
        assert tuple(buffer.shape) == (2, 3, 16, 4) and buffer.dtype == torch.float32, (
            f"KVCache(2, 3, 4, 16).{name} must be preallocated, (batch, n_kv_heads, max_seq_len, head_dim) = "
            f"(2, 3, 16, 4) in float32, got {tuple(buffer.shape)} in {buffer.dtype}")
    stored_k, stored_v = [], []
    for size in sizes:
        k, v = torch.randn(2, 2, 3, size, 4, generator=generator)
        stored_k.append(k)
        stored_v.append(v)
        all_k, all_v = cache.update(k, v)
        assert torch.equal(all_k, torch.cat(stored_k, dim=2)) and torch.equal(all_v, torch.cat(stored_v, dim=2)), (
            f"after updates of {[t.shape[2] for t in stored_k]} positions, KVCache.update must return every key and "
            "value stored so far, in order, along dimension 2")
        assert all_k.data_ptr() == cache.k.data_ptr() and all_v.data_ptr() == cache.v.data_ptr(), (
            "KVCache.update must return views of its preallocated buffers k and v, not copies: a cache that copies "
            "everything it holds at every step costs O(T²) over a generation")
    assert cache.length == sum(sizes), (
        f"KVCache.length must count the {sum(sizes)} positions stored, got {cache.length}")


# ---------------------------------------------------------------- bad input


def test_rejects_d_model_not_divisible_by_n_heads(impl):
    attention = impl.attention.CausalSelfAttention
    assert_rejects(lambda: attention(10, 4), 10, 4, what="CausalSelfAttention(d_model=10, n_heads=4)")


def test_rejects_zero_heads_and_zero_kv_heads(impl):
    attention = impl.attention.CausalSelfAttention
    assert_rejects(lambda: attention(8, 0), "n_heads", 0, what="CausalSelfAttention(d_model=8, n_heads=0)")
    assert_rejects(lambda: attention(8, 2, 0), "n_kv_heads", 0, what="CausalSelfAttention(8, n_heads=2, n_kv_heads=0)")


def test_rejects_an_odd_head_dimension(impl):
    attention = impl.attention.CausalSelfAttention
    assert_rejects(lambda: attention(6, 2), 6, 2, 3,
                   what="CausalSelfAttention(d_model=6, n_heads=2): RoPE needs an even head dimension, and the error "
                        "must name the d_model and n_heads that give head_dim 3")


def test_rejects_n_heads_not_divisible_by_n_kv_heads(impl):
    attention = impl.attention.CausalSelfAttention
    assert_rejects(lambda: attention(24, 4, 3), 4, 3, what="CausalSelfAttention(24, n_heads=4, n_kv_heads=3)")


def test_rejects_more_positions_than_the_cache_holds(impl):
    cache = impl.attention.KVCache(1, 2, 4, 5)
    cache.update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    assert_rejects(lambda: cache.update(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4)), 5,
                   what="a KV cache of 5 positions, 3 filled, given 4 more")
    module = impl.attention.CausalSelfAttention(8, 2, max_seq_len=6)
    assert_rejects(lambda: module(torch.zeros(1, 7, 8)), 6,
                   what="CausalSelfAttention(max_seq_len=6) given a sequence of 7")


def test_rejects_q_k_v_and_masks_that_do_not_fit(impl):
    sdpa, weights, causal_mask = (impl.attention.scaled_dot_product_attention, impl.attention.attention_weights,
                                  impl.attention.causal_mask)
    assert_rejects(lambda: sdpa(torch.zeros(3, 4), torch.zeros(5, 6), torch.zeros(5, 2)), 4, 6,
                   what="attention of q with d = 4 and k with d = 6")
    assert_rejects(lambda: sdpa(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(6, 2)), 5, 6,
                   what="attention of 5 keys with 6 values")
    assert_rejects(lambda: weights(torch.zeros(3, 4), torch.zeros(5, 4), mask=torch.ones(3, 5)), "float32",
                   what="attention_weights with a float mask (a mask is boolean, True = may attend)")
    assert_rejects(lambda: weights(torch.zeros(4), torch.zeros(5, 4)), 4, what="attention_weights of a 1-D q")
    assert_rejects(lambda: weights(torch.zeros(3, 4), torch.zeros(4)), 4, what="attention_weights of a 1-D k")
    assert_rejects(lambda: causal_mask(-1, 3), -1, what="causal_mask(-1, 3)")
    assert_rejects(lambda: causal_mask(2, offset=-5), -3, what="causal_mask(2, offset=-5): n_keys = offset + 2 = -3")


def test_rejects_keys_and_values_of_another_shape_than_the_cache(impl):
    cache = impl.attention.KVCache(1, 2, 4, 8)
    assert_rejects(lambda: cache.update(torch.zeros(1, 3, 1, 4), torch.zeros(1, 3, 1, 4)), 2, 3,
                   what="a KV cache of 2 heads given keys of 3 heads")
    assert_rejects(lambda: cache.update(torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 5)), 4, 5,
                   what="a KV cache of head_dim 4 given values of head_dim 5")


def test_rejects_mismatched_dtypes_and_devices(impl):
    sdpa, weights = impl.attention.scaled_dot_product_attention, impl.attention.attention_weights
    q, k = torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.float64)
    assert_rejects(lambda: sdpa(q, k, k), "float32", "float64", what="attention of float32 q and float64 k")
    # each argument alone in another dtype
    assert_rejects(lambda: weights(q, k), "float32", "float64", what="attention_weights of float32 q and float64 k")
    assert_rejects(lambda: weights(k, q), "float32", "float64", what="attention_weights of float64 q and float32 k")
    assert_rejects(lambda: sdpa(q, q, k), "float32", "float64", what="attention of float32 q and k with float64 v")
    assert_rejects(lambda: sdpa(k, q, q), "float32", "float64", what="attention of float64 q with float32 k and v")
    meta = torch.zeros(3, 4, device="meta")
    assert_rejects(lambda: sdpa(q, meta, meta), "cpu", "meta", what="attention of q on cpu and k on meta")
    cache = impl.attention.KVCache(1, 1, 4, 8)
    assert_rejects(lambda: cache.update(torch.zeros(1, 1, 2, 4, dtype=torch.float64),
                                        torch.zeros(1, 1, 2, 4, dtype=torch.float64)),
                   "float32", "float64", what="a float32 KV cache given float64 keys")
    for name, dtypes in (("keys", (torch.float64, torch.float32)), ("values", (torch.float32, torch.float64))):
        k, v = (torch.zeros(1, 1, 2, 4, dtype=dtype) for dtype in dtypes)
        assert_rejects(lambda k=k, v=v: cache.update(k, v), "float32", "float64",
                       what=f"a float32 KV cache given float64 {name} alone")
