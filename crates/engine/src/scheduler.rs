//! Continuous-batching scheduler over the block pool (vLLM v1's shape).
//!
//! Every step: running sequences first, oldest first, each gets its next
//! decode token or prefill chunk under the shared token budget
//! (`max_num_batched_tokens`); when blocks run out the newest running sequence
//! is preempted (its blocks are released, keeping their keys, and it is
//! recomputed later, mostly from its own cached blocks). Then, if nothing was
//! preempted, waiting sequences are admitted strictly in order (no skipping
//! ahead, so none starves), each starting from its longest cached prefix.

use crate::kv::{BlockId, BlockPool, KvCacheManager};
use reprise_protocol::{BlockHasher, BlockKey, HashAlgo, KvEvent, TokenId, WorkerLoad};
use std::collections::{HashMap, HashSet, VecDeque};

/// Most steps a waiting sequence is left for blocks a running one is computing
/// (a bound, so a long chunked prefill cannot starve it).
pub const MAX_DEFERRED_STEPS: usize = 64;

/// Identity of a sequence inside one scheduler.
pub use crate::kv::manager::SeqId;

/// One sequence's share of a step, as the executor computes it.
#[derive(Clone, Copy, Debug)]
pub struct StepInput<'a> {
    /// The sequence.
    pub seq: SeqId,
    /// Tokens to compute this step, at positions `start_pos..start_pos + tokens.len()`.
    pub tokens: &'a [TokenId],
    /// Position of `tokens[0]`; K/V of every earlier position is already in the blocks.
    pub start_pos: usize,
    /// Physical blocks covering positions `0..start_pos + tokens.len()`.
    pub block_table: &'a [BlockId],
    /// Whether a next token must be sampled after the last of `tokens`.
    pub sample: bool,
}

/// Scheduler and block pool settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// KV blocks in the pool.
    pub num_blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Token budget of one step, decodes and prefill chunks together.
    pub max_num_batched_tokens: usize,
    /// Most sequences in the running batch.
    pub max_num_seqs: usize,
    /// Hash for block keys (must match the router's).
    pub hash_algo: HashAlgo,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            num_blocks: 1024,
            block_size: 16,
            max_num_batched_tokens: 2048,
            max_num_seqs: 256,
            hash_algo: HashAlgo::Xxh3,
        }
    }
}

/// Errors from the scheduler.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchedulerError {
    /// A configuration value is out of range.
    #[error("invalid scheduler config: {0}")]
    Config(String),
    /// The prompt is empty.
    #[error("prompt is empty")]
    EmptyPrompt,
    /// The prompt needs more blocks than the whole pool holds.
    #[error("prompt of {tokens} tokens needs {needed} KV blocks but the pool has {available}")]
    TooLong {
        /// Prompt length.
        tokens: usize,
        /// Blocks it needs.
        needed: usize,
        /// Blocks in the pool.
        available: usize,
    },
}

impl SchedulerConfig {
    /// Check every value; the one place config is validated.
    pub fn validate(&self) -> Result<(), SchedulerError> {
        let bad = |m: &str| Err(SchedulerError::Config(m.to_string()));
        if self.block_size == 0 {
            return bad("block_size must be > 0");
        }
        if self.num_blocks == 0 {
            return bad("num_blocks must be > 0");
        }
        if self.num_blocks >= u32::MAX as usize {
            return bad("num_blocks must be < 2^32 - 1");
        }
        if self.max_num_batched_tokens == 0 {
            return bad("max_num_batched_tokens must be > 0");
        }
        if self.max_num_seqs == 0 {
            return bad("max_num_seqs must be > 0");
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Sequence {
    tokens: Vec<TokenId>,
    prompt_len: usize,
    /// Tokens whose K/V is in the blocks.
    num_computed: usize,
    /// Prompt tokens served from the prefix cache at first admission.
    cached_tokens: Option<usize>,
    running: bool,
    /// Steps this sequence was left waiting for blocks another one was computing.
    deferred: usize,
}

/// One sequence's work in a step: `len` tokens from position `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduledSeq {
    /// The sequence.
    pub seq: SeqId,
    /// First position computed.
    pub start: usize,
    /// Number of tokens computed.
    pub len: usize,
    /// Whether a token is sampled after this step (the sequence is fully computed).
    pub sample: bool,
}

/// The outcome of [`Scheduler::schedule`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepPlan {
    /// Work for this step, running sequences first.
    pub seqs: Vec<ScheduledSeq>,
    /// Sequences preempted (blocks released, to be recomputed) while planning.
    pub preempted: Vec<SeqId>,
    /// Sequences that cannot fit in the pool even alone; the caller must end them.
    pub out_of_blocks: Vec<SeqId>,
}

impl StepPlan {
    /// Tokens computed in this step.
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.len).sum()
    }
}

/// Running totals, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Prompt tokens looked up in the prefix cache (at every admission).
    pub prefix_query_tokens: u64,
    /// Of those, tokens found cached.
    pub prefix_hit_tokens: u64,
    /// Preemptions so far.
    pub preemptions: u64,
}

/// Continuous-batching scheduler owning one worker's KV cache.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    kv: KvCacheManager,
    seqs: HashMap<SeqId, Sequence>,
    /// Admission order, oldest first; preemption takes from the back.
    running: Vec<SeqId>,
    waiting: VecDeque<SeqId>,
    next_id: SeqId,
    stats: SchedulerStats,
}

fn blocks_for(tokens: usize, block_size: usize) -> usize {
    tokens.div_ceil(block_size)
}

impl Scheduler {
    /// A scheduler with an empty pool.
    pub fn new(cfg: SchedulerConfig) -> Result<Self, SchedulerError> {
        cfg.validate()?;
        let kv = KvCacheManager::new(cfg.num_blocks, cfg.block_size, cfg.hash_algo)
            .map_err(|e| SchedulerError::Config(e.to_string()))?;
        Ok(Self {
            kv,
            cfg,
            seqs: HashMap::new(),
            running: Vec::new(),
            waiting: VecDeque::new(),
            next_id: 0,
            stats: SchedulerStats::default(),
        })
    }

    /// Gives back each sequence's blocks that slid out of a window of `w` keys (a
    /// model whose every layer slides; see [`KvCacheManager::free_slid_out`]).
    pub fn set_sliding_window(&mut self, w: Option<usize>) {
        self.kv.set_sliding_window(w);
    }

    /// The window set by [`Self::set_sliding_window`].
    pub fn sliding_window(&self) -> Option<usize> {
        self.kv.sliding_window()
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// The block pool (read-only: the scheduler alone changes it, through its KV
    /// cache manager).
    pub fn pool(&self) -> &BlockPool {
        self.kv.pool()
    }

    /// The hasher shared with the router.
    pub fn hasher(&self) -> BlockHasher {
        self.kv.hasher()
    }

    /// Running totals.
    pub fn stats(&self) -> SchedulerStats {
        self.stats
    }

    /// Queue a new sequence; `extra` is mixed into its block keys (cache salt).
    pub fn add(&mut self, prompt: Vec<TokenId>, extra: Vec<u8>) -> Result<SeqId, SchedulerError> {
        if prompt.is_empty() {
            return Err(SchedulerError::EmptyPrompt);
        }
        // The prompt plus the first sampled token must fit in the pool at once; with a
        // sliding window, only the window and one step's chunk (older blocks go back).
        let mut needed = blocks_for(prompt.len() + 1, self.cfg.block_size);
        if let Some(w) = self.kv.sliding_window() {
            let chunk = self.cfg.max_num_batched_tokens;
            needed = needed.min(blocks_for(w + chunk + 1, self.cfg.block_size) + 3);
        }
        if needed > self.cfg.num_blocks {
            return Err(SchedulerError::TooLong {
                tokens: prompt.len(),
                needed,
                available: self.cfg.num_blocks,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.kv.add(id, extra);
        self.seqs.insert(
            id,
            Sequence {
                prompt_len: prompt.len(),
                tokens: prompt,
                num_computed: 0,
                cached_tokens: None,
                deferred: 0,
                running: false,
            },
        );
        self.waiting.push_back(id);
        Ok(id)
    }

    /// Whether the sequence is live (waiting or running).
    pub fn contains(&self, id: SeqId) -> bool {
        self.seqs.contains_key(&id)
    }

    /// Number of live sequences.
    pub fn num_seqs(&self) -> usize {
        self.seqs.len()
    }

    /// Tokens of a live sequence (prompt then generated).
    pub fn tokens(&self, id: SeqId) -> Option<&[TokenId]> {
        self.seqs.get(&id).map(|s| s.tokens.as_slice())
    }

    /// Generated tokens of a live sequence.
    pub fn num_generated(&self, id: SeqId) -> Option<usize> {
        self.seqs.get(&id).map(|s| s.tokens.len() - s.prompt_len)
    }

    /// Prompt tokens served from the prefix cache when the sequence was first admitted.
    pub fn cached_tokens(&self, id: SeqId) -> Option<usize> {
        self.seqs.get(&id).and_then(|s| s.cached_tokens)
    }

    /// Block table of a live sequence.
    pub fn block_table(&self, id: SeqId) -> Option<&[BlockId]> {
        self.seqs.contains_key(&id).then(|| self.kv.block_table(id))
    }

    /// Load snapshot for the router.
    pub fn load(&self) -> WorkerLoad {
        WorkerLoad {
            running: self.running.len(),
            waiting: self.waiting.len(),
            blocks_in_use: self.kv.pool().num_in_use(),
            total_blocks: self.kv.pool().num_blocks(),
            prefill_tokens: self
                .running
                .iter()
                .filter_map(|id| self.seqs.get(id))
                .map(|s| s.prompt_len.saturating_sub(s.num_computed))
                .sum(),
        }
    }

    /// KV events since the last call.
    pub fn drain_events(&mut self) -> Vec<KvEvent> {
        self.kv.drain_events()
    }

    /// Plan the next step and reserve its blocks.
    pub fn schedule(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.cfg.max_num_batched_tokens;

        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let (computed, len) = {
                let s = &self.seqs[&id];
                (s.num_computed, s.tokens.len())
            };
            let n = (len - computed).min(budget);
            if n == 0 {
                i += 1;
                continue;
            }
            let need = self.kv.blocks_needed(id, computed + n);
            let mut scheduled = true;
            while self.kv.num_free() < need {
                let victim = *self.running.last().expect("running holds at least id");
                if victim == id {
                    // Nothing newer to take blocks from.
                    if self.running.len() == 1 {
                        plan.out_of_blocks.push(id);
                    } else {
                        self.preempt_running(id);
                        plan.preempted.push(id);
                    }
                    scheduled = false;
                    break;
                }
                self.preempt_running(victim);
                plan.preempted.push(victim);
            }
            if !scheduled {
                // `id` left `running` (or must be ended): the same index now holds the next one.
                if plan.out_of_blocks.last() == Some(&id) {
                    i += 1;
                }
                continue;
            }
            let grown = self.kv.allocate_slots(id, &[], computed + n);
            debug_assert!(grown, "free blocks were counted");
            plan.seqs.push(ScheduledSeq {
                seq: id,
                start: computed,
                len: n,
                sample: computed + n == len,
            });
            budget -= n;
            i += 1;
        }

        if plan.preempted.is_empty() {
            self.admit_waiting(&mut plan, budget);
        }
        plan
    }

    /// Keys of the full blocks running sequences have yet to compute and register.
    fn in_flight_keys(&self) -> HashSet<BlockKey> {
        let mut keys = HashSet::new();
        for id in &self.running {
            if let Some(s) = self.seqs.get(id) {
                keys.extend(self.kv.pending_keys(*id, s.tokens.len()).iter().copied());
            }
        }
        keys
    }

    /// Admits waiting sequences in order while blocks and budget last. A sequence
    /// whose next uncached block is being computed by a running one waits (up to
    /// [`MAX_DEFERRED_STEPS`]) and takes it from the cache once registered, instead
    /// of computing it a second time (SGLang does the same); sequences behind it
    /// whose blocks are not in flight are admitted meanwhile.
    fn admit_waiting(&mut self, plan: &mut StepPlan, mut budget: usize) {
        let bs = self.cfg.block_size;
        let mut in_flight: Option<HashSet<BlockKey>> = None;
        let mut idx = 0;
        while budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(&id) = self.waiting.get(idx) else {
                break;
            };
            let s = self.seqs.get_mut(&id).expect("waiting sequence exists");
            let len = s.tokens.len();
            let hits = self.kv.computed_blocks(id, &s.tokens);
            if let Some(next) = hits.next_key.filter(|_| s.deferred < MAX_DEFERRED_STEPS) {
                let flying = in_flight.get_or_insert_with(|| self.in_flight_keys());
                if flying.contains(&next) {
                    if let Some(s) = self.seqs.get_mut(&id) {
                        s.deferred += 1;
                    }
                    idx += 1;
                    continue;
                }
            }
            let hit_tokens = hits.blocks.len() * bs;
            let n = (len - hit_tokens).min(budget);
            if !self.kv.allocate_slots(id, &hits.blocks, hit_tokens + n) {
                // Strict order: the head waits for blocks rather than being overtaken.
                break;
            }
            let s = self.seqs.get_mut(&id).expect("waiting sequence exists");
            s.num_computed = hit_tokens;
            s.running = true;
            s.cached_tokens.get_or_insert(hit_tokens.min(s.prompt_len));
            self.stats.prefix_query_tokens += len as u64;
            self.stats.prefix_hit_tokens += hit_tokens as u64;
            s.deferred = 0;
            // The blocks it will compute are in flight for those behind it.
            if let Some(flying) = in_flight.as_mut() {
                flying.extend(self.kv.pending_keys(id, len).iter().copied());
            }
            self.waiting.remove(idx);
            self.running.push(id);
            plan.seqs.push(ScheduledSeq {
                seq: id,
                start: hit_tokens,
                len: n,
                sample: hit_tokens + n == len,
            });
            budget -= n;
        }
    }

    /// The executor's view of a plan: token slices and block tables.
    pub fn inputs<'a>(&'a self, plan: &StepPlan) -> Vec<StepInput<'a>> {
        plan.seqs
            .iter()
            .filter_map(|p| {
                let s = self.seqs.get(&p.seq)?;
                Some(StepInput {
                    seq: p.seq,
                    tokens: &s.tokens[p.start..p.start + p.len],
                    start_pos: p.start,
                    block_table: &self.kv.block_table(p.seq)
                        [..blocks_for(p.start + p.len, self.cfg.block_size)],
                    sample: p.sample,
                })
            })
            .collect()
    }

    /// Record that a planned step was computed: advance each sequence and
    /// register its newly full blocks in the prefix cache.
    pub fn complete(&mut self, plan: &StepPlan) {
        for p in &plan.seqs {
            let Some(s) = self.seqs.get_mut(&p.seq) else {
                continue; // ended between planning and completion
            };
            if !s.running || s.num_computed != p.start {
                continue;
            }
            s.num_computed = p.start + p.len;
            self.kv.cache_blocks(p.seq, &s.tokens, s.num_computed);
            self.kv.free_slid_out(p.seq, s.num_computed);
        }
    }

    /// Append a sampled token to a sequence (after [`Self::complete`]).
    pub fn append_token(&mut self, id: SeqId, token: TokenId) -> bool {
        match self.seqs.get_mut(&id) {
            Some(s) => {
                s.tokens.push(token);
                true
            }
            None => false,
        }
    }

    /// End a sequence (finished or cancelled) and release its blocks at once.
    pub fn finish(&mut self, id: SeqId) -> bool {
        let Some(s) = self.seqs.remove(&id) else {
            return false;
        };
        self.kv.free(id);
        if s.running {
            self.running.retain(|r| *r != id);
        } else {
            self.waiting.retain(|w| *w != id);
        }
        true
    }

    /// Preempt a running sequence by recomputation: release its blocks (they
    /// stay cached) and put it at the head of the waiting queue.
    pub fn preempt(&mut self, id: SeqId) -> bool {
        if !self.seqs.get(&id).is_some_and(|s| s.running) {
            return false;
        }
        self.preempt_running(id);
        true
    }

    fn preempt_running(&mut self, id: SeqId) {
        let s = self.seqs.get_mut(&id).expect("preempted sequence exists");
        s.num_computed = 0;
        s.running = false;
        self.kv.release(id);
        self.running.retain(|r| *r != id);
        self.waiting.push_front(id);
        self.stats.preemptions += 1;
    }

    /// Check every structural invariant of the scheduler and its pool; used by
    /// property tests and the simulator's self-checks.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (id, s) in &self.seqs {
            let table = self.kv.block_table(*id);
            if !s.running && !table.is_empty() {
                return Err(format!("waiting sequence {id} holds blocks"));
            }
            if s.running && table.len() < blocks_for(s.num_computed, self.cfg.block_size) {
                return Err(format!("sequence {id} computed past its block table"));
            }
        }
        self.kv.check_invariants()?;
        if self.running.len() + self.waiting.len() != self.seqs.len() {
            return Err("running + waiting != live sequences".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
