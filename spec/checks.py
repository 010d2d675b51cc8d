"""Assertions the chapters share beyond `tolerances.assert_close`."""

import re

import torch

# A number in a message stands alone: "got 0" names 0; "/tmp/pytest-0/x" or "10.5" do not.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_NUMBER_BEFORE = r"(?<![\w.\-/\\])"
_NUMBER_AFTER = r"(?![\w/\\]|\.\d)"


def _name(error) -> str:
    return " or ".join(e.__name__ for e in error) if isinstance(error, tuple) else error.__name__


def mentions(message: str, fragment) -> bool:
    """Whether `message` contains `fragment` (any value, as `str` writes it); a number only as a whole token, not
    as part of a longer number, a word or a path.

    Example: mentions("n_heads must divide 10, got 4", 4) -> True; mentions("no file /tmp/run-4/x", 4) -> False
    """
    text = str(fragment)
    if not _NUMBER.fullmatch(text):
        return text in message
    return re.search(_NUMBER_BEFORE + re.escape(text) + _NUMBER_AFTER, message) is not None


def assert_rejects(call, *fragments, what: str, error=ValueError) -> None:
    """`call()` must raise `error` (ValueError by default) whose message contains each of `fragments`; a number
    must stand there whole (`0` is not found in "/tmp/pytest-0/file" nor in "10").

    A generator returned by `call` is run to its end, so that lazy code gets to see its input. A stub's
    NotImplementedError passes through untouched: the spec reports it as "not implemented yet".
    """
    __tracebackhide__ = True
    expected = f"{_name(error)} naming {list(fragments)}" if fragments else _name(error)
    try:
        result = call()
        if hasattr(result, "__next__"):
            for _ in result:
                pass
    except NotImplementedError:
        raise
    except error as raised:
        missing = [f for f in fragments if not mentions(str(raised), f)]
        assert not missing, f"{what}: the error must name {missing}; it says: {raised}"
    except Exception as raised:
        raise AssertionError(f"{what}: expected a {expected}, got {type(raised).__name__}: {raised}") from None
    else:
        raise AssertionError(f"{what}: expected a {expected}, but nothing was raised")


def grads_of(output: torch.Tensor, inputs, grad_output: torch.Tensor) -> list[torch.Tensor]:
    """d⟨output, grad_output⟩ / d input for each of `inputs` (zeros where the output does not depend on it)."""
    __tracebackhide__ = True
    try:
        return list(torch.autograd.grad(output, inputs, grad_output, allow_unused=True, materialize_grads=True))
    except RuntimeError as error:  # e.g. an output computed without autograd (detached, or under no_grad)
        raise AssertionError(f"gradients could not be computed: {error}") from None
