#!/usr/bin/env bash
# The GPU side of the attention benchmarks, in one command, on a machine with a CUDA GPU (H100/H200: a few minutes):
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#   bash benchmarks/gpu_check.sh --dry-run  # print the steps, run nothing (works without a GPU)
#
# 1. installs llmkata (editable, no dependencies, no download) and triton where they are missing, 2. runs the kernels
# spec's flash-attention properties at GPU sizes (compiled kernels against the float64 definition), 3. runs the
# attention sweep on the GPU (16k tokens per batch, N 512..16k, head dims 64 and 128, causal and not, bfloat16 and
# float16; every path, SDPA and its backends),
# 4. runs the small-shape flash-attention properties compiled (the CPU checks them in Triton's interpreter; here
# each new shape class compiles, so they are last and time-limited), 5. writes benchmarks/results/gpu-<time>/:
# bench.json (pytest-benchmark), throughput.png, table.md, the logs and JUnit XML (8 files; also copied into $OUT
# when that is set, for a machine whose results come back from there).
# Knobs: PYTHON (default .venv/bin/python, else python3), GPU_CHECK_QUICK=1 (bfloat16, N 1k/4k/16k only, and the
# shorter limits, so that the whole check fits one 10-minute command on a machine lent for a short time),
# GPU_CHECK_SPEC_LIMIT / GPU_CHECK_BENCH_LIMIT / GPU_CHECK_SMALL_LIMIT (seconds; default 180 / 360 / 120, with
# GPU_CHECK_QUICK=1 120 / 240 / 60).
set -euo pipefail

dry_run=0
[[ "${1:-}" == "--dry-run" ]] && dry_run=1
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
out="benchmarks/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)"
sweep=full limits=(180 360 120)
[[ "${GPU_CHECK_QUICK:-0}" == "1" ]] && sweep=quick limits=(120 240 60)
spec_limit="${GPU_CHECK_SPEC_LIMIT:-${limits[0]}}"
bench_limit="${GPU_CHECK_BENCH_LIMIT:-${limits[1]}}"
small_limit="${GPU_CHECK_SMALL_LIMIT:-${limits[2]}}"

step() { echo; echo "== $*"; }
run() {  # print the command; run it unless --dry-run
    echo "+ $*"
    if (( ! dry_run )); then "$@"; fi
}
logged() {  # run LOG COMMAND...: the command's output also into LOG; its exit status, not tee's
    local log="$1"; shift
    echo "+ $* > $log"
    if (( dry_run )); then return 0; fi
    "$@" 2>&1 | tee "$log"
    return "${PIPESTATUS[0]}"
}

step "checks"
if (( dry_run )); then
    echo "(dry run: the CUDA check and every command below are printed, not run)"
else
    "$PYTHON" - <<'PY' || { echo "gpu_check: torch sees no CUDA device: run this on a machine with an NVIDIA GPU and a CUDA build of torch" >&2; exit 2; }
import sys, torch
if not torch.cuda.is_available():
    sys.exit(1)
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PY
    if ! "$PYTHON" -c "import llmkata.spec" 2>/dev/null; then
        step "installing llmkata (editable; its dependencies must be there already)"
        "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . \
            || { echo "gpu_check: could not install llmkata (pip install -e .)" >&2; exit 2; }
    fi
    if ! "$PYTHON" -c "import triton" 2>/dev/null; then
        step "installing triton"
        "$PYTHON" -m pip install "triton>=3.0" || { echo "gpu_check: could not install triton (pip install 'llmkata[triton]')" >&2; exit 2; }
    fi
    "$PYTHON" -c "import triton; print('triton', triton.__version__)"
    unset TRITON_INTERPRET
fi
run mkdir -p "$out"
# Where results come back from a folder of their own ($OUT), they are copied there however the run ends.
if [[ -n "${OUT:-}" ]] && (( ! dry_run )); then
    trap 'cp "$out"/* "$OUT"/ 2>/dev/null || true' EXIT
fi

step "the flash-attention properties at GPU sizes (spec/test_kernels.py)"
spec_status=0
logged "$out/spec.log" timeout -s INT -k 30 "$spec_limit" "$PYTHON" -m pytest spec/test_kernels.py -q -rs -p no:cacheprovider \
    -o addopts= -k "flash_attention_on_the_gpu or flash_attention_rejects" --junitxml="$out/spec.xml" \
    || spec_status=$?

step "the attention sweep on the GPU"
bench_status=0
# pytest itself (not `llmkata bench`), stopped by SIGINT at the limit: it then still writes the rows done so far.
logged "$out/bench.log" env LLMKATA_BENCH_DEVICE=cuda LLMKATA_BENCH_PROGRESS=1 LLMKATA_BENCH_SWEEP="$sweep" \
    timeout -s INT -k 30 "$bench_limit" "$PYTHON" -m pytest benchmarks/bench_attention.py -k throughput -q \
    -p no:cacheprovider -o addopts= -o python_files="bench_*.py" --benchmark-json="$out/bench.json" \
    || bench_status=$?

step "the small-shape flash-attention properties, compiled (each new shape class compiles; time-limited)"
small_status=0
logged "$out/spec-small.log" timeout -s INT -k 30 "$small_limit" "$PYTHON" -m pytest spec/test_kernels.py -q -rs \
    -p no:cacheprovider -o addopts= -k "flash_attention and not on_the_gpu and not rejects" \
    --junitxml="$out/spec-small.xml" || small_status=$?

step "the table, its markdown and the plot"
[[ -f "$out/bench.json" || dry_run -eq 1 ]] || { echo "gpu_check: the sweep wrote no report ($out/bench.log)" >&2; exit 1; }
run "$PYTHON" -m llmkata.benchmarks.common "$out/bench.json" "$out/table.md" "$out/throughput.png"

step "done"
echo "results: $out (exit status: spec at GPU sizes $spec_status, sweep $bench_status, small shapes $small_status;"
echo "2 or 124 = stopped by its time limit: the rows done are kept)"
(( spec_status == 0 && bench_status == 0 ))
