#!/usr/bin/env bash
# Click → mask round trip over HTTP (issue #18): Slicer's DeepGrow clicks (3D and 2D), OHIF's
# DeepEdit call and Slicer's scribbles call against `medlabel serve` with the runner and
# the shipped click-guided starter models, on a 256 × 256 × 128 synthetic CT
# (1.5 × 1.5 × 2.5 mm).
#
#   bash scripts/bench-smartedit.sh [ROUNDS]
#
# BENCH_PEER=1 then sends the same DeepEdit and scribbles requests to MONAI Label 0.8.5's
# own server on the same machine and image (scripts/peer_app: its Histogram+GraphCut
# task, and DeepEdit and 2D DeepGrow tasks as the radiology app builds them), in a venv of its own
# (~/.cache/medlabel/peer-py: MONAI Label's server dependencies, numpy 1.x for its
# graph cut, the main venv's torch). BENCH_PEER_ROUNDS sets its rounds (a DeepEdit call
# there takes tens of seconds on a CPU). One JSON line per server.
#
# Uses the release `medlabel-runner` (built here with `--no-default-features`) and the
# `medlabel` server of the dev or release profile, whichever is newer
# (BENCH_SERVER=path overrides), and scripts/bench_smartedit.py for the timing; prints
# its JSON line. OMP_NUM_THREADS (default 2) sets the runner's threads.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/medlabel/target}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
python=${MEDLABEL_PY:-$HOME/.cache/medlabel/py/bin/python}
rounds=${1:-20}
cargo build --release -p medlabel-runner --no-default-features --bin medlabel-runner >&2
runner=$CARGO_TARGET_DIR/release/medlabel-runner
server=${BENCH_SERVER:-$( (ls -t "$CARGO_TARGET_DIR"/{release,debug}/medlabel 2>/dev/null || true) | head -n 1)}
work=$(mktemp -d)
server_pid=
cleanup() {
    if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

"$runner" make-sample --liver --cases 1 --seed 7777 --dims 256,256,128 --spacing 1.5,1.5,2.5 \
    --out "$work/sample" >/dev/null
port=$("$python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
mkdir -p "$work/studies"
"$server" serve --studies "$work/studies" --port "$port" --runner "$runner" --device cpu \
    --starter-model gpu-runner/models/deepgrow_3d \
    --starter-model gpu-runner/models/deepgrow_2d \
    --starter-model gpu-runner/models/deepedit_spleen_liver >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 120); do
    if curl -fs "http://127.0.0.1:$port/info/" >/dev/null; then break; fi
    sleep 1
done
image=$work/sample/spleen_000.nii.gz
truth=$work/sample/labels/final/spleen_000.nii.gz
"$python" scripts/bench_smartedit.py "http://127.0.0.1:$port" "$image" "$truth" "$rounds" | sed 's/^{/{"server":"medlabel",/'
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
[[ ${BENCH_PEER:-0} == 1 ]] || exit 0

peer=${MEDLABEL_PEER_PY:-$HOME/.cache/medlabel/peer-py}
site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [[ ! -x $peer/bin/python ]]; then
    "$("$python" -c 'import sys; print(sys._base_executable)')" -m venv "$peer"
    "$peer/bin/pip" install -q "numpy==1.26.4" "numpymaxflow==0.0.7" "pydicom==2.4.4" \
        "pynetdicom==2.0.2" fastapi uvicorn python-multipart timeloop schedule expiring-dict \
        expiringdict passlib bcrypt pyjwt httpx requests-toolbelt einops scipy scikit-learn \
        scikit-image shapely girder-client google-auth psutil pydantic-settings \
        opencv-python-headless >&2
    # torch 2.11's torchvision; MONAI 1.5, as MONAI Label 0.8.5's scribbles fail under 1.6
    # (its Spacingd updates every `image_*` entry as a meta dict, `image_path` included).
    "$peer/bin/pip" install -q --no-deps "torchvision==0.26.0" "monai==1.5.1" >&2
    # torch, MONAI and monailabel come from the main venv, after the peer's own packages.
    echo "$site" >"$("$peer/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz-medlabel.pth"
fi
port=$("$python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
mkdir -p "$work/peer-studies"
LD_LIBRARY_PATH="$site/nvidia/cu13/lib:$(dirname "$(dirname "$python")")/cuda-stubs" PYTHONWARNINGS=ignore \
    "$peer/bin/python" -m monailabel.main start_server --app "$repo/scripts/peer_app" \
    --studies "$work/peer-studies" --host 127.0.0.1 --port "$port" >"${BENCH_PEER_LOG:-$work/peer.log}" 2>&1 &
server_pid=$!
"$python" scripts/bench_smartedit.py "http://127.0.0.1:$port" "$image" "$truth" \
    "${BENCH_PEER_ROUNDS:-$rounds}" --deepgrow - --deepgrow-2d deepgrow_2d --deepedit deepedit | sed 's/^{/{"server":"monailabel",/'
