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

import math

import torch
from torch import Tensor

LOG2_E = math.log2(math.e)  # e^x = 2^(x·log₂e)
LN_2 = math.log(2.0)


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
    again in its backward pass.
    """

    @staticmethod
    def forward(ctx, gate: Tensor, up: Tensor) -> Tensor:
        # BEGIN SOLUTION
        s = torch.sigmoid(gate)
        ctx.save_for_backward(gate, up, s)
        return torch.mul(gate, s).mul_(up)
        # END SOLUTION

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        # BEGIN SOLUTION
        gate, up, s = ctx.saved_tensors
        silu_gate = gate * s
        grad_up = grad * silu_gate
        # SiLU'(gate) = s + SiLU · (1 − s) = lerp(s, 1, SiLU), written over silu_gate, no longer needed
        derivative = torch.lerp(s, s.new_ones(()), silu_gate, out=silu_gate)
        return derivative.mul_(grad).mul_(up), grad_up
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
    """

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
        # BEGIN SOLUTION
        dtype = torch.promote_types(x.dtype, torch.promote_types(cos.dtype, sin.dtype))
        # the tables may broadcast to more leading dimensions than x has
        shape = (*torch.broadcast_shapes(x.shape[:-1], cos.shape[:-1], sin.shape[:-1]), x.shape[-1])
        ctx.save_for_backward(cos, sin)
        ctx.interleaved, ctx.x_shape, ctx.x_dtype = interleaved, x.shape, x.dtype
        return _rotate_into(torch.empty(shape, dtype=dtype, device=x.device), x, cos, sin, 1.0, interleaved)
        # END SOLUTION

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        # BEGIN SOLUTION
        cos, sin = ctx.saved_tensors
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
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, ignore_index: int) -> Tensor:
        # BEGIN SOLUTION
        counted = targets != ignore_index  # (N,)
        targets = torch.where(counted, targets, 0)  # any valid id: the row is dropped from the sum
        row_max = logits.amax(dim=-1, keepdim=True)  # (N, 1)
        # e^(z − m) = 2^((z − m)·log₂e): exp2 takes about half the time of exp on a CPU. z − m is formed first,
        # exactly, and only that small number is scaled, so logits of 1e4 lose no digits.
        exps = torch.sub(logits, row_max).mul_(LOG2_E).exp2_()  # (N, V), in (0, 1]; 1 at the row max
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
        return grad_logits, None, None
        # END SOLUTION


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """train.cross_entropy through CrossEntropyFunction: the same arguments, checks and result.

    logits (..., V), targets (...); computed in float32 at least (half-precision logits are upcast first).
    """
    # BEGIN SOLUTION
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be targets {tuple(targets.shape)} plus one vocabulary "
                         "dimension")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    vocab = logits.shape[-1]
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if bad.any():
        raise ValueError(f"target {int(targets[bad][0])} is outside the vocabulary 0..{vocab - 1} "
                         f"(and is not ignore_index={ignore_index})")
    return CrossEntropyFunction.apply(logits.reshape(-1, vocab), targets.reshape(-1), ignore_index)
    # END SOLUTION


# ---------------------------------------------------------------------------------------------------- attention


def _check_same_dtype_and_device(**tensors: Tensor) -> None:
    """One clear error when tensors that meet in a matmul disagree on dtype or device."""
    first_name, first = next(iter(tensors.items()))
    for name, tensor in tensors.items():
        if tensor.dtype != first.dtype:
            raise ValueError(f"{first_name} is {first.dtype} but {name} is {tensor.dtype}: cast them to one dtype")
        if tensor.device != first.device:
            raise ValueError(f"{first_name} is on {first.device} but {name} is on {tensor.device}: move them to one "
                             "device")


class AttentionFunction(torch.autograd.Function):
    """softmax(q kᵀ · scale + bias) v on (N, Tq, d) batches, with a hand-written backward pass.

    apply(q (N, Tq, d), k (N, Tk, d), v (N, Tk, dv), bias (N or 1, Tq, Tk) of 0 / −inf or None, scale) ->
    (N, Tq, dv); a query whose every key is masked gets 0. The forward pass keeps the weights P (N, Tq, Tk), as
    autograd would. With out_i = Σ_j P_ij v_j and D_i = dout_i · out_i, the backward pass is four matmuls and two
    elementwise passes:

        dv = Pᵀ dout,   dP = dout vᵀ,   ds = P ⊙ (dP − D),   dq = scale · ds k,   dk = scale · dsᵀ q

    because ∂out_i/∂s_ij = P_ij (v_j − out_i): the softmax's Jacobian, diag(P_i) − P_i P_iᵀ, applied to dP_i.
    The scores are taken in base 2 (q scaled by scale · log₂e, then exp2): on a CPU torch.exp2 takes about half the
    time of torch.exp, which also slows down several times on the −inf entries of a mask.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float) -> Tensor:
        # BEGIN SOLUTION
        q_base2 = q * (scale * LOG2_E)
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
        # END SOLUTION

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        # BEGIN SOLUTION
        q, k, v, probabilities, out = ctx.saved_tensors
        grad_out = grad_out.contiguous()  # it may arrive as a transposed view; bmm wants rows
        grad_v = torch.bmm(probabilities.transpose(1, 2), grad_out)
        row_term = (grad_out * out).sum(-1, keepdim=True)  # D_i, (N, Tq, 1)
        grad_s = torch.bmm(grad_out, v.transpose(1, 2)).sub_(row_term).mul_(probabilities)  # in place over dP
        grad_q = torch.bmm(grad_s, k).mul_(ctx.scale)
        grad_k = torch.bmm(grad_s.transpose(1, 2), q).mul_(ctx.scale)
        return grad_q, grad_k, grad_v, None, None
        # END SOLUTION


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, is_causal: bool = False,
              scale: float | None = None) -> Tensor:
    """attention.scaled_dot_product_attention through AttentionFunction: the same arguments and result.

    q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv) with the same leading dimensions; mask booleans broadcastable
    to (..., Tq, Tk), True = may attend; is_causal aligns the queries to the last Tq positions.
    """
    # BEGIN SOLUTION
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
            q_block = q[:, i0:i1].to(acc_dtype) * (scale * LOG2_E)  # (n, bq, d): scores in base 2
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


def train_bpe(data, vocab_size: int, special_tokens=(), pattern: str = "gpt4", num_workers: int | None = None):
    """tokenizer.train_bpe, fast: the same arguments and exactly the same merges, plus `num_workers`."""
    # BEGIN SOLUTION
    raise NotImplementedError("the incremental BPE trainer is being moved here")
    # END SOLUTION
