//! The OpenAI-compatible HTTP layer `reprise serve` and `reprise route` share: the
//! listener and serve loop, middleware (request ids, arrival stamps, API keys),
//! request bodies and their fields (validation, the field table, prompts and chat
//! templates), errors in OpenAI's shape, the CPU pool for per-request work, metric
//! names and histograms, command-line options both use, and loading the model's
//! tokenizer side or weights with the default model fetched on first use.

pub mod body;
pub mod cpu;
pub mod errors;
pub mod fetch;
pub mod fields;
pub mod listener;
pub mod metrics;
pub mod middleware;
pub mod model_info;
pub mod options;
pub mod params;
pub mod prompt;
pub mod reader;
pub mod serve;
pub mod shutdown;
pub mod structured;
pub mod tokenize;
pub mod tools;

use std::sync::atomic::{AtomicU64, Ordering};

/// A unique id for a request or response (`cmpl-…`, `chatcmpl-…`).
pub fn request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{:012x}{:06x}", t & 0xffff_ffff_ffff, n & 0xff_ffff)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
