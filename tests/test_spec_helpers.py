"""The spec's own helpers do what they say: comparisons by dtype, rejection checks, gradients, strategies, and the
one-sentence report of a stub."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llmkata.spec.checks import assert_rejects, grads_of, mentions
from llmkata.spec.strategies import float_dtypes, seeds, shapes, tensors, token_batches, unicode_text
from llmkata.spec.tolerances import TOLERANCES, assert_close, assert_close_to_the_terms

ROOT = Path(__file__).resolve().parents[1]


def hidden_frames(error: BaseException) -> list[bool]:
    """For each frame of `error`'s traceback below the caller: whether it hides itself from pytest's report."""
    frames, tb = [], error.__traceback__.tb_next  # the first frame is the test that called the helper
    while tb is not None:
        frames.append(bool(tb.tb_frame.f_locals.get("__tracebackhide__")))
        tb = tb.tb_next
    return frames


# ------------------------------------------------------------------------------------------------ assert_close


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
def test_assert_close_passes_within_the_tolerance_of_the_dtype_and_fails_outside(dtype):
    rtol, atol = TOLERANCES[dtype]
    expected = torch.linspace(-4, 4, 9, dtype=torch.float64)
    within = expected + 0.5 * (atol + rtol * expected.abs())
    outside = expected + 4 * (atol + rtol * expected.abs())
    assert_close(within, expected, "within", dtype=dtype)
    with pytest.raises(AssertionError, match=r"^softmax rows must sum to one\n") as failure:
        assert_close(outside, expected, "softmax rows must sum to one", dtype=dtype)
    assert "Mismatched elements" in str(failure.value), "the detail says where the numbers differ"
    assert hidden_frames(failure.value) == [True], "the report ends at the property, not inside the helper"


def test_assert_close_takes_the_tolerance_of_the_actual_dtype_unless_told():
    expected = torch.ones(3, dtype=torch.float64)
    assert_close((expected + 1e-7).float(), expected, "float32 allows 1e-7")
    with pytest.raises(AssertionError, match="float64 does not"):
        assert_close(expected + 1e-7, expected, "float64 does not")
    assert_close(expected + 1e-7, expected, "unless told", dtype=torch.float32)
    assert_close(expected + 1e-9, expected, "scaled", scale=1e3)


def test_assert_close_to_the_terms_allows_the_rounding_of_the_terms_not_of_the_result():
    rtol, atol = TOLERANCES[torch.bfloat16]
    expected = torch.tensor([0.0, 1.0], dtype=torch.float64)  # a sum that cancels to 0, and a plain 1
    terms = torch.tensor([100.0, 1.0], dtype=torch.float64)
    near = (expected + torch.tensor([0.9 * (rtol * 100 + atol), 0.0])).to(torch.bfloat16)
    assert_close_to_the_terms(near, expected, terms, "within the rounding of terms of size 100")
    far = (expected + torch.tensor([0.0, 2 * (rtol + atol)])).to(torch.bfloat16)
    with pytest.raises(AssertionError, match="the rule") as raised:
        assert_close_to_the_terms(far, expected, terms, "the rule")
    assert "index (1,)" in str(raised.value), "the message must point at the first element out of bounds"
    with pytest.raises(AssertionError, match="shape"):
        assert_close_to_the_terms(near[:1], expected, terms, "a shape")
    nan = torch.tensor([float("nan"), 1.0], dtype=torch.bfloat16)
    with pytest.raises(AssertionError):
        assert_close_to_the_terms(nan, expected, terms, "NaN is never close")
    assert all(hidden_frames(raised.value)), "the helper must hide its own frames from the report"


def test_assert_close_names_the_rule_for_a_wrong_shape_or_type():
    with pytest.raises(AssertionError, match=r"^the rule: shape \(2, 3\), expected \(3, 2\)") as failure:
        assert_close(torch.zeros(2, 3), torch.zeros(3, 2), "the rule")
    assert all(hidden_frames(failure.value))
    with pytest.raises(AssertionError, match="^the rule: expected a tensor, got list"):
        assert_close([0.0], torch.zeros(1), "the rule")


class AlwaysEqual(torch.Tensor):
    """A result that claims to equal anything: every torch function applied to it returns the expected value."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return torch.zeros(()) if func is torch.Tensor.__sub__ else super().__torch_function__(func, types, args,
                                                                                              kwargs or {})


def test_a_tensor_subclass_is_refused_whatever_its_comparisons_say(monkeypatch):
    forged = torch.zeros(3).as_subclass(AlwaysEqual)
    for check in (lambda: assert_close(forged, torch.ones(3), "the rule"),
                  lambda: assert_close_to_the_terms(forged, torch.ones(3), torch.ones(3), "the rule")):
        with pytest.raises(AssertionError, match="^the rule: expected a plain torch.Tensor, got the subclass"):
            check()
    assert_close(torch.nn.Parameter(torch.ones(3)), torch.ones(3), "a parameter is a plain tensor here")
    # A comparator replaced after the spec was imported changes nothing.
    monkeypatch.setattr(torch.testing, "assert_close", lambda *args, **kwargs: None)
    with pytest.raises(AssertionError, match="the rule"):
        assert_close(torch.zeros(3), torch.ones(3), "the rule")


# ---------------------------------------------------------------------------------------------- assert_rejects


def test_assert_rejects_passes_when_the_error_names_every_fragment():
    def bad():
        raise ValueError("n_heads=4 must divide d_model=10, got -2 at /tmp/run-3/x")

    assert_rejects(bad, 4, 10, -2, "n_heads", what="a bad config")
    assert_rejects(bad, "n_heads=4", what="a fragment of text is found anywhere")


def test_assert_rejects_fails_when_nothing_is_raised():
    with pytest.raises(AssertionError, match=r"^a bad config: expected a ValueError naming \[3\], but") as failure:
        assert_rejects(lambda: None, 3, what="a bad config")
    assert all(hidden_frames(failure.value))


def test_assert_rejects_fails_on_the_wrong_error_type():
    def bad():
        raise TypeError("wrong kind")

    with pytest.raises(AssertionError, match="expected a ValueError, got TypeError: wrong kind"):
        assert_rejects(bad, what="a bad config")
    assert_rejects(bad, "kind", what="the type asked for", error=(ValueError, TypeError))


def test_assert_rejects_fails_when_a_fragment_is_missing():
    def bad():
        raise ValueError("d_model must be positive")

    with pytest.raises(AssertionError, match=r"a bad config: the error must name \['got'\]; it says: d_model"):
        assert_rejects(bad, "d_model", "got", what="a bad config")


@pytest.mark.parametrize("message", [
    "cannot read /tmp/pytest-of-root/pytest-0/test_x0/data.bin",
    "cannot read C:\\Temp\\0\\data.bin",
    "got 10",
    "got 3.0",
    "got -0",
    "layer0 is broken",
])
def test_a_number_is_not_found_inside_a_path_a_longer_number_or_a_word(message):
    def bad():
        raise ValueError(message)

    with pytest.raises(AssertionError, match="the error must name"):
        assert_rejects(bad, 0, what="the number 0")


@pytest.mark.parametrize("message, fragment, found", [
    ("got 0", 0, True),
    ("got 0.", 0, True),
    ("must be >= 1, got 0 (a block of nothing)", 0, True),
    ("positions [-1, 0]", -1, True),
    ("positions [-1, 0]", 1, False),
    ("head_dim 3.5 is not whole", 3.5, True),
    ("head_dim 3.5 is not whole", 3, False),
    ("rate 1e-5", "1e-5", True),
    ("shape (2, 5)", "(2, 5)", True),
    ("float32 and float64", "float32", True),
    ("see /data/2.txt: not UTF-8", "2.txt", True),
])
def test_mentions_finds_numbers_only_as_whole_tokens(message, fragment, found):
    assert mentions(message, fragment) is found


def test_assert_rejects_runs_a_generator_to_its_end_and_lets_a_stub_through():
    def lazy():
        yield 1
        raise ValueError("line 2 is broken")

    assert_rejects(lazy, 2, what="a lazy reader")
    with pytest.raises(NotImplementedError):
        assert_rejects(lambda: (_ for _ in ()).throw(NotImplementedError("stub")), what="a stub")


# ---------------------------------------------------------------------------------------------------- grads_of


def test_grads_of_gives_zeros_for_inputs_the_output_does_not_use():
    x = torch.randn(3, requires_grad=True)
    unused = torch.randn(2, 2, requires_grad=True)
    grad_x, grad_unused = grads_of(x * 2, (x, unused), torch.ones(3))
    assert torch.equal(grad_x, torch.full((3,), 2.0))
    assert torch.equal(grad_unused, torch.zeros(2, 2)), "an input the output ignores has gradient zero"


def test_grads_of_fails_with_a_sentence_when_there_is_no_graph():
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(AssertionError, match="^gradients could not be computed") as failure:
        grads_of(x.detach() * 2, (x,), torch.ones(3))
    assert all(hidden_frames(failure.value))


# -------------------------------------------------------------------------------------------------- strategies


@given(st.data())
def test_shapes_are_within_their_bounds(data):
    min_dims = data.draw(st.integers(0, 3))
    max_dims = data.draw(st.integers(min_dims, 5))
    min_side = data.draw(st.integers(0, 4))
    max_side = data.draw(st.integers(min_side, 9))
    shape = data.draw(shapes(min_dims, max_dims, min_side, max_side))
    assert isinstance(shape, tuple) and min_dims <= len(shape) <= max_dims, shape
    assert all(isinstance(side, int) and min_side <= side <= max_side for side in shape), shape


@given(st.data(), st.sampled_from(list(TOLERANCES)))
def test_tensors_have_the_dtype_and_shape_asked_for(data, dtype):
    shape = data.draw(shapes(min_dims=0, max_dims=3, max_side=4))
    x = data.draw(tensors(shape=shape, dtype=dtype, scale=3.0))
    assert x.dtype == dtype and x.shape == shape, (x.dtype, x.shape)
    assert torch.isfinite(x).all()
    drawn = data.draw(tensors(dtype=dtype, min_dims=2, max_dims=2, max_side=3))
    assert drawn.dtype == dtype and drawn.dim() == 2 and max(drawn.shape) <= 3, drawn.shape


@given(st.data(), st.integers(1, 40), st.one_of(st.integers(1, 6), st.just(st.integers(1, 6))))
def test_token_batches_count_at_least_one_target(data, vocab, length):
    batches = data.draw(token_batches(vocab=vocab, length=length, ignore_rates=(0.0, 0.9, 1.0)))
    assert 1 <= len(batches) <= 4, len(batches)
    lengths = {x.shape[1] for x, _ in batches}
    assert len(lengths) == 1, f"every batch has the same length, got {lengths}"
    if isinstance(length, int):
        assert lengths == {length}
    for x, y in batches:
        assert x.shape == y.shape and 1 <= x.shape[0] <= 3 and x.dtype == y.dtype == torch.long, (x.shape, y.shape)
        assert ((x >= 0) & (x < vocab)).all(), "token ids are below the vocabulary size"
        assert (((y >= 0) & (y < vocab)) | (y == -100)).all(), "targets are ids or ignored (-100)"
    assert sum(int((y != -100).sum()) for _, y in batches) >= 1, "at least one target counts"


@given(unicode_text)
def test_unicode_text_encodes_as_utf8(text):
    assert len(text) <= 200
    assert text.encode("utf-8").decode("utf-8") == text


@given(float_dtypes, seeds)
def test_float_dtypes_and_seeds(dtype, seed):
    assert dtype in (torch.float32, torch.float64)
    assert 0 <= seed < 2**32
    torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------- a stub is one sentence


@pytest.mark.parametrize("profile", ["dev", "ci", "grade"])
def test_a_stub_failure_reports_one_sentence_and_no_hypothesis_seed(profile):
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "spec/test_layers.py", "--impl", "exercises", "-p", "no:randomly", "-q",
         "-k", "softmax_equals_its_definition_along_any_dim or linear_equals"],
        cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "COLUMNS": "300", "LLMKATA_HYPOTHESIS_PROFILE": profile})
    out = run.stdout
    report = out.split("= FAILURES =")[-1].split("short test summary")[0]
    assert run.returncode == 1 and report.count("is not implemented yet") == 2, out[-3000:]
    for noise in ("@seed(", "--hypothesis-seed", "reproduce_failure", "Hypothesis ---", "Falsifying", "Traceback"):
        assert noise not in report, f"the report of a stub must be its sentence alone, not {noise!r}:\n{report}"
    sentences = [line for line in report.splitlines() if line.strip() and not line.startswith(("_", "="))]
    assert all(line.startswith("`layers.") for line in sentences), report
