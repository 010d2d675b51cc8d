"""Benchmarks run against any implementation, like the spec:

    pytest benchmarks                      # the reference
    pytest benchmarks --impl exercises     # or a folder, or a module; also $LLMKATA_IMPL
    llmkata bench --impl ./my_impl

Each benchmark checks its result before it times anything, and reports its speed as a ratio to a baseline
measured in the same run (`benchmark.extra_info`), never as an absolute threshold.
"""

import os
import sys

import pytest
import torch

from llmkata.spec.impl import load


def pytest_addoption(parser):
    try:
        parser.addoption("--impl", default=None, help="implementation to benchmark (default: reference)")
    except ValueError:  # spec/conftest.py added it already
        pass


_CONFIG = None  # pytest_runtest_logfinish is not given the config


def pytest_configure(config):
    global _CONFIG
    _CONFIG = config
    if not hasattr(config, "llmkata_impl"):
        try:
            config.llmkata_impl = load(config.getoption("--impl"))
        except ValueError as error:
            raise pytest.UsageError(str(error)) from None


def pytest_collection_finish(session):
    """`llmkata bench` (LLMKATA_BENCH_PROGRESS=1): a progress bar on stderr over the benchmarks collected."""
    if os.environ.get("LLMKATA_BENCH_PROGRESS") == "1" and session.items:
        from tqdm import tqdm

        session.config.llmkata_progress = tqdm(total=len(session.items), desc="llmkata bench", unit="benchmark",
                                               file=sys.stderr, leave=True, dynamic_ncols=True)


def pytest_runtest_logfinish(nodeid, location):
    progress = getattr(_CONFIG, "llmkata_progress", None) if _CONFIG else None
    if progress is not None:
        progress.set_postfix_str(nodeid.rsplit("::", 1)[-1][-60:], refresh=False)
        progress.update(1)


def pytest_unconfigure(config):
    progress = getattr(config, "llmkata_progress", None)
    if progress is not None:
        progress.close()


def pytest_report_header(config):
    return [f"llmkata bench: implementation: {config.llmkata_impl.name}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, cuda: {torch.cuda.is_available()}"]


@pytest.fixture(scope="session")
def impl(request):
    return request.config.llmkata_impl
