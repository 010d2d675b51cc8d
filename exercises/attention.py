# Generated from reference/attention.py by `llmkata exercises`. This copy is yours: replace each stub.
"""Causal self-attention: the masked softmax, multi-head and grouped-query attention, and a KV cache.

Scaled dot-product attention of queries Q (Tq × d), keys K (Tk × d) and values V (Tk × dv):

    Attention(Q, K, V) = softmax(Q Kᵀ / √d + M) V,    M_ij = 0 where query i may see key j, −∞ where not.

Dividing by √d keeps the scores of unit-variance vectors at unit variance, so the softmax does not saturate.
A language model masks causally: the token at position t sees positions ≤ t only, so the output at t cannot depend
on anything after it, and one forward pass trains every position of a sequence at once.

This module builds, in order:
- `causal_mask` and `attention_weights` / `scaled_dot_product_attention`: the definition, for any leading batch
  dimensions, with a documented answer for a query that may see no key at all (weights 0, output 0, never NaN);
  autograd differentiates it;
- `repeat_kv` and `CausalSelfAttention`: multi-head attention with RoPE on queries and keys, and grouped-query
  attention (GQA: n_heads query heads share n_kv_heads key/value heads, n_kv_heads = n_heads is plain multi-head,
  n_kv_heads = 1 is multi-query attention);
- `KVCache`: the keys and values of the positions already seen, preallocated, one per layer, so that decoding a new
  token costs one row of attention instead of a whole new forward pass.

The fast paths live in chapter 14 (`kernels`): the same attention with a hand-written backward pass, which
`CausalSelfAttention(kernels=True)` uses, and tiled (flash) attention, which never builds the Tq × Tk matrix.

Left out: dropout on the attention weights, sliding windows, ALiBi and other positional biases, paged caches,
padding masks inside CausalSelfAttention (batch elements are assumed to be full rows).
"""

import torch
from torch import Tensor, nn

from . import kernels as kernels_module
from .layers import Linear
from .rope import RotaryEmbedding


def _check_same_dtype_and_device(**tensors: Tensor) -> None:
    """One clear error when tensors that meet in a matmul disagree on dtype or device."""
    first_name, first = next(iter(tensors.items()))
    for name, tensor in tensors.items():
        if tensor.dtype != first.dtype:
            raise ValueError(f"{first_name} is {first.dtype} but {name} is {tensor.dtype}: cast them to one dtype")
        if tensor.device != first.device:
            raise ValueError(f"{first_name} is on {first.device} but {name} is on {tensor.device}: move them to one "
                             "device")


def causal_mask(n_queries: int, n_keys: int | None = None, offset: int = 0, device=None) -> Tensor:
    """(n_queries, n_keys) booleans, True where query i may attend to key j, that is where j ≤ i + offset.

    Query i sits at position offset + i; keys sit at positions 0 .. n_keys − 1. n_keys defaults to
    offset + n_queries: the queries are the last positions of the sequence, as when decoding with a cache.
    Example: causal_mask(2, offset=1) -> [[True, True, False], [True, True, True]]
    """
    raise NotImplementedError('`attention.causal_mask` is not implemented yet — chapter 6 (attention): see '
                              'test_causal_mask_lets_query_i_see_keys_up_to_i_plus_offset and 2 more in '
                              'spec/test_attention.py.')


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None = None, is_causal: bool = False,
                      scale: float | None = None) -> Tensor:
    """softmax(q kᵀ · scale) over the keys allowed by the mask: (..., Tq, Tk), every allowed row sums to 1.

    q: (..., Tq, d), k: (..., Tk, d), leading dimensions broadcast; scale defaults to 1/√d.
    mask: booleans broadcastable to (..., Tq, Tk), True = may attend. is_causal: query i sits at position
    Tk − Tq + i (the queries are the *last* Tq positions, as with a KV cache) and sees keys 0 .. Tk − Tq + i.
    Both may be given; a key is then allowed only where both allow it.

    A query that may see no key (a fully masked row) gets weights 0 everywhere: its softmax would be 0/0.
    """
    raise NotImplementedError('`attention.attention_weights` is not implemented yet — chapter 6 (attention): see '
                              'test_attention_weights_are_rows_summing_to_one and 5 more in spec/test_attention.py.')


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                                 is_causal: bool = False, scale: float | None = None) -> Tensor:
    """softmax(q kᵀ / √d + mask) v: (..., Tq, dv), for q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv).

    Masking and scale as in `attention_weights`; a query that may see no key gets the output 0.
    """
    raise NotImplementedError('`attention.scaled_dot_product_attention` is not implemented yet — chapter 6 '
                              '(attention): see test_attention_equals_softmax_of_scaled_scores_times_v_in_float64 and '
                              '7 more in spec/test_attention.py.')


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, n_kv_heads, T, d) -> (B, n_kv_heads · n_rep, T, d): each key/value head serves n_rep query heads in a row.

    Query head h uses key/value head h // n_rep, the grouping of Hugging Face Llama. Example with 2 kv heads and
    n_rep = 2: heads [k0, k1] -> [k0, k0, k1, k1] (not [k0, k1, k0, k1]).
    """
    raise NotImplementedError('`attention.repeat_kv` is not implemented yet — chapter 6 (attention): see '
                              'test_repeat_kv_gives_query_head_h_the_kv_head_h_over_n_rep in spec/test_attention.py.')


class KVCache:
    """The keys and values one attention layer has seen, in buffers preallocated for max_seq_len positions.

    k and v are (batch_size, n_kv_heads, max_seq_len, head_dim); positions 0 .. length − 1 are filled. Keys are
    cached after RoPE, so a cached key never needs rotating again. A model holds one cache per layer.
    """

    def __init__(self, batch_size: int, n_kv_heads: int, head_dim: int, max_seq_len: int,
                 dtype: torch.dtype = torch.float32, device=None):
        self.k = torch.zeros(batch_size, n_kv_heads, max_seq_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    @property
    def max_seq_len(self) -> int:
        return self.k.shape[2]

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, n_kv_heads, T, head_dim) at the next T positions; return every key and value so far.

        The returned tensors are views (B, n_kv_heads, length, head_dim) of the buffers, valid until the next update.
        """
        raise NotImplementedError('`attention.KVCache.update` is not implemented yet — chapter 6 (attention): see '
                                  'test_cached_decoding_equals_the_full_forward_at_any_split and 5 more in '
                                  'spec/test_attention.py.')


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with RoPE and grouped-query attention (Hugging Face Llama names).

    x (B, T, d_model) -> q_proj, k_proj, v_proj -> heads -> RoPE on q and k -> causal attention per head
    -> concatenated heads -> o_proj -> (B, T, d_model). head_dim = d_model / n_heads; k_proj and v_proj make
    n_kv_heads heads, each shared by n_heads / n_kv_heads query heads. No biases, as in Llama. use_rope=False
    leaves q and k unrotated (a model without position information, or one that adds it elsewhere). The heads attend
    through `self.attend`: scaled_dot_product_attention, or with kernels=True chapter 14's `kernels.attention`
    (on a CUDA GPU with Triton installed, `kernels.flash_attention`, which shares kv heads without copies).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, max_seq_len: int = 2048,
                 rope_theta: float = 10000.0, rope_interleaved: bool = False, use_rope: bool = True,
                 kernels: bool = False):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        raise NotImplementedError('`attention.CausalSelfAttention.__init__` is not implemented yet — chapter 6 '
                                  '(attention): see test_attention_without_rope_sees_no_positions and 13 more in '
                                  'spec/test_attention.py.')
        self.use_rope, self.kernels = use_rope, kernels
        # The attention itself: the definition, or chapter 14's with a hand-written backward pass (the same numbers).
        self.attend = kernels_module.attention if kernels else scaled_dot_product_attention
        self.q_proj = Linear(d_model, n_heads * self.head_dim, bias=False)
        self.k_proj = Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = Linear(n_heads * self.head_dim, d_model, bias=False)
        self.rotary = RotaryEmbedding(self.head_dim, max_seq_len, rope_theta, rope_interleaved, kernels=kernels)

    def forward(self, x: Tensor, position_ids: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """x (B, T, d_model) -> (B, T, d_model).

        position_ids: (T,) or (B, T) integers; by default the next T positions after what the cache holds
        (0 .. T − 1 without a cache). With a cache, the new keys and values are appended to it and the T queries
        attend to everything it holds, causally.
        """
        raise NotImplementedError('`attention.CausalSelfAttention.forward` is not implemented yet — chapter 6 '
                                  '(attention): see test_attention_without_rope_sees_no_positions and 13 more in '
                                  'spec/test_attention.py.')
