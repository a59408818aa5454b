//! `effp synth`: writing a synthetic detection dataset (needs no engine).

use std::path::PathBuf;

use clap::Args;
use effp_data::synth::{SynthOptions, generate};

/// Arguments of `effp synth`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Folder to write the dataset to (YOLO layout).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of images (80% train, 20% val).
    #[arg(long, default_value_t = 200)]
    pub images: usize,
    /// Seed; the same seed gives the same dataset.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image size in pixels (square).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(32..=4096))]
    pub imgsz: u32,
}

/// Runs `effp synth`.
pub fn synth(args: &SynthArgs) -> anyhow::Result<u8> {
    generate(
        &args.out,
        SynthOptions {
            images: args.images,
            seed: args.seed,
            imgsz: args.imgsz,
        },
    )?;
    println!("wrote {} images to {}", args.images, args.out.display());
    Ok(0)
}
