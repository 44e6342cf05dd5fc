//! One KV-event stream for several workers: the union of their caches, as an outside
//! router (llm-d, or `reprise route` in front of this process) should see a process
//! whose own router picks the worker inside it.
//!
//! A block key is published as stored when the first worker stores it and as removed
//! when the last one holding it drops it; a worker whose cache is gone (it cleared it,
//! died or restarted: an `AllCleared` from it, or [`CacheUnion::drop_worker`]) removes
//! exactly the keys no other worker holds. Consecutive blocks of one chain are grouped
//! into one `BlockStored` (one per request and step, as vLLM publishes them), and
//! consecutive removals into one `BlockRemoved`.

use crate::index::{bit, WorkerMask};
use crate::keymap::KeyMap;
use reprise_protocol::block_key::BlockKey;
use reprise_protocol::events::{KvEvent, KvEventData, MemoryTier};
use reprise_protocol::wire::{EngineHash, ExtraKey, RemovedBlocks, StoredBlocks, WireEvent};

/// vLLM's name of a tier on the wire.
pub fn medium_of(tier: MemoryTier) -> &'static str {
    match tier {
        // vLLM calls its primary KV pool "GPU" whatever the device; a CPU worker's
        // pool is its primary pool too (not an offload tier), so it is "GPU" as well.
        MemoryTier::Device => "GPU",
        MemoryTier::CpuOffload => "CPU",
    }
}

/// The union of several workers' cached blocks.
#[derive(Debug)]
pub struct CacheUnion {
    block_size: usize,
    holders: KeyMap<(WorkerMask, MemoryTier)>,
}

impl CacheUnion {
    /// An empty union of workers with blocks of `block_size` tokens.
    pub fn new(block_size: usize) -> Self {
        Self {
            block_size,
            holders: KeyMap::default(),
        }
    }

    /// Keys held by at least one worker.
    pub fn len(&self) -> usize {
        self.holders.len()
    }

    /// Whether no worker holds any key.
    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }

    /// Translate `worker`'s events (in its order) into the union's wire events,
    /// appended to `out`.
    pub fn apply(&mut self, worker: usize, events: &[KvEvent], out: &mut Vec<WireEvent>) {
        let b = bit(worker);
        for ev in events {
            match &ev.data {
                KvEventData::BlockStored {
                    key,
                    parent,
                    tokens,
                    tier,
                    extra,
                } => {
                    let e = self.holders.entry(*key).or_insert((0, *tier));
                    let first = e.0 == 0;
                    e.0 |= b;
                    if first {
                        self.push_stored(out, *key, *parent, tokens, *tier, extra);
                    }
                }
                KvEventData::BlockRemoved { key, .. } => self.release(b, *key, out),
                KvEventData::AllCleared => self.drop_worker(worker, out),
            }
        }
    }

    /// `worker`'s cache is gone: publish the removal of the keys only it held.
    pub fn drop_worker(&mut self, worker: usize, out: &mut Vec<WireEvent>) {
        let b = bit(worker);
        let mut gone: Vec<(BlockKey, MemoryTier)> = Vec::new();
        self.holders.retain(|k, (mask, tier)| {
            if *mask & b == 0 {
                return true;
            }
            *mask &= !b;
            if *mask == 0 {
                gone.push((*k, *tier));
                false
            } else {
                true
            }
        });
        gone.sort_by_key(|(k, _)| *k);
        for (k, tier) in gone {
            push_removed(out, k, tier);
        }
    }

    fn release(&mut self, b: WorkerMask, key: BlockKey, out: &mut Vec<WireEvent>) {
        if let Some((mask, tier)) = self.holders.get_mut(&key) {
            if *mask & b == 0 {
                return;
            }
            *mask &= !b;
            if *mask == 0 {
                let tier = *tier;
                self.holders.remove(&key);
                push_removed(out, key, tier);
            }
        }
    }

    fn push_stored(
        &self,
        out: &mut Vec<WireEvent>,
        key: BlockKey,
        parent: Option<BlockKey>,
        tokens: &[u32],
        tier: MemoryTier,
        extra: &[u8],
    ) {
        let medium = medium_of(tier);
        // Continue the previous group when this block is the next one of its chain.
        if let (Some(p), Some(WireEvent::BlockStored(s))) = (parent, out.last_mut()) {
            if s.block_hashes.last() == Some(&EngineHash::of_key(p))
                && s.medium.as_deref() == Some(medium)
            {
                s.block_hashes.push(EngineHash::of_key(key));
                s.token_ids.extend_from_slice(tokens);
                if let Some(x) = &mut s.extra_keys {
                    x.push(None);
                }
                return;
            }
        }
        // vLLM carries the cache salt in the extra keys of a chain's first block.
        let extra_keys = (parent.is_none() && !extra.is_empty()).then(|| {
            vec![Some(vec![ExtraKey::Str(
                String::from_utf8_lossy(extra).into_owned(),
            )])]
        });
        out.push(WireEvent::BlockStored(StoredBlocks {
            block_hashes: vec![EngineHash::of_key(key)],
            parent_block_hash: parent.map(EngineHash::of_key),
            token_ids: tokens.to_vec(),
            block_size: self.block_size,
            lora_id: None,
            medium: Some(medium.to_string()),
            lora_name: None,
            extra_keys,
        }));
    }
}

fn push_removed(out: &mut Vec<WireEvent>, key: BlockKey, tier: MemoryTier) {
    let medium = medium_of(tier);
    if let Some(WireEvent::BlockRemoved(r)) = out.last_mut() {
        if r.medium.as_deref() == Some(medium) {
            r.block_hashes.push(EngineHash::of_key(key));
            return;
        }
    }
    out.push(WireEvent::BlockRemoved(RemovedBlocks {
        block_hashes: vec![EngineHash::of_key(key)],
        medium: Some(medium.to_string()),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::precise::PreciseIndex;
    use crate::remote::RemoteStream;
    use reprise_protocol::block_key::{extra_bytes, BlockHasher, HashAlgo};
    use reprise_protocol::events::EventSequencer;
    use reprise_protocol::wire::{encode_batch, EventFormat, WireBatch};

    const BS: usize = 4;

    fn hasher() -> BlockHasher {
        BlockHasher::new(BS, HashAlgo::Xxh3).unwrap()
    }

    /// The events a worker's pool emits when it computes `tokens`' full blocks.
    fn store(seq: &mut EventSequencer, tokens: &[u32], salt: &[u8]) -> Vec<KvEvent> {
        let keys = hasher().prompt_keys(tokens, salt);
        for (i, k) in keys.iter().enumerate() {
            seq.push(KvEventData::BlockStored {
                key: *k,
                parent: i.checked_sub(1).map(|p| keys[p]),
                tokens: tokens[i * BS..(i + 1) * BS].to_vec(),
                tier: MemoryTier::Device,
                extra: if i == 0 { salt.to_vec() } else { Vec::new() },
            });
        }
        seq.drain()
    }

    fn remove(
        seq: &mut EventSequencer,
        tokens: &[u32],
        blocks: std::ops::Range<usize>,
    ) -> Vec<KvEvent> {
        let keys = hasher().prompt_keys(tokens, b"");
        for i in blocks {
            seq.push(KvEventData::BlockRemoved {
                key: keys[i],
                tier: MemoryTier::Device,
            });
        }
        seq.drain()
    }

    fn stored_hashes(out: &[WireEvent]) -> usize {
        out.iter()
            .map(|e| match e {
                WireEvent::BlockStored(s) => s.block_hashes.len(),
                _ => 0,
            })
            .sum()
    }

    fn removed_hashes(out: &[WireEvent]) -> usize {
        out.iter()
            .map(|e| match e {
                WireEvent::BlockRemoved(r) => r.block_hashes.len(),
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn stored_once_removed_by_the_last_holder() {
        let mut u = CacheUnion::new(BS);
        let (mut s0, mut s1) = (EventSequencer::default(), EventSequencer::default());
        let p: Vec<u32> = (0..13).collect(); // 3 full blocks
        let mut out = Vec::new();
        u.apply(0, &store(&mut s0, &p, b""), &mut out);
        // One grouped event for the chain, parent nil, tokens of the 3 blocks.
        assert_eq!(out.len(), 1);
        let WireEvent::BlockStored(s) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!((s.block_hashes.len(), s.token_ids.len()), (3, 12));
        assert_eq!(s.parent_block_hash, None);
        assert_eq!(s.extra_keys, None);
        out.clear();
        u.apply(1, &store(&mut s1, &p, b""), &mut out);
        assert!(out.is_empty(), "already in the union: {out:?}");
        u.apply(0, &remove(&mut s0, &p, 1..3), &mut out);
        assert!(out.is_empty(), "worker 1 still holds them");
        u.apply(1, &remove(&mut s1, &p, 2..3), &mut out);
        assert_eq!(removed_hashes(&out), 1);
        out.clear();
        // Worker 1 dies: block 1 (only it) goes; block 0 (both) stays.
        u.drop_worker(1, &mut out);
        assert_eq!(removed_hashes(&out), 1);
        assert_eq!(u.len(), 1);
        out.clear();
        u.apply(
            0,
            &[KvEvent {
                seq: 9,
                data: KvEventData::AllCleared,
            }],
            &mut out,
        );
        assert_eq!(removed_hashes(&out), 1);
        assert!(u.is_empty());
    }

    #[test]
    fn a_continuation_names_its_parent_and_the_salt_rides_on_block_0() {
        let mut u = CacheUnion::new(BS);
        let mut s0 = EventSequencer::default();
        let p: Vec<u32> = (0..8).collect();
        let mut out = Vec::new();
        u.apply(0, &store(&mut s0, &p, b"tenant"), &mut out);
        let WireEvent::BlockStored(s) = &out[0] else {
            panic!()
        };
        assert_eq!(s.cache_salt(), Some("tenant"));
        assert_eq!(s.extra_keys.as_ref().map(Vec::len), Some(2));
        // The same worker computes two more blocks of a longer prompt: a new event
        // whose parent is block 1.
        let longer: Vec<u32> = (0..16).collect();
        let mut evs = store(&mut s0, &longer, b"");
        evs.drain(..2); // blocks 0 and 1 were already there (no new events for them)
        let mut out2 = Vec::new();
        u.apply(0, &evs, &mut out2);
        let keys = hasher().prompt_keys(&longer, b"");
        let WireEvent::BlockStored(s) = &out2[0] else {
            panic!()
        };
        assert_eq!(s.parent_block_hash, Some(EngineHash::of_key(keys[1])));
        assert_eq!(stored_hashes(&out2), 2);
    }

    /// What reprise publishes, read back as `reprise route` reads a remote process:
    /// the union of two workers' caches in the reader's own key space.
    #[test]
    fn the_union_round_trips_through_the_wire_into_a_remote_index() {
        let mut u = CacheUnion::new(BS);
        let (mut s0, mut s1) = (EventSequencer::default(), EventSequencer::default());
        let a: Vec<u32> = (0..12).collect();
        let b: Vec<u32> = (100..108).collect();
        let mut stream = RemoteStream::new(hasher());
        let index = PreciseIndex::new(1, BS);
        let mut seq = 0;
        let mut publish =
            |u: &mut CacheUnion, w: usize, evs: Vec<KvEvent>, stream: &mut RemoteStream| {
                let mut out = Vec::new();
                u.apply(w, &evs, &mut out);
                for format in [EventFormat::Map, EventFormat::Array] {
                    let bytes = encode_batch(
                        &WireBatch {
                            ts: 2.0,
                            events: out.clone(),
                            data_parallel_rank: Some(0),
                        },
                        format,
                    );
                    assert_eq!(
                        reprise_protocol::wire::decode_batch(&bytes).unwrap().events,
                        out
                    );
                }
                let bytes = encode_batch(
                    &WireBatch {
                        ts: 2.0,
                        events: out,
                        data_parallel_rank: Some(0),
                    },
                    EventFormat::Map,
                );
                let mut evs = Vec::new();
                stream.offer(seq, &bytes, false, &mut evs).unwrap();
                index.apply(0, &evs).unwrap();
                seq += 1;
            };
        publish(&mut u, 0, store(&mut s0, &a, b"x"), &mut stream);
        publish(&mut u, 1, store(&mut s1, &b, b""), &mut stream);
        publish(&mut u, 1, store(&mut s1, &a, b"x"), &mut stream);
        let run = |t: &[u32], salt: &[u8]| {
            let mut o = [0usize; 1];
            index.match_prefix(&hasher().prompt_keys(t, salt), 1, &mut o);
            o[0]
        };
        assert_eq!((run(&a, b"x"), run(&b, b"")), (3, 2));
        assert_eq!(run(&a, &extra_bytes(None, None)), 0);
        publish(
            &mut u,
            1,
            vec![KvEvent {
                seq: 99,
                data: KvEventData::AllCleared,
            }],
            &mut stream,
        );
        assert_eq!((run(&a, b"x"), run(&b, b"")), (3, 0));
    }
}
