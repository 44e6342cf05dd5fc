//! The weight formats a [`super::QMatrix`] holds: GGUF's block formats and plain
//! F32 / F16 / BF16, with their block geometry.

use candle_core::quantized::GgmlDType;

/// A weight's storage format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QType {
    /// f32 values.
    F32,
    /// IEEE half values.
    F16,
    /// bfloat16 values.
    BF16,
    /// ggml Q4_0: 32 weights, f16 scale, 4-bit values − 8.
    Q4_0,
    /// ggml Q4_1: 32 weights, f16 scale and minimum, 4-bit values.
    Q4_1,
    /// ggml Q5_0.
    Q5_0,
    /// ggml Q5_1.
    Q5_1,
    /// ggml Q8_0: 32 weights, f16 scale, 8-bit values.
    Q8_0,
    /// ggml Q2_K (256-weight super-blocks).
    Q2K,
    /// ggml Q3_K.
    Q3K,
    /// ggml Q4_K.
    Q4K,
    /// ggml Q5_K.
    Q5K,
    /// ggml Q6_K.
    Q6K,
}

impl QType {
    /// The format of a GGUF tensor type, when supported.
    pub fn from_ggml(t: GgmlDType) -> Option<Self> {
        Some(match t {
            GgmlDType::F32 => Self::F32,
            GgmlDType::F16 => Self::F16,
            GgmlDType::BF16 => Self::BF16,
            GgmlDType::Q4_0 => Self::Q4_0,
            GgmlDType::Q4_1 => Self::Q4_1,
            GgmlDType::Q5_0 => Self::Q5_0,
            GgmlDType::Q5_1 => Self::Q5_1,
            GgmlDType::Q8_0 => Self::Q8_0,
            GgmlDType::Q2K => Self::Q2K,
            GgmlDType::Q3K => Self::Q3K,
            GgmlDType::Q4K => Self::Q4K,
            GgmlDType::Q5K => Self::Q5K,
            GgmlDType::Q6K => Self::Q6K,
            GgmlDType::Q8_1 | GgmlDType::Q8K => return None,
        })
    }

    /// Weights per block.
    pub const fn block_elems(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q2K | Self::Q3K | Self::Q4K | Self::Q5K | Self::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q2K => 84,
            Self::Q3K => 110,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    /// Planar Q4_0 / Q4_1 / Q8_0 rows: `(scales per block, value bytes per block)`;
    /// `None` for formats kept in the file's block layout.
    pub const fn planar(self) -> Option<(usize, usize)> {
        match self {
            Self::Q4_0 => Some((1, 16)),
            Self::Q4_1 => Some((2, 16)),
            Self::Q8_0 => Some((1, 32)),
            _ => None,
        }
    }

    /// The name llama.cpp uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }
}
