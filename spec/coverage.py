"""Which contract parameters, and which dtypes, the spec exercises.

A `RecordingImplementation` stands in for the implementation under test. Every contract name it hands out is a
recording stand-in for the real one, which it then calls:

- a function becomes a wrapper with the same name and signature;
- a class becomes a subclass created on the fly, with the same name, module and signature, that records its
  constructor's arguments and those of the contract's methods (a classmethod such as `Tokenizer.load` included);
  `isinstance` and `issubclass` answer as for the original class, so objects the implementation builds itself
  still pass `isinstance(obj, impl.layers.Linear)`, and a pickled instance unpickles as the original class;
- a `torch.autograd.Function` records the arguments of `apply` against its `forward` signature, minus ctx.

Only calls the spec writes are recorded: those whose nearest caller in the spec or in the implementation is the
spec. When `model.Transformer` builds its own `RMSNorm`s, nothing is recorded, and neither is a copy made by
`dataclasses.replace` or `copy`.

For each call and each parameter one observation is kept:

    'set'              passed explicitly, with a value other than the default (a required parameter: passed)
    'default'          left out, or passed with the default value
    'True' / 'False'   the value of a boolean parameter, passed or by default, so that both ways can be counted

and the dtypes of the tensor arguments (also inside a list, tuple or dict argument). `pytest spec` records when
$LLMKATA_RECORD_CALLS names a JSON file to write at the end of the session (see spec/conftest.py);
`parameter_gaps` and `missing_dtype` read that file.

Example of a record's entry:

    "rope.rotate": {"calls": 412, "params": [{"name": "interleaved", "kind": "POSITIONAL_OR_KEYWORD",
                    "required": false, "boolean": true}, ...],
                    "seen": {"interleaved": ["False", "True"], ...}, "dtypes": ["torch.float32", "torch.float64"]}
"""

from __future__ import annotations

import copy
import copyreg
import dataclasses
import functools
import inspect
import itertools
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .contract import BY_MODULE, CHAPTERS, Class, Function
from .impl import Implementation, Missing, ModuleView

RECORD_VAR = "LLMKATA_RECORD_CALLS"
SPEC_DIR = Path(__file__).resolve().parent

SET, DEFAULT = "set", "default"
# Objects built by these modules are copies, not calls the caller wrote: `dataclasses.replace` passes every field.
_COPIERS = {os.path.realpath(module.__file__) for module in (copy, copyreg, dataclasses)}
_ITEMS_LOOKED_AT = 64  # dtypes are read from the first items of a list argument only: lists of tensors are short


class Callsite:
    """What the spec passed to one callable: a contract function, constructor or method."""

    def __init__(self, key: str, signature: inspect.Signature):
        self.key, self.signature = key, signature
        self.calls = 0
        self.seen: dict[str, set[str]] = {name: set() for name in signature.parameters}
        self.dtypes: set[str] = set()

    def note(self, args: tuple, kwargs: dict) -> None:
        self.calls += 1
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError:  # a call the spec makes to see it rejected
            return
        for name, parameter in self.signature.parameters.items():
            if name in bound.arguments:
                value = bound.arguments[name]
                self.seen[name].add(_observation(parameter, value))
                self.dtypes.update(str(dtype) for dtype in _tensor_dtypes(value))
            elif isinstance(parameter.default, bool):
                self.seen[name].add(str(parameter.default))
            else:
                self.seen[name].add(DEFAULT)

    def as_json(self) -> dict[str, Any]:
        params = [{"name": p.name, "kind": p.kind.name, "required": p.default is inspect.Parameter.empty
                   and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD), "boolean": isinstance(p.default, bool)}
                  for p in self.signature.parameters.values()]
        return {"calls": self.calls, "params": params, "seen": {k: sorted(v) for k, v in self.seen.items()},
                "dtypes": sorted(self.dtypes)}


def _observation(parameter: inspect.Parameter, value: Any) -> str:
    """One call's observation of one explicitly bound parameter.  Example: (dim=-1, value -1) -> 'default'"""
    if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
        return SET if value else DEFAULT
    default = parameter.default
    if isinstance(value, bool) and (default is parameter.empty or isinstance(default, bool)):
        return str(value)
    if default is parameter.empty:
        return SET
    return DEFAULT if _equals_default(value, default) else SET


def _equals_default(value: Any, default: Any) -> bool:
    """Example: 10000 vs 10000.0 -> True; [] vs () -> True; a tensor vs None -> False"""
    if value is default:
        return True
    if isinstance(value, torch.Tensor) or hasattr(value, "__array__"):
        return False
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        value, default = tuple(value), tuple(default)
    try:
        same = value == default
    except Exception:  # an object whose == raises is not the default
        return False
    return isinstance(same, bool) and same


def _tensor_dtypes(value: Any) -> Iterable[torch.dtype]:
    """The dtypes of a tensor argument, or of the tensors among the first items of a list, tuple or dict."""
    if isinstance(value, torch.Tensor):
        return (value.dtype,)
    if isinstance(value, dict):
        value = value.values()
    elif not isinstance(value, (list, tuple)):  # never iterate an iterator: it may be lazy, or infinite
        return ()
    return tuple(v.dtype for v in itertools.islice(value, _ITEMS_LOOKED_AT) if isinstance(v, torch.Tensor))


class _DelegatesChecks:
    """Metaclass mixin: isinstance/issubclass against a recording class answer as for the class it records."""

    def __instancecheck__(cls, instance) -> bool:
        recorded = cls.__dict__.get("_recorded_class")
        return isinstance(instance, recorded) if recorded else super().__instancecheck__(instance)

    def __subclasscheck__(cls, subclass) -> bool:
        recorded = cls.__dict__.get("_recorded_class")
        return issubclass(subclass, recorded) if recorded else super().__subclasscheck__(subclass)


@functools.cache
def _recording_metaclass(metaclass: type) -> type:
    return type(f"Recording{metaclass.__name__}", (_DelegatesChecks, metaclass), {})


def _reduce_as(recording: type, recorded: type):
    """`__reduce_ex__` for a recording class: pickle (and copy) an instance as one of the original class, the
    one that can be imported by name, with the same state."""

    def __reduce_ex__(self, protocol):
        reduced = super(recording, self).__reduce_ex__(protocol)
        if not isinstance(reduced, tuple) or len(reduced) < 2:
            return reduced
        build, args = reduced[0], tuple(recorded if arg is recording else arg for arg in reduced[1])
        # pickle insists that copyreg.__newobj__ builds an object of the pickled object's own class
        build = {copyreg.__newobj__: _new_object, copyreg.__newobj_ex__: _new_object_ex}.get(build, build)
        return (build, args, *reduced[2:])

    return __reduce_ex__


def _new_object(cls, *args):
    return cls.__new__(cls, *args)


def _new_object_ex(cls, args, kwargs):
    return cls.__new__(cls, *args, **kwargs)


class Recorder:
    """Wraps contract names and keeps what the spec passed to them."""

    def __init__(self, callers: Iterable[str | Path] = (SPEC_DIR,), implementation: str | Path | None = None):
        """`callers`: folders whose code counts as the spec; `implementation`: the folder of the implementation,
        whose calls are never recorded."""
        self.callers = tuple(os.path.realpath(folder) + os.sep for folder in callers)
        self.implementation = os.path.realpath(implementation) + os.sep if implementation else None
        self.callsites: dict[str, Callsite] = {}
        self._wrapped: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._kinds: dict[str, str | None] = {os.path.realpath(__file__): None}

    # ------------------------------------------------------------------------------------------------ callers

    def _kind(self, filename: str) -> str | None:
        """'spec', 'implementation', 'copy', or None for anything else (torch, hypothesis, this module)."""
        kind = self._kinds.get(filename, "?")
        if kind == "?":
            path = os.path.realpath(filename)
            kind = self._kinds.get(path, "?")
            if kind == "?":
                if path in _COPIERS:
                    kind = "copy"
                elif self.implementation and path.startswith(self.implementation):
                    kind = "implementation"
                elif path.startswith(self.callers):
                    kind = "spec"
                else:
                    kind = None
            self._kinds[filename] = kind
        return kind

    def called_by_spec(self, depth: int = 2) -> bool:
        """Whether the nearest caller, `depth` frames up, that is either the spec or the implementation is the
        spec. Frames of torch, hypothesis or pytest in between (`module(x)`, `gradcheck(f, ...)`) are looked
        through."""
        frame = sys._getframe(depth)
        while frame is not None:
            kind = self._kind(frame.f_code.co_filename)
            if kind is not None:
                return kind == "spec"
            frame = frame.f_back
        return False

    def _callsite(self, key: str, signature: inspect.Signature) -> Callsite:
        if key not in self.callsites:
            self.callsites[key] = Callsite(key, signature)
        return self.callsites[key]

    # ------------------------------------------------------------------------------------------------ wrapping

    def wrap(self, qualified: str, obj: Any) -> Any:
        """The recording stand-in for the contract name `qualified` ('layers.softmax'); other names as they are."""
        module, _, name = qualified.partition(".")
        entry = BY_MODULE[module].names.get(name) if module in BY_MODULE else None
        if entry is None:
            return obj
        cached = self._wrapped.get((qualified, id(obj)))
        if cached is not None and cached[0] is obj:
            return cached[1]
        if isinstance(entry, Function) and callable(obj) and not inspect.isclass(obj):
            wrapped = self._wrap_function(qualified, obj)
        elif isinstance(entry, Class) and inspect.isclass(obj):
            wrapped = self._wrap_class(qualified, entry, obj)
        else:  # not what the contract says: the spec's contract test reports it
            wrapped = obj
        self._wrapped[(qualified, id(obj))] = (obj, wrapped)  # keeps obj alive, so its id stays its own
        return wrapped

    def _wrap_function(self, key: str, function) -> Any:
        callsite = self._callsite(key, inspect.signature(function))

        @functools.wraps(function)
        def recording(*args, **kwargs):
            if self.called_by_spec():
                callsite.note(args, kwargs)
            return function(*args, **kwargs)

        return recording

    def _wrap_class(self, key: str, entry: Class, base: type) -> type:
        namespace: dict[str, Any] = {"__module__": base.__module__, "__qualname__": base.__qualname__,
                                     "__doc__": base.__doc__, "__slots__": (), "_recorded_class": base}
        if issubclass(base, torch.autograd.Function):
            namespace["apply"] = self._wrap_apply(f"{key}.apply", base)
        else:
            if base.__init__ is not object.__init__:
                namespace["__init__"] = self._wrap_init(key, base)
            for method in entry.methods:
                wrapped = self._wrap_method(f"{key}.{method}", base, method)
                if wrapped is not None:
                    namespace[method] = wrapped
            params = getattr(base, "__dataclass_params__", None)
            if params is not None and params.eq:
                # A dataclass's == holds only between objects of one class: compare field by field instead, so
                # a config the spec builds equals the same config built by the implementation.
                namespace["__eq__"] = _dataclass_eq(base)
                namespace["__hash__"] = base.__hash__
        recording = _recording_metaclass(type(base))(base.__name__, (base,), namespace)
        recording.__reduce_ex__ = _reduce_as(recording, base)
        return recording

    def _wrap_init(self, key: str, base: type):
        callsite = self._callsite(key, inspect.signature(base))
        init = base.__init__

        @functools.wraps(init)
        def __init__(instance, *args, **kwargs):
            if self.called_by_spec():
                callsite.note(args, kwargs)
            init(instance, *args, **kwargs)

        return __init__

    def _wrap_method(self, key: str, base: type, method: str):
        static = inspect.getattr_static(base, method, None)
        if static is None:
            return None  # the spec's contract test reports a missing method
        if isinstance(static, staticmethod):
            function = static.__func__
            callsite = self._callsite(key, inspect.signature(function))

            @functools.wraps(function)
            def recording_static(*args, **kwargs):
                if self.called_by_spec():
                    callsite.note(args, kwargs)
                return function(*args, **kwargs)

            return staticmethod(recording_static)
        if isinstance(static, classmethod):
            function = static.__func__
            callsite = self._callsite(key, inspect.signature(getattr(base, method)))

            @functools.wraps(function)
            def recording_class(cls, *args, **kwargs):
                if self.called_by_spec():
                    callsite.note(args, kwargs)
                return function(cls, *args, **kwargs)

            return classmethod(recording_class)
        if not callable(static):
            return None
        parameters = list(inspect.signature(static).parameters.values())[1:]  # without self
        callsite = self._callsite(key, inspect.Signature(parameters))

        @functools.wraps(static)
        def recording(instance, *args, **kwargs):
            if self.called_by_spec():
                callsite.note(args, kwargs)
            return static.__get__(instance, type(instance))(*args, **kwargs)

        return recording

    def _wrap_apply(self, key: str, base: type):
        parameters = list(inspect.signature(inspect.getattr_static(base, "forward").__func__).parameters.values())
        callsite = self._callsite(key, inspect.Signature(parameters[1:]))  # without ctx

        @functools.wraps(base.apply.__func__)
        def apply(cls, *args, **kwargs):
            if self.called_by_spec():
                callsite.note(args, kwargs)
            return base.apply(*args, **kwargs)  # the original Function, its own backward included

        return classmethod(apply)

    # ------------------------------------------------------------------------------------------------ record

    def as_json(self) -> dict[str, Any]:
        return {key: callsite.as_json() for key, callsite in sorted(self.callsites.items())}


def _dataclass_eq(base: type):
    names = [f.name for f in dataclasses.fields(base) if f.compare]

    def __eq__(self, other):
        if type(other) not in (type(self), base):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in names)

    return __eq__


class RecordingModuleView(ModuleView):
    def __getattr__(self, name: str) -> Any:
        return self._impl.recorder.wrap(f"{self._module}.{name}", super().__getattr__(name))


class RecordingImplementation(Implementation):
    """The implementation under test, handing out recording stand-ins for its contract names."""

    def __init__(self, name: str, package: str, overrides: dict[str, Any] | None = None,
                 recorder: Recorder | None = None):
        super().__init__(name, package, overrides)
        self.recorder = recorder or Recorder(implementation=self.location)

    @classmethod
    def of(cls, impl: Implementation, recorder: Recorder | None = None) -> RecordingImplementation:
        return cls(impl.name, impl.package, impl.overrides, recorder)

    def __getattr__(self, module: str) -> ModuleView:
        if module.startswith("_"):
            raise AttributeError(module)
        return RecordingModuleView(self, module)

    def replacing(self, overrides: dict[str, Any]) -> RecordingImplementation:
        return RecordingImplementation(self.name, self.package, {**self.overrides, **overrides}, self.recorder)

    def record(self) -> dict[str, Any]:
        """Every contract callable, the ones the spec never called included (with their signatures)."""
        for chapter in CHAPTERS:
            for name in chapter.names:
                try:
                    getattr(getattr(self, chapter.module), name)
                except (Missing, ImportError, NotImplementedError):
                    pass  # a missing name has nothing to record
        return {"implementation": self.name, "callables": self.recorder.as_json()}

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.record(), indent=1, sort_keys=True) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------- reading


def parameter_gaps(record: dict[str, Any]) -> list[str]:
    """What no call of the spec passed, as `module.Name.method(param)`.

    An optional parameter needs one call with a value other than its default; a boolean one (its default is a
    bool, or it is required and only ever given bools) needs a call each way, `rope.rotate(interleaved=True)`;
    `*args` / `**kwargs` need one call that passes something; a required one needs a call. A callable without
    parameters that is never called is `module.Name.method()`.
    """
    gaps = []
    for key, site in sorted(record["callables"].items()):
        if not site["params"] and site["calls"] == 0:
            gaps.append(f"{key}()")
        for param in site["params"]:
            name, seen = param["name"], set(site["seen"].get(param["name"], ()))
            if param["boolean"] or (param["required"] and seen and seen <= {"True", "False"}):
                gaps += [f"{key}({name}={way})" for way in ("True", "False") if way not in seen]
            elif param["required"]:
                if not seen:
                    gaps.append(f"{key}({name})")
            elif SET not in seen:
                gaps.append(f"{key}({name})")
    return gaps


def missing_dtype(record: dict[str, Any], keys: Iterable[str], dtype: torch.dtype) -> list[str]:
    """The callables among `keys` that the spec never gave a tensor of `dtype`."""
    callables = record["callables"]
    return [key for key in keys if str(dtype) not in callables.get(key, {}).get("dtypes", ())]
