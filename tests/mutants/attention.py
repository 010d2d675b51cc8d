"""Wrong implementations of the attention chapter that a learner could plausibly write."""

import math

import torch
from torch import nn

import llmkata.reference.attention as ref

from . import mutant

# ---------------------------------------------------------------- the mask and the operation


@mutant("attention.causal_mask", "test_causal_mask_lets_query_i_see_keys_up_to_i_plus_offset",
        why="j < i: a token cannot see itself")
def mask_without_the_diagonal(n_queries, n_keys=None, offset=0, device=None):
    return ref.causal_mask(n_queries, n_keys, offset - 1, device)


@mutant("attention.causal_mask", "test_causal_mask_lets_query_i_see_keys_up_to_i_plus_offset",
        why="the query offset is ignored")
def mask_ignoring_the_offset(n_queries, n_keys=None, offset=0, device=None):
    n_keys = offset + n_queries if n_keys is None else n_keys
    return ref.causal_mask(n_queries, n_keys, 0, device)


@mutant("attention.causal_mask", "test_causal_mask_lets_query_i_see_keys_up_to_i_plus_offset",
        why="n_keys defaults to n_queries")
def mask_with_default_square(n_queries, n_keys=None, offset=0, device=None):
    return ref.causal_mask(n_queries, n_queries if n_keys is None else n_keys, offset, device)


def _scores(q, k, scale):
    return (q @ k.transpose(-2, -1)) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)


@mutant("attention.attention_weights", "test_attention_weights_are_rows_summing_to_one",
        why="scores divided by d instead of √d")
def weights_scaled_by_one_over_d(q, k, mask=None, is_causal=False, scale=None):
    return ref.attention_weights(q, k, mask, is_causal, 1 / q.shape[-1] if scale is None else scale)


@mutant("attention.attention_weights", "test_attention_weights_are_rows_summing_to_one",
        why="softmax over the queries (dim −2)")
def weights_normalised_over_queries(q, k, mask=None, is_causal=False, scale=None):
    scores = _scores(q, k, scale)
    allowed = ref.causal_mask(q.shape[-2], k.shape[-2], k.shape[-2] - q.shape[-2]) if is_causal else mask
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=-2))


@mutant("attention.attention_weights", "test_attention_weights_are_rows_summing_to_one",
        why="mask applied after normalising")
def weights_masked_after_the_softmax(q, k, mask=None, is_causal=False, scale=None):
    """Zeroes masked weights after normalising over every key: rows no longer sum to 1."""
    weights = torch.softmax(_scores(q, k, scale), -1)
    allowed = ref.causal_mask(q.shape[-2], k.shape[-2], k.shape[-2] - q.shape[-2]) if is_causal else None
    if mask is not None:
        allowed = mask if allowed is None else allowed & mask
    return weights if allowed is None else weights * allowed


@mutant("attention.attention_weights", "test_fully_masked_rows_give_zero_not_nan",
        why="masked_fill(−inf) + softmax gives NaN on empty rows")
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


mutant("attention.scaled_dot_product_attention", "test_attention_equals_softmax_of_scaled_scores_times_v_in_float64",
       why="scores divided by d")(_sdpa_from(weights_scaled_by_one_over_d))


mutant("attention.scaled_dot_product_attention", "test_attention_equals_softmax_of_scaled_scores_times_v_in_float64",
       why="softmax over the queries")(_sdpa_from(weights_normalised_over_queries))


mutant("attention.scaled_dot_product_attention", "test_fully_masked_rows_give_zero_not_nan",
       why="NaN on fully masked rows")(_sdpa_from(weights_with_naive_masking))


@mutant("attention.scaled_dot_product_attention", "test_attention_equals_softmax_of_scaled_scores_times_v_in_float64",
        why="the boolean mask is ignored")
def sdpa_ignoring_the_mask(q, k, v, mask=None, is_causal=False, scale=None):
    return ref.scaled_dot_product_attention(q, k, v, None, is_causal, scale)


@mutant("attention.scaled_dot_product_attention", "test_attention_equals_softmax_of_scaled_scores_times_v_in_float64",
        why="is_causal aligns query i with key i even when there are more keys than queries")
def sdpa_causal_from_the_top_left(q, k, v, mask=None, is_causal=False, scale=None):
    """torch's convention for is_causal with Tq != Tk: query i sees keys 0..i, wrong for cached decoding."""
    if is_causal:
        top_left = ref.causal_mask(q.shape[-2], k.shape[-2], 0)
        mask = top_left if mask is None else mask & top_left
    return ref.scaled_dot_product_attention(q, k, v, mask, False, scale)


@mutant("attention.scaled_dot_product_attention", "test_output_at_t_ignores_inputs_after_t",
        "test_attention_equals_softmax_of_scaled_scores_times_v_in_float64",
        why="the mask is off by one")
def sdpa_seeing_one_step_ahead(q, k, v, mask=None, is_causal=False, scale=None):
    if is_causal:
        ahead = ref.causal_mask(q.shape[-2], k.shape[-2], k.shape[-2] - q.shape[-2] + 1)
        mask = ahead if mask is None else mask & ahead
    return ref.scaled_dot_product_attention(q, k, v, mask, False, scale)


@mutant("attention.scaled_dot_product_attention", "test_rejects_mismatched_dtypes_and_devices",
        why="casts k and v to q's dtype and device")
def sdpa_casting_silently(q, k, v, mask=None, is_causal=False, scale=None):
    return ref.scaled_dot_product_attention(q, k.to(q), v.to(q), mask, is_causal, scale)


@mutant("attention.repeat_kv", "test_repeat_kv_gives_query_head_h_the_kv_head_h_over_n_rep",
        why="tiles heads [k0, k1, k0, k1]")
def repeat_kv_tiled(x, n_rep):
    return x.repeat(1, n_rep, 1, 1)


# ---------------------------------------------------------------- the module


@mutant("attention.CausalSelfAttention", "test_attention_module_equals_the_per_head_definition_in_float64",
        why="view(B, H, T, hd) without transpose")
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


@mutant("attention.CausalSelfAttention", "test_rejects_d_model_not_divisible_by_n_heads",
        "test_rejects_n_heads_not_divisible_by_n_kv_heads",
        why="head sizes floored instead of refused")
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


@mutant("attention.CausalSelfAttention", "test_rejects_more_positions_than_the_cache_holds",
        why="positions past the context wrap around")
class AttentionWrappingPositions(ref.CausalSelfAttention):
    """Positions past the RoPE table wrap around instead of being refused."""

    def __init__(self, d_model, n_heads, n_kv_heads=None, max_seq_len=2048, rope_theta=10000.0,
                 rope_interleaved=False):
        super().__init__(d_model, n_heads, n_kv_heads, max_seq_len, rope_theta, rope_interleaved)
        self.rotary = _WrappingRotary(self.head_dim, max_seq_len, rope_theta, rope_interleaved)


# ---------------------------------------------------------------- the cache


@mutant("attention.KVCache", "test_cached_decoding_equals_the_full_forward_at_any_split",
        "test_kv_cache_returns_everything_stored_so_far",
        why="every update overwrites position 0")
class CacheThatNeverAdvances(ref.KVCache):
    """Writes every update at position 0: only the newest keys are returned."""

    def update(self, k, v):
        self.length = 0
        return super().update(k, v)


@mutant("attention.KVCache", "test_rejects_more_positions_than_the_cache_holds",
        why="writes past its end (a shape error from torch)")
class CacheWithoutCapacityCheck(ref.KVCache):
    """Stores and returns without checking capacity or shapes."""

    def update(self, k, v):
        start, end = self.length, self.length + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


@mutant("attention.KVCache", "test_rejects_mismatched_dtypes_and_devices", why="casts keys to its own dtype")
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


@mutant("attention.scaled_dot_product_attention", "test_attention_gradients_equal_those_of_the_definition_in_float64",
        why="the softmax's denominator taken as a constant: ds = P ⊙ dP, the cross term lost")
def sdpa_with_a_detached_normaliser(q, k, v, mask=None, is_causal=False, scale=None):
    """Divides by Σ exp(s − m) computed under no_grad, to save its graph: the right weights, but the gradient
    of the scores loses the softmax's cross term."""
    scores, sees = _masked_scores(q, k, mask, is_causal, scale)
    exps = torch.exp(scores - scores.amax(-1, keepdim=True).detach())
    with torch.no_grad():
        total = exps.sum(-1, keepdim=True)
    weights = exps / total
    return (weights if sees is None else weights * sees) @ v


@mutant("attention.scaled_dot_product_attention", "test_attention_gradients_equal_those_of_the_definition_in_float64",
        why="zeroes the rows that see no key in place, over the tensor softmax's backward pass needs")
def sdpa_zeroing_empty_rows_in_place(q, k, v, mask=None, is_causal=False, scale=None):
    """weights.mul_(sees) overwrites the softmax output that softmax's backward pass needs: the right values, and no
    gradient at all once a mask is given."""
    scores, sees = _masked_scores(q, k, mask, is_causal, scale)
    weights = torch.softmax(scores, -1)
    if sees is not None:
        weights.mul_(sees)
    return weights @ v


mutant("attention.CausalSelfAttention", "test_attention_module_equals_the_per_head_definition_in_float64",
       why="RoPE on queries only")(AttentionWithoutRopeOnKeys)


mutant("attention.CausalSelfAttention", "test_gqa_equals_mha_with_each_kv_head_repeated_for_its_group",
       "test_attention_module_equals_the_per_head_definition_in_float64",
       why="GQA groups tiled, not consecutive")(AttentionWithTiledGroups)


mutant("attention.CausalSelfAttention", "test_attention_module_output_at_t_ignores_inputs_after_t",
       why="attention without the causal mask")(AttentionNotCausal)


mutant("attention.CausalSelfAttention", "test_attention_without_rope_sees_no_positions",
       why="use_rope=False still rotates q and k")(AttentionIgnoringUseRope)


mutant("attention.CausalSelfAttention", "test_batch_elements_are_independent",
       why="the batch flattened into one long sequence")(AttentionFlatteningTheBatch)


mutant("attention.CausalSelfAttention", "test_cached_decoding_equals_the_full_forward_at_any_split",
       why="new tokens rotated from position 0 instead of after the cached ones")(AttentionRestartingPositions)


# ---------------------------------------------------------------- scale, half precision, positions, bad input


@mutant("attention.scaled_dot_product_attention", "test_attention_equals_softmax_of_scaled_scores_times_v_in_float64",
        why="the scale argument is ignored: always 1/√d")
def sdpa_ignoring_the_scale(q, k, v, mask=None, is_causal=False, scale=None):
    return ref.scaled_dot_product_attention(q, k, v, mask, is_causal)


@mutant("attention.attention_weights", "test_attention_in_bfloat16_gives_bfloat16_close_to_the_float64_definition",
        why="the mask added as a 0/−inf bias built in float32 (torch's default dtype): bfloat16 scores turn float32")
def weights_masking_with_a_float32_bias(q, k, mask=None, is_causal=False, scale=None):
    allowed = mask
    if is_causal:
        causal = ref.causal_mask(q.shape[-2], k.shape[-2], k.shape[-2] - q.shape[-2])
        allowed = causal if allowed is None else allowed & causal
    if allowed is None:
        return torch.softmax(_scores(q, k, scale), -1)
    sees = allowed.any(-1, keepdim=True)
    bias = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf")).masked_fill(~sees, 0.0)  # float32
    return torch.softmax(_scores(q, k, scale) + bias, -1) * sees


@mutant("attention.scaled_dot_product_attention",
        "test_attention_in_bfloat16_gives_bfloat16_close_to_the_float64_definition",
        why="computes in float32 for stability and returns float32")
def sdpa_returning_float32(q, k, v, mask=None, is_causal=False, scale=None):
    return ref.scaled_dot_product_attention(q.float(), k.float(), v.float(), mask, is_causal, scale)


def _attention_scaled_by_d_model(q, k, v, is_causal=False):
    d_model = q.shape[1] * q.shape[-1]  # (B, H, T, head_dim)
    return ref.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=1 / math.sqrt(d_model))


AttentionScaledByDModel = _module_with("AttentionScaledByDModel", attention=_attention_scaled_by_d_model)
mutant("attention.CausalSelfAttention",
       "test_attention_module_in_bfloat16_gives_bfloat16_close_to_the_float64_definition",
       "test_attention_module_equals_the_per_head_definition_in_float64",
       why="scores divided by √d_model instead of √head_dim")(AttentionScaledByDModel)


@mutant("attention.CausalSelfAttention", "test_attention_module_rotates_q_and_k_to_the_given_positions",
        why="position_ids ignored: every row rotated to 0 .. T − 1 (after the cache)")
class AttentionIgnoringPositionIds(ref.CausalSelfAttention):
    def forward(self, x, position_ids=None, cache=None):
        return super().forward(x, cache=cache)


@mutant("attention.attention_weights", "test_rejects_q_k_v_and_masks_that_do_not_fit",
        why="a float mask silently read as booleans (nonzero = may attend)")
def weights_reading_any_mask_as_booleans(q, k, mask=None, is_causal=False, scale=None):
    return ref.attention_weights(q, k, None if mask is None else mask.bool(), is_causal, scale)


@mutant("attention.scaled_dot_product_attention", "test_rejects_q_k_v_and_masks_that_do_not_fit",
        why="no check of the shapes: torch's matmul error instead of one naming q, k and v")
def sdpa_without_shape_checks(q, k, v, mask=None, is_causal=False, scale=None):
    scores, sees = _masked_scores(q, k, mask, is_causal, scale)
    weights = torch.softmax(scores, -1)
    return (weights if sees is None else weights * sees) @ v


@mutant("attention.causal_mask", "test_rejects_q_k_v_and_masks_that_do_not_fit",
        why="negative sizes reach torch, which fails with its own error")
def mask_without_a_size_check(n_queries, n_keys=None, offset=0, device=None):
    n_keys = offset + n_queries if n_keys is None else n_keys
    return torch.ones(n_queries, n_keys, dtype=torch.bool, device=device).tril(offset)


mutant("attention.KVCache", "test_rejects_keys_and_values_of_another_shape_than_the_cache",
       why="no check of the shapes: torch's copy error instead of one naming the cache's shape")(
    CacheWithoutCapacityCheck)


@mutant("attention.KVCache", "test_kv_cache_returns_everything_stored_so_far",
        why="grows by concatenation: every update copies everything held so far")
class CacheGrowingByConcatenation(ref.KVCache):
    def update(self, k, v):
        super().update(k, v)
        return torch.cat([self.k[:, :, :self.length - k.shape[2]], k], 2), torch.cat(
            [self.v[:, :, :self.length - v.shape[2]], v], 2)


@mutant("attention.attention_weights", "test_attention_weights_are_rows_summing_to_one",
        why="the scale argument is ignored: always 1/√d")
def weights_ignoring_the_scale(q, k, mask=None, is_causal=False, scale=None):
    return ref.attention_weights(q, k, mask, is_causal)


# ---------------------------------------------------------------- devices, every argument checked, the full context


@mutant("attention.causal_mask", "test_masks_are_built_on_the_device_of_the_inputs",
        why="the device argument is ignored: the mask is always built on the default device")
def mask_on_the_default_device(n_queries, n_keys=None, offset=0, device=None):
    return ref.causal_mask(n_queries, n_keys, offset)


@mutant("attention.attention_weights", "test_masks_are_built_on_the_device_of_the_inputs",
        why="the causal mask built on the default device: attention on a GPU fails as soon as is_causal is set")
def weights_with_the_causal_mask_on_the_default_device(q, k, mask=None, is_causal=False, scale=None):
    scores, sees = _masked_scores(q, k, mask, is_causal, scale)  # causal_mask(...) without device=q.device
    weights = torch.softmax(scores, -1)
    return weights if sees is None else weights * sees


@mutant("attention.attention_weights", "test_rejects_mismatched_dtypes_and_devices",
        why="no check that q and k agree: torch's matmul error instead of one naming both dtypes")
def weights_without_a_dtype_check(q, k, mask=None, is_causal=False, scale=None):
    return weights_with_the_causal_mask_on_the_default_device(q, k, mask, is_causal, scale)


@mutant("attention.scaled_dot_product_attention", "test_rejects_mismatched_dtypes_and_devices",
        why="checks q against k only: a v in another dtype reaches torch's matmul")
def sdpa_checking_q_and_k_only(q, k, v, mask=None, is_causal=False, scale=None):
    return ref.attention_weights(q, k, mask, is_causal, scale) @ v


@mutant("attention.KVCache", "test_rejects_mismatched_dtypes_and_devices",
        why="checks the keys' dtype only: values in another dtype are cast silently into the buffer")
class CacheCheckingKeysOnly(ref.KVCache):
    def update(self, k, v):
        return super().update(k, v.to(self.v.dtype))


@mutant("attention.attention_weights", "test_rejects_q_k_v_and_masks_that_do_not_fit",
        why="checks that q and k share d, not that each has a row dimension: a 1-D q fails inside torch")
def weights_without_a_rank_check(q, k, mask=None, is_causal=False, scale=None):
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share d; got shapes {tuple(q.shape)} and {tuple(k.shape)}")
    return weights_with_the_causal_mask_on_the_default_device(q, k, mask, is_causal, scale)


@mutant("attention.KVCache", "test_a_context_of_exactly_max_seq_len_positions_fits",
        why="refuses to fill the last position (end >= max_seq_len): a cache of n positions holds n − 1")
class CacheOneShort(ref.KVCache):
    def update(self, k, v):
        if self.length + k.shape[2] >= self.max_seq_len:
            raise ValueError(f"the KV cache holds {self.max_seq_len} positions: {k.shape[2]} more do not fit")
        return super().update(k, v)


@mutant("attention.CausalSelfAttention", "test_a_context_of_exactly_max_seq_len_positions_fits",
        why="positions counted from 1: invisible to RoPE (only differences count) until the last position, which "
            "falls off the table")
class AttentionCountingPositionsFromOne(ref.CausalSelfAttention):
    def forward(self, x, position_ids=None, cache=None):
        if position_ids is None:
            offset = 1 + (cache.length if cache is not None else 0)
            position_ids = torch.arange(offset, offset + x.shape[1])
        return super().forward(x, position_ids, cache)


def _unchecked_init(self, d_model, n_heads, n_kv_heads, max_seq_len, rope_theta, rope_interleaved, use_rope,
                    kernels):
    """CausalSelfAttention.__init__ after its checks: the projections and the RoPE table."""
    self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = d_model, n_heads, n_kv_heads, d_model // n_heads
    self.use_rope, self.kernels, self.attend = use_rope, kernels, ref.scaled_dot_product_attention
    self.q_proj = ref.Linear(d_model, n_heads * self.head_dim, bias=False)
    self.k_proj = ref.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
    self.v_proj = ref.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
    self.o_proj = ref.Linear(n_heads * self.head_dim, d_model, bias=False)
    self.rotary = ref.RotaryEmbedding(self.head_dim, max_seq_len, rope_theta, rope_interleaved)


@mutant("attention.CausalSelfAttention", "test_rejects_zero_heads_and_zero_kv_heads",
        why="checks divisibility only: 0 heads divide by zero (ZeroDivisionError) instead of a ValueError")
class AttentionCheckingDivisibilityOnly(ref.CausalSelfAttention):
    def __init__(self, d_model, n_heads, n_kv_heads=None, max_seq_len=2048, rope_theta=10000.0,
                 rope_interleaved=False, use_rope=True, kernels=False):
        nn.Module.__init__(self)
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if d_model % n_heads or n_heads % n_kv_heads or (d_model // n_heads) % 2:
            raise ValueError(f"d_model = {d_model}, n_heads = {n_heads}, n_kv_heads = {n_kv_heads} do not fit")
        _unchecked_init(self, d_model, n_heads, n_kv_heads, max_seq_len, rope_theta, rope_interleaved, use_rope,
                        kernels)


@mutant("attention.CausalSelfAttention", "test_rejects_an_odd_head_dimension",
        why="leaves an odd head dimension to RoPE, whose error names head_dim 3 but not the d_model and n_heads given")
class AttentionLeavingTheEvenCheckToRope(ref.CausalSelfAttention):
    def __init__(self, d_model, n_heads, n_kv_heads=None, max_seq_len=2048, rope_theta=10000.0,
                 rope_interleaved=False, use_rope=True, kernels=False):
        nn.Module.__init__(self)
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads <= 0 or d_model % n_heads or n_kv_heads <= 0 or n_heads % n_kv_heads:
            raise ValueError(f"d_model = {d_model}, n_heads = {n_heads}, n_kv_heads = {n_kv_heads} do not fit")
        _unchecked_init(self, d_model, n_heads, n_kv_heads, max_seq_len, rope_theta, rope_interleaved, use_rope,
                        kernels)
