//! `effp bench`: timings of effp's own machinery, as tables and JSON.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use effp_engine::prune::{L1Options, Target, l1_mask};
use effp_engine::runtime::{DeviceChoice, Network};
use effp_engine::tch::{self, Kind, Tensor};
use effp_engine::train::distill::{Distill, DistillTargets};
use effp_engine::train::optim::AdamW;
use effp_engine::train::session::{Gating, distill_step};
use effp_graph::channels::ChannelAnalysis;
use serde::Serialize;

use super::table::new_table;

/// Arguments of `effp bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Forward and forward+backward time of the tch runtime on a model.
    Runtime(RuntimeArgs),
    /// Time to build the channel dependency groups of a model.
    Groups(GroupsArgs),
    /// A masked training step against a plain one of the same network (gate overhead).
    Step(StepArgs),
}

#[derive(Debug, Args)]
struct StepArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    batch: i64,
    /// FLOPs the mask of the masked step keeps (L1 mask).
    #[arg(long, default_value_t = 0.5)]
    mask_flops: f64,
    /// Timed iterations of each kind (after warm-up), interleaved.
    #[arg(long, default_value_t = 20)]
    iters: usize,
    #[command(flatten)]
    run: RunArgs,
}

/// How a timed benchmark runs and where its figures go.
#[derive(Debug, Args)]
struct RunArgs {
    /// Untimed warm-up iterations.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Intra-op threads for libtorch.
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RuntimeArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    batch: i64,
    /// Timed iterations (after warm-up).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Args)]
struct GroupsArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Timed iterations.
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Timing {
    name: &'static str,
    median_ms: f64,
    min_ms: f64,
    iters: usize,
}

/// Runs the benchmark.
pub fn run(args: &BenchArgs) -> anyhow::Result<u8> {
    let (label, timings, json) = match &args.what {
        BenchCommand::Runtime(a) => (
            a.model.display().to_string(),
            runtime(a)?,
            a.run.json.clone(),
        ),
        BenchCommand::Groups(a) => (a.model.display().to_string(), groups(a)?, a.json.clone()),
        BenchCommand::Step(a) => (a.model.display().to_string(), step(a)?, a.run.json.clone()),
    };
    let mut table = new_table(&["measure", "median ms", "min ms", "iters"], &[1, 2, 3]);
    for t in &timings {
        table.add_row(vec![
            t.name.to_string(),
            format!("{:.2}", t.median_ms),
            format!("{:.2}", t.min_ms),
            t.iters.to_string(),
        ]);
    }
    println!("{label}\n{table}");
    let ratio = match timings.as_slice() {
        [plain, masked] if plain.name == "plain step" => {
            let r = masked.median_ms / plain.median_ms;
            println!("masked / plain: {r:.3}×");
            Some(r)
        }
        _ => None,
    };
    if let Some(path) = json {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(
                &serde_json::json!({ "model": label, "timings": timings, "masked_over_plain": ratio }),
            )?,
        )
        .with_context(|| format!("cannot write '{}'", path.display()))?;
    }
    Ok(0)
}

fn time(
    name: &'static str,
    warmup: usize,
    iters: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Timing> {
    for _ in 0..warmup {
        f()?;
    }
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        f()?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(summary(name, samples))
}

fn runtime(a: &RuntimeArgs) -> anyhow::Result<Vec<Timing>> {
    tch::set_num_threads(a.run.threads);
    let device = effp_engine::runtime::resolve_device(a.run.device)?;
    let (model, _) = effp_graph::analyse_file(&a.model, None)?;
    let net = Network::new(&model, device)?;
    let g = &model.graph;
    let mut shape: Vec<i64> = g
        .shape(g.inputs[0].value)
        .unwrap_or(&[])
        .iter()
        .map(|&d| d as i64)
        .collect();
    shape[0] = a.batch;
    tch::manual_seed(0);
    let x = Tensor::rand(&shape, (Kind::Float, device));
    let sync = || {
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let forward = time("forward", a.run.warmup, a.iters, || {
        tch::no_grad(|| net.forward(&[x.shallow_clone()], None))?;
        sync();
        Ok(())
    })?;
    let backward = time("forward+backward", a.run.warmup, a.iters, || {
        let y = net.forward(&[x.shallow_clone()], None)?;
        let loss = y
            .iter()
            .map(|t| t.square().mean(Kind::Float))
            .fold(Tensor::zeros([], (Kind::Float, device)), |acc, t| acc + t);
        loss.backward();
        for w in net.trainable() {
            let mut grad = w.grad();
            if grad.defined() {
                let _ = grad.zero_();
            }
        }
        sync();
        Ok(())
    })?;
    Ok(vec![forward, backward])
}

fn groups(a: &GroupsArgs) -> anyhow::Result<Vec<Timing>> {
    let model = effp_graph::onnx::load_file(&a.model)?;
    let shapes = time("shape inference", 1, a.iters, || {
        let mut m = model.clone();
        effp_graph::shape::infer_shapes(&mut m, None)?;
        Ok(())
    })?;
    let (inferred, _) = effp_graph::analyse(model.clone(), None)?;
    let analysis = time("dependency groups", 1, a.iters, || {
        ChannelAnalysis::new(&inferred.graph)?;
        Ok(())
    })?;
    let both = time("shapes + groups", 1, a.iters, || {
        let mut m = model.clone();
        effp_graph::shape::infer_shapes(&mut m, None)?;
        ChannelAnalysis::new(&m.graph)?;
        Ok(())
    })?;
    Ok(vec![shapes, analysis, both])
}

/// Times a plain training step and a masked one of the same network, interleaved so
/// that both see the same machine state.
fn step(a: &StepArgs) -> anyhow::Result<Vec<Timing>> {
    tch::set_num_threads(a.run.threads);
    let device = effp_engine::runtime::resolve_device(a.run.device)?;
    let (model, _) = effp_graph::analyse_file(&a.model, None)?;
    let analysis = ChannelAnalysis::new(&model.graph)?;
    let mask = l1_mask(
        &model.graph,
        &analysis,
        Target::FlopsRatio(a.mask_flops),
        L1Options::default(),
    )?;
    let teacher = Network::new(&model, device)?;
    let plain = Network::new(&model, device)?;
    let masked = Network::new(&model, device)?.with_gates(&analysis);
    let targets = DistillTargets::resolve(Distill::Heads, &model.graph, &analysis)?;
    let optimizer = |net: &Network| {
        AdamW::new(
            net.trainable()
                .into_iter()
                .map(Tensor::shallow_clone)
                .collect(),
            5e-4,
        )
    };
    let (mut opt_plain, mut opt_masked) = (optimizer(&plain), optimizer(&masked));
    let gates = masked
        .gate_map()
        .expect("gates were added")
        .gates_for(&mask, device)
        .set_requires_grad(true);
    let groups = analysis.groups.len() as i64;
    let mut benefit = Tensor::zeros([groups], (Kind::Float, device));
    let mut sensitivity = Tensor::zeros([groups], (Kind::Float, device));
    let g = &model.graph;
    let mut shape: Vec<i64> = g
        .shape(g.inputs[0].value)
        .unwrap_or(&[])
        .iter()
        .map(|&d| d as i64)
        .collect();
    shape[0] = a.batch;
    tch::manual_seed(0);
    let x = Tensor::rand(&shape, (Kind::Float, device));
    let sync = || {
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let mut plain_ms = Vec::new();
    let mut masked_ms = Vec::new();
    for i in 0..a.run.warmup + a.iters {
        let start = Instant::now();
        distill_step(
            &teacher,
            &plain,
            &targets,
            &x,
            &mut opt_plain,
            1e-4,
            None,
            None,
        )?;
        sync();
        let t_plain = start.elapsed().as_secs_f64() * 1e3;
        let start = Instant::now();
        let gating = Gating {
            gates: &gates,
            benefit: &mut benefit,
            sensitivity: &mut sensitivity,
        };
        distill_step(
            &teacher,
            &masked,
            &targets,
            &x,
            &mut opt_masked,
            1e-4,
            Some(gating),
            None,
        )?;
        sync();
        let t_masked = start.elapsed().as_secs_f64() * 1e3;
        if i >= a.run.warmup {
            plain_ms.push(t_plain);
            masked_ms.push(t_masked);
        }
    }
    Ok(vec![
        summary("plain step", plain_ms),
        summary("masked step", masked_ms),
    ])
}

fn summary(name: &'static str, mut samples: Vec<f64>) -> Timing {
    samples.sort_by(f64::total_cmp);
    Timing {
        name,
        median_ms: samples[samples.len() / 2],
        min_ms: samples[0],
        iters: samples.len(),
    }
}
