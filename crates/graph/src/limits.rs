//! Caps on every size a model file declares, checked before anything is allocated
//! from it.
//!
//! An ONNX file is a few bytes that can claim anything: a 75-byte model whose input
//! declares 2⁴⁰ channels made the channel analysis ask for terabytes and abort the
//! process. Every count or dimension read from a file is therefore compared with one
//! of these caps first, and a model over a cap is refused with
//! [`GraphError::LimitExceeded`](crate::GraphError::LimitExceeded), which names what
//! declares the size.
//!
//! The defaults sit far above every real detector (YOLOv8x exported at 1280×1280 has
//! a few hundred nodes, about 41 million elements in its largest activation, at most
//! a few thousand channels in any feature map and about 250,000 channel slots) and
//! far below what would exhaust a server: at the caps, shape inference is
//! instantaneous and the channel analysis needs well under a gigabyte and a second.

use std::fmt;

/// Default for [`Limits::max_nodes`].
pub const DEFAULT_MAX_NODES: usize = 100_000;

/// Default for [`Limits::max_tensor_elements`]: 2³⁰.
pub const DEFAULT_MAX_TENSOR_ELEMENTS: u64 = 1 << 30;

/// Default for [`Limits::max_channels`]: 2¹⁹.
pub const DEFAULT_MAX_CHANNELS: u64 = 1 << 19;

/// Default for [`Limits::max_channel_slots`]: 2²².
pub const DEFAULT_MAX_CHANNEL_SLOTS: u64 = 1 << 22;

/// Default for [`Limits::max_channel_references`]: 2²³.
pub const DEFAULT_MAX_CHANNEL_REFERENCES: u64 = 1 << 23;

/// Default for [`Limits::max_input_pixels`]: 8192 × 8192.
pub const DEFAULT_MAX_INPUT_PIXELS: u64 = 8192 * 8192;

/// Default for [`Limits::max_folded_elements`]: 2²⁶.
pub const DEFAULT_MAX_FOLDED_ELEMENTS: u64 = 1 << 26;

/// Longest side accepted in an input size (`--input-size`, the API's `input_size`).
pub const MAX_INPUT_SIDE: usize = 65_536;

/// The caps effp applies to a model before it allocates anything sized by it.
///
/// [`Limits::default`] is what every entry point without a `_with` suffix uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most nodes a graph may have, counted in the file (Constant nodes included)
    /// before any per-node structure is built.
    ///
    /// 100,000: YOLO detectors have a few hundred nodes, transformer detectors a few
    /// thousand; per-node work and memory stay small at this count.
    pub max_nodes: usize,
    /// Most elements of any one tensor (graph input, initializer or inferred value),
    /// and the longest any one axis may be.
    ///
    /// 2³⁰ (4 GiB of float32): the largest activation of YOLOv8x at 1280×1280 (a
    /// stride-4 concatenation, 400 × 320 × 320) has about 41 million elements, 26
    /// times less; a single larger activation could not be trained on the GPUs effp
    /// targets. This also bounds large inputs of large models: YOLOv8x at 8192×8192
    /// is refused while YOLOv8n at that size is accepted. An axis is held to the same
    /// bound so that a tensor with a zero-sized axis cannot declare others of any size.
    pub max_tensor_elements: u64,
    /// Most entries along axis 1 (the channel axis) of any computed value or graph
    /// input.
    ///
    /// 2¹⁹ = 524,288: detector feature maps have a few thousand channels at most and
    /// classification heads flatten about 25,000 features, but some rank-2 and rank-3
    /// values carry positions on axis 1: YOLOv5's `[1, anchors, 85]` head has 100,800
    /// at 1280×1280 and 226,800 at 1920×1920, transformer decoders 33,600 tokens at
    /// 1280×1280. One value at the cap holds an eighth of
    /// [`Limits::max_channel_slots`].
    pub max_channels: u64,
    /// Most channel slots (the sum over values of their axis-1 size) the channel
    /// analysis may create for a whole graph.
    ///
    /// 2²² ≈ 4.2 million: YOLOv8n has 22,630 at any input size and YOLOv8x about ten
    /// times as many; YOLOv5's positional head adds about 400,000 at 1280×1280. The
    /// analysis needs about 80 bytes per slot, so the cap keeps it near a third of a
    /// GiB (and under half a second).
    pub max_channel_slots: u64,
    /// Most channel references (a filter, a weight column or a per-channel parameter
    /// tied to one slot) the channel analysis may record for a whole graph.
    ///
    /// 2²³ ≈ 8.4 million, twice [`Limits::max_channel_slots`]: real models record
    /// about one per slot (a filter where a channel is made, a weight column where it
    /// is read, four for an unfused BatchNormalization; YOLOv8n records under 16,384
    /// for its 22,630 slots), while a hostile graph can
    /// make thousands of convolutions read one wide value; at about 25 bytes each the
    /// cap keeps them near 200 MiB.
    pub max_channel_references: u64,
    /// Most pixels (height × width) of a 4-D image input, as declared or as given by
    /// an input size.
    ///
    /// 8192 × 8192: detectors are exported at 640 to 1280 pixels a side; 8192 leaves
    /// room for tiled aerial and satellite imagery while keeping the input itself
    /// under a gigabyte.
    pub max_input_pixels: u64,
    /// Most elements that shape inference may compute, over all values of a graph,
    /// when it folds the shape subgraph of a dynamic-shape export (`Shape`, `Range`,
    /// `ConstantOfShape`, `Expand`, … evaluated at the input size). Each folded value
    /// is also held to [`Limits::max_tensor_elements`] and
    /// [`Limits::max_channels`]; both are checked before its elements are allocated.
    ///
    /// 2²⁶ ≈ 67 million (about half a GiB at eight bytes each): YOLOv8 exported with
    /// `dynamic=True` folds about 20 values of at most one element per anchor (its
    /// anchor grid and strides), under 500,000 elements in all at 1280×1280 and about
    /// 25 million at the largest input size, 8192×8192.
    pub max_folded_elements: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_nodes: DEFAULT_MAX_NODES,
            max_tensor_elements: DEFAULT_MAX_TENSOR_ELEMENTS,
            max_channels: DEFAULT_MAX_CHANNELS,
            max_channel_slots: DEFAULT_MAX_CHANNEL_SLOTS,
            max_channel_references: DEFAULT_MAX_CHANNEL_REFERENCES,
            max_input_pixels: DEFAULT_MAX_INPUT_PIXELS,
            max_folded_elements: DEFAULT_MAX_FOLDED_ELEMENTS,
        }
    }
}

/// Which cap a model went over, for [`GraphError::LimitExceeded`](crate::GraphError::LimitExceeded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    /// [`Limits::max_nodes`].
    Nodes,
    /// [`Limits::max_tensor_elements`], for the whole tensor.
    Elements,
    /// [`Limits::max_tensor_elements`], for one axis.
    AxisLength,
    /// [`Limits::max_channels`].
    Channels,
    /// [`Limits::max_channel_slots`].
    ChannelSlots,
    /// [`Limits::max_channel_references`].
    ChannelReferences,
    /// [`Limits::max_input_pixels`].
    InputPixels,
    /// [`Limits::max_folded_elements`].
    FoldedElements,
}

impl Quantity {
    /// What is counted and over what scope, as the message says it after the limit.
    pub fn unit(self) -> &'static str {
        match self {
            Self::Nodes => "nodes per graph",
            Self::Elements => "elements per tensor",
            Self::AxisLength => "entries along any one axis",
            Self::Channels => "channels (axis 1) per tensor",
            Self::ChannelSlots => "channels summed over all feature maps",
            Self::ChannelReferences => {
                "channel references (filters, weight columns and per-channel parameters)"
            }
            Self::InputPixels => "pixels (height × width) per image input",
            Self::FoldedElements => "elements computed by folding shape subgraphs per graph",
        }
    }

    /// What the user can do about it.
    pub fn advice(self) -> &'static str {
        match self {
            Self::Nodes => {
                "simplify the model (onnxslim or onnxsim) or export a smaller architecture"
            }
            Self::InputPixels => {
                "export the model with a realistic input shape or pass a smaller input size \
                 (--input-size HxW)"
            }
            Self::Elements | Self::AxisLength | Self::Channels => {
                "export the model with a realistic input shape (e.g. 640x640) and check the \
                 declared dimensions"
            }
            Self::FoldedElements => {
                "the model's size computations (Shape, Range, ConstantOfShape, Expand) \
                 produce far more data than any detector; pass a smaller input size \
                 (--input-size HxW) or export the model with a static input shape"
            }
            Self::ChannelSlots | Self::ChannelReferences => {
                "the graph is far larger than any detector effp prunes; export a smaller \
                 model or a realistic input shape"
            }
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nodes => "nodes",
            Self::Elements => "elements",
            Self::AxisLength => "entries along one axis",
            Self::Channels => "channels",
            Self::ChannelSlots => "channel slots",
            Self::ChannelReferences => "channel references",
            Self::InputPixels => "pixels",
            Self::FoldedElements => "folded elements",
        })
    }
}

/// A name from the file, fit for a one-line message: control characters escaped and
/// at most 96 characters kept.
pub(crate) fn display_name(name: &str) -> String {
    const KEEP: usize = 96;
    let mut out: String = name.chars().take(KEEP).collect::<String>();
    if name.chars().nth(KEEP).is_some() {
        out.push('…');
    }
    out.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// A shape fit for a one-line message: at most 8 axes shown.
pub(crate) fn display_shape(shape: &[usize]) -> String {
    const KEEP: usize = 8;
    let shown: Vec<String> = shape.iter().take(KEEP).map(usize::to_string).collect();
    if shape.len() > KEEP {
        format!("[{}, … ({} axes)]", shown.join(", "), shape.len())
    } else {
        format!("[{}]", shown.join(", "))
    }
}

/// Number of elements of a shape, exact (no overflow for any rank below 2⁶⁴ axes of
/// `usize` sizes short of 2⁶⁴: saturates at `u128::MAX` beyond).
pub fn exact_elements(shape: &[usize]) -> u128 {
    if shape.contains(&0) {
        return 0;
    }
    shape
        .iter()
        .try_fold(1u128, |acc, &d| acc.checked_mul(d as u128))
        .unwrap_or(u128::MAX)
}

impl Limits {
    /// Checks one tensor's shape against the element and axis caps; `subject` says
    /// what the tensor is ("graph input 'images'", …) for the message.
    pub fn check_tensor(&self, subject: impl Fn() -> String, shape: &[usize]) -> crate::Result<()> {
        let elements = exact_elements(shape);
        if elements > u128::from(self.max_tensor_elements) {
            return Err(exceeded(
                format!("{} (shape {})", subject(), display_shape(shape)),
                Quantity::Elements,
                elements,
                self.max_tensor_elements,
            ));
        }
        if let Some(&longest) = shape.iter().max()
            && longest as u128 > u128::from(self.max_tensor_elements)
        {
            return Err(exceeded(
                format!("{} (shape {})", subject(), display_shape(shape)),
                Quantity::AxisLength,
                longest as u128,
                self.max_tensor_elements,
            ));
        }
        Ok(())
    }

    /// Checks the channel axis (axis 1) of a computed value or graph input.
    pub fn check_channels(
        &self,
        subject: impl Fn() -> String,
        shape: &[usize],
    ) -> crate::Result<()> {
        match shape.get(1) {
            Some(&c) if shape.len() >= 2 && c as u128 > u128::from(self.max_channels) => {
                Err(exceeded(
                    format!("{} (shape {})", subject(), display_shape(shape)),
                    Quantity::Channels,
                    c as u128,
                    self.max_channels,
                ))
            }
            _ => Ok(()),
        }
    }

    /// Checks height × width of a 4-D image input.
    pub fn check_pixels(
        &self,
        subject: impl Fn() -> String,
        height: usize,
        width: usize,
    ) -> crate::Result<()> {
        let pixels = (height as u128).saturating_mul(width as u128);
        if pixels > u128::from(self.max_input_pixels) {
            return Err(exceeded(
                format!("{} ({height}x{width})", subject()),
                Quantity::InputPixels,
                pixels,
                self.max_input_pixels,
            ));
        }
        Ok(())
    }
}

/// A declared amount for a message; a product too large to count exactly says so.
pub(crate) fn render_amount(declared: u128) -> String {
    if declared == u128::MAX {
        "more than 2^128".to_string()
    } else {
        declared.to_string()
    }
}

/// The error for a count over a cap.
pub(crate) fn exceeded(
    subject: String,
    quantity: Quantity,
    declared: u128,
    limit: u64,
) -> crate::GraphError {
    crate::GraphError::LimitExceeded {
        subject,
        quantity,
        declared,
        limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_elements_never_overflows() {
        assert_eq!(exact_elements(&[]), 1);
        assert_eq!(exact_elements(&[2, 3]), 6);
        assert_eq!(exact_elements(&[usize::MAX, usize::MAX, 0]), 0);
        assert_eq!(exact_elements(&[usize::MAX; 3]), u128::MAX);
    }

    #[test]
    fn names_and_shapes_render_on_one_short_line() {
        assert_eq!(display_name("a\nb"), "a\\nb");
        assert_eq!(display_name(&"x".repeat(200)).chars().count(), 97);
        assert_eq!(display_shape(&[1, 2]), "[1, 2]");
        assert!(display_shape(&[1; 20]).ends_with("(20 axes)]"));
    }

    #[test]
    fn a_real_detector_is_far_inside_the_defaults() {
        let limits = Limits::default();
        // YOLOv8x at 1280×1280: input, stem output, widest map.
        let name = || "x".to_string();
        limits.check_tensor(name, &[1, 3, 1280, 1280]).unwrap();
        limits.check_tensor(name, &[1, 80, 640, 640]).unwrap();
        limits.check_channels(name, &[1, 1280, 40, 40]).unwrap();
        limits.check_pixels(name, 1280, 1280).unwrap();
        assert!(limits.check_pixels(name, 8193, 8192).is_err());
        assert!(limits.check_channels(name, &[1, 1 << 40, 1, 1]).is_err());
        assert!(limits.check_tensor(name, &[0, 1 << 40]).is_err());
    }
}
