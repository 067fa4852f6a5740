#!/usr/bin/env bash
# Size and cold start of every Lambda function binary, built for this host.
#
#   bash scripts/bench-lambda.sh [OUT_DIR]
#
# Builds the function binaries (feature `aws`), the dispatcher and `loadgen`
# (release). For each binary: its size, the size of a stripped copy, and the cold
# start `loadgen lambda-cold-start` measures (spawn to the first answer posted to a
# fake Lambda Runtime API; median of RUNS runs) with state in a fresh DynamoDB table
# and S3 bucket on the moto emulator this script starts, and the binary's own share of
# it (`own_ms`: the answer time less the time the emulator spent answering it). The functions that rebuild
# the datastore projection at start are timed again over SEED recorded images, and
# once more with TAIL images recorded after the first start (which records the
# snapshot), so that the later starts fold events past it.
# arm64 `bootstrap` files that `cargo lambda build` left under the target directory
# are listed too (this script does not run cargo lambda). JSON lines go to
# OUT_DIR/lambda.jsonl and a table is printed at the end.
#
# Knobs (environment): BENCH_RUNS (5), BENCH_SEED (200), BENCH_TAIL (50), MEDLABEL_PY. The seed is
# small because moto answers each DynamoDB query by scanning in Python: recording
# 1,000 images through it takes over four minutes, and its replay time is moto's,
# not DynamoDB's.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/medlabel/target}
python=${MEDLABEL_PY:-$HOME/.cache/medlabel/py/bin/python}
runs=${BENCH_RUNS:-5}
seed=${BENCH_SEED:-200}
tail=${BENCH_TAIL:-50}
out=${1:-$(mktemp -d)}
mkdir -p "$out"
work=$(mktemp -d)
moto_pid=

cleanup() {
    if [[ -n $moto_pid ]]; then kill "$moto_pid" 2>/dev/null || true; wait "$moto_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release -p medlabel-functions --features aws --bins
cargo build --release -p medlabel-dispatcher --bin dispatcher -p medlabel-tests --bin loadgen
bin=$CARGO_TARGET_DIR/release

port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$python" scripts/moto_server.py -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
for _ in $(seq 1 300); do
    if (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
done
export MEDLABEL_AWS_ENDPOINT=http://127.0.0.1:$port

echo "machine: $(getconf _NPROCESSORS_ONLN) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "load before: $(uptime)"
results=$out/lambda.jsonl
: >"$results"

# Each function answers one request that exercises its state where it can.
declare -A request=(
    [info]="GET /info/"
    [datastore]="GET /datastore/?output=stats"
    [session]="GET /session/no-such-session"
    [activelearning]="POST /activelearning/random"
    [infer]="GET /batch/infer"
    [train]="GET /train/"
    [auth]="GET /auth/"
    [logs]="GET /logs/"
)
for name in info datastore session activelearning infer train auth logs dispatcher; do
    file=$bin/$name
    strip -o "$work/$name.stripped" "$file"
    echo "{\"kind\":\"size\",\"bin\":\"$name\",\"bytes\":$(stat -c %s "$file"),\"stripped_bytes\":$(stat -c %s "$work/$name.stripped")}" \
        | tee -a "$results"
    if [[ $name == dispatcher ]]; then
        event=(--raw-event '{"Records":[]}')
    else
        read -r method path <<<"${request[$name]}"
        event=(--method "$method" --path "$path")
        # A new client each run: its next sample is a fresh pick, a durable write.
        if [[ $method == POST ]]; then event+=(--body '{"client_id":"cold-start-{run}"}'); fi
    fi
    "$bin/loadgen" lambda-cold-start --bin "$work/$name.stripped" --runs "$runs" "${event[@]}" \
        | sed "s/^{/{\"kind\":\"cold_start\",\"function\":\"$name\",/" | tee -a "$results"
    case $name in
        info | datastore | activelearning)
            for after in 0 "$tail"; do
                "$bin/loadgen" lambda-cold-start --bin "$work/$name.stripped" --runs "$runs" \
                    --seed-images "$seed" --tail-images "$after" "${event[@]}" \
                    | sed "s/^{/{\"kind\":\"cold_start\",\"function\":\"$name\",/" | tee -a "$results"
            done
            ;;
    esac
done

# arm64 builds from `cargo lambda build --arm64`, if any exist.
for dir in "$CARGO_TARGET_DIR" "$repo/target"; do
    if [[ -d $dir/lambda ]]; then find "$dir/lambda" -name bootstrap -type f; fi
done |
    while read -r boot; do
        echo "{\"kind\":\"arm64_size\",\"path\":\"$boot\",\"arch\":\"$(file -b "$boot" | cut -d, -f2 | xargs)\",\"bytes\":$(stat -c %s "$boot")}"
    done | tee -a "$results"
echo "load after: $(uptime)"

echo
printf '%-15s %10s %10s %6s %6s %10s %10s %10s %s\n' function bytes stripped seed tail init_ms answer_ms own_ms "runs (ms)"
jq -rs '
    (map(select(.kind == "size")) | map({(.bin): .}) | add) as $size
    | .[] | select(.kind == "cold_start")
    | [.function, $size[.function].bytes, $size[.function].stripped_bytes, .seed_images, .tail_images,
       .median_init_ms, .median_answer_ms, .median_own_ms, (.answer_ms | map(tostring) | join(" ")),
       .status_code] | @tsv' "$results" |
    while IFS=$'\t' read -r f b s n t i a o all code; do
        printf '%-15s %10s %10s %6s %6s %10s %10s %10s %s (status %s)\n' "$f" "$b" "$s" "$n" "$t" "$i" "$a" "$o" "$all" "$code"
    done
echo "results: $out"
