"""Build the reference's flash-attention kernels for an NVIDIA GPU on a machine that has none.

    python -m llmkata.benchmarks.flash_compile                      # Hopper (sm_90): every head dim, dtype, mask
    python -m llmkata.benchmarks.flash_compile --arch 80 --head-dims 128 --dtypes bfloat16

Triton compiles ahead of time for a named target: its front end, its GPU passes and the ptxas it ships turn each
kernel into a cubin without a driver. This checks what Triton's CPU interpreter cannot: that every kernel builds
for the GPU at the tiles, warps and pipeline stages the GPU path launches it with (`_flash_blocks`), and that the
shared memory each asks for fits one block of that GPU. Prints a row per build (shared memory, and registers and
spills per thread from ptxas); exit status 1 when a build fails or does not fit.
Run it in a process where TRITON_INTERPRET is unset: under the interpreter there is nothing to compile.
"""

from __future__ import annotations

import argparse
import inspect
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# The most shared memory one block may ask for (opt-in), in bytes, by compute capability.
SHARED_PER_BLOCK = {80: 166_912, 86: 101_376, 89: 101_376, 90: 232_448, 100: 232_448}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_POINTER = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}
_FLOAT32_TENSORS = ("Lse", "Delta", "GradLse")  # the log-sum-exp and its terms are float32 whatever the dtype
_FLOAT_SCALARS = ("scale", "qk_scale")


def signature(kernel, dtype: torch.dtype, constants: dict) -> dict[str, str]:
    """Triton's signature of a kernel's parameters: tensors (capitalised) as pointers to `dtype` (the
    log-sum-exp ones to float32), the scales as float32, every other argument as int32, constants as constexpr."""
    types = {}
    for name in inspect.signature(kernel.fn).parameters:
        if name in constants:
            types[name] = "constexpr"
        elif name[0].isupper():
            types[name] = "*fp32" if name in _FLOAT32_TENSORS else _POINTER[dtype]
        else:
            types[name] = "fp32" if name in _FLOAT_SCALARS else "i32"
    return types


def builds(head_dim: int, dtype: torch.dtype, causal: bool) -> list[tuple[str, dict, int, int]]:
    """(kernel name, constants, warps, stages) of each kernel a forward and backward on the GPU launch, with the
    constants the GPU path derives from its inputs (here tensors on the meta device, of that head dim and dtype)."""
    from llmkata.reference import kernels

    cuda, like = torch.device("cuda"), torch.empty(1, 1, 1, head_dim, dtype=dtype, device="meta")
    shared = kernels._flash_constants(like, like, causal)
    rows = []
    for name, backward in (("_flash_forward_kernel", False), ("_flash_dkdv_kernel", True), ("_flash_dq_kernel", True)):
        block_m, block_n, warps, stages = kernels._flash_blocks(head_dim, dtype, cuda, backward)
        rows.append((name, {**shared, "BLOCK_M": block_m, "BLOCK_N": block_n}, warps, stages))
    delta_rows = kernels._flash_delta_rows(shared["BLOCK_DV"], cuda)
    rows.append(("_flash_delta_kernel", {"VALUE_DIM": head_dim, "BLOCK_M": delta_rows, "BLOCK_DV": shared["BLOCK_DV"]},
                 4, 1))
    return rows


def _head_dim(text: str) -> int:
    """A head dim the kernels take: 1 to 256."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a head dim is a whole number, got {text!r}") from None
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"a head dim is 1 to 256, got {value}")
    return value


def compile_kernel(name: str, dtype: torch.dtype, constants: dict, warps: int, stages: int, arch: int):
    """The compiled kernel (its cubin and metadata) for compute capability `arch`."""
    import triton
    from llmkata.reference import kernels
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = kernels._triton_kernels()[name]
    source = ASTSource(fn=kernel, signature=signature(kernel, dtype, constants), constexprs=constants)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps,
                                                                                 "num_stages": stages})


def registers(compiled, arch: int) -> str:
    """"N registers, S B spilled" per thread, from ptxas -v on the kernel's PTX (the ptxas Triton builds with for
    `arch`); "" where that ptxas cannot be found. Spills go to local memory: a kernel that spills is slow."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        ptxas = get_ptxas(arch).path
    except Exception:  # noqa: BLE001 - a Triton without that helper: the report goes without it
        return ""
    with tempfile.TemporaryDirectory() as folder:
        ptx = Path(folder) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        done = subprocess.run([ptxas, "-v", f"--gpu-name=sm_{arch}{'a' if arch >= 90 else ''}", str(ptx), "-o",
                               str(Path(folder) / "kernel.cubin")], capture_output=True, text=True, check=False)
    used = re.search(r"Used (\d+) registers", done.stderr)
    spilled = re.search(r"(\d+) bytes spill stores", done.stderr)
    if not used or not spilled:
        return ""
    return f"{used.group(1)} registers, {spilled.group(1)} B spilled"


def _why(error: Exception) -> str:
    """One line for a failed build: where in the kernel (Triton's "at LINE:COLUMN:") and what its compiler said."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    where = lines[0] if lines and lines[0].startswith("at ") else ""
    return f"{type(error).__name__} {where} {lines[-1] if lines else ''}".replace("  ", " ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmkata.benchmarks.flash_compile",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, choices=sorted(SHARED_PER_BLOCK),
                        help="compute capability, as one number (default: 90, Hopper)")
    parser.add_argument("--head-dims", type=_head_dim, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--causal", choices=["both", "yes", "no"], default="both")
    args = parser.parse_args(argv)
    from llmkata.reference import kernels

    if kernels._triton_interpreting():
        print("flash_compile: TRITON_INTERPRET is set: Triton's interpreter compiles nothing; unset it",
              file=sys.stderr)
        return 2
    try:
        import triton
    except ImportError:
        print("flash_compile: needs Triton: pip install 'llmkata[triton]'", file=sys.stderr)
        return 2
    masks = {"both": (True, False), "yes": (True,), "no": (False,)}[args.causal]
    limit = SHARED_PER_BLOCK[args.arch]
    print(f"triton {triton.__version__}, target sm_{args.arch} (shared memory per block at most {limit:,} B)")
    failures = 0
    for head_dim in args.head_dims:
        for dtype_name in args.dtypes:
            for causal in masks:
                for name, constants, warps, stages in builds(head_dim, DTYPES[dtype_name], causal):
                    what = (f"{name:22s} d={head_dim:<3d} {dtype_name:8s} {'causal' if causal else 'full  '} "
                            f"{constants['BLOCK_M']}x{constants.get('BLOCK_N', '-')} warps {warps} stages {stages}")
                    started = time.perf_counter()
                    try:
                        compiled = compile_kernel(name, DTYPES[dtype_name], constants, warps, stages, args.arch)
                    except Exception as error:  # noqa: BLE001 - every failure is a row, then the exit status
                        failures += 1
                        print(f"FAIL {what}: {_why(error)}", flush=True)
                        continue
                    seconds, used = time.perf_counter() - started, compiled.metadata.shared
                    fits = used <= limit
                    failures += not fits
                    print(f"{'ok  ' if fits else 'FAIL'} {what}: shared {used:,} B"
                          f"{'' if fits else f' > {limit:,} B'}, {registers(compiled, args.arch) or '-'}, "
                          f"{seconds:.1f} s to build", flush=True)
    print(f"{failures} failed" if failures else "every build fits")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
