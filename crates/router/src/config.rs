//! Router configuration, deserialisable from the server's config file and validated
//! in one place ([`RouterConfig::validate`]).

use crate::index::MAX_WORKERS;
use crate::scorer::{OverloadGuard, ScoreWeights};
use reprise_protocol::block_key::{BlockHasher, BlockKeyError, HashAlgo};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Everything the router needs besides the worker count and pool size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Routing policy (`cost`, `precise`, `approximate`, `load`, `round-robin`, `random`).
    pub policy: PolicyKind,
    /// Tokens per KV block; must equal the engine's.
    pub block_size: usize,
    /// Block-key hash; must equal the engine's.
    pub hash_algo: HashAlgo,
    /// Weights of the scorers.
    pub weights: ScoreWeights,
    /// When a worker's queue is too far above the others' to be chosen.
    pub overload: OverloadGuard,
    /// Weights of the `cost` policy's prediction.
    pub cost: CostWeights,
    /// How the `approximate` policy guesses.
    pub approximate: ApproximateConfig,
    /// How long a speculative credit outlives its request, in milliseconds (events
    /// may still be on their way); 0 disables credits.
    pub speculative_ttl_ms: u64,
    /// Safety bound on a credit whose request's end is never reported, in milliseconds.
    pub speculative_max_ttl_ms: u64,
    /// Seed of the tie-break and of the `random` policy.
    pub seed: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            policy: PolicyKind::Cost,
            block_size: 16,
            hash_algo: HashAlgo::Xxh3,
            weights: ScoreWeights::default(),
            overload: OverloadGuard::default(),
            cost: CostWeights::default(),
            approximate: ApproximateConfig::default(),
            speculative_ttl_ms: 2000,
            speculative_max_ttl_ms: 300_000,
            seed: 0,
        }
    }
}

/// Weights of the cost policy's prediction.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CostWeights {
    /// Weight of this prompt's own uncached blocks against the queue ahead: above 1,
    /// computing a prefix again elsewhere also costs the cache it evicts there.
    pub uncached: f64,
    /// Blocks of prefill one running (decoding) request is worth.
    pub running: f64,
}

impl Default for CostWeights {
    /// Own uncached blocks 8x the queue ahead (on the llm-d-73 simulation, weights
    /// 1, 2, 4, 8 and 16 gave a mean p90 TTFT of 87, 1.8, 1.6, 1.46 and 1.7 s: at 1
    /// the policy copies hot prefixes across workers and evicts their caches); a
    /// decoding request as a quarter of a block of prefill, small beside any queue.
    fn default() -> Self {
        Self {
            uncached: 8.0,
            running: 0.25,
        }
    }
}

/// The `approximate` policy's guess: how much of a prompt it remembers and how many
/// block keys per worker (llm-d's estimated scorer: `maxPrefixBlocksToMatch`,
/// `lruCapacityPerServer`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApproximateConfig {
    /// Leading blocks of a prompt that are recorded and matched; the rest is
    /// ignored. 0: the whole prompt.
    pub max_blocks: usize,
    /// Block keys remembered per worker. 0: as many as the worker's KV pool holds.
    pub capacity_blocks: usize,
}

/// Why a configuration was rejected.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// Block size or hash algorithm unusable.
    #[error("invalid block key settings: {0}")]
    BlockKey(#[from] BlockKeyError),
    /// Block size beyond any engine's (guards against a token count passed by mistake).
    #[error("block size {0} is larger than the maximum {max}", max = MAX_BLOCK_SIZE)]
    BlockSizeTooLarge(usize),
    /// A weight that is negative, NaN or infinite.
    #[error("weight '{name}' must be finite and >= 0, got {value}")]
    BadWeight {
        /// Which weight.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// A scoring policy whose weights are all zero would route by tie-break only.
    #[error("policy '{0}' needs at least one non-zero weight among the ones it uses")]
    AllWeightsZero(PolicyKind),
    /// Relative overload threshold below 1 or not finite.
    #[error("overload.rel_threshold must be finite and >= 1, got {0}")]
    BadOverloadRatio(f64),
    /// The worker count is zero or above [`MAX_WORKERS`].
    #[error("number of workers must be in 1..={max}, got {0}", max = MAX_WORKERS)]
    BadWorkerCount(usize),
    /// The KV pool size is zero.
    #[error("blocks per worker must be > 0")]
    ZeroBlocksPerWorker,
    /// Unknown policy name.
    #[error("unknown routing policy '{0}' (expected one of: precise, cost, approximate, load, round-robin, random)")]
    UnknownPolicy(String),
}

/// Largest accepted block size in tokens.
pub const MAX_BLOCK_SIZE: usize = 1 << 16;

impl RouterConfig {
    /// Check every field; `Router::new` calls this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.hasher()?;
        if self.block_size > MAX_BLOCK_SIZE {
            return Err(ConfigError::BlockSizeTooLarge(self.block_size));
        }
        let w = &self.weights;
        for (name, value) in [
            ("prefix", w.prefix),
            ("queue", w.queue),
            ("kv_usage", w.kv_usage),
            ("running", w.running),
            ("cost.uncached", self.cost.uncached),
            ("cost.running", self.cost.running),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(ConfigError::BadWeight { name, value });
            }
        }
        let used = match self.policy {
            PolicyKind::Precise | PolicyKind::Approximate => {
                w.prefix + w.queue + w.kv_usage + w.running
            }
            PolicyKind::Load => w.queue + w.kv_usage,
            PolicyKind::Cost | PolicyKind::RoundRobin | PolicyKind::Random => 1.0,
        };
        if used <= 0.0 {
            return Err(ConfigError::AllWeightsZero(self.policy));
        }
        let r = self.overload.rel_threshold;
        if !r.is_finite() || r < 1.0 {
            return Err(ConfigError::BadOverloadRatio(r));
        }
        Ok(())
    }

    /// The block hasher these settings describe.
    pub fn hasher(&self) -> Result<BlockHasher, ConfigError> {
        Ok(BlockHasher::new(self.block_size, self.hash_algo)?)
    }

    /// How long a credit outlives its request.
    pub fn speculative_ttl(&self) -> Duration {
        Duration::from_millis(self.speculative_ttl_ms)
    }

    /// The longest a credit lives when its request's end is never reported.
    pub fn speculative_max_ttl(&self) -> Duration {
        Duration::from_millis(self.speculative_max_ttl_ms.max(self.speculative_ttl_ms))
    }
}

/// A policy by name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// Cache-aware from KV events.
    Precise,
    /// Lowest predicted time to first token (cache-aware from KV events); the default.
    #[default]
    Cost,
    /// Cache-aware from the router's own decisions.
    Approximate,
    /// Queue depth and KV usage only.
    Load,
    /// Round robin over available workers.
    RoundRobin,
    /// Seeded uniform random.
    Random,
}

impl PolicyKind {
    /// Every policy, in documentation order.
    pub const ALL: [PolicyKind; 6] = [
        PolicyKind::Precise,
        PolicyKind::Cost,
        PolicyKind::Approximate,
        PolicyKind::Load,
        PolicyKind::RoundRobin,
        PolicyKind::Random,
    ];

    /// The policy's name as accepted by `--policy`.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Precise => "precise",
            PolicyKind::Cost => "cost",
            PolicyKind::Approximate => "approximate",
            PolicyKind::Load => "load",
            PolicyKind::RoundRobin => "round-robin",
            PolicyKind::Random => "random",
        }
    }
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PolicyKind {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase().replace('_', "-");
        Self::ALL
            .into_iter()
            .find(|k| k.name() == t || (t == "roundrobin" && *k == PolicyKind::RoundRobin))
            .ok_or_else(|| ConfigError::UnknownPolicy(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        RouterConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_values_are_rejected() {
        let mut c = RouterConfig {
            block_size: 0,
            ..Default::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::BlockKey(_))));
        c.block_size = 1 << 20;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::BlockSizeTooLarge(_))
        ));
        c.block_size = 16;
        c.weights.queue = f64::NAN;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::BadWeight { name: "queue", .. })
        ));
        c.weights = ScoreWeights {
            prefix: 0.0,
            queue: 0.0,
            kv_usage: 0.0,
            running: 1.0,
        };
        c.policy = PolicyKind::Load;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::AllWeightsZero(PolicyKind::Load))
        ));
        c.policy = PolicyKind::Precise;
        c.validate().unwrap();
        c.overload.rel_threshold = 0.5;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::BadOverloadRatio(_))
        ));
    }

    #[test]
    fn deserialises_with_defaults_and_rejects_unknown_fields() {
        let c: RouterConfig =
            serde_json::from_str(r#"{"policy":"round-robin","weights":{"prefix":2.0}}"#).unwrap();
        assert_eq!(c.policy, PolicyKind::RoundRobin);
        assert_eq!(c.weights.prefix, 2.0);
        assert_eq!(c.weights.queue, ScoreWeights::default().queue);
        assert_eq!(c.block_size, 16);
        assert!(serde_json::from_str::<RouterConfig>(r#"{"polcy":"load"}"#).is_err());
    }
}
