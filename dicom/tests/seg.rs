//! DICOM SEG: mask → SEG → mask round trips, what the SEG says, and reading SEGs
//! written by others.

use std::collections::HashMap;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileDicomObject, InMemDicomObject, from_reader};
use medlabel_dicom::synthetic::{SyntheticCt, synthetic_ct_multiframe, synthetic_ct_series};
use medlabel_dicom::{
    DicomError, SegReadOptions, SegWriteOptions, Segment, SegmentAlgorithm, Series, SeriesInfo,
    read_seg, series_to_volume, write_seg,
};
use medlabel_imaging::{Grid, Volume};

fn segments() -> Vec<Segment> {
    vec![
        Segment {
            value: 1,
            label: "liver".into(),
        },
        Segment {
            value: 2,
            label: "spleen".into(),
        },
    ]
}

/// Label 1 on slices 2..5 where HU is in [0, 1000), label 2 from slice 4 on where HU ≥
/// 2500: scattered voxels, slices without either label, slices with both.
fn mask_of(series: &Series) -> Volume<u8> {
    let [cols, rows, _] = series.volume.dims;
    let plane = cols * rows;
    let data = series
        .volume
        .data
        .iter()
        .enumerate()
        .map(|(n, &hu)| {
            let k = n / plane;
            if (2..5).contains(&k) && (0.0..1000.0).contains(&hu) {
                1
            } else if k >= 4 && hu >= 2500.0 {
                2
            } else {
                0
            }
        })
        .collect();
    series.volume.with_data(data)
}

fn parse(bytes: &[u8]) -> FileDicomObject<InMemDicomObject> {
    from_reader(bytes).unwrap()
}

fn text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(['\0', ' '])
        .to_string()
}

fn round_trip(spec: &SyntheticCt, files: Vec<Vec<u8>>) {
    let series = series_to_volume(&files).unwrap();
    let mask = mask_of(&series);
    let written = write_seg(
        &mask,
        &series.info,
        &segments(),
        &SegWriteOptions::default(),
    )
    .unwrap();
    let decoded = read_seg(&written.bytes, &series.info, &SegReadOptions::default()).unwrap();
    assert!(
        decoded.mask == mask,
        "mask differs after the round trip ({spec:?})"
    );
    assert_eq!(decoded.segments, segments());
    assert_eq!(
        decoded.referenced_series,
        vec![series.info.series_instance_uid.clone()]
    );
    // Slices 2, 3, 4 for segment 1; slices 4.. for segment 2 wherever HU ≥ 2500 occurs.
    let plane = mask.dims[0] * mask.dims[1];
    let expected_frames = (1..=2u8)
        .map(|v| mask.data.chunks(plane).filter(|s| s.contains(&v)).count())
        .sum::<usize>();
    assert_eq!(written.frames, expected_frames);
}

#[test]
fn axial_round_trip() {
    let spec = SyntheticCt::default();
    round_trip(&spec, synthetic_ct_series(&spec));
}

#[test]
fn oblique_reversed_round_trip() {
    let spec = SyntheticCt {
        orientation: [0.866025403784439, 0.5, 0.0, 0.0, 0.0, -1.0],
        reversed: true,
        seed: 9,
        ..SyntheticCt::default()
    };
    round_trip(&spec, synthetic_ct_series(&spec));
}

#[test]
fn multiframe_and_odd_sized_frames_round_trip() {
    // 7 × 5 = 35 pixels a frame: frames start mid-byte in the packed 1-bit data.
    let spec = SyntheticCt {
        dims: [7, 5, 12],
        reversed: true,
        seed: 4,
        ..SyntheticCt::default()
    };
    round_trip(&spec, vec![synthetic_ct_multiframe(&spec, false)]);
    round_trip(&spec, synthetic_ct_series(&spec));
}

#[test]
fn seg_references_the_source_and_copies_patient_and_study() {
    let spec = SyntheticCt {
        seed: 2,
        ..SyntheticCt::default()
    };
    let series = series_to_volume(&synthetic_ct_series(&spec)).unwrap();
    let options = SegWriteOptions {
        algorithm: SegmentAlgorithm::Manual,
        ..SegWriteOptions::default()
    };
    let written = write_seg(&mask_of(&series), &series.info, &segments(), &options).unwrap();
    let seg = parse(&written.bytes);
    assert_eq!(
        seg.meta().transfer_syntax(),
        uids::EXPLICIT_VR_LITTLE_ENDIAN
    );
    assert_eq!(text(&seg, tags::SOP_CLASS_UID), uids::SEGMENTATION_STORAGE);
    assert_eq!(text(&seg, tags::MODALITY), "SEG");
    assert_eq!(text(&seg, tags::SEGMENTATION_TYPE), "BINARY");
    assert_eq!(text(&seg, tags::SOP_INSTANCE_UID), written.sop_instance_uid);
    assert_eq!(
        text(&seg, tags::SERIES_INSTANCE_UID),
        written.series_instance_uid
    );
    assert_ne!(written.series_instance_uid, series.info.series_instance_uid);
    assert!(written.series_instance_uid.starts_with("2.25."));
    let info = &series.info;
    assert_eq!(
        text(&seg, tags::STUDY_INSTANCE_UID),
        info.study_instance_uid
    );
    assert_eq!(
        text(&seg, tags::FRAME_OF_REFERENCE_UID),
        info.frame_of_reference_uid
    );
    assert_eq!(text(&seg, tags::PATIENT_ID), info.patient_id);
    assert_eq!(text(&seg, tags::PATIENT_NAME), "Synthetic^CT");
    assert_eq!(
        seg.element(tags::BITS_ALLOCATED)
            .unwrap()
            .to_int::<u16>()
            .unwrap(),
        1
    );

    let referenced = &seg
        .element(tags::REFERENCED_SERIES_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    assert_eq!(
        text(referenced, tags::SERIES_INSTANCE_UID),
        info.series_instance_uid
    );
    let instances = referenced
        .element(tags::REFERENCED_INSTANCE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(instances.len(), info.slices.len());

    let segs = seg
        .element(tags::SEGMENT_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    let labels: Vec<_> = segs.iter().map(|s| text(s, tags::SEGMENT_LABEL)).collect();
    assert_eq!(labels, ["liver", "spleen"]);
    assert_eq!(text(&segs[0], tags::SEGMENT_ALGORITHM_TYPE), "MANUAL");
    assert!(segs[0].get(tags::SEGMENT_ALGORITHM_NAME).is_none());

    // Every frame names the source instance of its slice, at that slice's position.
    let frames = seg
        .element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(frames.len(), written.frames);
    assert_eq!(
        text(&seg, tags::NUMBER_OF_FRAMES),
        written.frames.to_string()
    );
    let first_item =
        |obj: &InMemDicomObject, tag| obj.element(tag).unwrap().items().unwrap()[0].clone();
    for frame in frames {
        let source = first_item(
            &first_item(frame, tags::DERIVATION_IMAGE_SEQUENCE),
            tags::SOURCE_IMAGE_SEQUENCE,
        );
        let sop = text(&source, tags::REFERENCED_SOP_INSTANCE_UID);
        let k = info
            .slices
            .iter()
            .position(|s| s.sop_instance_uid == sop)
            .unwrap();
        let position = first_item(frame, tags::PLANE_POSITION_SEQUENCE)
            .element(tags::IMAGE_POSITION_PATIENT)
            .unwrap()
            .to_multi_float64()
            .unwrap();
        let z = spec.origin[2] + k as f64 * spec.spacing[2];
        assert_eq!(position, vec![spec.origin[0], spec.origin[1], z]);
    }
}

#[test]
fn float_masks_label_names_and_empty_masks() {
    let spec = SyntheticCt {
        seed: 6,
        ..SyntheticCt::default()
    };
    let series = series_to_volume(&synthetic_ct_series(&spec)).unwrap();
    let mask = mask_of(&series);
    // A float label map (what models produce), with the values renamed on the way back.
    let as_float = mask.with_data(mask.data.iter().map(|&v| f32::from(v)).collect());
    let written = write_seg(
        &as_float,
        &series.info,
        &segments(),
        &SegWriteOptions::default(),
    )
    .unwrap();
    let names = HashMap::from([("liver".to_string(), 6u8), ("spleen".to_string(), 5u8)]);
    let options = SegReadOptions {
        label_values: Some(&names),
        ..SegReadOptions::default()
    };
    let decoded = read_seg(&written.bytes, &series.info, &options).unwrap();
    let renamed: Vec<u8> = mask
        .data
        .iter()
        .map(|&v| [0, 6, 5][usize::from(v)])
        .collect();
    assert!(decoded.mask.data == renamed);
    assert_eq!(
        decoded.segments[0],
        Segment {
            value: 6,
            label: "liver".into()
        }
    );
    // A name the table lacks is an error, not a silent segment number.
    let partial = HashMap::from([("liver".to_string(), 1u8)]);
    let options = SegReadOptions {
        label_values: Some(&partial),
        ..SegReadOptions::default()
    };
    let err = read_seg(&written.bytes, &series.info, &options).unwrap_err();
    assert!(err.to_string().contains("\"spleen\""), "{err}");

    let empty = mask.with_data(vec![0u8; mask.len()]);
    let written = write_seg(
        &empty,
        &series.info,
        &segments(),
        &SegWriteOptions::default(),
    )
    .unwrap();
    assert_eq!(written.frames, 1);
    let decoded = read_seg(&written.bytes, &series.info, &SegReadOptions::default()).unwrap();
    assert!(decoded.mask.data.iter().all(|&v| v == 0));
}

#[test]
fn write_rejects_bad_arguments() {
    let series = series_to_volume(&synthetic_ct_series(&SyntheticCt::default())).unwrap();
    let mask = mask_of(&series);
    let write = |mask: &Volume<u8>, segments: &[Segment]| {
        write_seg(mask, &series.info, segments, &SegWriteOptions::default()).unwrap_err()
    };
    let mut shifted = mask.clone();
    shifted.affine[2][3] += 1.0;
    assert!(
        write(&shifted, &segments())
            .to_string()
            .contains("not the source grid")
    );
    let seg = |value: u8, label: &str| Segment {
        value,
        label: label.into(),
    };
    assert!(write(&mask, &[]).to_string().contains("at least one"));
    assert!(
        write(&mask, &[seg(0, "bg")])
            .to_string()
            .contains("value 0")
    );
    assert!(
        write(&mask, &[seg(1, "a"), seg(1, "b")])
            .to_string()
            .contains("twice")
    );
    assert!(
        write(&mask, &[seg(1, "a\\b")])
            .to_string()
            .contains("backslash")
    );
    assert!(
        write(&mask, &[seg(1, &"x".repeat(65))])
            .to_string()
            .contains("64")
    );
}

#[test]
fn read_rejects_other_series_and_other_grids() {
    let spec = SyntheticCt::default();
    let series = series_to_volume(&synthetic_ct_series(&spec)).unwrap();
    let written = write_seg(
        &mask_of(&series),
        &series.info,
        &segments(),
        &SegWriteOptions::default(),
    )
    .unwrap();
    let other = SeriesInfo {
        series_instance_uid: "1.2.3.4".into(),
        ..series.info.clone()
    };
    assert!(matches!(
        read_seg(&written.bytes, &other, &SegReadOptions::default()),
        Err(DicomError::SeriesMismatch { .. })
    ));
    // Same series UID, but a grid shifted by half a slice: frames fall between slices.
    let mut shifted = series.info.clone();
    shifted.grid.affine[2][3] += spec.spacing[2] / 2.0;
    let err = read_seg(&written.bytes, &shifted, &SegReadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("not on a source slice"), "{err}");
    // Not a SEG at all.
    let ct = &synthetic_ct_series(&spec)[0];
    let err = read_seg(ct, &series.info, &SegReadOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("not Segmentation Storage"),
        "{err}"
    );
}

#[test]
fn reads_fractional_segs_with_a_threshold() {
    let spec = SyntheticCt {
        dims: [8, 6, 4],
        ..SyntheticCt::default()
    };
    let series = series_to_volume(&synthetic_ct_series(&spec)).unwrap();
    let mut mask = series.volume.with_data(vec![0u8; series.volume.len()]);
    mask.data[48 + 3] = 1; // slice 1
    let written = write_seg(
        &mask,
        &series.info,
        &segments()[..1],
        &SegWriteOptions::default(),
    )
    .unwrap();
    // Rewrite it as FRACTIONAL: 8-bit, 0..=200, one frame of 48 values.
    let mut seg = parse(&written.bytes);
    let mut values = vec![0u8; 48];
    values[3] = 150; // 0.75: in
    values[4] = 80; // 0.4: out at 0.5, in at 0.3
    for e in [
        DataElement::new(
            tags::SEGMENTATION_TYPE,
            VR::CS,
            PrimitiveValue::from("FRACTIONAL"),
        ),
        DataElement::new(
            tags::SEGMENTATION_FRACTIONAL_TYPE,
            VR::CS,
            PrimitiveValue::from("PROBABILITY"),
        ),
        DataElement::new(
            tags::MAXIMUM_FRACTIONAL_VALUE,
            VR::US,
            PrimitiveValue::from(200u16),
        ),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(8u16)),
        DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(8u16)),
        DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(7u16)),
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(values)),
    ] {
        seg.put(e);
    }
    let mut bytes = Vec::new();
    seg.write_all(&mut bytes).unwrap();
    let decoded = read_seg(&bytes, &series.info, &SegReadOptions::default()).unwrap();
    assert_eq!(decoded.mask.data.iter().positions_of(1), vec![48 + 3]);
    let low = SegReadOptions {
        fractional_threshold: 0.3,
        ..SegReadOptions::default()
    };
    let decoded = read_seg(&bytes, &series.info, &low).unwrap();
    assert_eq!(
        decoded.mask.data.iter().positions_of(1),
        vec![48 + 3, 48 + 4]
    );
}

trait PositionsOf {
    fn positions_of(self, value: u8) -> Vec<usize>;
}

impl<'a, I: Iterator<Item = &'a u8>> PositionsOf for I {
    fn positions_of(self, value: u8) -> Vec<usize> {
        self.enumerate()
            .filter(|(_, v)| **v == value)
            .map(|(i, _)| i)
            .collect()
    }
}

/// pydicom's `liver_1frame.dcm`: a SEG written by dcmqi (one 512 × 512 frame of a
/// liver, reduced to one frame by pydicom's test scripts, without NumberOfFrames).
#[test]
fn reads_a_dcmqi_seg() {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/liver_1frame.dcm"
    ))
    .unwrap();
    // The source grid that the SEG's own geometry describes.
    let spacing = 0.810547;
    let affine_lps = [
        [spacing, 0.0, 0.0, -235.2],
        [0.0, spacing, 0.0, -226.8],
        [0.0, 0.0, 1.0, -128.69],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let source = SeriesInfo {
        study_instance_uid: String::new(),
        series_instance_uid: "1.2.392.200103.20080913.113635.1.2009.6.22.21.43.10.23430.1".into(),
        frame_of_reference_uid: String::new(),
        modality: "CT".into(),
        patient_id: String::new(),
        patient_name: String::new(),
        patient_birth_date: String::new(),
        patient_sex: String::new(),
        study_date: String::new(),
        study_time: String::new(),
        study_id: String::new(),
        accession_number: String::new(),
        referring_physician_name: String::new(),
        rows: 512,
        columns: 512,
        slices: vec![medlabel_dicom::SliceRef {
            sop_class_uid: uids::CT_IMAGE_STORAGE.into(),
            sop_instance_uid: "1.2.392.200103.20080913.113635.2.2009.6.22.21.43.10.23433.1".into(),
            frame_number: None,
        }],
        grid: Grid {
            dims: [512, 512, 1],
            affine: medlabel_dicom::flip_lps_ras(&affine_lps),
        },
    };
    let decoded = read_seg(&bytes, &source, &SegReadOptions::default()).unwrap();
    assert_eq!(
        decoded.segments,
        vec![Segment {
            value: 1,
            label: "Liver".into()
        }]
    );
    // pydicom counts 36233 liver pixels; the first are at row 145, columns 254..
    assert_eq!(decoded.mask.data.iter().filter(|&&v| v == 1).count(), 36233);
    assert_eq!(decoded.mask.get(254, 145, 0), 1);
    assert_eq!(decoded.mask.get(253, 145, 0), 0);
}
