"""A plain `pip install llmkata` ships the spec, the reference, the exercises and the benchmarks inside the package."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory) -> set[str]:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", "-w",
                            str(out), str(ROOT)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = out.glob("llmkata-*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


@pytest.mark.parametrize("folder, package", [("spec", "llmkata/spec"), ("reference", "llmkata/reference"),
                                             ("exercises", "llmkata/exercises"), ("benchmarks", "llmkata/benchmarks"),
                                             ("grader", "llmkata")])
def test_every_module_of_the_repository_is_in_the_wheel(wheel_files, folder, package):
    expected = {f"{package}/{path.name}" for path in (ROOT / folder).glob("*.py")}
    assert expected <= wheel_files, f"missing from the wheel: {sorted(expected - wheel_files)}"
