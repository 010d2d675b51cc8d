"""The implementation under test exposes the contract (`contract.py`): every name, with its signature.

One test per name, so a missing function fails alone and says which chapter it belongs to.
"""

import inspect

import pytest
import torch

from .contract import CHAPTERS, Class, Function

NAMES = [(chapter, name, entry) for chapter in CHAPTERS for name, entry in chapter.names.items()]


def plain_signature(obj) -> str:
    """The signature without annotations.  Example: softmax -> '(x, dim=-1)'"""
    signature = inspect.signature(obj)
    parameters = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty))


def method_signature(cls, method: str) -> str:
    """The method's signature as a caller sees it: without self (or cls, for a classmethod)."""
    static = inspect.getattr_static(cls, method, None)
    assert static is not None, f"{cls.__name__} must define the method {method}"
    if isinstance(static, staticmethod):
        return plain_signature(static.__func__)
    return plain_signature(getattr(cls, method) if isinstance(static, classmethod) else static.__get__(object()))


@pytest.mark.parametrize("chapter, name, entry", NAMES, ids=[f"{c.module}.{n}" for c, n, _ in NAMES])
def test_signature_matches_the_contract(impl, chapter, name, entry):
    obj = getattr(getattr(impl, chapter.module), name)
    where = f"`{chapter.module}.{name}` ({chapter.where(name)})"
    if isinstance(entry, Function):
        assert callable(obj) and not inspect.isclass(obj), f"{where} must be a function"
        assert plain_signature(obj) == entry.signature, (
            f"{where} must have the signature {entry.signature}, not {plain_signature(obj)}")
        return
    assert isinstance(entry, Class)
    assert inspect.isclass(obj), f"{where} must be a class"
    assert plain_signature(obj) == entry.init, f"{where}'s constructor must take {entry.init}, not {plain_signature(obj)}"
    for method, signature in entry.methods.items():
        actual = method_signature(obj, method)
        assert actual == signature, f"{where}.{method} must have the signature {signature}, not {actual}"
    if entry.example is not None:
        torch.manual_seed(0)
        keys = tuple(obj(**entry.example).state_dict())
        assert sorted(keys) == sorted(entry.state_dict), (
            f"{where}({entry.example}) must have the parameters {sorted(entry.state_dict)} "
            f"(Hugging Face names), not {sorted(keys)}")
