//! Decision-time micro-benchmark (a plain binary: `harness = false`).
//!
//! `cargo bench -p reprise-router --bench decision`
//!
//! Setup: precise policy, 8 workers, block size 16, 1M distinct blocks in the
//! index (chains of 512 blocks spread over the workers). Reports p50/p99 of a whole
//! `Router::route` call (hashing + index walk + scoring + speculative credit) for 1K-
//! and 8K-token prompts, fully cached on one worker ("hit") and unknown ("miss"), a
//! breakdown of hashing vs index walk, and decisions per second from 2 threads while
//! a third streams KV events. Set `DECISION_BENCH_QUICK=1` for a short run.

use reprise_protocol::wire::{
    encode_batch, EngineHash, EventFormat, StoredBlocks, WireBatch, WireEvent,
};
use reprise_protocol::{
    BlockHasher, BlockKey, EventSequencer, KvEventData, MemoryTier, WorkerLoad,
};
use reprise_router::remote::RemoteStream;
use reprise_router::{PolicyKind, Router, RouterConfig};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const WORKERS: usize = 8;
const BLOCK: usize = 16;
const CHAIN_TOKENS: usize = 8192;
const INDEXED_BLOCKS: usize = 1_000_000;

/// Deterministic token ids of chain `c` (distinct chains share no block).
fn chain_tokens(c: u64, len: usize) -> Vec<u32> {
    (0..len as u64)
        .map(|t| {
            let mut z =
                c.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ t.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z ^= z >> 29;
            (z % 50_000) as u32
        })
        .collect()
}

fn load() -> WorkerLoad {
    WorkerLoad {
        running: 4,
        waiting: 1,
        blocks_in_use: 1000,
        total_blocks: 200_000,
        prefill_tokens: 0,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let mean = samples.iter().sum::<Duration>() / samples.len().max(1) as u32;
    println!(
        "{name:<34} p50 {:>8.2} µs   p99 {:>8.2} µs   mean {:>8.2} µs   (n={})",
        percentile(&samples, 0.50).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6,
        samples.len()
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::var_os("DECISION_BENCH_QUICK").is_some();
    let iters = if quick { 2_000 } else { 20_000 };
    let config = RouterConfig {
        policy: PolicyKind::Precise,
        block_size: BLOCK,
        ..Default::default()
    };
    let router = Router::new(config, WORKERS, 200_000)?;
    let hasher: BlockHasher = router.hasher();

    // ---- populate 1M blocks through the real event path ----
    let t0 = Instant::now();
    let blocks_per_chain = CHAIN_TOKENS / BLOCK;
    let chains = INDEXED_BLOCKS.div_ceil(blocks_per_chain);
    let mut seqs: Vec<EventSequencer> = (0..WORKERS).map(|_| EventSequencer::default()).collect();
    let mut keys = Vec::new();
    for c in 0..chains {
        let w = c % WORKERS;
        let toks = chain_tokens(c as u64, CHAIN_TOKENS);
        hasher.prompt_keys_into(&toks, b"", &mut keys);
        for (i, k) in keys.iter().enumerate() {
            seqs[w].push(KvEventData::BlockStored {
                key: *k,
                parent: i.checked_sub(1).map(|p| keys[p]),
                tokens: toks[i * BLOCK..(i + 1) * BLOCK].to_vec(),
                tier: MemoryTier::Device,
                extra: Vec::new(),
            });
        }
        router.apply_events(w, &seqs[w].drain())?;
    }
    println!(
        "indexed {} blocks over {WORKERS} workers in {:.2} s ({} distinct keys)",
        chains * blocks_per_chain,
        t0.elapsed().as_secs_f64(),
        router.index().len()
    );
    for w in 0..WORKERS {
        router.update_load(w, load())?;
    }

    // Hits are prefixes of indexed chains; misses are a fresh chain every decision.
    let hit_prompts: Vec<Vec<u32>> = (0..64).map(|c| chain_tokens(c, CHAIN_TOKENS)).collect();
    let epoch = Instant::now();
    let mut fresh = 10_000_000u64;
    let mut miss = Vec::new();

    // Virtual time: one decision every 10 ms (100 requests/s), so the speculative
    // index holds the ~200 prompts a 2 s TTL keeps alive at that rate.
    let mut now = Duration::ZERO;
    let mut run = |name: &str, len: usize, hit: bool| -> Result<(), Box<dyn std::error::Error>> {
        let mut samples = Vec::with_capacity(iters);
        for i in 0..iters + 1000 {
            let p: &[u32] = if hit {
                &hit_prompts[i % hit_prompts.len()][..len]
            } else {
                fresh += 1;
                miss = chain_tokens(fresh, len);
                &miss
            };
            now += Duration::from_millis(10);
            let t = Instant::now();
            let d = router.route(p, b"", now)?;
            let dt = t.elapsed();
            std::hint::black_box(&d);
            // Keep loads steady: the next decision sees the same idle-ish fleet.
            router.update_load(d.worker, load())?;
            if i >= 1000 {
                samples.push(dt);
            }
        }
        report(name, samples);
        Ok(())
    };
    println!("\n-- Router::route (hash + walk + score + speculative credit), 8 workers --");
    run("1K tokens, hit (64 blocks cached)", 1024, true)?;
    run("8K tokens, hit (512 blocks cached)", 8192, true)?;
    run("1K tokens, miss (new prefix)", 1024, false)?;
    run("8K tokens, miss (new prefix)", 8192, false)?;

    println!("\n-- breakdown --");
    for len in [1024, 8192] {
        let mut samples = Vec::with_capacity(iters);
        for i in 0..iters {
            let p = &hit_prompts[i % 64][..len];
            let t = Instant::now();
            hasher.prompt_keys_into(p, b"", &mut keys);
            samples.push(t.elapsed());
            std::hint::black_box(&keys);
        }
        report(&format!("hash only, {}K tokens", len / 1024), samples);
        let mut ref_samples = Vec::with_capacity(iters / 10);
        for i in 0..iters / 10 {
            let p = &hit_prompts[i % 64][..len];
            let t = Instant::now();
            let k = hasher.prompt_keys(p, b"");
            ref_samples.push(t.elapsed());
            std::hint::black_box(k);
        }
        report(
            &format!("hash, reference per-token update, {}K", len / 1024),
            ref_samples,
        );
        let mut walk = Vec::with_capacity(iters);
        let mut out = [0usize; WORKERS];
        let all = (1u128 << WORKERS) - 1;
        let key_sets: Vec<Vec<BlockKey>> = hit_prompts
            .iter()
            .map(|p| hasher.prompt_keys(&p[..len], b""))
            .collect();
        for i in 0..iters {
            let t = Instant::now();
            router
                .index()
                .match_prefix(&key_sets[i % 64], all, &mut out);
            walk.push(t.elapsed());
            std::hint::black_box(&out);
        }
        report(&format!("index walk only, {}K hit", len / 1024), walk);
        let mut rk = Vec::with_capacity(iters);
        for i in 0..iters {
            let now = epoch.elapsed();
            let t = Instant::now();
            let d = router.route_keys(&key_sets[i % 64], now)?;
            rk.push(t.elapsed());
            router.update_load(d.worker, load())?;
        }
        report(&format!("route_keys (no hashing), {}K hit", len / 1024), rk);
    }

    remote_fed(&hit_prompts, iters)?;

    // ---- throughput: 2 routing threads while events stream in ----
    let secs = if quick { 0.5 } else { 3.0 };
    println!("\n-- throughput: 2 routing threads + 1 event thread, {secs} s each --");
    for len in [1024usize, 8192] {
        for rate in [Some(0.0), Some(100_000.0), None] {
            throughput(
                &router,
                hasher,
                &mut seqs,
                &hit_prompts,
                len,
                rate,
                secs,
                epoch,
            );
        }
    }
    Ok(())
}

/// `reprise route`'s case: the same 1M blocks reach the index as vLLM wire batches
/// (map encoding, 32-byte hashes of a foreign scheme, blocks of 64 tokens) decoded
/// and translated to the router's own keys by [`RemoteStream`]; the decision is the
/// call `reprise route` makes, `Router::route_excluding`.
fn remote_fed(hit_prompts: &[Vec<u32>], iters: usize) -> Result<(), Box<dyn std::error::Error>> {
    let config = RouterConfig {
        policy: PolicyKind::Precise,
        block_size: BLOCK,
        ..Default::default()
    };
    let router = Router::new(config, WORKERS, 200_000)?;
    let engine_block = 64;
    let t0 = Instant::now();
    let chains = INDEXED_BLOCKS.div_ceil(CHAIN_TOKENS / BLOCK);
    let mut streams: Vec<RemoteStream> = (0..WORKERS)
        .map(|_| RemoteStream::new(router.hasher()))
        .collect();
    let mut seqs = [0u64; WORKERS];
    let mut out = Vec::new();
    for c in 0..chains {
        let w = c % WORKERS;
        let toks = chain_tokens(c as u64, CHAIN_TOKENS);
        let hashes: Vec<EngineHash> = (0..CHAIN_TOKENS / engine_block)
            .map(|i| {
                let mut b = [0u8; 32];
                b[..8].copy_from_slice(&(c as u64).to_le_bytes());
                b[8..16].copy_from_slice(&(i as u64).to_le_bytes());
                EngineHash::Bytes(Box::new(b))
            })
            .collect();
        let batch = WireBatch {
            ts: 1.0,
            events: vec![WireEvent::BlockStored(StoredBlocks {
                block_hashes: hashes,
                parent_block_hash: None,
                token_ids: toks,
                block_size: engine_block,
                lora_id: None,
                medium: Some("GPU".into()),
                lora_name: None,
                extra_keys: None,
            })],
            data_parallel_rank: Some(0),
        };
        let payload = encode_batch(&batch, EventFormat::Map);
        out.clear();
        streams[w].offer(seqs[w], &payload, false, &mut out)?;
        seqs[w] += 1;
        router.apply_events(w, &out)?;
    }
    println!(
        "\n-- reprise route: the index fed by vLLM wire batches through RemoteStream ({} keys, {:.2} s) --",
        router.index().len(),
        t0.elapsed().as_secs_f64()
    );
    for w in 0..WORKERS {
        router.update_load(w, load())?;
    }
    let mut now = Duration::ZERO;
    let mut fresh = 30_000_000u64;
    for (name, len, hit) in [
        ("route: 1K tokens, hit", 1024, true),
        ("route: 8K tokens, hit", 8192, true),
        ("route: 1K tokens, miss", 1024, false),
        ("route: 8K tokens, miss", 8192, false),
    ] {
        let mut samples = Vec::with_capacity(iters);
        for i in 0..iters + 1000 {
            let miss;
            let p: &[u32] = if hit {
                &hit_prompts[i % hit_prompts.len()][..len]
            } else {
                fresh += 1;
                miss = chain_tokens(fresh, len);
                &miss
            };
            now += Duration::from_millis(10);
            let t = Instant::now();
            let d = router.route_excluding(p, b"", now, 0)?;
            let dt = t.elapsed();
            std::hint::black_box(&d);
            router.update_load(d.worker, load())?;
            if i >= 1000 {
                samples.push(dt);
            }
        }
        report(name, samples);
    }
    Ok(())
}

/// Decisions/s from 2 threads routing `len`-token hits while a third thread applies
/// KV events at `rate` events/s (`None`: as fast as it can; `Some(0)`: no events).
#[allow(clippy::too_many_arguments)]
fn throughput(
    router: &Router,
    hasher: BlockHasher,
    seqs: &mut [EventSequencer],
    hit_prompts: &[Vec<u32>],
    len: usize,
    rate: Option<f64>,
    secs: f64,
    epoch: Instant,
) {
    static CHAIN: AtomicU64 = AtomicU64::new(20_000_000);
    let stop = AtomicBool::new(false);
    let decisions = AtomicU64::new(0);
    let events = AtomicU64::new(0);
    let resyncs_before: u64 = (0..WORKERS)
        .filter_map(|w| router.stream_stats(w).ok())
        .map(|s| s.resyncs)
        .sum();
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2usize {
            let (stop, decisions) = (&stop, &decisions);
            s.spawn(move || {
                let mut n = 0u64;
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let p = &hit_prompts[i % hit_prompts.len()][..len];
                    if let Ok(d) = router.route(p, b"", epoch.elapsed()) {
                        let _ = router.update_load(d.worker, load());
                    }
                    i += 2;
                    n += 1;
                }
                decisions.fetch_add(n, Ordering::Relaxed);
            });
        }
        let (stop, events) = (&stop, &events);
        if rate != Some(0.0) {
            s.spawn(move || {
                // Store then remove fresh 64-block chains (batches of 64 events), like a
                // busy engine caching and evicting; keys never collide with the hits.
                // Each worker's stream continues where the setup left it (no resync).
                let mut keys = Vec::new();
                let mut n = 0u64;
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let c = CHAIN.fetch_add(1, Ordering::Relaxed);
                    let w = (c % WORKERS as u64) as usize;
                    let toks = chain_tokens(c, 64 * BLOCK);
                    hasher.prompt_keys_into(&toks, b"", &mut keys);
                    for (i, k) in keys.iter().enumerate() {
                        seqs[w].push(KvEventData::BlockStored {
                            key: *k,
                            parent: i.checked_sub(1).map(|p| keys[p]),
                            tokens: toks[i * BLOCK..(i + 1) * BLOCK].to_vec(),
                            tier: MemoryTier::Device,
                            extra: Vec::new(),
                        });
                    }
                    let _ = router.apply_events(w, &seqs[w].drain());
                    for k in &keys {
                        seqs[w].push(KvEventData::BlockRemoved {
                            key: *k,
                            tier: MemoryTier::Device,
                        });
                    }
                    let _ = router.apply_events(w, &seqs[w].drain());
                    n += 2 * keys.len() as u64;
                    if let Some(r) = rate {
                        let due = Duration::from_secs_f64(n as f64 / r);
                        if let Some(wait) = due.checked_sub(t0.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                }
                events.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    let el = start.elapsed().as_secs_f64();
    let resyncs: u64 = (0..WORKERS)
        .filter_map(|w| router.stream_stats(w).ok())
        .map(|s| s.resyncs)
        .sum();
    let label = match rate {
        Some(0.0) => "no events".to_string(),
        Some(r) => format!("events at {:.0}K/s", r / 1000.0),
        None => "events unthrottled".to_string(),
    };
    println!(
        "{}K-token hits, {label:<20} {:>9.0} decisions/s   {:>9.0} events/s applied   resyncs {}",
        len / 1024,
        decisions.load(Ordering::Relaxed) as f64 / el,
        events.load(Ordering::Relaxed) as f64 / el,
        resyncs - resyncs_before
    );
}
