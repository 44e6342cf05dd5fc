use super::*;
use crate::index::precise::PreciseIndex;
use reprise_protocol::block_key::HashAlgo;
use reprise_protocol::wire::{encode_batch, EventFormat, RemovedBlocks};

/// The vLLM frames fixture (`tests/data/kv-events/`).
fn fixture() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/kv-events/vllm_events_public.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("fixture json")
}

/// `(seq, payload)` of every frame of one variant.
fn frames(f: &serde_json::Value, variant: &str) -> Vec<(u64, Vec<u8>)> {
    let hex = |s: &str| -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    };
    f["variants"][variant]
        .as_array()
        .expect("variant")
        .iter()
        .map(|fr| {
            let seq = reprise_protocol::wire::parse_seq(&hex(fr["seq"].as_str().expect("seq")))
                .expect("8-byte seq");
            (seq, hex(fr["payload"].as_str().expect("payload")))
        })
        .collect()
}

fn hasher(bs: usize) -> BlockHasher {
    BlockHasher::new(bs, HashAlgo::Xxh3).unwrap()
}

/// Longest cached run of `tokens` (with salt / LoRA) on worker 0 of `index`.
fn run_of(
    index: &PreciseIndex,
    h: BlockHasher,
    tokens: &[u32],
    salt: Option<&str>,
    lora: Option<&str>,
) -> usize {
    let keys = h.prompt_keys(tokens, &extra_bytes(salt, lora));
    let mut out = [0usize; 1];
    index.match_prefix(&keys, 1, &mut out);
    out[0]
}

fn tokens_of(q: &serde_json::Value) -> Vec<u32> {
    q["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn every_fixture_variant_answers_the_queries() {
    let f = fixture();
    let h = hasher(16);
    for variant in [
        "legacy-int",
        "legacy-bytes",
        "map-int",
        "map-bytes",
        "mapmap-int",
        "mapmap-bytes",
    ] {
        let fr = frames(&f, variant);
        let index = PreciseIndex::new(1, 16);
        let mut stream = RemoteStream::new(h);
        let (last, before) = fr.split_last().unwrap();
        for (seq, payload) in before {
            let mut evs = Vec::new();
            assert_eq!(
                stream.offer(*seq, payload, false, &mut evs).unwrap(),
                Offer::Applied
            );
            index.apply(0, &evs).unwrap();
        }
        assert_eq!(
            stream.stats().engine_blocks as u64,
            f["live_engine_blocks_before_clear"].as_u64().unwrap(),
            "{variant}"
        );
        assert_eq!(stream.stats().pending_blocks, 0, "{variant}");
        for q in f["queries"].as_array().unwrap() {
            let want = q["prefix_blocks_before_clear"].as_u64().unwrap() as usize;
            let got = run_of(
                &index,
                h,
                &tokens_of(q),
                q["salt"].as_str(),
                q["lora_name"].as_str(),
            );
            assert_eq!(got, want, "{variant}: {q}");
        }
        let mut evs = Vec::new();
        stream.offer(last.0, &last.1, false, &mut evs).unwrap();
        index.apply(0, &evs).unwrap();
        assert!(index.is_empty(), "{variant}");
        for q in f["queries"].as_array().unwrap() {
            let got = run_of(
                &index,
                h,
                &tokens_of(q),
                q["salt"].as_str(),
                q["lora_name"].as_str(),
            );
            assert_eq!(got, 0, "{variant} after the clear: {q}");
        }
    }
}

/// A made-up engine: hashes its chain with its own function (`seed` varies it).
fn engine_hash(seed: u64, parent: Option<&EngineHash>, tokens: &[u32]) -> EngineHash {
    let mut bytes = seed.to_le_bytes().to_vec();
    if let Some(EngineHash::Int(p)) = parent {
        bytes.extend_from_slice(&p.to_le_bytes());
    }
    for t in tokens {
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    EngineHash::Int(xxhash_rust::xxh3::xxh3_64(&bytes))
}

/// `BlockStored` for `tokens[from_block * bs..]` in engine blocks of `bs`, chained from
/// block `from_block - 1`; also every block's engine hash.
fn stored(
    seed: u64,
    tokens: &[u32],
    bs: usize,
    from_block: usize,
    salt: Option<&str>,
) -> (StoredBlocks, Vec<EngineHash>) {
    let mut hashes: Vec<EngineHash> = Vec::new();
    for b in tokens.chunks_exact(bs) {
        let h = engine_hash(seed, hashes.last(), b);
        hashes.push(h);
    }
    let s = StoredBlocks {
        block_hashes: hashes[from_block..].to_vec(),
        parent_block_hash: from_block.checked_sub(1).map(|p| hashes[p].clone()),
        token_ids: tokens[from_block * bs..hashes.len() * bs].to_vec(),
        block_size: bs,
        lora_id: None,
        medium: Some("GPU".into()),
        lora_name: None,
        extra_keys: salt.map(|s| vec![Some(vec![reprise_protocol::wire::ExtraKey::Str(s.into())])]),
    };
    (s, hashes)
}

fn batch(events: Vec<WireEvent>) -> Vec<u8> {
    encode_batch(
        &WireBatch {
            ts: 1.0,
            events,
            data_parallel_rank: None,
        },
        EventFormat::Map,
    )
}

fn feed(stream: &mut RemoteStream, index: &PreciseIndex, seq: u64, payload: &[u8]) -> Offer {
    let mut evs = Vec::new();
    let o = stream.offer(seq, payload, false, &mut evs).unwrap();
    index.apply(0, &evs).unwrap();
    o
}

fn removed(h: &EngineHash) -> WireEvent {
    WireEvent::BlockRemoved(RemovedBlocks {
        block_hashes: vec![h.clone()],
        medium: None,
    })
}

#[test]
fn any_engine_hash_scheme_and_a_multiple_block_size_give_the_routers_keys() {
    let tokens: Vec<u32> = (1000..1100).collect(); // 100 tokens
    let h = hasher(16);
    let mut want = h.prompt_keys(&tokens[..96], &extra_bytes(Some("s"), None));
    want.sort();
    for (seed, engine_bs) in [(1u64, 16usize), (99, 32), (7, 48)] {
        let index = PreciseIndex::new(1, 16);
        let mut stream = RemoteStream::new(h);
        let (s, _) = stored(seed, &tokens[..96], engine_bs, 0, Some("s"));
        feed(
            &mut stream,
            &index,
            0,
            &batch(vec![WireEvent::BlockStored(s)]),
        );
        let mut got: Vec<BlockKey> = index.blocks_of(0).into_iter().map(|(k, _)| k).collect();
        got.sort();
        assert_eq!(got, want, "engine block size {engine_bs}");
        assert_eq!(run_of(&index, h, &tokens, Some("s"), None), 6);
        assert_eq!(run_of(&index, h, &tokens, None, None), 0, "salt separates");
    }
    // 24-token engine blocks do not split into 16-token router blocks: skipped, counted.
    let mut stream = RemoteStream::new(h);
    let (s, _) = stored(3, &tokens[..96], 24, 0, None);
    let mut evs = Vec::new();
    stream
        .offer(0, &batch(vec![WireEvent::BlockStored(s)]), false, &mut evs)
        .unwrap();
    assert!(evs.is_empty());
    assert_eq!(stream.stats().incompatible, 1);
}

#[test]
fn a_child_before_its_parent_waits_and_a_continuation_inherits_the_salt() {
    let tokens: Vec<u32> = (0..64).collect();
    let h = hasher(16);
    let index = PreciseIndex::new(1, 16);
    let mut stream = RemoteStream::new(h);
    let (child, hashes) = stored(5, &tokens, 16, 2, None);
    let (parent, _) = stored(5, &tokens[..32], 16, 0, Some("t"));
    // Joined mid-stream without replay: accept from batch 4 on.
    let mut evs = Vec::new();
    stream.resync(4, &mut evs);
    index.apply(0, &evs).unwrap();
    let child_batch = batch(vec![WireEvent::BlockStored(child)]);
    assert_eq!(feed(&mut stream, &index, 4, &child_batch), Offer::Applied);
    assert_eq!(stream.stats().pending_blocks, 2);
    assert_eq!(run_of(&index, h, &tokens, Some("t"), None), 0);
    feed(
        &mut stream,
        &index,
        5,
        &batch(vec![WireEvent::BlockStored(parent)]),
    );
    assert_eq!(stream.stats().pending_blocks, 0);
    assert_eq!(stream.stats().engine_blocks, 4);
    assert_eq!(run_of(&index, h, &tokens, Some("t"), None), 4);
    // Removing block 1 by its engine hash removes exactly its router key.
    feed(&mut stream, &index, 6, &batch(vec![removed(&hashes[1])]));
    assert_eq!(run_of(&index, h, &tokens, Some("t"), None), 1);
    assert_eq!(index.blocks_of(0).len(), 3);
}

#[test]
fn a_block_removed_while_waiting_is_never_indexed() {
    let tokens: Vec<u32> = (0..48).collect();
    let h = hasher(16);
    let index = PreciseIndex::new(1, 16);
    let mut stream = RemoteStream::new(h);
    let (child, hashes) = stored(5, &tokens, 16, 1, None);
    let (parent, _) = stored(5, &tokens[..16], 16, 0, None);
    let mut evs = Vec::new();
    stream.resync(0, &mut evs);
    feed(
        &mut stream,
        &index,
        0,
        &batch(vec![WireEvent::BlockStored(child), removed(&hashes[1])]),
    );
    feed(
        &mut stream,
        &index,
        1,
        &batch(vec![WireEvent::BlockStored(parent)]),
    );
    // Blocks 0 and 2 are held; 1 was evicted, so the run from block 0 stops at 1.
    assert_eq!(index.blocks_of(0).len(), 2);
    assert_eq!(run_of(&index, h, &tokens, None, None), 1);
    assert_eq!(stream.stats().engine_blocks, 2);
}

#[test]
fn sequence_numbers_gaps_duplicates_and_restarts() {
    let h = hasher(16);
    let index = PreciseIndex::new(1, 16);
    let mut stream = RemoteStream::new(h);
    let tok = |i: u32| -> Vec<u32> { (i * 100..i * 100 + 16).collect() };
    let b = |i: u32| {
        batch(vec![WireEvent::BlockStored(
            stored(1, &tok(i), 16, 0, None).0,
        )])
    };
    // Joined late: batch 2 first is a gap from 0.
    assert_eq!(feed(&mut stream, &index, 2, &b(2)), Offer::Gap { from: 0 });
    // The replay brings 0 and 1; then the held batch 2 applies.
    let mut evs = Vec::new();
    assert_eq!(
        stream.offer(0, &b(0), true, &mut evs).unwrap(),
        Offer::Applied
    );
    assert_eq!(
        stream.offer(1, &b(1), true, &mut evs).unwrap(),
        Offer::Applied
    );
    index.apply(0, &evs).unwrap();
    assert_eq!(feed(&mut stream, &index, 2, &b(2)), Offer::Applied);
    // Replayed again, and the live copy of a batch the replay already brought: duplicates.
    evs.clear();
    assert_eq!(
        stream.offer(1, &b(1), true, &mut evs).unwrap(),
        Offer::Duplicate
    );
    assert_eq!(
        stream.offer(2, &b(2), false, &mut evs).unwrap(),
        Offer::Duplicate
    );
    assert!(evs.is_empty());
    assert_eq!(index.blocks_of(0).len(), 3);
    // A lost batch 3: 4 is a gap from 3.
    assert_eq!(feed(&mut stream, &index, 4, &b(4)), Offer::Gap { from: 3 });
    // The engine restarts: batch 0 of the new process clears and applies.
    assert_eq!(
        feed(&mut stream, &index, 0, &b(9)),
        Offer::Restarted { applied: true }
    );
    assert_eq!(index.blocks_of(0).len(), 1);
    assert_eq!(run_of(&index, h, &tok(9), None, None), 1);
    assert_eq!(run_of(&index, h, &tok(0), None, None), 0);
    // A restart seen first at batch 1 (batch 0 lost): cleared, then replay from 0.
    feed(&mut stream, &index, 1, &b(10));
    assert_eq!(
        feed(&mut stream, &index, 1, &b(11)),
        Offer::Restarted { applied: false }
    );
    assert!(index.blocks_of(0).is_empty());
    assert_eq!(stream.next_seq(), None);
    let s = stream.stats();
    assert_eq!((s.restarts, s.duplicates, s.gaps), (2, 2, 2));
    // Undecodable payloads are errors and change nothing.
    let mut evs = Vec::new();
    assert!(stream.offer(0, b"\xc1", false, &mut evs).is_err());
    assert_eq!(stream.next_seq(), None);
}
