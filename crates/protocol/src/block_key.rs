//! Block keys: the one definition of how a prompt's token ids become a chain of
//! KV-block identities. The engine's prefix cache and the router's indexes both
//! call [`BlockHasher`], so router keys and engine keys can never disagree.
//!
//! `key_i = H(key_{i-1}, tokens of block i, extra)`, over full blocks only; the
//! first block's parent is the fixed [`ROOT_PARENT`].
//!
//! Collisions. The default [`HashAlgo::Xxh3`] is a fast non-cryptographic 64-bit
//! hash. Among `n` live blocks the chance that any two distinct prefixes share a
//! key is about `n² / 2^65` (1e-8 at a million blocks): harmless by accident, but
//! someone who can choose prompts can craft a collision with another tenant's
//! prefix and be served KV computed from it. Multi-tenant deployments should use
//! [`HashAlgo::Sha256`] (vLLM's reason for sha256) and/or a per-tenant cache salt
//! passed as `extra`, which puts every tenant in its own key space.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::Xxh3;

/// Token id as produced by the tokenizer.
pub type TokenId = u32;

/// Identity of one full KV block: a hash of its whole prefix chain.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockKey(pub u128);

impl std::fmt::Debug for BlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlockKey({:#x})", self.0)
    }
}

/// Parent of the first block of every chain (vLLM's `NONE_HASH`, but fixed so
/// that every process derives the same keys).
pub const ROOT_PARENT: BlockKey = BlockKey(0x7265_7072_6973_655f_726f_6f74_5f6b_6579);

/// Which hash function builds the chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashAlgo {
    /// xxh3, 64-bit: fast, not collision resistant against a chosen-prompt attacker.
    #[default]
    #[serde(alias = "xxh3")]
    Xxh3,
    /// SHA-256 truncated to 128 bits: slower, collision resistant.
    #[serde(alias = "sha256")]
    Sha256,
}

impl std::str::FromStr for HashAlgo {
    type Err = BlockKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "xxh3" => Ok(Self::Xxh3),
            "sha256" => Ok(Self::Sha256),
            other => Err(BlockKeyError::UnknownAlgo(other.to_string())),
        }
    }
}

impl HashAlgo {
    /// The name used in configuration (`xxh3`, `sha256`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Xxh3 => "xxh3",
            Self::Sha256 => "sha256",
        }
    }
}

/// Errors from building a [`BlockHasher`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockKeyError {
    /// Block size must be at least one token.
    #[error("block size must be > 0")]
    ZeroBlockSize,
    /// Hash algorithm name not recognised.
    #[error("unknown block hash algorithm '{0}' (expected xxh3 or sha256)")]
    UnknownAlgo(String),
}

/// Chains token blocks into [`BlockKey`]s; cheap to copy and share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHasher {
    block_size: usize,
    algo: HashAlgo,
}

impl BlockHasher {
    /// A hasher for blocks of `block_size` tokens.
    pub fn new(block_size: usize, algo: HashAlgo) -> Result<Self, BlockKeyError> {
        if block_size == 0 {
            return Err(BlockKeyError::ZeroBlockSize);
        }
        Ok(Self { block_size, algo })
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The hash algorithm in use.
    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    /// Key of one full block given its parent's key (`ROOT_PARENT` for block 0).
    pub fn hash_block(&self, parent: BlockKey, tokens: &[TokenId], extra: &[u8]) -> BlockKey {
        debug_assert_eq!(tokens.len(), self.block_size);
        match self.algo {
            HashAlgo::Xxh3 => {
                let mut h = Xxh3::new();
                h.update(&parent.0.to_le_bytes());
                // Token ids are hashed as one contiguous little-endian byte run.
                for t in tokens {
                    h.update(&t.to_le_bytes());
                }
                h.update(&(extra.len() as u64).to_le_bytes());
                h.update(extra);
                BlockKey(h.digest() as u128)
            }
            HashAlgo::Sha256 => {
                let mut h = Sha256::new();
                h.update(parent.0.to_le_bytes());
                for t in tokens {
                    h.update(t.to_le_bytes());
                }
                h.update((extra.len() as u64).to_le_bytes());
                h.update(extra);
                let d = h.finalize();
                let mut b = [0u8; 16];
                b.copy_from_slice(&d[..16]);
                BlockKey(u128::from_le_bytes(b))
            }
        }
    }

    /// Keys of every full block of `tokens` (a trailing partial block has none).
    pub fn prompt_keys(&self, tokens: &[TokenId], extra: &[u8]) -> Vec<BlockKey> {
        let mut keys = Vec::with_capacity(tokens.len() / self.block_size);
        self.extend_keys(&mut keys, tokens, extra);
        keys
    }

    /// Append the keys of blocks of `tokens` that became full since `keys` was
    /// last extended; `tokens` is the whole sequence so far.
    pub fn extend_keys(&self, keys: &mut Vec<BlockKey>, tokens: &[TokenId], extra: &[u8]) {
        let full = tokens.len() / self.block_size;
        while keys.len() < full {
            let i = keys.len();
            let parent = keys.last().copied().unwrap_or(ROOT_PARENT);
            let block = &tokens[i * self.block_size..(i + 1) * self.block_size];
            keys.push(self.hash_block(parent, block, extra));
        }
    }
}

/// The `extra` bytes of a request's block keys: its cache salt, and the LoRA adapter
/// it runs under. One definition for the engine (which has no LoRA: the salt alone),
/// the router hashing requests, and the router deriving keys from a remote engine's
/// KV events, so all three land in the same key space.
pub fn extra_bytes(cache_salt: Option<&str>, lora_name: Option<&str>) -> Vec<u8> {
    let mut out = cache_salt.unwrap_or_default().as_bytes().to_vec();
    if let Some(l) = lora_name.filter(|l| !l.is_empty()) {
        // A NUL cannot occur in either string's JSON form, so the split is unambiguous.
        out.extend_from_slice(b"\0lora:");
        out.extend_from_slice(l.as_bytes());
    }
    out
}

/// Allocation-light batch hashing. Added beside the reference [`BlockHasher::hash_block`]
/// and producing identical keys (a test checks it): xxh3's streaming digest equals the
/// one-shot hash of the concatenated bytes, so one contiguous buffer per block replaces
/// one streaming `update` per token, which is several times faster.
impl BlockHasher {
    /// Replace `out` with the keys of every full block of `tokens`, reusing its capacity.
    pub fn prompt_keys_into(&self, tokens: &[TokenId], extra: &[u8], out: &mut Vec<BlockKey>) {
        out.clear();
        let bs = self.block_size;
        let full = tokens.len() / bs;
        out.reserve(full);
        match self.algo {
            HashAlgo::Sha256 => self.extend_keys(out, tokens, extra),
            HashAlgo::Xxh3 => {
                // Layout: parent (16) | tokens (4 * bs) | extra.len() (8) | extra.
                let tok_end = 16 + 4 * bs;
                let need = tok_end + 8 + extra.len();
                // Stack buffer for the usual block sizes, heap only for huge blocks or salts.
                let mut stack = [0u8; 512];
                let mut heap = Vec::new();
                let buf: &mut [u8] = if need <= stack.len() {
                    &mut stack[..need]
                } else {
                    heap.resize(need, 0u8);
                    &mut heap
                };
                buf[tok_end..tok_end + 8].copy_from_slice(&(extra.len() as u64).to_le_bytes());
                buf[tok_end + 8..].copy_from_slice(extra);
                let mut parent = ROOT_PARENT;
                for block in tokens.chunks_exact(bs) {
                    buf[..16].copy_from_slice(&parent.0.to_le_bytes());
                    for (dst, t) in buf[16..tok_end].chunks_exact_mut(4).zip(block) {
                        dst.copy_from_slice(&t.to_le_bytes());
                    }
                    parent = BlockKey(xxhash_rust::xxh3::xxh3_64(buf) as u128);
                    out.push(parent);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_full_blocks_get_keys() {
        let h = BlockHasher::new(4, HashAlgo::Xxh3).unwrap();
        assert_eq!(h.prompt_keys(&[1, 2, 3], b"").len(), 0);
        assert_eq!(h.prompt_keys(&[1, 2, 3, 4], b"").len(), 1);
        assert_eq!(h.prompt_keys(&[1, 2, 3, 4, 5, 6, 7, 8, 9], b"").len(), 2);
    }

    #[test]
    fn keys_chain_over_the_prefix() {
        for algo in [HashAlgo::Xxh3, HashAlgo::Sha256] {
            let h = BlockHasher::new(2, algo).unwrap();
            let a = h.prompt_keys(&[1, 2, 3, 4], b"");
            let b = h.prompt_keys(&[9, 9, 3, 4], b"");
            // Same second block, different first block: the second key differs too.
            assert_ne!(a[1], b[1]);
            assert_eq!(a[0], h.prompt_keys(&[1, 2, 7], b"")[0]);
        }
    }

    #[test]
    fn extra_keys_separate_key_spaces() {
        let h = BlockHasher::new(2, HashAlgo::Xxh3).unwrap();
        assert_ne!(
            h.prompt_keys(&[1, 2], b"tenant-a"),
            h.prompt_keys(&[1, 2], b"tenant-b")
        );
        assert_ne!(h.prompt_keys(&[1, 2], b""), h.prompt_keys(&[1, 2], b"x"));
    }

    #[test]
    fn extend_matches_batch() {
        let h = BlockHasher::new(3, HashAlgo::Sha256).unwrap();
        let toks: Vec<u32> = (0..20).collect();
        let mut keys = Vec::new();
        for n in 0..=toks.len() {
            h.extend_keys(&mut keys, &toks[..n], b"s");
        }
        assert_eq!(keys, h.prompt_keys(&toks, b"s"));
    }

    #[test]
    fn extra_bytes_separate_salt_and_adapter() {
        assert_eq!(extra_bytes(None, None), b"");
        assert_eq!(extra_bytes(Some("t"), None), b"t");
        assert_eq!(extra_bytes(Some(""), Some("")), b"");
        assert_ne!(extra_bytes(None, Some("a")), extra_bytes(Some("a"), None));
        assert_ne!(
            extra_bytes(Some("x"), Some("a")),
            extra_bytes(None, Some("a"))
        );
    }

    #[test]
    fn bad_config_is_an_error() {
        assert_eq!(
            BlockHasher::new(0, HashAlgo::Xxh3),
            Err(BlockKeyError::ZeroBlockSize)
        );
        assert!("md5".parse::<HashAlgo>().is_err());
        assert_eq!("sha256".parse::<HashAlgo>(), Ok(HashAlgo::Sha256));
    }

    #[test]
    fn batch_fast_path_matches_reference() {
        for algo in [HashAlgo::Xxh3, HashAlgo::Sha256] {
            for bs in [1, 3, 16] {
                let h = BlockHasher::new(bs, algo).unwrap();
                let toks: Vec<u32> = (0..100u32).map(|t| t.wrapping_mul(2_654_435_761)).collect();
                let mut out = vec![BlockKey(7)];
                for extra in [&b""[..], b"salt", &[0u8; 40][..]] {
                    h.prompt_keys_into(&toks, extra, &mut out);
                    assert_eq!(out, h.prompt_keys(&toks, extra));
                }
            }
        }
    }
}
