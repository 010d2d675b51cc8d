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
    # BEGIN SOLUTION
    if n_keys is None:
        n_keys = offset + n_queries
    if n_queries < 0 or n_keys < 0:
        raise ValueError(f"a mask needs non-negative sizes, got {n_queries} queries and {n_keys} keys")
    query_positions = torch.arange(n_queries, device=device)[:, None] + offset  # (n_queries, 1)
    key_positions = torch.arange(n_keys, device=device)[None, :]  # (1, n_keys)
    return key_positions <= query_positions
    # END SOLUTION


# BEGIN SOLUTION
def _attention_bias(q: Tensor, k: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor | None:
    """The allowed keys as an additive bias, 0 where a query may attend and −inf where not, broadcastable to
    (..., Tq, Tk); None when every key is allowed.

    Adding the bias M rather than filling the scores: the gradient of a sum passes through unchanged, where
    masked_fill's backward pass would make one more (Tq, Tk) pass to zero it.
    """
    n_queries, n_keys = q.shape[-2], k.shape[-2]
    allowed = mask
    if is_causal:
        causal = causal_mask(n_queries, n_keys, offset=n_keys - n_queries, device=q.device)
        allowed = causal if allowed is None else allowed & causal
    if allowed is None:
        return None
    return torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill_(~allowed, float("-inf"))


class _AttentionFunction(torch.autograd.Function):
    """softmax(q kᵀ · scale + bias) v on (N, Tq, d) batches, with a hand-written backward pass.

    The forward pass keeps the weights P (N, Tq, Tk), as autograd would. With out_i = Σ_j P_ij v_j and
    D_i = dout_i · out_i, the backward pass is four matmuls and two elementwise passes:

        dv = Pᵀ dout,   dP = dout vᵀ,   ds = P ⊙ (dP − D),   dq = scale · ds k,   dk = scale · dsᵀ q

    because ∂out_i/∂s_ij = P_ij (v_j − out_i): the softmax's Jacobian, diag(P_i) − P_i P_iᵀ, applied to dP_i.
    Autograd, differentiating the formula step by step, makes several more passes over the (Tq, Tk) scores.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, scale):
        q_base2 = q * (scale * LOG2_E)  # scores in base 2, as in attention_weights
        if bias is None:
            scores = torch.bmm(q_base2, k.transpose(1, 2))  # (N, Tq, Tk)
        else:
            scores = torch.baddbmm(bias, q_base2, k.transpose(1, 2))  # the bias added by the matmul itself
        row_max = scores.amax(-1, keepdim=True)
        row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)  # a fully masked row: weights 0, not NaN
        probabilities = scores.sub_(row_max).exp2_()  # in place: the scores are not needed again
        total = probabilities.sum(-1, keepdim=True)
        probabilities.mul_(torch.where(total > 0, total, 1.0).reciprocal_())
        out = torch.bmm(probabilities, v)  # (N, Tq, dv)
        ctx.save_for_backward(q, k, v, probabilities, out)
        ctx.scale = scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, probabilities, out = ctx.saved_tensors
        grad_out = grad_out.contiguous()  # it may arrive as a transposed view; bmm wants rows
        grad_v = torch.bmm(probabilities.transpose(1, 2), grad_out)
        row_term = (grad_out * out).sum(-1, keepdim=True)  # D_i, (N, Tq, 1)
        grad_s = torch.bmm(grad_out, v.transpose(1, 2)).sub_(row_term).mul_(probabilities)  # in place over dP
        grad_q = torch.bmm(grad_s, k).mul_(ctx.scale)
        grad_k = torch.bmm(grad_s.transpose(1, 2), q).mul_(ctx.scale)
        return grad_q, grad_k, grad_v, None, None
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
    _check_same_dtype_and_device(q=q, k=k)
    if q.dim() < 2 or k.dim() < 2 or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q (..., Tq, d) and k (..., Tk, d) must share d; got shapes {tuple(q.shape)} and "
                         f"{tuple(k.shape)}")
    if mask is not None and mask.dtype != torch.bool:
        raise ValueError(f"mask must be boolean (True = may attend), got {mask.dtype}")
    # BEGIN SOLUTION
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    # (q · scale) kᵀ = (q kᵀ) · scale, but scaling q touches Tq × d numbers instead of Tq × Tk. The extra factor
    # log₂e puts the scores in base 2: e^(s − m) = 2^((s − m)·log₂e), and torch.exp2 is about twice as fast as
    # torch.exp on a CPU (which also slows down several times on the −inf entries of a mask).
    scores = (q * (scale * LOG2_E)) @ k.transpose(-2, -1)  # (..., Tq, Tk)
    bias = _attention_bias(q, k, mask, is_causal)
    if bias is not None:
        scores = scores + bias
    # Subtracting the row max only keeps exp from overflowing: the softmax does not depend on it, so no gradient
    # needs to flow through it, and detaching it spares the backward pass of amax (a T × T comparison).
    row_max = scores.amax(-1, keepdim=True).detach()  # (..., Tq, 1)
    # The subtle case: in a fully masked row the max is −inf and exp(−inf − (−inf)) is NaN. Subtracting 0 there
    # instead gives exp(−inf) = 0 everywhere, and dividing by 1 instead of the empty sum keeps the row at 0.
    # (layers.softmax, written for unmasked rows, would return NaN here, and NaN gradients.)
    row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)
    probabilities = (scores - row_max).exp2_()  # in place: the difference is a temporary nothing else keeps
    total = probabilities.sum(-1, keepdim=True)  # (..., Tq, 1)
    # One reciprocal per row, then a product: the backward pass of a product over the (Tq, Tk) scores is cheaper
    # than that of a quotient.
    return probabilities * torch.where(total > 0, total, 1.0).reciprocal()
    # END SOLUTION


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                                 is_causal: bool = False, scale: float | None = None) -> Tensor:
    """softmax(q kᵀ / √d + mask) v: (..., Tq, dv), for q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv).

    Masking and scale as in `attention_weights`; a query that may see no key gets the output 0.
    """
    _check_same_dtype_and_device(q=q, k=k, v=v)
    if v.dim() < 2 or v.shape[-2] != k.shape[-2]:
        raise ValueError(f"k and v must have one row per key; got shapes {tuple(k.shape)} and {tuple(v.shape)}")
    # BEGIN SOLUTION
    lead, n_queries, n_keys = q.shape[:-2], q.shape[-2], k.shape[-2]
    bias = _attention_bias(q, k, mask, is_causal)
    mask_lead = () if bias is None else bias.shape[:-2]
    if k.shape[:-2] != lead or v.shape[:-2] != lead or torch.broadcast_shapes(mask_lead, lead) != lead:
        # leading dimensions that broadcast against each other: the definition, differentiated by autograd
        return attention_weights(q, k, mask=mask, is_causal=is_causal, scale=scale) @ v
    if bias is not None and bias.dim() > 2:
        bias = bias.expand(*lead, n_queries, n_keys).reshape(-1, n_queries, n_keys)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = _AttentionFunction.apply(q.reshape(-1, n_queries, q.shape[-1]), k.reshape(-1, n_keys, k.shape[-1]),
                                   v.reshape(-1, n_keys, v.shape[-1]), bias, scale)
    return out.reshape(*lead, n_queries, v.shape[-1])
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
        # BEGIN SOLUTION
        batch, length, _ = x.shape
        offset = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(offset, offset + length, device=x.device)  # (T,)
        positions = position_ids if position_ids.dim() == 1 else position_ids[:, None, :]  # broadcast over heads

        # The three projections as one matmul: their weights stacked (a copy of 3·d_model² numbers at most, few
        # beside the B·T·d_model activations), so x is read once and the backward pass makes one product for dx.
        weight = torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))  # (H·hd + 2·KV·hd, d_model)
        q, k, v = (x @ weight.T).split((self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim,
                                        self.n_kv_heads * self.head_dim), dim=-1)
        q = q.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        v = v.view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        q, k = self.rotary(q, positions), self.rotary(k, positions)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, KV, offset + T, hd)

        n_rep = self.n_heads // self.n_kv_heads
        # The T queries are the last T of the offset + T keys: is_causal aligns them to the end.
        out = scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), is_causal=True)
        out = out.transpose(1, 2).reshape(batch, length, self.n_heads * self.head_dim)  # (B, T, H·hd)
        return self.o_proj(out)
        # END SOLUTION


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
        # BEGIN SOLUTION
        n, n_queries, _ = q.shape
        n_keys, value_dim = k.shape[1], v.shape[2]
        offset = n_keys - n_queries  # query i sits at position offset + i (the queries are the last positions)
        acc_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        out = torch.empty(n, n_queries, value_dim, dtype=q.dtype, device=q.device)
        lse = torch.empty(n, n_queries, dtype=acc_dtype, device=q.device)
        lowest = torch.finfo(acc_dtype).min

        for i0 in range(0, n_queries, block_size_q):
            i1 = min(i0 + block_size_q, n_queries)
            q_block = q[:, i0:i1] * (scale * LOG2_E)  # (n, bq, d): scores in base 2
            # Start the running max at the lowest finite number, not −inf: then a row whose keys so far were all
            # masked gets 2^(−inf − lowest) = 0 instead of 2^(−inf + inf) = NaN.
            row_max = torch.full((n, i1 - i0), lowest, dtype=acc_dtype, device=q.device)
            row_sum = torch.zeros(n, i1 - i0, dtype=acc_dtype, device=q.device)
            acc = torch.zeros(n, i1 - i0, value_dim, dtype=acc_dtype, device=q.device)
            # Causal: keys after the last query's position are never seen by this block; skip them entirely.
            key_end = min(n_keys, i1 + offset) if is_causal else n_keys
            for j0 in range(0, max(key_end, 0), block_size_k):
                j1 = min(j0 + block_size_k, key_end)
                scores = _tile_scores(q_block, k[:, j0:j1], is_causal, i0 + offset - j0).to(acc_dtype)  # (n, bq, bk)
                new_max = torch.maximum(row_max, scores.amax(-1))  # (n, bq)
                correction = torch.exp2(row_max - new_max)  # rescales what was summed under the old max
                probabilities = scores.sub_(new_max[..., None]).exp2_()  # in place: (n, bq, bk)
                row_sum.mul_(correction).add_(probabilities.sum(-1))
                # out of place: a (n, bq, dv) copy is cheap, and a FLOP counter sees the matmul (in-place it misses it)
                acc = torch.baddbmm(acc.mul_(correction[..., None]), probabilities, v[:, j0:j1].to(acc_dtype))
                row_max = new_max
            # A query that saw no key: row_sum = 0, output 0 and lse = −inf (as attention_weights documents).
            seen = row_sum > 0
            out[:, i0:i1] = (acc / torch.where(seen, row_sum, 1.0)[..., None]).to(q.dtype)
            lse[:, i0:i1] = torch.where(seen, (row_max + row_sum.log2()) * LN_2, float("-inf"))

        ctx.save_for_backward(q, k, v, out, lse)
        ctx.settings = (is_causal, block_size_q, block_size_k, scale)
        return out, lse
        # END SOLUTION

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_lse):
        # BEGIN SOLUTION
        q, k, v, out, lse = ctx.saved_tensors
        is_causal, block_size_q, block_size_k, scale = ctx.settings
        n_queries, n_keys = q.shape[1], k.shape[1]
        offset = n_keys - n_queries
        acc_dtype = lse.dtype
        q, k, v = q.to(acc_dtype), k.to(acc_dtype), v.to(acc_dtype)
        grad_out = grad_out.to(acc_dtype).contiguous()  # it may arrive as a transposed view; bmm wants rows
        # D_i = dout_i · out_i, minus dlse_i: the two terms every ds_ij of row i subtracts.
        row_term = (grad_out * out.to(acc_dtype)).sum(-1) - grad_lse  # (n, Tq)
        # Rows that saw no key have lse = −inf; their scores are all −inf too, and P = 2^(−inf − 0) = 0.
        lse = torch.where(torch.isfinite(lse), lse * LOG2_E, 0.0)  # base 2, as the scores below
        grad_q, grad_k, grad_v = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)

        for i0 in range(0, n_queries, block_size_q):
            i1 = min(i0 + block_size_q, n_queries)
            q_block, dout_block = q[:, i0:i1], grad_out[:, i0:i1]  # (n, bq, d), (n, bq, dv)
            q_block_base2 = q_block * (scale * LOG2_E)
            key_end = min(n_keys, i1 + offset) if is_causal else n_keys
            for j0 in range(0, max(key_end, 0), block_size_k):
                j1 = min(j0 + block_size_k, key_end)
                k_block, v_block = k[:, j0:j1], v[:, j0:j1]
                scores = _tile_scores(q_block_base2, k_block, is_causal, i0 + offset - j0)  # (n, bq, bk)
                probabilities = scores.sub_(lse[:, i0:i1, None]).exp2_()  # exact softmax rows, recomputed
                grad_v[:, j0:j1].baddbmm_(probabilities.transpose(1, 2), dout_block)
                grad_p = torch.bmm(dout_block, v_block.transpose(1, 2))  # (n, bq, bk)
                grad_s = grad_p.sub_(row_term[:, i0:i1, None]).mul_(probabilities)  # in place: dP no longer needed
                # s = scale · q kᵀ, so dq = scale · ds k and dk = scale · dsᵀ q
                grad_q[:, i0:i1].baddbmm_(grad_s, k_block, alpha=scale)
                grad_k[:, j0:j1].baddbmm_(grad_s.transpose(1, 2), q_block, alpha=scale)

        dtype = ctx.saved_tensors[0].dtype
        return grad_q.to(dtype), grad_k.to(dtype), grad_v.to(dtype), None, None, None, None
        # END SOLUTION


# BEGIN SOLUTION
def _tile_scores(q_block: Tensor, k_block: Tensor, is_causal: bool, diagonal: int) -> Tensor:
    """q_block k_blockᵀ (n, bq, bk), with −inf where key jj is after query ii when causal: jj − ii > diagonal.

    diagonal is the position of the block's first query minus that of its first key. A tile wholly on or below
    the diagonal needs no mask; one that crosses it gets the 0/−inf bias added inside the matmul.
    """
    n_queries, n_keys = q_block.shape[1], k_block.shape[1]
    if not is_causal or n_keys - 1 <= diagonal:
        return torch.bmm(q_block, k_block.transpose(1, 2))
    bias = torch.full((n_queries, n_keys), float("-inf"), dtype=q_block.dtype, device=q_block.device)
    return torch.baddbmm(bias.triu_(diagonal + 1), q_block, k_block.transpose(1, 2))
# END SOLUTION


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
