//! The graph IR: typed ops, named values, constant tensors.

mod attr;
mod graph;
mod op;
pub(crate) mod tensor;

pub use attr::{AttrValue, Attribute};
pub use graph::{Dim, Graph, GraphIo, Model, Node, NodeId, Value, ValueId};
pub use op::{AutoPad, Comparison, ConvAttrs, Op, PoolAttrs, ResizeAttrs, SUPPORTED_OPS, Window};
pub use tensor::{DataType, Tensor, element_count};
