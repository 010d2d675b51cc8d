"""The reference's flash-attention kernels build for a Hopper GPU on this CPU-only machine (Triton compiles ahead
of time for a named target, through the ptxas it ships), at the tiles the GPU path launches them with, within the
shared memory of one block: what Triton's interpreter, which runs the spec's flash properties here, cannot check.

Each build runs in a child process without TRITON_INTERPRET (this process may have set it for the spec) and with
a Triton cache of its own, so that every kernel is compiled anew."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def flash_compile(tmp_path, *args: str, patch: str = "") -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path / "triton-cache"), PYTHONWARNINGS="ignore")
    code = (f"import sys\n{patch}\nfrom llmkata.benchmarks import flash_compile\n"
            "sys.exit(flash_compile.main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=600,
                          check=False)


@pytest.mark.parametrize("args", [
    # the benchmark's target (head dim 128, bfloat16, causal, and full): tensor-core dots
    ("--head-dims", "128", "--dtypes", "bfloat16", "--causal", "both"),
    # float32: the dots in full precision ("ieee"), narrower tiles
    ("--head-dims", "32", "--dtypes", "float32", "--causal", "yes"),
])
def test_every_flash_kernel_builds_for_hopper_within_its_shared_memory(tmp_path, args):
    done = flash_compile(tmp_path, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith(("ok", "FAIL"))]
    cases = len(args[args.index("--head-dims") + 1: args.index("--dtypes")]) * (2 if "both" in args else 1)
    assert len(rows) == 4 * cases and all(row.startswith("ok") for row in rows), done.stdout
    for name in ("_flash_forward_kernel", "_flash_dkdv_kernel", "_flash_dq_kernel", "_flash_delta_kernel"):
        assert name in done.stdout
    assert all(" registers, " in row and " B spilled" in row for row in rows), (
        f"ptxas's report of registers and spills is missing:\n{done.stdout}")


def test_a_tile_the_gpu_cannot_multiply_fails_the_build(tmp_path):
    # A key tile of 8: Triton's interpreter computes attention with it, the GPU's dot needs an inner side of 16.
    patch = ("from llmkata.reference import kernels\n"
             "kernels._flash_blocks = lambda head_dim, dtype, device, backward: (16, 8, 4, 1)")
    done = flash_compile(tmp_path, "--head-dims", "32", "--dtypes", "bfloat16", "--causal", "no", patch=patch)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL _flash_forward_kernel" in done.stdout and "K >= 16" in done.stdout, done.stdout
    assert done.stdout.splitlines()[-1] == "2 failed", done.stdout


def test_shared_memory_over_the_gpus_limit_fails_the_build(tmp_path):
    # Tiles of 128 x 128 at head dim 128 compile, but the backward's ask for more than an sm_86 block's 99 KiB.
    patch = ("from llmkata.reference import kernels\n"
             "kernels._flash_blocks = lambda head_dim, dtype, device, backward: (128, 128, 8, 3)")
    done = flash_compile(tmp_path, "--arch", "86", "--head-dims", "128", "--dtypes", "bfloat16", "--causal", "no",
                         patch=patch)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL _flash_dkdv_kernel" in done.stdout and "> 101,376 B" in done.stdout, done.stdout


def test_the_interpreter_setting_is_refused(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "llmkata.benchmarks.flash_compile", "--head-dims", "32"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 2 and "TRITON_INTERPRET" in done.stderr, done.stdout + done.stderr


@pytest.mark.parametrize("head_dim", ["0", "512", "wide"])
def test_a_head_dim_the_kernels_do_not_take_is_one_clear_message(tmp_path, head_dim):
    done = flash_compile(tmp_path, "--head-dims", head_dim)
    assert done.returncode == 2 and "a head dim is" in done.stderr, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "triton" not in done.stdout, done.stdout + done.stderr
