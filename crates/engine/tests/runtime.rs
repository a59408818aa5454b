//! The tch runtime computes what onnxruntime computes, on every fixture, and the
//! masked network equals the compacted one when both run in it.

use std::path::{Path, PathBuf};

use effp_engine::runtime::Network;
use effp_engine::tch::{self, Device, Kind, Tensor};
use effp_graph::channels::{ChannelAnalysis, Mask, compact};
use effp_graph::ir::Model;
use effp_graph::onnx::{load_bytes, load_file, save_file};
use effp_graph::shape::infer_shapes;
use effp_testkit::{fixtures, zoo};

fn prepared(mut m: Model) -> Model {
    infer_shapes(&mut m, None).unwrap();
    m
}

fn input_for(model: &Model, seed: i64, batch: i64) -> Tensor {
    tch::manual_seed(seed);
    let g = &model.graph;
    let shape: Vec<i64> = g
        .shape(g.inputs[0].value)
        .unwrap()
        .iter()
        .map(|&d| d as i64)
        .collect();
    let mut shape = shape;
    shape[0] = batch;
    Tensor::randn(&shape, (Kind::Float, Device::Cpu))
}

fn write_raw(t: &Tensor, path: &Path) {
    let v: Vec<f32> = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
    std::fs::write(
        path,
        v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
}

fn read_raw(path: &str, shape: &[i64]) -> Tensor {
    let bytes = std::fs::read(path).unwrap();
    let v: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Tensor::from_slice(&v).reshape(shape)
}

/// The error relative per output channel, as the check before every write measures it.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    effp_engine::verify::channel_relative_error(a, b)
}

/// Runs each (model file, input) in onnxruntime and returns its outputs.
fn onnxruntime(jobs: &[(PathBuf, Tensor)], dir: &Path) -> Vec<Vec<Tensor>> {
    let mut request = Vec::new();
    for (i, (model, input)) in jobs.iter().enumerate() {
        let job_dir = dir.join(format!("job{i}"));
        std::fs::create_dir_all(&job_dir).unwrap();
        let raw = job_dir.join("input.f32");
        write_raw(input, &raw);
        request.push(serde_json::json!({ "model": model, "inputs": [raw], "out_dir": job_dir }));
    }
    let answer = fixtures::reference("run", &serde_json::json!({ "jobs": request }));
    answer
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| {
                    let shape: Vec<i64> = o["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_i64().unwrap())
                        .collect();
                    read_raw(o["path"].as_str().unwrap(), &shape)
                })
                .collect()
        })
        .collect()
}

fn all_models(tmp: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = fixtures::PUBLISHED
        .iter()
        .map(|(f, ..)| f.to_string())
        .chain(fixtures::TINY.iter().map(|f| f.to_string()))
        .map(|f| (f.clone(), fixtures::path(&f)))
        .collect();
    for z in zoo::all() {
        let p = tmp.join(format!("{}.onnx", z.name));
        std::fs::write(&p, &z.bytes).unwrap();
        out.push((z.name.to_string(), p));
    }
    out
}

#[test]
fn runtime_matches_onnxruntime_on_every_fixture() {
    tch::set_num_threads(2);
    let tmp = tempfile::tempdir().unwrap();
    let models = all_models(tmp.path());
    let mut jobs = Vec::new();
    let mut ours = Vec::new();
    for (i, (name, path)) in models.iter().enumerate() {
        let model = prepared(load_file(path).unwrap());
        let net = Network::new(&model, Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
        let x = input_for(&model, i as i64, 1);
        let y = tch::no_grad(|| net.forward(&[x.shallow_clone()], None))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        ours.push((name.clone(), y));
        jobs.push((path.clone(), x));
    }
    let reference = onnxruntime(&jobs, tmp.path());
    for ((name, y), r) in ours.iter().zip(&reference) {
        assert_eq!(y.len(), r.len(), "{name}: output count");
        for (a, b) in y.iter().zip(r) {
            assert_eq!(a.size(), b.size(), "{name}: output shape");
            let e = rel_err(a, b);
            eprintln!(
                "{name}: relative error {e:.2e} against onnxruntime, output {:?}",
                a.size()
            );
            assert!(e <= 1e-4, "{name}: relative error {e} against onnxruntime");
        }
    }
}

#[test]
fn any_batch_size_runs_and_each_sample_matches_batch_one() {
    let model = prepared(load_file(&fixtures::path("yolov8t.onnx")).unwrap());
    let net = Network::new(&model, Device::Cpu).unwrap();
    let x = input_for(&model, 11, 3);
    let batched = tch::no_grad(|| net.forward(&[x.shallow_clone()], None)).unwrap();
    assert_eq!(batched[0].size()[0], 3);
    for i in 0..3 {
        let single = tch::no_grad(|| net.forward(&[x.narrow(0, i, 1)], None)).unwrap();
        let e = rel_err(&batched[0].narrow(0, i, 1), &single[0]);
        assert!(e <= 1e-5, "sample {i}: {e}");
    }
}

#[test]
fn masked_network_equals_compacted_network_in_the_runtime_and_in_onnxruntime() {
    let tmp = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    let mut models: Vec<Model> = fixtures::TINY
        .iter()
        .map(|f| prepared(load_file(&fixtures::path(f)).unwrap()))
        .collect();
    names.extend(fixtures::TINY.iter().map(|f| f.to_string()));
    for z in zoo::all() {
        models.push(prepared(load_bytes(&z.bytes).unwrap()));
        names.push(z.name.to_string());
    }
    let mut jobs = Vec::new();
    let mut compacted_outputs = Vec::new();
    for (i, (name, model)) in names.iter().zip(&models).enumerate() {
        let analysis = ChannelAnalysis::new(&model.graph).unwrap();
        tch::manual_seed(100 + i as i64);
        // A random mask: each group off with probability 0.4, one channel kept per map.
        let draws = Tensor::rand([analysis.groups.len() as i64], (Kind::Float, Device::Cpu));
        let flags: Vec<bool> = Vec::<f32>::try_from(&draws)
            .unwrap()
            .iter()
            .map(|&u| u >= 0.4)
            .collect();
        let mut mask = Mask::from_flags(flags);
        for v in 0..model.graph.values.len() {
            let v = effp_graph::ir::ValueId(v);
            let Some(n) = analysis.channels(v) else {
                continue;
            };
            if !(0..n).any(|c| analysis.group_of(v, c).is_none_or(|g| mask.is_active(g)))
                && let Some(g) = analysis.group_of(v, 0)
            {
                mask.set(g, true);
            }
        }
        let masked = Network::new(model, Device::Cpu)
            .unwrap()
            .with_gates(&analysis);
        let gates = masked.gate_map().unwrap().gates_for(&mask, Device::Cpu);
        let (small, _) = compact(model, &analysis, &mask).unwrap();
        let compacted = Network::new(&small, Device::Cpu).unwrap();
        let x = input_for(model, i as i64, 2);
        let a = tch::no_grad(|| masked.forward(&[x.shallow_clone()], Some(&gates))).unwrap();
        let b = tch::no_grad(|| compacted.forward(&[x.shallow_clone()], None)).unwrap();
        for (p, q) in a.iter().zip(&b) {
            let e = rel_err(p, q);
            assert!(e <= 1e-4, "{name}: masked vs compacted differ by {e}");
        }
        let path = tmp.path().join(format!("{name}_compact.onnx"));
        save_file(&small, &path).unwrap();
        jobs.push((path, x.narrow(0, 0, 1)));
        compacted_outputs.push((name.clone(), b));
    }
    let reference = onnxruntime(&jobs, tmp.path());
    for ((name, ours), r) in compacted_outputs.iter().zip(&reference) {
        for (a, b) in ours.iter().zip(r) {
            let e = rel_err(&a.narrow(0, 0, 1), b);
            assert!(
                e <= 1e-4,
                "{name}: runtime vs onnxruntime on the compacted model: {e}"
            );
        }
    }
}

#[test]
fn gradients_reach_the_weights_and_the_gates() {
    let model = prepared(load_file(&fixtures::path("yolo11t.onnx")).unwrap());
    let analysis = ChannelAnalysis::new(&model.graph).unwrap();
    let net = Network::new(&model, Device::Cpu)
        .unwrap()
        .with_gates(&analysis);
    let gates = net
        .gate_map()
        .unwrap()
        .gates_for(&Mask::all_active(analysis.groups.len()), Device::Cpu)
        .set_requires_grad(true);
    let x = input_for(&model, 5, 2);
    let y = net.forward(&[x], Some(&gates)).unwrap();
    y[0].square().mean(Kind::Float).backward();
    let weight_grads = net
        .trainable()
        .iter()
        .filter(|w| w.grad().defined() && w.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0)
        .count();
    assert!(
        weight_grads > net.trainable().len() / 2,
        "{weight_grads} of {} weights got gradients",
        net.trainable().len()
    );
    assert!(
        gates.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0,
        "gates get gradients"
    );
}

#[test]
fn wrong_inputs_are_errors_not_panics() {
    let model = prepared(load_file(&fixtures::path("yolov8t.onnx")).unwrap());
    let net = Network::new(&model, Device::Cpu).unwrap();
    let bad = Tensor::zeros([1, 3, 64, 64], (Kind::Float, Device::Cpu));
    let err = net.forward(&[bad], None).unwrap_err();
    assert!(
        err.to_string().contains("expected [1, 3, 128, 128]"),
        "{err}"
    );
    let err = net.forward(&[], None).unwrap_err();
    assert!(err.to_string().contains("takes 1 input"), "{err}");
}
