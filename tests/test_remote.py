"""Remote grading: the spec in this process, the implementation in a sandboxed worker that returns plain data."""

import io
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llmkata import wire
from llmkata.remote import RemoteImplementation, WorkerError
from llmkata.sandbox import Sandbox
from llmkata.spec.impl import Missing, kept

ROOT = Path(__file__).resolve().parents[1]


# What a submission may do with the spec's objects, and what it tries beyond that.
SPEC_OBJECT_USES = """
import warnings

import torch


def run(model, x):
    return model(x) * next(model.parameters()).sum()


def take(items, n):
    return [next(items) for _ in range(n)]


def scale_grads(params, factor):
    for p in params:
        p.grad.mul_(factor)


def freeze(params):
    for p in params:
        p.requires_grad_(False)


def warn(message):
    warnings.warn(message, UnicodeWarning)
    return 1


def mapped(path):
    import numpy
    return numpy.memmap(path, dtype=numpy.uint8, mode="r")


def importable(name):
    import importlib
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def attempt(model, how):
    if how == "private":
        return model._secret
    if how == "dunder":
        return model.__dict__
    if how == "hook":
        return model.register_forward_hook(lambda *args: torch.zeros(1))
    if how == "load":
        return model.load_state_dict({"weight": torch.zeros(2)})
    if how == "write":
        model.calls = ["forged"]
    if how == "append":  # a copy of the list: the spec's stays as it was
        model.calls.append("forged")
        return None
    raise ValueError(how)
"""


@kept()
class Recorder(torch.nn.Module):
    """A spec object that records its calls: it stays in the grader's process."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        self.calls, self._secret = [], "secret"

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return x * self.weight


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("scratch")
    folder = scratch / "remote_impl"
    shutil.copytree(ROOT / "reference", folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "broken.py").write_text("import os\n\ndef crash():\n    os._exit(3)\n\n"
                                      "def spin():\n    while True:\n        pass\n\n"
                                      "class Custom(ValueError):\n    pass\n\n"
                                      "def fail():\n    raise Custom('a message')\n")
    (folder / "uses.py").write_text(SPEC_OBJECT_USES)
    impl = RemoteImplementation(str(folder), {"scratch": str(scratch), "hidden": [str(ROOT / "reference")]})
    yield impl
    impl.session.close()


def test_a_function_returns_plain_tensors_and_its_gradient_crosses_back(remote):
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    y = remote.layers.softmax(x, dim=-1)
    assert type(y) is torch.Tensor and torch.allclose(y, torch.softmax(x.detach(), -1))
    grad = torch.randn(3, 5, dtype=torch.float64)
    (got,) = torch.autograd.grad(y, x, grad)
    (expected,) = torch.autograd.grad(torch.softmax(x, -1), x, grad)
    assert torch.allclose(got, expected)
    assert torch.autograd.gradcheck(lambda t: remote.layers.log_softmax(t, dim=-1),
                                    (torch.randn(2, 4, dtype=torch.float64, requires_grad=True),))


def test_a_module_stays_in_the_worker_and_its_parameters_are_mirrored_both_ways(remote):
    torch.manual_seed(0)
    norm = remote.layers.RMSNorm(4)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(4.0))  # a write here reaches the worker
    x = torch.randn(2, 4)
    out = norm(x)
    assert torch.allclose(out, x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * torch.arange(4.0))
    out.sum().backward()  # the parameter's gradient accumulates here, in its mirror
    assert norm.weight.grad is not None and torch.allclose(
        norm.weight.grad, (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)).sum(0))
    (grad_weight,) = torch.autograd.grad(norm(x).sum(), norm.weight)
    assert torch.allclose(grad_weight, norm.weight.grad)
    assert sorted(dict(norm.named_parameters())) == ["weight"] and isinstance(norm, remote.layers.RMSNorm)
    assert not isinstance(torch.zeros(1), remote.layers.RMSNorm)


def test_the_random_state_travels_with_every_call(remote):
    torch.manual_seed(1)
    first = remote.layers.Linear(3, 2).weight.detach().clone()
    after_first = torch.rand(1)
    torch.manual_seed(1)
    second = remote.layers.Linear(3, 2).weight.detach().clone()
    assert torch.equal(first, second) and torch.equal(after_first, torch.rand(1))


def test_errors_come_back_as_the_nearest_builtin_with_their_message(remote):
    with pytest.raises(ValueError, match="a message"):
        remote.broken.fail()
    with pytest.raises(Missing, match="layers.nothing"):
        remote.layers.nothing  # noqa: B018


def test_a_worker_that_dies_fails_the_call_and_the_next_call_starts_a_fresh_one(remote):
    kept = remote.layers.RMSNorm(4)
    with pytest.raises(WorkerError, match="ended"):
        remote.broken.crash()
    with pytest.raises(WorkerError, match="worker that has ended"):
        kept(torch.ones(1, 4))
    assert torch.allclose(remote.layers.softmax(torch.zeros(2)), torch.full((2,), 0.5))


def test_a_call_that_does_not_return_is_stopped(remote, monkeypatch):
    monkeypatch.setattr("llmkata.remote.CALL_SECONDS", 3.0)
    with pytest.raises(WorkerError, match="did not answer within 3 s"):
        remote.broken.spin()
    assert remote.layers.softmax(torch.zeros(1)).item() == 1.0


def test_a_spec_object_stays_in_the_grader_and_records_what_the_submission_did(remote):
    model, x = Recorder(), torch.ones(3, 2)
    assert torch.equal(remote.uses.run(model, x), x * model.weight.detach() * 3)
    assert model.calls == [(3, 2)], "the call reached the spec's own object"
    read = []

    def lazily():
        for n in range(10):
            read.append(n)
            yield n

    assert remote.uses.take(lazily(), 3) == [0, 1, 2] and read == [0, 1, 2], "a generator is read only as consumed"


@pytest.mark.parametrize("how", ["private", "dunder", "hook", "load", "write", "append"])
def test_a_submission_can_only_call_and_read_the_spec_objects(remote, how):
    model = Recorder()
    before = model.weight.detach().clone()
    try:
        remote.uses.attempt(model, how)
    except (AttributeError, TypeError):
        pass
    assert model.calls == [] and torch.equal(model.weight.detach(), before) and not model._forward_hooks
    assert vars(model)["_secret"] == "secret"


def test_a_write_into_a_mirror_that_nothing_holds_any_more_still_reaches_the_worker(remote):
    norm = remote.layers.RMSNorm(3)
    with torch.no_grad():
        for p in norm.parameters():  # every item in one answer, each mirror dropped after its write
            p.fill_(2.0)
    assert torch.allclose(norm(torch.ones(1, 3)), torch.full((1, 3), 2.0), atol=1e-5)


def test_gradients_and_frozen_flags_of_spec_tensors_cross_both_ways(remote):
    params = [torch.nn.Parameter(torch.ones(2)) for _ in range(2)]
    for p in params:
        p.grad = torch.full((2,), 3.0)
    remote.uses.scale_grads(params, 0.5)
    assert all(torch.equal(p.grad, torch.full((2,), 1.5)) for p in params)
    remote.uses.freeze(params)
    assert not any(p.requires_grad for p in params)


def test_a_warning_of_the_submission_is_raised_again_in_the_grader(remote):
    with pytest.warns(UnicodeWarning, match="replaced 2 bytes"):
        assert remote.uses.warn("replaced 2 bytes") == 1


def test_a_memory_map_crosses_only_for_a_file_in_the_workers_folder(remote, tmp_path):
    inside = Path(remote.session.config["scratch"]) / "tokens.bin"
    inside.write_bytes(bytes(range(8)))
    tokens = remote.uses.mapped(str(inside))
    assert isinstance(tokens, np.memmap) and tokens.tolist() == list(range(8)) and not tokens.flags.writeable
    with pytest.raises(WorkerError, match="outside the worker's folder"):
        remote.uses.mapped("/etc/passwd")


def test_a_module_hidden_by_the_spec_is_hidden_in_the_worker_too(remote):
    import csv

    with pytest.raises(ValueError, match="inside"):
        with remote.without("csv"):
            assert remote.uses.importable("csv") is False and sys.modules["csv"] is None
            raise ValueError("a failure inside the block")
    assert remote.uses.importable("csv") is True and sys.modules["csv"] is csv, "both processes as they were"


@pytest.mark.parametrize("frame", [
    struct.pack("<Q", 3) + b"abc",  # too short for its own header
    struct.pack("<Q", 16) + struct.pack("<QQ", 2**40, 0),  # a header past its limit
    struct.pack("<Q", 20) + struct.pack("<QQ", 4, 0) + b"[1,]",  # not JSON
    struct.pack("<Q", 26) + struct.pack("<QQ", 2, 1) + b"{}" + struct.pack("<Q", 99),  # a buffer past the end
])
def test_a_malformed_answer_is_refused_not_trusted(frame):
    with pytest.raises((wire.WireError, EOFError)):
        wire.read_data(io.BytesIO(frame))


def test_a_worlds_results_cross_as_plain_data_and_nothing_else():
    value = {"loss": torch.tensor([1.5, 2.0], dtype=torch.bfloat16), ("rank", 1): [3, None, "x"], "dtype": torch.int64}
    buffers: list[bytes] = []
    node = json.loads(json.dumps(wire.encode_plain(value, buffers)))
    back = wire.decode_plain(node, buffers)
    assert back.keys() == value.keys() and torch.equal(back["loss"], value["loss"]) and back[("rank", 1)] == [3, None, "x"]
    with pytest.raises(TypeError, match="plain data"):
        wire.encode_plain(Missing("an object"), [])
    for forged in ({"obj": 1}, {"tensor": {"dtype": "os.system", "shape": [1], "data": 0}}, {"l": [1], "t": [2]}):
        with pytest.raises(wire.WireError):
            wire.decode_plain(forged, [b""])


def test_an_answer_holds_only_plain_data():
    out = io.BytesIO()
    wire.write_data(out, {"ok": {"t": [1, "a", None, {"b": 0}]}}, [b"\x00\x01"])
    header, buffers = wire.read_data(io.BytesIO(out.getvalue()))
    assert header == {"ok": {"t": [1, "a", None, {"b": 0}]}} and buffers == [b"\x00\x01"]


def _trusted_files() -> list[str]:
    from llmkata.grade import WHOLE_IN_SANDBOX
    return sorted(p.name for p in (ROOT / "spec").glob("test_*.py") if p.name not in WHOLE_IN_SANDBOX)


@pytest.mark.skipif(Sandbox.detect().bwrap is None, reason="the worker's sandbox needs bubblewrap")
def test_every_trusted_spec_file_passes_on_the_reference_through_the_worker(tmp_path):
    """Fairness: a correct implementation loses nothing by running in the worker (a few examples per property: the
    spec's power is checked in process; this checks that every property crosses the boundary). One spec process and
    one worker for all the files, as the grader runs them."""
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o777)
    (scratch / "tmp").mkdir(mode=0o777)  # the spec's temporary files, where the worker sees them (as when grading)
    folder = scratch / "trusted_impl"  # the worker sees only its scratch folder of /tmp
    shutil.copytree(ROOT / "reference", folder, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "LLMKATA_HYPOTHESIS_PROFILE": "smoke", "TMPDIR": str(scratch / "tmp"),
           "LLMKATA_REMOTE": json.dumps({"scratch": str(scratch), "hidden": [str(ROOT / "reference")]})}
    run = subprocess.run([sys.executable, "-m", "pytest", *(str(ROOT / "spec" / name) for name in _trusted_files()),
                          "--impl", str(folder), "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                          "--basetemp", str(scratch / "pytest")], capture_output=True, text=True, cwd=ROOT, env=env)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
