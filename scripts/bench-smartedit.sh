#!/usr/bin/env bash
# Click → mask round trip over HTTP (issue #18): Slicer's DeepGrow click and OHIF's
# DeepEdit call against `medlabel serve` with the runner and the shipped click-guided
# starter models, on a 256 × 256 × 128 synthetic CT (1.5 × 1.5 × 2.5 mm).
#
#   bash scripts/bench-smartedit.sh [ROUNDS]
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
    --starter-model gpu-runner/models/deepedit_spleen_liver >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 120); do
    if curl -fs "http://127.0.0.1:$port/info/" >/dev/null; then break; fi
    sleep 1
done
"$python" scripts/bench_smartedit.py "http://127.0.0.1:$port" "$work/sample/spleen_000.nii.gz" \
    "$work/sample/labels/final/spleen_000.nii.gz" "$rounds"
