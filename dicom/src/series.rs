//! A series of DICOM instances to one volume.

use dicom_dictionary_std::tags;
use medlabel_imaging::{Grid, ReadLimits, Volume};

use crate::DicomError;
use crate::attrs::Attrs;
use crate::geometry::{Placement, flip_lps_ras, stack};
use crate::parse::{Instance, PixelData, parse};
use crate::pixels::{PixelFormat, convert_frame, decode_frame};

/// A converted series: the voxels and what is needed to refer back to the source.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Voxel values after RescaleSlope/Intercept (HU for CT), on the grid of
    /// `info.grid`: i along the rows (columns of the image), j down the columns, k
    /// along the slice normal, affine in RAS+ mm.
    pub volume: Volume<f32>,
    pub info: SeriesInfo,
}

/// The source series as a SEG (or the datastore) needs it: identity, the patient and
/// study attributes a derived object copies, and every slice's instance in order.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesInfo {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    /// Empty if the source has none (then the SEG gets a new one).
    pub frame_of_reference_uid: String,
    pub modality: String,
    pub patient_id: String,
    pub patient_name: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
    pub study_date: String,
    pub study_time: String,
    pub study_id: String,
    pub accession_number: String,
    pub referring_physician_name: String,
    /// Rows (`grid.dims[1]`) and Columns (`grid.dims[0]`) of every slice.
    pub rows: usize,
    pub columns: usize,
    /// One entry per slice, in volume order (k = 0 first): which instance (and frame,
    /// for multi-frame instances) it came from.
    pub slices: Vec<SliceRef>,
    /// Dims and RAS affine of the volume.
    pub grid: Grid,
}

/// The instance (and, for a multi-frame instance, the frame) a slice came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceRef {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    /// 1-based frame number within a multi-frame instance; `None` for single-frame.
    pub frame_number: Option<u32>,
}

/// [`series_to_volume_with_limits`] with the default 2 GiB voxel memory cap.
pub fn series_to_volume<B: AsRef<[u8]>>(instances: &[B]) -> Result<Series, DicomError> {
    series_to_volume_with_limits(instances, &ReadLimits::default())
}

/// Converts the Part 10 files of one series (any order) into a volume.
///
/// Single-frame instances are one slice each; enhanced multi-frame instances give one
/// slice per frame, placed by their functional groups. Slices are ordered by position
/// along the normal, never by InstanceNumber. Everything is checked before voxel
/// memory is allocated: the structure of every file, the geometry of the stack, the
/// pixel data length, and the voxel memory against `limits`.
pub fn series_to_volume_with_limits<B: AsRef<[u8]>>(
    instances: &[B],
    limits: &ReadLimits,
) -> Result<Series, DicomError> {
    if instances.is_empty() {
        return Err(DicomError::EmptySeries);
    }
    let parsed = instances
        .iter()
        .enumerate()
        .map(|(i, bytes)| parse(bytes.as_ref(), i, limits))
        .collect::<Result<Vec<_>, _>>()?;
    let layouts = parsed
        .iter()
        .map(InstanceLayout::read)
        .collect::<Result<Vec<_>, _>>()?;

    let first = &layouts[0];
    for (inst, layout) in parsed.iter().zip(&layouts).skip(1) {
        let inconsistent = |detail: String| DicomError::InconsistentSeries {
            instance: inst.label.clone(),
            detail,
        };
        if layout.series_instance_uid != first.series_instance_uid {
            return Err(inconsistent(format!(
                "SeriesInstanceUID {} differs from {} of {}",
                layout.series_instance_uid, first.series_instance_uid, parsed[0].label
            )));
        }
        if (layout.fmt.rows, layout.fmt.cols) != (first.fmt.rows, first.fmt.cols) {
            return Err(inconsistent(format!(
                "{}×{} pixels differ from {}×{} of {}",
                layout.fmt.rows, layout.fmt.cols, first.fmt.rows, first.fmt.cols, parsed[0].label
            )));
        }
    }

    let slices: Vec<(usize, &FrameInfo)> = layouts
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.frames.iter().map(move |f| (i, f)))
        .collect();
    let placements: Vec<Placement> = slices.iter().map(|(_, f)| f.placement.clone()).collect();
    let (order, affine_lps) = stack(&placements)?;

    let dims = [
        usize::from(first.fmt.cols),
        usize::from(first.fmt.rows),
        slices.len(),
    ];
    let voxels = dims.iter().map(|&d| d as u64).product::<u64>();
    let needed = voxels.saturating_mul(4);
    if needed > limits.max_voxel_bytes {
        return Err(DicomError::TooLarge {
            needed,
            limit: limits.max_voxel_bytes,
        });
    }

    let plane = dims[0] * dims[1];
    let mut data = vec![0f32; plane * dims[2]];
    let mut decoded = Vec::new();
    for (out, &s) in data.chunks_exact_mut(plane).zip(&order) {
        let (i, frame) = slices[s];
        let (inst, layout) = (&parsed[i], &layouts[i]);
        let pixels = inst.pixels()?;
        let raw = match &pixels {
            PixelData::Native(bytes) => {
                let n = layout.fmt.bytes_per_frame();
                let start = frame.index as usize * n;
                &bytes[start..start + n]
            }
            PixelData::Encapsulated { .. } => {
                decode_frame(
                    inst.ts,
                    &pixels,
                    &layout.fmt,
                    layout.frames.len() as u32,
                    frame.index,
                    &inst.label,
                    &mut decoded,
                )?;
                &decoded[..]
            }
        };
        convert_frame(raw, &layout.fmt, frame.slope, frame.intercept, out);
    }

    let affine = flip_lps_ras(&affine_lps);
    let volume = Volume { data, dims, affine };
    let a = Attrs::new(&parsed[0].header, &parsed[0].label);
    let info = SeriesInfo {
        study_instance_uid: a.required_string(tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?,
        series_instance_uid: first.series_instance_uid.clone(),
        frame_of_reference_uid: a.string(tags::FRAME_OF_REFERENCE_UID),
        modality: a.string(tags::MODALITY),
        patient_id: a.string(tags::PATIENT_ID),
        patient_name: a.string(tags::PATIENT_NAME),
        patient_birth_date: a.string(tags::PATIENT_BIRTH_DATE),
        patient_sex: a.string(tags::PATIENT_SEX),
        study_date: a.string(tags::STUDY_DATE),
        study_time: a.string(tags::STUDY_TIME),
        study_id: a.string(tags::STUDY_ID),
        accession_number: a.string(tags::ACCESSION_NUMBER),
        referring_physician_name: a.string(tags::REFERRING_PHYSICIAN_NAME),
        rows: dims[1],
        columns: dims[0],
        slices: order
            .iter()
            .map(|&s| {
                let (i, frame) = slices[s];
                SliceRef {
                    sop_class_uid: layouts[i].sop_class_uid.clone(),
                    sop_instance_uid: layouts[i].sop_instance_uid.clone(),
                    frame_number: layouts[i].multi_frame.then_some(frame.index + 1),
                }
            })
            .collect(),
        grid: volume.grid(),
    };
    Ok(Series { volume, info })
}

/// What one instance contributes: its identity, pixel format and frames.
struct InstanceLayout {
    series_instance_uid: String,
    sop_class_uid: String,
    sop_instance_uid: String,
    fmt: PixelFormat,
    multi_frame: bool,
    frames: Vec<FrameInfo>,
}

/// One frame's place and rescale.
struct FrameInfo {
    /// 0-based frame index within the instance.
    index: u32,
    placement: Placement,
    slope: f64,
    intercept: f64,
}

impl InstanceLayout {
    fn read(inst: &Instance<'_>) -> Result<Self, DicomError> {
        let a = Attrs::new(&inst.header, &inst.label);
        let fmt = PixelFormat::from_header(&a)?;
        let per_frame = a.items(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
        let number_of_frames = a.optional_u32(tags::NUMBER_OF_FRAMES, "NumberOfFrames")?;
        let multi_frame = !per_frame.is_empty();
        let frames = if multi_frame {
            enhanced_frames(&a, per_frame, number_of_frames)?
        } else if number_of_frames.unwrap_or(1) > 1 {
            return Err(DicomError::Unsupported {
                instance: inst.label.clone(),
                detail: "multi-frame instance without per-frame functional groups \
                         (no position for each frame)"
                    .into(),
            });
        } else {
            let placement = placement(&a, &a, &a, &inst.label)?;
            let (slope, intercept) = rescale(&a)?;
            vec![FrameInfo {
                index: 0,
                placement,
                slope,
                intercept,
            }]
        };
        // Native pixel data must hold every frame; compressed frames are checked as
        // they are decoded.
        if let PixelData::Native(bytes) = inst.pixels()? {
            let expected = fmt.bytes_per_frame() as u64 * frames.len() as u64;
            if (bytes.len() as u64) < expected {
                return Err(DicomError::PixelDataTooShort {
                    instance: inst.label.clone(),
                    expected,
                    found: bytes.len() as u64,
                });
            }
        }
        Ok(Self {
            series_instance_uid: a
                .required_string(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?,
            sop_class_uid: a.required_string(tags::SOP_CLASS_UID, "SOPClassUID")?,
            sop_instance_uid: a.required_string(tags::SOP_INSTANCE_UID, "SOPInstanceUID")?,
            fmt,
            multi_frame,
            frames,
        })
    }
}

/// Frames of an enhanced multi-frame instance: each functional group from the frame's
/// PerFrameFunctionalGroupsSequence item, else from the shared one.
fn enhanced_frames(
    a: &Attrs<'_>,
    per_frame: &[dicom_object::InMemDicomObject],
    number_of_frames: Option<u32>,
) -> Result<Vec<FrameInfo>, DicomError> {
    let declared = number_of_frames.ok_or_else(|| a.missing("NumberOfFrames"))?;
    if declared as usize != per_frame.len() {
        return Err(DicomError::InvalidAttribute {
            instance: a.label.to_string(),
            attribute: "NumberOfFrames",
            detail: format!(
                "is {declared} but PerFrameFunctionalGroupsSequence has {} items",
                per_frame.len()
            ),
        });
    }
    let shared = a.item(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    per_frame
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let item = a.with(item);
            let group = |seq| item.item(seq).or_else(|| shared.and_then(|s| s.item(seq)));
            let label = format!("{} frame {}", a.label, index + 1);
            let position = group(tags::PLANE_POSITION_SEQUENCE)
                .ok_or_else(|| a.missing("PlanePositionSequence"))?;
            let orientation = group(tags::PLANE_ORIENTATION_SEQUENCE)
                .ok_or_else(|| a.missing("PlaneOrientationSequence"))?;
            let measures = group(tags::PIXEL_MEASURES_SEQUENCE)
                .ok_or_else(|| a.missing("PixelMeasuresSequence"))?;
            let placement = placement(&position, &orientation, &measures, &label)?;
            let (slope, intercept) = match group(tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE) {
                Some(t) => rescale(&t)?,
                None => rescale(a)?,
            };
            Ok(FrameInfo {
                index: index as u32,
                placement,
                slope,
                intercept,
            })
        })
        .collect()
}

/// A slice's placement from the data sets holding its position, orientation and
/// pixel measures (all the top-level data set for single-frame instances).
fn placement(
    position: &Attrs<'_>,
    orientation: &Attrs<'_>,
    measures: &Attrs<'_>,
    label: &str,
) -> Result<Placement, DicomError> {
    let thickness =
        match measures.floats::<1>(tags::SPACING_BETWEEN_SLICES, "SpacingBetweenSlices")? {
            Some([t]) => Some(t),
            None => measures
                .floats::<1>(tags::SLICE_THICKNESS, "SliceThickness")?
                .map(|[t]| t),
        };
    Ok(Placement {
        position: position.required_floats(tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient")?,
        orientation: orientation
            .required_floats(tags::IMAGE_ORIENTATION_PATIENT, "ImageOrientationPatient")?,
        pixel_spacing: measures.required_floats(tags::PIXEL_SPACING, "PixelSpacing")?,
        thickness,
        label: label.to_string(),
    })
}

/// RescaleSlope and RescaleIntercept, defaulting to the identity (MR has none).
fn rescale(a: &Attrs<'_>) -> Result<(f64, f64), DicomError> {
    let [slope] = a
        .floats(tags::RESCALE_SLOPE, "RescaleSlope")?
        .unwrap_or([1.0]);
    let [intercept] = a
        .floats(tags::RESCALE_INTERCEPT, "RescaleIntercept")?
        .unwrap_or([0.0]);
    Ok((slope, intercept))
}
