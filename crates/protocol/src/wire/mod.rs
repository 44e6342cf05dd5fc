//! vLLM's KV-event wire format: what a vLLM engine (and `reprise serve
//! --kv-events-endpoint`) publishes over ZMQ, and what llm-d and `reprise route`
//! consume.
//!
//! A ZMQ message is three frames, `[topic, seq, payload]`: `seq` is the batch number as
//! 8 bytes big-endian, from 0 per publishing process; `payload` is one msgpack
//! [`WireBatch`], `[ts, [events…], data_parallel_rank]`. Events come in two encodings
//! (see [`EventFormat`]); one vLLM snapshot also sent the batch itself as a map. Block
//! hashes are the engine's own (vLLM: the low 64 bits of its digest as an unsigned
//! integer, or the 32-byte digest): a consumer must never recompute them, only key its
//! own index from `token_ids` (see [`crate::remote`]).
//!
//! [`decode`] reads every encoding; [`encode`] writes the two event encodings exactly as
//! vLLM's msgspec structs do (tests compare bytes with frames captured from vLLM's
//! structs).

pub mod decode;
pub mod encode;

pub use decode::decode_batch;
pub use encode::encode_batch;

use crate::block_key::{BlockKey, TokenId};

/// How events are encoded inside a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EventFormat {
    /// A map per event tagged by `"type"` with vLLM's field names (vLLM 0.26+).
    #[default]
    Map,
    /// A positional array per event with the tag first (vLLM before mid-2026).
    Array,
}

impl std::str::FromStr for EventFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "map" => Ok(Self::Map),
            "array" => Ok(Self::Array),
            other => Err(format!(
                "unknown KV-event format '{other}' (expected map or array)"
            )),
        }
    }
}

impl EventFormat {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Map => "map",
            Self::Array => "array",
        }
    }
}

/// A block hash as the engine published it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EngineHash {
    /// An integer (vLLM's default: the digest's low 64 bits; a negative msgpack integer
    /// is taken as its two's-complement `u64`).
    Int(u64),
    /// Raw digest bytes.
    Bytes(Box<[u8]>),
}

impl std::fmt::Debug for EngineHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Int(v) => write!(f, "{v:#018x}"),
            Self::Bytes(b) => {
                for x in b.iter() {
                    write!(f, "{x:02x}")?;
                }
                Ok(())
            }
        }
    }
}

impl EngineHash {
    /// How reprise publishes its own block keys: the low 64 bits, as vLLM does with
    /// its digests (exact for the default xxh3 keys).
    pub fn of_key(key: BlockKey) -> Self {
        Self::Int(key.0 as u64)
    }
}

/// One msgpack event batch: the events of one engine step.
#[derive(Clone, Debug, PartialEq)]
pub struct WireBatch {
    /// Wall-clock time of the batch, seconds since the Unix epoch.
    pub ts: f64,
    /// The events, in order.
    pub events: Vec<WireEvent>,
    /// vLLM's data-parallel rank of the publishing engine, when sent.
    pub data_parallel_rank: Option<i64>,
}

/// One event of a batch.
#[derive(Clone, Debug, PartialEq)]
pub enum WireEvent {
    /// Consecutive full blocks of one chain became reusable.
    BlockStored(StoredBlocks),
    /// Blocks were evicted.
    BlockRemoved(RemovedBlocks),
    /// Every cached block is gone.
    AllBlocksCleared,
    /// An event type this decoder does not know (ignored by consumers, counted).
    Unknown(String),
}

/// vLLM's `BlockStored`: `block_hashes[i]` covers
/// `token_ids[i*block_size..(i+1)*block_size]`; the first block's parent is
/// `parent_block_hash` (`None`: the chain starts at block 0).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredBlocks {
    /// One engine hash per block.
    pub block_hashes: Vec<EngineHash>,
    /// Hash of the block before the first one, `None` for a chain's block 0.
    pub parent_block_hash: Option<EngineHash>,
    /// The blocks' tokens, concatenated.
    pub token_ids: Vec<TokenId>,
    /// Tokens per engine block.
    pub block_size: usize,
    /// vLLM's LoRA adapter id (unused by reprise).
    pub lora_id: Option<i64>,
    /// Memory tier: vLLM writes `"GPU"` for its KV pool and `"CPU"` for offloaded blocks.
    pub medium: Option<String>,
    /// LoRA adapter name; part of the blocks' identity.
    pub lora_name: Option<String>,
    /// Per block, the extra hash keys (cache salt on a chain's first block, LoRA, …).
    pub extra_keys: Option<Vec<Option<Vec<ExtraKey>>>>,
}

/// vLLM's `BlockRemoved`.
#[derive(Clone, Debug, PartialEq)]
pub struct RemovedBlocks {
    /// The evicted blocks' engine hashes.
    pub block_hashes: Vec<EngineHash>,
    /// Memory tier they were evicted from.
    pub medium: Option<String>,
}

/// One element of a block's `extra_keys`.
#[derive(Clone, Debug, PartialEq)]
pub enum ExtraKey {
    /// A string (cache salt, LoRA name, multimodal hash).
    Str(String),
    /// An integer.
    Int(i64),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// Anything else (nested tuples of multimodal inputs); kept only as "present".
    Other,
}

impl StoredBlocks {
    /// The cache salt of the chain this event starts, when it starts one: vLLM puts the
    /// salt last in the first block's `extra_keys`, after any LoRA name.
    pub fn cache_salt(&self) -> Option<&str> {
        if self.parent_block_hash.is_some() {
            return None;
        }
        let first = self.extra_keys.as_ref()?.first()?.as_ref()?;
        first.iter().rev().find_map(|k| match k {
            ExtraKey::Str(s) if Some(s.as_str()) != self.lora_name.as_deref() => Some(s.as_str()),
            _ => None,
        })
    }
}

/// The `seq` frame of batch number `seq`.
pub fn seq_frame(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The `seq` frame of vLLM's end-of-replay marker (`-1` as a signed 64-bit integer).
pub const REPLAY_END_SEQ: [u8; 8] = [0xff; 8];

/// Reads a `seq` frame; `None` unless it is exactly 8 bytes.
pub fn parse_seq(frame: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(frame).ok().map(u64::from_be_bytes)
}

/// Errors reading a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not valid msgpack.
    #[error("KV-event batch is not valid msgpack: {0}")]
    Msgpack(String),
    /// Valid msgpack but not the shape of a vLLM batch or event.
    #[error("KV-event batch has an unexpected shape: {0}")]
    Shape(String),
}

#[cfg(test)]
pub(crate) mod tests;
