//! `effp inspect`: a model's layers, shapes, parameters and FLOPs.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use effp_graph::inspect::InspectReport;
use effp_graph::shape::InputSize;

use super::EXIT_UNSUPPORTED;
use super::table::{new_table, shape, si, thousands};

/// Arguments of `effp inspect`.
#[derive(Debug, Args)]
#[command(after_help = supported_ops_help())]
pub struct InspectArgs {
    /// The ONNX model file.
    pub model: PathBuf,
    /// Image input size as HxW (e.g. 640x640); defaults to the size the model declares
    /// (required for a model with free input sizes, a dynamic-shape export).
    #[arg(long, value_name = "HxW", allow_hyphen_values = true)]
    pub input_size: Option<InputSize>,
    /// Print the report as JSON (schema "effp.inspect/v1") instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Leave out the per-node table.
    #[arg(long)]
    pub summary: bool,
    /// Also report the channel dependency analysis: prunable groups and frozen channels.
    #[arg(long)]
    pub groups: bool,
}

fn supported_ops_help() -> String {
    format!(
        "Supported ops: {}.",
        effp_graph::ir::SUPPORTED_OPS.join(", ")
    )
}

/// Runs the command; exit status 3 when the model uses unsupported ops.
pub fn run(args: &InspectArgs) -> anyhow::Result<u8> {
    let (model, mut report) = effp_graph::analyse_file(&args.model, args.input_size)
        .with_context(|| format!("cannot inspect '{}'", args.model.display()))?;
    if args.groups {
        let analysis = effp_graph::channels::ChannelAnalysis::new(&model.graph)
            .with_context(|| format!("cannot inspect '{}'", args.model.display()))?;
        report.channel_groups = Some(effp_graph::inspect::groups_report(&model, &analysis));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&args.model.display().to_string(), &report, args.summary);
    }
    if report.unsupported_ops.is_empty() {
        return Ok(0);
    }
    let ops: Vec<(String, String)> = report
        .unsupported_ops
        .iter()
        .map(|u| (u.node.clone(), u.op.clone()))
        .collect();
    eprintln!(
        "error: '{}': {}",
        args.model.display(),
        effp_graph::GraphError::UnsupportedOps { ops }
    );
    Ok(EXIT_UNSUPPORTED)
}

fn print_report(path: &str, r: &InspectReport, summary: bool) {
    println!("Model   {path}");
    println!(
        "        opset {}, IR {}, {}",
        r.model.opset, r.model.ir_version, r.model.producer
    );
    for (label, list) in [("Inputs ", &r.inputs), ("Outputs", &r.outputs)] {
        for t in list.iter() {
            let s = t.shape.as_deref().map_or_else(|| "?".to_string(), shape);
            println!(
                "{label} {} {} {s}",
                t.name,
                t.dtype.as_deref().unwrap_or("?")
            );
        }
    }
    if !summary {
        let mut table = new_table(
            &["#", "node", "op", "output shape", "params", "FLOPs"],
            &[0, 4, 5],
        );
        for (i, n) in r.nodes.iter().enumerate() {
            let shapes: Vec<String> = n
                .output_shapes
                .iter()
                .map(|s| s.as_deref().map_or_else(|| "?".into(), shape))
                .collect();
            let num = |v: Option<u64>, f: fn(u64) -> String| {
                v.map_or_else(|| "?".into(), |v| if v == 0 { String::new() } else { f(v) })
            };
            table.add_row(vec![
                i.to_string(),
                n.name.clone(),
                n.op.clone(),
                shapes.join(", "),
                num(n.params, thousands),
                num(n.flops, si),
            ]);
        }
        println!("{table}");
    }
    let t = &r.totals;
    println!(
        "Total   {} params, {:.2} GFLOPs ({} MACs), {} nodes{}",
        thousands(t.params),
        t.gflops,
        thousands(t.macs),
        t.nodes,
        if t.complete {
            ""
        } else {
            " (incomplete: shapes unknown after unsupported ops)"
        }
    );
    if let Some(groups) = &r.channel_groups {
        print_groups(groups);
    }
    let hist: Vec<String> = r
        .op_histogram
        .iter()
        .map(|(op, n)| format!("{op} {n}"))
        .collect();
    println!("Ops     {}", hist.join(", "));
    if r.unsupported_ops.is_empty() {
        println!("Unsupported ops: none");
    } else {
        println!("Unsupported ops:");
        for u in &r.unsupported_ops {
            let domain = if u.domain.is_empty() {
                String::new()
            } else {
                format!(" [{}]", u.domain)
            };
            println!("  {}{domain} at node '{}'", u.op, u.node);
        }
    }
}

fn print_groups(g: &effp_graph::inspect::GroupsReport) {
    println!(
        "Groups  {} prunable ({} channels), {} frozen classes ({} channels)",
        g.prunable_groups, g.prunable_channels, g.frozen_classes, g.frozen_channels
    );
    let mut by_layer: std::collections::BTreeMap<&str, (usize, u64)> =
        std::collections::BTreeMap::new();
    for group in &g.groups {
        for p in &group.producers {
            let e = by_layer.entry(p.name.as_str()).or_default();
            e.0 += 1;
            e.1 += group.flops / group.producers.len() as u64;
        }
    }
    let mut table = new_table(
        &["producer", "prunable filters", "FLOPs per filter"],
        &[1, 2],
    );
    for (layer, (n, flops)) in by_layer {
        table.add_row(vec![layer.to_string(), n.to_string(), si(flops / n as u64)]);
    }
    println!("{table}");
    let mut reasons: std::collections::BTreeMap<&str, (usize, usize)> =
        std::collections::BTreeMap::new();
    for f in &g.frozen {
        let e = reasons.entry(f.reason.as_str()).or_default();
        e.0 += 1;
        e.1 += f.channels;
    }
    let mut table = new_table(&["frozen because", "classes", "channels"], &[1, 2]);
    for (reason, (classes, channels)) in reasons {
        table.add_row(vec![
            reason.to_string(),
            classes.to_string(),
            channels.to_string(),
        ]);
    }
    println!("{table}");
}
