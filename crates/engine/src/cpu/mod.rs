//! The CPU backend: f32 kernels with run-time SIMD dispatch (`ops`), the GGUF's
//! quantized formats and their kernels (`quant`), paged attention over host KV
//! blocks (`attention`), and the decoder-only transformer computed with them
//! (`transformer`).

pub mod attention;
pub mod ops;
pub mod quant;
pub mod transformer;

pub use transformer::Transformer;
