//! The load snapshot a worker publishes for routing decisions.

use serde::{Deserialize, Serialize};

/// A cheap, copyable view of one worker's load at an instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerLoad {
    /// Requests in the running batch.
    pub running: usize,
    /// Requests admitted but waiting (queued or preempted).
    pub waiting: usize,
    /// KV blocks referenced by live requests.
    pub blocks_in_use: usize,
    /// KV blocks in the worker's pool.
    pub total_blocks: usize,
    /// Prompt tokens the running requests have still to prefill (0 where the
    /// worker does not say, as vLLM's metrics do not).
    #[serde(default)]
    pub prefill_tokens: usize,
}

impl WorkerLoad {
    /// Fraction of the KV pool referenced by live requests, in [0, 1].
    pub fn kv_usage(&self) -> f64 {
        if self.total_blocks == 0 {
            0.0
        } else {
            self.blocks_in_use as f64 / self.total_blocks as f64
        }
    }
}
