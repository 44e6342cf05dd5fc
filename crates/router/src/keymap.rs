//! Hash maps keyed by [`BlockKey`]. A block key is already the output of a good
//! hash, so hashing it again with SipHash (std's default) only costs time: the
//! [`KeyHasher`] folds the 128 bits and multiplies once so that both the low bits
//! (bucket index) and the top bits (hashbrown's control byte) are well mixed even
//! for hand-made keys such as `BlockKey(1)`.

use reprise_protocol::block_key::BlockKey;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Odd 64-bit constant (2^64 / golden ratio) used for multiplicative mixing.
const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// Near-identity hasher for already-hashed keys.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-BlockKey keys; a simple multiplicative byte mix.
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(MIX);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(MIX);
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = (self.0 ^ fold(v)).wrapping_mul(MIX);
    }
}

/// `BuildHasher` for [`KeyHasher`].
pub type KeyBuildHasher = BuildHasherDefault<KeyHasher>;

/// A `HashMap` keyed by block keys with the cheap [`KeyHasher`].
pub type KeyMap<V> = HashMap<BlockKey, V, KeyBuildHasher>;

/// Fold a 128-bit key into 64 bits (xxh3 keys only use the low half).
#[inline]
pub fn fold(v: u128) -> u64 {
    (v as u64) ^ ((v >> 64) as u64)
}

/// SplitMix64 finaliser: a cheap, well-mixed 64-bit permutation used for
/// seeded tie-breaks and the `random` policy.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(MIX);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn small_keys_still_spread_top_bits() {
        let b = KeyBuildHasher::default();
        let tops: std::collections::HashSet<u64> =
            (0..64u128).map(|k| b.hash_one(BlockKey(k)) >> 57).collect();
        assert!(
            tops.len() > 16,
            "control bytes should differ: {}",
            tops.len()
        );
    }

    #[test]
    fn map_round_trips() {
        let mut m: KeyMap<u32> = KeyMap::default();
        for k in 0..1000u128 {
            m.insert(BlockKey(k << 64 | k), k as u32);
        }
        assert_eq!(m.get(&BlockKey(5 << 64 | 5)), Some(&5));
        assert_eq!(m.len(), 1000);
    }
}
