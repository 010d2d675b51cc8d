"""Benchmarks run against any implementation, like the spec:

    pytest benchmarks                      # the reference
    pytest benchmarks --impl exercises     # or a folder, or a module; also $LLMKATA_IMPL
    llmkata bench --impl ./my_impl

Each benchmark checks its result before it times anything, and reports its speed as a ratio to a baseline
measured in the same run (`benchmark.extra_info`), never as an absolute threshold.
"""

import pytest
import torch

from llmkata.spec.impl import load


def pytest_addoption(parser):
    try:
        parser.addoption("--impl", default=None, help="implementation to benchmark (default: reference)")
    except ValueError:  # spec/conftest.py added it already
        pass


def pytest_configure(config):
    if not hasattr(config, "llmkata_impl"):
        try:
            config.llmkata_impl = load(config.getoption("--impl"))
        except ValueError as error:
            raise pytest.UsageError(str(error)) from None


def pytest_report_header(config):
    return [f"llmkata bench: implementation: {config.llmkata_impl.name}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, cuda: {torch.cuda.is_available()}"]


@pytest.fixture(scope="session")
def impl(request):
    return request.config.llmkata_impl
