//! The check of an uploaded model: it must be an ONNX model effp can read, within
//! the graph crate's limits. Its result is what the model resource shows.

use std::path::Path;

use serde_json::json;

use super::Refusal;

/// The input size at which a model with free input sizes is summarised.
const DYNAMIC_SUMMARY_SIZE: effp_graph::shape::InputSize = effp_graph::shape::InputSize {
    height: 640,
    width: 640,
};

/// The inspect report without the per-node list, plus the activation size (for job
/// memory estimates), a summary of the channel groups and whether the model leaves
/// its input size free (`free_input_size`; then the report is at 640×640 and jobs
/// must give `input_size`); or why the file is not a model effp can use.
pub fn check_model(path: &Path) -> Result<serde_json::Value, Refusal> {
    let invalid = |e: effp_graph::GraphError| {
        Refusal::unprocessable(
            "invalid-model",
            format!("the upload is not an ONNX model effp can read: {e}"),
        )
    };
    let loaded = effp_graph::onnx::load_file(path).map_err(invalid)?;
    // A model with free input sizes is summarised at the usual detector size; jobs
    // give the size they prune and train at (input_size).
    let free = effp_graph::shape::has_free_input_size(&loaded.graph);
    let size = free.then_some(DYNAMIC_SUMMARY_SIZE);
    let (model, report) = effp_graph::analyse(loaded, size).map_err(invalid)?;
    let analysis = effp_graph::channels::ChannelAnalysis::new(&model.graph).map_err(invalid)?;
    let mut value = serde_json::to_value(&report)
        .map_err(|e| Refusal::internal(format!("cannot encode the report: {e}")))?;
    let activations = activation_summary(&report);
    if let Some(object) = value.as_object_mut() {
        object.remove("nodes");
        if let Some(a) = activations {
            object.insert("activations".into(), a);
        }
        object.insert("free_input_size".into(), json!(free));
        object.insert(
            "channel_groups".into(),
            json!({ "prunable": analysis.groups.len(), "frozen_classes": analysis.frozen.len() }),
        );
    }
    Ok(value)
}

/// The elements of every node's outputs for one image at the model's own input size
/// (what a job's memory grows with), or `None` when some shape is unknown.
fn activation_summary(report: &effp_graph::inspect::InspectReport) -> Option<serde_json::Value> {
    let image = report.inputs.iter().find_map(|i| {
        let s = i.shape.as_ref()?;
        (s.len() == 4).then(|| (s[2], s[3], s[0].max(1)))
    })?;
    let mut elements: u128 = 0;
    for node in &report.nodes {
        for shape in &node.output_shapes {
            elements += shape.as_ref()?.iter().map(|&d| d as u128).product::<u128>();
        }
    }
    Some(json!({
        "elements_per_image": (elements / image.2 as u128) as f64,
        "input_height": image.0,
        "input_width": image.1,
    }))
}
