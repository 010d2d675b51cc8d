"""Parallel benchmark: the optimizer state a sharded AdamW keeps per rank, and data-parallel training speed on the
CPU, in worlds of processes (spec/worlds.py: gloo over loopback), with the implementation's chapter 13.

The model is the one `llmkata train` builds by default (~1M parameters, d_model 128, 4 layers, context 128),
trained on a global batch of 16 sequences. Correctness first: after one step, the ranks' data-parallel gradients
equal one process's gradients of the whole batch, and ShardedAdamW's weights equal AdamW's. Then, measured in the
same run (each world one after the other, so all see the same machine load; the fastest round counts):

    state_bytes_per_rank, unsharded_state_bytes   AdamW's moments on one rank of 2 (ShardedAdamW), and in one process
    state_bytes_vs_unsharded                      their ratio: 1/2 is the goal
    tokens_per_s_1_process                        one process, 1 thread, the whole batch
    tokens_per_s_1_process_2_threads              one process, 2 threads (both cores of a 2-core machine)
    tokens_per_s_2_processes                      DataParallel over 2 processes of 1 thread, half the batch each
    tokens_per_s_vs_1_process                     2 processes over 1 process of 1 thread: at most 2
    tokens_per_s_vs_1_process_2_threads           2 processes over 1 process of 2 threads
    step_ms, step_no_sync_ms                      a forward + backward of 2 processes, with and without the gradient
                                                  all-reduce (no_sync)
    comm_ms, comm_share_vs_step                   their difference (the communication backward could not hide), and
                                                  that over step_ms
    allreduce_ms                                  one all-reduce of every gradient (one flat buffer), alone

    pytest benchmarks/bench_parallel.py --benchmark-columns=min,rounds

On a CPU the ranks share the cores and memory bandwidth the one process had, so 2 processes are expected to be
below 2x, and the real gains of data parallelism are on machines with one accelerator per rank.

Knobs: LLMKATA_BENCH_ROUNDS (default 3).
"""

import os
import time

import torch
import torch.distributed as dist
from llmkata.pipeline import build_model
from llmkata.run_config import RunConfig
from llmkata.spec import worlds

ROUNDS = int(os.environ.get("LLMKATA_BENCH_ROUNDS", "3"))
STEPS = 2  # optimizer steps per timed round
TIMEOUT = 1800.0  # seconds a world may take for one task (a busy machine is slow)
BATCH = 16  # the global batch, in sequences
CONFIG = RunConfig(kernels="off")  # the chapters' definitions: the implementation's own code throughout
VOCAB = 1024


def model_of(impl):
    return build_model(impl, CONFIG, VOCAB)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    ids = torch.randint(VOCAB, (BATCH, CONFIG.context_length + 1), generator=generator)
    return ids[:, :-1], ids[:, 1:]


def rows(t: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    return t.chunk(size)[rank]


def state_bytes(optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
               if isinstance(t, torch.Tensor) and t.dim() > 0)


def sharded_task(impl, rank, size):
    """One ShardedAdamW step of the default model with the gradients of the whole batch (as after data parallel)."""
    model = model_of(impl)
    optimizer = impl.parallel.ShardedAdamW(model.parameters(), lr=1e-3)
    x, y = batch(0)
    impl.train.cross_entropy(model(x), y).backward()
    optimizer.step()
    return {"bytes": state_bytes(optimizer), "weights": {k: v.clone() for k, v in model.state_dict().items()}}


def gradients_task(impl, rank, size):
    model = impl.parallel.DataParallel(model_of(impl))
    x, y = batch(0)
    impl.train.cross_entropy(model(rows(x, rank, size)), rows(y, rank, size)).backward()
    return {name: p.grad.clone() for name, p in model.module.named_parameters()}


def throughput_task(impl, rank, size, threads, sync=True):
    """Tokens per second of STEPS training steps (DataParallel, AdamW) on the global batch, the best of ROUNDS."""
    torch.set_num_threads(threads)
    model = impl.parallel.DataParallel(model_of(impl))
    optimizer = impl.train.AdamW(model.parameters(), lr=1e-3)
    best, best_step, best_no_sync = float("inf"), float("inf"), float("inf")
    for round_ in range(ROUNDS + 1):  # the first round warms up
        dist.barrier()
        started = time.perf_counter()
        for step in range(STEPS):
            x, y = batch(step)
            impl.train.train_step(model, optimizer, [(rows(x, rank, size), rows(y, rank, size))], max_norm=1.0)
        elapsed = time.perf_counter() - started
        # One forward + backward, with and without the all-reduce of the gradients.
        x, y = (rows(t, rank, size) for t in batch(0))
        for no_sync in (False, True):
            model.zero_grad(set_to_none=True)
            dist.barrier()
            started = time.perf_counter()
            with model.no_sync() if no_sync else _nothing():
                impl.train.cross_entropy(model(x), y).backward()
            seconds = time.perf_counter() - started
            if round_:
                if no_sync:
                    best_no_sync = min(best_no_sync, seconds)
                else:
                    best_step = min(best_step, seconds)
        if round_:
            best = min(best, elapsed)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    timings = []
    for _ in range(ROUNDS):
        dist.barrier()
        started = time.perf_counter()
        dist.all_reduce(flat)
        timings.append(time.perf_counter() - started)
    tokens = STEPS * BATCH * CONFIG.context_length
    return {"tokens_per_s": tokens / best, "step_s": best_step, "no_sync_s": best_no_sync,
            "allreduce_s": min(timings)}


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def in_world(impl, size, task, *args) -> list:
    """task on every rank of a fresh world of `size` for `impl`, closed afterwards (the others are idle meanwhile)."""
    world = worlds.World(impl, size, timeout=TIMEOUT)
    try:
        return world.run(task, *args)
    finally:
        world.close()


def test_sharded_optimizer_state_per_rank(benchmark, impl):
    ranks = in_world(impl, 2, sharded_task)
    model = model_of(impl)
    optimizer = impl.train.AdamW(model.parameters(), lr=1e-3)
    x, y = batch(0)
    impl.train.cross_entropy(model(x), y).backward()
    optimizer.step()
    for rank, got in enumerate(ranks):
        for name, value in model.state_dict().items():
            torch.testing.assert_close(got["weights"][name], value, rtol=1e-5, atol=1e-6,
                                       msg=lambda m, n=name, r=rank: f"ShardedAdamW on rank {r}: {n} differs\n{m}")
    full, per_rank = state_bytes(optimizer), max(got["bytes"] for got in ranks)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(state_bytes_per_rank=per_rank, unsharded_state_bytes=full,
                                state_bytes_vs_unsharded=round(per_rank / full, 4))


def test_data_parallel_tokens_per_second(benchmark, impl):
    (first, second) = in_world(impl, 2, gradients_task)
    model = model_of(impl)
    x, y = batch(0)
    impl.train.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        for rank, got in enumerate((first, second)):
            torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-6,
                                       msg=lambda m, n=name, r=rank: f"DataParallel on rank {r}: {n}'s gradient\n{m}")
    (one,) = in_world(impl, 1, throughput_task, 1)
    (one_two_threads,) = in_world(impl, 1, throughput_task, 2)
    two = in_world(impl, 2, throughput_task, 1)[0]
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    comm = max(two["step_s"] - two["no_sync_s"], 0.0)
    benchmark.extra_info.update(
        tokens_per_s_1_process=round(one["tokens_per_s"]),
        tokens_per_s_1_process_2_threads=round(one_two_threads["tokens_per_s"]),
        tokens_per_s_2_processes=round(two["tokens_per_s"]),
        tokens_per_s_vs_1_process=round(two["tokens_per_s"] / one["tokens_per_s"], 3),
        tokens_per_s_vs_1_process_2_threads=round(two["tokens_per_s"] / one_two_threads["tokens_per_s"], 3),
        step_ms=round(two["step_s"] * 1e3, 2), step_no_sync_ms=round(two["no_sync_s"] * 1e3, 2),
        comm_ms=round(comm * 1e3, 2), comm_share_vs_step=round(comm / two["step_s"], 3),
        allreduce_ms=round(two["allreduce_s"] * 1e3, 2))
