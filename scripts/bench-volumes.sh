#!/usr/bin/env bash
# Time to upload and download CT-sized volumes (50 MB and 300 MB) through the local
# server and through the cloud path on the AWS emulator.
#
#   bash scripts/bench-volumes.sh [OUT_DIR]
#
# Builds release `medlabel` (or takes it from BENCH_BIN) and writes one gzip'd int16
# NIfTI of noise per size (noise does not compress: the file is as large as a CT of
# that size). Then, RUNS times each, with curl as the client on loopback:
# - local: `medlabel serve --studies` (SQLite + folder) without a runner: the stock
#   client's multipart `PUT /datastore/?image=`, and `GET /datastore/image` streamed.
# - cloud: `medlabel serve --backend aws` (the volume service) on a fresh DynamoDB table
#   and S3 bucket of moto (scripts/moto_server.py, a Python process: S3 here is moto,
#   not AWS): the same PUT through the service; `GET /datastore/image` as a redirect
#   follower (`curl -L` with Slicer's urllib User-Agent: 307, then the presigned GET from
#   the emulator) and as a client that does not follow (streamed by the service); and a
#   presigned upload (`POST /datastore/upload`, PUT to the URL, confirm), the path the
#   Lambda front takes for any upload above 6 MB.
# Every upload goes under a new image id, so each is a real write. Prints a table of
# the median and the spread (min-max) in seconds and writes OUT_DIR/volumes.jsonl.
#
# Knobs: BENCH_SIZES ("50 300", MB), BENCH_RUNS (3), MEDLABEL_PY (the venv python,
# with nibabel and moto), BENCH_BIN (a folder holding a release `medlabel`).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/medlabel/target}
python=${MEDLABEL_PY:-$HOME/.cache/medlabel/py/bin/python}
sizes=${BENCH_SIZES:-"50 300"}
runs=${BENCH_RUNS:-3}
out=${1:-$(mktemp -d)}
mkdir -p "$out"
work=$(mktemp -d)
pids=()

cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

if [[ -n ${BENCH_BIN:-} ]]; then
    bin=$(cd "$BENCH_BIN" && pwd)
else
    cargo build --release -p medlabel-functions --bin medlabel >&2
    bin=$CARGO_TARGET_DIR/release
fi

free_port() {
    "$python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
}

# Waits for "... at http://ADDR/" in LOG; prints the URL without the slash.
wait_url() { # LOG
    for _ in $(seq 1 6000); do
        if line=$(grep -m1 -o 'at http://[^ ]*' "$1" 2>/dev/null); then
            echo "${line#at }" | sed 's#/$##'
            return
        fi
        sleep 0.05
    done
    echo "bench-volumes: no server address in $1" >&2
    cat "$1" >&2
    exit 1
}

# Seconds curl took for one request; fails on an HTTP error.
timed() { # curl args...
    curl -sS --fail-with-body -o /dev/null -w '%{time_total}' "$@"
}

record() { # SIZE PATH OP SECONDS
    printf '{"size_mb": %s, "path": "%s", "op": "%s", "seconds": %s}\n' "$1" "$2" "$3" "$4" \
        >>"$out/volumes.jsonl"
}

# AWS emulator (one request at a time, as in the tests).
moto_port=$(free_port)
"$python" scripts/moto_server.py -H 127.0.0.1 -p "$moto_port" >"$work/moto.log" 2>&1 &
pids+=($!)
export AWS_ENDPOINT_URL=http://127.0.0.1:$moto_port AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true
for _ in $(seq 1 300); do
    curl -s -o /dev/null "$AWS_ENDPOINT_URL/_medlabel/busy" && break
    sleep 0.1
done
table=medlabel-bench-events bucket=medlabel-bench-blobs
"$python" - "$table" "$bucket" <<'EOF'
import sys, boto3
table, bucket = sys.argv[1:]
boto3.client("s3").create_bucket(Bucket=bucket)
boto3.client("dynamodb").create_table(
    TableName=table, BillingMode="PAY_PER_REQUEST",
    AttributeDefinitions=[{"AttributeName": n, "AttributeType": t} for n, t in
        [("stream", "S"), ("sequence", "N"), ("pos_bucket", "S"), ("position", "N")]],
    KeySchema=[{"AttributeName": "stream", "KeyType": "HASH"},
               {"AttributeName": "sequence", "KeyType": "RANGE"}],
    GlobalSecondaryIndexes=[{"IndexName": "by_position", "Projection": {"ProjectionType": "ALL"},
        "KeySchema": [{"AttributeName": "pos_bucket", "KeyType": "HASH"},
                      {"AttributeName": "position", "KeyType": "RANGE"}]}],
    StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"})
EOF

mkdir -p "$work/studies"
"$bin/medlabel" serve --studies "$work/studies" --host 127.0.0.1 --port 0 \
    --runner /nonexistent >"$work/local.log" 2>&1 &
pids+=($!)
local_url=$(wait_url "$work/local.log")
"$bin/medlabel" serve --backend aws --table "$table" --bucket "$bucket" \
    --host 127.0.0.1 --port 0 >"$work/cloud.log" 2>&1 &
pids+=($!)
cloud_url=$(wait_url "$work/cloud.log")

for size in $sizes; do
    file=$work/ct_$size.nii.gz
    "$python" - "$file" "$size" <<'EOF'
import sys
import nibabel as nib
import numpy as np
path, megabytes = sys.argv[1], int(sys.argv[2])
slices = megabytes * 1_000_000 // (2 * 512 * 512) + 1
ct = np.random.default_rng(3).integers(-1000, 1000, size=(512, 512, slices), dtype=np.int16)
nib.save(nib.Nifti1Image(ct, np.diag([0.8, 0.8, 1.5, 1.0])), path)
EOF
    echo "bench-volumes: $(stat -c %s "$file") bytes for $size MB" >&2
    for run in $(seq 1 "$runs"); do
        id=ct_${size}_$run
        for target in local cloud; do
            url=local_url
            [[ $target == cloud ]] && url=cloud_url
            url=${!url}
            record "$size" "$target" put "$(timed -X PUT -F "file=@$file;filename=$id.nii.gz" \
                "$url/datastore/?image=$id")"
            record "$size" "$target" get-stream "$(timed "$url/datastore/image?image=$id")"
        done
        record "$size" cloud get-redirect "$(timed -L -A 'Python-urllib/3.12' \
            "$cloud_url/datastore/image?image=ct_${size}_$run")"
        # Presigned upload: start, PUT to S3, confirm.
        started=$(date +%s%N)
        upload=$(curl -sS --fail-with-body -X POST "$cloud_url/datastore/upload")
        upload_id=$("$python" -c 'import json,sys; print(json.load(sys.stdin)["upload_id"])' <<<"$upload")
        put_url=$("$python" -c 'import json,sys; print(json.load(sys.stdin)["url"])' <<<"$upload")
        curl -sS --fail-with-body -o /dev/null -T "$file" "$put_url"
        curl -sS --fail-with-body -o /dev/null -X POST -H 'content-type: application/json' -d '{}' \
            "$cloud_url/datastore/upload/$upload_id/image?image=pre_${size}_$run&ext=.nii.gz"
        record "$size" cloud put-presigned \
            "$(awk -v ns=$(($(date +%s%N) - started)) 'BEGIN { printf "%.3f", ns / 1e9 }')"
    done
done

"$python" - "$out/volumes.jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
keys = sorted({(r["size_mb"], r["path"], r["op"]) for r in rows})
print("| size | path | operation | median s | min-max s | MB/s (median) |")
print("|---|---|---|---|---|---|")
for size, path, op in keys:
    t = [r["seconds"] for r in rows if (r["size_mb"], r["path"], r["op"]) == (size, path, op)]
    med = statistics.median(t)
    print(f"| {size} MB | {path} | {op} | {med:.2f} | {min(t):.2f}-{max(t):.2f} | {size / med:.0f} |")
EOF
