//! `effp prune`: choose channel groups to remove and write the smaller model.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use effp_engine::prune::{L1Options, Target, l1_mask};
use effp_engine::runtime::DeviceChoice;
use effp_engine::verify::{Equivalence, equivalence};
use effp_graph::channels::{ChannelAnalysis, CompactionReport, compact};
use effp_graph::cost::graph_cost;
use effp_graph::shape::InputSize;
use serde::Serialize;

use super::table::{si, thousands};

/// Pruning methods available from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// One-shot: remove the filters with the smallest L2 norm per FLOP.
    L1,
}

/// Arguments of `effp prune`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["target_flops", "target_params"])))]
pub struct PruneArgs {
    /// The ONNX model to prune.
    pub model: PathBuf,
    /// Pruning method.
    #[arg(long, value_enum, default_value = "l1")]
    pub method: Method,
    /// FLOPs to keep: a ratio of the original (e.g. 0.5) or an absolute count (e.g. 4.2e9).
    #[arg(long, value_name = "R|FLOPS")]
    pub target_flops: Option<f64>,
    /// Parameters to keep, as a ratio of the original (e.g. 0.5).
    #[arg(long, value_name = "R")]
    pub target_params: Option<f64>,
    /// Where to write the pruned ONNX model.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Where to write the JSON report (per-layer channels and kept indices).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Channels every feature map keeps at least.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub min_channels: u32,
    /// Fraction of its channels every feature map keeps at least.
    #[arg(long, default_value_t = 0.0)]
    pub min_fraction: f64,
    /// Remove channels in multiples of this per layer (8 suits CPU kernels and TensorRT).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub round_to: u32,
    /// Image input size as HxW; defaults to the size the model declares.
    #[arg(long, value_name = "HxW", allow_hyphen_values = true)]
    pub input_size: Option<InputSize>,
    /// Where to run the equivalence check: auto (CUDA when available), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Skip checking that the pruned model computes what the masked original computes.
    #[arg(long)]
    pub no_verify: bool,
}

/// Largest relative difference between masked and compacted outputs that is accepted.
const EQUIVALENCE_TOLERANCE: f64 = 1e-4;

/// Identifier of the report layout.
pub const PRUNE_REPORT_SCHEMA: &str = "effp.prune-report/v1";

/// The JSON report of a pruning run.
#[derive(Debug, Serialize)]
pub struct PruneReport {
    schema: &'static str,
    method: Method,
    target: serde_json::Value,
    before: Totals,
    after: Totals,
    flops_ratio: f64,
    params_ratio: f64,
    groups_total: usize,
    equivalence: Option<Equivalence>,
    compaction: CompactionReport,
}

#[derive(Debug, Serialize)]
struct Totals {
    flops: u64,
    params: u64,
}

/// Runs the command.
pub fn run(args: &PruneArgs) -> anyhow::Result<u8> {
    let target = match (args.target_flops, args.target_params) {
        (Some(r), _) if r < 1.0 => Target::FlopsRatio(r),
        (Some(f), _) => Target::Flops(f as u64),
        (None, Some(r)) => Target::ParamsRatio(r),
        (None, None) => unreachable!("clap requires a target"),
    };
    if !(0.0..1.0).contains(&args.min_fraction) {
        anyhow::bail!(
            "--min-fraction must be in [0, 1), got {}",
            args.min_fraction
        );
    }
    let (model, _) = effp_graph::analyse_file(&args.model, args.input_size)
        .with_context(|| format!("cannot prune '{}'", args.model.display()))?;
    effp_graph::require_supported(&model)
        .with_context(|| format!("cannot prune '{}'", args.model.display()))?;
    let analysis = ChannelAnalysis::new(&model.graph);
    let options = L1Options {
        min_channels: args.min_channels as usize,
        min_fraction: args.min_fraction,
        round_to: args.round_to as usize,
    };
    let mask = match args.method {
        Method::L1 => l1_mask(&model.graph, &analysis, target, options)?,
    };
    let (pruned, compaction) = compact(&model, &analysis, &mask)?;
    let checked = if args.no_verify {
        None
    } else {
        let device = args.device.resolve()?;
        let e = equivalence(&model, &analysis, &mask, &pruned, device, 2)?;
        if e.max_relative_error > EQUIVALENCE_TOLERANCE {
            anyhow::bail!(
                "the compacted model differs from the masked original by {:.2e} (relative), more than {EQUIVALENCE_TOLERANCE:e}; \
                 nothing was written. This is a bug in effp: please report it with the model",
                e.max_relative_error
            );
        }
        Some(e)
    };
    effp_graph::onnx::save_file(&pruned, &args.out)?;

    let before = graph_cost(&model.graph);
    let after = graph_cost(&pruned.graph);
    let report = PruneReport {
        schema: PRUNE_REPORT_SCHEMA,
        method: args.method,
        target: match target {
            Target::FlopsRatio(r) => serde_json::json!({ "flops_ratio": r }),
            Target::Flops(f) => serde_json::json!({ "flops": f }),
            Target::ParamsRatio(r) => serde_json::json!({ "params_ratio": r }),
        },
        before: Totals {
            flops: before.flops(),
            params: before.params,
        },
        after: Totals {
            flops: after.flops(),
            params: after.params,
        },
        flops_ratio: after.flops() as f64 / before.flops().max(1) as f64,
        params_ratio: after.params as f64 / before.params.max(1) as f64,
        groups_total: analysis.groups.len(),
        equivalence: checked,
        compaction,
    };
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write the report to '{}'", path.display()))?;
    }
    println!(
        "pruned {} of {} channel groups ({} layers changed)",
        report.compaction.groups_removed,
        report.groups_total,
        report.compaction.layers.len()
    );
    println!(
        "FLOPs   {} → {} ({:.1}%)",
        si(before.flops()),
        si(after.flops()),
        100.0 * report.flops_ratio
    );
    println!(
        "params  {} → {} ({:.1}%)",
        thousands(before.params),
        thousands(after.params),
        100.0 * report.params_ratio
    );
    if let Some(e) = &report.equivalence {
        println!(
            "checked masked == compacted on {} ({:.1e} relative)",
            e.device, e.max_relative_error
        );
    }
    println!("wrote   {}", args.out.display());
    Ok(0)
}
