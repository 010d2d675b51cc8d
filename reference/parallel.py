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
import datetime
import math
import multiprocessing
import multiprocessing.connection
import os
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .attention import repeat_kv, scaled_dot_product_attention
from .layers import silu
from .rope import RotaryEmbedding
from .train import AdamW


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) outside a world."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# --------------------------------------------------------------------------------------------------- a world

# BEGIN SOLUTION
def _rank_main(fn, rank: int, world_size: int, store_path: str, timeout: float, connection, args) -> None:
    """One rank: join the world through the file store, run fn, send ("ok", result) or ("error", traceback)."""
    torch.set_num_threads(1)  # N ranks on N cores: more threads per rank would only fight over them
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world_size), rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout))
    try:
        connection.send(("ok", fn(rank, world_size, *args)))
    except BaseException:  # noqa: BLE001 - every failure goes back to the parent, which stops the world
        connection.send(("error", traceback.format_exc()))
    finally:
        dist.destroy_process_group()
        connection.close()
# END SOLUTION


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
    # BEGIN SOLUTION
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"a world needs at least 1 process, got world_size={world_size!r}")
    # forkserver: each rank is forked from a small server process that has imported torch once (quick to start)
    # and has no threads of ours (fork copies only the calling thread, so a forked multi-threaded parent can hang).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torch.distributed"])
    with tempfile.TemporaryDirectory(prefix="llmkata-world-") as folder:
        store = os.path.join(folder, "store")
        pipes = [context.Pipe(duplex=False) for _ in range(world_size)]  # (receiving end, sending end)
        processes = [context.Process(target=_rank_main, daemon=True,
                                     args=(fn, rank, world_size, store, timeout, pipes[rank][1], args))
                     for rank in range(world_size)]
        results: list = [None] * world_size
        try:
            for process in processes:
                process.start()
            for _, sending in pipes:
                sending.close()  # the parent only receives; EOF then means the rank is gone
            pending = set(range(world_size))
            deadline = time.monotonic() + timeout
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the world of {world_size} did not finish within {timeout} s: ranks "
                                       f"{sorted(pending)} were still running")
                waiting = {pipes[rank][0]: rank for rank in pending}
                for ready in multiprocessing.connection.wait(list(waiting), timeout=left):
                    rank = waiting[ready]
                    try:
                        status, value = ready.recv()
                    except EOFError:
                        processes[rank].join(1)
                        raise RuntimeError(f"rank {rank} of {world_size} died without a result (exit code "
                                           f"{processes[rank].exitcode})") from None
                    if status == "error":
                        raise RuntimeError(f"rank {rank} of {world_size} failed:\n{value}")
                    results[rank] = value
                    pending.discard(rank)
        finally:
            for process in processes:
                if process.pid is not None and process.is_alive():
                    process.kill()
            for process in processes:
                if process.pid is not None:  # started
                    process.join()
            for receiving, _ in pipes:
                receiving.close()
    return results
    # END SOLUTION


# ------------------------------------------------------------------------------------------------- data parallel


def broadcast_parameters(module: nn.Module, src: int = 0) -> None:
    """Overwrite every parameter and buffer of `module` with rank `src`'s, on every rank (in place).

    Data-parallel replicas must start identical: ranks seeded differently (or not at all) build different
    initial weights, and averaged gradients cannot bring them back together.
    """
    # BEGIN SOLUTION
    if _world()[1] == 1:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src)
    # END SOLUTION


# BEGIN SOLUTION
class _Buckets:
    """The gradient averaging of DataParallel: parameters in buckets, each all-reduced once its gradients are done."""

    def __init__(self, parameters: list[nn.Parameter], cap_bytes: float, syncing):
        self.world_size = _world()[1]
        self.syncing = syncing  # () -> bool: False inside no_sync()
        self.buckets: list[list[nn.Parameter]] = []
        size = 0
        for p in reversed(parameters):  # backward produces the gradients of the last layers first
            if not self.buckets or size + p.numel() * p.element_size() > cap_bytes:  # (a bigger one: alone)
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += p.numel() * p.element_size()
        self.bucket_of = {p: i for i, bucket in enumerate(self.buckets) for p in bucket}
        self.reset()
        for p in parameters:
            p.register_post_accumulate_grad_hook(self.gradient_ready)

    def reset(self) -> None:
        self.ready = [0] * len(self.buckets)  # gradients finished per bucket in this backward
        self.pending: list = [None] * len(self.buckets)  # (work, flat buffer) of each started bucket
        self.next = 0  # the next bucket to start: buckets start in order, the same on every rank
        self.finishing = False

    def gradient_ready(self, p: nn.Parameter) -> None:
        if self.world_size == 1 or not self.syncing():
            return
        if not self.finishing:  # the first gradient of this backward: finish every bucket when backward ends
            torch.autograd.Variable._execution_engine.queue_callback(self.finish)
            self.finishing = True
        self.ready[self.bucket_of[p]] += 1
        while self.next < len(self.buckets) and self.ready[self.next] == len(self.buckets[self.next]):
            self.start(self.next)

    def start(self, index: int) -> None:
        bucket = self.buckets[index]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket])
        flat.div_(self.world_size)  # the mean over ranks: the sum of g_r / N
        self.pending[index] = (dist.all_reduce(flat, async_op=True), flat)
        self.next = index + 1

    def finish(self) -> None:
        while self.next < len(self.buckets):  # buckets with a parameter that got no gradient here
            self.start(self.next)
        for bucket, (work, flat) in zip(self.buckets, self.pending):
            work.wait()
            offset = 0
            for p in bucket:
                averaged = flat[offset: offset + p.numel()].view_as(p)
                if p.grad is None:
                    p.grad = averaged.clone()
                else:
                    p.grad.copy_(averaged)
                offset += p.numel()
        self.reset()


def _check_same_parameters(parameters: list[Tensor]) -> None:
    """A ValueError on every rank unless all ranks hold the same number of parameters with the same shapes."""
    world = _world()[1]
    if world == 1:
        return
    shapes = [tuple(p.shape) for p in parameters]
    mine = torch.tensor([len(shapes), sum(p.numel() for p in parameters), hash(tuple(shapes)) % (2**61)],
                        dtype=torch.int64)
    everyone = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(everyone, mine)
    if any(not torch.equal(other, everyone[0]) for other in everyone):
        sizes = ", ".join(f"rank {r}: {int(t[0])} parameters of {int(t[1])} elements" for r, t in enumerate(everyone))
        raise ValueError(f"the ranks do not hold the same model ({sizes}); data parallel needs identical replicas")
# END SOLUTION


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
        # BEGIN SOLUTION
        self.require_sync = True
        parameters = [p for p in module.parameters() if p.requires_grad]  # parameters() lists a tied one once
        _check_same_parameters(parameters)
        broadcast_parameters(module)
        self._buckets = _Buckets(parameters, bucket_cap_mb * 2**20, lambda: self.require_sync)
        # END SOLUTION

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
        # BEGIN SOLUTION
        before, self.require_sync = self.require_sync, False
        try:
            yield
        finally:
            self.require_sync = before
        # END SOLUTION




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
    # BEGIN SOLUTION
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    squares = torch.zeros((), dtype=torch.float64)
    for g in grads:
        squares += g.detach().double().pow(2).sum()
    if _world()[1] > 1:
        dist.all_reduce(squares)
    total = squares.sqrt().float()
    if torch.isfinite(total) and total > max_norm:
        factor = max_norm / (total + 1e-6)
        for g in grads:
            g.mul_(factor.to(g.dtype))
    return total
    # END SOLUTION


# ----------------------------------------------------------------------------------- tensor-parallel communication

# BEGIN SOLUTION
def _split_last(x: Tensor) -> Tensor:
    """This rank's contiguous slice of the last dimension.  Example: 2 ranks, [a b c d] -> rank 1 gets [c d]"""
    rank, world = _world()
    if x.shape[-1] % world:
        raise ValueError(f"the last dimension, {x.shape[-1]}, does not split evenly over a world of size {world}")
    size = x.shape[-1] // world
    return x[..., rank * size: (rank + 1) * size].contiguous()


def _gather_last(x: Tensor) -> Tensor:
    """Every rank's x, concatenated along the last dimension in rank order."""
    world = _world()[1]
    pieces = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(pieces, x.contiguous())
    return torch.cat(pieces, dim=-1)


def _all_reduce(x: Tensor) -> Tensor:
    x = x.clone()  # never change the caller's tensor in place
    dist.all_reduce(x)
    return x


class _CopyToParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad)  # each rank's part of the loss used x: its gradient is the sum of theirs


class _ReduceFromParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return _all_reduce(x)

    @staticmethod
    def backward(ctx, grad):
        return grad  # y = Σ_r x_r: ∂y/∂x_r = 1 for every rank's own x_r


class _ScatterToParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return _split_last(x)

    @staticmethod
    def backward(ctx, grad):
        return _gather_last(grad)


class _GatherFromParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return _gather_last(x)

    @staticmethod
    def backward(ctx, grad):
        return _split_last(grad)
# END SOLUTION


def copy_to_parallel(x: Tensor) -> Tensor:
    """Forward: x itself. Backward: the all-reduce (sum) of the ranks' gradients. Enters a tensor-parallel region
    whose ranks all read the same x. Example: 2 ranks, gradients g_0, g_1 of x -> both get g_0 + g_1."""
    # BEGIN SOLUTION
    return x if _world()[1] == 1 else _CopyToParallel.apply(x)
    # END SOLUTION


def reduce_from_parallel(x: Tensor) -> Tensor:
    """Forward: the all-reduce (sum) of the ranks' x. Backward: the gradient itself, on every rank. Leaves a
    tensor-parallel region whose ranks each computed a partial sum."""
    # BEGIN SOLUTION
    return x if _world()[1] == 1 else _ReduceFromParallel.apply(x)
    # END SOLUTION


def scatter_to_parallel(x: Tensor) -> Tensor:
    """Forward: this rank's contiguous slice of the last dimension (size / world). Backward: the all-gather of the
    ranks' gradients along it. A last dimension the world size does not divide is a ValueError naming both."""
    # BEGIN SOLUTION
    return x if _world()[1] == 1 else _ScatterToParallel.apply(x)
    # END SOLUTION


def gather_from_parallel(x: Tensor) -> Tensor:
    """Forward: the ranks' x concatenated along the last dimension, in rank order. Backward: this rank's slice of
    the gradient."""
    # BEGIN SOLUTION
    return x if _world()[1] == 1 else _GatherFromParallel.apply(x)
    # END SOLUTION


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
        # BEGIN SOLUTION
        world = _world()[1]
        if out_features % world:
            raise ValueError(f"out_features = {out_features} does not split evenly over a world of size {world}")
        self.in_features, self.out_features, self.gather_output = in_features, out_features, gather_output
        bound = 1.0 / math.sqrt(in_features)
        local = out_features // world
        self.weight = nn.Parameter(torch.empty(local, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(local).uniform_(-bound, bound)) if bias else None
        # END SOLUTION

    @classmethod
    def from_dense(cls, linear: nn.Module, gather_output: bool = False) -> ColumnParallelLinear:
        """This rank's shard of a dense linear layer (any module with `weight` (out, in) and `bias` or None)."""
        # BEGIN SOLUTION
        out_features, in_features = linear.weight.shape
        layer = cls(in_features, out_features, bias=linear.bias is not None, gather_output=gather_output)
        layer = layer.to(linear.weight.dtype)
        rank, local = _world()[0], layer.weight.shape[0]
        rows = slice(rank * local, (rank + 1) * local)
        with torch.no_grad():
            layer.weight.copy_(linear.weight[rows])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias[rows])
        return layer
        # END SOLUTION

    def forward(self, x: Tensor) -> Tensor:
        # BEGIN SOLUTION
        x = copy_to_parallel(x)
        y = x @ self.weight.T  # (..., out/N)
        if self.bias is not None:
            y = y + self.bias
        return gather_from_parallel(y) if self.gather_output else y
        # END SOLUTION


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
        # BEGIN SOLUTION
        world = _world()[1]
        if in_features % world:
            raise ValueError(f"in_features = {in_features} does not split evenly over a world of size {world}")
        self.in_features, self.out_features, self.input_is_parallel = in_features, out_features, input_is_parallel
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features // world).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound)) if bias else None
        # END SOLUTION

    @classmethod
    def from_dense(cls, linear: nn.Module, input_is_parallel: bool = True) -> RowParallelLinear:
        """This rank's shard of a dense linear layer (any module with `weight` (out, in) and `bias` or None)."""
        # BEGIN SOLUTION
        out_features, in_features = linear.weight.shape
        layer = cls(in_features, out_features, bias=linear.bias is not None, input_is_parallel=input_is_parallel)
        layer = layer.to(linear.weight.dtype)
        rank, local = _world()[0], layer.weight.shape[1]
        with torch.no_grad():
            layer.weight.copy_(linear.weight[:, rank * local: (rank + 1) * local])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer
        # END SOLUTION

    def forward(self, x: Tensor) -> Tensor:
        # BEGIN SOLUTION
        if not self.input_is_parallel:
            x = scatter_to_parallel(x)
        y = reduce_from_parallel(x @ self.weight.T)  # (..., out): Σ_r x_r W_rᵀ
        return y if self.bias is None else y + self.bias
        # END SOLUTION


class ParallelSwiGLU(nn.Module):
    """The Llama MLP down_proj(SiLU(gate_proj(x)) * up_proj(x)), tensor parallel: gate_proj and up_proj are column
    parallel (each rank computes hidden/N of the hidden units, the same units of both), down_proj is row parallel
    (it sums the ranks' parts). The elementwise product needs no communication; the forward pass one all-reduce.
    x (..., dim) -> (..., dim) on every rank. A hidden_dim the world size does not divide is a ValueError.
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        # BEGIN SOLUTION
        self.gate_proj = ColumnParallelLinear(dim, hidden_dim, bias=False)
        self.up_proj = ColumnParallelLinear(dim, hidden_dim, bias=False)
        self.down_proj = RowParallelLinear(hidden_dim, dim, bias=False)
        # END SOLUTION

    @classmethod
    def from_dense(cls, mlp: nn.Module) -> ParallelSwiGLU:
        """This rank's shard of a dense SwiGLU (gate_proj, up_proj, down_proj, as layers.SwiGLU)."""
        # BEGIN SOLUTION
        hidden_dim, dim = mlp.gate_proj.weight.shape
        layer = cls(dim, hidden_dim)
        layer.gate_proj = ColumnParallelLinear.from_dense(mlp.gate_proj)
        layer.up_proj = ColumnParallelLinear.from_dense(mlp.up_proj)
        layer.down_proj = RowParallelLinear.from_dense(mlp.down_proj)
        return layer
        # END SOLUTION

    def forward(self, x: Tensor) -> Tensor:
        # BEGIN SOLUTION
        return self.down_proj(silu(self.gate_proj(x)) * self.up_proj(x))  # (..., hidden/N) inside
        # END SOLUTION


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
        # BEGIN SOLUTION
        world = _world()[1]
        if n_heads <= 0 or d_model % n_heads:
            raise ValueError(f"d_model = {d_model} must split evenly into n_heads = {n_heads} heads")
        if n_kv_heads <= 0 or n_heads % n_kv_heads:
            raise ValueError(f"n_heads = {n_heads} must split evenly into groups over n_kv_heads = {n_kv_heads}")
        if n_heads % world or n_kv_heads % world:
            raise ValueError(f"n_heads = {n_heads} and n_kv_heads = {n_kv_heads} must both split evenly over a "
                             f"world of size {world}")
        self.head_dim = d_model // n_heads
        self.local_heads, self.local_kv_heads = n_heads // world, n_kv_heads // world
        self.q_proj = ColumnParallelLinear(d_model, n_heads * self.head_dim, bias=False)
        self.k_proj = ColumnParallelLinear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = ColumnParallelLinear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = RowParallelLinear(n_heads * self.head_dim, d_model, bias=False)
        self.rotary = RotaryEmbedding(self.head_dim, max_seq_len, rope_theta)
        # END SOLUTION

    @classmethod
    def from_dense(cls, attention: nn.Module) -> ParallelAttention:
        """This rank's shard of an `attention.CausalSelfAttention` (its rotary table and RoPE convention kept)."""
        # BEGIN SOLUTION
        rotary = attention.rotary
        layer = cls(attention.d_model, attention.n_heads, attention.n_kv_heads, rotary.max_positions, rotary.theta)
        layer.rotary = RotaryEmbedding(rotary.head_dim, rotary.max_positions, rotary.theta, rotary.interleaved)
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(layer, name, ColumnParallelLinear.from_dense(getattr(attention, name)))
        layer.o_proj = RowParallelLinear.from_dense(attention.o_proj)
        return layer
        # END SOLUTION

    def forward(self, x: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """x (B, T, d_model); position_ids (T,) or (B, T), by default 0 .. T − 1."""
        # BEGIN SOLUTION
        batch, length, _ = x.shape
        if position_ids is None:
            position_ids = torch.arange(length, device=x.device)
        positions = position_ids if position_ids.dim() == 1 else position_ids[:, None, :]
        heads, kv_heads, head_dim = self.local_heads, self.local_kv_heads, self.head_dim
        q = self.q_proj(x).view(batch, length, heads, head_dim).transpose(1, 2)  # (B, H/N, T, hd)
        k = self.k_proj(x).view(batch, length, kv_heads, head_dim).transpose(1, 2)  # (B, KV/N, T, hd)
        v = self.v_proj(x).view(batch, length, kv_heads, head_dim).transpose(1, 2)
        q, k = self.rotary(q, positions), self.rotary(k, positions)
        k, v = repeat_kv(k, heads // kv_heads), repeat_kv(v, heads // kv_heads)  # (B, H/N, T, hd)
        out = scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H/N, T, hd)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, heads * head_dim))  # sums the ranks' heads
        # END SOLUTION


class VocabParallelEmbedding(nn.Module):
    """An embedding table with its rows (the vocabulary) split over the ranks.

    Each rank holds ⌈V/N⌉ rows: rank r the ids r·⌈V/N⌉ .. (r+1)·⌈V/N⌉ − 1, the rows past V − 1 (on the last ranks,
    when N does not divide V) padding that no id reaches. forward(ids) looks up the ids this rank holds, writes
    zeros for the others, and the all-reduce (reduce_from_parallel) adds the ranks' rows: each id's row comes from
    exactly one rank. ids (...) -> (..., embedding_dim) on every rank.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        # BEGIN SOLUTION
        rank, world = _world()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.rows = -(-num_embeddings // world)  # ⌈V/N⌉
        self.start = rank * self.rows
        weight = torch.randn(self.rows, embedding_dim)
        weight[max(0, num_embeddings - self.start):] = 0.0  # padding rows
        self.weight = nn.Parameter(weight)
        # END SOLUTION

    @classmethod
    def from_dense(cls, embedding: nn.Module) -> VocabParallelEmbedding:
        """This rank's rows of a dense embedding (any module with `weight` (V, dim)), padding rows zero."""
        # BEGIN SOLUTION
        num_embeddings, embedding_dim = embedding.weight.shape
        layer = cls(num_embeddings, embedding_dim).to(embedding.weight.dtype)
        with torch.no_grad():
            mine = embedding.weight[layer.start: layer.start + layer.rows]
            layer.weight.zero_()
            layer.weight[: mine.shape[0]] = mine
        return layer
        # END SOLUTION

    def forward(self, ids: Tensor) -> Tensor:
        # BEGIN SOLUTION
        mine = (ids >= self.start) & (ids < self.start + self.rows)
        local = torch.where(mine, ids - self.start, 0)  # any row for the ids of other ranks: zeroed below
        rows = self.weight[local] * mine[..., None]  # (..., dim)
        return reduce_from_parallel(rows)
        # END SOLUTION


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
    # BEGIN SOLUTION
    rank, world = _world()
    local = logits.shape[-1]
    if local * world < vocab_size:
        raise ValueError(f"{world} ranks of {local} logit columns ({local * world} in all) cannot hold a vocabulary "
                         f"of {vocab_size}")
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    z = z.reshape(-1, local)  # (n, V/N)
    y = targets.reshape(-1)
    start = rank * local
    columns = start + torch.arange(local, device=z.device)
    z = z.masked_fill(columns >= vocab_size, float("-inf"))  # padding: exp(−∞) = 0, and no gradient
    m = z.detach().amax(dim=-1)  # (n,) this rank's max, then the global one
    if world > 1:
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
    total = reduce_from_parallel(torch.exp(z - m[:, None]).sum(-1))  # (n,) Σ over the whole vocabulary
    counted = y != ignore_index
    mine = counted & (y >= start) & (y < start + local)
    picked = z.gather(-1, torch.where(mine, y - start, 0)[:, None]).squeeze(-1) - m
    target = reduce_from_parallel(torch.where(mine, picked, 0.0))  # (n,) z[y] − m, from the rank that holds y
    nll = torch.log(total) - target
    return torch.where(counted, nll, 0.0).sum() / counted.sum()
    # END SOLUTION


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
        # BEGIN SOLUTION
        rank, world = _world()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                flat, grad = p.data.view(-1), p.grad.reshape(-1)
                size = -(-flat.numel() // world)  # ⌈n/N⌉
                low, high = min(rank * size, flat.numel()), min((rank + 1) * size, flat.numel())
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros(high - low, dtype=p.dtype, device=p.device)
                    state["exp_avg_sq"] = torch.zeros(high - low, dtype=p.dtype, device=p.device)
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                weights, g = flat[low:high], grad[low:high]  # a view: updated in place
                # The AdamW rule of chapter 8, in the same order of operations as torch.optim.AdamW.
                weights.mul_(1 - lr * decay)
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denominator = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
                weights.addcdiv_(m, denominator, value=-lr / (1 - beta1**t))
                if world > 1:
                    mine = torch.zeros(size, dtype=p.dtype, device=p.device)
                    mine[: high - low] = weights
                    slices = [torch.empty_like(mine) for _ in range(world)]
                    dist.all_gather(slices, mine)
                    flat.copy_(torch.cat(slices)[: flat.numel()])
        # END SOLUTION
