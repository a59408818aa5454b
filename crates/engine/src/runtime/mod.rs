//! Executing the graph IR with tch, on CPU or CUDA, with autograd.

mod device;
mod gates;
mod ops;

pub use device::{DeviceChoice, resolve_device};
pub use gates::GateMap;

use effp_graph::channels::ChannelAnalysis;
use effp_graph::ir::{Model, NodeId, Op, ValueId};
use tch::{Device, Kind, Tensor};

use crate::error::EngineError;

/// A model ready to run: its constants on the device, its weights as trainable
/// tensors, and optionally the gates that switch channel groups off.
#[derive(Debug)]
pub struct Network {
    model: Model,
    device: Device,
    /// Device tensors of float constants, indexed by value.
    constants: Vec<Option<Tensor>>,
    /// Values that hold trainable weights (Conv/ConvTranspose/Gemm weights and
    /// biases, BatchNormalization scale and shift).
    trainable: Vec<ValueId>,
    /// For each value, the last node that reads it (values are freed after it).
    last_use: Vec<usize>,
    /// Batch size the shapes were inferred with; a batch-sized leading entry in a
    /// Reshape target follows the actual batch.
    reference_batch: i64,
    gates: Option<GateMap>,
    /// How each node is executed (fusions decided once, at build time).
    plan: Vec<Step>,
    /// Whether convolutions run in full float32 (see [`Network::precise`]).
    precise: bool,
}

/// How one node is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// By its op.
    Run,
    /// Not at all: a later fused step computes what it fed, or shape inference
    /// folded its outputs (a size computation at the inferred input size).
    Skip,
    /// As x · sigmoid(x) in one kernel, replacing Mul(x, Sigmoid(x)).
    Silu(ValueId),
}

/// Finds Mul(x, Sigmoid(x)) pairs (SiLU as exporters write it) whose Sigmoid output
/// feeds nothing else, so both can run as one fused kernel.
fn plan_steps(model: &Model) -> Vec<Step> {
    let g = &model.graph;
    let mut readers = vec![0usize; g.values.len()];
    for node in &g.nodes {
        for id in node.inputs.iter().flatten() {
            readers[id.0] += 1;
        }
    }
    for io in &g.outputs {
        readers[io.value.0] += 1;
    }
    let mut plan = vec![Step::Run; g.nodes.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        if node.op != Op::Mul {
            continue;
        }
        let (Some(a), Some(b)) = (node.input(0), node.input(1)) else {
            continue;
        };
        for (x, s) in [(a, b), (b, a)] {
            let Some(p) = g.value(s).producer else {
                continue;
            };
            let sig = g.node(p);
            if sig.op == Op::Sigmoid && sig.input(0) == Some(x) && readers[s.0] == 1 {
                plan[p.0] = Step::Skip;
                plan[i] = Step::Silu(x);
                break;
            }
        }
    }
    plan
}

impl Network {
    /// Prepares a model whose shapes have been inferred (see
    /// [`effp_graph::shape::infer_shapes`]); fails on ops or attributes the runtime
    /// cannot execute.
    ///
    /// A dynamic-shape export runs at the size its shapes were inferred at: the
    /// values its shape subgraph computes are taken as constants (folded at
    /// inference), and the nodes computing them are not executed.
    pub fn new(model: &Model, device: Device) -> Result<Self, EngineError> {
        effp_graph::require_supported(model)?;
        let g = &model.graph;
        for node in &g.nodes {
            ops::check_supported(g, node)?;
        }
        let mut trainable = Vec::new();
        for node in &g.nodes {
            let positions: &[usize] = match node.op {
                Op::Conv(_) | Op::ConvTranspose(_) | Op::Gemm { .. } => &[1, 2],
                Op::BatchNormalization { .. } => &[1, 2],
                _ => &[],
            };
            for &p in positions {
                if let Some(id) = node.input(p).filter(|&id| g.constant(id).is_some())
                    && !trainable.contains(&id)
                {
                    trainable.push(id);
                }
            }
        }
        // Float constants, and every value the shape subgraph of a dynamic-shape
        // export computes at the inferred size: those are what their consumers read,
        // since the nodes computing them are not executed.
        let constants = g
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let t = match (&v.constant, &v.folded) {
                    (Some(t), _) if t.dtype().is_float() => t,
                    (None, Some(t)) => t,
                    _ => return None,
                };
                let dims: Vec<i64> = t.dims().iter().map(|&d| d as i64).collect();
                let tensor = Tensor::from_slice(&t.to_f32_vec())
                    .reshape(&dims)
                    .to_device(device);
                let tensor = if trainable.contains(&ValueId(i)) {
                    tensor.set_requires_grad(true)
                } else {
                    tensor
                };
                Some(tensor)
            })
            .collect();
        let mut last_use = vec![0usize; g.values.len()];
        for (i, node) in g.nodes.iter().enumerate() {
            for id in node.inputs.iter().flatten() {
                last_use[id.0] = i;
            }
        }
        for io in &g.outputs {
            last_use[io.value.0] = usize::MAX;
        }
        let reference_batch = g
            .inputs
            .first()
            .and_then(|io| g.shape(io.value))
            .and_then(|s| s.first())
            .map_or(1, |&b| b as i64);
        Ok(Self {
            model: model.clone(),
            device,
            constants,
            trainable,
            last_use,
            reference_batch,
            gates: None,
            plan: plan_steps(model)
                .into_iter()
                .zip(&g.nodes)
                .map(|(step, node)| if g.is_folded(node) { Step::Skip } else { step })
                .collect(),
            precise: false,
        })
    }

    /// Runs convolutions in full float32 even where the GPU would use TF32 (about
    /// three decimal digits): what a check that two networks compute the same thing
    /// to float tolerance needs. Training keeps the faster default.
    pub fn precise(mut self) -> Self {
        self.precise = true;
        self
    }

    /// Keeps the weights held by `values` fixed: they leave the trainable set (and
    /// stop requiring gradients), so optimisers and exports pass them by.
    pub fn frozen(mut self, values: &[ValueId]) -> Self {
        for &v in values {
            if let Some(t) = self.constants[v.0].as_mut() {
                *t = t.detach();
            }
        }
        self.trainable.retain(|v| !values.contains(v));
        self
    }

    /// Adds gates for the groups of `analysis` (computed on this model's graph).
    pub fn with_gates(mut self, analysis: &ChannelAnalysis) -> Self {
        self.gates = Some(GateMap::new(&self.model.graph, analysis, self.device));
        self
    }

    /// The gate map, when gates were added.
    pub fn gate_map(&self) -> Option<&GateMap> {
        self.gates.as_ref()
    }

    /// The device the network runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The model this network runs.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The device tensor of a float constant (a weight, bias or other parameter).
    pub fn constant(&self, value: ValueId) -> Option<&Tensor> {
        self.constants[value.0].as_ref()
    }

    /// The model with its trainable weights replaced by this network's current values.
    pub fn export(&self) -> Result<Model, EngineError> {
        self.export_values(&self.trainable())
    }

    /// The model with its trainable weights replaced by `values`, one tensor of the
    /// same shape per trainable weight in [`Network::trainable`]'s order: how
    /// per-weight state (optimiser moments) is carried through a compaction.
    pub fn export_values(&self, values: &[&Tensor]) -> Result<Model, EngineError> {
        let mut model = self.model.clone();
        let ids = self
            .trainable
            .iter()
            .filter(|id| self.constants[id.0].is_some());
        for (&id, t) in ids.zip(values) {
            let dims: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
            let values = Vec::<f32>::try_from(
                t.detach()
                    .to_device(Device::Cpu)
                    .to_kind(Kind::Float)
                    .flatten(0, -1),
            )
            .map_err(|e| EngineError::Input(e.to_string()))?;
            let stored = model.graph.values[id.0]
                .constant
                .as_ref()
                .map(|c| c.dtype());
            if stored != Some(effp_graph::ir::DataType::Float32) {
                continue; // other precisions keep their stored values
            }
            model.graph.values[id.0].constant =
                Some(effp_graph::ir::Tensor::from_f32(dims, &values));
        }
        Ok(model)
    }

    /// The values `model` stores where this network has trainable weights, in
    /// [`Network::trainable`]'s order, on this network's device (`model` has this
    /// network's graph, with other numbers).
    pub fn trainable_in(&self, model: &Model) -> Result<Vec<Tensor>, EngineError> {
        self.trainable
            .iter()
            .filter(|id| self.constants[id.0].is_some())
            .map(|&id| {
                let t = model.graph.constant(id).ok_or_else(|| {
                    EngineError::Input(format!("value {} is not a constant", id.0))
                })?;
                let dims: Vec<i64> = t.dims().iter().map(|&d| d as i64).collect();
                Ok(Tensor::from_slice(&t.to_f32_vec())
                    .reshape(&dims)
                    .to_device(self.device))
            })
            .collect()
    }

    /// The trainable weight tensors (they require gradients).
    pub fn trainable(&self) -> Vec<&Tensor> {
        self.trainable
            .iter()
            .filter_map(|id| self.constants[id.0].as_ref())
            .collect()
    }

    /// Frees the values whose last reader is node `index`.
    fn release(&self, values: &mut [Option<Tensor>], index: usize) {
        for id in self.model.graph.nodes[index].inputs.iter().flatten() {
            if self.last_use[id.0] == index {
                values[id.0] = None;
            }
        }
    }

    /// Runs the network on one tensor per graph input (any batch size); `gates`, one
    /// value per group, switches groups off where they enter their consumers.
    pub fn forward(
        &self,
        inputs: &[Tensor],
        gates: Option<&Tensor>,
    ) -> Result<Vec<Tensor>, EngineError> {
        self.forward_tapped(inputs, gates, &[])
            .map(|(outputs, _)| outputs)
    }

    /// Like [`Network::forward`], also returning the intermediate values `taps` (in
    /// their order): what distillation compares besides the graph outputs.
    pub fn forward_tapped(
        &self,
        inputs: &[Tensor],
        gates: Option<&Tensor>,
        taps: &[ValueId],
    ) -> Result<(Vec<Tensor>, Vec<Tensor>), EngineError> {
        let mut tapped: Vec<Option<Tensor>> = taps.iter().map(|_| None).collect();
        let g = &self.model.graph;
        if inputs.len() != g.inputs.len() {
            return Err(EngineError::Input(format!(
                "the model takes {} input(s), {} given",
                g.inputs.len(),
                inputs.len()
            )));
        }
        if let (Some(gates), Some(map)) = (gates, &self.gates)
            && gates.size() != [map.groups() as i64]
        {
            return Err(EngineError::Input(format!(
                "gates have shape {:?}, expected [{}]",
                gates.size(),
                map.groups()
            )));
        }
        let mut values: Vec<Option<Tensor>> = (0..g.values.len()).map(|_| None).collect();
        let batch = inputs.first().map_or(self.reference_batch, |t| {
            t.size().first().copied().unwrap_or(1)
        });
        for (io, t) in g.inputs.iter().zip(inputs) {
            let expected = g.shape(io.value).unwrap_or(&[]);
            let size = t.size();
            let matches = size.len() == expected.len()
                && size
                    .iter()
                    .zip(expected)
                    .skip(1)
                    .all(|(&a, &b)| a == b as i64);
            if !matches {
                return Err(EngineError::Input(format!(
                    "input '{}' has shape {size:?}, expected {expected:?} (any batch size)",
                    g.value(io.value).name
                )));
            }
            values[io.value.0] = Some(t.to_device(self.device).to_kind(Kind::Float));
        }
        for (index, node) in g.nodes.iter().enumerate() {
            match self.plan[index] {
                Step::Skip => continue,
                Step::Silu(x) => {
                    let input = values[x.0]
                        .as_ref()
                        .expect("a fused SiLU reads a computed value");
                    let y = input.f_silu().map_err(|e| EngineError::Torch {
                        node: node.name.clone(),
                        op: "Mul(x, Sigmoid(x))".into(),
                        message: torch_message(&e),
                    })?;
                    let id = node.outputs[0];
                    for (k, _) in taps.iter().enumerate().filter(|&(_, &v)| v == id) {
                        tapped[k] = Some(y.shallow_clone());
                    }
                    values[id.0] = Some(y);
                    self.release(&mut values, index);
                    continue;
                }
                Step::Run => {}
            }
            let args: Vec<Option<&Tensor>> = node
                .inputs
                .iter()
                .map(|i| i.and_then(|id| values[id.0].as_ref().or(self.constants[id.0].as_ref())))
                .collect();
            let gate = match (gates, &self.gates) {
                (Some(gates), Some(map)) => map.node_gate(NodeId(index), gates),
                _ => None,
            };
            let ctx = ops::Context {
                graph: g,
                batch,
                reference_batch: self.reference_batch,
                precise: self.precise,
            };
            let outputs =
                ops::run(&ctx, node, &args, gate.as_ref()).map_err(|e| EngineError::Torch {
                    node: node.name.clone(),
                    op: node.op.op_type().to_string(),
                    message: torch_message(&e),
                })?;
            for (&id, t) in node.outputs.iter().zip(outputs) {
                // A value may be tapped twice (by distillation and by the labelled loss).
                for (k, _) in taps.iter().enumerate().filter(|&(_, &v)| v == id) {
                    tapped[k] = Some(t.shallow_clone());
                }
                values[id.0] = Some(t);
            }
            self.release(&mut values, index);
        }
        let tapped = tapped
            .into_iter()
            .zip(taps)
            .map(|(t, &v)| {
                t.ok_or_else(|| {
                    EngineError::Input(format!(
                        "value '{}' is not computed by a node and cannot be tapped",
                        g.value(v).name
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = g
            .outputs
            .iter()
            .map(|io| {
                values[io.value.0]
                    .take()
                    .or_else(|| {
                        self.constants[io.value.0]
                            .as_ref()
                            .map(Tensor::shallow_clone)
                    })
                    .ok_or_else(|| {
                        EngineError::Input(format!(
                            "output '{}' was not computed",
                            g.value(io.value).name
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((outputs, tapped))
    }

    /// Multiplies every gated consumer's weight columns by `gates` in place: the
    /// channels of switched-off groups get zero weights but keep training (soft
    /// filter pruning), unlike gating in `forward`, which also stops their gradient.
    pub fn zero_gated_columns(&self, gates: &Tensor) -> Result<(), EngineError> {
        let Some(map) = &self.gates else {
            return Ok(());
        };
        let g = &self.model.graph;
        tch::no_grad(|| {
            for (index, node) in g.nodes.iter().enumerate() {
                let Some(gate) = map.node_gate(NodeId(index), gates) else {
                    continue;
                };
                let Some(w) = node.input(1).and_then(|v| self.constants[v.0].as_ref()) else {
                    continue;
                };
                let shape: Vec<i64> = match &node.op {
                    Op::Gemm { trans_b: true, .. } => vec![1, -1],
                    Op::Gemm { .. } => vec![-1, 1],
                    Op::ConvTranspose(_) => {
                        let mut s = vec![1i64; w.dim()];
                        s[0] = -1;
                        s
                    }
                    _ => {
                        let mut s = vec![1i64; w.dim()];
                        s[1] = -1;
                        s
                    }
                };
                let mut w = w.shallow_clone();
                let _ = w.f_mul_(&gate.f_reshape(&shape)?)?;
            }
            Ok::<(), tch::TchError>(())
        })
        .map_err(|e| {
            EngineError::Input(format!("cannot zero gated weights: {}", torch_message(&e)))
        })
    }
}

/// libtorch's message without the C++ backtrace it appends.
fn torch_message(e: &tch::TchError) -> String {
    let text = e.to_string();
    let text = text.strip_prefix("Internal torch error: ").unwrap_or(&text);
    text.split("\nException raised from")
        .next()
        .unwrap_or(text)
        .trim()
        .to_string()
}
