//! DICOM Segmentation (SEG) objects: a label volume to a binary SEG on the grid of its
//! source series, and a SEG (binary or fractional) back onto that grid.

use std::collections::HashMap;

use dicom_core::value::C;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use medlabel_imaging::affine::{apply, invert, max_abs_diff};
use medlabel_imaging::{GRID_TOLERANCE, ReadLimits, Volume};

use crate::DicomError;
use crate::attrs::Attrs;
use crate::encode::{code, ds_elem, item, new_uid, part10, seq_elem, str_elem, us_elem};
use crate::geometry::{ORIENTATION_TOLERANCE, PIXEL_SPACING_TOLERANCE, flip_lps_ras};
use crate::parse::{PixelData, parse};
use crate::pixels::{PixelFormat, decode_frame};
use crate::series::SeriesInfo;

/// One segment: the label value it has in a mask, and its name (SegmentLabel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub value: u8,
    pub label: String,
}

/// SegmentAlgorithmType, with the algorithm's name where the standard needs one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentAlgorithm {
    /// A model's prediction, unedited.
    Automatic { name: String },
    /// A prediction an annotator edited (MONAI Label's interactive models).
    SemiAutomatic { name: String },
    /// Drawn by hand.
    Manual,
}

/// Descriptive attributes of a written SEG.
#[derive(Debug, Clone, PartialEq)]
pub struct SegWriteOptions {
    pub algorithm: SegmentAlgorithm,
    pub series_description: String,
    pub series_number: u32,
    /// ContentLabel: a CS value (upper case, digits, space, underscore; 16 chars).
    pub content_label: String,
    /// ContentCreatorName (PN), empty for none.
    pub content_creator_name: String,
}

impl Default for SegWriteOptions {
    fn default() -> Self {
        Self {
            algorithm: SegmentAlgorithm::Automatic {
                name: "medlabel".into(),
            },
            series_description: "Segmentation".into(),
            series_number: 300,
            content_label: "SEGMENTATION".into(),
            content_creator_name: String::new(),
        }
    }
}

/// A written SEG and the UIDs the datastore needs to find it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenSeg {
    /// The Part 10 file.
    pub bytes: Vec<u8>,
    pub series_instance_uid: String,
    pub sop_instance_uid: String,
    /// Number of frames written.
    pub frames: usize,
}

const CATEGORY: (&str, &str, &str) = ("91723000", "SCT", "Anatomical Structure");
const PROPERTY_TYPE: (&str, &str, &str) = ("85756007", "SCT", "Tissue");

/// Writes `mask` (on the grid of `source`) as a binary SEG with one segment per entry
/// of `segments`; voxels whose value is in no segment are background.
///
/// One Segmentation instance (SOP class 1.2.840.10008.5.1.4.1.1.66.4, explicit VR
/// little endian, `SegmentationType` BINARY, 1-bit pixels packed across frames as the
/// standard requires) with:
///
/// * one segment per [`Segment`]: SegmentNumber 1, 2, ... in the order given,
///   SegmentLabel the name, the algorithm type and name from [`SegWriteOptions`], and
///   generic codes (category SCT 91723000 "Anatomical Structure", type SCT 85756007
///   "Tissue"), since a model's label names are free text;
/// * one frame per (segment, slice) holding at least one voxel of that segment, in
///   segment then slice order. Empty frames are left out, as most writers do, which
///   keeps a SEG of a small organ in a 300-slice CT small. A mask with no voxel at all
///   still gets one empty frame (segment 1, first slice), because a SEG needs a frame;
/// * per frame: PlanePositionSequence (the source slice's position), the segment
///   number, DimensionIndexValues (segment, slice), and DerivationImageSequence /
///   SourceImageSequence naming the source instance (and frame), with
///   SpatialLocationsPreserved YES;
/// * shared: PlaneOrientationSequence and PixelMeasuresSequence of the source grid;
/// * ReferencedSeriesSequence naming the source series and its instances, the source's
///   FrameOfReferenceUID, patient and study attributes copied from the source, new
///   `2.25.` UIDs for the series and instance.
///
/// Fails with [`DicomError::InvalidArgument`] when the mask is not on the source grid,
/// a segment value is 0 or repeated, or a label is empty, longer than 64 characters or
/// holds a backslash or control character.
pub fn write_seg<T: Copy + Into<f64>>(
    mask: &Volume<T>,
    source: &SeriesInfo,
    segments: &[Segment],
    options: &SegWriteOptions,
) -> Result<WrittenSeg, DicomError> {
    check_segments(segments)?;
    let diff = max_abs_diff(&mask.affine, &source.grid.affine);
    if mask.dims != source.grid.dims || diff.is_nan() || diff > GRID_TOLERANCE {
        return Err(DicomError::InvalidArgument(format!(
            "mask grid {:?} is not the source grid {:?} (affines differ by {diff} mm)",
            mask.dims, source.grid.dims
        )));
    }
    let [cols, rows, slices] = mask.dims;
    if source.slices.len() != slices || source.rows != rows || source.columns != cols {
        return Err(DicomError::InvalidArgument(format!(
            "SeriesInfo lists {} slices of {}×{}, the grid has {slices} of {rows}×{cols}",
            source.slices.len(),
            source.rows,
            source.columns
        )));
    }

    // Frames: (segment number, slice), and their bits packed back to back.
    let plane = rows * cols;
    let mut frames: Vec<(u16, usize)> = Vec::new();
    let mut bits = BitPacker::default();
    for (s, segment) in segments.iter().enumerate() {
        let value = f64::from(segment.value);
        for (k, slice) in mask.data.chunks_exact(plane).enumerate() {
            if slice.iter().any(|&v| v.into() == value) {
                frames.push((s as u16 + 1, k));
                bits.push_all(slice.iter().map(|&v| v.into() == value));
            }
        }
    }
    if frames.is_empty() {
        frames.push((1, 0));
        bits.push_all(std::iter::repeat_n(false, plane));
    }

    let lps = flip_lps_ras(&source.grid.affine);
    let column = |c: usize| [lps[0][c], lps[1][c], lps[2][c]];
    let length = |v: [f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    let (row_dir, col_dir, step) = (column(0), column(1), column(2));
    let (col_spacing, row_spacing) = (length(row_dir), length(col_dir));
    let orientation: Vec<f64> = row_dir
        .iter()
        .map(|v| v / col_spacing)
        .chain(col_dir.iter().map(|v| v / row_spacing))
        .collect();
    let slice_spacing = length(step);

    let series_uid = new_uid();
    let sop_uid = new_uid();
    let dimension_uid = new_uid();
    let frame_of_reference = if source.frame_of_reference_uid.is_empty() {
        new_uid()
    } else {
        source.frame_of_reference_uid.clone()
    };
    let now = time::OffsetDateTime::now_utc();
    let date = format!(
        "{:04}{:02}{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    );
    let time = format!("{:02}{:02}{:02}", now.hour(), now.minute(), now.second());

    let (algorithm_type, algorithm_name) = match &options.algorithm {
        SegmentAlgorithm::Automatic { name } => ("AUTOMATIC", Some(name)),
        SegmentAlgorithm::SemiAutomatic { name } => ("SEMIAUTOMATIC", Some(name)),
        SegmentAlgorithm::Manual => ("MANUAL", None),
    };
    let segment_items = segments
        .iter()
        .enumerate()
        .map(|(s, segment)| {
            let mut elements = vec![
                us_elem(tags::SEGMENT_NUMBER, s as u16 + 1),
                str_elem(tags::SEGMENT_LABEL, VR::LO, &segment.label),
                str_elem(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, algorithm_type),
                seq_elem(
                    tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
                    vec![code(CATEGORY.0, CATEGORY.1, CATEGORY.2)],
                ),
                seq_elem(
                    tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
                    vec![code(PROPERTY_TYPE.0, PROPERTY_TYPE.1, PROPERTY_TYPE.2)],
                ),
            ];
            if let Some(name) = algorithm_name {
                elements.push(str_elem(tags::SEGMENT_ALGORITHM_NAME, VR::LO, name));
            }
            item(elements)
        })
        .collect();

    let per_frame = frames
        .iter()
        .map(|&(segment, k)| {
            let slice = &source.slices[k];
            let mut reference = vec![
                str_elem(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &slice.sop_class_uid),
                str_elem(
                    tags::REFERENCED_SOP_INSTANCE_UID,
                    VR::UI,
                    &slice.sop_instance_uid,
                ),
                seq_elem(
                    tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                    vec![code(
                        "121322",
                        "DCM",
                        "Source image for image processing operation",
                    )],
                ),
                // Frames are the source slices' pixels, so readers such as highdicom
                // may index them by source instance.
                str_elem(tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES"),
            ];
            if let Some(frame) = slice.frame_number {
                reference.push(str_elem(
                    tags::REFERENCED_FRAME_NUMBER,
                    VR::IS,
                    &frame.to_string(),
                ));
            }
            let position = apply(&lps, [0.0, 0.0, k as f64]);
            item([
                seq_elem(
                    tags::DERIVATION_IMAGE_SEQUENCE,
                    vec![item([
                        seq_elem(tags::SOURCE_IMAGE_SEQUENCE, vec![item(reference)]),
                        seq_elem(
                            tags::DERIVATION_CODE_SEQUENCE,
                            vec![code("113076", "DCM", "Segmentation")],
                        ),
                    ])],
                ),
                seq_elem(
                    tags::FRAME_CONTENT_SEQUENCE,
                    vec![item([DataElement::new(
                        tags::DIMENSION_INDEX_VALUES,
                        VR::UL,
                        PrimitiveValue::U32(C::from_slice(&[u32::from(segment), k as u32 + 1])),
                    )])],
                ),
                seq_elem(
                    tags::PLANE_POSITION_SEQUENCE,
                    vec![item([ds_elem(tags::IMAGE_POSITION_PATIENT, &position)])],
                ),
                seq_elem(
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    vec![item([us_elem(tags::REFERENCED_SEGMENT_NUMBER, segment)])],
                ),
            ])
        })
        .collect();

    let shared = item([
        seq_elem(
            tags::PLANE_ORIENTATION_SEQUENCE,
            vec![item([ds_elem(
                tags::IMAGE_ORIENTATION_PATIENT,
                &orientation,
            )])],
        ),
        seq_elem(
            tags::PIXEL_MEASURES_SEQUENCE,
            vec![item([
                ds_elem(tags::PIXEL_SPACING, &[row_spacing, col_spacing]),
                ds_elem(tags::SLICE_THICKNESS, &[slice_spacing]),
                ds_elem(tags::SPACING_BETWEEN_SLICES, &[slice_spacing]),
            ])],
        ),
    ]);

    let dimension = |pointer: Tag, group: Tag, label: &str| {
        item([
            str_elem(tags::DIMENSION_ORGANIZATION_UID, VR::UI, &dimension_uid),
            DataElement::new(
                tags::DIMENSION_INDEX_POINTER,
                VR::AT,
                PrimitiveValue::from(pointer),
            ),
            DataElement::new(
                tags::FUNCTIONAL_GROUP_POINTER,
                VR::AT,
                PrimitiveValue::from(group),
            ),
            str_elem(tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label),
        ])
    };

    let mut referenced_instances: Vec<InMemDicomObject> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for slice in &source.slices {
        if seen.insert(&slice.sop_instance_uid) {
            referenced_instances.push(item([
                str_elem(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &slice.sop_class_uid),
                str_elem(
                    tags::REFERENCED_SOP_INSTANCE_UID,
                    VR::UI,
                    &slice.sop_instance_uid,
                ),
            ]));
        }
    }

    let mut pixel_bytes = bits.bytes;
    if pixel_bytes.len() % 2 == 1 {
        pixel_bytes.push(0);
    }
    let obj = InMemDicomObject::from_element_iter([
        str_elem(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
        str_elem(tags::IMAGE_TYPE, VR::CS, "DERIVED\\PRIMARY"),
        str_elem(tags::SOP_CLASS_UID, VR::UI, uids::SEGMENTATION_STORAGE),
        str_elem(tags::SOP_INSTANCE_UID, VR::UI, &sop_uid),
        str_elem(tags::STUDY_DATE, VR::DA, &source.study_date),
        str_elem(tags::SERIES_DATE, VR::DA, &date),
        str_elem(tags::CONTENT_DATE, VR::DA, &date),
        str_elem(tags::STUDY_TIME, VR::TM, &source.study_time),
        str_elem(tags::SERIES_TIME, VR::TM, &time),
        str_elem(tags::CONTENT_TIME, VR::TM, &time),
        str_elem(tags::ACCESSION_NUMBER, VR::SH, &source.accession_number),
        str_elem(tags::MODALITY, VR::CS, "SEG"),
        str_elem(tags::MANUFACTURER, VR::LO, "medlabel"),
        str_elem(
            tags::REFERRING_PHYSICIAN_NAME,
            VR::PN,
            &source.referring_physician_name,
        ),
        str_elem(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            &options.series_description,
        ),
        str_elem(tags::MANUFACTURER_MODEL_NAME, VR::LO, "medlabel"),
        seq_elem(
            tags::REFERENCED_SERIES_SEQUENCE,
            vec![item([
                seq_elem(tags::REFERENCED_INSTANCE_SEQUENCE, referenced_instances),
                str_elem(
                    tags::SERIES_INSTANCE_UID,
                    VR::UI,
                    &source.series_instance_uid,
                ),
            ])],
        ),
        str_elem(tags::PATIENT_NAME, VR::PN, &source.patient_name),
        str_elem(tags::PATIENT_ID, VR::LO, &source.patient_id),
        str_elem(tags::PATIENT_BIRTH_DATE, VR::DA, &source.patient_birth_date),
        str_elem(tags::PATIENT_SEX, VR::CS, &source.patient_sex),
        str_elem(tags::DEVICE_SERIAL_NUMBER, VR::LO, "0"),
        str_elem(tags::SOFTWARE_VERSIONS, VR::LO, env!("CARGO_PKG_VERSION")),
        str_elem(tags::STUDY_INSTANCE_UID, VR::UI, &source.study_instance_uid),
        str_elem(tags::SERIES_INSTANCE_UID, VR::UI, &series_uid),
        str_elem(tags::STUDY_ID, VR::SH, &source.study_id),
        str_elem(
            tags::SERIES_NUMBER,
            VR::IS,
            &options.series_number.to_string(),
        ),
        str_elem(tags::INSTANCE_NUMBER, VR::IS, "1"),
        str_elem(tags::FRAME_OF_REFERENCE_UID, VR::UI, &frame_of_reference),
        str_elem(tags::POSITION_REFERENCE_INDICATOR, VR::LO, ""),
        seq_elem(
            tags::DIMENSION_ORGANIZATION_SEQUENCE,
            vec![item([str_elem(
                tags::DIMENSION_ORGANIZATION_UID,
                VR::UI,
                &dimension_uid,
            )])],
        ),
        seq_elem(
            tags::DIMENSION_INDEX_SEQUENCE,
            vec![
                dimension(
                    tags::REFERENCED_SEGMENT_NUMBER,
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    "ReferencedSegmentNumber",
                ),
                dimension(
                    tags::IMAGE_POSITION_PATIENT,
                    tags::PLANE_POSITION_SEQUENCE,
                    "ImagePositionPatient",
                ),
            ],
        ),
        us_elem(tags::SAMPLES_PER_PIXEL, 1),
        str_elem(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        str_elem(tags::NUMBER_OF_FRAMES, VR::IS, &frames.len().to_string()),
        us_elem(tags::ROWS, rows as u16),
        us_elem(tags::COLUMNS, cols as u16),
        us_elem(tags::BITS_ALLOCATED, 1),
        us_elem(tags::BITS_STORED, 1),
        us_elem(tags::HIGH_BIT, 0),
        us_elem(tags::PIXEL_REPRESENTATION, 0),
        str_elem(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        str_elem(tags::CONTENT_LABEL, VR::CS, &options.content_label),
        str_elem(tags::CONTENT_DESCRIPTION, VR::LO, "medlabel segmentation"),
        str_elem(
            tags::CONTENT_CREATOR_NAME,
            VR::PN,
            &options.content_creator_name,
        ),
        str_elem(tags::SEGMENTATION_TYPE, VR::CS, "BINARY"),
        str_elem(tags::SEGMENTS_OVERLAP, VR::CS, "NO"),
        seq_elem(tags::SEGMENT_SEQUENCE, segment_items),
        seq_elem(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]),
        seq_elem(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame),
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(pixel_bytes)),
    ]);
    Ok(WrittenSeg {
        bytes: part10(obj, uids::EXPLICIT_VR_LITTLE_ENDIAN)?,
        series_instance_uid: series_uid,
        sop_instance_uid: sop_uid,
        frames: frames.len(),
    })
}

fn check_segments(segments: &[Segment]) -> Result<(), DicomError> {
    let invalid = |detail: String| Err(DicomError::InvalidArgument(detail));
    if segments.is_empty() {
        return invalid("a SEG needs at least one segment".into());
    }
    let mut values = std::collections::HashSet::new();
    for s in segments {
        if s.value == 0 {
            return invalid(format!("segment {:?} has value 0, the background", s.label));
        }
        if !values.insert(s.value) {
            return invalid(format!("label value {} is given twice", s.value));
        }
        if s.label.is_empty()
            || s.label.chars().count() > 64
            || s.label.chars().any(|c| c == '\\' || c.is_control())
        {
            return invalid(format!(
                "segment label {:?} must be 1 to 64 characters without backslash or \
                 control characters",
                s.label
            ));
        }
    }
    Ok(())
}

/// Packs booleans into bytes, least significant bit first, with no padding between
/// frames (the layout of 1-bit DICOM pixel data).
#[derive(Default)]
struct BitPacker {
    bytes: Vec<u8>,
    bits: usize,
}

impl BitPacker {
    fn push_all(&mut self, values: impl Iterator<Item = bool>) {
        for v in values {
            if self.bits.is_multiple_of(8) {
                self.bytes.push(0);
            }
            if v {
                *self.bytes.last_mut().expect("pushed above") |= 1 << (self.bits % 8);
            }
            self.bits += 1;
        }
    }
}

/// How [`read_seg`] maps segments to label values and thresholds fractional SEGs.
#[derive(Debug, Clone, PartialEq)]
pub struct SegReadOptions<'a> {
    /// SegmentLabel → label value (a model's label names). When given, every segment's
    /// label must be in it; when `None`, a segment's value is its SegmentNumber.
    pub label_values: Option<&'a HashMap<String, u8>>,
    /// A FRACTIONAL SEG's voxel belongs to the segment when value / MaximumFractionalValue
    /// is at least this.
    pub fractional_threshold: f32,
}

impl Default for SegReadOptions<'_> {
    fn default() -> Self {
        Self {
            label_values: None,
            fractional_threshold: 0.5,
        }
    }
}

/// A SEG decoded onto its source grid.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedSeg {
    /// Label values on the source series' grid (0 is background).
    pub mask: Volume<u8>,
    /// The segments in SegmentNumber order, with the value each has in `mask`.
    pub segments: Vec<Segment>,
    /// The SeriesInstanceUID(s) in the SEG's ReferencedSeriesSequence.
    pub referenced_series: Vec<String>,
}

/// Decodes a SEG onto the grid of `source`, the series it was drawn on.
///
/// BINARY (1-bit, native) and FRACTIONAL (8-bit, native or compressed by a supported
/// codec, thresholded) SEGs. Frames are placed by their PlanePositionSequence on the
/// source grid (they must fall on a slice, with the source's orientation, spacing and
/// size), or, lacking a position, by the source instance they reference. Where
/// segments overlap, the higher segment number wins.
///
/// Fails with [`DicomError::SeriesMismatch`] if the SEG does not reference
/// `source.series_instance_uid`, and [`DicomError::InvalidSeg`] if it is not a
/// Segmentation, or a frame does not land on a slice of the source grid.
pub fn read_seg(
    bytes: &[u8],
    source: &SeriesInfo,
    options: &SegReadOptions<'_>,
) -> Result<DecodedSeg, DicomError> {
    let inst = parse(bytes, 0, &ReadLimits::default())?;
    let a = Attrs::new(&inst.header, &inst.label);
    let invalid = |detail: String| DicomError::InvalidSeg(format!("{}: {detail}", inst.label));
    let sop_class = a.string(tags::SOP_CLASS_UID);
    if sop_class != uids::SEGMENTATION_STORAGE {
        return Err(invalid(format!(
            "SOPClassUID {sop_class} is not Segmentation Storage"
        )));
    }
    let referenced_series: Vec<String> = a
        .items(tags::REFERENCED_SERIES_SEQUENCE)
        .iter()
        .map(|i| a.with(i).string(tags::SERIES_INSTANCE_UID))
        .collect();
    if !referenced_series.contains(&source.series_instance_uid) {
        return Err(DicomError::SeriesMismatch {
            referenced: referenced_series,
            source_series: source.series_instance_uid.clone(),
        });
    }

    let segments = read_segments(&a, options.label_values)?;
    let value_of = |number: u16| {
        segments
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, s)| s.value)
            .ok_or_else(|| {
                invalid(format!(
                    "a frame references segment {number}, not in SegmentSequence"
                ))
            })
    };

    let rows = a.required_u32(tags::ROWS, "Rows")? as usize;
    let cols = a.required_u32(tags::COLUMNS, "Columns")? as usize;
    if (rows, cols) != (source.rows, source.columns) {
        return Err(invalid(format!(
            "frames are {rows}×{cols}, the source slices {}×{}",
            source.rows, source.columns
        )));
    }
    let fractional = match a.string(tags::SEGMENTATION_TYPE).as_str() {
        "BINARY" => None,
        "FRACTIONAL" => {
            let max = a.required_u32(tags::MAXIMUM_FRACTIONAL_VALUE, "MaximumFractionalValue")?;
            Some(options.fractional_threshold * max as f32)
        }
        other => {
            return Err(invalid(format!(
                "SegmentationType {other:?} is not BINARY or FRACTIONAL"
            )));
        }
    };
    // dcmqi and pydicom's single-frame examples omit NumberOfFrames: one frame.
    let frames = a
        .optional_u32(tags::NUMBER_OF_FRAMES, "NumberOfFrames")?
        .unwrap_or(1) as usize;
    let per_frame = a.items(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    if per_frame.len() < frames {
        return Err(invalid(format!(
            "{frames} frames but {} PerFrameFunctionalGroupsSequence items",
            per_frame.len()
        )));
    }
    let shared = a.item(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let grid = SourceGrid::new(source)?;

    // (segment number, slice) of every frame.
    let placed = per_frame[..frames]
        .iter()
        .enumerate()
        .map(|(f, item)| {
            let item = a.with(item);
            let group = |seq| item.item(seq).or_else(|| shared.and_then(|s| s.item(seq)));
            let segment = group(tags::SEGMENT_IDENTIFICATION_SEQUENCE)
                .ok_or_else(|| {
                    invalid(format!(
                        "frame {} has no SegmentIdentificationSequence",
                        f + 1
                    ))
                })?
                .required_u32(tags::REFERENCED_SEGMENT_NUMBER, "ReferencedSegmentNumber")?;
            let segment = u16::try_from(segment)
                .map_err(|_| invalid(format!("frame {} has segment number {segment}", f + 1)))?;
            if let Some(o) = group(tags::PLANE_ORIENTATION_SEQUENCE) {
                grid.check_orientation(
                    &o.required_floats(tags::IMAGE_ORIENTATION_PATIENT, "ImageOrientationPatient")?,
                )
                .map_err(|d| invalid(format!("frame {}: {d}", f + 1)))?;
            }
            if let Some(m) = group(tags::PIXEL_MEASURES_SEQUENCE) {
                grid.check_spacing(&m.required_floats(tags::PIXEL_SPACING, "PixelSpacing")?)
                    .map_err(|d| invalid(format!("frame {}: {d}", f + 1)))?;
            }
            let k = match group(tags::PLANE_POSITION_SEQUENCE) {
                Some(p) => grid
                    .slice_at(
                        &p.required_floats(tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient")?,
                    )
                    .map_err(|d| invalid(format!("frame {}: {d}", f + 1)))?,
                None => slice_of_source(&item, source).ok_or_else(|| {
                    invalid(format!(
                        "frame {} has no position and references no source slice",
                        f + 1
                    ))
                })?,
            };
            Ok((segment, k, f))
        })
        .collect::<Result<Vec<_>, DicomError>>()?;

    let plane = rows * cols;
    let mut mask = Volume {
        data: vec![0u8; plane * source.slices.len()],
        dims: source.grid.dims,
        affine: source.grid.affine,
    };
    let mut order = placed;
    order.sort_by_key(|&(segment, _, _)| segment);
    let pixels = inst.pixels()?;
    let mut decoded = Vec::new();
    for (segment, k, f) in order {
        let value = value_of(segment)?;
        let out = &mut mask.data[k * plane..(k + 1) * plane];
        match (&pixels, fractional) {
            (PixelData::Native(bytes), None) => {
                let first_bit = f * plane;
                let needed = (first_bit + plane).div_ceil(8);
                if bytes.len() < needed {
                    return Err(DicomError::PixelDataTooShort {
                        instance: inst.label.clone(),
                        expected: (frames as u64 * plane as u64).div_ceil(8),
                        found: bytes.len() as u64,
                    });
                }
                for (p, o) in out.iter_mut().enumerate() {
                    let bit = first_bit + p;
                    if bytes[bit / 8] >> (bit % 8) & 1 == 1 {
                        *o = value;
                    }
                }
            }
            (PixelData::Native(bytes), Some(threshold)) => {
                let frame = bytes.get(f * plane..(f + 1) * plane).ok_or_else(|| {
                    DicomError::PixelDataTooShort {
                        instance: inst.label.clone(),
                        expected: (frames * plane) as u64,
                        found: bytes.len() as u64,
                    }
                })?;
                paint_fractional(frame, threshold, value, out);
            }
            (PixelData::Encapsulated { .. }, Some(threshold)) => {
                let fmt = PixelFormat {
                    rows: rows as u16,
                    cols: cols as u16,
                    bits_allocated: 8,
                    bits_stored: 8,
                    high_bit: 7,
                    signed: false,
                };
                decode_frame(
                    inst.ts,
                    &pixels,
                    &fmt,
                    frames as u32,
                    f as u32,
                    &inst.label,
                    &mut decoded,
                )?;
                paint_fractional(&decoded, threshold, value, out);
            }
            (PixelData::Encapsulated { .. }, None) => {
                return Err(DicomError::Unsupported {
                    instance: inst.label.clone(),
                    detail: "compressed BINARY SEG; only native 1-bit pixel data is read".into(),
                });
            }
        }
    }
    Ok(DecodedSeg {
        mask,
        segments: segments.into_iter().map(|(_, s)| s).collect(),
        referenced_series,
    })
}

fn paint_fractional(frame: &[u8], threshold: f32, value: u8, out: &mut [u8]) {
    for (o, &v) in out.iter_mut().zip(frame) {
        if v > 0 && f32::from(v) >= threshold {
            *o = value;
        }
    }
}

/// SegmentSequence as (SegmentNumber, segment with its label value), by number.
fn read_segments(
    a: &Attrs<'_>,
    label_values: Option<&HashMap<String, u8>>,
) -> Result<Vec<(u16, Segment)>, DicomError> {
    let items = a.items(tags::SEGMENT_SEQUENCE);
    if items.is_empty() {
        return Err(DicomError::InvalidSeg(format!(
            "{}: no SegmentSequence",
            a.label
        )));
    }
    let mut segments = items
        .iter()
        .map(|i| {
            let i = a.with(i);
            let number = i.required_u32(tags::SEGMENT_NUMBER, "SegmentNumber")?;
            let label = i.string(tags::SEGMENT_LABEL);
            let value = match label_values {
                Some(table) => table.get(&label).copied().ok_or_else(|| {
                    DicomError::InvalidSeg(format!(
                        "segment {number} {label:?} is not among the given label names"
                    ))
                })?,
                None => u8::try_from(number).map_err(|_| {
                    DicomError::InvalidSeg(format!(
                        "segment number {number} does not fit a u8 label value; \
                         pass label_values"
                    ))
                })?,
            };
            let number = u16::try_from(number)
                .map_err(|_| DicomError::InvalidSeg(format!("segment number {number}")))?;
            Ok((number, Segment { value, label }))
        })
        .collect::<Result<Vec<_>, DicomError>>()?;
    segments.sort_by_key(|(n, _)| *n);
    Ok(segments)
}

/// The slice a frame's SourceImageSequence names, for SEGs without positions.
fn slice_of_source(item: &Attrs<'_>, source: &SeriesInfo) -> Option<usize> {
    let reference = item
        .item(tags::DERIVATION_IMAGE_SEQUENCE)?
        .item(tags::SOURCE_IMAGE_SEQUENCE)?;
    let uid = reference.string(tags::REFERENCED_SOP_INSTANCE_UID);
    let frame = reference
        .optional_u32(tags::REFERENCED_FRAME_NUMBER, "ReferencedFrameNumber")
        .ok()?;
    source
        .slices
        .iter()
        .position(|s| s.sop_instance_uid == uid && (frame.is_none() || s.frame_number == frame))
}

/// The source grid in LPS, to place SEG frames on it.
struct SourceGrid {
    to_voxel: [[f64; 4]; 4],
    orientation: [f64; 6],
    pixel_spacing: [f64; 2],
    slices: usize,
}

/// A frame's position may be this many voxels off the source grid (writers round
/// positions to a few decimals).
const POSITION_TOLERANCE_VOXELS: f64 = 0.01;

impl SourceGrid {
    fn new(source: &SeriesInfo) -> Result<Self, DicomError> {
        let lps = flip_lps_ras(&source.grid.affine);
        let to_voxel =
            invert(&lps).map_err(|e| DicomError::InvalidArgument(format!("source grid: {e}")))?;
        let column = |c: usize| [lps[0][c], lps[1][c], lps[2][c]];
        let length = |v: [f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        let (r, c) = (column(0), column(1));
        let (col_spacing, row_spacing) = (length(r), length(c));
        Ok(Self {
            to_voxel,
            orientation: [
                r[0] / col_spacing,
                r[1] / col_spacing,
                r[2] / col_spacing,
                c[0] / row_spacing,
                c[1] / row_spacing,
                c[2] / row_spacing,
            ],
            pixel_spacing: [row_spacing, col_spacing],
            slices: source.slices.len(),
        })
    }

    fn check_orientation(&self, orientation: &[f64; 6]) -> Result<(), String> {
        if orientation
            .iter()
            .zip(&self.orientation)
            .any(|(a, b)| (a - b).abs() > ORIENTATION_TOLERANCE)
        {
            return Err(format!(
                "orientation {orientation:?} differs from the source's {:?}",
                self.orientation
            ));
        }
        Ok(())
    }

    fn check_spacing(&self, spacing: &[f64; 2]) -> Result<(), String> {
        if spacing
            .iter()
            .zip(&self.pixel_spacing)
            .any(|(a, b)| (a - b).abs() > PIXEL_SPACING_TOLERANCE)
        {
            return Err(format!(
                "PixelSpacing {spacing:?} differs from the source's {:?}",
                self.pixel_spacing
            ));
        }
        Ok(())
    }

    /// The slice whose first pixel is at `position`.
    fn slice_at(&self, position: &[f64; 3]) -> Result<usize, String> {
        let [i, j, k] = apply(&self.to_voxel, *position);
        let off = |v: f64| (v - v.round()).abs() > POSITION_TOLERANCE_VOXELS;
        if i.abs() > POSITION_TOLERANCE_VOXELS || j.abs() > POSITION_TOLERANCE_VOXELS || off(k) {
            return Err(format!(
                "position {position:?} is at voxel ({i:.3}, {j:.3}, {k:.3}), not on a source slice"
            ));
        }
        let k = k.round();
        if k < 0.0 || k >= self.slices as f64 {
            return Err(format!(
                "position {position:?} is at slice {k}, outside the source's {}",
                self.slices
            ));
        }
        Ok(k as usize)
    }
}
