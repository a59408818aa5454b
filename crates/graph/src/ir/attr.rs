//! Node attributes as plain values, and a reader that turns them into typed ops.

use super::tensor::Tensor;
use crate::error::GraphError;

/// One attribute value, independent of the protobuf encoding.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// A single integer.
    Int(i64),
    /// A list of integers.
    Ints(Vec<i64>),
    /// A single float.
    Float(f32),
    /// A list of floats.
    Floats(Vec<f32>),
    /// A byte string (ONNX strings are bytes).
    String(Vec<u8>),
    /// A list of byte strings.
    Strings(Vec<Vec<u8>>),
    /// A constant tensor.
    Tensor(Tensor),
    /// Anything else (graphs, types, sparse tensors), kept as the encoded
    /// `AttributeProto` so that it can be written back unchanged.
    Opaque(Vec<u8>),
}

/// A named attribute.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    /// Attribute name.
    pub name: String,
    /// Attribute value.
    pub value: AttrValue,
}

impl Attribute {
    /// An integer attribute.
    pub fn int(name: &str, v: i64) -> Self {
        Self {
            name: name.into(),
            value: AttrValue::Int(v),
        }
    }
    /// An integer-list attribute.
    pub fn ints(name: &str, v: &[i64]) -> Self {
        Self {
            name: name.into(),
            value: AttrValue::Ints(v.to_vec()),
        }
    }
    /// A float attribute.
    pub fn float(name: &str, v: f32) -> Self {
        Self {
            name: name.into(),
            value: AttrValue::Float(v),
        }
    }
    /// A string attribute.
    pub fn string(name: &str, v: &str) -> Self {
        Self {
            name: name.into(),
            value: AttrValue::String(v.as_bytes().to_vec()),
        }
    }
}

/// Reads a node's attributes by name and type, remembering which ones were used so
/// that an attribute the op does not know is reported instead of silently ignored.
pub(crate) struct AttrReader<'a> {
    node: &'a str,
    op: &'a str,
    attrs: &'a [Attribute],
    used: Vec<bool>,
}

impl<'a> AttrReader<'a> {
    pub(crate) fn new(node: &'a str, op: &'a str, attrs: &'a [Attribute]) -> Self {
        Self {
            node,
            op,
            attrs,
            used: vec![false; attrs.len()],
        }
    }

    pub(crate) fn error(&self, attribute: &str, reason: impl Into<String>) -> GraphError {
        GraphError::Attribute {
            node: self.node.to_string(),
            op: self.op.to_string(),
            attribute: attribute.to_string(),
            reason: reason.into(),
        }
    }

    fn take(&mut self, name: &str) -> Option<&'a AttrValue> {
        let i = self.attrs.iter().position(|a| a.name == name)?;
        self.used[i] = true;
        Some(&self.attrs[i].value)
    }

    pub(crate) fn int(&mut self, name: &str) -> Result<Option<i64>, GraphError> {
        match self.take(name) {
            None => Ok(None),
            Some(AttrValue::Int(v)) => Ok(Some(*v)),
            Some(_) => Err(self.error(name, "must be an integer")),
        }
    }

    pub(crate) fn int_or(&mut self, name: &str, default: i64) -> Result<i64, GraphError> {
        Ok(self.int(name)?.unwrap_or(default))
    }

    pub(crate) fn ints(&mut self, name: &str) -> Result<Option<Vec<i64>>, GraphError> {
        match self.take(name) {
            None => Ok(None),
            Some(AttrValue::Ints(v)) => Ok(Some(v.clone())),
            Some(_) => Err(self.error(name, "must be a list of integers")),
        }
    }

    pub(crate) fn float(&mut self, name: &str) -> Result<Option<f32>, GraphError> {
        match self.take(name) {
            None => Ok(None),
            Some(AttrValue::Float(v)) => Ok(Some(*v)),
            Some(AttrValue::Int(v)) => Ok(Some(*v as f32)),
            Some(_) => Err(self.error(name, "must be a float")),
        }
    }

    pub(crate) fn floats(&mut self, name: &str) -> Result<Option<Vec<f32>>, GraphError> {
        match self.take(name) {
            None => Ok(None),
            Some(AttrValue::Floats(v)) => Ok(Some(v.clone())),
            Some(_) => Err(self.error(name, "must be a list of floats")),
        }
    }

    pub(crate) fn float_or(&mut self, name: &str, default: f32) -> Result<f32, GraphError> {
        Ok(self.float(name)?.unwrap_or(default))
    }

    pub(crate) fn string(&mut self, name: &str) -> Result<Option<String>, GraphError> {
        match self.take(name) {
            None => Ok(None),
            Some(AttrValue::String(v)) => String::from_utf8(v.clone())
                .map(Some)
                .map_err(|_| self.error(name, "is not valid UTF-8")),
            Some(_) => Err(self.error(name, "must be a string")),
        }
    }

    pub(crate) fn string_or(&mut self, name: &str, default: &str) -> Result<String, GraphError> {
        Ok(self.string(name)?.unwrap_or_else(|| default.to_string()))
    }

    pub(crate) fn tensor(&mut self, name: &str) -> Result<Option<Tensor>, GraphError> {
        match self.take(name) {
            None => Ok(None),
            Some(AttrValue::Tensor(t)) => Ok(Some(t.clone())),
            Some(_) => Err(self.error(name, "must be a tensor")),
        }
    }

    /// Fails on the first attribute that no `take` asked for.
    pub(crate) fn finish(self) -> Result<(), GraphError> {
        match self.used.iter().position(|u| !u) {
            Some(i) => Err(self.error(
                &self.attrs[i].name,
                "is not a known attribute of this op; effp cannot honour it",
            )),
            None => Ok(()),
        }
    }
}
