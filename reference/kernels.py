"""Kernels: the fast paths of earlier chapters, each equal to the definition its own chapter gives.

An advanced chapter, for after chapter 10. Every function here computes exactly what a plain definition elsewhere
computes; what changes is how much memory it touches and how often:

- hand-written backward passes (`torch.autograd.Function`s) for RMSNorm and the SwiGLU product (chapter 4), the
  RoPE rotation (chapter 5), cross-entropy (chapter 8) and attention (chapter 6). Autograd, differentiating a
  formula step by step, saves one tensor per operation and reads each again in the backward pass; the derivative
  written out saves fewer and makes fewer passes;
- tiled (flash) attention: never builds the Tq × Tk score matrix, so its extra memory grows as O(T), not O(T²);
- the incremental BPE trainer (chapter 2): pre-token counts in worker processes, and a heap of pair counts updated
  only where a merge changes something, instead of recounting every pair after every merge.

The model reaches these through one switch, `ModelConfig(kernels=True)` (and the `kernels=` argument of RMSNorm,
SwiGLU, RotaryEmbedding and CausalSelfAttention); the trainer uses `cross_entropy` below for such a model, and
`llmkata train` uses `train_bpe` below. The spec checks each kernel against its definition in float64: values and
gradients, for shapes that are not multiples of any block, Tq ≠ Tk and fully masked rows.

Left out: GPU kernels (Triton), fused optimizers, and kernels for inference only (paged KV caches).
"""

import heapq
import math
import multiprocessing
import os
import warnings
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import chain
from operator import add
from pathlib import Path

import torch
from torch import Tensor

from .tokenizer import (Tokenizer, _check_special_tokens, _check_text, _check_vocab_size, _PreTokenizer,
                        _resolve_pattern, _sources, _special_regex)

# BEGIN SOLUTION
_LOG2_E = math.log2(math.e)  # e^x = 2^(x·log₂e)
_LN_2 = math.log(2.0)
# END SOLUTION


# ------------------------------------------------------------------------------------------------------ RMSNorm


class RMSNormFunction(torch.autograd.Function):
    """y = x̂ · w with x̂ = x · r, r = 1/sqrt(mean(x²) + eps) one number per row, and its backward pass.

    apply(x (..., n), weight (n,), eps) -> (..., n), computed in float32 at least and returned in the promoted
    dtype of x and weight. With g = dy · w:  ∂r/∂x_j = −r³ x_j / n, hence

        dx = r · g − x · r³ mean(g · x) = r · (g − x̂ · mean(g · x̂)),    dw = Σ_rows dy · x̂.

    Save x, w and r, not x̂ (x̂ = x · r folds into the products); both sums over p = dy · x are matrix-vector
    products: Σ_rows dy · x̂ = pᵀ r and Σ_j g_j x_j = p w.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        # BEGIN SOLUTION
        dtype = torch.promote_types(torch.promote_types(x.dtype, torch.float32), weight.dtype)  # float32 at least
        x32 = x.to(dtype)
        n = x.shape[-1]
        # ‖x‖² / n = mean(x²), in one pass over x (no x² tensor)
        rms_inv = torch.linalg.vector_norm(x32, dim=-1, keepdim=True).square_().div_(n).add_(eps).rsqrt_()  # (..., 1)
        ctx.save_for_backward(x, weight, rms_inv)
        y = torch.mul(x32, rms_inv).mul_(weight)
        return y.to(torch.promote_types(x.dtype, weight.dtype))
        # END SOLUTION

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        # BEGIN SOLUTION
        x, weight, rms_inv = ctx.saved_tensors
        dtype, n = rms_inv.dtype, x.shape[-1]
        x32, grad, w = x.to(dtype), grad.to(dtype), weight.to(dtype)
        p = (grad * x32).reshape(-1, n)  # (rows, n): dy · x
        r = rms_inv.reshape(-1)  # (rows,)
        grad_weight = p.T @ r  # Σ_rows dy · x · r = Σ_rows dy · x̂
        correction = (p @ w).mul_(r * r / -n)  # −r² mean(g · x), per row
        # dx = r · (g − x · r² mean(g · x)), with g = dy · w
        grad_x = torch.mul(x32, correction.view(rms_inv.shape)).addcmul_(grad, w).mul_(rms_inv)
        return grad_x.to(x.dtype), grad_weight.to(weight.dtype), None
        # END SOLUTION


# ------------------------------------------------------------------------------------------------------- SwiGLU


class SwiGLUFunction(torch.autograd.Function):
    """h = SiLU(gate) · up = gate · s · up with s = σ(gate), and its backward pass.

    apply(gate, up) -> h, all of one shape. σ' = s (1 − s), so SiLU'(gate) = s + SiLU(gate) · (1 − s), and

        dup = dh · SiLU(gate),    dgate = dh · up · (s + SiLU(gate) · (1 − s)).

    The sigmoid, the one costly (exponential) pass, is computed once and saved; autograd of x · σ(x) computes it
    again in its backward pass. Half precision is computed in float32 and rounded once.
    """

    @staticmethod
    def forward(ctx, gate: Tensor, up: Tensor) -> Tensor:
        # BEGIN SOLUTION
        wide = torch.promote_types(gate.dtype, torch.float32)  # half precision: computed in float32, rounded once
        s = torch.sigmoid(gate.to(wide))
        ctx.save_for_backward(gate, up, s)
        return torch.mul(gate, s).mul_(up).to(torch.promote_types(gate.dtype, up.dtype))
        # END SOLUTION

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        # BEGIN SOLUTION
        gate, up, s = ctx.saved_tensors
        grad = grad.to(s.dtype)
        silu_gate = gate * s
        grad_up = grad * silu_gate
        # SiLU'(gate) = s + SiLU · (1 − s) = lerp(s, 1, SiLU), written over silu_gate, no longer needed
        derivative = torch.lerp(s, s.new_ones(()), silu_gate, out=silu_gate)
        return derivative.mul_(grad).mul_(up).to(gate.dtype), grad_up.to(up.dtype)
        # END SOLUTION


# --------------------------------------------------------------------------------------------- the RoPE rotation


# BEGIN SOLUTION
def _rotate_into(out: Tensor, x: Tensor, cos: Tensor, sin: Tensor, sign: float, interleaved: bool) -> Tensor:
    """Write into `out` the pairs of x turned by the angle whose cosine is cos and whose sine is sign · sin."""
    if interleaved:
        x1, x2, out1, out2 = x[..., 0::2], x[..., 1::2], out[..., 0::2], out[..., 1::2]  # (..., d/2) views
    else:
        half = x.shape[-1] // 2
        x1, x2, out1, out2 = x[..., :half], x[..., half:], out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=out1).addcmul_(x2, sin, value=-sign)  # x₁ cos − x₂ sin
    torch.mul(x2, cos, out=out2).addcmul_(x1, sin, value=sign)  # x₁ sin + x₂ cos
    return out
# END SOLUTION


class RotateFunction(torch.autograd.Function):
    """y = R x, R turning every pair of coordinates by its angle (rope.rotate), and its backward pass.

    apply(x (..., d), cos (..., d/2), sin (..., d/2), interleaved) -> (..., d), the tables broadcasting against x.
    A rotation is orthogonal: its Jacobian is R, and Rᵀ = R⁻¹ is the rotation by the opposite angle, so
    dx = Rᵀ dy turns the pairs of dy by (cos, −sin). Both passes write the two coordinates of every pair straight
    into the result (out=, addcmul_): no cat or stack, and no temporary per product. cos and sin get no gradient.
    Half precision is rotated in float32 and rounded once: x₁ cos − x₂ sin rounded term by term can cancel badly.
    """

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
        # BEGIN SOLUTION
        dtype = torch.promote_types(x.dtype, torch.promote_types(cos.dtype, sin.dtype))
        wide = torch.promote_types(dtype, torch.float32)  # half precision is rotated in float32, rounded once
        # the tables may broadcast to more leading dimensions than x has
        shape = (*torch.broadcast_shapes(x.shape[:-1], cos.shape[:-1], sin.shape[:-1]), x.shape[-1])
        cos, sin = cos.to(wide), sin.to(wide)
        ctx.save_for_backward(cos, sin)
        ctx.interleaved, ctx.x_shape, ctx.x_dtype = interleaved, x.shape, x.dtype
        out = torch.empty(shape, dtype=wide, device=x.device)
        return _rotate_into(out, x.to(wide), cos, sin, 1.0, interleaved).to(dtype)
        # END SOLUTION

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        # BEGIN SOLUTION
        cos, sin = ctx.saved_tensors
        grad = grad.to(cos.dtype)
        grad_x = _rotate_into(torch.empty_like(grad), grad, cos, sin, -1.0, ctx.interleaved)
        # summed over the leading dimensions that x was broadcast along, if any
        return grad_x.sum_to_size(ctx.x_shape).to(ctx.x_dtype), None, None, None
        # END SOLUTION


# ------------------------------------------------------------------------------------------------ cross-entropy


class CrossEntropyFunction(torch.autograd.Function):
    """The mean cross-entropy of logits z (N, V) against targets y (N,), rows whose target is ignore_index left out.

    With n counted rows and p_i = softmax(z_i), L = (1/n) Σ_{i counted} (logsumexp(z_i) − z_i[y_i]). Since
    ∂ logsumexp(z)/∂z_j = p_j and ∂ z[y]/∂z_j = [j = y], the gradient of row i is

        ∂L/∂z_i = (p_i − onehot(y_i)) · g / n   on a counted row,   0 on an ignored one   (g: the upstream gradient).

    The forward pass writes one (N, V) buffer, e_ij = exp(z_ij − m_i), and keeps it; the backward pass scales it in
    place by g / (n Σ_j e_ij), one factor per row (0 on ignored rows), and subtracts g/n at each target. The buffer
    becomes the gradient, so backward runs only once. Every target that is not ignore_index is a valid id.
    Half-precision logits are computed in float32: the loss is float32, their gradient comes back in their dtype.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, ignore_index: int) -> Tensor:
        # BEGIN SOLUTION
        ctx.logits_dtype = logits.dtype
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half precision: computed in float32
        counted = targets != ignore_index  # (N,)
        targets = torch.where(counted, targets, 0)  # any valid id: the row is dropped from the sum
        row_max = logits.amax(dim=-1, keepdim=True)  # (N, 1)
        # e^(z − m) = 2^((z − m)·log₂e): exp2 takes about half the time of exp on a CPU. z − m is formed first,
        # exactly, and only that small number is scaled, so logits of 1e4 lose no digits.
        exps = torch.sub(logits, row_max).mul_(_LOG2_E).exp2_()  # (N, V), in (0, 1]; 1 at the row max
        sums = exps.sum(dim=-1)  # (N,): Σ_j e^(z_j − m), between 1 and V
        target_logits = logits.gather(-1, targets[:, None]).squeeze(-1) - row_max.squeeze(-1)  # (N,): z[y] − m
        nll = torch.where(counted, sums.log() - target_logits, 0.0)  # (N,)
        ctx.save_for_backward(exps, sums, targets, counted)
        return nll.sum() / counted.sum()  # 0/0 = NaN when every target is ignored
        # END SOLUTION

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        # BEGIN SOLUTION
        exps, sums, targets, counted = ctx.saved_tensors
        row_grad = torch.where(counted, grad / counted.sum(), 0.0)  # (N,): g/n on counted rows, 0 on ignored ones
        grad_logits = exps.mul_((row_grad / sums)[:, None])  # (g/n)·p, in place: p = e / Σ e
        grad_logits.scatter_add_(-1, targets[:, None], -row_grad[:, None])  # − (g/n)·onehot(y)
        return grad_logits.to(ctx.logits_dtype), None, None
        # END SOLUTION


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """train.cross_entropy through CrossEntropyFunction: the same arguments, checks and result.

    logits (..., V), targets (...); computed in float32 at least (half-precision logits are upcast first).
    """
    # BEGIN SOLUTION
    from .train import _flat_logits_and_targets  # here, not at the top: train imports this module

    logits, targets = _flat_logits_and_targets(logits, targets, ignore_index)  # (N, V) at least float32, (N,)
    return CrossEntropyFunction.apply(logits, targets, ignore_index)
    # END SOLUTION


# ---------------------------------------------------------------------------------------------------- attention


class AttentionFunction(torch.autograd.Function):
    """softmax(q kᵀ · scale + bias) v on (N, Tq, d) batches, with a hand-written backward pass.

    apply(q (N, Tq, d), k (N, Tk, d), v (N, Tk, dv), bias (N or 1, Tq, Tk) of 0 / −inf or None, scale) ->
    (N, Tq, dv); a query whose every key is masked gets 0. The forward pass keeps the weights P (N, Tq, Tk), as
    autograd would. With out_i = Σ_j P_ij v_j and D_i = dout_i · out_i, the backward pass is four matmuls and two
    elementwise passes:

        dv = Pᵀ dout,   dP = dout vᵀ,   ds = P ⊙ (dP − D),   dq = scale · ds k,   dk = scale · dsᵀ q

    because ∂out_i/∂s_ij = P_ij (v_j − out_i): the softmax's Jacobian, diag(P_i) − P_i P_iᵀ, applied to dP_i.
    The scores are taken in base 2 (q scaled by scale · log₂e, then exp2): on a CPU torch.exp2 takes about half the
    time of torch.exp, which also slows down several times on the −inf entries of a mask. Half-precision inputs are
    computed in float32 (scores, softmax sums, gradients) and rounded once at the end.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float) -> Tensor:
        # BEGIN SOLUTION
        ctx.dtype = q.dtype
        wide = torch.promote_types(q.dtype, torch.float32)  # half precision: scores and sums in float32
        q, k, v = q.to(wide), k.to(wide), v.to(wide)
        bias = None if bias is None else bias.to(wide)
        q_base2 = q * (scale * _LOG2_E)
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
        return out.to(ctx.dtype)
        # END SOLUTION

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        # BEGIN SOLUTION
        q, k, v, probabilities, out = ctx.saved_tensors
        grad_out = grad_out.to(q.dtype).contiguous()  # it may arrive as a transposed view; bmm wants rows
        grad_v = torch.bmm(probabilities.transpose(1, 2), grad_out)
        row_term = (grad_out * out).sum(-1, keepdim=True)  # D_i, (N, Tq, 1)
        grad_s = torch.bmm(grad_out, v.transpose(1, 2)).sub_(row_term).mul_(probabilities)  # in place over dP
        grad_q = torch.bmm(grad_s, k).mul_(ctx.scale)
        grad_k = torch.bmm(grad_s.transpose(1, 2), q).mul_(ctx.scale)
        return grad_q.to(ctx.dtype), grad_k.to(ctx.dtype), grad_v.to(ctx.dtype), None, None
        # END SOLUTION


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, is_causal: bool = False,
              scale: float | None = None) -> Tensor:
    """attention.scaled_dot_product_attention through AttentionFunction: the same arguments and result.

    q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv) with the same leading dimensions; mask booleans broadcastable
    to (..., Tq, Tk), True = may attend; is_causal aligns the queries to the last Tq positions.
    """
    # BEGIN SOLUTION
    from .attention import _check_same_dtype_and_device  # here, not at the top: attention imports this module

    _check_same_dtype_and_device(q=q, k=k, v=v)
    if q.dim() < 2 or q.shape[:-2] != k.shape[:-2] or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention needs q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv) with the same leading "
                         f"dimensions; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if mask is not None and mask.dtype != torch.bool:
        raise ValueError(f"mask must be boolean (True = may attend), got {mask.dtype}")
    lead, n_queries, n_keys = q.shape[:-2], q.shape[-2], k.shape[-2]
    bias = None
    if mask is not None:  # 0 where a query may attend, −inf where not
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
        bias = bias.expand(*lead, n_queries, n_keys).reshape(-1, n_queries, n_keys)
    if is_causal:  # −inf above the diagonal that puts the last query on the last key
        causal = torch.full((n_queries, n_keys), float("-inf"), dtype=q.dtype, device=q.device)
        causal = causal.triu_(n_keys - n_queries + 1)
        bias = causal if bias is None else bias + causal
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = AttentionFunction.apply(q.reshape(-1, n_queries, q.shape[-1]), k.reshape(-1, n_keys, k.shape[-1]),
                                  v.reshape(-1, n_keys, v.shape[-1]), bias, scale)
    return out.reshape(*lead, n_queries, v.shape[-1])
    # END SOLUTION


# ------------------------------------------------------------------------- tiled attention (flash attention)


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


class TiledAttentionFunction(torch.autograd.Function):
    """Tiled attention on (N, Tq, d) queries: forward returns (out, lse); backward recomputes P tile by tile.

    apply(q (N, Tq, d), k (N, Tk, d), v (N, Tk, dv), is_causal, block_size_q, block_size_k, scale) ->
    (out (N, Tq, dv), lse (N, Tq)). Online softmax, for one query row, visiting key blocks in turn with running
    max m, sum ℓ and output o:

        m' = max(m, max_j s_j),   ℓ' = ℓ·e^(m − m') + Σ_j e^(s_j − m'),   o' = o·e^(m − m') + Σ_j e^(s_j − m') v_j

    and at the end out = o / ℓ, lse = m + log ℓ. Backward, with P_ij = e^(s_ij − lse_i) recomputed per tile,
    dP_ij = dout_i · v_j and D_i = dout_i · out_i:  ds_ij = P_ij (dP_ij − D_i + dlse_i), because
    ∂out_i/∂s_ij = P_ij (v_j − out_i) and ∂lse_i/∂s_ij = P_ij.

    Both passes work in base 2, as flash-attention kernels do: with q pre-multiplied by scale · log₂e, the scores
    are s·log₂e and e^(s − m) = 2^(s·log₂e − m·log₂e). The causal mask is added as a 0/−inf bias by the matmul
    itself (baddbmm), on the tiles that cross the diagonal only (`pytest benchmarks/bench_attention.py -k choices`
    times the alternatives). Half-precision inputs accumulate in float32.
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
            q_block = q[:, i0:i1].to(acc_dtype) * (scale * _LOG2_E)  # (n, bq, d): scores in base 2
            # Start the running max at the lowest finite number, not −inf: then a row whose keys so far were all
            # masked gets 2^(−inf − lowest) = 0 instead of 2^(−inf + inf) = NaN.
            row_max = torch.full((n, i1 - i0), lowest, dtype=acc_dtype, device=q.device)
            row_sum = torch.zeros(n, i1 - i0, dtype=acc_dtype, device=q.device)
            acc = torch.zeros(n, i1 - i0, value_dim, dtype=acc_dtype, device=q.device)
            # Causal: keys after the last query's position are never seen by this block; skip them entirely.
            key_end = min(n_keys, i1 + offset) if is_causal else n_keys
            for j0 in range(0, max(key_end, 0), block_size_k):
                j1 = min(j0 + block_size_k, key_end)
                scores = _tile_scores(q_block, k[:, j0:j1].to(acc_dtype), is_causal, i0 + offset - j0)  # (n, bq, bk)
                new_max = torch.maximum(row_max, scores.amax(-1))  # (n, bq)
                correction = torch.exp2(row_max - new_max)  # rescales what was summed under the old max
                probabilities = scores.sub_(new_max[..., None]).exp2_()  # in place: (n, bq, bk)
                row_sum.mul_(correction).add_(probabilities.sum(-1))
                # out of place: a (n, bq, dv) copy is cheap, and a FLOP counter sees the matmul (in-place it misses it)
                acc = torch.baddbmm(acc.mul_(correction[..., None]), probabilities, v[:, j0:j1].to(acc_dtype))
                row_max = new_max
            # A query that saw no key: row_sum = 0, output 0 and lse = −inf.
            seen = row_sum > 0
            out[:, i0:i1] = (acc / torch.where(seen, row_sum, 1.0)[..., None]).to(q.dtype)
            lse[:, i0:i1] = torch.where(seen, (row_max + row_sum.log2()) * _LN_2, float("-inf"))

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
        lse = torch.where(torch.isfinite(lse), lse * _LOG2_E, 0.0)  # base 2, as the scores below
        grad_q, grad_k, grad_v = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)

        for i0 in range(0, n_queries, block_size_q):
            i1 = min(i0 + block_size_q, n_queries)
            q_block, dout_block = q[:, i0:i1], grad_out[:, i0:i1]  # (n, bq, d), (n, bq, dv)
            q_block_base2 = q_block * (scale * _LOG2_E)
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


def tiled_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = False, block_size_q: int = 128,
                    block_size_k: int = 256, scale: float | None = None) -> tuple[Tensor, Tensor]:
    """Attention computed block by block: (out (..., Tq, dv), lse (..., Tq)), never a Tq × Tk matrix.

    out equals attention.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale) and
    lse_i = log Σ_j exp(s_ij) over the keys query i may see (−inf, with out = 0, where it sees none).
    q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv) share their leading dimensions. Block sizes need not divide
    the lengths. Memory beyond inputs and outputs: one block of scores, O(T) forward and backward.
    Gradients flow to q, k and v from both outputs. The default blocks suit a CPU: a (batch·heads, 128, 256)
    float32 tile of scores is a few MB, large enough that each tensor operation amortises its dispatch cost.
    """
    # BEGIN SOLUTION
    from .attention import _check_same_dtype_and_device  # here, not at the top: attention imports this module

    _check_same_dtype_and_device(q=q, k=k, v=v)
    if q.dim() < 2 or q.shape[:-2] != k.shape[:-2] or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"tiled_attention needs q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv) with the same "
                         f"leading dimensions; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    for name, size in (("block_size_q", block_size_q), ("block_size_k", block_size_k)):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"{name} must be a positive integer, got {size}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    lead = q.shape[:-2]
    out, lse = TiledAttentionFunction.apply(q.reshape(-1, *q.shape[-2:]), k.reshape(-1, *k.shape[-2:]),
                                            v.reshape(-1, *v.shape[-2:]), is_causal, block_size_q, block_size_k,
                                            scale)
    return out.reshape(*lead, *out.shape[-2:]), lse.reshape(*lead, lse.shape[-1])
    # END SOLUTION


# --------------------------------------------------------------------------------- the incremental BPE trainer


# BEGIN SOLUTION
# The corpus is cut into chunks of about this many characters, each ending where a special token starts; the
# pre-tokens of each chunk are counted in a worker process.
_CHUNK_CHARS = 1 << 20


def _document_blocks(data) -> Iterator[Iterator[str]]:
    """The text of each document in blocks of at most _CHUNK_CHARS characters: a file is never read whole."""
    for source in _sources(data):
        if isinstance(source, str):
            yield (source[i:i + _CHUNK_CHARS] for i in range(0, len(source), _CHUNK_CHARS))
        else:
            yield _file_blocks(source)


def _file_blocks(path: Path) -> Iterator[str]:
    # newline="" keeps "\r\n" as it is: the tokenizer sees the file's exact text.
    with open(path, encoding="utf-8", newline="") as file:
        try:
            while block := file.read(_CHUNK_CHARS):
                yield block
        except UnicodeDecodeError as error:
            raise ValueError(f"{path} is not UTF-8 text: {error}") from None


def _cut_at_special_tokens(blocks: Iterator[str], special_re, longest: int) -> Iterator[str]:
    """Reassemble a document from its blocks into parts of at least _CHUNK_CHARS characters (the last may be
    shorter), each ending where a special token starts, so that splitting each part at special tokens gives
    exactly the pieces of the whole document.

    The cut goes where the first special token at or past _CHUNK_CHARS starts, found by scanning the part from
    its beginning: a scan started anywhere else could take for a token what the whole scan sees as the end of
    another. A match at position i saw text[i : i + longest], so it is certain once that much text has arrived.
    """
    pending, size = [], 0
    for block in blocks:
        pending.append(block)
        size += len(block)
        if special_re is None or size <= _CHUNK_CHARS:
            continue
        text = "".join(pending)
        starts = (match.start() for match in special_re.finditer(text) if match.start() >= _CHUNK_CHARS)
        cut = next(starts, len(text))
        if cut <= len(text) - longest:
            yield text[:cut]
            pending, size = [text[cut:]], len(text) - cut
        else:
            pending = [text]
    text = "".join(pending)
    if text:
        yield text


def _chunks(data, special_re, longest: int) -> Iterator[list[str]]:
    """Lists of (non-empty) document parts, at least _CHUNK_CHARS characters in all (but the last), one per task."""
    chunk, size = [], 0
    for blocks in _document_blocks(data):
        for part in _cut_at_special_tokens(blocks, special_re, longest):
            chunk.append(part)
            size += len(part)
            if size >= _CHUNK_CHARS:
                yield chunk
                chunk, size = [], 0
    if chunk:
        yield chunk


def _count_pretokens(parts: list[str], pattern: str, special_tokens: list[str]) -> Counter:
    """The pre-token frequency table of some text: special tokens cut out, the rest split by `pattern`.

    Example (GPT-2 pattern, special '<|eot|>'): ['hi hi<|eot|>hi'] -> Counter({'hi': 2, ' hi': 1})
    """
    split = _PreTokenizer(pattern)
    special_re = _special_regex(special_tokens)
    counts = Counter()
    for part in parts:
        for segment in special_re.split(part) if special_re else (part,):
            counts.update(split(segment))
    return counts


def _pretoken_counts(data, pattern: str, special_tokens: list[str], num_workers: int | None) -> Counter:
    """Count pre-tokens over the whole corpus, one chunk per task; several processes when there are chunks enough."""
    special_re = _special_regex(special_tokens)
    longest = max(map(len, special_tokens), default=1)
    if num_workers is None:
        num_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    chunks = _chunks(data, special_re, longest)
    first = next(chunks, None)
    if first is None:
        raise ValueError("the corpus is empty: there is no text to learn merges from")
    second = next(chunks, None)
    head = [first] if second is None else [first, second]
    counts = Counter()
    if second is None or num_workers == 1:
        for chunk in chain(head, chunks):
            counts.update(_count_pretokens(chunk, pattern, special_tokens))
        return counts
    # fork starts workers at once and needs no importable module name (any folder can be graded).
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=num_workers, mp_context=context) as pool:
        in_flight = deque()
        for chunk in chain(head, chunks):
            in_flight.append(pool.submit(_count_pretokens, chunk, pattern, special_tokens))
            if len(in_flight) > 2 * num_workers:  # bounded memory: a few chunks at a time
                counts.update(in_flight.popleft().result())
        for future in in_flight:
            counts.update(future.result())
    return counts


_INVERT = {byte: 0x100 - byte for byte in range(256)}


def _descending_key(token: bytes) -> str:
    """A string whose ascending order is the descending order of byte strings.

    Each byte b becomes the character 256 - b, and a terminator 257 sorts a prefix after its extensions.
    Example: sorted([b'a', b'ab', b'b'], key=_descending_key) -> [b'b', b'ab', b'a']
    """
    return token.decode("latin-1").translate(_INVERT) + "\u0101"


def _learn_merges(counts: dict[str, int], vocab: dict[int, bytes], vocab_size: int) -> list[tuple[bytes, bytes]]:
    """Grow `vocab` (in place) by BPE merges over the pre-token table `counts`; return the merges in order.

    Words are strs with one character per token (the token with id t is chr(t)), so that a pair is a 2-character
    string and `word.replace(pair, chr(new))` is the merge itself, in C: every occurrence, left to right, without
    overlap ('aaa' -> [aa, a]).
    """
    key = {chr(i): _descending_key(token) for i, token in vocab.items()}  # character -> tie-break key
    words, freqs = [], []
    for piece, count in counts.items():
        data = piece.encode("utf-8")  # lone surrogates were rejected when the corpus was read
        if len(data) > 1:
            words.append(data.decode("latin-1"))  # byte b -> chr(b): the character of the byte's token
            freqs.append(count)
    pair_counts: dict[str, int] = defaultdict(int)
    where: dict[str, list[int]] = defaultdict(list)  # pair -> the words that may hold it
    for i, word in enumerate(words):
        for pair in map(add, word, word[1:]):  # 'abc' -> 'ab', 'bc'
            pair_counts[pair] += freqs[i]
            where[pair].append(i)
    heap = [(-count, key[pair[0]], key[pair[1]], pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges = []
    while len(vocab) < vocab_size:
        while heap:
            negated, _, _, pair = heap[0]
            count = pair_counts.get(pair, 0)
            if count == -negated:
                break
            if count:  # the pair's count has fallen since this entry was pushed
                heapq.heapreplace(heap, (-count, key[pair[0]], key[pair[1]], pair))
            else:
                heapq.heappop(heap)
        if not heap:
            break  # no pair occurs any more: every pre-token is a single token
        pair = heapq.heappop(heap)[3]
        left, right = vocab[ord(pair[0])], vocab[ord(pair[1])]
        merges.append((left, right))
        new = len(vocab)  # every merge makes a new token (see tokenizer.train_bpe)
        vocab[new] = left + right
        token = chr(new)
        key[token] = _descending_key(left + right)

        stretches: dict[str, list[int]] = defaultdict(list)  # changed stretch -> the words that have it
        for i in where.pop(pair):
            word = words[i]
            first = word.find(pair)
            if first < 0:
                continue  # listed twice, or the pair went in an earlier merge: `where` is not pruned eagerly
            words[i] = word.replace(pair, token)
            # max(..., 0): an occurrence at the start has no left neighbour; a slice past the end stops there
            stretches[word[max(first - 1, 0):word.rfind(pair) + 3]].append(i)
        created: dict[str, int] = defaultdict(int)
        for stretch, group in stretches.items():
            count = sum(map(freqs.__getitem__, group))
            for old in map(add, stretch, stretch[1:]):
                pair_counts[old] -= count
            # the stretch merges as the word did: its first character cannot start an occurrence (find would
            # have found that one), so replace finds the same occurrences in it
            merged_stretch = stretch.replace(pair, token)
            for new_pair in map(add, merged_stretch, merged_stretch[1:]):
                created[new_pair] += count
                where[new_pair].extend(group)
        del pair_counts[pair]  # all its occurrences are merged: its count is now 0
        for new_pair, change in created.items():
            count = pair_counts[new_pair] = pair_counts[new_pair] + change
            heapq.heappush(heap, (-count, key[new_pair[0]], key[new_pair[1]], new_pair))
    return merges
# END SOLUTION


def train_bpe(data, vocab_size: int, special_tokens=(), pattern: str = "gpt4", num_workers: int | None = None):
    """tokenizer.train_bpe, fast: the same arguments, the same errors, exactly the same merges and vocabulary.

    num_workers: processes that count pre-tokens (default: one per CPU; a positive int, or None). The corpus is
    cut into chunks of about a million characters, each ending where a special token starts, so that no
    pre-token and no special token spans two chunks: the counts are the same for any number of workers. A corpus
    of one chunk is counted in this process.

    The textbook loop recounts every pair of the corpus after each merge. Here each distinct pre-token is a word,
    counted with its frequency, and the pair counts are kept up to date instead:

    - `pair_counts[p]`: how often the pair p occurs in the corpus; `where[p]`: the words that may hold it (a
      list: a word can be in it twice, or no longer hold p; both are skipped when p is merged).
    - Merging p rewrites only the words in where[p], and changes only the pairs that overlap an occurrence: in
      each word, those in the stretch from the first occurrence's left neighbour to the last occurrence's right
      neighbour ('xaby' -> 'xNy' when merging 'ab'; outside it nothing changes). Words with the same stretch
      change the counts alike, so each distinct stretch is counted once, with the words' total frequency. The
      work per merge is proportional to what it changes, not to the corpus.
    - The best pair comes from a heap of (-count, key(left), key(right), pair) entries, where key orders byte
      strings in descending order (the tie-break). A merge lowers the counts of the pairs it breaks up, and
      raises only those of the pairs it makes (with the new token), which are pushed again. So every pair has
      an entry at least as large as its count; the top entry, once its count is checked to be the current one,
      is the most frequent pair (lazy deletion: an entry that has gone stale is put back with the count it has
      now, or dropped when the pair is gone).
    """
    # BEGIN SOLUTION
    special_tokens = _check_special_tokens(special_tokens)
    _check_vocab_size(vocab_size, special_tokens)
    if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int)
                                    or num_workers < 1):
        raise ValueError(f"num_workers must be a positive int or None, got {num_workers!r}")
    pattern = _resolve_pattern(pattern)

    counts = _pretoken_counts(data, pattern, special_tokens, num_workers)
    for piece in counts:
        _check_text(piece, "the corpus")
    vocab = {i: bytes([i]) for i in range(256)}
    for token in special_tokens:
        vocab[len(vocab)] = token.encode("utf-8")
    merges = _learn_merges(counts, vocab, vocab_size)
    if len(vocab) < vocab_size:
        warnings.warn(f"the corpus ran out of pairs to merge after {len(merges)} merges: the vocabulary has "
                      f"{len(vocab)} tokens, not vocab_size={vocab_size}", stacklevel=2)
    return Tokenizer(vocab, merges, special_tokens, pattern)
    # END SOLUTION
