//! Speculative entries: right after a decision the chosen worker is credited with the
//! prompt's blocks, so a burst of requests sharing a new prefix all go to that worker
//! instead of scattering before its first KV event arrives (llm-d and Dynamo do the
//! same). A credit lasts while its request is live, however long it queues: when the
//! request ends ([`SpeculativeIndex::release`]) its blocks are in the worker's events
//! or about to be, and the credit expires `ttl` later; one whose end is never reported
//! expires after `max_ttl`. Time is passed in explicitly as `now`.
//!
//! A credit means "this worker was sent this whole prompt and will hold its prefix
//! shortly". Because a block key names its whole prefix chain, crediting every
//! [`STRIDE`]-th block (plus the last) is enough: a later prompt whose checkpoint key
//! `i` is credited to `w` shares blocks `0..=i` with a prompt sent to `w`. So a
//! credit costs `n / STRIDE` inserts instead of `n`, and a lookup walks only the
//! checkpoints; the price is that a run found only through credits is rounded down to
//! a multiple of `STRIDE` blocks unless it reaches the credited prompt's exact end.
//!
//! Each key keeps up to [`SLOTS`] `(worker, expiry)` credits inline (no allocation
//! per key); a FIFO of expiries lets each write prune expired credits in amortised
//! O(1). Lookups also compare against `now`, so expiry is exact without pruning.

use crate::clock::to_nanos;
use crate::index::{bit, WorkerMask};
use crate::keymap::KeyMap;
use parking_lot::{RwLock, RwLockReadGuard};
use reprise_protocol::block_key::BlockKey;
use std::collections::VecDeque;
use std::time::Duration;

/// Workers credited per key at once; a fifth credit replaces the soonest to expire.
pub const SLOTS: usize = 4;

/// Every `STRIDE`-th block of a credited prompt (and its last block) is recorded.
pub const STRIDE: usize = 16;

/// Indices of the checkpoint blocks of an `n`-block prompt, ascending.
// `is_multiple_of` is newer than the workspace's rust-version (1.85).
#[allow(clippy::manual_is_multiple_of)]
pub fn checkpoints(n: usize) -> impl Iterator<Item = usize> {
    let last = (n % STRIDE != 0).then(|| n - 1);
    (STRIDE - 1..n).step_by(STRIDE).chain(last)
}

#[derive(Clone, Copy, Debug, Default)]
struct Credits {
    len: u8,
    worker: [u8; SLOTS],
    expiry: [u64; SLOTS],
    /// Live requests behind each credit.
    live: [u16; SLOTS],
}

impl Credits {
    fn mask(&self, now: u64) -> WorkerMask {
        let mut m = 0;
        for i in 0..usize::from(self.len).min(SLOTS) {
            if self.expiry[i] > now {
                m |= bit(usize::from(self.worker[i]));
            }
        }
        m
    }

    fn credit(&mut self, worker: u8, expiry: u64) {
        let n = usize::from(self.len).min(SLOTS);
        if let Some(i) = (0..n).find(|&i| self.worker[i] == worker) {
            self.expiry[i] = self.expiry[i].max(expiry);
            self.live[i] = self.live[i].saturating_add(1);
        } else if n < SLOTS {
            self.worker[n] = worker;
            self.expiry[n] = expiry;
            self.live[n] = 1;
            self.len += 1;
        } else if let Some(i) = (0..SLOTS).min_by_key(|&i| self.expiry[i]) {
            self.worker[i] = worker;
            self.expiry[i] = expiry;
            self.live[i] = 1;
        }
    }

    /// One of `worker`'s requests ended: with none left, the credit expires at
    /// `expiry` (if sooner). True when it was shortened.
    fn release(&mut self, worker: u8, expiry: u64) -> bool {
        let n = usize::from(self.len).min(SLOTS);
        let Some(i) = (0..n).find(|&i| self.worker[i] == worker) else {
            return false;
        };
        self.live[i] = self.live[i].saturating_sub(1);
        if self.live[i] == 0 && expiry < self.expiry[i] {
            self.expiry[i] = expiry;
            return true;
        }
        false
    }

    /// Remove credits that satisfy `gone`; true when none is left.
    fn remove_where(&mut self, mut gone: impl FnMut(u8, u64) -> bool) -> bool {
        let mut n = usize::from(self.len).min(SLOTS);
        let mut i = 0;
        while i < n {
            if gone(self.worker[i], self.expiry[i]) {
                n -= 1;
                self.worker[i] = self.worker[n];
                self.expiry[i] = self.expiry[n];
                self.live[i] = self.live[n];
            } else {
                i += 1;
            }
        }
        self.len = n as u8;
        n == 0
    }
}

#[derive(Default)]
struct Inner {
    map: KeyMap<Credits>,
    /// `(expiry, key, worker)` of credits at `max_ttl`, in insertion order; expiries
    /// are non-decreasing when `now` is, and pruning tolerates the small disorder of
    /// concurrent callers.
    fifo: VecDeque<(u64, BlockKey, u8)>,
    /// The same for credits shortened to `ttl` when their requests ended.
    released: VecDeque<(u64, BlockKey, u8)>,
}

/// "Worker W will soon hold these blocks" credits, held while their requests live.
pub struct SpeculativeIndex {
    ttl: u64,
    max_ttl: u64,
    inner: RwLock<Inner>,
}

impl SpeculativeIndex {
    /// An empty index whose credits expire `ttl` after their request ends, or
    /// `max_ttl` after the credit if the end is never reported (a zero `ttl`
    /// disables crediting).
    pub fn new(ttl: Duration, max_ttl: Duration) -> Self {
        Self {
            ttl: to_nanos(ttl),
            max_ttl: to_nanos(max_ttl.max(ttl)),
            inner: RwLock::new(Inner::default()),
        }
    }

    /// Credit `worker` with the prompt whose block keys are `keys`, until the
    /// request ends ([`Self::release`]) or `now + max_ttl`.
    pub fn credit(&self, worker: usize, keys: &[BlockKey], now: Duration) {
        let Ok(w) = u8::try_from(worker) else {
            return;
        };
        if self.ttl == 0 {
            return;
        }
        let now = to_nanos(now);
        let expiry = now.saturating_add(self.max_ttl);
        let mut g = self.inner.write();
        Self::prune_locked(&mut g, now);
        for k in checkpoints(keys.len()).filter_map(|i| keys.get(i)) {
            g.map.entry(*k).or_default().credit(w, expiry);
            g.fifo.push_back((expiry, *k, w));
        }
    }

    /// The request `worker` was credited `keys` for ended: once no live request
    /// stands behind a credit, it expires `ttl` from `now`.
    pub fn release(&self, worker: usize, keys: &[BlockKey], now: Duration) {
        let Ok(w) = u8::try_from(worker) else {
            return;
        };
        if self.ttl == 0 {
            return;
        }
        let now = to_nanos(now);
        let expiry = now.saturating_add(self.ttl);
        let mut g = self.inner.write();
        Self::prune_locked(&mut g, now);
        for k in checkpoints(keys.len()).filter_map(|i| keys.get(i)) {
            let shortened = g.map.get_mut(k).is_some_and(|c| c.release(w, expiry));
            if shortened {
                g.released.push_back((expiry, *k, w));
            }
        }
    }

    fn prune_queue(map: &mut KeyMap<Credits>, q: &mut VecDeque<(u64, BlockKey, u8)>, now: u64) {
        while let Some(&(exp, key, w)) = q.front() {
            if exp > now {
                break;
            }
            q.pop_front();
            if let Some(c) = map.get_mut(&key) {
                // A later credit may have extended this one: only drop what has expired.
                if c.remove_where(|cw, ce| cw == w && ce <= now) {
                    map.remove(&key);
                }
            }
        }
    }

    fn prune_locked(g: &mut Inner, now: u64) {
        let Inner {
            map,
            fifo,
            released,
        } = g;
        Self::prune_queue(map, fifo, now);
        Self::prune_queue(map, released, now);
    }

    /// Drop expired credits now (writes do this anyway).
    pub fn prune(&self, now: Duration) {
        Self::prune_locked(&mut self.inner.write(), to_nanos(now));
    }

    /// Drop every credit of `worker` (it restarted or failed).
    pub fn forget_worker(&self, worker: usize) {
        let Ok(w) = u8::try_from(worker) else {
            return;
        };
        let mut g = self.inner.write();
        g.map.retain(|_, c| !c.remove_where(|cw, _| cw == w));
        g.fifo.retain(|&(_, _, fw)| fw != w);
        g.released.retain(|&(_, _, fw)| fw != w);
    }

    /// Keys with at least one credit, expired or not (pruning happens on writes).
    pub fn len(&self) -> usize {
        self.inner.read().map.len()
    }

    /// Whether no key is credited.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Per worker in `candidates`, the prefix of `keys` (in blocks) that unexpired
    /// credits vouch for: one past the last consecutive credited checkpoint.
    pub fn match_prefix(
        &self,
        keys: &[BlockKey],
        now: Duration,
        candidates: WorkerMask,
        out: &mut [usize],
    ) {
        out.fill(0);
        let r = self.reader(now);
        if r.guard.map.is_empty() {
            return;
        }
        let mut active = candidates;
        for i in checkpoints(keys.len()) {
            let Some(k) = keys.get(i) else { break };
            active &= r.mask(*k);
            if active == 0 {
                break;
            }
            let mut m = active;
            while m != 0 {
                if let Some(slot) = out.get_mut(m.trailing_zeros() as usize) {
                    *slot = i + 1;
                }
                m &= m - 1;
            }
        }
    }

    /// A read view valid at `now`.
    pub fn reader(&self, now: Duration) -> SpeculativeReader<'_> {
        SpeculativeReader {
            guard: self.inner.read(),
            now: to_nanos(now),
        }
    }
}

/// Read access to a [`SpeculativeIndex`] at one instant.
pub struct SpeculativeReader<'a> {
    guard: RwLockReadGuard<'a, Inner>,
    now: u64,
}

impl SpeculativeReader<'_> {
    /// Workers with an unexpired credit for `key`.
    #[inline]
    pub fn mask(&self, key: BlockKey) -> WorkerMask {
        if self.guard.map.is_empty() {
            return 0;
        }
        self.guard.map.get(&key).map_or(0, |c| c.mask(self.now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn keys(n: u128) -> Vec<BlockKey> {
        (0..n).map(BlockKey).collect()
    }

    #[test]
    fn credits_last_while_their_requests_live_then_expire_after_the_end() {
        let s = SpeculativeIndex::new(ms(2000), ms(300_000));
        let ks = keys(20);
        let mut out = [0; 2];
        s.credit(1, &ks, ms(0));
        s.credit(1, &ks, ms(10));
        // Queued far longer than the 2 s a fixed TTL would give.
        s.match_prefix(&ks, ms(60_000), 0b11, &mut out);
        assert_eq!(out, [0, 20]);
        // One of the two requests ends: the other still holds the credit.
        s.release(1, &ks, ms(60_000));
        s.match_prefix(&ks, ms(70_000), 0b11, &mut out);
        assert_eq!(out, [0, 20]);
        // The last one ends: the credit expires 2 s later.
        s.release(1, &ks, ms(70_000));
        s.match_prefix(&ks, ms(71_999), 0b11, &mut out);
        assert_eq!(out, [0, 20]);
        s.match_prefix(&ks, ms(72_000), 0b11, &mut out);
        assert_eq!(out, [0, 0]);
        s.prune(ms(72_000));
        assert!(s.is_empty());
        // A request whose end is never reported: the safety bound.
        s.credit(0, &ks, ms(100_000));
        s.match_prefix(&ks, ms(399_999), 0b11, &mut out);
        assert_eq!(out, [20, 0]);
        s.match_prefix(&ks, ms(400_000), 0b11, &mut out);
        assert_eq!(out, [0, 0]);
    }

    #[test]
    fn checkpoints_are_every_stride_and_the_last() {
        assert_eq!(checkpoints(0).count(), 0);
        assert_eq!(checkpoints(3).collect::<Vec<_>>(), vec![2]);
        assert_eq!(checkpoints(32).collect::<Vec<_>>(), vec![15, 31]);
        assert_eq!(checkpoints(40).collect::<Vec<_>>(), vec![15, 31, 39]);
    }

    #[test]
    fn credits_expire_after_ttl() {
        let s = SpeculativeIndex::new(ms(2000), ms(2000));
        let ks = keys(40);
        s.credit(3, &ks, ms(1000));
        let mut out = [0; 4];
        s.match_prefix(&ks, ms(1000), 0b1111, &mut out);
        assert_eq!(out, [0, 0, 0, 40]);
        s.match_prefix(&ks, ms(2999), 0b1111, &mut out);
        assert_eq!(out, [0, 0, 0, 40]);
        s.match_prefix(&ks, ms(3000), 0b1111, &mut out);
        assert_eq!(out, [0; 4]);
        s.prune(ms(3000));
        assert!(s.is_empty());
    }

    #[test]
    fn shared_prefixes_match_to_the_stride() {
        let s = SpeculativeIndex::new(ms(2000), ms(2000));
        let ks = keys(40);
        s.credit(1, &ks, ms(0));
        let mut out = [0; 2];
        // A longer prompt sharing all 40 blocks: 39 is not one of its checkpoints.
        let longer = keys(50);
        s.match_prefix(&longer, ms(1), 0b11, &mut out);
        assert_eq!(out, [0, 32]);
        // Diverging at block 20: checkpoint 15 only.
        let mut div = keys(40);
        for (i, k) in div.iter_mut().enumerate().skip(20) {
            *k = BlockKey(1000 + i as u128);
        }
        s.match_prefix(&div, ms(1), 0b11, &mut out);
        assert_eq!(out, [0, 16]);
        s.match_prefix(&keys(40), ms(1), 0b01, &mut out);
        assert_eq!(out, [0, 0], "non-candidates get 0");
    }

    #[test]
    fn a_later_credit_extends_and_survives_pruning() {
        let s = SpeculativeIndex::new(ms(100), ms(100));
        s.credit(0, &[BlockKey(1)], ms(0));
        s.credit(0, &[BlockKey(1)], ms(50));
        s.prune(ms(120));
        assert_eq!(s.reader(ms(120)).mask(BlockKey(1)), 1);
        s.prune(ms(150));
        assert!(s.is_empty());
    }

    #[test]
    fn many_workers_share_a_key_and_the_oldest_is_replaced() {
        let s = SpeculativeIndex::new(ms(100), ms(100));
        for w in 0..5 {
            s.credit(w, &[BlockKey(7)], ms(w as u64));
        }
        // Worker 0's credit (soonest to expire) made room for worker 4.
        assert_eq!(s.reader(ms(10)).mask(BlockKey(7)), 0b11110);
        s.forget_worker(2);
        assert_eq!(s.reader(ms(10)).mask(BlockKey(7)), 0b11010);
    }

    #[test]
    fn zero_ttl_disables() {
        let s = SpeculativeIndex::new(Duration::ZERO, Duration::ZERO);
        s.credit(0, &keys(20), ms(0));
        assert!(s.is_empty());
    }
}
