//! Test support: deterministic synthetic CT series as Part 10 bytes, with the volume
//! [`series_to_volume`](crate::series_to_volume) must give back.
//!
//! Public so that other crates' integration tests (the DICOMweb datastore against
//! Orthanc) can upload series whose content they know. Not for production use.
//!
//! Voxels are uniform random HU in [−1024, 3071] drawn from the seed, so any
//! transposition, flip or misordered slice changes the volume. Slices alternate between
//! two rescales, so that per-slice (and per-frame) RescaleSlope/Intercept are exercised:
//! even slices store the HU itself (slope 1, intercept 0; signed, many negative), odd
//! slices store 2 · (HU + 1024) (slope 0.5, intercept −1024). Both are exact in `f32`.

use std::io::Write;

use dicom_core::value::C;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use medlabel_imaging::{IDENTITY, Volume};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::encode::{IMPLEMENTATION_CLASS_UID, ds_elem, item, part10, seq_elem, str_elem, us_elem};
use crate::geometry::{cross, flip_lps_ras};

/// How the generated files are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntheticEncoding {
    ExplicitVrLittleEndian,
    ImplicitVrLittleEndian,
    /// Deflated explicit VR little endian (1.2.840.10008.1.2.1.99).
    DeflatedExplicitVrLittleEndian,
}

/// Shape, geometry and seed of a synthetic CT series.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticCt {
    /// Columns, rows, slices (the volume's i, j, k).
    pub dims: [usize; 3],
    /// mm between columns (along i), between rows (along j), between slices (along k).
    /// Written as PixelSpacing = `[spacing[1], spacing[0]]` (row spacing first).
    pub spacing: [f64; 3],
    /// ImageOrientationPatient (LPS): row direction, column direction. Unit, orthogonal.
    pub orientation: [f64; 6],
    /// LPS position (mm) of voxel (0, 0, 0): ImagePositionPatient of slice k = 0.
    pub origin: [f64; 3],
    /// Number instances (or frames) from the last slice to the first, so that
    /// InstanceNumber order is the reverse of position order.
    pub reversed: bool,
    /// Seeds the voxels and the UIDs: the same seed gives the same files.
    pub seed: u64,
    pub encoding: SyntheticEncoding,
}

impl Default for SyntheticCt {
    /// 32 × 24 × 10 axial slices, anisotropic spacing, explicit VR little endian.
    fn default() -> Self {
        Self {
            dims: [32, 24, 10],
            spacing: [0.7, 0.8, 2.5],
            orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            origin: [-100.0, -120.0, 30.0],
            reversed: false,
            seed: 0,
            encoding: SyntheticEncoding::ExplicitVrLittleEndian,
        }
    }
}

/// UIDs of a generated series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticUids {
    pub study: String,
    pub series: String,
    pub frame_of_reference: String,
    /// One per slice, k = 0 first (for a multi-frame series, only the first is used).
    pub instances: Vec<String>,
}

impl SyntheticCt {
    /// The voxel-to-LPS affine the files describe.
    pub fn affine_lps(&self) -> [[f64; 4]; 4] {
        let o = &self.orientation;
        let (row, col) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
        let normal = cross(row, col);
        let mut a = IDENTITY;
        for r in 0..3 {
            a[r][0] = row[r] * self.spacing[0];
            a[r][1] = col[r] * self.spacing[1];
            a[r][2] = normal[r] * self.spacing[2];
            a[r][3] = self.origin[r];
        }
        a
    }

    /// The HU volume (RAS affine) that converting the generated files must give.
    pub fn volume(&self) -> Volume<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let n = self.dims.iter().product();
        let data = (0..n)
            .map(|_| rng.random_range(-1024i16..=3071) as f32)
            .collect();
        Volume {
            data,
            dims: self.dims,
            affine: flip_lps_ras(&self.affine_lps()),
        }
    }

    /// The UIDs the files carry.
    pub fn uids(&self) -> SyntheticUids {
        // A stream separate from the voxels', so both stay stable if either changes.
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x5D1C_0A11_D5EE_D000);
        let mut uid = || format!("2.25.{}", rng.random::<u128>());
        SyntheticUids {
            study: uid(),
            series: uid(),
            frame_of_reference: uid(),
            instances: (0..self.dims[2]).map(|_| uid()).collect(),
        }
    }

    /// Slice k's stored values, rescale slope and intercept.
    fn stored_slice(&self, volume: &Volume<f32>, k: usize) -> (Vec<u16>, f64, f64) {
        let plane = self.dims[0] * self.dims[1];
        let hu = &volume.data[k * plane..(k + 1) * plane];
        if k.is_multiple_of(2) {
            (hu.iter().map(|&v| v as i16 as u16).collect(), 1.0, 0.0)
        } else {
            let stored = hu.iter().map(|&v| (2.0 * (v + 1024.0)) as u16).collect();
            (stored, 0.5, -1024.0)
        }
    }

    /// LPS ImagePositionPatient of slice k.
    fn position(&self, k: usize) -> [f64; 3] {
        let a = self.affine_lps();
        std::array::from_fn(|r| a[r][3] + a[r][2] * k as f64)
    }

    /// Slice indices in the order instances (or frames) are numbered.
    fn numbering(&self) -> Vec<usize> {
        let mut ks: Vec<usize> = (0..self.dims[2]).collect();
        if self.reversed {
            ks.reverse();
        }
        ks
    }

    /// Patient, study, series and image pixel attributes shared by every instance.
    fn common(&self, uids: &SyntheticUids) -> InMemDicomObject {
        InMemDicomObject::from_element_iter([
            str_elem(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
            str_elem(tags::STUDY_DATE, VR::DA, "20240101"),
            str_elem(tags::STUDY_TIME, VR::TM, "120000"),
            str_elem(tags::ACCESSION_NUMBER, VR::SH, ""),
            str_elem(tags::MODALITY, VR::CS, "CT"),
            str_elem(tags::MANUFACTURER, VR::LO, "medlabel synthetic"),
            str_elem(tags::REFERRING_PHYSICIAN_NAME, VR::PN, ""),
            str_elem(tags::PATIENT_NAME, VR::PN, "Synthetic^CT"),
            str_elem(tags::PATIENT_ID, VR::LO, &format!("SYNTH-{}", self.seed)),
            str_elem(tags::PATIENT_BIRTH_DATE, VR::DA, ""),
            str_elem(tags::PATIENT_SEX, VR::CS, "O"),
            str_elem(tags::STUDY_INSTANCE_UID, VR::UI, &uids.study),
            str_elem(tags::SERIES_INSTANCE_UID, VR::UI, &uids.series),
            str_elem(tags::STUDY_ID, VR::SH, "1"),
            str_elem(tags::SERIES_NUMBER, VR::IS, "1"),
            str_elem(
                tags::FRAME_OF_REFERENCE_UID,
                VR::UI,
                &uids.frame_of_reference,
            ),
            str_elem(tags::POSITION_REFERENCE_INDICATOR, VR::LO, ""),
            us_elem(tags::SAMPLES_PER_PIXEL, 1),
            str_elem(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
            us_elem(tags::ROWS, self.dims[1] as u16),
            us_elem(tags::COLUMNS, self.dims[0] as u16),
            us_elem(tags::BITS_ALLOCATED, 16),
            us_elem(tags::BITS_STORED, 16),
            us_elem(tags::HIGH_BIT, 15),
            us_elem(tags::PIXEL_REPRESENTATION, 1),
        ])
    }

    fn pixel_spacing(&self) -> [f64; 2] {
        [self.spacing[1], self.spacing[0]]
    }

    /// Encodes a data set in this spec's encoding.
    fn encode(&self, obj: InMemDicomObject) -> Vec<u8> {
        let written = match self.encoding {
            SyntheticEncoding::ExplicitVrLittleEndian => {
                part10(obj, uids::EXPLICIT_VR_LITTLE_ENDIAN)
            }
            SyntheticEncoding::ImplicitVrLittleEndian => {
                part10(obj, uids::IMPLICIT_VR_LITTLE_ENDIAN)
            }
            SyntheticEncoding::DeflatedExplicitVrLittleEndian => Ok(deflated(obj)),
        };
        written.expect("synthetic data sets are valid")
    }
}

/// dicom-rs writes deflated files only with its C-free deflate feature's writer; this
/// does the same by hand: meta group as usual, then the explicit VR LE data set deflated
/// (raw deflate).
fn deflated(obj: InMemDicomObject) -> Vec<u8> {
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
                .implementation_class_uid(IMPLEMENTATION_CLASS_UID),
        )
        .expect("meta group");
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    file.meta().write(&mut out).expect("meta group");
    let explicit = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
    let mut dataset = Vec::new();
    file.write_dataset_with_ts(&mut dataset, &explicit)
        .expect("data set");
    let mut encoder = flate2::write::DeflateEncoder::new(out, flate2::Compression::fast());
    encoder.write_all(&dataset).expect("in-memory write");
    encoder.finish().expect("in-memory write")
}

fn pixel_data(stored: Vec<u16>) -> DataElement<InMemDicomObject> {
    DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(C::from_vec(stored)),
    )
}

/// One single-frame CT instance per slice, numbered per `spec.reversed`, returned in
/// InstanceNumber order. Signed 16-bit, RescaleSlope/Intercept varying by slice.
pub fn synthetic_ct_series(spec: &SyntheticCt) -> Vec<Vec<u8>> {
    synthetic_ct_series_of(spec, &spec.volume())
}

/// [`synthetic_ct_series`] holding `volume`'s voxels (HU in −1024..=3071, `spec.dims`,
/// i fastest) instead of the seed's noise: a phantom a model can segment, as DICOM.
pub fn synthetic_ct_series_of(spec: &SyntheticCt, volume: &Volume<f32>) -> Vec<Vec<u8>> {
    assert_eq!(
        volume.dims, spec.dims,
        "the volume has the series' dimensions"
    );
    let uids = spec.uids();
    spec.numbering()
        .into_iter()
        .enumerate()
        .map(|(n, k)| {
            let (stored, slope, intercept) = spec.stored_slice(volume, k);
            let mut obj = spec.common(&uids);
            for e in [
                str_elem(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
                str_elem(tags::SOP_INSTANCE_UID, VR::UI, &uids.instances[k]),
                str_elem(tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\AXIAL"),
                str_elem(tags::INSTANCE_NUMBER, VR::IS, &(n + 1).to_string()),
                ds_elem(tags::IMAGE_POSITION_PATIENT, &spec.position(k)),
                ds_elem(tags::IMAGE_ORIENTATION_PATIENT, &spec.orientation),
                ds_elem(tags::PIXEL_SPACING, &spec.pixel_spacing()),
                ds_elem(tags::SLICE_THICKNESS, &[spec.spacing[2]]),
                ds_elem(tags::RESCALE_INTERCEPT, &[intercept]),
                ds_elem(tags::RESCALE_SLOPE, &[slope]),
                str_elem(tags::RESCALE_TYPE, VR::LO, "HU"),
                pixel_data(stored),
            ] {
                obj.put(e);
            }
            spec.encode(obj)
        })
        .collect()
}

/// The same series as one Enhanced CT instance: PixelMeasures in the shared functional
/// groups, PlanePosition and PixelValueTransformation per frame, PlaneOrientation per
/// frame when `per_frame_orientation` (else shared). Frames are in numbering order.
pub fn synthetic_ct_multiframe(spec: &SyntheticCt, per_frame_orientation: bool) -> Vec<u8> {
    let volume = spec.volume();
    let uids = spec.uids();
    let orientation = || {
        seq_elem(
            tags::PLANE_ORIENTATION_SEQUENCE,
            vec![item([ds_elem(
                tags::IMAGE_ORIENTATION_PATIENT,
                &spec.orientation,
            )])],
        )
    };
    let mut shared = vec![seq_elem(
        tags::PIXEL_MEASURES_SEQUENCE,
        vec![item([
            ds_elem(tags::PIXEL_SPACING, &spec.pixel_spacing()),
            ds_elem(tags::SLICE_THICKNESS, &[spec.spacing[2]]),
        ])],
    )];
    if !per_frame_orientation {
        shared.push(orientation());
    }
    let mut stored_all = Vec::with_capacity(volume.len());
    let per_frame = spec
        .numbering()
        .into_iter()
        .map(|k| {
            let (stored, slope, intercept) = spec.stored_slice(&volume, k);
            stored_all.extend(stored);
            let mut groups = vec![
                seq_elem(
                    tags::PLANE_POSITION_SEQUENCE,
                    vec![item([ds_elem(
                        tags::IMAGE_POSITION_PATIENT,
                        &spec.position(k),
                    )])],
                ),
                seq_elem(
                    tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
                    vec![item([
                        ds_elem(tags::RESCALE_INTERCEPT, &[intercept]),
                        ds_elem(tags::RESCALE_SLOPE, &[slope]),
                        str_elem(tags::RESCALE_TYPE, VR::LO, "HU"),
                    ])],
                ),
            ];
            if per_frame_orientation {
                groups.push(orientation());
            }
            item(groups)
        })
        .collect();
    let mut obj = spec.common(&uids);
    for e in [
        str_elem(tags::SOP_CLASS_UID, VR::UI, uids::ENHANCED_CT_IMAGE_STORAGE),
        str_elem(tags::SOP_INSTANCE_UID, VR::UI, &uids.instances[0]),
        str_elem(tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\AXIAL\\NONE"),
        str_elem(tags::INSTANCE_NUMBER, VR::IS, "1"),
        str_elem(tags::NUMBER_OF_FRAMES, VR::IS, &spec.dims[2].to_string()),
        seq_elem(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![item(shared)]),
        seq_elem(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame),
        pixel_data(stored_all),
    ] {
        obj.put(e);
    }
    spec.encode(obj)
}
