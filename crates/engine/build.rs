//! Compiles `kernels/*.cu` to PTX with nvcc, only with the `cuda` feature, so the
//! default build needs no CUDA toolkit. See kernels/README.md.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let kernels = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../kernels");
    let src = kernels.join("reprise.cu");
    println!("cargo:rerun-if-changed={}", src.display());
    for var in [
        "NVCC",
        "CUDA_ROOT",
        "CUDA_PATH",
        "CUDA_HOME",
        "CUDA_COMPUTE_CAP",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    // nvcc: $NVCC, else $CUDA_ROOT/bin/nvcc (or CUDA_PATH / CUDA_HOME), else PATH.
    let nvcc = env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| {
            ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"]
                .iter()
                .filter_map(env::var_os)
                .map(|r| PathBuf::from(r).join("bin").join("nvcc"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    // The GPU machines are H100/H200 (sm_90); PTX for sm_90 is JIT-compiled by the driver.
    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("reprise.ptx");
    let status = Command::new(&nvcc)
        .arg(format!("-arch=sm_{cap}"))
        .args(["--ptx", "-O3", "-std=c++17", "-lineinfo", "-o"])
        .arg(&out)
        .arg(&src)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "nvcc ({}) failed on {} with {s}; run scripts/install-cuda-toolchain.sh and export what it prints",
            nvcc.display(),
            src.display()
        ),
        Err(e) => panic!(
            "cannot run nvcc ({}): {e}; run scripts/install-cuda-toolchain.sh and export what it prints",
            nvcc.display()
        ),
    }
}
