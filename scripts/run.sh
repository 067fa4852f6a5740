#!/usr/bin/env bash
# Runs medlabel locally: installs the tooling (scripts/setup.sh), builds the server and
# the GPU runner, makes a synthetic CT studies folder on first use, and serves it on
# http://127.0.0.1:8000 with every shipped starter model published (segmentation,
# DeepEdit, DeepGrow 3D and 2D; the scribbles methods are always there), and OHIF (the
# build MONAI Label's wheel ships, with its MONAI Label panel) at /ohif/.
#
#   bash scripts/run.sh [--studies DIR | --studies http://host:8042/dicom-web]
#                       [any other `medlabel serve` flag, e.g. --ohif DIR]
#
# Connect 3D Slicer's MONAI Label module (or the monailabel client) to the printed
# address, or open http://127.0.0.1:8000/ohif/ with a DICOMweb --studies. Ctrl-C stops
# the server and its runner.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export MEDLABEL_CACHE=${MEDLABEL_CACHE:-$HOME/.cache/medlabel}
scripts/setup.sh

site=$("$MEDLABEL_CACHE/py/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
export LIBTORCH=$site/torch
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$MEDLABEL_CACHE/target}
# Two intra-op threads on a small machine; libtorch picks its own on bigger ones.
if [[ $(nproc) -le 4 ]]; then export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}; fi

cargo build -p medlabel-functions --bin medlabel -p medlabel-runner --bin medlabel-runner

studies=$repo/studies
ohif=$site/monailabel/endpoints/static/ohif
args=()
while (($#)); do
    case $1 in
        --studies) studies=$2; shift 2 ;;
        --ohif) ohif=$2; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
if [[ -d $ohif ]]; then
    args+=(--ohif "$ohif")
fi
if [[ $studies != http://* && $studies != https://* && ! -d $studies ]]; then
    echo "run: making a synthetic CT studies folder in $studies" >&2
    "$CARGO_TARGET_DIR/debug/medlabel-runner" make-sample --out "$studies" --cases 8 >/dev/null
    # Half the cases keep their final label (training data); the rest await annotation.
    find "$studies/labels/final" -type f | sort | tail -n 4 | xargs rm -f
fi

for model in "$repo"/gpu-runner/models/*/; do
    args+=(--starter-model "${model%/}")
done
exec "$CARGO_TARGET_DIR/debug/medlabel" serve --studies "$studies" "${args[@]}"
