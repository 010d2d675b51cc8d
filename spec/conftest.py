"""Selects the implementation under test and turns 'not implemented yet' into one sentence per test.

    pytest spec                          # the reference
    pytest spec --impl exercises         # the learner's stubs
    pytest spec --impl path/to/folder    # any folder, imported under its own name
    LLMKATA_IMPL=my_package pytest spec  # any importable package
"""

import functools
import os

import pytest
import torch

from llmkata.spec.impl import Implementation, Missing, load

from . import profiles

PROFILE = profiles.load()
# The spec's tensors are small: one thread is faster than OpenMP workers spinning for a busy core.
torch.set_num_threads(1)


def pytest_addoption(parser):
    try:
        parser.addoption("--impl", default=None,
                         help="implementation under test: reference (default), exercises, a folder or a module "
                              "name; also $LLMKATA_IMPL")
    except ValueError:  # benchmarks/conftest.py added it already
        pass


def pytest_configure(config):
    if hasattr(config, "llmkata_impl"):
        return
    if os.environ.get("LLMKATA_REMOTE"):  # grading: the implementation runs in a sandboxed worker (llmkata.remote)
        from llmkata.remote import RemoteImplementation

        config.llmkata_impl = RemoteImplementation.from_environment(config.getoption("--impl"))
        config.add_cleanup(config.llmkata_impl.session.close)
        return
    try:
        config.llmkata_impl = load(config.getoption("--impl"))
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    record = os.environ.get("LLMKATA_RECORD_CALLS")
    if record:  # opt in: record which parameters and dtypes the spec passes (spec/coverage.py)
        from llmkata.spec.coverage import RecordingImplementation

        config.llmkata_impl = recording = RecordingImplementation.of(config.llmkata_impl)
        config.add_cleanup(lambda: recording.write(record))


def pytest_report_header(config):
    impl: Implementation = config.llmkata_impl
    return [f"llmkata: implementation under test: {impl.name} ({impl.location}); hypothesis profile: {PROFILE}"]


@pytest.fixture(scope="session")
def impl(request) -> Implementation:
    """The implementation under test: `impl.layers.softmax(x)`."""
    return request.config.llmkata_impl


class StubReached(BaseException):
    """Raised through hypothesis (which only shrinks Exceptions) when a stub or missing name is hit: a stub fails
    the same way for every input, so shrinking it would only cost time."""


def _stop_at_first_stub(inner_test):
    @functools.wraps(inner_test)
    def wrapper(*args, **kwargs):
        try:
            return inner_test(*args, **kwargs)
        except (NotImplementedError, Missing) as error:
            raise StubReached(str(error)) from error

    wrapper.stops_at_stub = True
    return wrapper


def pytest_collection_modifyitems(items):
    for item in items:
        handle = getattr(getattr(item, "obj", None), "hypothesis", None)
        if handle is not None and not getattr(handle.inner_test, "stops_at_stub", False):
            handle.inner_test = _stop_at_first_stub(handle.inner_test)


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: it sees the report once hypothesis has added to it
def pytest_runtest_makereport(item, call):
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance((NotImplementedError, Missing, StubReached)):
        # A stub or a missing name: the sentence says everything; a traceback into the stub adds nothing, and
        # neither does hypothesis's seed to reproduce it (a stub fails the same way for every input).
        report.longrepr = str(call.excinfo.value).splitlines()[0] or "not implemented yet"
        report.sections = [(title, text) for title, text in report.sections if title != "Hypothesis"]
    return report
