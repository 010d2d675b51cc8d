# Generated from reference/attention.py by `llmkata exercises`. This copy is yours: replace each stub.
"""Causal self-attention: the masked softmax, multi-head and grouped-query attention, a KV cache, and a tiled kernel.

Scaled dot-product attention of queries Q (Tq × d), keys K (Tk × d) and values V (Tk × dv):

    Attention(Q, K, V) = softmax(Q Kᵀ / √d + M) V,    M_ij = 0 where query i may see key j, −∞ where not.

Dividing by √d keeps the scores of unit-variance vectors at unit variance, so the softmax does not saturate.
A language model masks causally: the token at position t sees positions ≤ t only, so the output at t cannot depend
on anything after it, and one forward pass trains every position of a sequence at once.

This module builds, in order:
- `causal_mask` and `attention_weights` / `scaled_dot_product_attention`: the definition, for any leading batch
  dimensions, with a documented answer for a query that may see no key at all (weights 0, output 0, never NaN).
  The reference differentiates the attention by hand (`_AttentionFunction`: four matmuls and two passes over the
  scores, where autograd, following the formula step by step, makes several more); plain autograd is just as
  correct, and the spec checks the gradients against it;
- `repeat_kv` and `CausalSelfAttention`: multi-head attention with RoPE on queries and keys, and grouped-query
  attention (GQA: n_heads query heads share n_kv_heads key/value heads, n_kv_heads = n_heads is plain multi-head,
  n_kv_heads = 1 is multi-query attention);
- `KVCache`: the keys and values of the positions already seen, preallocated, one per layer, so that decoding a new
  token costs one row of attention instead of a whole new forward pass;
- `tiled_attention`: the flash-attention algorithm in plain PyTorch. It never builds the Tq × Tk score matrix: it
  walks over blocks of keys, keeping a running maximum and a running sum per query (the online softmax), and its
  backward pass recomputes the probabilities block by block from the saved log-sum-exp, so its extra memory grows
  as O(T), not O(T²).

Left out: dropout on the attention weights, sliding windows, ALiBi and other positional biases, paged caches,
padding masks inside CausalSelfAttention (batch elements are assumed to be full rows).
"""

import math

import torch
from torch import Tensor, nn

from .layers import Linear
from .rope import RotaryEmbedding

LOG2_E = math.log2(math.e)  # e^x = 2^(x·log₂e)
LN_2 = math.log(2.0)


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
    raise NotImplementedError('`attention.causal_mask` is not implemented yet — chapter 6 (attention): read spec/test_attention.py.')


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None = None, is_causal: bool = False,
                      scale: float | None = None) -> Tensor:
    """softmax(q kᵀ · scale) over the keys allowed by the mask: (..., Tq, Tk), every allowed row sums to 1.

    q: (..., Tq, d), k: (..., Tk, d), leading dimensions broadcast; scale defaults to 1/√d.
    mask: booleans broadcastable to (..., Tq, Tk), True = may attend. is_causal: query i sits at position
    Tk − Tq + i (the queries are the *last* Tq positions, as with a KV cache) and sees keys 0 .. Tk − Tq + i.
    Both may be given; a key is then allowed only where both allow it.

    A query that may see no key (a fully masked row) gets weights 0 everywhere: its softmax would be 0/0.
    """
    _check_same_dtype_and_device(q=q, k=k)
    if q.dim() < 2 or k.dim() < 2 or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q (..., Tq, d) and k (..., Tk, d) must share d; got shapes {tuple(q.shape)} and "
                         f"{tuple(k.shape)}")
    if mask is not None and mask.dtype != torch.bool:
        raise ValueError(f"mask must be boolean (True = may attend), got {mask.dtype}")
    raise NotImplementedError('`attention.attention_weights` is not implemented yet — chapter 6 (attention): read spec/test_attention.py.')


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                                 is_causal: bool = False, scale: float | None = None) -> Tensor:
    """softmax(q kᵀ / √d + mask) v: (..., Tq, dv), for q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv).

    Masking and scale as in `attention_weights`; a query that may see no key gets the output 0.
    """
    _check_same_dtype_and_device(q=q, k=k, v=v)
    if v.dim() < 2 or v.shape[-2] != k.shape[-2]:
        raise ValueError(f"k and v must have one row per key; got shapes {tuple(k.shape)} and {tuple(v.shape)}")
    raise NotImplementedError('`attention.scaled_dot_product_attention` is not implemented yet — chapter 6 (attention): read spec/test_attention.py.')


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, n_kv_heads, T, d) -> (B, n_kv_heads · n_rep, T, d): each key/value head serves n_rep query heads in a row.

    Query head h uses key/value head h // n_rep, the grouping of Hugging Face Llama. Example with 2 kv heads and
    n_rep = 2: heads [k0, k1] -> [k0, k0, k1, k1] (not [k0, k1, k0, k1]).
    """
    raise NotImplementedError('`attention.repeat_kv` is not implemented yet — chapter 6 (attention): read spec/test_attention.py.')


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
        raise NotImplementedError('`attention.KVCache.update` is not implemented yet — chapter 6 (attention): read spec/test_attention.py.')


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with RoPE and grouped-query attention (Hugging Face Llama names).

    x (B, T, d_model) -> q_proj, k_proj, v_proj -> heads -> RoPE on q and k -> causal attention per head
    -> concatenated heads -> o_proj -> (B, T, d_model). head_dim = d_model / n_heads; k_proj and v_proj make
    n_kv_heads heads, each shared by n_heads / n_kv_heads query heads. No biases, as in Llama.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, max_seq_len: int = 2048,
                 rope_theta: float = 10000.0, rope_interleaved: bool = False):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
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
        self.q_proj = Linear(d_model, n_heads * self.head_dim, bias=False)
        self.k_proj = Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = Linear(n_heads * self.head_dim, d_model, bias=False)
        self.rotary = RotaryEmbedding(self.head_dim, max_seq_len, rope_theta, rope_interleaved)

    def forward(self, x: Tensor, position_ids: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """x (B, T, d_model) -> (B, T, d_model).

        position_ids: (T,) or (B, T) integers; by default the next T positions after what the cache holds
        (0 .. T − 1 without a cache). With a cache, the new keys and values are appended to it and the T queries
        attend to everything it holds, causally.
        """
        raise NotImplementedError('`attention.CausalSelfAttention.forward` is not implemented yet — chapter 6 (attention): read spec/test_attention.py.')


# ---------------------------------------------------------------- tiled attention (flash-attention algorithm)


class _TiledAttention(torch.autograd.Function):
    """Tiled attention on (N, Tq, d) queries: forward returns (out, lse); backward recomputes P tile by tile.

    Online softmax, for one query row, visiting key blocks in turn with running max m, sum ℓ and output o:

        m' = max(m, max_j s_j),   ℓ' = ℓ·e^(m − m') + Σ_j e^(s_j − m'),   o' = o·e^(m − m') + Σ_j e^(s_j − m') v_j

    and at the end out = o / ℓ, lse = m + log ℓ. Backward, with P_ij = e^(s_ij − lse_i) recomputed per tile,
    dP_ij = dout_i · v_j and D_i = dout_i · out_i:  ds_ij = P_ij (dP_ij − D_i + dlse_i), because
    ∂out_i/∂s_ij = P_ij (v_j − out_i) and ∂lse_i/∂s_ij = P_ij.

    Both passes work in base 2, as flash-attention kernels do: with q pre-multiplied by scale · log₂e, the scores
    are s·log₂e and e^(s − m) = 2^(s·log₂e − m·log₂e). On a CPU torch.exp2 takes about half the time of torch.exp
    (and exp slows down several times on the −inf entries of a causal mask), and exponentials are the largest
    cost after the matmuls. The causal mask is added as a 0/−inf bias by the matmul itself (baddbmm), on the
    tiles that cross the diagonal only: masked_fill_ with a broadcast mask is several times slower
    (`pytest benchmarks/bench_attention.py -k choices` times both choices).
    """

    @staticmethod
    def forward(ctx, q, k, v, is_causal, block_size_q, block_size_k, scale):
        raise NotImplementedError('`attention._TiledAttention.forward` is not implemented yet — chapter 6 (attention): read spec/test_attention.py.')

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_lse):
        raise NotImplementedError('`attention._TiledAttention.backward` is not implemented yet — chapter 6 (attention): read spec/test_attention.py.')


def tiled_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = False, block_size_q: int = 128,
                    block_size_k: int = 256, scale: float | None = None) -> tuple[Tensor, Tensor]:
    """Attention computed block by block: (out (..., Tq, dv), lse (..., Tq)), never a Tq × Tk matrix.

    out equals scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale) and
    lse_i = log Σ_j exp(s_ij) over the keys query i may see (−inf, with out = 0, where it sees none).
    q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv) share their leading dimensions. Block sizes need not divide
    the lengths. Memory beyond inputs and outputs: one block of scores, O(T) forward and backward.
    Gradients flow to q, k and v from both outputs. The default blocks suit a CPU: a (batch·heads, 128, 256)
    float32 tile of scores is a few MB, large enough that each tensor operation amortises its dispatch cost.
    """
    _check_same_dtype_and_device(q=q, k=k, v=v)
    if q.dim() < 2 or q.shape[:-2] != k.shape[:-2] or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"tiled_attention needs q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv) with the same "
                         f"leading dimensions; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    for name, size in (("block_size_q", block_size_q), ("block_size_k", block_size_k)):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"{name} must be a positive integer, got {size}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    lead = q.shape[:-2]
    out, lse = _TiledAttention.apply(q.reshape(-1, *q.shape[-2:]), k.reshape(-1, *k.shape[-2:]),
                                     v.reshape(-1, *v.shape[-2:]), is_causal, block_size_q, block_size_k, scale)
    return out.reshape(*lead, *out.shape[-2:]), lse.reshape(*lead, lse.shape[-1])
