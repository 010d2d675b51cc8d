"""The spec's own worlds (spec/worlds.py): results by rank, a rank's exception raised again in the parent, a
stuck world stopped with nothing left running, and what recording ranks record added to the parent's record."""

import os
import time

import pytest
import torch
import torch.distributed as dist
from llmkata.spec import test_parallel, worlds
from llmkata.spec.coverage import RecordingImplementation
from llmkata.spec.impl import load


def rank_and_sum(impl, rank, size, base):
    value = torch.tensor([float(base + rank)])
    dist.all_reduce(value)
    return rank, size, float(value), os.getpid()


def raises_on_every_rank(impl, rank, size):
    raise KeyError(f"rank {rank} has no such key")


def rank_0_raises_the_others_sleep(impl, rank, size):
    if rank == 0:
        raise ValueError("rank 0 gives up")
    time.sleep(60)


def sleeps(impl, rank, size, seconds):
    time.sleep(seconds)
    return os.getpid()


def running(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:  # not our child: look it up
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


@pytest.fixture
def world():
    world = worlds.World(load("reference"), 2, timeout=20.0)
    yield world
    world.close()


def test_a_world_runs_tasks_on_every_rank_and_returns_them_by_rank(world):
    first = world.run(rank_and_sum, 10)
    second = world.run(rank_and_sum, 100)
    assert [r[:3] for r in first] == [(0, 2, 21.0), (1, 2, 21.0)]
    assert [r[:3] for r in second] == [(0, 2, 201.0), (1, 2, 201.0)]
    assert [r[3] for r in first] == [r[3] for r in second], "the same processes serve one task after another"


def test_an_exception_on_every_rank_is_raised_again_and_the_world_goes_on(world):
    with pytest.raises(KeyError, match=r"rank \d has no such key"):  # whichever rank's error arrives first
        world.run(raises_on_every_rank)
    assert world.alive, "every rank answered: none is stuck, so the world goes on serving"
    assert [r[2] for r in world.run(rank_and_sum, 0)] == [1.0, 1.0]


def test_a_rank_that_does_not_answer_after_another_raised_stops_the_world(world):
    pids = [r[3] for r in world.run(rank_and_sum, 0)]
    with pytest.raises(ValueError, match="rank 0 gives up"):
        world.run(rank_0_raises_the_others_sleep)
    assert not world.alive and not any(running(pid) for pid in pids), "the stuck rank is killed with the world"


def test_a_world_past_its_timeout_is_an_assertion_error_and_leaves_nothing_running():
    world = worlds.World(load("reference"), 2, timeout=3.0)
    try:
        pids = world.run(sleeps, 0.0)
        started = time.monotonic()
        with pytest.raises(AssertionError, match="did not finish sleeps within 3 s"):
            world.run(sleeps, 60.0)
        assert time.monotonic() - started < 15
        assert not any(running(pid) for pid in pids)
    finally:
        world.close()


def test_what_recording_ranks_record_is_added_to_the_parents_record():
    recording = RecordingImplementation.of(load("reference"))
    world = worlds.World(recording, 2, timeout=20.0)
    try:
        world.run(test_parallel.copy_to_task, 0, (2, 3))  # a spec task: its calls count as the spec's
    finally:
        world.close()
    site = recording.recorder.callsites["parallel.copy_to_parallel"]
    assert site.calls == 2 and site.seen["x"] == {"set"} and site.dtypes == {"torch.float64"}
