"""Remote grading: the spec in this process, the implementation in a sandboxed worker that returns plain data."""

import io
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmkata import wire
from llmkata.remote import RemoteImplementation, WorkerError
from llmkata.sandbox import Sandbox
from llmkata.spec.impl import Missing

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("scratch")
    folder = scratch / "remote_impl"
    shutil.copytree(ROOT / "reference", folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "broken.py").write_text("import os\n\ndef crash():\n    os._exit(3)\n\n"
                                      "def spin():\n    while True:\n        pass\n\n"
                                      "class Custom(ValueError):\n    pass\n\n"
                                      "def fail():\n    raise Custom('a message')\n")
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


@pytest.mark.parametrize("frame", [
    struct.pack("<Q", 3) + b"abc",  # too short for its own header
    struct.pack("<Q", 16) + struct.pack("<QQ", 2**40, 0),  # a header past its limit
    struct.pack("<Q", 20) + struct.pack("<QQ", 4, 0) + b"[1,]",  # not JSON
    struct.pack("<Q", 26) + struct.pack("<QQ", 2, 1) + b"{}" + struct.pack("<Q", 99),  # a buffer past the end
])
def test_a_malformed_answer_is_refused_not_trusted(frame):
    with pytest.raises((wire.WireError, EOFError)):
        wire.read_data(io.BytesIO(frame))


def test_an_answer_holds_only_plain_data():
    out = io.BytesIO()
    wire.write_data(out, {"ok": {"t": [1, "a", None, {"b": 0}]}}, [b"\x00\x01"])
    header, buffers = wire.read_data(io.BytesIO(out.getvalue()))
    assert header == {"ok": {"t": [1, "a", None, {"b": 0}]}} and buffers == [b"\x00\x01"]


@pytest.mark.skipif(Sandbox.detect().bwrap is None, reason="the worker's sandbox needs bubblewrap")
def test_the_trusted_chapters_pass_on_the_reference_through_the_worker(tmp_path):
    """Fairness: a correct implementation loses nothing by running in the worker (ci profile, as in CI)."""
    from llmkata.grade import TRUSTED_FILES

    (tmp_path / "scratch").mkdir(mode=0o777)
    folder = tmp_path / "scratch" / "trusted_impl"  # the worker sees only its scratch folder of /tmp
    shutil.copytree(ROOT / "reference", folder, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "LLMKATA_HYPOTHESIS_PROFILE": "ci",
           "LLMKATA_REMOTE": json.dumps({"scratch": str(tmp_path / "scratch"), "hidden": [str(ROOT / "reference")]})}
    run = subprocess.run([sys.executable, "-m", "pytest", *(str(ROOT / "spec" / name) for name in TRUSTED_FILES),
                          "--impl", str(folder), "-q", "-x", "-p", "no:randomly", "-p", "no:cacheprovider",
                          "--basetemp", str(tmp_path / "scratch" / "pytest")],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
