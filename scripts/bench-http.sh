#!/usr/bin/env bash
# Speed of medlabel's HTTP API on loopback, at 1,000 and 10,000 images.
#
#   bash scripts/bench-http.sh [OUT_DIR]
#
# Builds `medlabel` and `loadgen` (release), writes a studies folder per size with
# distinct tiny NIfTI images (8×8×8 int16, gzip'd) of which every tenth has a final
# label, and starts `medlabel serve` on it without a runner. The time from spawn to the
# "serving" line is the import of the folder; a second start of the same folder times
# the idempotent re-import. Then `loadgen http` runs each request kind from one
# client (unloaded latency, REQUESTS/10 requests) and from CLIENTS concurrent clients
# (throughput; latency then includes queueing), warm-up first, and the server is
# stopped. JSON lines go to
# OUT_DIR/http-<images>.jsonl and a table is printed at the end.
#
# Knobs (environment): BENCH_SIZES ("1000 10000"), BENCH_REQUESTS (20000),
# BENCH_CLIENTS (16), MEDLABEL_PY (the venv's python, with nibabel), BENCH_BIN (a
# folder with release `medlabel` and `loadgen` built elsewhere: nothing is built).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/medlabel/target}
python=${MEDLABEL_PY:-$HOME/.cache/medlabel/py/bin/python}
sizes=${BENCH_SIZES:-"1000 10000"}
requests=${BENCH_REQUESTS:-20000}
clients=${BENCH_CLIENTS:-16}
out=${1:-$(mktemp -d)}
mkdir -p "$out"
work=$(mktemp -d)
server_pid=

cleanup() {
    if [[ -n $server_pid ]]; then stop_server; fi
    rm -rf "$work"
}
trap cleanup EXIT

if [[ -n ${BENCH_BIN:-} ]]; then
    bin=$(cd "$BENCH_BIN" && pwd)
else
    cargo build --release -p medlabel-functions --bin medlabel -p medlabel-tests --bin loadgen
    bin=$CARGO_TARGET_DIR/release
fi

# Distinct images (content-addressed blobs must not collapse into one) and labels.
make_studies() { # DIR COUNT
    "$python" - "$1" "$2" <<'EOF'
import os, sys
import numpy as np, nibabel as nib
root, count = sys.argv[1], int(sys.argv[2])
os.makedirs(f"{root}/labels/final", exist_ok=True)
rng = np.random.default_rng(7)
for i in range(count):
    data = rng.integers(-1000, 1000, size=(8, 8, 8), dtype=np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), f"{root}/img{i:05d}.nii.gz")
    if i % 10 == 0:
        label = (data > 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(label, np.eye(4)), f"{root}/labels/final/img{i:05d}.nii.gz")
EOF
}

# Starts the server on a free port; sets server_pid, base and started_s (spawn to
# the "serving" line, i.e. the import).
start_server() { # STUDIES LOG
    local begin line
    begin=$(date +%s%N)
    "$bin/medlabel" serve --studies "$1" --host 127.0.0.1 --port 0 --runner /nonexistent \
        >"$2" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 6000); do
        line=$(grep -m1 -o 'at http://[0-9.:]*' "$2" || true)
        if [[ -n $line ]]; then break; fi
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "bench-http: medlabel exited:" >&2; cat "$2" >&2; exit 1
        fi
        sleep 0.05
    done
    [[ -n $line ]] || { echo "bench-http: medlabel did not start" >&2; exit 1; }
    local ms=$((($(date +%s%N) - begin) / 1000000))
    started_s=$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))
    base=${line#at }
}

stop_server() {
    kill -INT "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}

load() { # CLIENTS KIND REQUESTS WARMUP [ARGS...]
    local c=$1 kind=$2 n=$3 warm=$4
    shift 4
    "$bin/loadgen" http --base "$base" --kind "$kind" --clients "$c" \
        --requests "$n" --warmup "$warm" --max-seconds 300 "$@"
}

echo "machine: $(getconf _NPROCESSORS_ONLN) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "load before: $(uptime)"
"$python" -c "
import nibabel as nib, numpy as np
# The images' shape and affine: a label that does not fit its image is refused (422).
label = np.random.default_rng(3).integers(0, 2, size=(8, 8, 8), dtype=np.uint8)
nib.save(nib.Nifti1Image(label, np.eye(4)), '$work/label.nii.gz')"
echo "label upload: $(stat -c %s "$work/label.nii.gz") bytes"

for size in $sizes; do
    studies=$work/studies-$size
    make_studies "$studies" "$size"
    results=$out/http-$size.jsonl
    : >"$results"

    start_server "$studies" "$work/server-$size.log"
    first=$started_s
    stop_server
    start_server "$studies" "$work/server-$size-again.log"
    echo "{\"kind\":\"startup\",\"images\":$size,\"import_s\":$first,\"restart_s\":$started_s}" \
        | tee -a "$results"

    # Fresh client ids each lease one more unlabeled image (leases last 30 minutes):
    # keep that variant well below the unlabeled count so every request really picks.
    # Label uploads rotate over every image and so label them all: they go last.
    fresh=$((size * 9 / 10 / 2))
    if ((fresh > requests)); then fresh=$requests; fi
    serial=$((requests / 10))
    {
        for kind in info stats next-same; do
            load 1 "$kind" "$serial" 100
            load "$clients" "$kind" "$requests" 500
        done
        load 1 next-fresh 200 20
        load "$clients" next-fresh "$fresh" 50
        load 1 label-put "$serial" 100 --label "$work/label.nii.gz"
        load "$clients" label-put "$requests" 500 --label "$work/label.nii.gz"
    } | sed "s/^{/{\"images\":$size,/" | tee -a "$results"
    rss=$(ps -o rss= -p "$server_pid" | xargs)
    echo "{\"kind\":\"server_rss\",\"images\":$size,\"rss_kib\":$rss}" | tee -a "$results"
    stop_server
done
echo "load after: $(uptime)"

echo
command -v jq >/dev/null || { echo "results: $out (install jq for the table)"; exit 0; }
printf '%-7s %-11s %7s %8s %8s %8s %8s %8s %8s %7s %6s\n' \
    images kind clients requests req/s p50_ms p90_ms p99_ms max_ms errors empty
for size in $sizes; do
    jq -r 'select(.p50_ms != null) | [.images, .kind, .clients, .completed, (.throughput_rps|floor),
        .p50_ms, .p90_ms, .p99_ms, .max_ms, .errors, .empty_replies] | @tsv' \
        "$out/http-$size.jsonl" |
        while IFS=$'\t' read -r i k c n r p50 p90 p99 max e empty; do
            printf '%-7s %-11s %7s %8s %8s %8s %8s %8s %8s %7s %6s\n' \
                "$i" "$k" "$c" "$n" "$r" "$p50" "$p90" "$p99" "$max" "$e" "$empty"
        done
    jq -r 'select(.kind == "startup") |
        "\(.images) images: import \(.import_s) s, restart \(.restart_s) s"' \
        "$out/http-$size.jsonl"
done
echo "results: $out"
