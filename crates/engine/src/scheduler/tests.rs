//! Scheduler tests: vLLM's prefix-caching edge cases and property tests of the
//! pool's invariants under random interleavings.

use super::*;
use proptest::prelude::*;
use reprise_protocol::KvEventData;
use std::collections::{HashMap, HashSet};

fn sched(num_blocks: usize, block_size: usize, budget: usize) -> Scheduler {
    Scheduler::new(SchedulerConfig {
        num_blocks,
        block_size,
        max_num_batched_tokens: budget,
        max_num_seqs: 64,
        hash_algo: HashAlgo::Xxh3,
    })
    .unwrap()
}

/// A test driver: runs steps, "computes" by writing token ids into a shadow
/// of every block's contents, samples a fixed token, replays KV events.
struct Harness {
    s: Scheduler,
    contents: Vec<Vec<Option<TokenId>>>,
    stored: HashMap<BlockKey, Vec<TokenId>>,
    replayed: HashSet<BlockKey>,
    next_seq: u64,
    max_gen: HashMap<SeqId, usize>,
}

impl Harness {
    fn new(s: Scheduler) -> Self {
        let n = s.pool().num_blocks();
        let bs = s.config().block_size;
        Self {
            s,
            contents: vec![vec![None; bs]; n],
            stored: HashMap::new(),
            replayed: HashSet::new(),
            next_seq: 0,
            max_gen: HashMap::new(),
        }
    }

    fn add(&mut self, prompt: Vec<TokenId>, max_gen: usize) -> SeqId {
        let id = self.s.add(prompt, Vec::new()).unwrap();
        self.max_gen.insert(id, max_gen);
        id
    }

    fn step(&mut self) -> StepPlan {
        let plan = self.s.schedule();
        for id in &plan.out_of_blocks {
            self.s.finish(*id);
        }
        let bs = self.s.config().block_size;
        let window = self.s.sliding_window();
        for inp in self.s.inputs(&plan) {
            // Every key the step's queries attend to is still held, with its token.
            let seq_tokens = self.s.tokens(inp.seq).expect("scheduled sequence");
            let lo = window.map_or(0, |w| (inp.start_pos + 1).saturating_sub(w));
            for (p, &tok) in seq_tokens.iter().enumerate().take(inp.start_pos).skip(lo) {
                let b = inp.block_table[p / bs];
                assert_ne!(
                    b,
                    crate::kv::block_table::FREED,
                    "position {p} was given back"
                );
                assert_eq!(self.contents[b as usize][p % bs], Some(tok));
            }
            for (k, t) in inp.tokens.iter().enumerate() {
                let p = inp.start_pos + k;
                self.contents[inp.block_table[p / bs] as usize][p % bs] = Some(*t);
            }
        }
        self.s.complete(&plan);
        for p in &plan.seqs {
            if p.sample && self.s.contains(p.seq) {
                let tok = 1000 + (p.start + p.len) as TokenId;
                self.s.append_token(p.seq, tok);
                if self.s.num_generated(p.seq).unwrap() >= self.max_gen[&p.seq] {
                    self.s.finish(p.seq);
                }
            }
        }
        self.replay();
        plan
    }

    fn replay(&mut self) {
        for ev in self.s.drain_events() {
            assert_eq!(ev.seq, self.next_seq, "event numbers have no gaps");
            self.next_seq += 1;
            match ev.data {
                KvEventData::BlockStored { key, tokens, .. } => {
                    assert!(self.replayed.insert(key), "stored twice without removal");
                    self.stored.insert(key, tokens);
                }
                KvEventData::BlockRemoved { key, .. } => {
                    assert!(self.replayed.remove(&key), "removed a key never stored");
                }
                KvEventData::AllCleared => self.replayed.clear(),
            }
        }
    }

    fn check(&self) {
        self.s.check_invariants().unwrap();
        let cached: HashSet<BlockKey> = self.s.pool().cached_entries().map(|(k, _)| k).collect();
        assert_eq!(
            cached, self.replayed,
            "event replay equals the cached key set"
        );
        for (key, b) in self.s.pool().cached_entries() {
            let want: Vec<Option<TokenId>> = self.stored[&key].iter().map(|t| Some(*t)).collect();
            assert_eq!(
                self.contents[b as usize], want,
                "cached block {b} holds its key's tokens"
            );
        }
    }

    fn run_to_end(&mut self, max_steps: usize) {
        for _ in 0..max_steps {
            if self.s.num_seqs() == 0 {
                break;
            }
            self.step();
            self.check();
        }
        assert_eq!(self.s.num_seqs(), 0, "every sequence finished");
    }
}

fn prompt(base: u32, len: usize) -> Vec<TokenId> {
    (0..len as u32).map(|i| base + i).collect()
}

#[test]
fn exact_multiple_of_block_size_recomputes_last_block() {
    let mut h = Harness::new(sched(16, 4, 64));
    h.add(prompt(0, 8), 1);
    h.run_to_end(10);
    let b = h.add(prompt(0, 8), 1);
    let plan = h.step();
    // Two full blocks are cached, but the block with the last token is recomputed.
    assert_eq!(
        plan.seqs[0],
        ScheduledSeq {
            seq: b,
            start: 4,
            len: 4,
            sample: true
        }
    );
    h.check();
}

#[test]
fn same_prompt_twice_in_one_step_is_computed_once() {
    // vLLM computes both (and caches the blocks once); here the second waits for
    // the first's step and takes its two full blocks from the cache.
    let mut h = Harness::new(sched(16, 4, 64));
    let a = h.add(prompt(0, 9), 2);
    let b = h.add(prompt(0, 9), 2);
    let plan = h.step();
    assert_eq!(plan.seqs.len(), 1);
    assert_eq!((plan.seqs[0].start, plan.seqs[0].len), (0, 9));
    assert_eq!(h.s.cached_tokens(a), Some(0));
    let plan = h.step();
    let pb = plan.seqs.iter().find(|p| p.seq == b).expect("b admitted");
    assert_eq!((pb.start, pb.len), (8, 1));
    assert_eq!(h.s.cached_tokens(b), Some(8));
    // Two full blocks, stored once each.
    assert_eq!(h.s.pool().num_cached(), 2);
    h.check();
    h.run_to_end(10);
    assert_eq!(h.s.pool().num_in_use(), 0);
}

#[test]
fn hit_on_block_in_free_queue_takes_it_out() {
    let mut h = Harness::new(sched(8, 4, 64));
    let a = h.add(prompt(0, 9), 2);
    h.step();
    let table: Vec<BlockId> = h.s.block_table(a).unwrap().to_vec();
    h.run_to_end(5);
    assert!(h.s.pool().is_free(table[0]));
    let b = h.add(prompt(0, 10), 2);
    h.step();
    assert_eq!(h.s.cached_tokens(b), Some(8));
    assert_eq!(&h.s.block_table(b).unwrap()[..2], &table[..2]);
    assert!(!h.s.pool().is_free(table[0]));
    assert_eq!(h.s.pool().ref_count(table[0]), 1);
    h.check();
}

#[test]
fn eviction_takes_the_longest_prefix_block_first() {
    let mut h = Harness::new(sched(4, 2, 64));
    let a = h.add(prompt(0, 6), 2); // 3 full blocks, then a 4th for the decode
    h.step();
    let table: Vec<BlockId> = h.s.block_table(a).unwrap().to_vec();
    let keys: Vec<BlockKey> = table[..3]
        .iter()
        .map(|b| h.s.pool().key_of(*b).unwrap())
        .collect();
    h.run_to_end(3);
    // Freed in reverse: the unkeyed decode block, then A's last full block, are
    // at the head. A new unrelated 4-token prompt takes exactly those two.
    assert_eq!(h.s.pool().free_queue()[1..], [table[2], table[1], table[0]]);
    h.add(prompt(500, 4), 1);
    h.step();
    assert!(h.s.pool().lookup(keys[0]).is_some());
    assert!(h.s.pool().lookup(keys[1]).is_some());
    assert!(h.s.pool().lookup(keys[2]).is_none());
    h.check();
}

#[test]
fn preempted_sequence_resumes_from_its_cached_blocks() {
    // 6 blocks of 2 tokens; two 5-token prompts each need 3 blocks, then grow.
    let mut h = Harness::new(sched(6, 2, 64));
    let a = h.add(prompt(0, 5), 6);
    let b = h.add(prompt(100, 5), 6);
    h.step();
    h.check();
    let mut preempted = false;
    let mut resumed_start = None;
    for _ in 0..40 {
        if h.s.num_seqs() == 0 {
            break;
        }
        let plan = h.step();
        h.check();
        if plan.preempted.contains(&b) {
            preempted = true;
        }
        if preempted && resumed_start.is_none() {
            if let Some(p) = plan.seqs.iter().find(|p| p.seq == b) {
                resumed_start = Some(p.start);
            }
        }
    }
    assert!(preempted, "the newest sequence was preempted");
    assert!(h.s.stats().preemptions >= 1);
    assert!(!h.s.contains(a) && !h.s.contains(b));
    assert!(
        resumed_start.unwrap() > 0,
        "resumption reused cached blocks"
    );
    assert_eq!(h.s.pool().num_in_use(), 0);
}

#[test]
fn sequence_that_cannot_fit_alone_is_reported() {
    let mut s = sched(2, 4, 64);
    let id = s.add(prompt(0, 7), Vec::new()).unwrap();
    let plan = s.schedule();
    s.complete(&plan);
    s.append_token(id, 1);
    s.append_token(id, 2); // 9 tokens need 3 blocks
    let plan = s.schedule();
    s.complete(&plan);
    let plan = s.schedule();
    assert_eq!(plan.out_of_blocks, vec![id]);
    s.finish(id);
    assert_eq!(s.pool().num_in_use(), 0);
}

#[test]
fn bad_inputs_are_errors() {
    let mut s = sched(2, 4, 64);
    assert_eq!(
        s.add(Vec::new(), Vec::new()),
        Err(SchedulerError::EmptyPrompt)
    );
    assert!(matches!(
        s.add(prompt(0, 8), Vec::new()),
        Err(SchedulerError::TooLong { .. })
    ));
    let bad = SchedulerConfig {
        block_size: 0,
        ..Default::default()
    };
    assert!(Scheduler::new(bad).is_err());
    let bad = SchedulerConfig {
        max_num_batched_tokens: 0,
        ..Default::default()
    };
    assert!(Scheduler::new(bad).is_err());
}

#[test]
fn chunked_prefill_shares_the_budget_with_decodes() {
    let mut h = Harness::new(sched(64, 4, 16));
    let a = h.add(prompt(0, 3), 10);
    h.step();
    let b = h.add(prompt(100, 40), 1);
    let plan = h.step();
    assert_eq!(
        plan.seqs[0],
        ScheduledSeq {
            seq: a,
            start: 3,
            len: 1,
            sample: true
        }
    );
    assert_eq!(
        plan.seqs[1],
        ScheduledSeq {
            seq: b,
            start: 0,
            len: 15,
            sample: false
        }
    );
    let plan = h.step();
    assert_eq!(
        plan.seqs[1],
        ScheduledSeq {
            seq: b,
            start: 15,
            len: 15,
            sample: false
        }
    );
    let plan = h.step();
    assert_eq!(
        plan.seqs[1],
        ScheduledSeq {
            seq: b,
            start: 30,
            len: 10,
            sample: true
        }
    );
    h.check();
    h.run_to_end(20);
}

#[test]
fn waiting_queue_is_served_in_order() {
    // Pool fits one long prompt at a time; the short one behind it must not overtake.
    let mut h = Harness::new(sched(4, 4, 64));
    let a = h.add(prompt(0, 12), 3);
    let b = h.add(prompt(100, 12), 3);
    let c = h.add(prompt(200, 2), 1);
    let plan = h.step();
    assert_eq!(plan.seqs.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![a]);
    assert!(h.s.contains(b) && h.s.contains(c));
    h.run_to_end(50);
}

#[test]
fn cancel_frees_blocks_at_once() {
    let mut h = Harness::new(sched(8, 4, 64));
    let a = h.add(prompt(0, 10), 100);
    h.step();
    assert!(h.s.pool().num_in_use() > 0);
    assert!(h.s.finish(a));
    assert_eq!(h.s.pool().num_in_use(), 0);
    assert!(!h.s.finish(a));
    h.check();
}

#[test]
fn load_snapshot_counts_queues_and_blocks() {
    let mut h = Harness::new(sched(8, 4, 64));
    h.add(prompt(0, 5), 10);
    h.step();
    h.add(prompt(50, 5), 10);
    let l = h.s.load();
    assert_eq!((l.running, l.waiting, l.total_blocks), (1, 1, 8));
    assert_eq!(l.blocks_in_use, 2);
}

#[derive(Clone, Debug)]
enum Op {
    Add {
        family: u32,
        prefix_blocks: usize,
        suffix: usize,
        max_gen: usize,
    },
    Step,
    Finish(usize),
    Preempt(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u32..3, 0usize..4, 1usize..7, 1usize..6).prop_map(|(family, prefix_blocks, suffix, max_gen)| Op::Add {
            family,
            prefix_blocks,
            suffix,
            max_gen
        }),
        6 => Just(Op::Step),
        1 => any::<usize>().prop_map(Op::Finish),
        1 => any::<usize>().prop_map(Op::Preempt),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn pool_invariants_hold_under_random_interleavings(ops in proptest::collection::vec(op(), 1..120), budget in 3usize..20, window in proptest::option::of(1usize..10)) {
        let bs = 4;
        let mut s = sched(12, bs, budget);
        s.set_sliding_window(window);
        let mut h = Harness::new(s);
        let mut live: Vec<SeqId> = Vec::new();
        let mut salt = 0u32;
        for op in ops {
            match op {
                Op::Add { family, prefix_blocks, suffix, max_gen } => {
                    salt += 1;
                    let mut p = prompt(family * 1000, prefix_blocks * bs);
                    p.extend((0..suffix as u32).map(|i| 50_000 + salt * 10 + i));
                    if let Ok(id) = h.s.add(p, Vec::new()) {
                        h.max_gen.insert(id, max_gen);
                        live.push(id);
                    }
                }
                Op::Step => { h.step(); }
                Op::Finish(i) => {
                    live.retain(|id| h.s.contains(*id));
                    if !live.is_empty() {
                        let id = live[i % live.len()];
                        h.s.finish(id);
                    }
                }
                Op::Preempt(i) => {
                    live.retain(|id| h.s.contains(*id));
                    if !live.is_empty() {
                        h.s.preempt(live[i % live.len()]);
                    }
                }
            }
            h.replay();
            h.check();
        }
        h.run_to_end(500);
        prop_assert_eq!(h.s.pool().num_in_use(), 0);
    }
}

/// Two requests with the same 4-block prefix arriving together: the second waits
/// one step and takes the blocks the first computed from the cache.
#[test]
fn same_prefix_admitted_together_computes_the_shared_blocks_once() {
    let mut s = sched(64, 4, 1024);
    let shared: Vec<TokenId> = (0..16).collect();
    let a = s
        .add([shared.clone(), vec![100, 101]].concat(), Vec::new())
        .unwrap();
    let b = s
        .add([shared.clone(), vec![200, 201]].concat(), Vec::new())
        .unwrap();
    let plan = s.schedule();
    assert_eq!(plan.seqs.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![a]);
    s.complete(&plan);
    s.append_token(a, 7);
    let plan = s.schedule();
    let pb = plan.seqs.iter().find(|p| p.seq == b).expect("b admitted");
    assert_eq!(pb.start, 16, "b starts after the shared blocks");
    assert_eq!(s.cached_tokens(b), Some(16));
    // Computed once: 18 prompt tokens for a, 2 for b, and a's decode token.
    assert_eq!(plan.num_tokens(), 3);
}

/// A request whose blocks are not in flight is admitted behind a deferred one.
#[test]
fn a_request_whose_blocks_are_not_in_flight_is_never_held_back() {
    let mut s = sched(64, 4, 1024);
    let shared: Vec<TokenId> = (0..16).collect();
    let a = s
        .add([shared.clone(), vec![1]].concat(), Vec::new())
        .unwrap();
    let b = s
        .add([shared.clone(), vec![2]].concat(), Vec::new())
        .unwrap();
    let c = s.add((500..520).collect(), Vec::new()).unwrap();
    let plan = s.schedule();
    let ids: Vec<SeqId> = plan.seqs.iter().map(|p| p.seq).collect();
    assert_eq!(ids, vec![a, c], "b waits, c overtakes it");
    assert!(!ids.contains(&b));
}

/// The wait is bounded: blocks that stay in flight do not starve a request.
#[test]
fn waiting_for_blocks_in_flight_is_bounded() {
    // A prefill chunked at 4 tokens a step keeps the shared blocks in flight.
    let mut s = sched(256, 4, 8);
    let shared: Vec<TokenId> = (0..400).collect();
    s.add([shared.clone(), vec![1]].concat(), Vec::new())
        .unwrap();
    let b = s.add([shared, vec![2]].concat(), Vec::new()).unwrap();
    let mut admitted_at = None;
    for step in 0..200 {
        let plan = s.schedule();
        if plan.seqs.iter().any(|p| p.seq == b) {
            admitted_at = Some(step);
            break;
        }
        s.complete(&plan);
    }
    let at = admitted_at.expect("b admitted");
    assert!(at <= MAX_DEFERRED_STEPS, "admitted at step {at}");
}
