"""The pytest plugin that an installed llmkata registers (entry point `pytest11`), so that the spec runs from a wheel:

    pytest --pyargs llmkata.spec --impl ./my_impl
    pytest --pyargs llmkata.spec.test_layers --impl ./my_impl -x

pytest parses the command line before it finds the spec's conftest.py inside the installed package, so `--impl`
must be known earlier: this plugin adds it. The conftest itself (the implementation fixture, the one-sentence stub
reports) is loaded by pytest as it collects the spec's folder, as it is when the spec runs from a clone
(`pytest spec`). The plugin imports nothing heavy: every pytest run in an environment with llmkata loads it.
"""

IMPL_HELP = ("implementation under test: reference (default), exercises, a folder or a module name; "
             "also $LLMKATA_IMPL")


def add_impl_option(parser) -> None:
    """`--impl`, once: the plugin, spec/conftest.py and benchmarks/conftest.py each ask for it."""
    try:
        parser.addoption("--impl", default=None, help=IMPL_HELP)
    except ValueError:  # added already
        pass


def pytest_addoption(parser):
    add_impl_option(parser)


def pytest_report_header(config):
    """Name the implementation when the spec's conftest.py was not there to do it (a run by --pyargs)."""
    if hasattr(config, "llmkata_impl"):
        return None
    import os

    choice = config.getoption("--impl", default=None) or os.environ.get("LLMKATA_IMPL")
    if choice is None and not any("llmkata" in str(arg) for arg in config.args):
        return None  # not a run of the spec
    return [f"llmkata: implementation under test: {choice or 'reference'}"]
