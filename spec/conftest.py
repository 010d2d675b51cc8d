"""Selects the implementation under test and turns 'not implemented yet' into one sentence per test.

    pytest spec                          # the reference
    pytest spec --impl exercises         # the learner's stubs
    pytest spec --impl path/to/folder    # any folder, imported under its own name
    LLMKATA_IMPL=my_package pytest spec  # any importable package
"""

import pytest

from llmkata.impl import Implementation, Missing, load

from . import profiles

PROFILE = profiles.load()


def pytest_addoption(parser):
    parser.addoption("--impl", default=None,
                     help="implementation under test: reference (default), exercises, a folder or a module name; "
                          "also $LLMKATA_IMPL")


def pytest_configure(config):
    try:
        config.llmkata_impl = load(config.getoption("--impl"))
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None


def pytest_report_header(config):
    impl: Implementation = config.llmkata_impl
    return [f"llmkata: implementation under test: {impl.name} ({impl.location}); hypothesis profile: {PROFILE}"]


@pytest.fixture(scope="session")
def impl(request) -> Implementation:
    """The implementation under test: `impl.layers.softmax(x)`."""
    return request.config.llmkata_impl


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance((NotImplementedError, Missing)):
        # A stub or a missing name: the sentence says everything; a traceback into the stub adds nothing.
        report.longrepr = str(call.excinfo.value).splitlines()[0] or "not implemented yet"
    return report
