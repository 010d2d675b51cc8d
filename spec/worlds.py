"""The spec's own worlds: N processes joined by torch.distributed (gloo), kept alive to run many checks.

The parallel chapter's properties run in real multi-process worlds. Starting one costs far more than a check
inside it, so a world is started once and then runs task after task:

    world = shared(impl, 2)                # the world of 2 ranks for this implementation (started on first use)
    results = world.run(task, *args)       # task(impl, rank, world_size, *args) on every rank; results by rank

This launcher is the spec's, not the implementation's: a learner's `parallel.run_world` is checked by properties
of its own, and cannot take the other properties down with it. Every rank loads the implementation itself, by
name, with the same replaced names (`Implementation.replacing`, how mutants are run), and a recording
implementation (spec/coverage.py) records in every rank too: what the ranks record is added to the parent's record.

A task must be a module-level function (it is pickled by name) and should return plain data: tensors, numbers,
lists and dicts. The parent decides every verdict. When a rank raises, the parent raises the same exception (a
stub's NotImplementedError stays one); the world is stopped unless every other rank answers soon after (then none
waits in a collective, and the world goes on serving). A world that does not answer within its timeout is stopped
and reported as an AssertionError (a rank waits in a collective that another rank never joins). Stopping
kills every rank's process group, so nothing a rank started outlives it. The ranks are forked from a server
process that has torch imported already (multiprocessing's forkserver), which makes a world quick to start.
"""

from __future__ import annotations

import atexit
import datetime
import importlib.util
import multiprocessing
import multiprocessing.connection
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

# Absolute, as in spec/conftest.py: the spec's classes (Missing, RecordingImplementation) must be the ones the
# session uses, whether the spec was collected as `spec` or as `llmkata.spec`.
from llmkata.spec.impl import Implementation, load

TIMEOUT = 60.0  # seconds a task may take on every rank (the collectives' own timeout too)
GRACE = 5.0  # seconds the other ranks get to answer once one has raised
# Imported once by the fork server, so that no rank pays for them: building any torch optimizer imports
# torch._dynamo (seconds of CPU time).
PRELOAD = ["torch", "torch.distributed", "torch.optim", "torch._dynamo"]


def _recipe(impl: Implementation) -> tuple:
    """What a rank needs to load `impl` again: its name, its replaced names, and whether it records calls."""
    from llmkata.spec.coverage import RecordingImplementation

    return impl.name, dict(impl.overrides), isinstance(impl, RecordingImplementation)


def _load(recipe: tuple) -> Implementation:
    name, overrides, record = recipe
    impl = load(name).replacing(overrides) if overrides else load(name)
    if record:
        from llmkata.spec.coverage import RecordingImplementation

        impl = RecordingImplementation.of(impl)
    return impl


def _take_record(impl) -> dict:
    """The calls recorded since the last time, as Recorder.as_json() writes them; the counts start again at 0."""
    recorder = vars(impl).get("recorder")  # only a recording implementation has one
    if recorder is None:
        return {}
    taken = recorder.as_json()
    for callsite in recorder.callsites.values():
        callsite.calls = 0
        callsite.dtypes.clear()
        for seen in callsite.seen.values():
            seen.clear()
    return {key: site for key, site in taken.items() if site["calls"]}


def _add_record(impl, taken: dict) -> None:
    """Add what a rank recorded to the parent's recorder."""
    recorder = vars(impl).get("recorder")  # only a recording implementation has one
    if recorder is None:
        return
    for key, site in taken.items():
        if key not in recorder.callsites:
            module, name = key.split(".")[:2]
            try:
                getattr(getattr(impl, module), name)  # wrapping the name makes its callsites
            except Exception:  # noqa: BLE001 - a name the parent cannot load: nothing to add it to
                continue
        callsite = recorder.callsites.get(key)
        if callsite is None:
            continue
        callsite.calls += site["calls"]
        callsite.dtypes.update(site["dtypes"])
        for parameter, seen in site["seen"].items():
            callsite.seen.setdefault(parameter, set()).update(seen)


def _rank_main(recipe, rank: int, world_size: int, store_path: str, timeout: float, connection,
               environment: dict) -> None:
    """One rank: join the world, then run the tasks the parent sends until it sends None."""
    os.setpgrp()  # its own process group: stopping the world kills whatever this rank started, too
    # The parent's environment as it is now (the fork server that made this process may have been started earlier,
    # by a process with another environment).
    os.environ.clear()
    os.environ.update(environment)
    # Tasks are pickled under the name the parent's spec was collected as: `spec` in a clone, which a rank started
    # elsewhere (in the grader's sandbox, by llmkata.world_host) does not find on its path.
    if "spec" not in sys.modules and importlib.util.find_spec("spec") is None:
        import llmkata.spec
        sys.modules["spec"] = llmkata.spec
    torch.set_num_threads(1)
    impl = None
    try:
        dist.init_process_group("gloo", store=dist.FileStore(store_path, world_size), rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=timeout))
        while True:
            message = connection.recv()
            if message is None:
                break
            task, args = message
            try:
                if impl is None:
                    impl = _load(recipe)
                result = task(impl, rank, world_size, *args)
                connection.send(("ok", result, _take_record(impl)))
            except BaseException as error:  # noqa: BLE001 - everything goes back to the parent
                connection.send(("error", _portable(error), traceback.format_exc()))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _portable(error: BaseException) -> BaseException:
    """`error` if it survives pickling, else a RuntimeError that names it."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(error).__name__}: {error}")


class World:
    """`size` ranks that run tasks for one implementation until closed."""

    def __init__(self, impl: Implementation, size: int, timeout: float = TIMEOUT):
        self.impl, self.size, self.timeout = impl, size, timeout
        self.recipe = _recipe(impl)
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        self.folder = tempfile.mkdtemp(prefix="llmkata-spec-world-")
        store = os.path.join(self.folder, "store")  # a fresh file: no two worlds can meet by mistake
        pipes = [context.Pipe() for _ in range(size)]
        self.connections = [parent for parent, _ in pipes]
        # Not daemons: a daemon may not start processes, and the launcher properties run one inside a rank.
        self.processes = [context.Process(target=_rank_main,
                                          args=(self.recipe, rank, size, store, timeout, pipes[rank][1],
                                                dict(os.environ)))
                          for rank in range(size)]
        try:
            for process in self.processes:
                process.start()
        except BaseException:
            self.close()
            raise
        for _, child in pipes:
            child.close()

    @property
    def alive(self) -> bool:
        return bool(self.processes) and all(process.is_alive() for process in self.processes)

    def run(self, task, *args) -> list:
        """task(impl, rank, size, *args) on every rank; the results by rank.

        When a rank raises, the others get a moment to answer too: if they all do, none is stuck in a collective
        and the world goes on serving (a stub raises on every rank at once); if not, the world is stopped.
        """
        __tracebackhide__ = True
        for connection in self.connections:
            connection.send((task, args))
        results, pending, failure = [None] * self.size, set(range(self.size)), None
        deadline = time.monotonic() + self.timeout
        while pending:
            left = deadline - time.monotonic()
            waiting = {self.connections[rank]: rank for rank in pending}
            ready = multiprocessing.connection.wait(list(waiting), timeout=max(left, 0)) if left > 0 else []
            if not ready:
                self.close()
                if failure is not None:
                    raise failure
                raise AssertionError(
                    f"a world of {self.size} processes did not finish {task.__name__} within {self.timeout:.0f} s: "
                    f"ranks {sorted(pending)} are stuck, probably waiting in a collective (all_reduce, broadcast, "
                    "all_gather) that another rank never called")
            for connection in ready:
                rank = waiting[connection]
                pending.discard(rank)
                try:
                    reply = connection.recv()
                except EOFError:
                    code = self.processes[rank].exitcode
                    self.close()
                    raise RuntimeError(f"rank {rank} of a world of {self.size} died while running {task.__name__} "
                                       f"(exit code {code})") from None
                if reply[0] == "error":
                    _, error, remote = reply
                    if failure is None:
                        failure = error
                        if hasattr(error, "add_note") and not isinstance(error, NotImplementedError):
                            error.add_note(f"(raised on rank {rank} of {self.size}:)\n{remote}")
                        deadline = min(deadline, time.monotonic() + GRACE)
                    continue
                _, results[rank], taken = reply
                _add_record(self.impl, taken)
        if failure is not None:
            raise failure
        return results

    def close(self) -> None:
        """Stop every rank, and whatever it started; remove the store."""
        for connection in self.connections:
            try:
                connection.send(None)
            except (OSError, ValueError):
                pass
        for process in self.processes:
            if process.pid is None:  # never started
                continue
            if process.is_alive():
                process.join(0.5)
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.join()
        for connection in self.connections:
            connection.close()
        self.processes, self.connections = [], []
        shutil.rmtree(self.folder, ignore_errors=True)


# ------------------------------------------------------------------ what the learner's run_world runs in its ranks
# (here rather than in the spec file: the learner's ranks import this module, which is quick to import)


def rank_sum(rank, size, base, delay):
    """In a learner's world: the all-reduced sum of (base + rank); later ranks finish first."""
    value = torch.tensor([float(base + rank)])
    dist.all_reduce(value)
    time.sleep(delay * (size - 1 - rank))
    return {"rank": rank, "size": size, "sum": float(value)}


def rank_sum_beside(rank, size, base, folder, name):
    """In one of two learner's worlds started together: wait (10 s at most) until the other world's ranks are running
    too, so that the two are alive at once; then the all-reduced sum of (base + rank), and whether the other world
    was seen running."""
    Path(folder, f"{name}-{rank}").touch()
    others = lambda: [path for path in Path(folder).iterdir() if not path.name.startswith(f"{name}-")]
    deadline = time.monotonic() + 10
    while len(others()) < size and time.monotonic() < deadline:
        time.sleep(0.01)
    beside = len(others()) >= size
    value = torch.tensor([float(base + rank)])
    dist.all_reduce(value)
    return {"rank": rank, "size": size, "sum": float(value), "beside_the_other": beside}


def rank_fails(rank, size, folder):
    """In a learner's world: rank 1 raises at once; the others would work on for a minute."""
    Path(folder, f"{os.getpid()}.pid").touch()
    if rank == 1:
        deadline = time.monotonic() + 10  # every rank is running (its pid written) before this one fails
        while len(list(Path(folder).glob("*.pid"))) < size and time.monotonic() < deadline:
            time.sleep(0.01)
        raise ValueError("rank 1 gives up")
    time.sleep(60)
    return rank


def rank_sleeps(rank, size, folder):
    """In a learner's world: every rank sleeps far longer than the world's timeout."""
    Path(folder, f"{os.getpid()}.pid").touch()
    time.sleep(30)
    return rank


_SHARED: dict[int, World] = {}


def shared(impl: Implementation, size: int) -> World:
    """The running world of `size` ranks for `impl`: started on first use, and again after a failure or when
    another implementation (other replaced names) asks; the previous one of that size is closed first."""
    world = _SHARED.get(size)
    if world is not None and (world.recipe != _recipe(impl) or not world.alive):
        world.close()
        world = None
    if world is None:
        # An implementation that runs elsewhere (the grader's sandboxed worker) starts its worlds there too.
        start = getattr(type(impl), "start_world", None)
        world = _SHARED[size] = start(impl, size, TIMEOUT) if start else World(impl, size)
    world.impl = impl  # the parent's own object: where a recording implementation adds what ranks record
    return world


def run(impl: Implementation, size: int, task, *args) -> list:
    """task(impl, rank, size, *args) on every rank of the shared world of `size` for `impl`; results by rank."""
    __tracebackhide__ = True
    return shared(impl, size).run(task, *args)


@atexit.register
def close_all() -> None:
    for world in list(_SHARED.values()):
        world.close()
    _SHARED.clear()
