"""Wrong implementations of the attention chapter that a learner could plausibly write."""

import math

import torch
from torch import nn

import llmkata.reference.attention as ref

from . import Mutant

# ---------------------------------------------------------------- the mask and the operation


def mask_without_the_diagonal(n_queries, n_keys=None, offset=0, device=None):
    return ref.causal_mask(n_queries, n_keys, offset - 1, device)


def mask_ignoring_the_offset(n_queries, n_keys=None, offset=0, device=None):
    n_keys = offset + n_queries if n_keys is None else n_keys
    return ref.causal_mask(n_queries, n_keys, 0, device)


def mask_with_default_square(n_queries, n_keys=None, offset=0, device=None):
    return ref.causal_mask(n_queries, n_queries if n_keys is None else n_keys, offset, device)


def _scores(q, k, scale):
    return (q @ k.transpose(-2, -1)) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)


def weights_scaled_by_one_over_d(q, k, mask=None, is_causal=False, scale=None):
    return ref.attention_weights(q, k, mask, is_causal, 1 / q.shape[-1] if scale is None else scale)


def weights_normalised_over_queries(q, k, mask=None, is_causal=False, scale=None):
    scores = _scores(q, k, scale)
    allowed = ref.causal_mask(q.shape[-2], k.shape[-2], k.shape[-2] - q.shape[-2]) if is_causal else mask
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=-2))


def weights_masked_after_the_softmax(q, k, mask=None, is_causal=False, scale=None):
    """Zeroes masked weights after normalising over every key: rows no longer sum to 1."""
    weights = torch.softmax(_scores(q, k, scale), -1)
    allowed = ref.causal_mask(q.shape[-2], k.shape[-2], k.shape[-2] - q.shape[-2]) if is_causal else None
    if mask is not None:
        allowed = mask if allowed is None else allowed & mask
    return weights if allowed is None else weights * allowed


def weights_with_naive_masking(q, k, mask=None, is_causal=False, scale=None):
    """masked_fill(−inf) then softmax: NaN on fully masked rows."""
    scores = _scores(q, k, scale)
    allowed = ref.causal_mask(q.shape[-2], k.shape[-2], k.shape[-2] - q.shape[-2]) if is_causal else None
    if mask is not None:
        allowed = mask if allowed is None else allowed & mask
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, -1)


def _sdpa_from(weights):
    def scaled_dot_product_attention(q, k, v, mask=None, is_causal=False, scale=None):
        return weights(q, k, mask, is_causal, scale) @ v
    scaled_dot_product_attention.__name__ = "sdpa_from_" + weights.__name__
    return scaled_dot_product_attention


def sdpa_ignoring_the_mask(q, k, v, mask=None, is_causal=False, scale=None):
    return ref.scaled_dot_product_attention(q, k, v, None, is_causal, scale)


def sdpa_causal_from_the_top_left(q, k, v, mask=None, is_causal=False, scale=None):
    """torch's convention for is_causal with Tq != Tk: query i sees keys 0..i, wrong for cached decoding."""
    if is_causal:
        top_left = ref.causal_mask(q.shape[-2], k.shape[-2], 0)
        mask = top_left if mask is None else mask & top_left
    return ref.scaled_dot_product_attention(q, k, v, mask, False, scale)


def sdpa_seeing_one_step_ahead(q, k, v, mask=None, is_causal=False, scale=None):
    if is_causal:
        ahead = ref.causal_mask(q.shape[-2], k.shape[-2], k.shape[-2] - q.shape[-2] + 1)
        mask = ahead if mask is None else mask & ahead
    return ref.scaled_dot_product_attention(q, k, v, mask, False, scale)


def sdpa_casting_silently(q, k, v, mask=None, is_causal=False, scale=None):
    return ref.scaled_dot_product_attention(q, k.to(q), v.to(q), mask, is_causal, scale)


def repeat_kv_tiled(x, n_rep):
    return x.repeat(1, n_rep, 1, 1)


# ---------------------------------------------------------------- the module


class AttentionWithHeadsSplitWrong(ref.CausalSelfAttention):
    """Views (B, T, H·hd) as (B, H, T, hd) directly: mixes positions and heads."""

    def forward(self, x, position_ids=None, cache=None):
        batch, length, _ = x.shape
        positions = torch.arange(length)
        q = self.q_proj(x).view(batch, self.n_heads, length, self.head_dim)
        k = self.k_proj(x).view(batch, self.n_kv_heads, length, self.head_dim)
        v = self.v_proj(x).view(batch, self.n_kv_heads, length, self.head_dim)
        q, k = self.rotary(q, positions), self.rotary(k, positions)
        n_rep = self.n_heads // self.n_kv_heads
        out = ref.scaled_dot_product_attention(q, ref.repeat_kv(k, n_rep), ref.repeat_kv(v, n_rep), is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


def _module_with(name, attention=None, repeat=None, rotate_keys=True, positions_from_zero=False,
                 flatten_batch=False):
    class Mutated(ref.CausalSelfAttention):
        def forward(self, x, position_ids=None, cache=None):
            if flatten_batch:  # one long sequence: batch element 1 sees batch element 0
                return super().forward(x.reshape(1, -1, x.shape[-1])).reshape(x.shape)
            batch, length, _ = x.shape
            offset = 0 if positions_from_zero or cache is None else cache.length
            positions = torch.arange(offset, offset + length)
            q = self.q_proj(x).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
            k = self.k_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
            v = self.v_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
            q = self.rotary(q, positions)
            k = self.rotary(k, positions) if rotate_keys else k
            if cache is not None:
                k, v = cache.update(k, v)
            n_rep = self.n_heads // self.n_kv_heads
            k, v = (repeat or ref.repeat_kv)(k, n_rep), (repeat or ref.repeat_kv)(v, n_rep)
            out = (attention or ref.scaled_dot_product_attention)(q, k, v, is_causal=True)
            return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))
    Mutated.__name__ = Mutated.__qualname__ = name
    return Mutated


def _attention_not_causal(q, k, v, is_causal=False):
    return ref.scaled_dot_product_attention(q, k, v)


AttentionWithTiledGroups = _module_with("AttentionWithTiledGroups", repeat=repeat_kv_tiled)
AttentionWithoutRopeOnKeys = _module_with("AttentionWithoutRopeOnKeys", rotate_keys=False)
AttentionNotCausal = _module_with("AttentionNotCausal", attention=_attention_not_causal)
AttentionRestartingPositions = _module_with("AttentionRestartingPositions", positions_from_zero=True)
AttentionFlatteningTheBatch = _module_with("AttentionFlatteningTheBatch", flatten_batch=True)
AttentionIgnoringUseRope = _module_with("AttentionIgnoringUseRope")  # rotates q and k whatever use_rope says


class AttentionWithoutShapeChecks(ref.CausalSelfAttention):
    """Floors d_model / n_heads and n_heads / n_kv_heads instead of refusing."""

    def __init__(self, d_model, n_heads, n_kv_heads=None, max_seq_len=2048, rope_theta=10000.0,
                 rope_interleaved=False):
        nn.Module.__init__(self)
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.q_proj = ref.Linear(d_model, n_heads * self.head_dim, bias=False)
        self.k_proj = ref.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = ref.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = ref.Linear(n_heads * self.head_dim, d_model, bias=False)
        self.rotary = ref.RotaryEmbedding(self.head_dim, max_seq_len, rope_theta, rope_interleaved)


class _WrappingRotary(ref.RotaryEmbedding):
    def forward(self, x, positions):
        return super().forward(x, positions % self.max_positions)


class AttentionWrappingPositions(ref.CausalSelfAttention):
    """Positions past the RoPE table wrap around instead of being refused."""

    def __init__(self, d_model, n_heads, n_kv_heads=None, max_seq_len=2048, rope_theta=10000.0,
                 rope_interleaved=False):
        super().__init__(d_model, n_heads, n_kv_heads, max_seq_len, rope_theta, rope_interleaved)
        self.rotary = _WrappingRotary(self.head_dim, max_seq_len, rope_theta, rope_interleaved)


# ---------------------------------------------------------------- the cache


class CacheThatNeverAdvances(ref.KVCache):
    """Writes every update at position 0: only the newest keys are returned."""

    def update(self, k, v):
        self.length = 0
        return super().update(k, v)


class CacheWithoutCapacityCheck(ref.KVCache):
    def update(self, k, v):
        start, end = self.length, self.length + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class CacheCastingSilently(ref.KVCache):
    def update(self, k, v):
        return super().update(k.to(self.k), v.to(self.v))


# ---------------------------------------------------------------- gradients


def _masked_scores(q, k, mask, is_causal, scale):
    """The scaled scores with −inf where a key is not allowed (0 on rows that allow none), and which rows allow
    some key (None when there is no mask)."""
    scores = _scores(q, k, scale)
    allowed = mask
    if is_causal:
        causal = ref.causal_mask(q.shape[-2], k.shape[-2], k.shape[-2] - q.shape[-2])
        allowed = causal if allowed is None else allowed & causal
    if allowed is None:
        return scores, None
    sees = allowed.any(-1, keepdim=True)
    return scores.masked_fill(~allowed, float("-inf")).masked_fill(~sees, 0.0), sees


def sdpa_with_a_detached_normaliser(q, k, v, mask=None, is_causal=False, scale=None):
    """Divides by Σ exp(s − m) computed under no_grad, to save its graph: the right weights, but the gradient
    of the scores loses the softmax's cross term."""
    scores, sees = _masked_scores(q, k, mask, is_causal, scale)
    exps = torch.exp(scores - scores.amax(-1, keepdim=True).detach())
    with torch.no_grad():
        total = exps.sum(-1, keepdim=True)
    weights = exps / total
    return (weights if sees is None else weights * sees) @ v


def sdpa_zeroing_empty_rows_in_place(q, k, v, mask=None, is_causal=False, scale=None):
    """weights.mul_(sees) overwrites the softmax output that softmax's backward pass needs: the right values, and no
    gradient at all once a mask is given."""
    scores, sees = _masked_scores(q, k, mask, is_causal, scale)
    weights = torch.softmax(scores, -1)
    if sees is not None:
        weights.mul_(sees)
    return weights @ v


MUTANTS = [
    Mutant("attention.causal_mask", mask_without_the_diagonal,
           ("test_causal_mask_lets_query_i_see_keys_up_to_i_plus_offset",), "j < i: a token cannot see itself"),
    Mutant("attention.causal_mask", mask_ignoring_the_offset,
           ("test_causal_mask_lets_query_i_see_keys_up_to_i_plus_offset",), "the query offset is ignored"),
    Mutant("attention.causal_mask", mask_with_default_square,
           ("test_causal_mask_lets_query_i_see_keys_up_to_i_plus_offset",), "n_keys defaults to n_queries"),
    Mutant("attention.attention_weights", weights_scaled_by_one_over_d,
           ("test_attention_weights_are_rows_summing_to_one",), "scores divided by d instead of √d"),
    Mutant("attention.attention_weights", weights_normalised_over_queries,
           ("test_attention_weights_are_rows_summing_to_one",), "softmax over the queries (dim −2)"),
    Mutant("attention.attention_weights", weights_masked_after_the_softmax,
           ("test_attention_weights_are_rows_summing_to_one",), "mask applied after normalising"),
    Mutant("attention.attention_weights", weights_with_naive_masking,
           ("test_fully_masked_rows_give_zero_not_nan",), "masked_fill(−inf) + softmax gives NaN on empty rows"),
    Mutant("attention.scaled_dot_product_attention", _sdpa_from(weights_scaled_by_one_over_d),
           ("test_attention_equals_softmax_of_scaled_scores_times_v_in_float64",), "scores divided by d"),
    Mutant("attention.scaled_dot_product_attention", _sdpa_from(weights_normalised_over_queries),
           ("test_attention_equals_softmax_of_scaled_scores_times_v_in_float64",), "softmax over the queries"),
    Mutant("attention.scaled_dot_product_attention", _sdpa_from(weights_with_naive_masking),
           ("test_fully_masked_rows_give_zero_not_nan",), "NaN on fully masked rows"),
    Mutant("attention.scaled_dot_product_attention", sdpa_ignoring_the_mask,
           ("test_attention_equals_softmax_of_scaled_scores_times_v_in_float64",), "the boolean mask is ignored"),
    Mutant("attention.scaled_dot_product_attention", sdpa_causal_from_the_top_left,
           ("test_attention_equals_softmax_of_scaled_scores_times_v_in_float64",),
           "is_causal aligns query i with key i even when there are more keys than queries"),
    Mutant("attention.scaled_dot_product_attention", sdpa_seeing_one_step_ahead,
           ("test_output_at_t_ignores_inputs_after_t",
            "test_attention_equals_softmax_of_scaled_scores_times_v_in_float64"), "the mask is off by one"),
    Mutant("attention.scaled_dot_product_attention", sdpa_casting_silently,
           ("test_rejects_mismatched_dtypes_and_devices",), "casts k and v to q's dtype and device"),
    Mutant("attention.repeat_kv", repeat_kv_tiled,
           ("test_repeat_kv_gives_query_head_h_the_kv_head_h_over_n_rep",), "tiles heads [k0, k1, k0, k1]"),
    Mutant("attention.CausalSelfAttention", AttentionWithHeadsSplitWrong,
           ("test_attention_module_equals_the_per_head_definition_in_float64",), "view(B, H, T, hd) without transpose"),
    Mutant("attention.CausalSelfAttention", AttentionWithoutRopeOnKeys,
           ("test_attention_module_equals_the_per_head_definition_in_float64",), "RoPE on queries only"),
    Mutant("attention.CausalSelfAttention", AttentionWithTiledGroups,
           ("test_gqa_equals_mha_with_each_kv_head_repeated_for_its_group",
            "test_attention_module_equals_the_per_head_definition_in_float64"), "GQA groups tiled, not consecutive"),
    Mutant("attention.CausalSelfAttention", AttentionNotCausal,
           ("test_attention_module_output_at_t_ignores_inputs_after_t",), "attention without the causal mask"),
    Mutant("attention.CausalSelfAttention", AttentionIgnoringUseRope,
           ("test_attention_without_rope_sees_no_positions",), "use_rope=False still rotates q and k"),
    Mutant("attention.CausalSelfAttention", AttentionFlatteningTheBatch,
           ("test_batch_elements_are_independent",), "the batch flattened into one long sequence"),
    Mutant("attention.CausalSelfAttention", AttentionRestartingPositions,
           ("test_cached_decoding_equals_the_full_forward_at_any_split",),
           "new tokens rotated from position 0 instead of after the cached ones"),
    Mutant("attention.CausalSelfAttention", AttentionWithoutShapeChecks,
           ("test_rejects_d_model_not_divisible_by_n_heads", "test_rejects_n_heads_not_divisible_by_n_kv_heads"),
           "head sizes floored instead of refused"),
    Mutant("attention.CausalSelfAttention", AttentionWrappingPositions,
           ("test_rejects_more_positions_than_the_cache_holds",), "positions past the context wrap around"),
    Mutant("attention.KVCache", CacheThatNeverAdvances,
           ("test_cached_decoding_equals_the_full_forward_at_any_split",
            "test_kv_cache_returns_everything_stored_so_far"),
           "every update overwrites position 0"),
    Mutant("attention.KVCache", CacheWithoutCapacityCheck,
           ("test_rejects_more_positions_than_the_cache_holds",), "writes past its end (a shape error from torch)"),
    Mutant("attention.KVCache", CacheCastingSilently,
           ("test_rejects_mismatched_dtypes_and_devices",), "casts keys to its own dtype"),
    Mutant("attention.scaled_dot_product_attention", sdpa_with_a_detached_normaliser,
           ("test_attention_gradients_equal_those_of_the_definition_in_float64",),
           "the softmax's denominator taken as a constant: ds = P ⊙ dP, the cross term lost"),
    Mutant("attention.scaled_dot_product_attention", sdpa_zeroing_empty_rows_in_place,
           ("test_attention_gradients_equal_those_of_the_definition_in_float64",),
           "zeroes the rows that see no key in place, over the tensor softmax's backward pass needs"),
]
