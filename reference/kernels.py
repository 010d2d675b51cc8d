"""Kernels: the fast paths of earlier chapters, each equal to the definition its own chapter gives.

An advanced chapter, for after chapter 10. Every function here computes exactly what a plain definition elsewhere
computes; what changes is how much memory it touches and how often:

- hand-written backward passes (`torch.autograd.Function`s) for RMSNorm and the SwiGLU product (chapter 4), the
  RoPE rotation (chapter 5), cross-entropy (chapter 8) and attention (chapter 6). Autograd, differentiating a
  formula step by step, saves one tensor per operation and reads each again in the backward pass; the derivative
  written out saves fewer and makes fewer passes;
- tiled (flash) attention: never builds the Tq × Tk score matrix, so its extra memory grows as O(T), not O(T²);
- the incremental BPE trainer (chapter 2): pre-token counts in worker processes, and a heap of pair counts updated
  only where a merge changes something, instead of recounting every pair after every merge;
- flash attention in Triton for GPUs (`flash_attention`, with the optional `triton` package): tiled attention's
  algorithm as GPU kernels, forward and backward; on a CPU the spec runs it in Triton's interpreter.

The model reaches these through one switch, `ModelConfig(kernels=True)` (and the `kernels=` argument of RMSNorm,
SwiGLU, RotaryEmbedding and CausalSelfAttention); the trainer uses `cross_entropy` below for such a model, and
`llmkata train` uses `train_bpe` below. The spec checks each kernel against its definition in float64: values and
gradients, for shapes that are not multiples of any block, Tq ≠ Tk and fully masked rows.

Left out: fused optimizers, and kernels for inference only (paged KV caches).
"""

import functools
import heapq
import importlib.util
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
        return grad_x, grad_weight, None  # autograd casts each gradient to its input's dtype
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
        return derivative.mul_(grad).mul_(up), grad_up  # autograd rounds them to the inputs' dtypes
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
        ctx.interleaved, ctx.x_shape = interleaved, x.shape
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
        return grad_x.sum_to_size(ctx.x_shape), None, None, None  # rounded to x's dtype by autograd
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
        return grad_logits, None, None  # autograd rounds it to the logits' dtype
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
        dtype = q.dtype
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
        return out.to(dtype)
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
        return grad_q, grad_k, grad_v, None, None  # autograd rounds them to the inputs' dtype
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

        return grad_q, grad_k, grad_v, None, None, None, None  # autograd rounds them to the inputs' dtype
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


# ---------------------------------------------------------------------- flash attention in Triton (GPU)


# BEGIN SOLUTION
# The Triton kernels are plain functions here, compiled by _triton_kernels() on first use: importing this module
# needs no triton, and TRITON_INTERPRET (Triton's CPU interpreter) is read when the kernels are built, not when
# the module is imported. Their constexpr parameters are annotated with the string "tl.constexpr", which Triton
# reads as the annotation itself. All scores are in base 2: qk_scale = scale · log₂e.
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for readers and linters: the kernels' `tl`, bound by _triton_kernels() when it builds them
    import triton.language as tl


def _flash_forward_kernel(Q, K, V, Out, Lse,
                          stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                          stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot,
                          n_heads, group, n_queries, n_keys, qk_scale,
                          IS_CAUSAL: "tl.constexpr", HEAD_DIM: "tl.constexpr", VALUE_DIM: "tl.constexpr",
                          BLOCK_M: "tl.constexpr", BLOCK_N: "tl.constexpr", BLOCK_D: "tl.constexpr",
                          BLOCK_DV: "tl.constexpr", PRECISION: "tl.constexpr"):
    """One program: BLOCK_M queries of one (batch, head) against every key block they may see; online softmax."""
    block, batch_head = tl.program_id(0), tl.program_id(1)
    if IS_CAUSAL:  # the last query blocks see the most keys: start them first, so that no long one starts last
        block = tl.num_programs(0) - 1 - block
    batch, head = batch_head // n_heads, batch_head % n_heads
    kv_head = head // group  # query heads h·group … h·group + group − 1 share kv head h
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    cols = tl.arange(0, BLOCK_N)
    dims, vdims = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)  # padded to powers of 2, masked to HEAD_DIM
    offset = n_keys - n_queries  # query i sits at position offset + i
    q = tl.load(Q + batch * stride_qb + head * stride_qh + rows[:, None] * stride_qt + dims[None, :],
                mask=(rows[:, None] < n_queries) & (dims[None, :] < HEAD_DIM), other=0.0)  # (BLOCK_M, BLOCK_D)
    k_start = K + batch * stride_kb + kv_head * stride_kh
    v_start = V + batch * stride_vb + kv_head * stride_vh
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)

    # Key blocks before full_end need no mask: every key exists and every query of the block sees it. Causal:
    # the block's first query (position p) sees keys ≤ p, so full blocks end at p + 1, and no query of the block
    # sees a key past its last query's position.
    key_end = n_keys
    full_end = n_keys // BLOCK_N * BLOCK_N
    if IS_CAUSAL:
        key_end = tl.maximum(tl.minimum(n_keys, (block + 1) * BLOCK_M + offset), 0)
        full_end = tl.minimum(full_end, tl.maximum(block * BLOCK_M + offset + 1, 0) // BLOCK_N * BLOCK_N)
    for start in range(0, full_end, BLOCK_N):
        keys = start + cols
        k = tl.load(k_start + keys[None, :] * stride_kt + dims[:, None], mask=dims[:, None] < HEAD_DIM,
                    other=0.0)  # (BLOCK_D, BLOCK_N)
        scores = tl.dot(q, k, input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), base 2
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        correction = tl.math.exp2(row_max - new_max)  # rescales what was summed under the old max
        p = tl.math.exp2(scores - new_max[:, None])
        row_sum = row_sum * correction + tl.sum(p, 1)
        v = tl.load(v_start + keys[:, None] * stride_vt + vdims[None, :], mask=vdims[None, :] < VALUE_DIM,
                    other=0.0)  # (BLOCK_N, BLOCK_DV)
        acc = tl.dot(p.to(v.dtype), v, acc * correction[:, None], input_precision=PRECISION)
        row_max = new_max
    for start in range(full_end, key_end, BLOCK_N):  # the diagonal and the last, partial block: masked
        keys = start + cols
        k = tl.load(k_start + keys[None, :] * stride_kt + dims[:, None],
                    mask=(dims[:, None] < HEAD_DIM) & (keys[None, :] < n_keys), other=0.0)
        scores = tl.dot(q, k, input_precision=PRECISION) * qk_scale
        keep = keys[None, :] < n_keys
        if IS_CAUSAL:
            keep = keep & (keys[None, :] <= rows[:, None] + offset)
        scores = tl.where(keep, scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        # a row that has seen no key yet keeps max −inf: subtract 0 instead, so that 2^(−inf − (−inf)) is not NaN
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        correction = tl.math.exp2(row_max - safe_max)
        p = tl.math.exp2(scores - safe_max[:, None])
        row_sum = row_sum * correction + tl.sum(p, 1)
        v = tl.load(v_start + keys[:, None] * stride_vt + vdims[None, :],
                    mask=(vdims[None, :] < VALUE_DIM) & (keys[:, None] < n_keys), other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * correction[:, None], input_precision=PRECISION)
        row_max = new_max

    seen = row_sum > 0  # a query that saw no key: out 0, lse −inf
    out = acc / tl.where(seen, row_sum, 1.0)[:, None]
    log2_sum = tl.math.log2(tl.where(seen, row_sum, 1.0))
    lse = tl.where(seen, (row_max + log2_sum) * 0.6931471805599453, float("-inf"))  # base 2 -> e: · ln 2
    tl.store(Out + batch * stride_ob + head * stride_oh + rows[:, None] * stride_ot + vdims[None, :],
             out.to(Out.dtype.element_ty), mask=(rows[:, None] < n_queries) & (vdims[None, :] < VALUE_DIM))
    tl.store(Lse + batch_head * n_queries + rows, lse, mask=rows < n_queries)


def _flash_delta_kernel(Out, GradOut, GradLse, Delta,
                        stride_ob, stride_oh, stride_ot, stride_gb, stride_gh, stride_gt, n_heads, n_queries,
                        VALUE_DIM: "tl.constexpr", BLOCK_M: "tl.constexpr", BLOCK_DV: "tl.constexpr"):
    """D_i = dout_i · out_i − dlse_i: the term every ds_ij of row i subtracts."""
    block, batch_head = tl.program_id(0), tl.program_id(1)
    batch, head = batch_head // n_heads, batch_head % n_heads
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    vdims = tl.arange(0, BLOCK_DV)
    mask = (rows[:, None] < n_queries) & (vdims[None, :] < VALUE_DIM)
    out = tl.load(Out + batch * stride_ob + head * stride_oh + rows[:, None] * stride_ot + vdims[None, :],
                  mask=mask, other=0.0).to(tl.float32)
    grad_out = tl.load(GradOut + batch * stride_gb + head * stride_gh + rows[:, None] * stride_gt + vdims[None, :],
                       mask=mask, other=0.0).to(tl.float32)
    grad_lse = tl.load(GradLse + batch_head * n_queries + rows, mask=rows < n_queries, other=0.0)
    tl.store(Delta + batch_head * n_queries + rows, tl.sum(out * grad_out, 1) - grad_lse, mask=rows < n_queries)


def _flash_dkdv_kernel(Q, K, V, GradOut, Lse, Delta, GradK, GradV,
                       stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                       stride_vb, stride_vh, stride_vt, stride_gb, stride_gh, stride_gt,
                       n_heads, n_kv_heads, group, n_queries, n_keys, scale, qk_scale,
                       IS_CAUSAL: "tl.constexpr", HEAD_DIM: "tl.constexpr", VALUE_DIM: "tl.constexpr",
                       BLOCK_M: "tl.constexpr", BLOCK_N: "tl.constexpr", BLOCK_D: "tl.constexpr",
                       BLOCK_DV: "tl.constexpr", PRECISION: "tl.constexpr"):
    """One program: dk and dv of BLOCK_N keys of one kv head, summed over its query heads and their queries.

    Transposed tiles (keys × queries): pᵀ = 2^(sᵀ − lse), dv += pᵀ dout, dsᵀ = pᵀ ⊙ (v doutᵀ − D), dk += dsᵀ q.
    Padded query rows load q = dout = 0 and D = 0, so they add nothing; padded key rows are never stored.
    """
    block, batch_kv = tl.program_id(0), tl.program_id(1)
    batch, kv_head = batch_kv // n_kv_heads, batch_kv % n_kv_heads
    keys = block * BLOCK_N + tl.arange(0, BLOCK_N)
    dims, vdims = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    offset = n_keys - n_queries
    k = tl.load(K + batch * stride_kb + kv_head * stride_kh + keys[:, None] * stride_kt + dims[None, :],
                mask=(keys[:, None] < n_keys) & (dims[None, :] < HEAD_DIM), other=0.0)  # (BLOCK_N, BLOCK_D)
    v = tl.load(V + batch * stride_vb + kv_head * stride_vh + keys[:, None] * stride_vt + vdims[None, :],
                mask=(keys[:, None] < n_keys) & (vdims[None, :] < VALUE_DIM), other=0.0)  # (BLOCK_N, BLOCK_DV)
    grad_k = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    grad_v = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)

    # Causal: query i sees key j when i + offset ≥ j. Query blocks before row_start see no key of this block; from
    # full_start on, every query sees every key of it (no mask); in between, the diagonal, masked. The last key
    # block, when partial, is masked throughout: a padded key (k = 0) would get P = 2^(0 − lse), which may overflow.
    row_start = 0
    full_start = 0
    if IS_CAUSAL:
        row_start = tl.maximum(block * BLOCK_N - offset, 0) // BLOCK_M * BLOCK_M
        full_start = tl.cdiv(tl.maximum(block * BLOCK_N + BLOCK_N - 1 - offset, 0), BLOCK_M) * BLOCK_M
    full_start = tl.where((block + 1) * BLOCK_N > n_keys, n_queries, full_start)
    masked_end = tl.minimum(full_start, n_queries)
    for g in range(0, group):
        head = kv_head * group + g
        q_start = Q + batch * stride_qb + head * stride_qh
        g_start = GradOut + batch * stride_gb + head * stride_gh
        lse_start = Lse + (batch * n_heads + head) * n_queries
        delta_start = Delta + (batch * n_heads + head) * n_queries
        for first in range(row_start, masked_end, BLOCK_M):
            rows = first + tl.arange(0, BLOCK_M)
            q = tl.load(q_start + rows[:, None] * stride_qt + dims[None, :],
                        mask=(rows[:, None] < n_queries) & (dims[None, :] < HEAD_DIM), other=0.0)
            grad_out = tl.load(g_start + rows[:, None] * stride_gt + vdims[None, :],
                               mask=(rows[:, None] < n_queries) & (vdims[None, :] < VALUE_DIM), other=0.0)
            lse = tl.load(lse_start + rows, mask=rows < n_queries, other=0.0) * 1.4426950408889634  # base 2
            lse = tl.where(lse == float("-inf"), 0.0, lse)  # a row that sees no key: every p below is masked
            delta = tl.load(delta_start + rows, mask=rows < n_queries, other=0.0)
            p = tl.math.exp2(tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale - lse[None, :])
            keep = keys[:, None] < n_keys
            if IS_CAUSAL:
                keep = keep & (keys[:, None] <= rows[None, :] + offset)
            p = tl.where(keep, p, 0.0)  # (BLOCK_N, BLOCK_M)
            grad_v = tl.dot(p.to(grad_out.dtype), grad_out, grad_v, input_precision=PRECISION)
            grad_p = tl.dot(v, tl.trans(grad_out), input_precision=PRECISION)
            grad_s = p * (grad_p - delta[None, :])
            grad_k = tl.dot(grad_s.to(q.dtype), q, grad_k, input_precision=PRECISION)
        for first in range(full_start, n_queries, BLOCK_M):
            rows = first + tl.arange(0, BLOCK_M)
            q = tl.load(q_start + rows[:, None] * stride_qt + dims[None, :],
                        mask=(rows[:, None] < n_queries) & (dims[None, :] < HEAD_DIM), other=0.0)
            grad_out = tl.load(g_start + rows[:, None] * stride_gt + vdims[None, :],
                               mask=(rows[:, None] < n_queries) & (vdims[None, :] < VALUE_DIM), other=0.0)
            lse = tl.load(lse_start + rows, mask=rows < n_queries, other=0.0) * 1.4426950408889634
            delta = tl.load(delta_start + rows, mask=rows < n_queries, other=0.0)
            p = tl.math.exp2(tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale - lse[None, :])
            grad_v = tl.dot(p.to(grad_out.dtype), grad_out, grad_v, input_precision=PRECISION)
            grad_p = tl.dot(v, tl.trans(grad_out), input_precision=PRECISION)
            grad_s = p * (grad_p - delta[None, :])
            grad_k = tl.dot(grad_s.to(q.dtype), q, grad_k, input_precision=PRECISION)

    grad_k = grad_k * scale  # s = scale · q kᵀ
    tl.store(GradK + batch_kv * n_keys * HEAD_DIM + keys[:, None] * HEAD_DIM + dims[None, :],
             grad_k.to(GradK.dtype.element_ty), mask=(keys[:, None] < n_keys) & (dims[None, :] < HEAD_DIM))
    tl.store(GradV + batch_kv * n_keys * VALUE_DIM + keys[:, None] * VALUE_DIM + vdims[None, :],
             grad_v.to(GradV.dtype.element_ty), mask=(keys[:, None] < n_keys) & (vdims[None, :] < VALUE_DIM))


def _flash_dq_kernel(Q, K, V, GradOut, Lse, Delta, GradQ,
                     stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                     stride_vb, stride_vh, stride_vt, stride_gb, stride_gh, stride_gt,
                     n_heads, group, n_queries, n_keys, scale, qk_scale,
                     IS_CAUSAL: "tl.constexpr", HEAD_DIM: "tl.constexpr", VALUE_DIM: "tl.constexpr",
                     BLOCK_M: "tl.constexpr", BLOCK_N: "tl.constexpr", BLOCK_D: "tl.constexpr",
                     BLOCK_DV: "tl.constexpr", PRECISION: "tl.constexpr"):
    """One program: dq of BLOCK_M queries of one (batch, head): dq = scale · Σ_j ds_ij k_j over the keys they see."""
    block, batch_head = tl.program_id(0), tl.program_id(1)
    if IS_CAUSAL:
        block = tl.num_programs(0) - 1 - block
    batch, head = batch_head // n_heads, batch_head % n_heads
    kv_head = head // group
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    dims, vdims = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    offset = n_keys - n_queries
    q = tl.load(Q + batch * stride_qb + head * stride_qh + rows[:, None] * stride_qt + dims[None, :],
                mask=(rows[:, None] < n_queries) & (dims[None, :] < HEAD_DIM), other=0.0)
    grad_out = tl.load(GradOut + batch * stride_gb + head * stride_gh + rows[:, None] * stride_gt + vdims[None, :],
                       mask=(rows[:, None] < n_queries) & (vdims[None, :] < VALUE_DIM), other=0.0)
    lse = tl.load(Lse + batch_head * n_queries + rows, mask=rows < n_queries, other=0.0) * 1.4426950408889634
    lse = tl.where(lse == float("-inf"), 0.0, lse)
    delta = tl.load(Delta + batch_head * n_queries + rows, mask=rows < n_queries, other=0.0)
    k_start = K + batch * stride_kb + kv_head * stride_kh
    v_start = V + batch * stride_vb + kv_head * stride_vh
    grad_q = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    key_end = n_keys  # the blocks of the forward pass
    full_end = n_keys // BLOCK_N * BLOCK_N
    if IS_CAUSAL:
        key_end = tl.maximum(tl.minimum(n_keys, (block + 1) * BLOCK_M + offset), 0)
        full_end = tl.minimum(full_end, tl.maximum(block * BLOCK_M + offset + 1, 0) // BLOCK_N * BLOCK_N)
    for start in range(0, full_end, BLOCK_N):
        keys = start + cols
        k = tl.load(k_start + keys[:, None] * stride_kt + dims[None, :], mask=dims[None, :] < HEAD_DIM, other=0.0)
        v = tl.load(v_start + keys[:, None] * stride_vt + vdims[None, :], mask=vdims[None, :] < VALUE_DIM,
                    other=0.0)
        p = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale - lse[:, None])
        grad_p = tl.dot(grad_out, tl.trans(v), input_precision=PRECISION)
        grad_s = p * (grad_p - delta[:, None])
        grad_q = tl.dot(grad_s.to(k.dtype), k, grad_q, input_precision=PRECISION)
    for start in range(full_end, key_end, BLOCK_N):
        keys = start + cols
        k = tl.load(k_start + keys[:, None] * stride_kt + dims[None, :],
                    mask=(keys[:, None] < n_keys) & (dims[None, :] < HEAD_DIM), other=0.0)
        v = tl.load(v_start + keys[:, None] * stride_vt + vdims[None, :],
                    mask=(keys[:, None] < n_keys) & (vdims[None, :] < VALUE_DIM), other=0.0)
        p = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale - lse[:, None])
        keep = keys[None, :] < n_keys
        if IS_CAUSAL:
            keep = keep & (keys[None, :] <= rows[:, None] + offset)
        p = tl.where(keep, p, 0.0)
        grad_p = tl.dot(grad_out, tl.trans(v), input_precision=PRECISION)
        grad_s = p * (grad_p - delta[:, None])
        grad_q = tl.dot(grad_s.to(k.dtype), k, grad_q, input_precision=PRECISION)

    grad_q = grad_q * scale
    tl.store(GradQ + batch_head * n_queries * HEAD_DIM + rows[:, None] * HEAD_DIM + dims[None, :],
             grad_q.to(GradQ.dtype.element_ty), mask=(rows[:, None] < n_queries) & (dims[None, :] < HEAD_DIM))


_FLASH_KERNELS = ("_flash_forward_kernel", "_flash_delta_kernel", "_flash_dkdv_kernel", "_flash_dq_kernel")
_triton_builds: dict = {}


def _triton_interpreting() -> bool:
    """Whether Triton runs its kernels on the CPU, in its interpreter (TRITON_INTERPRET=1), read now."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def _triton_kernels(functions: dict | None = None) -> dict:
    """{name: Triton kernel} compiled from the plain functions above (or from `functions`, name -> function).

    Each function is rebound to a namespace that holds triton.language as `tl`, then given to triton.jit; the
    namespace is kept per interpreter setting, so the kernels are built once for the GPU and once for the CPU.
    """
    try:
        import triton
        import triton.language as tl
    except ImportError:
        raise ImportError("flash_attention needs Triton: pip install 'llmkata[triton]' (or pip install triton)") \
            from None
    key = (_triton_interpreting(), None if functions is None else tuple(functions.values()))
    if key[0] and type(tl.max).__name__ != "InterpretedFunction":
        raise RuntimeError("TRITON_INTERPRET=1 was set after triton was imported (torch._dynamo imports it, for one): "
                           "Triton's own library functions (tl.max, tl.sum) were built for the GPU, and the "
                           "interpreter cannot call them. Set TRITON_INTERPRET=1 before anything imports triton.")
    if key not in _triton_builds:
        import types

        namespace = {"tl": tl, "triton": triton, "__name__": __name__}
        for name, function in (functions or {name: globals()[name] for name in _FLASH_KERNELS}).items():
            rebound = types.FunctionType(function.__code__, namespace, name, function.__defaults__)
            rebound.__module__, rebound.__annotations__ = function.__module__, dict(function.__annotations__)
            kernel = namespace[name] = triton.jit(rebound)
            if hasattr(kernel, "rewrite"):  # the interpreter compiles the source again, where the annotation is a
                kernel.rewrite().__annotations__ = dict(function.__annotations__)  # literal: give it the string

        _triton_builds[key] = namespace
    return _triton_builds[key]


def _flash_runs(q: Tensor) -> bool:
    """Whether attention on q can go through flash_attention: q on a CUDA GPU, in a dtype the kernels take, with
    Triton installed. CausalSelfAttention(kernels=True) asks this on every call."""
    return (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16, torch.float32) and q.numel() > 0
            and _triton_installed())


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None
# END SOLUTION


# BEGIN SOLUTION
def _flash_blocks(head_dim: int, dtype: torch.dtype, device: torch.device, backward: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages): tiles that fit a GPU's shared memory, or small ones for the
    interpreter (so that the spec's small shapes still span several blocks).

    On a GPU, the largest tiles whose kernels spill no registers when built for Hopper (ptxas's report, printed by
    `python -m llmkata.benchmarks.flash_compile`): wider heads take narrower tiles or more warps, and float32, whose
    exact ("ieee") products run on the FMA units instead of the tensor cores, takes small ones."""
    if device.type != "cuda":
        return 16, 16, 4, 1
    if dtype == torch.float32:
        if head_dim <= 32:
            return (32, 32, 4, 1) if backward else (32, 32, 4, 2)
        if head_dim <= 64:
            return (16, 32, 8, 1) if backward else (32, 32, 4, 2)
        if head_dim <= 128:
            return (16, 32, 8, 1) if backward else (32, 16, 8, 2)
        return (16, 16, 8, 1) if backward else (16, 16, 4, 1)
    if head_dim <= 64:
        return (64, 64, 4, 2) if backward else (128, 64, 8, 3)
    if head_dim <= 128:
        return (64, 64, 8, 2) if backward else (128, 64, 8, 3)
    return (32, 32, 8, 1) if backward else (64, 32, 8, 2)


def _flash_delta_rows(block_dv: int, device: torch.device) -> int:
    """Rows per program of the delta kernel: at most 4096 elements each of out and dout, which keeps it in registers."""
    return max(16, 4096 // block_dv) if device.type == "cuda" else 16


def _launch(kernel, grid, args, constants, config):
    """Run a kernel; when its tiles do not fit the GPU's shared memory, again with both tiles halved (to 16)."""
    block_m, block_n, warps, stages = config
    while True:
        try:
            return kernel[grid(block_m, block_n)](*args, **constants, BLOCK_M=block_m, BLOCK_N=block_n,
                                                  num_warps=warps, num_stages=stages)
        except Exception as error:  # triton.runtime.errors.OutOfResources, by name: no import of triton here
            if type(error).__name__ != "OutOfResources" or (block_m <= 16 and block_n <= 16):
                raise
            block_m, block_n, stages = max(block_m // 2, 16), max(block_n // 2, 16), max(stages - 1, 1)


def _flash_constants(q: Tensor, v: Tensor, is_causal: bool) -> dict:
    import triton

    head_dim, value_dim = q.shape[-1], v.shape[-1]
    return dict(IS_CAUSAL=bool(is_causal), HEAD_DIM=head_dim, VALUE_DIM=value_dim,
                BLOCK_D=max(16, triton.next_power_of_2(head_dim)), BLOCK_DV=max(16, triton.next_power_of_2(value_dim)),
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32")


def _flash_forward(kernels: dict, q: Tensor, k: Tensor, v: Tensor, is_causal: bool, scale: float):
    """out (B, H, Tq, dv) in q's dtype and lse (B, H, Tq) in float32, by the forward kernel."""
    import triton

    batch, n_heads, n_queries, head_dim = q.shape
    n_kv_heads, n_keys = k.shape[1], k.shape[2]
    out = torch.empty(batch, n_heads, n_queries, v.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.empty(batch, n_heads, n_queries, dtype=torch.float32, device=q.device)
    _launch(kernels["_flash_forward_kernel"], lambda block_m, _: (triton.cdiv(n_queries, block_m), batch * n_heads),
            (q, k, v, out, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
             n_heads, n_heads // n_kv_heads, n_queries, n_keys, scale * _LOG2_E),
            _flash_constants(q, v, is_causal), _flash_blocks(head_dim, q.dtype, q.device, backward=False))
    return out, lse


def _flash_backward(kernels: dict, q, k, v, out, lse, grad_out, grad_lse, is_causal: bool, scale: float):
    """(dq, dk, dv): D = rowsum(dout · out) − dlse first, then dk and dv per kv head, then dq per query head."""
    import triton

    batch, n_heads, n_queries, head_dim = q.shape
    n_kv_heads, n_keys = k.shape[1], k.shape[2]
    group = n_heads // n_kv_heads
    grad_out = grad_out.to(q.dtype)
    if grad_out.stride(-1) != 1:
        grad_out = grad_out.contiguous()
    grad_lse = torch.zeros_like(lse) if grad_lse is None else grad_lse.to(torch.float32).contiguous()
    constants = _flash_constants(q, v, is_causal)
    config = _flash_blocks(head_dim, q.dtype, q.device, backward=True)
    delta = torch.empty_like(lse)
    block = _flash_delta_rows(constants["BLOCK_DV"], q.device)
    kernels["_flash_delta_kernel"][(triton.cdiv(n_queries, block), batch * n_heads)](
        out, grad_out, grad_lse, delta, *out.stride()[:3], *grad_out.stride()[:3], n_heads, n_queries,
        VALUE_DIM=constants["VALUE_DIM"], BLOCK_M=block, BLOCK_DV=constants["BLOCK_DV"])
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *grad_out.stride()[:3])
    grad_q = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    grad_k = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    grad_v = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    _launch(kernels["_flash_dkdv_kernel"], lambda _, block_n: (triton.cdiv(n_keys, block_n), batch * n_kv_heads),
            (q, k, v, grad_out, lse, delta, grad_k, grad_v, *strides, n_heads, n_kv_heads, group, n_queries,
             n_keys, scale, scale * _LOG2_E), constants, config)
    _launch(kernels["_flash_dq_kernel"], lambda block_m, _: (triton.cdiv(n_queries, block_m), batch * n_heads),
            (q, k, v, grad_out, lse, delta, grad_q, *strides, n_heads, group, n_queries, n_keys, scale,
             scale * _LOG2_E), constants, config)
    return grad_q, grad_k, grad_v
# END SOLUTION


class FlashAttentionFunction(torch.autograd.Function):
    """Flash attention in Triton (FlashAttention-2): forward returns (out, lse); backward recomputes P from lse.

    apply(q (B, H, Tq, d), k (B, Hkv, Tk, d), v (B, Hkv, Tk, dv), is_causal, scale) -> (out (B, H, Tq, dv) in q's
    dtype, lse (B, H, Tq) in float32), with H a multiple of Hkv: query head h reads kv head h // (H / Hkv) (grouped-
    query attention, no copy of k and v). The same mathematics as TiledAttentionFunction, one GPU program per tile:

    - forward, one program per (BLOCK_M queries, batch, head): q stays in registers, key blocks stream past; the
      online softmax keeps the running max m, sum ℓ and output o in float32, rescaled by 2^(m − m') when the max
      grows. Causal, a program stops at its last query's position, and masks only the blocks that cross the
      diagonal (and the last, partial one);
    - backward, three kernels: D_i = dout_i · out_i − dlse_i per query; then one program per (key block, kv head)
      accumulates dk and dv over every query head of its group and every query block that sees it; then one
      program per (query block, head) accumulates dq. P_ij = 2^(s_ij·log₂e − lse_i·log₂e) is recomputed from the
      saved lse; ds_ij = P_ij (dP_ij − D_i). No atomics: every gradient is written once, by one program.

    Matmuls take the inputs' dtype (bfloat16, float16, or float32 at full precision, not TF32) and accumulate in
    float32. Runs on a CUDA GPU, or on CPU tensors in Triton's interpreter (TRITON_INTERPRET=1), slowly.
    """

    @staticmethod
    def forward(ctx, q, k, v, is_causal, scale):
        # BEGIN SOLUTION
        kernels = _triton_kernels()
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))  # rows of d numbers in memory
        out, lse = _flash_forward(kernels, q, k, v, is_causal, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.settings = (is_causal, scale)
        return out, lse
        # END SOLUTION

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_lse):
        # BEGIN SOLUTION
        q, k, v, out, lse = ctx.saved_tensors
        is_causal, scale = ctx.settings
        grad_q, grad_k, grad_v = _flash_backward(_triton_kernels(), q, k, v, out, lse, grad_out, grad_lse,
                                                 is_causal, scale)
        return grad_q, grad_k, grad_v, None, None
        # END SOLUTION


def flash_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = False,
                    scale: float | None = None) -> tuple[Tensor, Tensor]:
    """tiled_attention on the GPU, through FlashAttentionFunction: (out (B, H, Tq, dv), lse (B, H, Tq)).

    q (B, H, Tq, d), k (B, Hkv, Tk, d), v (B, Hkv, Tk, dv) with H a multiple of Hkv (grouped-query attention);
    float16, bfloat16 or float32, on a CUDA device (or on the CPU with TRITON_INTERPRET=1). is_causal aligns the
    queries to the last Tq positions (query i sees keys j ≤ Tk − Tq + i; one that sees none gets out 0 and
    lse −inf); scale defaults to 1/√d. Gradients flow to q, k and v from both outputs. Needs Triton
    (pip install 'llmkata[triton]').
    """
    # BEGIN SOLUTION
    from .attention import _check_same_dtype_and_device  # here, not at the top: attention imports this module

    _check_same_dtype_and_device(q=q, k=k, v=v)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] \
            or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"flash_attention needs q (B, H, Tq, d), k (B, Hkv, Tk, d), v (B, Hkv, Tk, dv); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"flash_attention needs the {q.shape[1]} query heads to be a multiple of the {k.shape[1]} "
                         "kv heads (each kv head serves a group of query heads)")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"flash_attention computes in float16, bfloat16 or float32, got {q.dtype}")
    if q.device.type != "cuda" and not _triton_interpreting():
        raise ValueError(f"flash_attention runs on a CUDA device, got tensors on {q.device} (on the CPU, set "
                         "TRITON_INTERPRET=1 before the first call to run the kernels in Triton's interpreter)")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return FlashAttentionFunction.apply(q, k, v, is_causal, scale)
    # END SOLUTION
