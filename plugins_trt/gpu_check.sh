#!/usr/bin/env bash
# GPU check of the MSDA kernel (issue 6) and the device-side decode (issue 14), one command, about 4 minutes, 7 at most:
#   1. build the PyTorch binding (plugins_trt/msda_op.py) for this GPU,
#   2. build and run the standalone kernel test (both kernels vs a double-precision CPU reference),
#   3. run it under compute-sanitizer memcheck and racecheck (small case),
#   4. run the GPU tests (tests/test_msda_cuda.py: kernel vs llmformer/msda.py, FP32 1e-5, FP16 1e-2 relative),
#   5. run the benchmark (benchmarks/bench_msda_gpu.py: 512 and 1024 frames, uniform and clustered locations),
#   6. run the device-decode tests (tests/test_decode_device.py, issue 14: CUDA strided cache writes, ONNX Runtime
#      CUDA IOBinding decoding equal to CPU decoding with the cache on the GPU, TensorRT buffer sharing; each skips
#      with its reason where onnxruntime-gpu, cuda-python or TensorRT is missing).
# Every step's output goes to a log; SUMMARY.md collects the GPU, the date, each step's result and the figures.
#
#   bash plugins_trt/gpu_check.sh          # from the repository root; results in $OUT if set,
#                                          # else build/gpu_check/<UTC time>
# Needs: a CUDA GPU, PyTorch with CUDA, nvcc (PATH, CUDA_HOME or /usr/local/cuda), compute-sanitizer, pytest.
# Exit status 0 when every step passed (the benchmark's targets are reported, not enforced).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RESULTS="${OUT:-$ROOT/build/gpu_check/$(date -u +%Y%m%dT%H%M%SZ)}"
BUILD="$ROOT/build/gpu_check_build"
mkdir -p "$RESULTS" "$BUILD"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/build/torch_extensions}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
PY="${PYTHON:-python}"
BUDGET_S=420
START=$(date +%s)
STATUS=0
SUMMARY="$RESULTS/SUMMARY.md"

NVCC="$(command -v nvcc || true)"
[ -z "$NVCC" ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ] && NVCC="$CUDA_HOME/bin/nvcc"
[ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc
if [ -z "$NVCC" ]; then
    echo "gpu_check: nvcc not found (PATH, CUDA_HOME, /usr/local/cuda/bin)" | tee "$SUMMARY"
    exit 2
fi
export PATH="$(dirname "$NVCC"):$PATH"
export CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$NVCC")")}"
SANITIZER="$(command -v compute-sanitizer || true)"
for candidate in "$CUDA_HOME/bin/compute-sanitizer" "$CUDA_HOME/compute-sanitizer/compute-sanitizer" \
                 /usr/local/cuda/bin/compute-sanitizer; do
    [ -z "$SANITIZER" ] && [ -x "$candidate" ] && SANITIZER="$candidate"
done

PROBE='import torch
assert torch.cuda.is_available(), f"no CUDA GPU visible to torch {torch.__version__} (CUDA {torch.version.cuda})"
print("%d.%d" % torch.cuda.get_device_capability())'
CAP="$("$PY" -c "$PROBE" 2> "$RESULTS/torch_probe.log")"
if [ -z "$CAP" ]; then
    { echo "# MSDA GPU check: not run"; echo; echo '```'; cat "$RESULTS/torch_probe.log"; echo '```'; } > "$SUMMARY"
    cat "$SUMMARY"
    exit 2
fi
SM="${CAP/./}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$CAP}"  # build for this GPU only: minutes matter here
GPU="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
[ -z "$GPU" ] && GPU="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')"

{
    echo "date (UTC): $(date -u '+%Y-%m-%d %H:%M')"
    echo "GPU: $GPU (sm_$SM)"
    "$NVCC" --version | tail -2
    "$PY" -c 'import torch, platform
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}")'
    echo "host: $(nproc) cores, $(uname -srm)"
    DIRTY="$(git status --porcelain -- plugins_trt 2>/dev/null)"
    COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "commit: $COMMIT${DIRTY:+, with uncommitted changes in plugins_trt}"
} > "$RESULTS/environment.txt" 2>&1

declare -a ROWS
# step NAME LIMIT_S CMD...: run with a timeout inside the overall budget, log to NAME.log, record the result.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - ($(date +%s) - START)))
    if [ "$left" -lt 10 ]; then
        ROWS+=("| $name | skipped: the ${BUDGET_S} s budget is spent | - |")
        STATUS=1
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s)"
    local t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$RESULTS/$name.log" 2>&1
    local rc=$?
    local dt=$(($(date +%s) - t0))
    local verdict="passed"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        verdict="TIMED OUT"
    elif [ "$rc" -ne 0 ]; then
        verdict="FAILED (exit $rc)"
    fi
    [ "$rc" -ne 0 ] && STATUS=1
    ROWS+=("| $name | $verdict | ${dt} s |")
    tail -n 5 "$RESULTS/$name.log"
    return "$rc"
}

MSDA="$ROOT/plugins_trt/msda"
step build_binding 200 "$PY" -c 'from plugins_trt import msda_op; msda_op.load(verbose=True); print("binding loaded")'
step build_kernel_test 100 "$NVCC" -std=c++17 -O2 -lineinfo "-gencode=arch=compute_$SM,code=sm_$SM" -I"$MSDA" \
    "$MSDA/msdaKernel.cu" "$MSDA/msdaNaiveKernel.cu" "$MSDA/tests/msdaKernelTest.cu" -o "$BUILD/msdaKernelTest"
if [ -x "$BUILD/msdaKernelTest" ]; then
    step kernel_test 60 "$BUILD/msdaKernelTest"
    if [ -x "$SANITIZER" ]; then
        step memcheck 90 "$SANITIZER" --tool memcheck --error-exitcode 3 "$BUILD/msdaKernelTest" --small
        step racecheck 90 "$SANITIZER" --tool racecheck --error-exitcode 3 "$BUILD/msdaKernelTest" --small
    else
        ROWS+=("| memcheck | skipped: compute-sanitizer not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin) | - |")
        STATUS=1
    fi
fi
# The standalone test and memcheck already ran above; pytest runs everything else in tests/test_msda_cuda.py.
step pytest 150 "$PY" -m pytest -q -rs tests/test_msda_cuda.py -k "not standalone and not memcheck" \
    --junitxml="$RESULTS/pytest.xml" -p no:cacheprovider
step benchmark 150 "$PY" benchmarks/bench_msda_gpu.py --runs 100 --json "$RESULTS/bench_msda_gpu.json"
step device_decode 120 "$PY" -m pytest -q -rs tests/test_decode_device.py -p no:cacheprovider
# The frame path (issue 17): host vs device (frame graphs) on ONNX Runtime's CUDA provider, same run. The demo
# build takes ~20 s; segment() timings and host<->device bytes per frame land in bench_frame_path.json.
step frame_build 120 env PYTHONPATH=. "$PY" export/build_engines.py --out "$RESULTS/demo_frames"
step frame_path 150 "$PY" benchmarks/bench_frame_path.py "$RESULTS/demo_frames" --rounds 20 \
    --sizes 480x640 720x1280 --json "$RESULTS/bench_frame_path.json"

{
    echo "# MSDA GPU check"
    echo
    echo '```'
    cat "$RESULTS/environment.txt"
    echo '```'
    echo
    echo "| step | result | time |"
    echo "|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "pytest: $(grep -E '(passed|failed|error)' "$RESULTS/pytest.log" 2>/dev/null | tail -1)"
    echo "device decode: $(grep -E '(passed|failed|error)' "$RESULTS/device_decode.log" 2>/dev/null | tail -1)"
    grep -E '^SKIPPED' "$RESULTS/device_decode.log" 2>/dev/null
    echo "memcheck: $(grep -h 'ERROR SUMMARY' "$RESULTS/memcheck.log" 2>/dev/null | tail -1)"
    echo "racecheck: $(grep -h 'SUMMARY' "$RESULTS/racecheck.log" 2>/dev/null | tail -1)"
    echo
    echo "## Frame path (benchmarks/bench_frame_path.py: host vs device)"
    echo
    cat "$RESULTS/frame_path.log" 2>/dev/null
    echo
    echo "## Benchmark (benchmarks/bench_msda_gpu.py --runs 100)"
    echo
    cat "$RESULTS/benchmark.log" 2>/dev/null
    echo
    echo "total: $(($(date +%s) - START)) s; logs and bench_msda_gpu.json in $RESULTS"
} > "$SUMMARY"
cat "$SUMMARY"
exit "$STATUS"
