//! Writes a synthetic CT series (the crate's default spec, seed from the second
//! argument) to load into a PACS or compress with other tools: one file per slice, or
//! one enhanced multi-frame file with `--multiframe`.
//!
//! ```text
//! cargo run -p medlabel-dicom --example write_synthetic -- OUT_DIR [SEED] [--multiframe]
//! ```

use medlabel_dicom::synthetic::{SyntheticCt, synthetic_ct_multiframe, synthetic_ct_series};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let multiframe = args.iter().any(|a| a == "--multiframe");
    let mut positional = args.iter().filter(|a| !a.starts_with("--"));
    let (Some(dir), seed) = (positional.next(), positional.next()) else {
        eprintln!("usage: write_synthetic OUT_DIR [SEED] [--multiframe]");
        std::process::exit(2);
    };
    let spec = SyntheticCt {
        seed: seed.map_or(0, |s| s.parse().expect("SEED is an integer")),
        ..SyntheticCt::default()
    };
    std::fs::create_dir_all(dir)?;
    if multiframe {
        return std::fs::write(
            format!("{dir}/multiframe.dcm"),
            synthetic_ct_multiframe(&spec, false),
        );
    }
    for (n, file) in synthetic_ct_series(&spec).iter().enumerate() {
        std::fs::write(format!("{dir}/{:04}.dcm", n + 1), file)?;
    }
    Ok(())
}
