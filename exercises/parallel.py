# Generated from reference/parallel.py by `llmkata exercises`. This copy is yours: replace each stub.
"""Parallel training: data parallel, tensor parallel and a sharded optimizer, each equal to one process.

A *world* is N processes (ranks 0 .. N−1) that talk through torch.distributed collectives. Three of them do
all the work here:

    all_reduce(t)      every rank ends with Σ_ranks t          (sum; MAX for a maximum)
    broadcast(t, src)  every rank ends with rank src's t
    all_gather(ts, t)  every rank ends with [t_0, t_1, ..., t_{N−1}]

`run_world(fn, N)` starts a world on this machine (the gloo backend: CPU tensors over loopback) and runs
fn(rank, N, *args) in each process. Under `torchrun` or `accelerate launch` the launcher starts the processes
instead, and the same code runs with NCCL on GPUs.

**Data parallel** (DDP). Every rank holds the whole model and a different slice of the batch. The gradient of the
mean loss over the global batch B = B_0 ∪ ... ∪ B_{N−1} (equal slices) is the mean of the ranks' gradients,

    ∇L(B) = (1/N) Σ_r ∇L(B_r),

so one all-reduce of the gradients, divided by N, makes every rank's gradient the single-process gradient of the
whole batch; identical weights plus identical gradients keep the replicas identical after each step. The weights
start identical by a broadcast from rank 0. The all-reduces run in buckets of about `bucket_cap_mb`, each launched
from a hook as soon as backward has produced every gradient of that bucket, so communication overlaps the rest of
backward. `no_sync()` accumulates micro-batches locally: only the last backward of a step communicates.

**Tensor parallel** (Megatron-LM). Every rank holds a slice of each weight matrix. For y = x Wᵀ with W (out, in):

    column parallel: W split by rows (outputs):   y_r = x W_rᵀ        each rank has its own out/N outputs
    row parallel:    W split by columns (inputs): y = Σ_r x_r W_rᵀ     an all-reduce sums the partial products

A column-parallel layer followed by a row-parallel one (an MLP: up, then down; attention: heads, then o_proj)
needs one all-reduce in the forward pass. Autograd needs the matching communication backwards, so the four
communication ops are autograd Functions with mirrored forward and backward:

    copy_to_parallel       forward: identity                 backward: all-reduce (every rank used x)
    reduce_from_parallel   forward: all-reduce               backward: identity
    scatter_to_parallel    forward: keep this rank's slice   backward: all-gather
    gather_from_parallel   forward: all-gather               backward: keep this rank's slice

The embedding and the loss split the vocabulary: each rank holds ⌈V/N⌉ rows, the last rank's tail padded with rows
no id reaches, and the cross-entropy combines the ranks' partial log-sum-exps without ever gathering the logits.

**Sharded optimizer** (ZeRO stage 1). AdamW keeps two moments per weight, twice the model's size. Every rank steps
only its 1/N slice of each parameter (and keeps the moments of that slice only), then an all-gather puts the
updated slices together on every rank: the same numbers as the unsharded step, with 1/N of the state per rank.

Outside a world (torch.distributed not initialised) every layer is a world of one: the whole layer on rank 0.

Left out: pipeline parallelism, sequence/context parallelism, ZeRO stages 2 and 3 (FSDP, which `llmkata train
--parallel fsdp` takes from torch), gradient compression, mixed-precision communication, NCCL specifics.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .train import AdamW


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) outside a world."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# --------------------------------------------------------------------------------------------------- a world


def run_world(fn, world_size: int, *args, timeout: float = 60.0) -> list:
    """Run fn(rank, world_size, *args) in `world_size` processes joined by torch.distributed (gloo); return the
    list of their results, by rank.

    fn must be picklable (a function defined at module level) and return something picklable. The ranks meet
    through a file store in a fresh temporary folder: two worlds never meet each other by mistake, as they could on
    a fixed port. Failures stop the whole world, never leaving a process behind:
    - a rank raises: RuntimeError naming the rank with its traceback, as soon as it is known (the other ranks may
      be waiting for it in a collective forever: they are killed);
    - a rank dies without a result: RuntimeError with its exit code;
    - the world is not done within `timeout` seconds: TimeoutError naming the ranks still running.
    A world_size below 1 is a ValueError.
    Example: with `def square(rank, world_size): return rank * rank`, run_world(square, 3) -> [0, 1, 4]
    """
    raise NotImplementedError('`parallel.run_world` is not implemented yet — chapter 13 (parallel): see '
                              'test_run_world_returns_each_ranks_result_in_rank_order and 4 more in '
                              'spec/test_parallel.py.')


# ------------------------------------------------------------------------------------------------- data parallel


def broadcast_parameters(module: nn.Module, src: int = 0) -> None:
    """Overwrite every parameter and buffer of `module` with rank `src`'s, on every rank (in place).

    Data-parallel replicas must start identical: ranks seeded differently (or not at all) build different
    initial weights, and averaged gradients cannot bring them back together.
    """
    raise NotImplementedError('`parallel.broadcast_parameters` is not implemented yet — chapter 13 (parallel): see '
                              'test_broadcast_makes_every_rank_hold_the_source_ranks_parameters in '
                              'spec/test_parallel.py.')


class DataParallel(nn.Module):
    """Data parallel training: each rank runs the whole `module` on its own slice of the batch, and backward leaves
    on every rank the gradient averaged over all ranks (the single-process gradient of the whole batch).

    At construction the ranks check that they hold the same parameters (a ValueError naming the counts and sizes
    otherwise), then take rank 0's values (`broadcast_parameters`). Parameters are grouped in buckets of about
    `bucket_cap_mb` megabytes, in reverse order of registration (backward reaches the last layers first). A hook on
    each parameter counts the gradients backward has finished; when a whole bucket is ready, its gradients are
    flattened, divided by the world size and all-reduced asynchronously while backward goes on. Buckets start in
    the same order on every rank (collectives pair up by order); at the end of backward every bucket not yet
    started (say, one with a parameter that got no gradient on this rank, reduced as zeros) is started, every
    bucket is waited for, and the averages are copied back into the gradients.

    Frozen parameters (requires_grad False) are left out; a parameter shared by two modules (tied embeddings) is one
    parameter, reduced once. The state-dict keys are the module's, prefixed with "module.", as torch's DDP.
    """

    def __init__(self, module: nn.Module, bucket_cap_mb: float = 25.0):
        super().__init__()
        self.module = module
        raise NotImplementedError('`parallel.DataParallel.__init__` is not implemented yet — chapter 13 (parallel): '
                                  'see test_data_parallel_replicas_start_from_rank_0s_weights and 5 more in '
                                  'spec/test_parallel.py.')

    def forward(self, *args, **kwargs):
        """The wrapped module's forward, unchanged: the work of data parallelism happens in backward."""
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Inside, backward only accumulates gradients locally; the first backward outside communicates the sum.

            for x, y in micro_batches[:-1]:
                with model.no_sync():
                    loss_of(model(x), y).backward()
            loss_of(model(x_last), y_last).backward()   # all-reduces the accumulated gradients once
        """
        raise NotImplementedError('`parallel.DataParallel.no_sync` is not implemented yet — chapter 13 (parallel): '
                                  'see test_data_parallel_replicas_start_from_rank_0s_weights and 5 more in '
                                  'spec/test_parallel.py.')




def clip_grad_norm_global(parameters, max_norm: float) -> Tensor:
    """Clip by the norm of the whole model when each rank holds part of it; return that norm (the same on every
    rank).

    `parameters` are this rank's share: tensor-parallel shards, or optimizer shards, each element of the model held
    by exactly one rank (a parameter replicated on every rank is passed by one rank only). The global norm is

        ‖g‖ = sqrt(Σ_ranks Σ_local g²),

    one all-reduce of the local sums of squares. If ‖g‖ > max_norm every local gradient is multiplied by
    max_norm / (‖g‖ + 1e−6), as `train.clip_grad_norm` does for one process. Clipping by the local norm instead
    would scale each rank's part by a different factor and bend the update's direction. A non-finite norm is
    returned and nothing is scaled; a max_norm that is not positive is a ValueError.
    """
    raise NotImplementedError('`parallel.clip_grad_norm_global` is not implemented yet — chapter 13 (parallel): see '
                              'test_global_clipping_uses_the_norm_of_the_whole_model in spec/test_parallel.py.')


# ----------------------------------------------------------------------------------- tensor-parallel communication


def copy_to_parallel(x: Tensor) -> Tensor:
    """Forward: x itself. Backward: the all-reduce (sum) of the ranks' gradients. Enters a tensor-parallel region
    whose ranks all read the same x. Example: 2 ranks, gradients g_0, g_1 of x -> both get g_0 + g_1."""
    raise NotImplementedError('`parallel.copy_to_parallel` is not implemented yet — chapter 13 (parallel): see '
                              'test_copy_to_parallel_is_the_identity_forward_and_sums_gradients_backward in '
                              'spec/test_parallel.py.')


def reduce_from_parallel(x: Tensor) -> Tensor:
    """Forward: the all-reduce (sum) of the ranks' x. Backward: the gradient itself, on every rank. Leaves a
    tensor-parallel region whose ranks each computed a partial sum."""
    raise NotImplementedError('`parallel.reduce_from_parallel` is not implemented yet — chapter 13 (parallel): see '
                              'test_reduce_from_parallel_sums_forward_and_passes_the_gradient_back in '
                              'spec/test_parallel.py.')


def scatter_to_parallel(x: Tensor) -> Tensor:
    """Forward: this rank's contiguous slice of the last dimension (size / world). Backward: the all-gather of the
    ranks' gradients along it. A last dimension the world size does not divide is a ValueError naming both."""
    raise NotImplementedError('`parallel.scatter_to_parallel` is not implemented yet — chapter 13 (parallel): see '
                              'test_scatter_and_gather_are_each_others_backward in spec/test_parallel.py.')


def gather_from_parallel(x: Tensor) -> Tensor:
    """Forward: the ranks' x concatenated along the last dimension, in rank order. Backward: this rank's slice of
    the gradient."""
    raise NotImplementedError('`parallel.gather_from_parallel` is not implemented yet — chapter 13 (parallel): see '
                              'test_scatter_and_gather_are_each_others_backward in spec/test_parallel.py.')


# ------------------------------------------------------------------------------------------ tensor-parallel layers


class ColumnParallelLinear(nn.Module):
    """y = x Wᵀ + b with the rows of W (the outputs) split over the ranks: rank r holds rows
    r·out/N .. (r+1)·out/N − 1 of W (out, in) and of b, as `weight` (out/N, in) and `bias` (out/N).

    x (..., in) -> (..., out/N), this rank's outputs; with gather_output, (..., out), all of them. x enters through
    copy_to_parallel, so backward sums the ranks' contributions to x's gradient. An out_features the world size
    does not divide is a ValueError naming both.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, gather_output: bool = False):
        super().__init__()
        raise NotImplementedError('`parallel.ColumnParallelLinear.__init__` is not implemented yet — chapter 13 '
                                  '(parallel): see test_column_parallel_linear_equals_the_dense_layer_sliced and 2 '
                                  'more in spec/test_parallel.py.')

    @classmethod
    def from_dense(cls, linear: nn.Module, gather_output: bool = False) -> ColumnParallelLinear:
        """This rank's shard of a dense linear layer (any module with `weight` (out, in) and `bias` or None)."""
        raise NotImplementedError('`parallel.ColumnParallelLinear.from_dense` is not implemented yet — chapter 13 '
                                  '(parallel): see test_column_parallel_linear_equals_the_dense_layer_sliced and 2 '
                                  'more in spec/test_parallel.py.')

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError('`parallel.ColumnParallelLinear.forward` is not implemented yet — chapter 13 '
                                  '(parallel): see test_column_parallel_linear_equals_the_dense_layer_sliced and 2 '
                                  'more in spec/test_parallel.py.')


class RowParallelLinear(nn.Module):
    """y = x Wᵀ + b with the columns of W (the inputs) split over the ranks: rank r holds columns
    r·in/N .. (r+1)·in/N − 1 of W (out, in) as `weight` (out, in/N), and the whole `bias` (out).

    x (..., in/N) is this rank's slice of the input (input_is_parallel, as a column-parallel layer leaves it);
    otherwise x (..., in) is the whole input and the layer takes its slice (scatter_to_parallel). The ranks'
    partial products x_r W_rᵀ are summed by reduce_from_parallel, and the bias is added once, after the sum: added
    on every rank before it, it would count N times. Returns (..., out) on every rank. An in_features the world size
    does not divide is a ValueError naming both.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, input_is_parallel: bool = True):
        super().__init__()
        raise NotImplementedError('`parallel.RowParallelLinear.__init__` is not implemented yet — chapter 13 '
                                  '(parallel): see test_row_parallel_linear_equals_the_dense_layer_sliced and 3 more '
                                  'in spec/test_parallel.py.')

    @classmethod
    def from_dense(cls, linear: nn.Module, input_is_parallel: bool = True) -> RowParallelLinear:
        """This rank's shard of a dense linear layer (any module with `weight` (out, in) and `bias` or None)."""
        raise NotImplementedError('`parallel.RowParallelLinear.from_dense` is not implemented yet — chapter 13 '
                                  '(parallel): see test_row_parallel_linear_equals_the_dense_layer_sliced and 3 more '
                                  'in spec/test_parallel.py.')

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError('`parallel.RowParallelLinear.forward` is not implemented yet — chapter 13 '
                                  '(parallel): see test_row_parallel_linear_equals_the_dense_layer_sliced and 3 more '
                                  'in spec/test_parallel.py.')


class ParallelSwiGLU(nn.Module):
    """The Llama MLP down_proj(SiLU(gate_proj(x)) * up_proj(x)), tensor parallel: gate_proj and up_proj are column
    parallel (each rank computes hidden/N of the hidden units, the same units of both), down_proj is row parallel
    (it sums the ranks' parts). The elementwise product needs no communication; the forward pass one all-reduce.
    x (..., dim) -> (..., dim) on every rank. A hidden_dim the world size does not divide is a ValueError.
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        raise NotImplementedError('`parallel.ParallelSwiGLU.__init__` is not implemented yet — chapter 13 (parallel): '
                                  'see test_parallel_swiglu_equals_the_dense_mlp and 1 more in spec/test_parallel.py.')

    @classmethod
    def from_dense(cls, mlp: nn.Module) -> ParallelSwiGLU:
        """This rank's shard of a dense SwiGLU (gate_proj, up_proj, down_proj, as layers.SwiGLU)."""
        raise NotImplementedError('`parallel.ParallelSwiGLU.from_dense` is not implemented yet — chapter 13 '
                                  '(parallel): see test_parallel_swiglu_equals_the_dense_mlp and 1 more in '
                                  'spec/test_parallel.py.')

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError('`parallel.ParallelSwiGLU.forward` is not implemented yet — chapter 13 (parallel): '
                                  'see test_parallel_swiglu_equals_the_dense_mlp and 1 more in spec/test_parallel.py.')


class ParallelAttention(nn.Module):
    """Causal self-attention with RoPE and grouped-query attention, its heads split over the ranks.

    Rank r computes query heads r·H/N .. (r+1)·H/N − 1 and key/value heads r·KV/N .. (r+1)·KV/N − 1: with H/KV
    query heads per key/value head, those query heads use exactly those key/value heads, so no rank needs another
    rank's keys. q_proj, k_proj and v_proj are column parallel (whole heads: head_dim rows each), o_proj is row
    parallel. x (B, T, d_model) -> (B, T, d_model) on every rank, the dense layer's output.
    n_heads or n_kv_heads that the world size does not divide is a ValueError naming them and the world size (as
    are the dense layer's own rules: heads divide d_model, n_kv_heads divides n_heads).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, max_seq_len: int = 2048,
                 rope_theta: float = 10000.0):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        raise NotImplementedError('`parallel.ParallelAttention.__init__` is not implemented yet — chapter 13 '
                                  '(parallel): see test_parallel_attention_equals_the_dense_attention and 2 more in '
                                  'spec/test_parallel.py.')

    @classmethod
    def from_dense(cls, attention: nn.Module) -> ParallelAttention:
        """This rank's shard of an `attention.CausalSelfAttention` (its rotary table and RoPE convention kept)."""
        raise NotImplementedError('`parallel.ParallelAttention.from_dense` is not implemented yet — chapter 13 '
                                  '(parallel): see test_parallel_attention_equals_the_dense_attention and 2 more in '
                                  'spec/test_parallel.py.')

    def forward(self, x: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """x (B, T, d_model); position_ids (T,) or (B, T), by default 0 .. T − 1."""
        raise NotImplementedError('`parallel.ParallelAttention.forward` is not implemented yet — chapter 13 '
                                  '(parallel): see test_parallel_attention_equals_the_dense_attention and 2 more in '
                                  'spec/test_parallel.py.')


class VocabParallelEmbedding(nn.Module):
    """An embedding table with its rows (the vocabulary) split over the ranks.

    Each rank holds ⌈V/N⌉ rows: rank r the ids r·⌈V/N⌉ .. (r+1)·⌈V/N⌉ − 1, the rows past V − 1 (on the last ranks,
    when N does not divide V) padding that no id reaches. forward(ids) looks up the ids this rank holds, writes
    zeros for the others, and the all-reduce (reduce_from_parallel) adds the ranks' rows: each id's row comes from
    exactly one rank. ids (...) -> (..., embedding_dim) on every rank.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        raise NotImplementedError('`parallel.VocabParallelEmbedding.__init__` is not implemented yet — chapter 13 '
                                  '(parallel): see test_layers_built_directly_equal_their_shards_put_together and 1 '
                                  'more in spec/test_parallel.py.')

    @classmethod
    def from_dense(cls, embedding: nn.Module) -> VocabParallelEmbedding:
        """This rank's rows of a dense embedding (any module with `weight` (V, dim)), padding rows zero."""
        raise NotImplementedError('`parallel.VocabParallelEmbedding.from_dense` is not implemented yet — chapter 13 '
                                  '(parallel): see test_layers_built_directly_equal_their_shards_put_together and 1 '
                                  'more in spec/test_parallel.py.')

    def forward(self, ids: Tensor) -> Tensor:
        raise NotImplementedError('`parallel.VocabParallelEmbedding.forward` is not implemented yet — chapter 13 '
                                  '(parallel): see test_layers_built_directly_equal_their_shards_put_together and 1 '
                                  'more in spec/test_parallel.py.')


def vocab_parallel_cross_entropy(logits: Tensor, targets: Tensor, vocab_size: int,
                                 ignore_index: int = -100) -> Tensor:
    """The mean cross-entropy of `targets` when each rank holds only its slice of the vocabulary's logits.

    logits (..., V/N) are this rank's columns r·(V/N) .. (r+1)·(V/N) − 1 of the (padded) logits (..., N·(V/N)):
    what a column-parallel head of ⌈V/N⌉ rows per rank gives. Columns ≥ vocab_size are padding: they take no part
    (their logits count as −∞). targets (...) are whole ids in 0..vocab_size − 1, or ignore_index. With the global
    max m (an all-reduce MAX; detached, it cancels out of the value), each rank's Σ exp(z − m) over its columns
    summed by an all-reduce, and the target's logit z[y] − m taken from the rank that holds it (the others add 0):

        loss_i = log Σ_ranks Σ_local exp(z − m) − (z[y_i] − m),   mean over the counted positions.

    The loss is the same scalar on every rank; backward gives each rank the gradient of its own columns,
    (softmax − onehot) / n, through reduce_from_parallel's identity backward. Computed in float32 at least.
    A vocab_size larger than the ranks' columns together is a ValueError. (A rank may hold nothing but padding, as the
    last of 4 ranks of 2 columns for V = 5: its columns add nothing.)
    """
    raise NotImplementedError('`parallel.vocab_parallel_cross_entropy` is not implemented yet — chapter 13 '
                              '(parallel): see test_vocab_parallel_cross_entropy_equals_the_dense_loss in '
                              'spec/test_parallel.py.')


# ------------------------------------------------------------------------------------------- sharded optimizer


class ShardedAdamW(AdamW):
    """AdamW with its state sharded over the ranks (ZeRO stage 1): the numbers of `train.AdamW`, with 1/N of the
    moments on each rank.

    The gradients are the same on every rank (data parallel has averaged them). Each parameter, flattened, is cut
    into N slices of ⌈n/N⌉ elements (the last ones shorter, or empty); rank r keeps exp_avg and exp_avg_sq of slice
    r only (`optimizer.state[p]` = {"step", "exp_avg", "exp_avg_sq"}, the moments of length ⌈n/N⌉ or less), updates
    that slice of the weights by the AdamW rule, and an all-gather puts the N updated slices back together on every
    rank. Arguments, their checks, parameter groups, lr and weight_decay are `train.AdamW`'s.
    """

    @torch.no_grad()
    def step(self) -> None:
        """One AdamW update of this rank's slice of every parameter with a gradient, then an all-gather of all of it."""
        raise NotImplementedError('`parallel.ShardedAdamW.step` is not implemented yet — chapter 13 (parallel): see '
                                  'test_sharded_adamw_equals_unsharded_adamw and 2 more in spec/test_parallel.py.')
