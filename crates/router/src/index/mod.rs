//! Prefix indexes: which worker holds which block key.
//!
//! - [`precise`]: fed by the workers' KV events; exact up to event delivery.
//! - [`approximate`]: fed only by the router's own decisions (per-worker LRU).
//! - [`speculative`]: short-lived credits for the worker just chosen, bridging the
//!   time until its KV events arrive.
//!
//! All three answer one question per key, "which workers hold it", as a
//! [`WorkerMask`] bitset; [`longest_runs`] turns the answers for a prompt's keys into
//! each worker's longest consecutive run of cached blocks from block 0.

pub mod approximate;
pub mod precise;
pub mod speculative;

use reprise_protocol::block_key::BlockKey;

/// Bitset of workers: bit `w` set means worker `w`.
pub type WorkerMask = u128;

/// Most workers one router can index (one bit each in a [`WorkerMask`]).
pub const MAX_WORKERS: usize = 128;

/// Mask with bit `worker` set (`0` for an out-of-range worker).
#[inline]
pub fn bit(worker: usize) -> WorkerMask {
    if worker < MAX_WORKERS {
        1u128 << worker
    } else {
        0
    }
}

/// Mask of workers `0..n`.
#[inline]
pub fn all_workers(n: usize) -> WorkerMask {
    if n >= MAX_WORKERS {
        u128::MAX
    } else {
        (1u128 << n) - 1
    }
}

/// For each worker in `candidates`, write to `out[w]` the length of its longest run of
/// consecutive cached blocks from block 0: block `i` counts only if blocks `0..i` all
/// do, so a gap at block `k` stops the run at `k`. Workers outside `candidates` get 0.
///
/// Cost: one `mask_of` call per block until no candidate is still matching, so a cold
/// prompt costs one lookup whatever its length.
pub fn longest_runs(
    keys: &[BlockKey],
    candidates: WorkerMask,
    out: &mut [usize],
    mut mask_of: impl FnMut(BlockKey) -> WorkerMask,
) {
    out.fill(0);
    let mut active = candidates;
    for (i, key) in keys.iter().enumerate() {
        if active == 0 {
            return;
        }
        let held = mask_of(*key) & active;
        set_run(out, active & !held, i);
        active = held;
    }
    set_run(out, active, keys.len());
}

/// `out[w] = run` for every worker in `mask`.
#[inline]
fn set_run(out: &mut [usize], mut mask: WorkerMask, run: usize) {
    while mask != 0 {
        let w = mask.trailing_zeros() as usize;
        if let Some(slot) = out.get_mut(w) {
            *slot = run;
        }
        mask &= mask - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Equals the brute-force definition: the run of worker w is the first block
        /// index that w does not hold (or the prompt length).
        #[test]
        fn longest_runs_is_first_gap(held in proptest::collection::vec(0u128..16, 0..40),
                                     candidates in 0u128..16) {
            let ks: Vec<BlockKey> = (0..held.len() as u128).map(BlockKey).collect();
            let mut out = [0usize; 4];
            longest_runs(&ks, candidates, &mut out, |k| held[k.0 as usize]);
            for (w, got) in out.iter().enumerate() {
                let want = if candidates & bit(w) == 0 {
                    0
                } else {
                    held.iter().position(|m| m & bit(w) == 0).unwrap_or(held.len())
                };
                prop_assert_eq!(*got, want, "worker {}", w);
            }
        }
    }

    fn keys(n: usize) -> Vec<BlockKey> {
        (0..n as u128).map(BlockKey).collect()
    }

    #[test]
    fn gap_at_block_k_stops_the_run_at_k() {
        // Worker 0 holds blocks 0,1,2,4 (gap at 3); worker 1 holds 1..5 (gap at 0);
        // worker 2 holds everything.
        let ks = keys(5);
        let mut out = [9usize; 3];
        longest_runs(&ks, all_workers(3), &mut out, |k| {
            let i = k.0 as usize;
            let mut m = 0b100;
            if i != 3 {
                m |= 0b001;
            }
            if i != 0 {
                m |= 0b010;
            }
            m
        });
        assert_eq!(out, [3, 0, 5]);
    }

    #[test]
    fn non_candidates_get_zero_and_cold_prompt_is_one_lookup() {
        let ks = keys(100);
        let mut out = [9usize; 2];
        let mut calls = 0;
        longest_runs(&ks, 0b01, &mut out, |_| {
            calls += 1;
            0b10
        });
        assert_eq!(out, [0, 0]);
        assert_eq!(calls, 1);
    }

    #[test]
    fn masks() {
        assert_eq!(all_workers(3), 0b111);
        assert_eq!(all_workers(128), u128::MAX);
        assert_eq!(bit(200), 0);
        assert_eq!(bit(127), 1u128 << 127);
    }
}
