"""Wrong implementations of the parallel chapter that a learner could plausibly write.

The spec runs these in its worlds' ranks: each rank loads the implementation again with the mutant in place
(spec/worlds.py sends the replaced names, pickled by reference), so every replacement here is a module-level
function or class.
"""

import contextlib
import datetime
import math
import multiprocessing
import multiprocessing.connection
import os
import tempfile
import time
import traceback

import llmkata.reference.parallel as ref
import torch
import torch.distributed as dist
from torch import nn

from . import mutant

# ------------------------------------------------------------------------------------------------ the launcher


def _rank_on_a_fixed_port(fn, rank, world_size, store_path, timeout, connection, args):
    """A rank that meets the others on a fixed TCP port, as many tutorials write it (MASTER_PORT=29500)."""
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29533", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout))
    try:
        connection.send(("ok", fn(rank, world_size, *args)))
    except BaseException:  # noqa: BLE001
        connection.send(("error", traceback.format_exc()))
    finally:
        dist.destroy_process_group()


def _launch(fn, world_size, args, timeout, rank_main=ref._rank_main, stop_at_error=True, kill=True,
            use_timeout=True, by_rank=True):
    """The reference's launcher with one of its rules switched off."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torch.distributed"])
    folder = tempfile.mkdtemp(prefix="llmkata-mutant-world-")
    store = os.path.join(folder, "store")
    pipes = [context.Pipe(duplex=False) for _ in range(world_size)]
    processes = [context.Process(target=rank_main, daemon=True,
                                 args=(fn, rank, world_size, store, timeout, pipes[rank][1], args))
                 for rank in range(world_size)]
    results, arrived, errors = [None] * world_size, [], []
    try:
        for process in processes:
            process.start()
        for _, sending in pipes:
            sending.close()
        pending = set(range(world_size))
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic() if use_timeout else None
            if left is not None and left <= 0:
                raise TimeoutError(f"the world of {world_size} did not finish within {timeout} s")
            waiting = {pipes[rank][0]: rank for rank in pending}
            for ready in multiprocessing.connection.wait(list(waiting), timeout=left):
                rank = waiting[ready]
                pending.discard(rank)
                try:
                    status, value = ready.recv()
                except EOFError:
                    raise RuntimeError(f"rank {rank} died") from None
                if status == "error":
                    if stop_at_error:
                        raise RuntimeError(f"rank {rank} failed:\n{value}")
                    errors.append(f"rank {rank} failed:\n{value}")
                    continue
                results[rank] = value
                arrived.append(value)
        if errors:
            raise RuntimeError("\n".join(errors))
    finally:
        if kill:
            for process in processes:
                if process.pid is not None and process.is_alive():
                    process.kill()
            for process in processes:
                if process.pid is not None:
                    process.join()
    return results if by_rank else arrived


@mutant("parallel.run_world", "test_run_world_returns_each_ranks_result_in_rank_order",
        why="returns the results in the order the ranks finish")
def run_world_in_finishing_order(fn, world_size, *args, timeout=60.0):
    return _launch(fn, world_size, args, timeout, by_rank=False)


@mutant("parallel.run_world", "test_two_worlds_at_once_do_not_meet",
        why="every world meets on the same fixed port: two at once collide")
def run_world_on_a_fixed_port(fn, world_size, *args, timeout=60.0):
    return _launch(fn, world_size, args, timeout, rank_main=_rank_on_a_fixed_port)


@mutant("parallel.run_world", "test_a_failing_rank_stops_the_whole_world_at_once",
        why="after a rank fails, waits for the others to finish (they wait for it until the timeout)")
def run_world_waiting_for_every_rank(fn, world_size, *args, timeout=60.0):
    return _launch(fn, world_size, args, timeout, stop_at_error=False)


@mutant("parallel.run_world", "test_a_world_past_its_timeout_is_stopped",
        why="no timeout: waits for the ranks however long they take")
def run_world_without_a_timeout(fn, world_size, *args, timeout=60.0):
    return _launch(fn, world_size, args, timeout, use_timeout=False)


@mutant("parallel.run_world", "test_a_failing_rank_stops_the_whole_world_at_once",
        "test_a_world_past_its_timeout_is_stopped",
        why="raises on a failure or a timeout, but leaves the other ranks running")
def run_world_leaving_ranks_behind(fn, world_size, *args, timeout=60.0):
    return _launch(fn, world_size, args, timeout, kill=False)


@mutant("parallel.run_world", "test_a_world_of_no_process_is_rejected",
        why="a world of 0 processes returns an empty list")
def run_world_of_any_size(fn, world_size, *args, timeout=60.0):
    if world_size < 1:
        return []
    return ref.run_world(fn, world_size, *args, timeout=timeout)


# ------------------------------------------------------------------------------------------------ data parallel


@mutant("parallel.broadcast_parameters", "test_broadcast_makes_every_rank_hold_the_source_ranks_parameters",
        why="always broadcasts from rank 0, whatever src says")
def broadcast_from_rank_0(module, src=0):
    ref.broadcast_parameters(module, 0)


class _SummingBuckets(ref._Buckets):
    def start(self, index):
        bucket = self.buckets[index]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket])
        self.pending[index] = (dist.all_reduce(flat, async_op=True), flat)  # summed, never divided
        self.next = index + 1


class _BucketsWithFrozen(ref._Buckets):
    """Frozen parameters ride along in the last bucket (no hook can fire for them: it is started at the end)."""

    def __init__(self, parameters, cap_bytes, syncing):
        super().__init__([p for p in parameters if p.requires_grad], cap_bytes, syncing)
        self.buckets[-1].extend(p for p in parameters if not p.requires_grad)
        self.bucket_of = {p: i for i, bucket in enumerate(self.buckets) for p in bucket}
        self.reset()


def _data_parallel(self, module, bucket_cap_mb, buckets=ref._Buckets, broadcast=True, frozen_too=False):
    nn.Module.__init__(self)
    self.module = module
    self.require_sync = True
    parameters = [p for p in module.parameters() if p.requires_grad or frozen_too]
    ref._check_same_parameters(parameters)
    if broadcast:
        ref.broadcast_parameters(module)
    self._buckets = buckets(parameters, bucket_cap_mb * 2**20, lambda: self.require_sync)


@mutant("parallel.DataParallel", "test_data_parallel_gradients_equal_the_full_batch_gradient",
        "test_data_parallel_training_equals_one_process", "test_training_steps_agree_across_world_sizes",
        why="sums the ranks' gradients instead of averaging them")
class DataParallelSummingGradients(ref.DataParallel):
    def __init__(self, module, bucket_cap_mb=25.0):
        _data_parallel(self, module, bucket_cap_mb, buckets=_SummingBuckets)


@mutant("parallel.DataParallel", "test_data_parallel_replicas_start_from_rank_0s_weights",
        why="never broadcasts: each replica keeps the weights its rank initialised")
class DataParallelWithoutBroadcast(ref.DataParallel):
    def __init__(self, module, bucket_cap_mb=25.0):
        _data_parallel(self, module, bucket_cap_mb, broadcast=False)


@mutant("parallel.DataParallel", "test_data_parallel_gradients_equal_the_full_batch_gradient",
        why="buckets every parameter, frozen ones too: they come out of backward with a gradient of zeros")
class DataParallelBucketingFrozenParameters(ref.DataParallel):
    def __init__(self, module, bucket_cap_mb=25.0):
        _data_parallel(self, module, bucket_cap_mb, buckets=_BucketsWithFrozen, frozen_too=True)


@mutant("parallel.DataParallel", "test_no_sync_accumulates_locally_and_the_last_micro_batch_syncs",
        why="no_sync() changes nothing: every micro-batch's backward communicates")
class DataParallelAlwaysSyncing(ref.DataParallel):
    @contextlib.contextmanager
    def no_sync(self):
        yield


@mutant("parallel.DataParallel", "test_no_sync_accumulates_locally_and_the_last_micro_batch_syncs",
        why="no_sync() switches synchronisation off and never back on")
class DataParallelNeverSyncingAgain(ref.DataParallel):
    @contextlib.contextmanager
    def no_sync(self):
        self.require_sync = False
        yield


@mutant("parallel.DataParallel", "test_data_parallel_rejects_ranks_with_different_models",
        why="rejects different models with a message that does not say how they differ")
class DataParallelWithAVagueError(ref.DataParallel):
    def __init__(self, module, bucket_cap_mb=25.0):
        try:
            super().__init__(module, bucket_cap_mb)
        except ValueError:
            raise ValueError("the models on the ranks differ") from None


@mutant("parallel.clip_grad_norm_global", "test_global_clipping_uses_the_norm_of_the_whole_model",
        why="clips by this rank's own norm")
def clip_by_the_local_norm(parameters, max_norm):
    from llmkata.reference.train import clip_grad_norm

    return clip_grad_norm(parameters, max_norm)


@mutant("parallel.clip_grad_norm_global", "test_global_clipping_uses_the_norm_of_the_whole_model",
        why="all-reduces the ranks' norms instead of their sums of squares")
def clip_by_the_sum_of_local_norms(parameters, max_norm):
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads])).double()
    dist.all_reduce(total)
    if total > max_norm:
        for g in grads:
            g.mul_(max_norm / (total + 1e-6))
    return total.float()


# ---------------------------------------------------------------------------------- tensor-parallel communication


class _IdentityBothWays(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _ReduceBothWays(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return ref._all_reduce(x)

    @staticmethod
    def backward(ctx, grad):
        return ref._all_reduce(grad)


class _GatherKeepingRank0sGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return ref._gather_last(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.chunk(ref._world()[1], dim=-1)[0].contiguous()


@mutant("parallel.copy_to_parallel",
        "test_copy_to_parallel_is_the_identity_forward_and_sums_gradients_backward",
        why="backward passes the gradient through without the all-reduce")
def copy_to_without_all_reduce(x):
    return _IdentityBothWays.apply(x)


@mutant("parallel.reduce_from_parallel", "test_reduce_from_parallel_sums_forward_and_passes_the_gradient_back",
        why="backward all-reduces as well: every gradient counted world-size times")
def reduce_from_reducing_backward_too(x):
    return _ReduceBothWays.apply(x)


@mutant("parallel.scatter_to_parallel", "test_scatter_and_gather_are_each_others_backward",
        why="takes the mirrored slice (rank r gets slice N − 1 − r)")
def scatter_mirrored(x):
    return ref.scatter_to_parallel(x.flip(-1)).flip(-1)


@mutant("parallel.gather_from_parallel", "test_scatter_and_gather_are_each_others_backward",
        why="backward hands every rank rank 0's slice of the gradient")
def gather_with_rank_0s_gradient(x):
    return _GatherKeepingRank0sGradient.apply(x)


# ------------------------------------------------------------------------------------------ tensor-parallel layers


@mutant("parallel.ColumnParallelLinear", "test_column_parallel_linear_equals_the_dense_layer_sliced",
        why="takes every world-size-th row (strided) instead of a contiguous block")
class ColumnParallelLinearStrided(ref.ColumnParallelLinear):
    @classmethod
    def from_dense(cls, linear, gather_output=False):
        layer = super().from_dense(linear, gather_output)
        rank, world = ref._world()
        with torch.no_grad():
            layer.weight.copy_(linear.weight[rank::world])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias[rank::world])
        return layer


@mutant("parallel.ColumnParallelLinear", "test_column_parallel_linear_equals_the_dense_layer_sliced",
        why="x enters without copy_to_parallel: its gradient is only this rank's part")
class ColumnParallelLinearWithoutCopy(ref.ColumnParallelLinear):
    def forward(self, x):
        y = x @ self.weight.T
        if self.bias is not None:
            y = y + self.bias
        return ref.gather_from_parallel(y) if self.gather_output else y


@mutant("parallel.RowParallelLinear", "test_row_parallel_bias_is_added_once",
        "test_row_parallel_linear_equals_the_dense_layer_sliced",
        why="adds the bias on every rank before the all-reduce: N times in the sum")
class RowParallelLinearBiasPerRank(ref.RowParallelLinear):
    def forward(self, x):
        if not self.input_is_parallel:
            x = ref.scatter_to_parallel(x)
        y = x @ self.weight.T
        if self.bias is not None:
            y = y + self.bias
        return ref.reduce_from_parallel(y)


@mutant("parallel.RowParallelLinear", "test_row_parallel_linear_equals_the_dense_layer_sliced",
        why="forgets the all-reduce: each rank returns its partial sum")
class RowParallelLinearWithoutReduce(ref.RowParallelLinear):
    def forward(self, x):
        if not self.input_is_parallel:
            x = ref.scatter_to_parallel(x)
        y = x @ self.weight.T
        return y if self.bias is None else y + self.bias


@mutant("parallel.ParallelSwiGLU", "test_parallel_swiglu_equals_the_dense_mlp",
        why="all-reduces the block's output again, on top of down_proj's own all-reduce")
class ParallelSwiGLUReducedTwice(ref.ParallelSwiGLU):
    def forward(self, x):
        return ref.reduce_from_parallel(super().forward(x))


@mutant("parallel.ParallelAttention", "test_parallel_attention_equals_the_dense_attention",
        why="every rank takes the first key/value heads instead of those of its own query heads")
class ParallelAttentionWithTheFirstKVHeads(ref.ParallelAttention):
    @classmethod
    def from_dense(cls, attention):
        layer = super().from_dense(attention)
        with torch.no_grad():
            for name in ("k_proj", "v_proj"):
                mine = getattr(layer, name).weight
                mine.copy_(getattr(attention, name).weight[: mine.shape[0]])
        return layer


@mutant("parallel.ParallelAttention", "test_tensor_parallel_layers_reject_sizes_the_world_does_not_divide",
        why="checks that the world divides the query heads, but not the key/value heads")
class ParallelAttentionCheckingOnlyQueryHeads(ref.ParallelAttention):
    def __init__(self, d_model, n_heads, n_kv_heads=None, max_seq_len=2048, rope_theta=10000.0):
        nn.Module.__init__(self)
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        world = ref._world()[1]
        if n_heads % world:
            raise ValueError(f"n_heads = {n_heads} does not split evenly over a world of size {world}")
        self.head_dim = d_model // n_heads
        self.local_heads, self.local_kv_heads = n_heads // world, max(1, n_kv_heads // world)
        self.q_proj = ref.ColumnParallelLinear(d_model, n_heads * self.head_dim, bias=False)
        self.k_proj = ref.ColumnParallelLinear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = ref.ColumnParallelLinear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = ref.RowParallelLinear(n_heads * self.head_dim, d_model, bias=False)
        self.rotary = ref.RotaryEmbedding(self.head_dim, max_seq_len, rope_theta)


@mutant("parallel.VocabParallelEmbedding", "test_vocab_parallel_embedding_equals_the_dense_embedding",
        why="looks every id up in its own rows, clamped, without zeroing the ids of other ranks")
class VocabParallelEmbeddingWithoutMask(ref.VocabParallelEmbedding):
    def forward(self, ids):
        local = (ids - self.start).clamp(0, self.rows - 1)
        return ref.reduce_from_parallel(self.weight[local])


@mutant("parallel.VocabParallelEmbedding", "test_vocab_parallel_embedding_equals_the_dense_embedding",
        why="⌊V/N⌋ rows per rank and the remainder on the last one: not the layout the head and the loss use")
class VocabParallelEmbeddingRemainderLast(ref.VocabParallelEmbedding):
    @classmethod
    def from_dense(cls, embedding):
        layer = super().from_dense(embedding)
        rank, world = ref._world()
        vocab = embedding.weight.shape[0]
        rows = max(1, vocab // world)
        start = rank * rows
        stop = vocab if rank == world - 1 else start + rows
        weight = torch.zeros(max(stop - start, 1), embedding.weight.shape[1], dtype=embedding.weight.dtype)
        weight[: max(0, stop - start)] = embedding.weight[start:stop]
        layer.weight = nn.Parameter(weight)
        layer.start, layer.rows = start, weight.shape[0]
        return layer


@mutant("parallel.vocab_parallel_cross_entropy", "test_vocab_parallel_cross_entropy_equals_the_dense_loss",
        why="counts the padding columns as part of the vocabulary")
def vocab_ce_with_padding(logits, targets, vocab_size, ignore_index=-100):
    return ref.vocab_parallel_cross_entropy(logits, targets, logits.shape[-1] * ref._world()[1], ignore_index)


@mutant("parallel.vocab_parallel_cross_entropy", "test_vocab_parallel_cross_entropy_equals_the_dense_loss",
        why="each rank subtracts its own max: the ranks' sums of exponentials do not add up")
def vocab_ce_with_local_max(logits, targets, vocab_size, ignore_index=-100):
    rank = ref._world()[0]
    local = logits.shape[-1]
    z, y = logits.reshape(-1, local), targets.reshape(-1)
    start = rank * local
    z = z.masked_fill(start + torch.arange(local) >= vocab_size, float("-inf"))
    m = z.detach().amax(-1)  # never all-reduced
    total = ref.reduce_from_parallel(torch.exp(z - m[:, None]).sum(-1))
    counted = y != ignore_index
    mine = counted & (y >= start) & (y < start + local)
    picked = z.gather(-1, torch.where(mine, y - start, 0)[:, None]).squeeze(-1) - m
    target = ref.reduce_from_parallel(torch.where(mine, picked, 0.0))
    return torch.where(counted, torch.log(total) - target, 0.0).sum() / counted.sum()


@mutant("parallel.vocab_parallel_cross_entropy", "test_vocab_parallel_cross_entropy_equals_the_dense_loss",
        why="divides by every position, ignored ones included")
def vocab_ce_counting_ignored(logits, targets, vocab_size, ignore_index=-100):
    counted = (targets != ignore_index).sum()
    return ref.vocab_parallel_cross_entropy(logits, targets, vocab_size, ignore_index) * counted / targets.numel()


# --------------------------------------------------------------------------------------------- sharded optimizer


class _FullAdamW(ref.ShardedAdamW):
    """Every rank steps every element (correct numbers, but the whole state on every rank)."""

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                p.mul_(1 - lr * decay)
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                corrected = self.bias_correction
                denominator = (v.sqrt() / (math.sqrt(1 - beta2**t) if corrected else 1.0)).add_(eps)
                p.addcdiv_(m, denominator, value=-lr / ((1 - beta1**t) if corrected else 1.0))

    bias_correction = True


@mutant("parallel.ShardedAdamW", "test_sharded_adamw_keeps_a_1_over_world_share_of_the_state_per_rank",
        why="every rank keeps the moments of every element (no sharding at all)")
class ShardedAdamWKeepingFullState(_FullAdamW):
    pass


@mutant("parallel.ShardedAdamW", "test_sharded_adamw_equals_unsharded_adamw",
        why="no bias correction of the moments")
class ShardedAdamWWithoutBiasCorrection(_FullAdamW):
    bias_correction = False


@mutant("parallel.ShardedAdamW", "test_sharded_adamw_equals_unsharded_adamw",
        "test_training_steps_agree_across_world_sizes",
        why="steps its own slice but never all-gathers: the other slices stay as they were")
class ShardedAdamWWithoutAllGather(ref.ShardedAdamW):
    @torch.no_grad()
    def step(self):
        rank, world = ref._world()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                flat, grad = p.data.view(-1), p.grad.reshape(-1)
                size = -(-flat.numel() // world)
                low, high = min(rank * size, flat.numel()), min((rank + 1) * size, flat.numel())
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros(high - low, dtype=p.dtype),
                                 exp_avg_sq=torch.zeros(high - low, dtype=p.dtype))
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                weights, g = flat[low:high], grad[low:high]
                weights.mul_(1 - lr * decay)
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                weights.addcdiv_(m, (v.sqrt() / math.sqrt(1 - beta2**t)).add_(eps), value=-lr / (1 - beta1**t))


# ------------------------------------------------------------------------------------------- layers built directly


@mutant("parallel.ColumnParallelLinear",
        "test_layers_built_directly_equal_their_shards_put_together",
        why="forgets to divide the outputs by the world size: every rank holds the whole weight")
class ColumnParallelLinearUnsharded(ref.ColumnParallelLinear):
    def __init__(self, in_features, out_features, bias=True, gather_output=False):
        nn.Module.__init__(self)
        self.in_features, self.out_features, self.gather_output = in_features, out_features, gather_output
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound)) if bias else None


@mutant("parallel.VocabParallelEmbedding",
        "test_layers_built_directly_equal_their_shards_put_together",
        why="leaves the padding rows random")
class VocabParallelEmbeddingWithRandomPadding(ref.VocabParallelEmbedding):
    def __init__(self, num_embeddings, embedding_dim):
        super().__init__(num_embeddings, embedding_dim)
        with torch.no_grad():
            self.weight.normal_()
