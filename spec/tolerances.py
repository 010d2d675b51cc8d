"""Tolerances by dtype, defined once, and the comparison every spec test uses.

Numerics are checked against a float64 computation of the definition; the tolerance is that of the dtype under
test (float32 keeps about 7 significant digits, bfloat16 about 3).
"""

import torch

# Bound when the spec is imported, before any implementation is: an implementation that replaces
# torch.testing.assert_close afterwards does not change what the spec compares with.
_torch_assert_close = torch.testing.assert_close
PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)  # results are exactly these: a subclass could redefine comparisons

# dtype -> (rtol, atol)
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-3, 1e-4),
    torch.bfloat16: (1.6e-2, 1e-3),
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) of `dtype`.  Example: tolerance(torch.float32) -> (1e-05, 1e-06)"""
    return TOLERANCES[dtype]


def _assert_plain_tensor(actual, what: str) -> None:
    __tracebackhide__ = True
    assert isinstance(actual, torch.Tensor), f"{what}: expected a tensor, got {type(actual).__name__}"
    assert type(actual) in PLAIN_TENSORS, (
        f"{what}: expected a plain torch.Tensor, got the subclass {type(actual).__qualname__}")


def assert_close(actual, expected, what: str, dtype: torch.dtype | None = None, scale: float = 1.0) -> None:
    """Assert `actual` equals `expected` within the tolerance of `dtype` (default: actual's), times `scale`.

    `what` is the rule, in words, that a mismatch breaks; it leads the failure message.
    """
    __tracebackhide__ = True
    _assert_plain_tensor(actual, what)
    rtol, atol = tolerance(dtype or actual.dtype)
    expected = torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    try:
        _torch_assert_close(
            actual.detach().to(torch.float64), expected.detach().to(torch.float64),
            rtol=rtol * scale, atol=atol * scale, msg=lambda detail: f"{what}\n{detail}",
        )
    except AssertionError as mismatch:  # raised again from here, so that the report ends at the property
        raise AssertionError(str(mismatch)) from None


def assert_close_to_the_terms(actual, expected, terms, what: str) -> None:
    """|actual − expected| ≤ rtol·terms + atol elementwise, with the tolerance of actual's dtype; `terms` is the size
    of what the result was computed from: the definition evaluated on the absolute values of its terms, such as
    |x|·|W|ᵀ + |b| for x Wᵀ + b.

    A number rounded to bfloat16 keeps 8 bits of itself; a sum of rounded numbers keeps 8 bits of its terms, not of
    its value, which may cancel to 0. Half precision is held to its tolerance of the terms, not of the result.
    """
    __tracebackhide__ = True
    _assert_plain_tensor(actual, what)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    rtol, atol = tolerance(actual.dtype)
    error = (actual.detach().double() - expected.detach().double()).abs()
    allowed = rtol * terms.detach().double() + atol
    wrong = ~(error <= allowed)  # NaN counts as wrong
    if wrong.any():
        at = tuple(int(i) for i in wrong.nonzero()[0])
        raise AssertionError(
            f"{what}\n{int(wrong.sum())} of {wrong.numel()} elements differ by more than {rtol}·|terms| + {atol}; "
            f"first at index {at}: got {actual[at].item()}, expected {expected[at].item()} (terms of size "
            f"{terms[at].item():.4g})")
