//! effp's graph crate: ONNX load and save, the graph IR, static shape inference and
//! the cost model (MACs, FLOPs, parameters).
//!
//! It knows nothing of tch or HTTP: the engine executes what this crate describes,
//! and the service reports what this crate measures.
//!
//! ```no_run
//! use effp_graph::{analyse_file, shape::InputSize};
//! let (model, report) = analyse_file("yolov8n.onnx".as_ref(), Some("640x640".parse::<InputSize>()?))?;
//! println!("{} GFLOPs, {} params", report.totals.gflops, report.totals.params);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod channels;
pub mod cost;
mod error;
pub mod inspect;
pub mod ir;
pub mod limits;
pub mod onnx;
pub mod shape;

pub use error::{GraphError, Result};
pub use limits::Limits;

use std::path::Path;

/// Loads a model, infers its shapes and builds its inspection report.
///
/// Unsupported ops do not fail this call: they are listed in the report (and leave
/// the shapes behind them unknown), so that callers can show the user everything at
/// once and then refuse to prune with [`require_supported`].
pub fn analyse_file(
    path: &Path,
    input_size: Option<shape::InputSize>,
) -> Result<(ir::Model, inspect::InspectReport)> {
    analyse(onnx::load_file(path)?, input_size)
}

/// [`analyse_file`] under other [`Limits`] than the defaults.
pub fn analyse_file_with(
    path: &Path,
    input_size: Option<shape::InputSize>,
    limits: &Limits,
) -> Result<(ir::Model, inspect::InspectReport)> {
    analyse_with(onnx::load_file_with(path, limits)?, input_size, limits)
}

/// [`analyse_file`] for a model already in memory.
pub fn analyse(
    model: ir::Model,
    input_size: Option<shape::InputSize>,
) -> Result<(ir::Model, inspect::InspectReport)> {
    analyse_with(model, input_size, &Limits::default())
}

/// [`analyse`] under other [`Limits`] than the defaults.
pub fn analyse_with(
    mut model: ir::Model,
    input_size: Option<shape::InputSize>,
    limits: &Limits,
) -> Result<(ir::Model, inspect::InspectReport)> {
    shape::infer_shapes_with(&mut model, input_size, limits)?;
    let report = inspect::inspect(&model);
    Ok((model, report))
}

/// Fails with [`GraphError::UnsupportedOps`] when the graph has any op effp cannot run.
pub fn require_supported(model: &ir::Model) -> Result<()> {
    let ops = model.graph.unsupported_ops();
    if ops.is_empty() {
        Ok(())
    } else {
        Err(GraphError::UnsupportedOps { ops })
    }
}
