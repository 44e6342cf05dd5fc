//! The CUDA backend. The device code (feature `cuda`): [`CudaModel`], bf16 weights
//! and KV cache on one GPU with cuBLAS and our kernels (`kernels/reprise.cu`). Plain
//! Rust beside it, built and tested without the feature: the host-side planning of a
//! step ([`plan`]) and f32 references of what every kernel computes ([`reference`]).

#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
mod kernels;
#[cfg(feature = "cuda")]
mod model;
pub mod plan;
pub mod reference;

#[cfg(feature = "cuda")]
pub(crate) use device::open_device;
#[cfg(feature = "cuda")]
pub use kernels::{self_test, CheckResult};
#[cfg(feature = "cuda")]
pub use model::*;
