#!/usr/bin/env bash
# CPU inference of imported MONAI bundles against MONAI's own, same machine, same
# networks and weights: UNet, SegResNet and DynUNet, each as a state dict (served as a
# native network) and as TorchScript, on a 256³ phantom (1 × 1 × 1.5 mm) with each
# bundle's sliding window (96³ at 1.5 × 1.5 × 2 mm, overlap 0.25, sw_batch_size 4).
# Both sides time read → preprocess → sliding window → postprocess (no writing); median
# of --repeat runs after a warm-up. Bundles are built by gpu-runner/tests/python/bundles.py.
#
# Usage: OMP_NUM_THREADS=2 scripts/bench_bundles.sh target/release/medlabel-runner [repeat]
# (NETS="unet dynunet" picks networks; a failing step prints its error and stops.)
set -euo pipefail
runner=$1
repeat=${2:-3}
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${MEDLABEL_CACHE:-$HOME/.cache/medlabel}/py
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$site/nvidia/cu13/lib:$venv/cuda-stubs"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONWARNINGS=ignore
py() {
    local out
    out=$("$venv/bin/python" "$repo/gpu-runner/tests/python/bundles.py" "$@" 2>"$work/py.err") \
        || { tail -5 "$work/py.err" >&2; return 1; }
    tail -1 <<<"$out"
}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "network format monai_median_s runner_median_s ratio"
for net in ${NETS:-unet segresnet dynunet}; do
    for fmt in pt ts; do
        b=$work/${net}_$fmt
        py make "$b" --network "$net" --format "$fmt" --bench >/dev/null
        m=$(py bench "$b" "$b/image.nii.gz" --repeat "$repeat")
        r=$("$runner" bench --bundle "$b" --image "$b/image.nii.gz" --repeat "$repeat")
        echo "$m" >"$work/monai_${net}_$fmt.json"
        echo "$r" >"$work/runner_${net}_$fmt.json"
        python3 - "$net" "$fmt" "$m" "$r" <<'PY'
import json, sys
net, fmt, m, r = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
print(f"{net} {fmt} {m['median_s']:.2f} {r['median_s']:.2f} {m['median_s'] / r['median_s']:.2f}")
PY
    done
done
