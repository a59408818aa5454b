//! The pruning criteria rank groups the way they claim to: L1 removes exactly the
//! weakest filters (normalised per layer), and EFFP's curvature estimate orders
//! groups like the loss increase actually measured when each is switched off alone,
//! far better than a random order does.

use effp_engine::data::dataset::load;
use effp_engine::data::loader::{LoaderOptions, epoch};
use effp_engine::prune::{L1Options, Target, l1_mask};
use effp_engine::runtime::Network;
use effp_engine::tch::{self, Device, Kind, Tensor};
use effp_engine::train::curvature::predicted_loss_increase;
use effp_engine::train::distill::{Distill, distillation_loss, prediction_taps};
use effp_graph::channels::cost::ActiveChannels;
use effp_graph::channels::{ChannelAnalysis, Mask};
use effp_graph::ir::{Model, NodeId, Op};
use effp_graph::onnx::{load_bytes, load_file};
use effp_graph::shape::infer_shapes;
use effp_testkit::builder::{ModelBuilder, ints};
use effp_testkit::fixtures;

/// Filter scales of the two prunable convolutions: filter `c` of layer `l` has every
/// weight `±SCALES[l][c]`, so its L2 norm is that times √(weights per filter). The
/// second layer's are three times larger: only normalising by the layer's largest
/// filter, as L1 does, makes the layers comparable.
const SCALES: [[f32; 8]; 2] = [
    [0.9, 0.2, 0.6, 0.05, 1.0, 0.35, 0.75, 0.5],
    [0.9, 3.0, 0.3, 2.4, 1.35, 1.95, 0.75, 2.7],
];

/// Input → Conv 3→8 → Relu → Conv 8→8 → Relu → Conv 8→4 (the output, not prunable):
/// sixteen groups, one per channel of the first two convolutions.
fn known_norms_model() -> Model {
    let mut b = ModelBuilder::new("known_norms", 7);
    let x = b.input("images", &[1, 3, 16, 16]);
    let mut f = x;
    for (layer, &cin) in [3i64, 8].iter().enumerate() {
        let per_filter = (cin * 9) as usize;
        let values: Vec<f32> = (0..8 * per_filter)
            .map(|i| {
                let sign = if i % 3 == 0 { -1.0 } else { 1.0 };
                sign * SCALES[layer][i / per_filter]
            })
            .collect();
        let w = b.constant("w", &[8, cin, 3, 3], &values);
        let bias = b.constant("b", &[8], &[0.01; 8]);
        let c = b.op(
            "Conv",
            &[&f, &w, &bias],
            vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])],
        );
        f = b.op("Relu", &[&c], vec![]);
    }
    let out = b.conv(&f, 8, 4, 1, 1, 1);
    let mut model = load_bytes(&b.finish_as(&out, "output0", &[1, 4, 16, 16])).unwrap();
    infer_shapes(&mut model, None).unwrap();
    model
}

/// (layer, channel) of every group: the position of its producer among the convolutions.
fn layer_channels(model: &Model, analysis: &ChannelAnalysis) -> Vec<(usize, usize)> {
    let convs: Vec<NodeId> = (0..model.graph.nodes.len())
        .map(NodeId)
        .filter(|&n| matches!(model.graph.node(n).op, Op::Conv(_)))
        .collect();
    analysis
        .groups
        .iter()
        .map(|g| {
            assert_eq!(g.producers.len(), 1);
            let (node, channel) = g.producers[0];
            (convs.iter().position(|&c| c == node).unwrap(), channel)
        })
        .collect()
}

fn switched_off(mask: &Mask, at: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut off: Vec<(usize, usize)> = (0..mask.len())
        .filter(|&g| !mask.is_active(g))
        .map(|g| at[g])
        .collect();
    off.sort();
    off
}

/// With the cost ignored (exponent 0), L1 removes the groups of smallest normalised
/// norm across layers, and at a FLOPs target that is exactly the cost of the five
/// weakest, exactly those five: not the five smallest raw norms (all in the first
/// layer), nor a reversed or random choice.
#[test]
fn l1_removes_exactly_the_filters_of_smallest_normalised_norm() {
    let model = known_norms_model();
    let analysis = ChannelAnalysis::new(&model.graph).unwrap();
    let at = layer_channels(&model, &analysis);
    assert_eq!(at.len(), 16);
    // Normalised norms: layer 0 over 1.0, layer 1 over 3.0.
    let normalised =
        |(l, c): (usize, usize)| SCALES[l][c] / SCALES[l].iter().copied().fold(0.0, f32::max);
    let mut ranked = at.clone();
    ranked.sort_by(|&a, &b| normalised(a).total_cmp(&normalised(b)));
    let mut weakest: Vec<(usize, usize)> = ranked[..5].to_vec();
    weakest.sort();
    assert_eq!(weakest, [(0, 1), (0, 3), (1, 0), (1, 2), (1, 6)]);
    let mut expected = Mask::all_active(16);
    for g in (0..16).filter(|&g| weakest.contains(&at[g])) {
        expected.set(g, false);
    }
    let flops = ActiveChannels::for_mask(&model.graph, &analysis, &expected)
        .cost()
        .flops();
    let options = L1Options {
        cost_exponent: 0.0,
        ..L1Options::default()
    };
    let mask = l1_mask(&model.graph, &analysis, Target::Flops(flops), options).unwrap();
    assert_eq!(switched_off(&mask, &at), weakest);
}

/// With the default cost weighting, the groups of one layer cost the same, so at any
/// target each layer loses its weakest filters first: every removed filter of a layer
/// is weaker than every kept one, also when they go in pairs (`round_to` 2).
#[test]
fn l1_thins_every_layer_from_its_weakest_filters() {
    let model = known_norms_model();
    let analysis = ChannelAnalysis::new(&model.graph).unwrap();
    let at = layer_channels(&model, &analysis);
    for round_to in [1, 2] {
        for target in [0.7, 0.5, 0.3] {
            let options = L1Options {
                round_to,
                ..L1Options::default()
            };
            let mask =
                l1_mask(&model.graph, &analysis, Target::FlopsRatio(target), options).unwrap();
            let off = switched_off(&mask, &at);
            for (layer, scales) in SCALES.iter().enumerate() {
                let mut by_norm: Vec<usize> = (0..8).collect();
                by_norm.sort_by(|&a, &b| scales[a].total_cmp(&scales[b]));
                let removed: Vec<usize> = off
                    .iter()
                    .filter(|&&(l, _)| l == layer)
                    .map(|&(_, c)| c)
                    .collect();
                let mut weakest = by_norm[..removed.len()].to_vec();
                weakest.sort();
                let case = format!("layer {layer} at {target}, round_to {round_to}");
                assert_eq!(removed, weakest, "{case}");
                assert_eq!(removed.len() % round_to, 0, "{case}");
            }
            assert!(
                off.len() >= 3,
                "only {} groups removed at {target}",
                off.len()
            );
        }
    }
}

/// Spearman's rank correlation (ties get their mean rank).
fn spearman(a: &[f64], b: &[f64]) -> f64 {
    fn ranks(v: &[f64]) -> Vec<f64> {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < order.len() {
            let mut j = i;
            while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
                j += 1;
            }
            for k in i..=j {
                r[order[k]] = (i + j) as f64 / 2.0;
            }
            i = j + 1;
        }
        r
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let mean = (n - 1.0) / 2.0;
    let cov: f64 = ra
        .iter()
        .zip(&rb)
        .map(|(x, y)| (x - mean) * (y - mean))
        .sum();
    let var = |r: &[f64]| r.iter().map(|x| (x - mean).powi(2)).sum::<f64>();
    cov / (var(&ra) * var(&rb)).sqrt()
}

/// EFFP's curvature criterion on the trained fixture detector, before its first mask
/// update (student = original): for a sample of groups, the loss increase it predicts
/// for switching each off alone is compared with the distillation loss measured with
/// that group's gate closed, on the same batch (48 groups spread over the network).
/// The ranks must agree closely, and far better than any of a hundred random
/// rankings; the sizes must agree too. (Taylor's estimate, the squared gate gradient, is zero at this point for
/// every group, which is why EFFP uses the curvature here.)
#[test]
fn curvature_ranks_groups_like_the_measured_loss_increase() {
    let mut model = load_file(&fixtures::path("trained.onnx")).unwrap();
    infer_shapes(&mut model, None).unwrap();
    let analysis = ChannelAnalysis::new(&model.graph).unwrap();
    let data = load(&fixtures::dir().join("synth")).unwrap();
    let loader = LoaderOptions::plain(4, 128, 3);
    let x = epoch(data.split("train").unwrap(), loader, 0)
        .next()
        .unwrap()
        .unwrap()
        .images;
    // Eight probes: EFFP's first estimate takes four, then a running mean; four
    // alone leave enough probe noise to move the correlation by ±0.1.
    let predicted = predicted_loss_increase(&model, &analysis, &x, Distill::Heads, 8, 11).unwrap();

    let groups = analysis.groups.len();
    let sample: Vec<usize> = (0..48).map(|k| k * groups / 48).collect();
    let teacher = Network::new(&model, Device::Cpu).unwrap();
    let student = Network::new(&model, Device::Cpu)
        .unwrap()
        .with_gates(&analysis);
    let taps = prediction_taps(&model.graph, &analysis);
    let (t_out, t_taps) =
        tch::no_grad(|| teacher.forward_tapped(&[x.shallow_clone()], None, &taps)).unwrap();
    let reference: Vec<Tensor> = t_out.into_iter().chain(t_taps).collect();
    let measured: Vec<f64> = sample
        .iter()
        .map(|&g| {
            let mut open = vec![1.0f32; groups];
            open[g] = 0.0;
            let gates = Tensor::from_slice(&open);
            let (out, tapped) =
                tch::no_grad(|| student.forward_tapped(&[x.shallow_clone()], Some(&gates), &taps))
                    .unwrap();
            let all: Vec<Tensor> = out.into_iter().chain(tapped).collect();
            distillation_loss(&all, &reference)
                .to_kind(Kind::Double)
                .double_value(&[])
        })
        .collect();
    let ours: Vec<f64> = sample.iter().map(|&g| predicted[g]).collect();
    let rho = spearman(&ours, &measured);
    // The estimate is a loss increase, not just an order: its typical size is the
    // measured one's (median ratio 1.03 here, 0.73–1.19 over probe seeds 1–8),
    // which a criterion off by the ½ or by the loss's normalisation would not be.
    let mut ratios: Vec<f64> = ours.iter().zip(&measured).map(|(p, m)| p / m).collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    assert!(
        (0.5..=1.4).contains(&median),
        "median predicted/measured {median}"
    );

    // A hundred random rankings of the same groups.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut random_rhos: Vec<f64> = (0..100)
        .map(|_| {
            let mut shuffled = ours.clone();
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            spearman(&shuffled, &measured)
        })
        .collect();
    random_rhos.sort_by(f64::total_cmp);
    let best_random = random_rhos[99];
    eprintln!("Spearman {rho}, best random {best_random}, median ratio {median}");
    // Measured on this batch: 0.94 (probe seed 11; 0.91–0.95 for seeds 1–8, 0.72–0.91
    // with four probes, about 0.6 with one); the best of the random rankings 0.32.
    // Runs in 2–15 s in a debug build on two shared cores.
    assert!(
        rho >= 0.75,
        "Spearman {rho} (random rankings up to {best_random})"
    );
    assert!(
        rho - best_random >= 0.4,
        "Spearman {rho}, random rankings up to {best_random}"
    );
}
