//! Writes a synthetic CT series (the crate's default spec, seed from the second
//! argument) as one file per slice, to load into a PACS or compress with other tools:
//!
//! ```text
//! cargo run -p medlabel-dicom --example write_synthetic -- OUT_DIR [SEED]
//! ```

use medlabel_dicom::synthetic::{SyntheticCt, synthetic_ct_series};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), seed) = (args.next(), args.next()) else {
        eprintln!("usage: write_synthetic OUT_DIR [SEED]");
        std::process::exit(2);
    };
    let spec = SyntheticCt {
        seed: seed.map_or(0, |s| s.parse().expect("SEED is an integer")),
        ..SyntheticCt::default()
    };
    std::fs::create_dir_all(&dir)?;
    for (n, file) in synthetic_ct_series(&spec).iter().enumerate() {
        std::fs::write(format!("{dir}/{:04}.dcm", n + 1), file)?;
    }
    Ok(())
}
