#!/usr/bin/env bash
# GPU acceptance check for medlabel-runner. Builds nothing: it runs an already-built
# runner binary (carried from a CPU build machine) against the GPU machine's own
# PyTorch 2.11.0+cu130 libraries, and proves, in under 5 minutes:
#   1. libtorch sees CUDA (libtorch_cuda.so registered via the runner's dlopen);
#   2. the NVRTC kernels (window, accumulate, argmax) equal their CPU references;
#   3. AMP sliding-window inference of a 256^3 synthetic CT works, with latencies;
#   4. one training epoch (4 synthetic 128x128x96 volumes, AMP) runs.
# The JSON report goes to stdout and $OUT/gpu-check.json (when $OUT is set).
#
# Usage: scripts/gpu-check.sh [RUNNER_BINARY] [extra gpu-check args, e.g. --size 192]
#   RUNNER_BINARY defaults to $RUNNER, then gpu-runner/dist/medlabel-runner,
#   then target/release/medlabel-runner.
#   PYTHON (default python3) must import the CUDA build of torch 2.11.0.
set -euo pipefail

say() { printf '[gpu-check.sh] %s\n' "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

RUNNER="${1:-${RUNNER:-}}"
[[ $# -gt 0 ]] && shift
if [[ -z "$RUNNER" ]]; then
    for candidate in gpu-runner/dist/medlabel-runner target/release/medlabel-runner; do
        if [[ -x "$candidate" ]]; then RUNNER="$candidate"; break; fi
    done
fi
[[ -n "$RUNNER" && -x "$RUNNER" ]] || fail "runner binary not found (pass its path or set RUNNER)"

PYTHON="${PYTHON:-python3}"
TORCH_DIR="$("$PYTHON" -c 'import torch, os; print(os.path.dirname(torch.__file__))')" \
    || fail "$PYTHON cannot import torch"
TORCH_VERSION="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
say "torch $TORCH_VERSION at $TORCH_DIR"
[[ "$TORCH_VERSION" == 2.11.0* ]] || fail "runner is built against libtorch 2.11.0, found $TORCH_VERSION"
NVRTC_DIR="$(dirname "$TORCH_DIR")/nvidia/cu13/lib"
[[ -d "$NVRTC_DIR" ]] || say "warning: $NVRTC_DIR missing; kernels need libnvrtc.so.13 on the library path"

# LD_LIBRARY_PATH wins over the binary's rpath (the CPU build machine's libtorch).
export LD_LIBRARY_PATH="$TORCH_DIR/lib:$NVRTC_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"

if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true
else
    say "warning: nvidia-smi not found"
fi

REPORT="$(mktemp)"
START=$SECONDS
# Inference uses MONAI Label's full spleen network (random weights) for realistic
# timings; pass --model DIR to time a trained model instead.
say "running $RUNNER gpu-check $*"
if ! timeout 290 "$RUNNER" gpu-check "$@" >"$REPORT"; then
    fail "gpu-check failed after $((SECONDS - START))s (see messages above)"
fi
cat "$REPORT"
if [[ -n "${OUT:-}" ]]; then cp "$REPORT" "$OUT/gpu-check.json"; fi
say "PASS in $((SECONDS - START))s"
