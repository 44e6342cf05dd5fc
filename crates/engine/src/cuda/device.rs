//! CUDA driver helpers shared by the model and the kernels: owned device buffers
//! with their addresses, error mapping, bf16 conversion, opening a device.

use crate::model::ModelError;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DriverError};
use std::sync::Arc;

pub(super) fn drv_err(what: &str) -> impl FnOnce(DriverError) -> ModelError + '_ {
    move |e| ModelError::Device(format!("{what}: {e}"))
}

/// An owned device buffer with its raw address cached (event tracking is off, so
/// the address is all a launch needs).
pub(super) struct DevBuf<T> {
    _slice: CudaSlice<T>,
    pub(super) ptr: u64,
    pub(super) len: usize,
}

impl<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits> DevBuf<T> {
    pub(super) fn zeros(stream: &Arc<CudaStream>, len: usize) -> Result<Self, ModelError> {
        let slice = stream
            .alloc_zeros::<T>(len.max(1))
            .map_err(drv_err("cudaMalloc"))?;
        let ptr = {
            let (p, _sync) = slice.device_ptr(stream);
            p
        };
        Ok(Self {
            _slice: slice,
            ptr,
            len,
        })
    }

    pub(super) fn from_host(stream: &Arc<CudaStream>, host: &[T]) -> Result<Self, ModelError> {
        let slice = stream
            .clone_htod(host)
            .map_err(drv_err("host-to-device copy"))?;
        let ptr = {
            let (p, _sync) = slice.device_ptr(stream);
            p
        };
        Ok(Self {
            _slice: slice,
            ptr,
            len: host.len(),
        })
    }

    /// Address of element `i`.
    pub(super) fn at(&self, i: usize) -> u64 {
        self.ptr + (i * std::mem::size_of::<T>()) as u64
    }
}

/// bf16 bits of an f32 (round to nearest even).
pub(super) fn to_bf16(x: &[f32]) -> Vec<u16> {
    x.iter()
        .map(|&v| half::bf16::from_f32(v).to_bits())
        .collect()
}

/// Opens device `ordinal` with event tracking off: weights are written once and
/// synchronised before any worker runs, and each worker's buffers live on its own
/// stream, so per-launch events would only cost time.
pub(crate) fn open_device(ordinal: usize) -> Result<Arc<CudaContext>, ModelError> {
    let n = CudaContext::device_count().map_err(drv_err("cuDeviceGetCount"))?;
    if ordinal >= n.max(0) as usize {
        return Err(ModelError::Device(format!(
            "cuda:{ordinal} does not exist ({n} CUDA devices)"
        )));
    }
    let ctx = CudaContext::new(ordinal).map_err(drv_err("cuCtxCreate"))?;
    // SAFETY: see above; every buffer of ours is used on one stream, and weights are
    // read-only after the synchronised upload.
    unsafe { ctx.disable_event_tracking() };
    Ok(ctx)
}
