#!/usr/bin/env bash
# Regenerates the compressed synthetic fixtures from the crate's own generator with
# DCMTK (Debian package dcmtk): the first two slices of the default synthetic CT
# series, seed 21, as JPEG Lossless SV1 (dcmcjpeg's default) and RLE Lossless.
# Also the whole series as one enhanced multi-frame instance, in JPEG Lossless split
# into 1 KiB fragments (two per frame, found through the Basic Offset Table) and in RLE.
# tests/codecs.rs compares their decoded voxels with the generator's volume.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cargo run -q -p medlabel-dicom --example write_synthetic -- "$tmp" 21
for n in 1 2; do
    dcmcjpeg "$tmp/000$n.dcm" "$here/synthetic21_jpeg_lossless_$n.dcm"
    dcmcrle "$tmp/000$n.dcm" "$here/synthetic21_rle_$n.dcm"
done
cargo run -q -p medlabel-dicom --example write_synthetic -- "$tmp" 21 --multiframe
dcmcjpeg +fs 1 "$tmp/multiframe.dcm" "$here/synthetic21_multiframe_jpeg_lossless_fragmented.dcm"
dcmcrle "$tmp/multiframe.dcm" "$here/synthetic21_multiframe_rle.dcm"
