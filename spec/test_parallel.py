"""Chapter 13 — parallel: data parallel, tensor parallel and a sharded optimizer, each equal to one process.

Every property runs in real worlds of 2 and 4 processes (torch.distributed over gloo, spec/worlds.py): a world is
started once and runs many checks. The ranks compute with the implementation and send back plain tensors; this
process computes the same thing densely, in one process, and compares, so a rank never decides a verdict. Sizes
and seeds are drawn here and sent to the ranks; the dense modules are built from the same seed on both sides.

The learner's own launcher, `parallel.run_world`, is checked separately, from inside a world of one: its results
by rank, two worlds at once that do not meet, a failing rank and a timeout that stop the whole world quickly and
leave no process behind.

Everything is float64: the rules checked here are about which numbers are summed where, and in float64 a wrong
sum is never hidden by rounding.
"""

import math
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from . import worlds
from .tolerances import assert_close

# Seeds from a short range: a failing example shrinks in a few steps.
seeds = st.integers(0, 255)
world_sizes = st.sampled_from([2, 4])
# A world's round trip costs milliseconds, not microseconds: fewer examples than the profile's for these.
WORLD_EXAMPLES = settings(max_examples=12)
DTYPE = torch.float64


def in_world(impl, size, task, *args) -> list:
    """task(impl, rank, size, *args) on every rank of the spec's world of `size`; the results by rank."""
    __tracebackhide__ = True
    return worlds.run(impl, size, task, *args)


def randn(seed: int, *shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def linear(seed: int, in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    """A dense float64 nn.Linear, the same on every rank and here: built from `seed`."""
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias, dtype=DTYPE)


def part(x: torch.Tensor, rank: int, size: int, dim: int = -1) -> torch.Tensor:
    """Rank `rank`'s contiguous slice of `x` along `dim` when split in `size` equal parts."""
    return x.chunk(size, dim=dim)[rank]


def grad_or_none(tensor):
    return None if tensor is None or tensor.grad is None else tensor.grad.detach().clone()


def rejection(call):
    """In a rank: (error type, message) of what `call()` raised, or None; a stub's NotImplementedError goes through."""
    try:
        call()
    except NotImplementedError:
        raise
    except Exception as error:  # noqa: BLE001 - the parent decides whether it is the right one
        return type(error).__name__, str(error)
    return None


def assert_rejected(outcome, *fragments, what: str) -> None:
    __tracebackhide__ = True
    assert outcome is not None, f"{what}: expected a ValueError, but nothing was raised"
    kind, message = outcome
    assert kind == "ValueError", f"{what}: expected a ValueError, got {kind}: {message}"
    missing = [f for f in fragments if str(f) not in message]
    assert not missing, f"{what}: the error must name {missing}; it says: {message}"


# ------------------------------------------------------------------------------------------------ the launcher
# These run the learner's run_world inside a world of one of the spec's: a launcher that hangs is stopped with it.
# The functions the learner's ranks run (worlds.rank_sum, ...) live in spec/worlds.py, which is quick to import.


def running(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def launched(impl, call, folder) -> dict:
    """Run `call` (a run_world) and report what it returned or raised, how long it took, which ranks still run."""
    started = time.monotonic()
    result, error = None, None
    try:
        result = call()
    except NotImplementedError:
        raise
    except Exception as raised:  # noqa: BLE001
        error = (type(raised).__name__, str(raised))
    seconds = time.monotonic() - started
    pids = [int(path.stem) for path in Path(folder).glob("*.pid")]
    deadline = time.monotonic() + 2.0  # a moment for the operating system to reap what was killed
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"result": result, "error": error, "seconds": seconds, "ranks": len(pids),
            "still_running": [pid for pid in pids if running(pid)]}


def launcher_results_task(impl, rank, size, world_size, base):
    with tempfile.TemporaryDirectory() as folder:
        return launched(impl, lambda: impl.parallel.run_world(worlds.rank_sum, world_size, base, 0.3), folder)


def launcher_two_worlds_task(impl, rank, size):
    outcomes = {}

    def one(name, base, meeting):
        with tempfile.TemporaryDirectory() as folder:
            try:
                outcomes[name] = launched(impl, lambda: impl.parallel.run_world(
                    worlds.rank_sum_beside, 2, base, meeting, name, timeout=20.0), folder)
            except NotImplementedError as stub:
                outcomes["stub"] = stub

    with tempfile.TemporaryDirectory() as meeting:  # where the ranks of both worlds say they are running
        threads = [threading.Thread(target=one, args=(name, base, meeting)) for name, base in (("a", 1), ("b", 100))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if "stub" in outcomes:
        raise outcomes["stub"]
    return outcomes


def launcher_failure_task(impl, rank, size, how):
    with tempfile.TemporaryDirectory() as folder:
        if how == "fails":
            return launched(impl, lambda: impl.parallel.run_world(worlds.rank_fails, 2, folder, timeout=30.0), folder)
        return launched(impl, lambda: impl.parallel.run_world(worlds.rank_sleeps, 2, folder, timeout=6.0), folder)


def launcher_rejects_task(impl, rank, size):
    return rejection(lambda: impl.parallel.run_world(worlds.rank_sum, 0, 0, 0.0))


@pytest.mark.parametrize("world_size", [2, 3])
def test_run_world_returns_each_ranks_result_in_rank_order(impl, world_size):
    (outcome,) = in_world(impl, 1, launcher_results_task, world_size, 10)
    assert outcome["error"] is None, f"run_world(fn, {world_size}) must run; it raised {outcome['error']}"
    expected = [{"rank": r, "size": world_size, "sum": float(sum(10 + q for q in range(world_size)))}
                for r in range(world_size)]
    assert outcome["result"] == expected, (
        f"run_world must return fn(rank, world_size, *args) of every rank, by rank (the ranks all-reduce their "
        f"values, and the last rank finishes first): expected {expected}, got {outcome['result']}")


def test_two_worlds_at_once_do_not_meet(impl):
    (outcomes,) = in_world(impl, 1, launcher_two_worlds_task)
    for name, base in (("a", 1), ("b", 100)):
        outcome = outcomes[name]
        assert outcome["error"] is None, (
            f"two worlds started at the same time must not meet (a rendezvous of their own: a fresh file store, or "
            f"a free port): world {name} raised {outcome['error']}")
        sums = [r["sum"] for r in outcome["result"]]
        assert sums == [2.0 * base + 1] * 2, (
            f"two worlds started at the same time must each sum their own ranks' values: world {name} got {sums}, "
            f"expected {[2.0 * base + 1] * 2}")
        assert all(r["beside_the_other"] for r in outcome["result"]), (
            f"two worlds started at the same time must run side by side: world {name}'s ranks waited 10 s for the "
            f"other world's ranks, which never ran beside them (one world must not wait for the other's port)")


def test_a_failing_rank_stops_the_whole_world_at_once(impl):
    (outcome,) = in_world(impl, 1, launcher_failure_task, "fails")
    assert outcome["error"] is not None, "a rank that raises must make run_world raise"
    assert "rank 1 gives up" in outcome["error"][1], (
        f"run_world's error must carry the failing rank's own message ('rank 1 gives up'); it says "
        f"{outcome['error'][1][:300]!r}")
    assert outcome["seconds"] < 15, (
        f"a failing rank must stop the world at once, not after the 30 s timeout nor when the other ranks are done "
        f"(they would work on for a minute): run_world took {outcome['seconds']:.1f} s")
    assert not outcome["still_running"], (
        f"after a rank failed, every process of the world must be gone; still running: {outcome['still_running']}")


def test_a_world_past_its_timeout_is_stopped(impl):
    (outcome,) = in_world(impl, 1, launcher_failure_task, "sleeps")
    assert outcome["error"] is not None and outcome["error"][0] == "TimeoutError", (
        f"a world still running after its timeout (6 s; the ranks sleep 30 s) must raise TimeoutError; got "
        f"{outcome['error'] or 'no error'}")
    assert outcome["seconds"] < 16, f"the timeout was 6 s, but run_world took {outcome['seconds']:.1f} s to give up"
    assert outcome["ranks"] == 2, f"both ranks must have started; {outcome['ranks']} did"
    assert not outcome["still_running"], (
        f"after a timeout, every process of the world must be gone; still running: {outcome['still_running']}")


def test_a_world_of_no_process_is_rejected(impl):
    (outcome,) = in_world(impl, 1, launcher_rejects_task)
    assert_rejected(outcome, 0, what="run_world(fn, 0) must be a ValueError naming the world size 0")


# ------------------------------------------------------------------------------------------------ data parallel


class TinyLM(nn.Module):
    """A token embedding, a frozen linear layer, a trainable MLP and an output head tied to the embedding."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, dtype=DTYPE)
        self.frozen = nn.Linear(dim, dim, dtype=DTYPE).requires_grad_(False)
        self.up = nn.Linear(dim, 2 * dim, dtype=DTYPE)
        self.down = nn.Linear(2 * dim, dim, dtype=DTYPE)
        self.head = nn.Linear(dim, vocab, bias=False, dtype=DTYPE)
        self.head.weight = self.embed.weight  # tied

    def forward(self, ids):
        h = self.embed(ids)
        h = h + self.frozen(h)
        h = h + self.down(torch.tanh(self.up(h)))
        return self.head(h)


def tiny_lm(seed: int, vocab: int, dim: int) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(vocab, dim)


def loss_of(model, ids):
    logits = model(ids[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def tokens(seed: int, vocab: int, rows: int, length: int) -> torch.Tensor:
    return torch.randint(vocab, (rows, length), generator=torch.Generator().manual_seed(seed))


def named_grads(model) -> dict:
    return {name: grad_or_none(p) for name, p in model.named_parameters()}


def params_of(model) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


case = st.fixed_dictionaries({"seed": seeds, "vocab": st.integers(3, 12), "dim": st.integers(1, 6),
                              "rows": st.integers(1, 3), "length": st.integers(2, 5)})


def broadcast_task(impl, rank, size, seed, src):
    model = tiny_lm(seed + rank, 5, 3)  # a different model on every rank
    before = params_of(model)
    impl.parallel.broadcast_parameters(model, src=src)
    return {"before": before, "after": params_of(model)}


@WORLD_EXAMPLES
@given(seeds, world_sizes, st.data())
def test_broadcast_makes_every_rank_hold_the_source_ranks_parameters(impl, seed, size, data):
    src = data.draw(st.integers(0, size - 1), label="src")
    ranks = in_world(impl, size, broadcast_task, seed, src)
    for rank, got in enumerate(ranks):
        for name, value in got["after"].items():
            assert_close(value, ranks[src]["before"][name], f"after broadcast_parameters(model, src={src}) rank "
                         f"{rank}'s {name} must be rank {src}'s")


def replicas_task(impl, rank, size, seed, c):
    model = tiny_lm(seed + rank, c["vocab"], c["dim"])
    before = params_of(model)
    impl.parallel.DataParallel(model)
    return {"before": before, "after": params_of(model)}


@WORLD_EXAMPLES
@given(case, world_sizes)
def test_data_parallel_replicas_start_from_rank_0s_weights(impl, c, size):
    ranks = in_world(impl, size, replicas_task, c["seed"], c)
    for rank, got in enumerate(ranks):
        for name, value in got["after"].items():
            assert_close(value, ranks[0]["before"][name], f"DataParallel(model) must start every replica from rank "
                         f"0's weights (the ranks built different ones): rank {rank}'s {name} differs")


def ddp_gradients_task(impl, rank, size, c, bucket_cap_mb):
    model = impl.parallel.DataParallel(tiny_lm(c["seed"], c["vocab"], c["dim"]), bucket_cap_mb=bucket_cap_mb)
    ids = part(tokens(c["seed"], c["vocab"], size * c["rows"], c["length"]), rank, size, dim=0)
    logits = model(ids=ids[:, :-1])  # DataParallel passes keyword arguments on, too
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
    return named_grads(model.module)


def full_batch_gradients(c, size) -> dict:
    model = tiny_lm(c["seed"], c["vocab"], c["dim"])
    loss_of(model, tokens(c["seed"], c["vocab"], size * c["rows"], c["length"])).backward()
    return named_grads(model)


def assert_same_gradients(got: dict, expected: dict, rank: int, what: str) -> None:
    __tracebackhide__ = True
    for name, grad in expected.items():
        if grad is None:
            assert got[name] is None, f"{what}: the frozen parameter {name} must get no gradient on rank {rank}"
            continue
        assert got[name] is not None, f"{what}: {name} has no gradient on rank {rank}"
        assert_close(got[name], grad, f"{what}: rank {rank}'s gradient of {name}", scale=100)


@WORLD_EXAMPLES
@given(case, world_sizes, st.sampled_from([1e-5, 1e-3, 25.0]))
def test_data_parallel_gradients_equal_the_full_batch_gradient(impl, c, size, bucket_cap_mb):
    ranks = in_world(impl, size, ddp_gradients_task, c, bucket_cap_mb)
    expected = full_batch_gradients(c, size)
    for rank, got in enumerate(ranks):
        assert_same_gradients(got, expected, rank, f"after backward on its slice of the batch (buckets of "
                              f"{bucket_cap_mb} MB), each rank's gradient must be the one-process gradient of the "
                              f"mean loss over the whole batch")


def ddp_training_task(impl, rank, size, c, steps):
    model = impl.parallel.DataParallel(tiny_lm(c["seed"], c["vocab"], c["dim"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for step in range(steps):
        ids = part(tokens(c["seed"] + step, c["vocab"], size * c["rows"], c["length"]), rank, size, dim=0)
        optimizer.zero_grad()
        loss_of(model, ids).backward()
        optimizer.step()
    return params_of(model.module)


@WORLD_EXAMPLES
@given(case, world_sizes)
def test_data_parallel_training_equals_one_process(impl, c, size):
    steps = 3
    ranks = in_world(impl, size, ddp_training_task, c, steps)
    model = tiny_lm(c["seed"], c["vocab"], c["dim"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for step in range(steps):
        optimizer.zero_grad()
        loss_of(model, tokens(c["seed"] + step, c["vocab"], size * c["rows"], c["length"])).backward()
        optimizer.step()
    for rank, got in enumerate(ranks):
        for name, value in params_of(model).items():
            assert_close(got[name], value, f"{steps} AdamW steps of DataParallel over {size} ranks must give the "
                         f"weights of one process trained on the whole batches: rank {rank}'s {name}", scale=1e4)


def no_sync_task(impl, rank, size, c):
    model = impl.parallel.DataParallel(tiny_lm(c["seed"], c["vocab"], c["dim"]))
    batches = [part(tokens(c["seed"] + i, c["vocab"], size * c["rows"], c["length"]), rank, size, dim=0)
               for i in range(2)]
    with model.no_sync():
        (loss_of(model, batches[0]) / 2).backward()
    inside = named_grads(model.module)
    (loss_of(model, batches[1]) / 2).backward()
    return {"inside": inside, "after": named_grads(model.module)}


def accumulated_gradients(c, rows_from, rows, size) -> dict:
    """One process: the gradient of the mean loss of both micro-batches, over the given rows of each."""
    model = tiny_lm(c["seed"], c["vocab"], c["dim"])
    for i in range(2):
        ids = tokens(c["seed"] + i, c["vocab"], size * c["rows"], c["length"])[rows_from: rows_from + rows]
        (loss_of(model, ids) / 2).backward()
    return named_grads(model)


@WORLD_EXAMPLES
@given(case, world_sizes)
def test_no_sync_accumulates_locally_and_the_last_micro_batch_syncs(impl, c, size):
    ranks = in_world(impl, size, no_sync_task, c)
    everything = accumulated_gradients(c, 0, size * c["rows"], size)
    for rank, got in enumerate(ranks):
        model = tiny_lm(c["seed"], c["vocab"], c["dim"])
        ids = part(tokens(c["seed"], c["vocab"], size * c["rows"], c["length"]), rank, size, dim=0)
        (loss_of(model, ids) / 2).backward()
        assert_same_gradients(got["inside"], named_grads(model), rank, "inside no_sync() backward must only "
                              "accumulate this rank's own gradient, with no communication")
        assert_same_gradients(got["after"], everything, rank, "the backward after no_sync() must average the "
                              "accumulated gradients of both micro-batches over the ranks")


def mismatch_task(impl, rank, size, c):
    model = tiny_lm(c["seed"], c["vocab"], c["dim"] + rank)  # every rank a different width
    return rejection(lambda: impl.parallel.DataParallel(model))


@WORLD_EXAMPLES
@given(case, world_sizes)
def test_data_parallel_rejects_ranks_with_different_models(impl, c, size):
    ranks = in_world(impl, size, mismatch_task, c)
    counts = [sum(p.numel() for p in tiny_lm(0, c["vocab"], c["dim"] + r).parameters() if p.requires_grad)
              for r in range(2)]
    for rank, outcome in enumerate(ranks):
        assert_rejected(outcome, *counts, what=f"DataParallel over ranks whose models differ (rank 0: {counts[0]} "
                        f"trainable elements, rank 1: {counts[1]}) must be a ValueError on every rank (rank {rank}) "
                        "naming their sizes")


def clip_task(impl, rank, size, seed, numel, max_norm):
    mine = part(randn(seed, numel) * 3, rank, size, dim=0)  # this rank's share of the model's gradient
    shards = [nn.Parameter(torch.zeros(n, dtype=DTYPE)) for n in (1, mine.numel() - 1)]
    for p, g in zip(shards, mine.split([1, mine.numel() - 1])):
        p.grad = g.clone()
    norm = impl.parallel.clip_grad_norm_global(shards, max_norm)
    return {"norm": torch.as_tensor(norm, dtype=DTYPE), "grads": torch.cat([p.grad for p in shards])}


@WORLD_EXAMPLES
@given(seeds, world_sizes, st.integers(2, 6), st.floats(0.1, 5.0))
def test_global_clipping_uses_the_norm_of_the_whole_model(impl, seed, size, per_rank, max_norm):
    numel = size * per_rank
    ranks = in_world(impl, size, clip_task, seed, numel, max_norm)
    full = randn(seed, numel) * 3
    norm = full.norm()
    clipped = full * min(1.0, max_norm / (float(norm) + 1e-6))
    for rank, got in enumerate(ranks):
        assert_close(got["norm"].to(DTYPE), norm, f"clip_grad_norm_global must return the norm of the gradients "
                     f"of all ranks together on every rank (rank {rank})", dtype=torch.float32)
        assert_close(got["grads"], part(clipped, rank, size, dim=0), f"clip_grad_norm_global must scale every "
                     f"rank's gradients by max_norm / (global norm + 1e-6) (rank {rank})", dtype=torch.float32)


# -------------------------------------------------------------------------------- tensor-parallel communication


def copy_to_task(impl, rank, size, seed, shape):
    x = randn(seed, *shape).requires_grad_()
    y = impl.parallel.copy_to_parallel(x)
    (y * randn(seed + 1 + rank, *shape)).sum().backward()  # every rank uses x differently
    return {"y": y.detach(), "grad": x.grad}


def reduce_from_task(impl, rank, size, seed, shape):
    x = randn(seed + rank, *shape).requires_grad_()  # a different partial sum on every rank
    y = impl.parallel.reduce_from_parallel(x)
    (y * randn(seed + 100, *shape)).sum().backward()
    return {"y": y.detach(), "grad": x.grad}


def scatter_gather_task(impl, rank, size, seed, shape):
    x = randn(seed, *shape).requires_grad_()
    weight = randn(seed + 1, *shape)
    mine = impl.parallel.scatter_to_parallel(x)
    (mine * part(weight, rank, size)).sum().backward()
    local = part(randn(seed + 2, *shape), rank, size).requires_grad_()
    gathered = impl.parallel.gather_from_parallel(local)
    (gathered * weight).sum().backward()
    return {"scattered": mine.detach(), "scatter_grad": x.grad, "gathered": gathered.detach(),
            "gather_grad": local.grad}


comm_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


@WORLD_EXAMPLES
@given(seeds, world_sizes, comm_shapes, st.integers(1, 3))
def test_copy_to_parallel_is_the_identity_forward_and_sums_gradients_backward(impl, seed, size, lead, last):
    shape = (*lead, size * last)
    ranks = in_world(impl, size, copy_to_task, seed, shape)
    summed = sum(randn(seed + 1 + r, *shape) for r in range(size))
    for rank, got in enumerate(ranks):
        assert_close(got["y"], randn(seed, *shape), f"copy_to_parallel(x) must be x itself (rank {rank})")
        assert_close(got["grad"], summed, f"the gradient of x through copy_to_parallel must be the sum of every "
                     f"rank's gradient (an all-reduce in backward) (rank {rank})")


@WORLD_EXAMPLES
@given(seeds, world_sizes, comm_shapes, st.integers(1, 3))
def test_reduce_from_parallel_sums_forward_and_passes_the_gradient_back(impl, seed, size, lead, last):
    shape = (*lead, size * last)
    ranks = in_world(impl, size, reduce_from_task, seed, shape)
    summed = sum(randn(seed + r, *shape) for r in range(size))
    for rank, got in enumerate(ranks):
        assert_close(got["y"], summed, f"reduce_from_parallel(x) must be the sum of every rank's x (rank {rank})")
        assert_close(got["grad"], randn(seed + 100, *shape), f"the gradient through reduce_from_parallel must be "
                     f"the output's gradient itself, not a sum over ranks (rank {rank})")


@WORLD_EXAMPLES
@given(seeds, world_sizes, comm_shapes, st.integers(1, 3))
def test_scatter_and_gather_are_each_others_backward(impl, seed, size, lead, last):
    shape = (*lead, size * last)
    ranks = in_world(impl, size, scatter_gather_task, seed, shape)
    weight, whole = randn(seed + 1, *shape), randn(seed + 2, *shape)
    for rank, got in enumerate(ranks):
        assert_close(got["scattered"], part(randn(seed, *shape), rank, size), f"scatter_to_parallel(x) must be "
                     f"rank {rank}'s contiguous slice of x's last dimension")
        assert_close(got["scatter_grad"], weight, f"the gradient through scatter_to_parallel must gather every "
                     f"rank's slice of the gradient (rank {rank})")
        assert_close(got["gathered"], whole, f"gather_from_parallel must concatenate the ranks' tensors along the "
                     f"last dimension in rank order (rank {rank})")
        assert_close(got["gather_grad"], part(weight, rank, size), f"the gradient through gather_from_parallel must "
                     f"be this rank's slice of the output's gradient (rank {rank})")


# ------------------------------------------------------------------------------------- tensor-parallel layers


def column_task(impl, rank, size, seed, lead, in_f, out_f, bias, gather_output):
    dense = linear(seed, in_f, out_f, bias)
    layer = impl.parallel.ColumnParallelLinear.from_dense(dense, gather_output=gather_output)
    x = randn(seed + 1, *lead, in_f).requires_grad_()
    y = layer(x)
    upstream = randn(seed + 2, *lead, out_f)
    (y * (upstream if gather_output else part(upstream, rank, size))).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad, "weight_grad": layer.weight.grad,
            "bias_grad": grad_or_none(layer.bias)}


def dense_run(seed, lead, in_f, out_f, bias):
    dense = linear(seed, in_f, out_f, bias)
    x = randn(seed + 1, *lead, in_f).requires_grad_()
    y = dense(x)
    (y * randn(seed + 2, *lead, out_f)).sum().backward()
    return dense, x, y


layer_case = st.fixed_dictionaries({"seed": seeds, "lead": comm_shapes, "in": st.integers(1, 3),
                                    "out": st.integers(1, 3), "bias": st.booleans()})


@WORLD_EXAMPLES
@given(layer_case, world_sizes, st.booleans())
def test_column_parallel_linear_equals_the_dense_layer_sliced(impl, c, size, gather_output):
    in_f, out_f = c["in"] * 2, c["out"] * size
    ranks = in_world(impl, size, column_task, c["seed"], c["lead"], in_f, out_f, c["bias"], gather_output)
    dense, x, y = dense_run(c["seed"], c["lead"], in_f, out_f, c["bias"])
    for rank, got in enumerate(ranks):
        what = f"ColumnParallelLinear (gather_output={gather_output}) on rank {rank} of {size}"
        assert_close(got["y"], y if gather_output else part(y, rank, size), f"{what}: the output must be the dense "
                     "layer's " + ("whole output" if gather_output else "output columns of this rank"))
        assert_close(got["x_grad"], x.grad, f"{what}: the input's gradient must be the dense one (the ranks' "
                     "contributions summed)")
        assert_close(got["weight_grad"], part(dense.weight.grad, rank, size, dim=0), f"{what}: the weight's "
                     "gradient must be the dense weight's gradient, this rank's rows")
        if c["bias"]:
            assert_close(got["bias_grad"], part(dense.bias.grad, rank, size), f"{what}: the bias's gradient must "
                         "be the dense one, this rank's entries")


def row_task(impl, rank, size, seed, lead, in_f, out_f, bias, input_is_parallel):
    dense = linear(seed, in_f, out_f, bias)
    layer = impl.parallel.RowParallelLinear.from_dense(dense, input_is_parallel=input_is_parallel)
    x = randn(seed + 1, *lead, in_f)
    x = (part(x, rank, size) if input_is_parallel else x).requires_grad_()
    y = layer(x)
    (y * randn(seed + 2, *lead, out_f)).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad, "weight_grad": layer.weight.grad,
            "bias_grad": grad_or_none(layer.bias)}


@WORLD_EXAMPLES
@given(layer_case, world_sizes, st.booleans())
def test_row_parallel_linear_equals_the_dense_layer_sliced(impl, c, size, input_is_parallel):
    in_f, out_f = c["in"] * size, c["out"]
    ranks = in_world(impl, size, row_task, c["seed"], c["lead"], in_f, out_f, c["bias"], input_is_parallel)
    dense, x, y = dense_run(c["seed"], c["lead"], in_f, out_f, c["bias"])
    for rank, got in enumerate(ranks):
        what = f"RowParallelLinear (input_is_parallel={input_is_parallel}) on rank {rank} of {size}"
        assert_close(got["y"], y, f"{what}: the output must be the dense layer's, on every rank")
        assert_close(got["x_grad"], part(x.grad, rank, size) if input_is_parallel else x.grad,
                     f"{what}: the input's gradient must be the dense one" + (", this rank's slice"
                                                                               if input_is_parallel else ""))
        assert_close(got["weight_grad"], part(dense.weight.grad, rank, size), f"{what}: the weight's gradient "
                     "must be the dense weight's gradient, this rank's columns")
        if c["bias"]:
            assert_close(got["bias_grad"], dense.bias.grad, f"{what}: the bias's gradient must be the dense one")


def row_bias_task(impl, rank, size, seed, out_f):
    dense = linear(seed, size, out_f, True)
    with torch.no_grad():
        dense.weight.zero_()
    layer = impl.parallel.RowParallelLinear.from_dense(dense)
    return layer(randn(seed + 1, 2, 1)).detach()


@WORLD_EXAMPLES
@given(seeds, world_sizes, st.integers(1, 4))
def test_row_parallel_bias_is_added_once(impl, seed, size, out_f):
    ranks = in_world(impl, size, row_bias_task, seed, out_f)
    bias = linear(seed, size, out_f, True).bias.detach()
    for rank, y in enumerate(ranks):
        assert_close(y, bias.expand(2, out_f), f"with zero weights a RowParallelLinear's output is its bias, added "
                     f"once after the all-reduce, not once per rank (rank {rank} of {size})")


def mlp_task(impl, rank, size, seed, dim, hidden):
    dense = dense_mlp(seed, dim, hidden)
    mlp = impl.parallel.ParallelSwiGLU.from_dense(dense)
    x = randn(seed + 1, 2, 3, dim).requires_grad_()
    y = mlp(x)
    (y * randn(seed + 2, 2, 3, dim)).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad,
            **{name: getattr(mlp, name).weight.grad for name in ("gate_proj", "up_proj", "down_proj")}}


class DenseSwiGLU(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False, dtype=DTYPE)
        self.up_proj = nn.Linear(dim, hidden, bias=False, dtype=DTYPE)
        self.down_proj = nn.Linear(hidden, dim, bias=False, dtype=DTYPE)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def dense_mlp(seed, dim, hidden):
    torch.manual_seed(seed)
    return DenseSwiGLU(dim, hidden)


@WORLD_EXAMPLES
@given(seeds, world_sizes, st.integers(1, 5), st.integers(1, 3))
def test_parallel_swiglu_equals_the_dense_mlp(impl, seed, size, dim, per_rank):
    hidden = size * per_rank
    ranks = in_world(impl, size, mlp_task, seed, dim, hidden)
    dense = dense_mlp(seed, dim, hidden)
    x = randn(seed + 1, 2, 3, dim).requires_grad_()
    y = dense(x)
    (y * randn(seed + 2, 2, 3, dim)).sum().backward()
    for rank, got in enumerate(ranks):
        what = f"ParallelSwiGLU on rank {rank} of {size}"
        assert_close(got["y"], y, f"{what}: the output must be the dense SwiGLU's")
        assert_close(got["x_grad"], x.grad, f"{what}: the input's gradient must be the dense one")
        for name, dim_of_split in (("gate_proj", 0), ("up_proj", 0), ("down_proj", 1)):
            assert_close(got[name], part(getattr(dense, name).weight.grad, rank, size, dim=dim_of_split),
                         f"{what}: {name}'s gradient must be the dense one, this rank's "
                         + ("rows" if dim_of_split == 0 else "columns"))


def attention_task(impl, rank, size, seed, d_model, n_heads, n_kv_heads, length, max_seq_len, theta):
    dense = dense_attention(impl, seed, d_model, n_heads, n_kv_heads, max_seq_len, theta)
    attention = impl.parallel.ParallelAttention.from_dense(dense)
    x = randn(seed + 1, 2, length, d_model).requires_grad_()
    y = attention(x)
    (y * randn(seed + 2, 2, length, d_model)).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad,
            **{name: getattr(attention, name).weight.grad for name in ("q_proj", "k_proj", "v_proj", "o_proj")}}


def dense_attention(impl, seed, d_model, n_heads, n_kv_heads, max_seq_len, theta):
    torch.manual_seed(seed)
    return impl.attention.CausalSelfAttention(d_model, n_heads, n_kv_heads, max_seq_len=max_seq_len,
                                              rope_theta=theta).to(DTYPE)


@WORLD_EXAMPLES
@given(seeds, world_sizes, st.integers(1, 2), st.integers(1, 2), st.sampled_from([2, 4]), st.integers(1, 5),
       st.sampled_from([(16, 10000.0), (8, 500.0)]))
def test_parallel_attention_equals_the_dense_attention(impl, seed, size, kv_per_rank, group, head_dim, length,
                                                       table):
    n_kv_heads = size * kv_per_rank
    n_heads = n_kv_heads * group
    d_model = n_heads * head_dim
    max_seq_len, theta = table
    ranks = in_world(impl, size, attention_task, seed, d_model, n_heads, n_kv_heads, length, max_seq_len, theta)
    dense = dense_attention(impl, seed, d_model, n_heads, n_kv_heads, max_seq_len, theta)
    x = randn(seed + 1, 2, length, d_model).requires_grad_()
    y = dense(x)
    (y * randn(seed + 2, 2, length, d_model)).sum().backward()
    for rank, got in enumerate(ranks):
        what = (f"ParallelAttention ({n_heads} heads, {n_kv_heads} key/value heads) on rank {rank} of {size}")
        assert_close(got["y"], y, f"{what}: the output must be the dense CausalSelfAttention's", scale=100)
        assert_close(got["x_grad"], x.grad, f"{what}: the input's gradient must be the dense one", scale=100)
        for name, split in (("q_proj", 0), ("k_proj", 0), ("v_proj", 0), ("o_proj", 1)):
            assert_close(got[name], part(getattr(dense, name).weight.grad, rank, size, dim=split),
                         f"{what}: {name}'s gradient must be the dense one, this rank's heads", scale=100)


def built_task(impl, rank, size, seed, dim, vocab, heads, kv_heads, head_dim, max_seq_len, theta):
    """Layers built directly (not from a dense one), each rank drawing its own shard; what they hold and compute."""
    parallel = impl.parallel
    torch.manual_seed(seed + rank)
    d_model = heads * head_dim
    column = parallel.ColumnParallelLinear(dim, size * 2, bias=False, gather_output=True).to(DTYPE)
    row = parallel.RowParallelLinear(size * 2, dim, bias=False, input_is_parallel=False).to(DTYPE)
    mlp = parallel.ParallelSwiGLU(dim, size * 3).to(DTYPE)
    embedding = parallel.VocabParallelEmbedding(vocab, dim).to(DTYPE)
    attention = parallel.ParallelAttention(d_model, heads, kv_heads, max_seq_len=max_seq_len,
                                           rope_theta=theta).to(DTYPE)
    x, wide = randn(seed, 2, dim), randn(seed + 1, 2, size * 2)
    ids = torch.arange(vocab).reshape(1, vocab)
    sequence = randn(seed + 2, 1, 3, d_model)
    positions = torch.tensor([max_seq_len - 3, max_seq_len - 2, max_seq_len - 1])  # the end of the table
    with torch.no_grad():
        return {"column": (column.weight.clone(), column(x)), "row": (row.weight.clone(), row(wide)),
                "mlp": ({name: getattr(mlp, name).weight.clone() for name in ("gate_proj", "up_proj", "down_proj")},
                        mlp(x)),
                "embedding": (embedding.weight.clone(), embedding(ids)),
                "attention": ({name: getattr(attention, name).weight.clone()
                               for name in ("q_proj", "k_proj", "v_proj", "o_proj")},
                              attention(sequence, position_ids=positions))}


@WORLD_EXAMPLES
@given(seeds, world_sizes, st.integers(1, 4), st.integers(1, 9), st.sampled_from([(1, 1), (2, 1), (2, 2)]),
       st.sampled_from([2, 4]), st.sampled_from([(8, 100.0), (32, 10000.0)]))
def test_layers_built_directly_equal_their_shards_put_together(impl, seed, size, dim, vocab, heads_per_rank,
                                                                head_dim, table):
    heads, kv_heads = heads_per_rank[0] * size, heads_per_rank[1] * size
    max_seq_len, theta = table
    ranks = in_world(impl, size, built_task, seed, dim, vocab, heads, kv_heads, head_dim, max_seq_len, theta)
    rows = -(-vocab // size)
    where = f"over {size} ranks"
    shapes = {"column": (2, dim), "row": (dim, 2), "embedding": (rows, dim)}
    for rank, got in enumerate(ranks):
        for name, shape in shapes.items():
            assert tuple(got[name][0].shape) == shape, (
                f"{name}: rank {rank}'s shard {where} must be {shape}, got {tuple(got[name][0].shape)}")
    column = torch.cat([got["column"][0] for got in ranks])  # (2·N, dim): the ranks' rows, in rank order
    row = torch.cat([got["row"][0] for got in ranks], dim=1)  # (dim, 2·N)
    x, wide = randn(seed, 2, dim), randn(seed + 1, 2, size * 2)
    table_rows = torch.cat([got["embedding"][0] for got in ranks])  # (N·⌈V/N⌉, dim)
    mlp = DenseSwiGLU(dim, size * 3)
    with torch.no_grad():
        for name, split in (("gate_proj", 0), ("up_proj", 0), ("down_proj", 1)):
            getattr(mlp, name).weight.copy_(torch.cat([got["mlp"][0][name] for got in ranks], dim=split))
    dense = dense_attention(impl, seed, heads * head_dim, heads, kv_heads, max_seq_len, theta)
    with torch.no_grad():
        for name, split in (("q_proj", 0), ("k_proj", 0), ("v_proj", 0), ("o_proj", 1)):
            getattr(dense, name).weight.copy_(torch.cat([got["attention"][0][name] for got in ranks], dim=split))
        mlp_out = mlp(x)
        positions = torch.tensor([max_seq_len - 3, max_seq_len - 2, max_seq_len - 1])
        attention_out = dense(randn(seed + 2, 1, 3, heads * head_dim), position_ids=positions)
    for rank, got in enumerate(ranks):
        what = f"on rank {rank} {where}"
        assert_close(got["column"][1], x @ column.T, f"ColumnParallelLinear(gather_output=True) built directly "
                     f"{what} must compute x Wᵀ with W the ranks' rows stacked in rank order")
        assert_close(got["row"][1], wide @ row.T, f"RowParallelLinear(input_is_parallel=False) built directly "
                     f"{what} must take its slice of x and compute x Wᵀ with W the ranks' columns side by side")
        assert_close(got["mlp"][1], mlp_out, f"ParallelSwiGLU built directly {what} must compute the SwiGLU of the "
                     "ranks' shards put together")
        assert_close(got["embedding"][1][0], table_rows[:vocab], f"VocabParallelEmbedding({vocab}, {dim}) built "
                     f"directly {what} must look every id up in the ranks' rows stacked in rank order")
        assert (table_rows[vocab:] == 0).all(), (
            f"VocabParallelEmbedding({vocab}, {dim}) {where}: the padding rows past {vocab - 1} must be zero")
        assert_close(got["attention"][1], attention_out, f"ParallelAttention(max_seq_len={max_seq_len}, "
                     f"rope_theta={theta}) built directly {what} must compute the attention of the ranks' heads put "
                     "together, at the positions given", scale=100)


def indivisible_task(impl, rank, size, odd):
    parallel = impl.parallel
    return {"column": rejection(lambda: parallel.ColumnParallelLinear(4, odd)),
            "row": rejection(lambda: parallel.RowParallelLinear(odd, 4)),
            "heads": rejection(lambda: parallel.ParallelAttention(odd * 2, odd, 1)),
            "kv_heads": rejection(lambda: parallel.ParallelAttention(size * odd * 2, size * odd, odd))}


@WORLD_EXAMPLES
@given(world_sizes, st.integers(1, 7))
def test_tensor_parallel_layers_reject_sizes_the_world_does_not_divide(impl, size, k):
    odd = size * k + 1  # never a multiple of the world size
    ranks = in_world(impl, size, indivisible_task, odd)
    for rank, got in enumerate(ranks):
        where = f"on rank {rank} of a world of {size}"
        assert_rejected(got["column"], odd, size, what=f"ColumnParallelLinear(4, {odd}) {where}: {odd} outputs do "
                        "not split over the ranks")
        assert_rejected(got["row"], odd, size, what=f"RowParallelLinear({odd}, 4) {where}: {odd} inputs do not "
                        "split over the ranks")
        assert_rejected(got["heads"], odd, size, what=f"ParallelAttention with {odd} heads {where}")
        assert_rejected(got["kv_heads"], odd, size, what=f"ParallelAttention with {odd} key/value heads {where}")


def embedding_task(impl, rank, size, seed, vocab, dim, ids_shape):
    torch.manual_seed(seed)
    dense = nn.Embedding(vocab, dim, dtype=DTYPE)
    embedding = impl.parallel.VocabParallelEmbedding.from_dense(dense)
    ids = torch.randint(vocab, ids_shape, generator=torch.Generator().manual_seed(seed + 1))
    y = embedding(ids)
    (y * randn(seed + 2, *ids_shape, dim)).sum().backward()
    return {"y": y.detach(), "weight_grad": embedding.weight.grad}


def padded(x: torch.Tensor, size: int, dim: int = 0) -> torch.Tensor:
    """x with zeros appended along `dim` up to a multiple of `size`."""
    extra = -x.shape[dim] % size
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, torch.zeros(shape, dtype=x.dtype)], dim=dim)


@WORLD_EXAMPLES
@given(seeds, world_sizes, st.integers(1, 13), st.integers(1, 4), comm_shapes.map(lambda s: (*s, 3)))
def test_vocab_parallel_embedding_equals_the_dense_embedding(impl, seed, size, vocab, dim, ids_shape):
    ranks = in_world(impl, size, embedding_task, seed, vocab, dim, ids_shape)
    torch.manual_seed(seed)
    dense = nn.Embedding(vocab, dim, dtype=DTYPE)
    ids = torch.randint(vocab, ids_shape, generator=torch.Generator().manual_seed(seed + 1))
    y = dense(ids)
    (y * randn(seed + 2, *ids_shape, dim)).sum().backward()
    rows = padded(dense.weight.grad, size)
    for rank, got in enumerate(ranks):
        what = f"VocabParallelEmbedding of {vocab} rows on rank {rank} of {size}"
        assert_close(got["y"], y, f"{what}: the output must be the dense embedding's on every rank")
        assert_close(got["weight_grad"], part(rows, rank, size, dim=0), f"{what}: the gradient of the table must be "
                     f"the dense one, this rank's ⌈{vocab}/{size}⌉ rows (padding rows: 0)")


def cross_entropy_task(impl, rank, size, logits, targets, vocab, ignore_index):
    mine = part(logits, rank, size).clone().requires_grad_()
    if ignore_index == -100:
        loss = impl.parallel.vocab_parallel_cross_entropy(mine, targets, vocab)
    else:
        loss = impl.parallel.vocab_parallel_cross_entropy(mine, targets, vocab, ignore_index=ignore_index)
    loss.backward()
    return {"loss": loss.detach(), "grad": mine.grad}


@WORLD_EXAMPLES
@given(seeds, world_sizes, st.integers(2, 11), st.integers(1, 6), st.sampled_from([-100, -1, 0]),
       st.sampled_from([0.0, 0.5]))
def test_vocab_parallel_cross_entropy_equals_the_dense_loss(impl, seed, size, vocab, n, ignore_index, ignored):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=generator, dtype=DTYPE) * 3
    # Padding columns hold large numbers: a loss that counts them is far off.
    full = torch.cat([logits, torch.full((n, -vocab % size), 50.0, dtype=DTYPE)], dim=1)
    targets = torch.randint(vocab, (n,), generator=generator)
    if ignore_index >= 0:  # an id of the vocabulary may be the one ignored
        targets = torch.where(targets == ignore_index, (ignore_index + 1) % vocab, targets)
    drop = torch.rand(n, generator=generator) < ignored
    drop[0] = False  # at least one target counts
    targets[drop] = ignore_index
    ranks = in_world(impl, size, cross_entropy_task, full, targets, vocab, ignore_index)
    dense = logits.clone().requires_grad_()
    loss = F.cross_entropy(dense, targets, ignore_index=ignore_index)
    loss.backward()
    grad = torch.cat([dense.grad, torch.zeros(n, -vocab % size, dtype=DTYPE)], dim=1)
    for rank, got in enumerate(ranks):
        what = (f"vocab_parallel_cross_entropy over {size} ranks, vocabulary {vocab} (padded to {full.shape[1]}), "
                f"ignore_index={ignore_index}, on rank {rank}")
        assert_close(got["loss"].to(DTYPE), loss, f"{what}: the loss must be the dense cross-entropy of the real "
                     "vocabulary's logits, ignored targets left out", dtype=torch.float32)
        assert_close(got["grad"].to(DTYPE), part(grad, rank, size), f"{what}: the gradient of this rank's logits "
                     "must be the dense gradient's columns (0 for padding)", dtype=torch.float32)


# --------------------------------------------------------------------------------------------- sharded optimizer


def optimizer_params(seed: int, shapes) -> list[nn.Parameter]:
    return [nn.Parameter(randn(seed + i, *shape)) for i, shape in enumerate(shapes)]


def set_grads(params, seed: int, step: int) -> None:
    for i, p in enumerate(params):
        p.grad = randn(seed + 1000 * (step + 1) + i, *p.shape)


def sharded_task(impl, rank, size, seed, shapes, hyper, steps):
    params = optimizer_params(seed, shapes)
    optimizer = impl.parallel.ShardedAdamW(params, **hyper)
    for step in range(steps):
        set_grads(params, seed, step)  # the same gradients on every rank, as after data parallel
        optimizer.step()
    state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                      if isinstance(t, torch.Tensor) and t.dim() > 0)
    return {"params": [p.detach().clone() for p in params], "state_bytes": state_bytes}


sharded_case = st.fixed_dictionaries({
    "seed": seeds, "shapes": st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=2).map(tuple), min_size=1,
                                      max_size=3),
    "hyper": st.fixed_dictionaries({"lr": st.sampled_from([1e-2, 0.1]), "betas": st.sampled_from([(0.9, 0.95),
                                                                                                 (0.8, 0.99)]),
                                    "eps": st.sampled_from([1e-6, 1e-3]),
                                    "weight_decay": st.sampled_from([0.0, 0.1])})})


@WORLD_EXAMPLES
@given(sharded_case, world_sizes)
def test_sharded_adamw_equals_unsharded_adamw(impl, c, size):
    steps = 3
    ranks = in_world(impl, size, sharded_task, c["seed"], c["shapes"], c["hyper"], steps)
    params = optimizer_params(c["seed"], c["shapes"])
    optimizer = torch.optim.AdamW(params, **c["hyper"])
    for step in range(steps):
        set_grads(params, c["seed"], step)
        optimizer.step()
    for rank, got in enumerate(ranks):
        for i, (value, expected) in enumerate(zip(got["params"], params)):
            assert_close(value, expected, f"after {steps} steps of ShardedAdamW({c['hyper']}) over {size} ranks, "
                         f"parameter {i} of shape {tuple(expected.shape)} on rank {rank} must equal "
                         "torch.optim.AdamW's in one process", scale=100)


@WORLD_EXAMPLES
@given(sharded_case, world_sizes)
def test_sharded_adamw_keeps_a_1_over_world_share_of_the_state_per_rank(impl, c, size):
    ranks = in_world(impl, size, sharded_task, c["seed"], c["shapes"], c["hyper"], 1)
    numels = [math.prod(shape) for shape in c["shapes"]]
    element = torch.tensor([], dtype=DTYPE).element_size()
    full = 2 * element * sum(numels)  # exp_avg and exp_avg_sq of every element
    share = 2 * element * sum(-(-n // size) for n in numels)  # ⌈n/world⌉ of each parameter
    held = [got["state_bytes"] for got in ranks]
    assert all(b <= share for b in held), (
        f"ShardedAdamW must keep the moments of this rank's slice of each parameter only: at most {share} bytes per "
        f"rank over {size} ranks (the whole state is {full}); the ranks hold {held}")
    assert sum(held) >= full, (
        f"every element's moments must be kept by some rank: the whole state is {full} bytes, the ranks hold "
        f"{held} in all")


# ------------------------------------------------------------------------------------------- world sizes agree


def training_task(impl, rank, size, c, steps):
    parallel = impl.parallel
    model = parallel.DataParallel(tiny_lm(c["seed"], c["vocab"], c["dim"]))
    optimizer = parallel.ShardedAdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for step in range(steps):
        ids = part(tokens(c["seed"] + step, c["vocab"], 4 * c["rows"], c["length"]), rank, size, dim=0)
        optimizer.zero_grad()
        loss = loss_of(model, ids)
        loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(float(total) / size)
        grads = named_grads(model.module)
        optimizer.step()
    return {"losses": losses, "grads": grads, "params": params_of(model.module)}


@pytest.mark.parametrize("size", [1, 2, 4])
def test_training_steps_agree_across_world_sizes(impl, size):
    c = {"seed": 7, "vocab": 11, "dim": 6, "rows": 1, "length": 6}
    steps = 3
    ranks = in_world(impl, size, training_task, c, steps)
    model = tiny_lm(c["seed"], c["vocab"], c["dim"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for step in range(steps):
        optimizer.zero_grad()
        loss = loss_of(model, tokens(c["seed"] + step, c["vocab"], 4 * c["rows"], c["length"]))
        loss.backward()
        losses.append(float(loss.detach()))
        grads = named_grads(model)
        optimizer.step()
    for rank, got in enumerate(ranks):
        what = f"DataParallel with ShardedAdamW over {size} rank(s), rank {rank}"
        assert_close(torch.tensor(got["losses"]), torch.tensor(losses, dtype=DTYPE),
                     f"{what}: the losses of {steps} steps on the same global batches must be one process's",
                     scale=1e3)
        assert_same_gradients(got["grads"], grads, rank, f"{what}: the last step's gradients must be one process's")
        for name, value in params_of(model).items():
            assert_close(got["params"][name], value, f"{what}: {name} after {steps} steps", scale=1e4)
