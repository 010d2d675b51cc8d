"""Remote grading: the spec runs in the grader's own process, the submission in a sandboxed worker.

`RemoteImplementation` stands where the spec expects an `Implementation`: `impl.layers.softmax(x)` sends the call
to the worker (llmkata.worker) and gets plain data back (llmkata.wire): tensors as bytes, numbers, strings, and
handles to the objects that stay in the worker (`RemoteObject`: a module, a tokenizer, a function). Every assertion
of the spec then runs here, on tensors this process built from those bytes: the submission never runs in the
process that decides the verdict, and nothing it sends is unpickled.

What crosses, and how:
- a tensor the spec passes is mirrored in the worker, and one the worker returns is mirrored here; each request and
  each answer carries the mirrors that changed since (in-place updates, an optimizer's step, a gradient);
- a result with an autograd graph comes back as the output of `RemoteCall`, whose backward sends the gradient to the
  worker, which runs its own graph and returns the gradients of the spec's tensors (and keeps its parameters'
  gradients, which reach their mirrors here);
- a view the worker returns crosses as a view of its base's mirror (they share storage here too);
- torch's global random state travels with every request and answer, and so do the states of generators passed in;
  so do the working folder (relative paths mean the same on both sides) and the submission's warnings;
- objects the spec keeps for itself (generators, local functions, `spec.impl.kept` classes) stay here: the worker
  holds a proxy whose calls come back as callbacks, which may call and read them, never write (`_run_kept`);
- an error in the submission is raised here as the nearest built-in exception (its message kept); a worker that dies
  or does not answer within `CALL_SECONDS` fails the test in progress, and the next call starts a fresh worker.

The parallel chapter's worlds run in the sandbox as well (`HostedWorld`, llmkata.world_host): the ranks load the
submission there, and only their results come back, as plain data.
"""

from __future__ import annotations

import builtins
import io
import itertools
import json
import os
import pickle
import select
import sys
import time
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path

import torch
from llmkata import wire
from llmkata.spec.impl import Implementation, Missing, kept_in_spec
from llmkata.worker import follow_requires_grad
from llmkata.worker import fingerprint as _fingerprint
from llmkata.worker import tensor_bytes

START_SECONDS = 120.0  # importing torch and the submission, on a busy machine
CALL_SECONDS = float(os.environ.get("LLMKATA_CALL_SECONDS", 300))
# Each spec file's time, when several share one process: a chapter that hangs spends its own and no other's.
FILE_SECONDS = float(os.environ.get("LLMKATA_FILE_SECONDS", "inf"))
_file_deadline = float("inf")


def start_file() -> None:
    """A spec file begins (the grader's results plugin says so): its time, FILE_SECONDS, starts now."""
    global _file_deadline
    _file_deadline = time.monotonic() + FILE_SECONDS


def _call_seconds() -> float:
    left = _file_deadline - time.monotonic()
    if left <= 0:
        raise WorkerError(f"this chapter's time limit of {FILE_SECONDS:.0f} s is spent")
    return min(CALL_SECONDS, left)
ENV_CONFIG = "LLMKATA_REMOTE"  # JSON: {"hidden": [...], "scratch": "...", "limits": {...}}


# What the implementation may read of an object the spec keeps, besides its data: the model protocol's methods.
READABLE = frozenset({"forward", "parameters", "named_parameters", "buffers", "named_buffers", "children",
                      "named_children", "modules", "named_modules", "state_dict", "eval", "train"})


def _run_kept(obj, op: str, args: list, kwargs: dict):
    """One operation of the implementation on an object the spec keeps: calls and reads, never a write."""
    if op == "call":
        return obj(*args, **kwargs)
    if op == "next":
        return next(obj)
    if op == "iter":
        return iter(obj)
    if op == "len":
        return len(obj)
    if op == "getitem":
        return obj[args[0]]
    if op == "getattr" and isinstance(args[0], str) and not args[0].startswith("_"):
        value = getattr(obj, args[0])
        methods = READABLE | getattr(type(obj), "_llmkata_kept", frozenset())
        if not callable(value) or isinstance(value, torch.Tensor) or args[0] in methods:
            return value
    raise AttributeError(f"{op} {args[0] if args else ''} on an object of the spec is not open to an implementation")


# The spec's settings that the implementation's process must see too (the kernels chapter runs Triton's
# interpreter on a machine without a GPU).
PASSED_ON = ("TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES")


class WorkerError(RuntimeError):
    """The worker died, stopped answering, or broke the message format."""


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise wire.WireError(f"unknown dtype {name!r}")
    return dtype


def _tensor(description: dict, buffers: list[bytes]) -> torch.Tensor:
    dtype, shape = _dtype(description["dtype"]), [int(n) for n in description["shape"]]
    if description.get("device") == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    data = buffers[description["data"]]
    carrier = torch.bool if dtype == torch.bool else dtype
    count = 1
    for n in shape:
        count *= n
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    tensor = raw.view(torch.uint8 if carrier == torch.bool else carrier)
    if tensor.numel() != count:
        raise wire.WireError(f"a tensor of shape {shape} came with {len(data)} bytes")
    tensor = tensor.reshape(shape)
    return tensor.to(torch.bool) if dtype == torch.bool else tensor


def _warning(names: list[str]) -> type[Warning]:
    for name in names:
        found = getattr(builtins, name, None)
        if isinstance(found, type) and issubclass(found, Warning):
            return found
    return UserWarning


KEEP = "keep"  # in a change: the gradient stays as it is on the other side


def _layout(tensor: torch.Tensor) -> tuple | None:
    if tensor.device.type != "cpu" or tensor.layout != torch.strided:
        return None
    return (tensor.untyped_storage(), tensor.dtype, tuple(tensor.shape), tensor.stride(), tensor.storage_offset())


def _raw(tensor: torch.Tensor) -> tuple:
    """A tensor as (dtype, shape, device, bytes): quicker to send than a pickled tensor."""
    return (str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), tensor.device.type, tensor_bytes(tensor))


def _exception(names: list[str], message: str, where=None) -> BaseException:
    """The error to raise here for one the worker raised: `names` is its class's MRO, by name; `where` is a
    SyntaxError's (file, line, offset, text)."""
    if names[0] == "Missing":
        return Missing(message)
    if "SyntaxError" in names and isinstance(where, list) and len(where) == 4:
        filename, lineno, offset, text = where
        return SyntaxError(message, (str(filename), int(lineno or 0), int(offset or 0), str(text or "")))
    for name in names:
        found = getattr(builtins, name, None)
        if isinstance(found, type) and issubclass(found, Exception) and name not in ("BaseException",):
            return found(message) if name != "StopIteration" else StopIteration()
    return RuntimeError(f"{names[0]}: {message}")


class RemoteCall(torch.autograd.Function):
    """Results of one remote call that carry the worker's graph: backward asks the worker for the gradients."""

    @staticmethod
    def forward(ctx, session, call, outputs, anchor, *inputs):
        ctx.session, ctx.call, ctx.n_inputs = session, call, len(inputs)
        return tuple(outputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        grads_in = ctx.session.backward(ctx.call, [None if g is None else g.detach() for g in grads])
        return (None, None, None, None, *grads_in)


class RemoteObject:
    """An object that stays in the worker; attribute access, calls and the usual protocols go there."""

    __slots__ = ("_session", "_rid", "_generation", "_type", "_flags", "_names", "__weakref__")

    def __init__(self, session, rid: int, generation: int, type_name: str, flags: dict):
        for name, value in (("_session", session), ("_rid", rid), ("_generation", generation),
                            ("_type", type_name), ("_flags", flags), ("_names", {})):
            object.__setattr__(self, name, value)

    def _ask(self, op: str, *args, **kwargs):
        return self._session.request(op, self, args, kwargs)

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__") and name != "__dict__":  # vars(obj): its fields, as data
            raise AttributeError(name)
        if name in self._names:
            return self._names[name]
        value = self._ask("getattr", name)
        if self._flags.get("pymodule") and isinstance(value, RemoteObject) and value._flags.get("callable"):
            self._names[name] = value  # a module's functions and classes: one request, not one per call
        return value

    def __setattr__(self, name: str, value) -> None:
        self._ask("setattr", name, value)

    def __call__(self, *args, **kwargs):
        return self._session.request("call", self, args, kwargs)

    def __iter__(self):
        return self if self._flags.get("iterator") else self._ask("method", "iter")

    def __next__(self):
        return self._ask("method", "next")

    def __len__(self) -> int:
        return self._ask("method", "len")

    def __getitem__(self, key):
        return self._ask("method", "getitem", key)

    def __setitem__(self, key, value) -> None:
        self._ask("method", "setitem", key, value)

    def __contains__(self, item) -> bool:
        return self._ask("method", "contains", item)

    def __eq__(self, other):
        return self is other or self._ask("method", "eq", other)

    def __hash__(self) -> int:
        return hash((self._generation, self._rid))

    def __bool__(self) -> bool:
        return self._ask("method", "bool")

    def __repr__(self) -> str:
        try:
            return self._ask("method", "repr")
        except Exception:  # noqa: BLE001 - a repr must not fail
            return f"<remote {self._type}>"

    def __str__(self) -> str:
        return self._ask("method", "str")

    def __enter__(self):
        return self._ask("method", "enter")

    def __exit__(self, *exc_info):
        return self._ask("method", "exit", None, None, None)

    def __instancecheck__(self, instance) -> bool:
        return self._ask("method", "instancecheck", instance)

    def __deepcopy__(self, memo):
        return self._ask("method", "deepcopy")

    def __copy__(self):
        return self._ask("method", "deepcopy")


def _start_sandboxed(config: dict, module: str, *args: str):
    """`python -I -m module *args FD` in the grading sandbox: its requests on stdin, its answers on FD, read here
    from the descriptor returned."""
    import subprocess

    from llmkata.sandbox import Limits, Sandbox
    read_fd, write_fd = os.pipe()
    sandbox = Sandbox.detect(hidden=tuple(Path(p) for p in config.get("hidden", ())))
    scratch = Path(config["scratch"])
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(scratch), "LANG": "C.UTF-8",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TMPDIR": os.environ.get("TMPDIR", "/tmp")}
    env.update({name: os.environ[name] for name in PASSED_ON if name in os.environ})
    limits = Limits(**config.get("limits", {}))
    try:
        started = sandbox.start([sys.executable, "-I", "-m", module, *args, str(write_fd)], scratch, env, limits,
                                pass_fds=(write_fd,), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return started, read_fd


class HostedWorld:
    """The spec's world of `size` ranks for a remote implementation (spec/worlds.py, `shared`): the ranks load the
    submission, so they run in the grading sandbox, in a process of llmkata.world_host that answers with plain data
    only. The same interface as the spec's own `World`: run(task, *args) -> results by rank, alive, close()."""

    def __init__(self, impl: RemoteImplementation, size: int, timeout: float):
        self.impl, self.size, self.timeout = impl, size, timeout
        self.recipe = (impl.name, {}, False)
        self.started, self.answer_fd = _start_sandboxed(impl.session.config, "llmkata.world_host", impl.name,
                                                        str(size))
        self.answers = _Answers(self.answer_fd)

    @property
    def alive(self) -> bool:
        return self.started is not None and self.started.process.poll() is None

    def run(self, task, *args) -> list:
        __tracebackhide__ = True
        # The host's world stops a task at its own timeout, and a rank's failure a moment after: time for both,
        # and for starting the ranks.
        limit = min(self.timeout * 2 + START_SECONDS, _call_seconds())
        try:
            wire.write_frame(self.started.process.stdin, pickle.dumps((task, args), protocol=pickle.HIGHEST_PROTOCOL))
            self.answers.deadline = time.monotonic() + limit
            header, buffers = wire.read_data(self.answers)
            if "raise" in header:
                names, message = header["raise"]
                error = _exception([str(n) for n in names], str(message))
            else:
                return wire.decode_plain(header["ok"], buffers)
        except TimeoutError:
            self.close()
            raise AssertionError(f"a world of {self.size} processes did not finish {task.__name__} within "
                                 f"{limit:.0f} s") from None
        except (EOFError, BrokenPipeError, OSError, KeyError, TypeError, ValueError, wire.WireError) as failure:
            output = self.started.err.text()[-2000:].strip() if self.started else ""
            self.close()
            raise WorkerError(f"the world of {self.size} processes ended or sent a malformed answer ({failure})"
                              + (f"; its last output:\n{output}" if output else "")) from None
        raise error

    def close(self) -> None:
        if self.started is not None:
            self.started.stop()
            os.close(self.answer_fd)
            self.started = None


class _Answers:
    """The worker's answer pipe, read with a deadline."""

    def __init__(self, fd: int):
        self.fd, self.deadline = fd, None

    def read(self, size: int) -> bytes:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
            raise TimeoutError
        return os.read(self.fd, min(size, 1 << 22))


class _Pickler(pickle.Pickler):
    def __init__(self, out, session: Session, grad_inputs: list[int]):
        super().__init__(out, protocol=pickle.HIGHEST_PROTOCOL)
        self.session, self.grad_inputs = session, grad_inputs

    def persistent_id(self, obj):
        return self.session._persistent_id(obj, self.grad_inputs)


class Session:
    """One worker and the mirrors and handles that belong to it; a dead worker is replaced at the next call."""

    def __init__(self, choice: str, config: dict):
        self.choice, self.config = choice, config
        self.generation = 0
        self.started = None
        self.next_id = itertools.count(-1, -1)  # ours are negative, the worker's positive
        self.calls = itertools.count(1)
        self._reset()

    def _reset(self) -> None:
        self.tensors: dict[int, weakref.ref] = {}  # id -> mirror
        self.rid_of: dict[int, int] = {}  # id(tensor) -> id
        self.seen: dict[int, tuple] = {}
        self.theirs: set[int] = set()  # mirrors of the worker's tensors (their gradients come from there)
        self.proxies: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self.layouts: dict[int, tuple] = {}  # id -> where a mirror's bytes are, to read them after it is collected
        self.bases: dict[int, torch.Tensor] = {}  # id(view) -> the mirror it views
        self.kept: dict[int, object] = {}  # objects the spec keeps here, which the worker reaches by id
        self.kept_id: dict[int, int] = {}
        self.generators: dict[int, weakref.ref] = {}
        self.release: list[int] = []
        self.dead: list[int] = []  # mirrors collected since the last request: released with the next one
        # Tensors of the last answer, kept alive until the next request has carried their changes: the spec's
        # `model.weight.copy_(w)` writes to a mirror nothing else holds.
        self.recent: list[torch.Tensor] = []
        # Gradients that the grader's autograd accumulated into mirrors of the worker's tensors (parameters),
        # by id: they reach the worker with the next request, also when the mirror is gone by then.
        self.grads: dict[int, torch.Tensor] = {}

    # ---------------------------------------------------------------------------------------- the process
    def _start(self) -> None:
        starting = min(max(CALL_SECONDS, START_SECONDS), _call_seconds() + START_SECONDS)  # before it starts
        self.generation += 1
        self._reset()
        self.started, self.answer_fd = _start_sandboxed(self.config, "llmkata.worker")
        self.answers = _Answers(self.answer_fd)
        self._exchange(self.choice, timeout=starting)

    def _stop(self) -> None:
        if self.started is not None:
            self.started.stop()
            os.close(self.answer_fd)
            self.started = None

    def _died(self, why: str) -> WorkerError:
        output = self.started.err.text()[-2000:].strip() if self.started else ""
        code = self.started.process.poll() if self.started else None
        self._stop()
        return WorkerError(f"the implementation's worker {why}" + (f" (exit code {code})" if code is not None else "")
                           + (f"; its last output:\n{output}" if output else ""))

    def _exchange(self, request, timeout: float) -> tuple[dict, list[bytes]]:
        try:
            wire.write_frame(self.started.process.stdin, pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))
            self.answers.deadline = time.monotonic() + timeout
            header, buffers = wire.read_data(self.answers)
            while "callback" in header:  # the implementation calls an object the spec kept here
                wire.write_frame(self.started.process.stdin, self._serve(header, buffers))
                self.answers.deadline = time.monotonic() + timeout
                header, buffers = wire.read_data(self.answers)
        except TimeoutError:
            budget = f", the rest of this chapter's time limit of {FILE_SECONDS:.0f} s" if timeout < CALL_SECONDS else ""
            raise self._died(f"did not answer within {timeout:.0f} s{budget}") from None
        except (EOFError, BrokenPipeError, OSError):
            raise self._died("ended") from None
        except wire.WireError as error:
            raise self._died(f"sent a malformed answer ({error})") from None
        if "raise" in header and request is self.choice:
            names, message, *where = header["raise"]
            error = _exception([str(n) for n in names], str(message), *where)
            self._stop()
            raise error
        return header, buffers

    def close(self) -> None:
        self._stop()

    # ---------------------------------------------------------------------------------------- requests
    def module(self, name: str):
        return self.request("module", name)

    def location(self) -> str:
        return self.request("location", None)

    def _pickle(self, value, grad_inputs: list[int]) -> bytes:
        out = io.BytesIO()
        _Pickler(out, self, grad_inputs).dump(value)
        return out.getvalue()

    def _persistent_id(self, obj, grad_inputs: list[int]):
        """How an object crosses to the worker: by reference (its handles, mirrored tensors, the spec's kept
        objects, generators with their state), or None: by value."""
        if isinstance(obj, RemoteObject):
            if obj._session is not self or obj._generation != self.generation:
                raise WorkerError("an object of a worker that has ended was used again")
            return ("ref", obj._rid)
        if isinstance(obj, torch.Tensor):
            return self._tensor_pid(obj, grad_inputs)
        if kept_in_spec(obj):
            return self._keep(obj)
        if isinstance(obj, torch.Generator):
            rid = self.rid_of.get(id(obj))
            if rid is None or self.generators.get(rid, lambda: None)() is not obj:  # ids are reused
                rid = next(self.next_id)
                self.rid_of[id(obj)] = rid
                self.generators[rid] = weakref.ref(obj)
                self._on_death(obj, rid)
            return ("generator", rid, obj.get_state().numpy().tobytes())
        return None

    def _tensor_pid(self, tensor: torch.Tensor, grad_inputs: list[int]):
        rid = self.rid_of.get(id(tensor))
        if rid is not None and self.tensors.get(rid, lambda: None)() is tensor:
            if rid not in self.theirs and tensor.requires_grad and rid not in grad_inputs:
                grad_inputs.append(rid)
            return ("ref", rid)
        rid = next(self.next_id)
        self._remember(rid, tensor, theirs=False)
        if tensor.requires_grad:
            grad_inputs.append(rid)
        # Plain values only: the pickler would call persistent_id again for a tensor inside this tuple.
        grad = _raw(tensor.grad) if tensor.is_leaf and tensor.grad is not None else None
        return ("tensor", rid, *_raw(tensor), tensor.requires_grad, isinstance(tensor, torch.nn.Parameter), grad)

    def _remember(self, rid: int, tensor: torch.Tensor, theirs: bool) -> None:
        self.tensors[rid] = weakref.ref(tensor)
        self.rid_of[id(tensor)] = rid
        self.seen[rid] = _fingerprint(tensor)
        self.layouts[rid] = _layout(tensor)
        if theirs:
            self.theirs.add(rid)
        self._on_death(tensor, rid)

    def _on_death(self, obj, rid: int) -> None:
        """When `obj` (a tensor or a generator) is collected here, the worker may let its own copy go."""
        dead, generation = self.dead, self.generation

        def forget(rid=rid):  # may run inside any allocation (the cycle collector): it only takes note
            if self.generation == generation:
                dead.append(rid)

        weakref.finalize(obj, forget)

    def _bury(self) -> None:
        while self.dead:
            rid = self.dead.pop()
            if (self.tensors.get(rid, lambda: None)() is None and self.generators.get(rid, lambda: None)() is None
                    and self.proxies.get(rid) is None):  # not handed out again since
                self.generators.pop(rid, None)
                self.layouts.pop(rid, None)
                self.tensors.pop(rid, None)
                self.seen.pop(rid, None)
                self.theirs.discard(rid)
                self.release.append(rid)

    def _changed(self) -> list:
        changed = []
        for rid, grad in list(self.grads.items()):  # gradients of mirrors that may be gone since
            alive = self.tensors.get(rid, lambda: None)()
            if alive is None and grad is not None:
                changed.append((rid, None, _raw(grad), True))
        self.grads.clear()  # in place: the hooks hold this very dict
        for rid, ref in list(self.tensors.items()):
            tensor = ref()
            if tensor is None:
                self._last_write(rid, changed)
                continue
            now = _fingerprint(tensor)
            if now != self.seen.get(rid):
                self.seen[rid] = now
                self.layouts[rid] = _layout(tensor)
                grad = _raw(tensor.grad) if tensor.is_leaf and tensor.grad is not None else None
                # a gradient of None is sent as None
                changed.append((rid, _raw(tensor), grad, tensor.requires_grad))
        return changed

    def _last_write(self, rid: int, changed: list) -> None:
        """A mirror collected since the last message: what was written into it before (`for p in
        model.parameters(): p.add_(1)`, then nothing holds p) still reaches the worker, read from its storage."""
        layout = self.layouts.pop(rid, None)
        if layout is None:
            return
        storage, dtype, shape, stride, offset = layout
        ghost = torch.empty(0, dtype=dtype).set_(storage, offset, shape, stride)
        seen = self.seen.get(rid)
        if seen is not None and _fingerprint(ghost)[0][4] != seen[0][4]:
            changed.append((rid, _raw(ghost), KEEP, seen[1]))

    def ensure_started(self) -> None:
        if self.started is None or self.started.process.poll() is not None:
            if self.started is not None:
                self._stop()
            self._start()

    def request(self, op: str, target, args=(), kwargs=None):
        timeout = _call_seconds()
        self.ensure_started()
        if isinstance(target, RemoteObject):
            if target._session is not self or target._generation != self.generation:
                raise WorkerError("an object of a worker that has ended was used again (the worker was restarted "
                                  "after an earlier failure)")
            target = target._rid
        grad_inputs: list[int] = []
        call = next(self.calls)
        if op == "backward":
            payload_args = pickle.dumps([None if g is None else _raw(g) for g in args],
                                        protocol=pickle.HIGHEST_PROTOCOL)
            payload_kwargs = pickle.dumps({}, protocol=pickle.HIGHEST_PROTOCOL)
        else:
            payload_args = self._pickle(tuple(args), grad_inputs)
            payload_kwargs = self._pickle(dict(kwargs or {}), grad_inputs)
        changed = self._changed()
        self.recent = []
        self._bury()
        release, self.release[:] = list(self.release), []
        context = {"rng": torch.get_rng_state().numpy().tobytes(), "grad": torch.is_grad_enabled(), "sync": changed,
                   "release": release, "grad_inputs": grad_inputs, "call": call, "cwd": os.getcwd()}
        header, buffers = self._exchange((op, target, payload_args, payload_kwargs, context), timeout)
        return self._answer(header, buffers, call, grad_inputs, op)

    def hide(self, module: str, hidden: bool) -> None:
        self.request("hide", module, (hidden,))

    def backward(self, call: int, grads: list) -> list:
        return self.request("backward", call, grads)

    # ------------------------------------------------------------------------------ objects the spec keeps
    def _keep(self, obj) -> tuple:
        cid = self.kept_id.get(id(obj))
        if cid is None or self.kept.get(cid) is not obj:
            cid = next(self.next_id)
            self.kept[cid], self.kept_id[id(obj)] = obj, cid
        return ("kept", cid, isinstance(obj, Iterator) and iter(obj) is obj)

    def _serve(self, header: dict, buffers: list[bytes]) -> bytes:
        """Run a call the implementation made on an object the spec kept; the reply, pickled for the worker."""
        self._sync_in(header, buffers)
        try:
            cid, op, args, kwargs = header["callback"]
            obj = self.kept[int(cid)]
            args, kwargs = self._decode(args, buffers, []), self._decode(kwargs, buffers, [])
        except (KeyError, TypeError, ValueError, IndexError, OSError, wire.WireError) as error:
            raise self._died(f"sent a malformed request ({error})") from None
        try:
            payload, error = self._pickle(_run_kept(obj, str(op), list(args), dict(kwargs)), []), None
        except Exception as raised:  # noqa: BLE001 - goes to the implementation, as its own call would raise it
            payload, error = None, [[c.__name__ for c in type(raised).__mro__], str(raised)[:4000]]
        changed = self._changed()
        self._bury()
        release, self.release[:] = list(self.release), []
        context = {"rng": torch.get_rng_state().numpy().tobytes(), "sync": changed, "release": release,
                   "cwd": os.getcwd()}
        return pickle.dumps(("reply", payload, error, context), protocol=pickle.HIGHEST_PROTOCOL)

    def _memmap(self, node: dict):
        """A file the worker memory-mapped, mapped here too: only a regular file inside its scratch folder, read-only
        (copy-on-write where the worker's map was writeable: nothing written here reaches the file)."""
        import numpy
        path = Path(str(node["memmap"])).resolve()
        scratch = Path(self.config["scratch"]).resolve()
        if not path.is_relative_to(scratch) or not path.is_file():
            raise wire.WireError(f"a memory map of {path}, outside the worker's folder")
        return numpy.memmap(path, dtype=numpy.dtype(str(node["dtype"])), mode="c" if node.get("writeable") else "r",
                            offset=int(node["offset"]), shape=tuple(int(n) for n in node["shape"]))

    # ---------------------------------------------------------------------------------------- answers
    def _sync_in(self, header: dict, buffers: list[bytes]) -> None:
        """The worker's random state, mirrors and generators, as every message from it carries them."""
        try:
            for cid in header.get("dropped", []):
                self.kept.pop(int(cid), None)
            torch.set_rng_state(torch.frombuffer(bytearray(buffers[header["rng"]]), dtype=torch.uint8))
            for rid, data, grad in header.get("changed", []):
                self._update(int(rid), _tensor(data, buffers), None if grad is None else _tensor(grad, buffers),
                             bool(data.get("rg")))
            for rid, state in header.get("generators", []):
                generator = self.generators.get(int(rid), lambda: None)()
                if generator is not None:
                    generator.set_state(torch.frombuffer(bytearray(buffers[state["b"]]), dtype=torch.uint8))
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as error:
            raise self._died(f"sent a malformed answer ({error})") from None

    def _answer(self, header: dict, buffers: list[bytes], call: int, grad_inputs: list[int], op: str):
        self._sync_in(header, buffers)
        for names, message in header.get("warnings", [])[:100]:
            warnings.warn(str(message), _warning([str(n) for n in names]), stacklevel=4)
        if "raise" in header:
            names, message, *where = header["raise"]
            raise _exception([str(n) for n in names], str(message), *where)
        try:
            leaves = [self._decode(node, buffers, []) for node in header.get("leaves", [])]
            outputs = self._graph_outputs(header.get("ok"), buffers, call, grad_inputs, leaves)
            return self._decode(header.get("ok"), buffers, outputs)
        except (KeyError, TypeError, ValueError, IndexError, OSError, wire.WireError) as error:
            raise self._died(f"sent a malformed answer ({error})") from None

    def _update(self, rid: int, data: torch.Tensor, grad: torch.Tensor | None, requires_grad: bool) -> None:
        tensor = self.tensors.get(rid, lambda: None)()
        if tensor is None:
            return
        with torch.no_grad():  # through .data: the other side's write is not a new version of a graph's input
            if tensor.shape == data.shape and tensor.dtype == data.dtype:
                tensor.data.copy_(data)
            else:
                tensor.data = data
        self.layouts[rid] = _layout(tensor)
        follow_requires_grad(tensor, requires_grad)
        if tensor.is_leaf:
            tensor.grad = grad
        self.seen[rid] = _fingerprint(tensor)

    def _graph_outputs(self, value, buffers, call, grad_inputs, leaves) -> list[torch.Tensor]:
        found: list[tuple[int, torch.Tensor]] = []

        def walk(node):
            if isinstance(node, dict):
                if node.get("out") is not None and "tensor" in node:
                    found.append((int(node["out"]), _tensor(node, buffers)))
                for child in node.values():
                    walk(child)
            elif isinstance(node, list):
                for child in node:
                    walk(child)

        walk(value)
        if not found:
            return []
        found.sort(key=lambda pair: pair[0])
        anchor = torch.zeros((), requires_grad=True)
        inputs = [self.tensors[rid]() for rid in grad_inputs] + leaves
        return list(RemoteCall.apply(self, call, [t for _, t in found], anchor, *inputs))

    def _decode(self, node, buffers, outputs):
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            raise wire.WireError("a bare list where a tagged value belongs")
        if "b" in node:
            return buffers[node["b"]]
        if "l" in node:
            return [self._decode(v, buffers, outputs) for v in node["l"]]
        if "iter" in node:
            return iter([self._decode(v, buffers, outputs) for v in node["iter"]])
        if "t" in node:
            return tuple(self._decode(v, buffers, outputs) for v in node["t"])
        if "s" in node:
            return {self._decode(v, buffers, outputs) for v in node["s"]}
        if "d" in node:
            return {self._decode(k, buffers, outputs): self._decode(v, buffers, outputs) for k, v in node["d"]}
        if "dtype" in node and len(node) == 1:
            return _dtype(node["dtype"])
        if "device" in node and len(node) == 1:
            return torch.device(node["device"])
        if "size" in node:
            return torch.Size(int(n) for n in node["size"])
        if "path" in node:
            return Path(node["path"])
        if "npdtype" in node:
            import numpy
            dtype = numpy.dtype(str(node["npdtype"]))
            return dtype.type if node.get("scalar_type") else dtype
        if "memmap" in node:
            return self._memmap(node)
        if "ndarray" in node:
            import numpy
            return numpy.frombuffer(buffers[node["ndarray"]], dtype=numpy.dtype(node["dtype"])).reshape(
                node["shape"]).copy()
        if "plain" in node:
            return _tensor(node["plain"], buffers).clone()
        if "kept" in node:
            return self.kept[int(node["kept"])]
        if "ref" in node:
            rid = int(node["ref"])
            found = self.tensors.get(rid, lambda: None)()
            if found is not None:
                return found
            # Collected here while the worker answered: the same id again, from the data that came with it.
            found = _tensor(node, buffers).clone()
            if node.get("param"):
                found = torch.nn.Parameter(found, requires_grad=bool(node.get("rg")))
            elif node.get("rg") and found.is_floating_point():
                found.requires_grad_(True)
            theirs = rid in self.theirs or rid > 0
            self._remember(rid, found, theirs=theirs)
            self.recent.append(found)
            return found
        if "view" in node:
            base = self._decode(node["view"], buffers, outputs)
            size, stride = [int(n) for n in node["shape"]], [int(n) for n in node["stride"]]
            offset = int(node["offset"])
            tensor = _tensor(node, buffers).clone()
            if isinstance(base, torch.Tensor) and base.dtype == tensor.dtype and base.is_contiguous():
                try:  # shares the base mirror's storage
                    tensor = base.detach().as_strided(size, stride, base.storage_offset() + offset)
                    # The base mirror lives as long as the view: the worker's base keeps its id, and `cache.k`
                    # read later is this very mirror.
                    self.bases[id(tensor)] = base
                    weakref.finalize(tensor, self.bases.pop, id(tensor), None)
                except RuntimeError:  # not inside it: the data that came along, on its own
                    pass
            self._remember(int(node["tensor"]), tensor, theirs=True)
            self.recent.append(tensor)
            return tensor
        if "tensor" in node:
            if node.get("out") is not None:
                return outputs[int(node["out"])]
            rid = int(node["tensor"])
            tensor = _tensor(node, buffers).clone()
            if node.get("param"):
                tensor = torch.nn.Parameter(tensor, requires_grad=bool(node.get("rg")))
            elif node.get("rg") and tensor.is_floating_point():
                tensor.requires_grad_(True)
            if node.get("grad") is not None:
                tensor.grad = _tensor(node["grad"], buffers).clone()
            if tensor.requires_grad and tensor.is_leaf:
                grads = self.grads

                def accumulated(leaf, rid=rid):  # holds the id, not the mirror
                    grads[rid] = leaf.grad

                tensor.register_post_accumulate_grad_hook(accumulated)
            self._remember(rid, tensor, theirs=True)
            self.recent.append(tensor)
            return tensor
        if "obj" in node:
            rid = int(node["obj"])
            proxy = self.proxies.get(rid)
            if proxy is None:
                flags = {k: bool(node.get(k)) for k in ("callable", "iterator", "module", "class", "pymodule")}
                proxy = RemoteObject(self, rid, self.generation, str(node.get("type", "?")), flags)
                self.proxies[rid] = proxy
                self._on_death(proxy, rid)
            return proxy
        raise wire.WireError(f"an unknown value {sorted(node)}")


class RemoteImplementation(Implementation):
    """The implementation under test, living in a sandboxed worker (see the module's docstring)."""

    def __init__(self, choice: str, config: dict):
        super().__init__(choice, choice)
        self.session = Session(choice, config)
        self.modules: dict[str, RemoteObject] = {}

    @classmethod
    def from_environment(cls, choice: str) -> RemoteImplementation:
        return cls(choice, json.loads(os.environ[ENV_CONFIG]))

    @property
    def location(self) -> str:
        return f"{self.name} (in a sandboxed worker)"

    def module(self, module: str):
        self.session.ensure_started()
        if module not in self.modules or self.modules[module]._generation != self.session.generation:
            self.modules[module] = self.session.module(module)
        return self.modules[module]

    def _hide(self, module: str, hidden: bool) -> None:
        self.session.hide(module, hidden)

    def start_world(self, size: int, timeout: float) -> HostedWorld:
        return HostedWorld(self, size, timeout)

    def alongside(self, cls, *args, **kwargs):
        return self.session.request("construct", None, (cls, *args), kwargs)

    def each(self, function, values, *args, **kwargs) -> list:
        if not isinstance(function, RemoteObject):
            return super().each(function, values, *args, **kwargs)
        return self.session.request("each", function, (list(values), *args), kwargs)

    def replacing(self, overrides):
        raise NotImplementedError("a remote implementation is not patched: run mutants in process")
