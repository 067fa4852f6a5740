#!/usr/bin/env python3
"""Cross-checks a medlabel SEG with independent readers: pydicom and highdicom.

Usage: check_seg.py SEG_FILE SOURCE_DIR

Loads the SEG with highdicom (which validates the Segmentation IOD structure it
needs: segment descriptions, per-frame functional groups, referenced instances) and
prints, as JSON, what it sees: segment labels, the referenced series, and for each
segment the number of voxels on each source instance. The Rust test
`tests/python_cross_check.rs` compares that with the mask it wrote. Test tooling
only (pip: pydicom==3.0.2 highdicom numpy); nothing in the crate runs Python.
"""

import json
import pathlib
import sys

import highdicom as hd
import pydicom


def main() -> None:
    seg_path, source_dir = sys.argv[1], pathlib.Path(sys.argv[2])
    raw = pydicom.dcmread(seg_path)
    # pydicom unpacks the 1-bit frames on its own: one (rows, cols) array per frame.
    frames = raw.pixel_array.reshape(-1, raw.Rows, raw.Columns)
    assert frames.shape[0] == int(raw.NumberOfFrames), frames.shape

    seg = hd.seg.Segmentation.from_dataset(raw)
    sources = {
        str(ds.SOPInstanceUID): ds
        for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(source_dir.iterdir()))
    }
    referenced = [uid for _, _, uid in seg.get_source_image_uids()]
    assert set(referenced) <= set(sources), "SEG references instances not in the series"
    numbers = list(seg.segment_numbers)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=referenced,
        segment_numbers=numbers,
        combine_segments=False,
    )
    voxels = {
        str(n): {uid: int(pixels[i, :, :, s].sum()) for i, uid in enumerate(referenced)}
        for s, n in enumerate(numbers)
    }
    print(
        json.dumps(
            {
                "segments": [seg.get_segment_description(n).segment_label for n in numbers],
                "referenced_series": [str(r.SeriesInstanceUID) for r in raw.ReferencedSeriesSequence],
                "frames": int(raw.NumberOfFrames),
                "voxels": voxels,
            }
        )
    )


if __name__ == "__main__":
    main()
