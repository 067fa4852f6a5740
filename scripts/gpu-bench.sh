#!/usr/bin/env bash
# One call on a lent GPU machine (see docs/runner.md, "On a GPU machine"): the acceptance
# check and the peer benchmarks, CUDA and CPU, with a runner built on a CPU machine.
# Expects in .whl/: medlabel-runner (release, stripped) and the monai + nibabel wheels
# that machine lacks. Reports land in $OUT (or ./gpu-bench-out).
set -uo pipefail
OUT="${OUT:-gpu-bench-out}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
TORCH_DIR="$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')"
export LD_LIBRARY_PATH="$TORCH_DIR/lib:$(dirname "$TORCH_DIR")/nvidia/cu13/lib"
RUNNER=.whl/medlabel-runner
nproc; lscpu | grep 'Model name'
bash scripts/gpu-check.sh "$RUNNER" 2>&1 | tee "$OUT/gpu-check.log" | tail -4
# CUDA side by side: fp16 autocast on both sides, as MONAI Label runs it.
OMP_NUM_THREADS=8 python3 scripts/bench_peer.py --runner "$RUNNER" --device cuda --size 256 \
    --repeat 3 --batch 2 --out "$OUT/peer-cuda.json" 2>&1 | tail -4
# CPU side by side on this machine's Xeon, 2 intra-op threads each.
OMP_NUM_THREADS=2 python3 scripts/bench_peer.py --runner "$RUNNER" --device cpu --size 256 \
    --repeat 3 --batch 2 --out "$OUT/peer-cpu2.json" 2>&1 | tail -4
