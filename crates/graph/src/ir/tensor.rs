//! Constant tensors (weights, shapes, scales) and element types.

/// Element type of a tensor, as far as effp reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// 32-bit float.
    Float32,
    /// 16-bit IEEE float.
    Float16,
    /// bfloat16.
    BFloat16,
    /// 64-bit float.
    Float64,
    /// Signed 8-bit integer.
    Int8,
    /// Unsigned 8-bit integer.
    Uint8,
    /// Signed 16-bit integer.
    Int16,
    /// Unsigned 16-bit integer.
    Uint16,
    /// Signed 32-bit integer.
    Int32,
    /// Unsigned 32-bit integer.
    Uint32,
    /// Signed 64-bit integer.
    Int64,
    /// Unsigned 64-bit integer.
    Uint64,
    /// Boolean, one byte each.
    Bool,
}

impl DataType {
    /// The type for an ONNX `TensorProto.DataType` number, if effp reads it.
    pub fn from_onnx(code: i32) -> Option<Self> {
        Some(match code {
            1 => Self::Float32,
            2 => Self::Uint8,
            3 => Self::Int8,
            4 => Self::Uint16,
            5 => Self::Int16,
            6 => Self::Int32,
            7 => Self::Int64,
            9 => Self::Bool,
            10 => Self::Float16,
            11 => Self::Float64,
            12 => Self::Uint32,
            13 => Self::Uint64,
            16 => Self::BFloat16,
            _ => return None,
        })
    }

    /// The ONNX `TensorProto.DataType` number.
    pub fn to_onnx(self) -> i32 {
        match self {
            Self::Float32 => 1,
            Self::Uint8 => 2,
            Self::Int8 => 3,
            Self::Uint16 => 4,
            Self::Int16 => 5,
            Self::Int32 => 6,
            Self::Int64 => 7,
            Self::Bool => 9,
            Self::Float16 => 10,
            Self::Float64 => 11,
            Self::Uint32 => 12,
            Self::Uint64 => 13,
            Self::BFloat16 => 16,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::Int8 | Self::Uint8 | Self::Bool => 1,
            Self::Float16 | Self::BFloat16 | Self::Int16 | Self::Uint16 => 2,
            Self::Float32 | Self::Int32 | Self::Uint32 => 4,
            Self::Float64 | Self::Int64 | Self::Uint64 => 8,
        }
    }

    /// Lower-case name, as reports print it ("float32", "int64", …).
    pub fn name(self) -> &'static str {
        match self {
            Self::Float32 => "float32",
            Self::Float16 => "float16",
            Self::BFloat16 => "bfloat16",
            Self::Float64 => "float64",
            Self::Int8 => "int8",
            Self::Uint8 => "uint8",
            Self::Int16 => "int16",
            Self::Uint16 => "uint16",
            Self::Int32 => "int32",
            Self::Uint32 => "uint32",
            Self::Int64 => "int64",
            Self::Uint64 => "uint64",
            Self::Bool => "bool",
        }
    }

    /// Whether the type holds floating-point numbers.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            Self::Float32 | Self::Float16 | Self::BFloat16 | Self::Float64
        )
    }
}

/// Name of an ONNX data type number, for messages.
pub fn onnx_type_name(code: i32) -> String {
    let name = match code {
        0 => "UNDEFINED",
        8 => "STRING",
        14 => "COMPLEX64",
        15 => "COMPLEX128",
        17..=20 => "FLOAT8",
        21 => "UINT4",
        22 => "INT4",
        _ => {
            return DataType::from_onnx(code)
                .map_or_else(|| format!("#{code}"), |t| t.name().to_string());
        }
    };
    name.to_string()
}

/// A constant tensor: element type, shape and the elements as little-endian bytes.
///
/// Weights stay in their stored byte form so that loading a large model copies nothing
/// it does not need; typed views are decoded on demand.
#[derive(Clone, PartialEq)]
pub struct Tensor {
    dtype: DataType,
    dims: Vec<usize>,
    bytes: Vec<u8>,
}

impl Tensor {
    /// A tensor from raw little-endian bytes; `None` when the length does not match.
    pub fn from_bytes(dtype: DataType, dims: Vec<usize>, bytes: Vec<u8>) -> Option<Self> {
        let expected = element_count(&dims)?.checked_mul(dtype.size())?;
        (bytes.len() == expected).then_some(Self { dtype, dims, bytes })
    }

    /// A float32 tensor; panics if `values` does not fill `dims` (a programming error).
    pub fn from_f32(dims: Vec<usize>, values: &[f32]) -> Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::from_bytes(DataType::Float32, dims, bytes).expect("values fill dims")
    }

    /// An int64 tensor; panics if `values` does not fill `dims` (a programming error).
    pub fn from_i64(dims: Vec<usize>, values: &[i64]) -> Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::from_bytes(DataType::Int64, dims, bytes).expect("values fill dims")
    }

    /// Element type.
    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    /// Shape.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The stored little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The sub-tensor holding only `indices` along `axis`, in that order.
    ///
    /// Panics when `axis` or an index is out of range (a programming error: callers
    /// slice by indices derived from this tensor's own shape).
    pub fn select(&self, axis: usize, indices: &[usize]) -> Tensor {
        let n = self.dims[axis];
        if let Some(&i) = indices.iter().find(|&&i| i >= n) {
            panic!("index {i} out of range for axis {axis} of {:?}", self.dims);
        }
        let mut dims = self.dims.clone();
        dims[axis] = indices.len();
        if self.bytes.is_empty() || indices.is_empty() {
            // Nothing to copy; the other axes may be of any declared size.
            return Tensor {
                dtype: self.dtype,
                dims,
                bytes: Vec::new(),
            };
        }
        // With data present every axis is non-zero and the products are bounded by
        // the data length, so they cannot overflow.
        let size = self.dtype.size();
        let outer: usize = self.dims[..axis].iter().product();
        let inner: usize = self.dims[axis + 1..].iter().product::<usize>() * size;
        let mut bytes = Vec::with_capacity(outer * indices.len() * inner);
        for o in 0..outer {
            for &i in indices {
                let start = (o * n + i) * inner;
                bytes.extend_from_slice(&self.bytes[start..start + inner]);
            }
        }
        Tensor {
            dtype: self.dtype,
            dims,
            bytes,
        }
    }

    /// The elements as integers, for shape-like inputs (Reshape, Slice, Split, Pad);
    /// `None` for float types.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        let b = &self.bytes;
        Some(match self.dtype {
            DataType::Int64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            DataType::Int32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            DataType::Uint64 => b
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            DataType::Uint32 => b
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            DataType::Int16 => b
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            DataType::Uint16 => b
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            DataType::Int8 => b.iter().map(|&v| v as i8 as i64).collect(),
            DataType::Uint8 | DataType::Bool => b.iter().map(|&v| v as i64).collect(),
            _ => return None,
        })
    }

    /// The elements as f32, converting from any numeric type.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let b = &self.bytes;
        match self.dtype {
            DataType::Float32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            DataType::Float64 => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            DataType::Float16 => b
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            DataType::BFloat16 => b
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
            _ => self
                .to_i64_vec()
                .unwrap_or_default()
                .into_iter()
                .map(|v| v as f32)
                .collect(),
        }
    }
}

impl std::fmt::Debug for Tensor {
    /// Type and shape only: weights are too large to print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({} {:?})", self.dtype.name(), self.dims)
    }
}

/// Number of elements of a shape, `None` on overflow.
pub fn element_count(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = frac * 2^-24.
            let v = frac as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000,
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_bytes_rejects_wrong_length() {
        assert!(Tensor::from_bytes(DataType::Float32, vec![2, 2], vec![0; 15]).is_none());
        assert!(Tensor::from_bytes(DataType::Float32, vec![usize::MAX, 2], vec![]).is_none());
        assert_eq!(
            Tensor::from_bytes(DataType::Float32, vec![2, 2], vec![0; 16])
                .unwrap()
                .len(),
            4
        );
    }

    #[test]
    fn select_keeps_the_chosen_slices_in_order() {
        let t = Tensor::from_f32(vec![2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(t.select(1, &[2, 0]).to_f32_vec(), vec![2.0, 0.0, 5.0, 3.0]);
        assert_eq!(t.select(0, &[1]).to_f32_vec(), vec![3.0, 4.0, 5.0]);
        assert_eq!(t.select(1, &[]).dims(), &[2, 0]);
    }

    #[test]
    fn decodes_integer_and_half_types() {
        let t = Tensor::from_i64(vec![3], &[-1, 0, 7]);
        assert_eq!(t.to_i64_vec().unwrap(), vec![-1, 0, 7]);
        assert_eq!(t.to_f32_vec(), vec![-1.0, 0.0, 7.0]);
        let half = Tensor::from_bytes(
            DataType::Float16,
            vec![3],
            vec![0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00],
        )
        .unwrap();
        let v = half.to_f32_vec();
        assert_eq!(&v[..2], &[1.0, -2.0]);
        assert!((v[2] - 5.960_464_5e-8).abs() < 1e-12);
    }
}
