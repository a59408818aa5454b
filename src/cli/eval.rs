//! `effp eval`: scoring a detector on a dataset.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use effp_engine::data::archive::ArchiveLimits;
use effp_engine::eval::decode::{Layout, NmsOptions};
use effp_engine::eval::run::{EvalOptions, evaluate_network};
use effp_engine::runtime::{DeviceChoice, Network};
use effp_graph::shape::InputSize;
use indicatif::{ProgressBar, ProgressStyle};

use super::table::new_table;

/// Arguments of `effp eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The ONNX detector.
    pub model: PathBuf,
    /// Dataset folder or .zip/.tar/.tar.gz archive in the YOLO layout.
    #[arg(long)]
    pub data: PathBuf,
    /// Split to evaluate.
    #[arg(long, default_value = "val")]
    pub split: String,
    /// Input size for models with a free input size (static exports keep theirs).
    #[arg(long)]
    pub imgsz: Option<u32>,
    /// Output layout; detected from the output shape when left out.
    #[arg(long)]
    pub decoder: Option<Layout>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Minimum confidence.
    #[arg(long, default_value_t = 0.001)]
    pub conf: f32,
    /// NMS IoU threshold.
    #[arg(long, default_value_t = 0.7)]
    pub iou: f32,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `effp eval`.
pub fn eval(args: &EvalArgs) -> anyhow::Result<u8> {
    let scratch = tempfile::tempdir().context("cannot create a scratch folder")?;
    let dataset =
        effp_engine::data::dataset::open(&args.data, scratch.path(), ArchiveLimits::default())
            .with_context(|| format!("cannot read the dataset '{}'", args.data.display()))?;
    let samples = dataset.split(&args.split)?;
    let size = args.imgsz.map(|s| InputSize {
        height: s as usize,
        width: s as usize,
    });
    let (model, _) = effp_graph::analyse_file(&args.model, size)
        .with_context(|| format!("cannot evaluate '{}'", args.model.display()))?;
    let net = Network::new(&model, effp_engine::runtime::resolve_device(args.device)?)?;
    let bar = ProgressBar::new(samples.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} eval {bar:30} {pos}/{len} images {per_sec} eta {eta}",
        )
        .expect("a valid template"),
    );
    if args.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let options = EvalOptions {
        batch: args.batch,
        layout: args.decoder,
        nms: NmsOptions {
            confidence: args.conf,
            iou: args.iou,
            ..NmsOptions::default()
        },
    };
    let report = evaluate_network(&net, samples, dataset.names.len(), &options, |done| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    if args.json {
        let value = serde_json::json!({ "schema": "effp.eval/v1", "split": args.split, "classes": dataset.names, "report": report });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(0);
    }
    let m = &report.metrics;
    let mut table = new_table(&["class", "instances", "AP50", "AP50-95"], &[1, 2, 3]);
    table.add_row(vec![
        "all".to_string(),
        report.instances.to_string(),
        format!("{:.4}", m.map50),
        format!("{:.4}", m.map50_95),
    ]);
    for c in &m.per_class {
        table.add_row(vec![
            dataset.names[c.class].clone(),
            c.instances.to_string(),
            format!("{:.4}", c.ap50),
            format!("{:.4}", c.ap50_95),
        ]);
    }
    println!("{table}");
    println!(
        "{} images at {}x{}, {:.1} images/s; P {:.3} R {:.3} at confidence {:.3}",
        report.images,
        report.input_size[0],
        report.input_size[1],
        report.images_per_second,
        m.precision,
        m.recall,
        m.confidence
    );
    Ok(0)
}
