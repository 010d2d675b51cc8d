"""The sandboxed worker of remote grading: it imports the submission, keeps the objects it makes, runs the calls the
trusted spec sends, and answers with plain data (llmkata.wire). It decides nothing: the spec's assertions run in
the grader's own process, on the numbers that come back.

    python -I -m llmkata.worker IMPL        # stdin: the grader's requests; fd 3: the answers

Tensors cross as mirrors: each side keeps its own copy under one id, and every message carries the copies that
changed since the last one (data, and for the worker's own tensors their gradient), so that
`model.weight.copy_(w)` in the spec and `optimizer.step()` in the worker both reach the other side. A call whose
results carry an autograd graph keeps it here, and `backward` runs it when the spec's own graph reaches that call.
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import sys
import types
import warnings
import weakref
import zlib
from collections import OrderedDict
from pathlib import PurePath

import torch
from llmkata import wire

MAX_GRAPHS = 1024


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """The elements in order, as one dense row (booleans as bytes)."""
    flat = tensor.detach().reshape(-1)
    if flat.numel() and flat.stride(0) != 1:  # a clone may keep a size-1 dimension's stride: copy into a new row
        flat = torch.empty(flat.numel(), dtype=flat.dtype).copy_(flat)
    return flat.to(torch.uint8) if flat.dtype == torch.bool else flat


def _state(tensor: torch.Tensor) -> tuple:
    if tensor.device.type != "cpu":
        if tensor.device.type == "meta":
            return (tensor._version, 0, tensor.dtype, tuple(tensor.shape), None)
        digest = zlib.crc32(_flat(tensor.cpu()).view(torch.uint8).numpy()) if tensor.numel() else None
        return (tensor._version, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), digest)
    data = tensor.detach()
    if not data.is_contiguous():
        data = data.contiguous()
    try:  # the buffer numpy lends: no copy (every size-1 dimension counts as contiguous there too)
        digest = zlib.crc32(data.numpy())
    except (TypeError, RuntimeError):  # bfloat16 and other dtypes numpy lacks; a conjugate or negative view
        digest = zlib.crc32(_flat(data).view(torch.uint8).numpy())
    return (tensor._version, tensor.data_ptr(), tensor.dtype, tensor.shape, digest)


def fingerprint(tensor: torch.Tensor) -> tuple:
    """What identifies a tensor's state: its version, storage, dtype and shape, and a digest of its bytes (a write
    through `.data`, as gradcheck and many optimizers make, bumps no version), with its gradient's (clipping scales
    a gradient in place)."""
    grad = tensor.grad if tensor.is_leaf else None
    return (_state(tensor), tensor.requires_grad, None if grad is None else (id(grad), _state(grad)))


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    if tensor.device.type == "meta":
        return b""
    return _flat(tensor.cpu()).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""


def follow_requires_grad(tensor: torch.Tensor, requires_grad: bool) -> None:
    """A leaf's requires_grad as the other side set it (freezing a parameter is a change to mirror too)."""
    if tensor.is_leaf and tensor.requires_grad != requires_grad and (tensor.is_floating_point() or not requires_grad):
        tensor.requires_grad_(requires_grad)


def from_bytes(dtype: str, shape, device: str, raw: bytes) -> torch.Tensor:
    dtype = getattr(torch, dtype)
    if device == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    if not raw:
        return torch.zeros(shape, dtype=dtype)
    carrier = torch.uint8 if dtype == torch.bool else dtype
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(carrier).reshape(shape).clone()
    return data.to(torch.bool) if dtype == torch.bool else data


class Kept:
    """An object the spec keeps in its own process (a generator it passed, a model that records its calls, a local
    function): calling it, iterating over it, or reading a public attribute asks the spec's process."""

    __slots__ = ("_worker", "_cid", "_iterator", "__weakref__")

    def __init__(self, worker: Worker, cid: int, iterator: bool):
        self._worker, self._cid, self._iterator = worker, cid, iterator
        weakref.finalize(self, worker.dropped.append, cid)  # the spec's process may let the object go

    def _ask(self, op: str, *args, **kwargs):
        return self._worker.callback(self._cid, op, args, kwargs)

    def __call__(self, *args, **kwargs):
        return self._ask("call", *args, **kwargs)

    def __iter__(self):
        return self if self._iterator else self._ask("iter")

    def __next__(self):
        return self._ask("next")

    def __len__(self) -> int:
        return self._ask("len")

    def __getitem__(self, key):
        return self._ask("getitem", key)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return self._ask("getattr", name)

    def __repr__(self) -> str:
        return f"<an object of the spec, {self._cid}>"


class _Unpickler(pickle.Unpickler):
    def __init__(self, payload, worker: Worker):
        super().__init__(payload)
        self.worker = worker

    def persistent_load(self, pid):
        return self.worker._persistent_load(pid)


class Worker:
    def __init__(self, choice: str, requests=None, answers=None):
        from llmkata.spec.impl import load
        self.requests, self.answers = requests, answers
        self.kept: weakref.WeakValueDictionary[int, Kept] = weakref.WeakValueDictionary()
        self.dropped: list[int] = []  # objects of the spec no longer reached from here
        self.released_early: set[int] = set()
        self.states: dict[int, bytes] = {}  # generator id -> the state the grader knows it in
        self.hidden: dict[str, object] = {}  # modules hidden at the spec's request -> what sys.modules held
        self.impl = load(choice)
        location = self.impl.location
        self.folder = location if os.path.isdir(location) else None
        self.objects: dict[int, object] = {}  # id -> object (tensors included)
        self.id_of: dict[int, int] = {}  # id(object) -> id
        self.mirrors: dict[int, tuple[torch.Tensor, tuple, bool]] = {}  # id -> (tensor, fingerprint, ours)
        self.graphs: OrderedDict[int, tuple[list, list]] = OrderedDict()  # call -> (outputs, parent leaves)
        self.next_id = 1

    # ------------------------------------------------------------------------------------------ what comes in
    def _unpickle(self, payload: bytes):
        return _Unpickler(io.BytesIO(payload), self).load()

    def _persistent_load(self, pid):
        kind = pid[0]
        if kind == "ref":
            return self.objects[pid[1]]
        if kind == "tensor":
            _, rid, dtype, shape, device, raw, requires_grad, is_param, grad = pid
            data = from_bytes(dtype, shape, device, raw)
            requires_grad = requires_grad and (data.is_floating_point() or data.is_complex())
            tensor = torch.nn.Parameter(data, requires_grad) if is_param else data.requires_grad_(
                requires_grad)
            if grad is not None:
                tensor.grad = from_bytes(*grad)
            self._register(rid, tensor, ours=False)
            return tensor
        if kind == "kept":
            _, cid, iterator = pid
            proxy = self.kept.get(cid)
            if proxy is None:
                proxy = self.kept[cid] = Kept(self, cid, bool(iterator))
            return proxy
        if kind == "generator":
            _, rid, state = pid
            generator = self.objects.get(rid)
            if generator is None:
                generator = torch.Generator()
                self._register(rid, generator, ours=False)
            generator.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
            self.states[rid] = state
            return generator
        raise pickle.UnpicklingError(f"unknown reference {kind}")


    def _register(self, rid: int, obj, ours: bool) -> None:
        if rid in self.released_early:
            self.released_early.discard(rid)
            return
        self.objects[rid] = obj
        self.id_of[id(obj)] = rid
        if isinstance(obj, torch.Tensor):
            self.mirrors[rid] = (obj, fingerprint(obj), ours)

    def _apply_sync(self, sync) -> None:
        for rid, raw, raw_grad, requires_grad in sync:
            keep = raw_grad == "keep"  # the grader's mirror is gone: its last write, and the gradient as it is
            grad = None if raw_grad is None or keep else from_bytes(*raw_grad)
            tensor = self.objects.get(rid)
            if tensor is None:
                continue
            _, _, ours = self.mirrors[rid]
            if raw is None:  # only the gradient: the grader's mirror is gone
                tensor.grad = grad
                self.mirrors[rid] = (tensor, fingerprint(tensor), ours)
                continue
            data = from_bytes(*raw)
            with torch.no_grad():  # through .data: the other side's write is not a new version of a graph's input
                if tensor.shape == data.shape and tensor.dtype == data.dtype:
                    tensor.data.copy_(data)
                else:
                    tensor.data = data
            _, _, ours = self.mirrors[rid]
            follow_requires_grad(tensor, bool(requires_grad))
            if tensor.is_leaf and not keep:
                tensor.grad = grad
            self.mirrors[rid] = (tensor, fingerprint(tensor), ours)

    # ----------------------------------------------------------------------------------------- what goes out
    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def encode(self, value, buffers: list, outputs: list | None = None):
        if isinstance(value, _Items):
            return {"iter": [self.encode(item, buffers, outputs) for item in value.items]}
        if isinstance(value, _Plain):
            return {"l": [None if g is None else {"plain": self._encode_tensor_plain(g, buffers)} for g in value.grads]}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if type(value) is Kept:
            return {"kept": value._cid}
        if isinstance(value, (bytes, bytearray, memoryview)):
            buffers.append(bytes(value))
            return {"b": len(buffers) - 1}
        if isinstance(value, torch.Tensor):
            return self._encode_tensor(value, buffers, outputs)
        if isinstance(value, torch.dtype):
            return {"dtype": str(value).removeprefix("torch.")}
        if isinstance(value, torch.device):
            return {"device": str(value)}
        if isinstance(value, torch.Size):
            return {"size": list(value)}
        if isinstance(value, list):
            return {"l": [self.encode(v, buffers, outputs) for v in value]}
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return {"t": [self.encode(v, buffers, outputs) for v in value]}
        if isinstance(value, (set, frozenset)):
            return {"s": [self.encode(v, buffers, outputs) for v in value]}
        if type(value) in (dict, OrderedDict):
            return {"d": [[self.encode(k, buffers), self.encode(v, buffers, outputs)] for k, v in value.items()]}
        if isinstance(value, PurePath):
            return {"path": str(value)}
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            if isinstance(value, numpy.dtype) or isinstance(value, type) and issubclass(value, numpy.generic):
                return {"npdtype": numpy.dtype(value).str, "scalar_type": isinstance(value, type)}
            if isinstance(value, numpy.memmap) and isinstance(value.base, mmap.mmap) and value.size \
                    and isinstance(value.filename, (str, PurePath)) and value.dtype.kind in "biuf" \
                    and value.flags.c_contiguous:  # a whole map, not a view of one (whose offset would be off)
                return {"memmap": os.fspath(value.filename), "offset": int(value.offset), "dtype": value.dtype.str,
                        "shape": list(value.shape), "writeable": bool(value.flags.writeable)}
            if type(value) in (numpy.ndarray, numpy.memmap) and value.dtype.kind in "biufc":
                buffers.append(value.tobytes(order="C"))
                return {"ndarray": len(buffers) - 1, "dtype": value.dtype.str, "shape": list(value.shape)}
        if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "shape", None) == ():
            return value.item()
        return self._handle(value)

    def _handle(self, value) -> dict:
        rid = self.id_of.get(id(value))
        if rid is None or self.objects.get(rid) is not value:
            rid = self._new_id()
            self._register(rid, value, ours=True)
        return {"obj": rid, "type": type(value).__qualname__, "callable": callable(value),
                "iterator": hasattr(value, "__next__"), "module": isinstance(value, torch.nn.Module),
                "class": isinstance(value, type), "pymodule": isinstance(value, types.ModuleType)}

    def _encode_tensor(self, tensor: torch.Tensor, buffers: list, outputs: list | None) -> dict:
        if tensor.layout != torch.strided:
            tensor = tensor.detach().to_dense()
        rid = self.id_of.get(id(tensor))
        buffers.append(tensor_bytes(tensor))
        description = {"dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape),
                       "data": len(buffers) - 1, "device": tensor.device.type, "rg": tensor.requires_grad,
                       "param": isinstance(tensor, torch.nn.Parameter)}
        if rid is not None and self.objects.get(rid) is tensor:  # with its data, in case the mirror was collected
            return {"ref": rid, **description}
        if tensor.grad_fn is not None and outputs is not None:  # a result with a graph: backward comes back here
            outputs.append(tensor)
            return {"tensor": None, "out": len(outputs) - 1, **description}
        base = tensor._base
        if (base is not None and tensor.grad_fn is None and base.layout == torch.strided and base.is_contiguous()
                and base.dtype == tensor.dtype and base.device == tensor.device):
            # A view crosses as a view of its base's mirror: the two share their storage there too (a cache that
            # returns views of its buffers is seen to), and a write to the base shows in the view.
            base_node = self._encode_tensor(base, buffers, None)
            rid = self._new_id()
            self._register(rid, tensor, ours=True)
            return {"tensor": rid, "view": base_node, "stride": list(tensor.stride()),
                    "offset": tensor.storage_offset() - base.storage_offset(), **description}
        rid = self._new_id()
        self._register(rid, tensor, ours=True)
        grad = self._encode_tensor_plain(tensor.grad, buffers) if tensor.is_leaf and tensor.grad is not None else None
        return {"tensor": rid, "grad": grad, **description}

    def _changed(self, buffers: list) -> list:
        changed = []
        for rid, (tensor, seen, ours) in list(self.mirrors.items()):
            now = fingerprint(tensor)
            if now == seen:
                continue
            self.mirrors[rid] = (tensor, now, ours)
            grad = None
            if tensor.is_leaf and tensor.grad is not None:
                grad = self._encode_tensor_plain(tensor.grad, buffers)
            changed.append([rid, self._encode_tensor_plain(tensor, buffers), grad])
        return changed

    @staticmethod
    def _encode_tensor_plain(tensor: torch.Tensor, buffers: list) -> dict:
        buffers.append(tensor_bytes(tensor))
        return {"dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape),
                "data": len(buffers) - 1, "device": tensor.device.type, "rg": tensor.requires_grad}

    # -------------------------------------------------------------------------------------------- requests
    def _apply_context(self, context: dict) -> None:
        self._apply_sync(context.get("sync", ()))  # first: a mirror's last change can come with its release
        for rid in context.get("release", ()):
            if rid not in self.objects:  # the grader's copy died before this message registers ours
                self.released_early.add(rid)
            obj = self.objects.pop(rid, None)
            self.mirrors.pop(rid, None)
            self.states.pop(rid, None)
            if obj is not None and self.id_of.get(id(obj)) == rid:
                del self.id_of[id(obj)]
        if context.get("rng") is not None:
            torch.set_rng_state(torch.frombuffer(bytearray(context["rng"]), dtype=torch.uint8))
        cwd = context.get("cwd")
        if cwd and cwd != os.getcwd():
            try:  # relative paths mean what they mean to the spec, where the sandbox shows that folder
                os.chdir(cwd)
            except OSError:
                pass

    def _finish(self, header: dict, buffers: list) -> tuple[dict, list]:
        """What every message from here carries: the random state, the mirrors that changed, generators' states."""
        buffers.append(torch.get_rng_state().numpy().tobytes())
        header["rng"] = len(buffers) - 1
        header["changed"] = self._changed(buffers)
        header["dropped"] = [cid for cid in self.dropped if cid not in self.kept]  # unless handed over again
        self.dropped[:] = []
        header["generators"] = []
        for rid in list(self.states):
            obj = self.objects.get(rid)
            if isinstance(obj, torch.Generator):
                state = obj.get_state().numpy().tobytes()
                if self.states.get(rid) != state:
                    self.states[rid] = state
                    header["generators"].append([rid, self.encode(state, buffers)])
        return header, buffers

    def callback(self, cid: int, op: str, args: tuple, kwargs: dict):
        """Ask the spec's process to run `op` on an object it kept; serve its nested requests until it answers."""
        buffers: list[bytes] = []
        header = {"callback": [cid, op, self.encode(list(args), buffers), self.encode(dict(kwargs), buffers)]}
        wire.write_data(self.answers, *self._finish(header, buffers))
        while True:
            message = pickle.loads(wire.read_frame(self.requests))
            if message[0] != "reply":
                wire.write_data(self.answers, *self.handle(message))
                continue
            _, payload, error, context = message
            self._apply_context(context)
            if error is not None:
                raise _builtin_error(*error)
            return self._unpickle(payload)

    def handle(self, request) -> tuple[dict, list]:
        op, target, args, kwargs, context = request
        self._apply_context(context)
        buffers: list[bytes] = []
        outputs: list[torch.Tensor] = []
        try:
            with torch.set_grad_enabled(context.get("grad", True)), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = self._run(op, target, args, kwargs)
            header = {"ok": self.encode(result, buffers, outputs)}
            if caught:  # raised again in the spec's process, where pytest.warns and warning filters see them
                header["warnings"] = [[[c.__name__ for c in w.category.__mro__], str(w.message)[:4000]]
                                      for w in caught[:100]]
            if outputs:  # the leaves the graph reaches: the spec's tensors, in the order the grader listed them,
                # then this side's own (parameters), whose mirrors the grader adds to its graph
                theirs = [self.objects[rid] for rid in context.get("grad_inputs", ())]
                known = {id(t) for t in theirs}
                ours = [t for t in graph_leaves(outputs) if id(t) not in known]
                header["leaves"] = [self.encode(t, buffers) for t in ours]
                self.graphs[context["call"]] = (outputs, theirs + ours)
                while len(self.graphs) > MAX_GRAPHS:
                    self.graphs.popitem(last=False)
        except BaseException as error:  # noqa: BLE001 - every error of the submission goes back as data
            header = {"raise": describe(error, self.folder)}
        return self._finish(header, buffers)

    def _run(self, op: str, target, args, kwargs):
        if op == "module":
            return self.impl.module(target)
        if op == "location":
            return self.impl.location
        if op == "hide":  # `import NAME` fails from now on (as where NAME is not installed), or works again
            name, hide = target, self._unpickle(args)[0]
            if hide:
                self.hidden.setdefault(name, sys.modules.get(name))
                sys.modules[name] = None
            elif name in self.hidden:
                previous = self.hidden.pop(name)
                if previous is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = previous
            return None
        if op == "backward":
            grads = self._backward(target, [None if g is None else from_bytes(*g) for g in self._unpickle(args)])
            return _Plain(grads)
        if op == "construct":  # an object of the spec's, made here (Implementation.alongside)
            cls, *rest = self._unpickle(args)
            return cls(*rest, **self._unpickle(kwargs))
        obj = self.objects[target]
        args, kwargs = self._unpickle(args), self._unpickle(kwargs)
        if op == "call":
            result = obj(*args, **kwargs)
            if getattr(obj, "__name__", None) in EAGER and isinstance(getattr(obj, "__self__", None), torch.nn.Module):
                return _Items(list(result))  # a module's parameters, buffers, submodules: listed at once
            return result
        if op == "each":  # [obj(v, *rest) for v in values]: a spec's loop over many values in one request
            values, *rest = args
            return [obj(value, *rest, **kwargs) for value in values]
        if op == "getattr":
            return getattr(obj, args[0])
        if op == "setattr":
            setattr(obj, args[0], args[1])
            return None
        if op == "method":  # a dunder the proxy forwards: len, iter, next, getitem, setitem, contains, eq, repr...
            name = args[0]
            if name == "next":
                return next(obj)
            if name == "iter":
                return iter(obj)
            if name == "len":
                return len(obj)
            if name in ("repr", "str"):
                return repr(obj) if name == "repr" else str(obj)
            if name == "bool":
                return bool(obj)
            if name == "hash":
                return hash(obj)
            if name == "instancecheck":
                return isinstance(args[1], obj)
            if name == "eq":
                return obj == args[1]
            if name == "deepcopy":
                import copy
                return copy.deepcopy(obj)
            return getattr(obj, f"__{name}__")(*args[1:])
        raise ValueError(f"unknown request {op!r}")

    def _backward(self, call: int, grads: list):
        """The gradients of a kept graph's leaves (None where it does not reach), accumulated nowhere here: the
        grader's own autograd accumulates them, into its mirrors."""
        if call not in self.graphs:
            raise RuntimeError("the graph of this result was released (too many results kept alive at once)")
        outputs, leaves = self.graphs[call]
        pairs = [(out, grad) for out, grad in zip(outputs, grads) if grad is not None]
        if not pairs or not leaves:
            return [None] * len(leaves)
        found = torch.autograd.grad([out for out, _ in pairs], leaves, [grad for _, grad in pairs],
                                    retain_graph=True, allow_unused=True)
        return [None if g is None else g.detach() for g in found]


def graph_leaves(outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every leaf tensor that requires a gradient and that the outputs' graph reaches, in a stable order."""
    leaves, seen, stack = [], set(), [out.grad_fn for out in reversed(outputs)]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            leaves.append(variable)
        stack.extend(child for child, _ in reversed(node.next_functions))
    return leaves


# nn.Module's generators of its own parts: what they yield is fixed when they are called, so the grader gets
# every item in one answer and iterates over them locally instead of asking for each.
EAGER = frozenset({"parameters", "named_parameters", "buffers", "named_buffers", "children", "named_children",
                   "modules", "named_modules"})


class _Items:
    """Items to hand over as an iterator over them."""

    def __init__(self, items: list):
        self.items = items


class _Plain:
    """Gradients sent back as plain tensors, not as mirrors."""

    def __init__(self, grads):
        self.grads = grads


def _builtin_error(names: list, message: str) -> BaseException:
    """An error the spec's process raised in a callback, as the built-in exception nearest to it."""
    import builtins
    for name in names:
        found = getattr(builtins, str(name), None)
        if isinstance(found, type) and issubclass(found, Exception):
            return found(message) if found is not StopIteration else StopIteration()
    return RuntimeError(message)


def describe(error: BaseException, folder: str | None = None) -> list:
    """An error as plain data: the names of its class and its bases, and its message, with the line of the
    implementation that raised it (as the grader's reports show it for an error raised in process)."""
    message = str(error)[:4000]
    if folder and error.__traceback__ is not None and type(error).__name__ not in ("NotImplementedError", "Missing"):
        import traceback
        frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename.startswith(folder)]
        if frames:
            line = f": {frames[-1].line.strip()}" if frames[-1].line else ""
            message += f" — at {frames[-1].filename}, line {frames[-1].lineno}{line}"
    names = [cls.__name__ for cls in type(error).__mro__]
    if isinstance(error, SyntaxError):  # where it is, so that the report can show the file, line and code
        return [names, str(error.msg), [error.filename, error.lineno, error.offset, error.text]]
    return [names, message]


def main() -> None:
    requests = sys.stdin.buffer
    answers = os.fdopen(int(sys.argv[1]), "wb")
    sys.stdout = sys.stderr  # what the submission prints goes to the captured, capped stderr
    os.dup2(2, 1)
    torch.set_num_threads(1)
    # The spec passes objects of its own classes; pytest may have imported it as `spec` (from a clone).
    import llmkata.spec
    sys.modules.setdefault("spec", llmkata.spec)
    worker = None
    while True:
        try:
            request = pickle.loads(wire.read_frame(requests))
        except EOFError:
            return
        if worker is None:  # the first request names the implementation: importing it runs its code
            try:
                worker = Worker(request, requests, answers)
                wire.write_data(answers, {"ok": None}, [])
            except BaseException as error:  # noqa: BLE001
                wire.write_data(answers, {"raise": describe(error)}, [])
                return
            continue
        header, buffers = worker.handle(request)
        wire.write_data(answers, header, buffers)


if __name__ == "__main__":
    main()
