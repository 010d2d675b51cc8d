# Generated from reference/kernels.py by `llmkata exercises`. This copy is yours: replace each stub.
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

import torch
from torch import Tensor


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
        raise NotImplementedError('`kernels.RMSNormFunction.forward` is not implemented yet — chapter 14 (kernels): '
                                  'see test_rmsnorm_function_equals_the_definition_in_values_and_gradients and 2 more '
                                  'in spec/test_kernels.py.')

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        raise NotImplementedError('`kernels.RMSNormFunction.backward` is not implemented yet — chapter 14 (kernels): '
                                  'see test_rmsnorm_function_equals_the_definition_in_values_and_gradients and 2 more '
                                  'in spec/test_kernels.py.')


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
        raise NotImplementedError('`kernels.SwiGLUFunction.forward` is not implemented yet — chapter 14 (kernels): '
                                  'see test_swiglu_function_equals_the_definition_in_values_and_gradients and 3 more '
                                  'in spec/test_kernels.py.')

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError('`kernels.SwiGLUFunction.backward` is not implemented yet — chapter 14 (kernels): '
                                  'see test_swiglu_function_equals_the_definition_in_values_and_gradients and 3 more '
                                  'in spec/test_kernels.py.')


# --------------------------------------------------------------------------------------------- the RoPE rotation


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
        raise NotImplementedError('`kernels.RotateFunction.forward` is not implemented yet — chapter 14 (kernels): '
                                  'see test_half_precision_kernels_round_once and 2 more in spec/test_kernels.py.')

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        raise NotImplementedError('`kernels.RotateFunction.backward` is not implemented yet — chapter 14 (kernels): '
                                  'see test_half_precision_kernels_round_once and 2 more in spec/test_kernels.py.')


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
        raise NotImplementedError('`kernels.CrossEntropyFunction.forward` is not implemented yet — chapter 14 '
                                  '(kernels): see '
                                  'test_cross_entropy_kernel_equals_the_definition_in_values_and_gradients and 2 more '
                                  'in spec/test_kernels.py.')

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        raise NotImplementedError('`kernels.CrossEntropyFunction.backward` is not implemented yet — chapter 14 '
                                  '(kernels): see '
                                  'test_cross_entropy_kernel_equals_the_definition_in_values_and_gradients and 2 more '
                                  'in spec/test_kernels.py.')


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """train.cross_entropy through CrossEntropyFunction: the same arguments, checks and result.

    logits (..., V), targets (...); computed in float32 at least (half-precision logits are upcast first).
    """
    raise NotImplementedError('`kernels.cross_entropy` is not implemented yet — chapter 14 (kernels): see '
                              'test_cross_entropy_kernel_equals_the_definition_in_values_and_gradients and 3 more in '
                              'spec/test_kernels.py.')


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
        raise NotImplementedError('`kernels.AttentionFunction.forward` is not implemented yet — chapter 14 (kernels): '
                                  'see test_attention_kernel_equals_the_definition_in_values_and_gradients and 1 more '
                                  'in spec/test_kernels.py.')

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        raise NotImplementedError('`kernels.AttentionFunction.backward` is not implemented yet — chapter 14 '
                                  '(kernels): see test_attention_kernel_equals_the_definition_in_values_and_gradients '
                                  'and 1 more in spec/test_kernels.py.')


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, is_causal: bool = False,
              scale: float | None = None) -> Tensor:
    """attention.scaled_dot_product_attention through AttentionFunction: the same arguments and result.

    q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv) with the same leading dimensions; mask booleans broadcastable
    to (..., Tq, Tk), True = may attend; is_causal aligns the queries to the last Tq positions.
    """
    raise NotImplementedError('`kernels.attention` is not implemented yet — chapter 14 (kernels): see '
                              'test_attention_kernel_equals_the_definition_in_values_and_gradients and 4 more in '
                              'spec/test_kernels.py.')


# ------------------------------------------------------------------------- tiled attention (flash attention)


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
        raise NotImplementedError('`kernels.TiledAttentionFunction.forward` is not implemented yet — chapter 14 '
                                  '(kernels): see test_tiled_attention_equals_naive_values_and_log_sum_exp and 2 more '
                                  'in spec/test_kernels.py.')

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_lse):
        raise NotImplementedError('`kernels.TiledAttentionFunction.backward` is not implemented yet — chapter 14 '
                                  '(kernels): see test_tiled_attention_equals_naive_values_and_log_sum_exp and 2 more '
                                  'in spec/test_kernels.py.')


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
    raise NotImplementedError('`kernels.tiled_attention` is not implemented yet — chapter 14 (kernels): see '
                              'test_tiled_attention_equals_naive_values_and_log_sum_exp and 7 more in '
                              'spec/test_kernels.py.')


# --------------------------------------------------------------------------------- the incremental BPE trainer


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
    raise NotImplementedError('`kernels.train_bpe` is not implemented yet — chapter 14 (kernels): see '
                              'test_bpe_kernel_learns_the_textbook_merges and 6 more in spec/test_kernels.py.')


# ---------------------------------------------------------------------- flash attention in Triton (GPU)


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
        raise NotImplementedError('`kernels.FlashAttentionFunction.forward` is not implemented yet — chapter 14 '
                                  '(kernels): see '
                                  'test_flash_attention_equals_the_definition_in_values_and_log_sum_exp and 2 more in '
                                  'spec/test_kernels.py.')

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_lse):
        raise NotImplementedError('`kernels.FlashAttentionFunction.backward` is not implemented yet — chapter 14 '
                                  '(kernels): see '
                                  'test_flash_attention_equals_the_definition_in_values_and_log_sum_exp and 2 more in '
                                  'spec/test_kernels.py.')


def flash_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = False,
                    scale: float | None = None) -> tuple[Tensor, Tensor]:
    """tiled_attention on the GPU, through FlashAttentionFunction: (out (B, H, Tq, dv), lse (B, H, Tq)).

    q (B, H, Tq, d), k (B, Hkv, Tk, d), v (B, Hkv, Tk, dv) with H a multiple of Hkv (grouped-query attention);
    float16, bfloat16 or float32, on a CUDA device (or on the CPU with TRITON_INTERPRET=1). is_causal aligns the
    queries to the last Tq positions (query i sees keys j ≤ Tk − Tq + i; one that sees none gets out 0 and
    lse −inf); scale defaults to 1/√d. Gradients flow to q, k and v from both outputs. Needs Triton
    (pip install 'llmkata[triton]').
    """
    raise NotImplementedError('`kernels.flash_attention` is not implemented yet — chapter 14 (kernels): see '
                              'test_flash_attention_equals_the_definition_in_values_and_log_sum_exp and 5 more in '
                              'spec/test_kernels.py.')
