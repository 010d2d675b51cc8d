"""Assertions the chapters share beyond `tolerances.assert_close`."""

import torch


def _name(error) -> str:
    return " or ".join(e.__name__ for e in error) if isinstance(error, tuple) else error.__name__


def assert_rejects(call, *fragments, what: str, error=ValueError) -> None:
    """`call()` must raise `error` (ValueError by default) whose message contains each of `fragments`.

    A generator returned by `call` is run to its end, so that lazy code gets to see its input. A stub's
    NotImplementedError passes through untouched: the spec reports it as "not implemented yet".
    """
    expected = f"{_name(error)} naming {list(fragments)}" if fragments else _name(error)
    try:
        result = call()
        if hasattr(result, "__next__"):
            for _ in result:
                pass
    except NotImplementedError:
        raise
    except error as raised:
        missing = [f for f in fragments if str(f) not in str(raised)]
        assert not missing, f"{what}: the error must name {missing}; it says: {raised}"
    except Exception as raised:
        raise AssertionError(f"{what}: expected a {expected}, got {type(raised).__name__}: {raised}") from None
    else:
        raise AssertionError(f"{what}: expected a {expected}, but nothing was raised")


def grads_of(output: torch.Tensor, inputs, grad_output: torch.Tensor) -> list[torch.Tensor]:
    """d⟨output, grad_output⟩ / d input for each of `inputs` (zeros where the output does not depend on it)."""
    try:
        return list(torch.autograd.grad(output, inputs, grad_output, allow_unused=True, materialize_grads=True))
    except RuntimeError as error:  # e.g. an output computed without autograd (detached, or under no_grad)
        raise AssertionError(f"gradients could not be computed: {error}") from None
