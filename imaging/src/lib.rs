//! (crate docs written last)

pub mod affine;
mod datatype;
mod error;
mod limits;
pub mod io;
pub mod nifti;
pub mod nrrd;
pub mod synthetic;
pub mod transforms;
pub mod volume;

pub use datatype::DataType;
pub use error::ImageError;
pub use limits::{DEFAULT_MAX_VOXEL_BYTES, ReadLimits};
pub use volume::{Affine, GRID_TOLERANCE, Grid, IDENTITY, Volume, check_same_dims, check_same_grid};
