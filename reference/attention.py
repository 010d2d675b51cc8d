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

import math

import torch
from torch import Tensor, nn

from . import kernels as kernels_module
from .layers import Linear, softmax
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
    # BEGIN SOLUTION
    if n_keys is None:
        n_keys = offset + n_queries
    if n_queries < 0 or n_keys < 0:
        raise ValueError(f"a mask needs non-negative sizes, got {n_queries} queries and {n_keys} keys")
    query_positions = torch.arange(n_queries, device=device)[:, None] + offset  # (n_queries, 1)
    key_positions = torch.arange(n_keys, device=device)[None, :]  # (1, n_keys)
    return key_positions <= query_positions
    # END SOLUTION


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None = None, is_causal: bool = False,
                      scale: float | None = None) -> Tensor:
    """softmax(q kᵀ · scale) over the keys allowed by the mask: (..., Tq, Tk), every allowed row sums to 1.

    q: (..., Tq, d), k: (..., Tk, d), leading dimensions broadcast; scale defaults to 1/√d.
    mask: booleans broadcastable to (..., Tq, Tk), True = may attend. is_causal: query i sits at position
    Tk − Tq + i (the queries are the *last* Tq positions, as with a KV cache) and sees keys 0 .. Tk − Tq + i.
    Both may be given; a key is then allowed only where both allow it.

    A query that may see no key (a fully masked row) gets weights 0 everywhere: its softmax would be 0/0.
    """
    # BEGIN SOLUTION
    _check_same_dtype_and_device(q=q, k=k)
    if q.dim() < 2 or k.dim() < 2 or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q (..., Tq, d) and k (..., Tk, d) must share d; got shapes {tuple(q.shape)} and "
                         f"{tuple(k.shape)}")
    if mask is not None and mask.dtype != torch.bool:
        raise ValueError(f"mask must be boolean (True = may attend), got {mask.dtype}")
    n_queries, n_keys = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., Tq, Tk)
    allowed = mask
    if is_causal:
        causal = causal_mask(n_queries, n_keys, offset=n_keys - n_queries, device=q.device)
        allowed = causal if allowed is None else allowed & causal
    if allowed is None:
        return softmax(scores, dim=-1)
    scores = scores.masked_fill(~allowed, float("-inf"))
    # The subtle case: a query that may see no key. Its row is all −inf, and softmax would give 0/0 = NaN, with NaN
    # gradients. Give such a row finite scores (0), then multiply its weights by 0.
    sees_a_key = allowed.any(dim=-1, keepdim=True)  # (..., Tq, 1)
    scores = scores.masked_fill(~sees_a_key, 0.0)
    return softmax(scores, dim=-1) * sees_a_key
    # END SOLUTION


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                                 is_causal: bool = False, scale: float | None = None) -> Tensor:
    """softmax(q kᵀ / √d + mask) v: (..., Tq, dv), for q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv).

    Masking and scale as in `attention_weights`; a query that may see no key gets the output 0.
    """
    # BEGIN SOLUTION
    _check_same_dtype_and_device(q=q, v=v)  # and attention_weights checks k against q
    if v.dim() < 2 or v.shape[-2] != k.shape[-2]:
        raise ValueError(f"k and v must have one row per key; got shapes {tuple(k.shape)} and {tuple(v.shape)}")
    return attention_weights(q, k, mask=mask, is_causal=is_causal, scale=scale) @ v  # (..., Tq, dv)
    # END SOLUTION


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, n_kv_heads, T, d) -> (B, n_kv_heads · n_rep, T, d): each key/value head serves n_rep query heads in a row.

    Query head h uses key/value head h // n_rep, the grouping of Hugging Face Llama. Example with 2 kv heads and
    n_rep = 2: heads [k0, k1] -> [k0, k0, k1, k1] (not [k0, k1, k0, k1]).
    """
    # BEGIN SOLUTION
    if n_rep == 1:
        return x
    batch, n_kv_heads, length, head_dim = x.shape
    x = x[:, :, None].expand(batch, n_kv_heads, n_rep, length, head_dim)  # a view, no copy yet
    return x.reshape(batch, n_kv_heads * n_rep, length, head_dim)
    # END SOLUTION


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
        # BEGIN SOLUTION
        _check_same_dtype_and_device(cache=self.k, k=k, v=v)
        expected = (self.k.shape[0], self.k.shape[1], k.shape[2], self.k.shape[3])
        if k.shape != expected or v.shape != expected:
            raise ValueError(f"this cache stores (batch, heads, T, head_dim) = {expected[:2]} + (T,) + {expected[3:]}; "
                             f"got k {tuple(k.shape)} and v {tuple(v.shape)}")
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_seq_len:
            raise ValueError(f"the KV cache holds {self.max_seq_len} positions and {start} are filled: "
                             f"{k.shape[2]} more do not fit")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]
        # END SOLUTION


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
        # BEGIN SOLUTION
        if n_heads <= 0 or d_model % n_heads:
            raise ValueError(f"d_model = {d_model} must split evenly into n_heads = {n_heads} heads")
        if n_kv_heads <= 0 or n_heads % n_kv_heads:
            raise ValueError(f"n_heads = {n_heads} query heads must split evenly into groups over "
                             f"n_kv_heads = {n_kv_heads} key/value heads")
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        if self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension; d_model = {d_model} / n_heads = {n_heads} "
                             f"gives {self.head_dim}")
        # END SOLUTION
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
        # BEGIN SOLUTION
        batch, length, _ = x.shape
        offset = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(offset, offset + length, device=x.device)  # (T,)
        positions = position_ids if position_ids.dim() == 1 else position_ids[:, None, :]  # broadcast over heads

        q = self.q_proj(x).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        v = self.v_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        if self.use_rope:
            q, k = self.rotary(q, positions), self.rotary(k, positions)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, KV, offset + T, hd)

        # The T queries are the last T of the offset + T keys: is_causal aligns them to the end.
        if self.kernels and kernels_module._flash_runs(q):  # on a GPU: Triton, each kv head read by its group
            out = kernels_module.flash_attention(q, k, v, is_causal=True)[0]
        else:
            n_rep = self.n_heads // self.n_kv_heads
            k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, offset + T, hd)
            out = self.attend(q, k, v, is_causal=True)  # (B, H, T, hd)
        out = out.transpose(1, 2).reshape(batch, length, self.n_heads * self.head_dim)  # (B, T, H·hd)
        return self.o_proj(out)
        # END SOLUTION
