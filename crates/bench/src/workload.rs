//! Token-exact, seeded benchmark workloads.
//!
//! A [`Workload`] is a fixed set of distinct prompts (token ids, so lengths are exact
//! whatever the server's tokenizer) plus the order in which a benchmark sends them:
//!
//! - `shared-prefix`: G groups × U users; prompt = the group's shared context + the
//!   user's own tokens. Requests cycle through all G·U prompts in a fresh seeded
//!   shuffle per pass, so every prompt recurs once per pass (the llm-d benchmark's
//!   "resident set" is exactly these G·U prompts).
//! - `generated-shared-prefix`: the same structure with SGLang's defaults.
//! - `multi-turn`: C conversations of T turns; turn k resends turns 0..k (user
//!   message + a synthetic assistant reply of the output length) and a new user
//!   message. Requests go turn by turn over all conversations, so a conversation's
//!   next turn comes C requests after its previous one.
//! - `random`: independent prompts with lengths drawn uniformly in
//!   `len·[1 − range, 1 + range]`, like `vllm bench serve --random-range-ratio`.

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reprise_protocol::TokenId;
use std::sync::Arc;

/// One distinct prompt of a workload.
#[derive(Clone, Debug)]
pub struct Prompt {
    /// Prompt token ids.
    pub tokens: Arc<[TokenId]>,
    /// Tokens to generate (sent as `max_tokens` with `ignore_eos`).
    pub max_tokens: usize,
    /// Sharing group (shared-prefix group, conversation, or the prompt itself).
    pub group: usize,
    /// Tokens the simulator "generates" so that a later turn that resends this reply
    /// hits the cache as it would on a real server (multi-turn only).
    pub reply: Option<Arc<[TokenId]>>,
}

/// Which generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// G groups × U users sharing a per-group context (llm-d's benchmark).
    SharedPrefix,
    /// SGLang's generated-shared-prefix defaults (64 × 16, 2,048 + 128 in, 256 out).
    GeneratedSharedPrefix,
    /// Conversations whose every turn resends the history.
    MultiTurn,
    /// Independent random prompts.
    Random,
}

/// Workload options shared by `bench sim`, `bench run` and `bench compare`.
/// Unset values take the workload's defaults (see `--help` of each).
#[derive(Clone, Debug, Args)]
pub struct WorkloadArgs {
    /// Workload generator.
    #[arg(long, value_enum, default_value = "shared-prefix")]
    pub workload: WorkloadKind,
    /// Groups (shared-prefix; default 150, generated-shared-prefix 64) or conversations
    /// (multi-turn; default 32).
    #[arg(long)]
    pub groups: Option<usize>,
    /// Prompts per group (default 5; generated-shared-prefix 16).
    #[arg(long)]
    pub users: Option<usize>,
    /// Shared context tokens per group (default 6000; generated-shared-prefix 2048).
    #[arg(long)]
    pub shared_len: Option<usize>,
    /// Unique tokens per prompt, or per user message in multi-turn, or the mean prompt
    /// length of random (default 1200; gsp 128; multi-turn 256; random 1024).
    #[arg(long)]
    pub unique_len: Option<usize>,
    /// Output tokens per request (default 1000; gsp 256; multi-turn 128; random 128).
    #[arg(long)]
    pub output_len: Option<usize>,
    /// Turns per conversation (multi-turn).
    #[arg(long, default_value_t = 5)]
    pub turns: usize,
    /// Number of distinct prompts (random). Not `--num-prompts`: that is the number
    /// of requests a live run sends, as in `vllm bench serve`.
    #[arg(
        long = "random-prompts",
        id = "random_prompts",
        value_name = "N",
        default_value_t = 1000
    )]
    pub num_prompts: usize,
    /// Relative spread of random lengths, in [0, 1).
    #[arg(long, default_value_t = 0.0)]
    pub range_ratio: f64,
    /// Token ids are drawn from `[1000, vocab_size)` (1000 keeps clear of special tokens).
    #[arg(long, default_value_t = 32000)]
    pub vocab_size: u32,
    /// Seed of the prompt contents and of the request order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl Default for WorkloadArgs {
    fn default() -> Self {
        Self {
            workload: WorkloadKind::SharedPrefix,
            groups: None,
            users: None,
            shared_len: None,
            unique_len: None,
            output_len: None,
            turns: 5,
            num_prompts: 1000,
            range_ratio: 0.0,
            vocab_size: 32000,
            seed: 0,
        }
    }
}

/// Lowest token id a generator emits.
pub const MIN_TOKEN: TokenId = 1000;

/// A set of prompts and the order a benchmark sends them in.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Generator that made it.
    pub kind: WorkloadKind,
    /// Human-readable parameters, for reports.
    pub description: String,
    /// The distinct prompts.
    pub prompts: Vec<Prompt>,
    seed: u64,
}

fn tokens(rng: &mut StdRng, n: usize, vocab: u32) -> Vec<TokenId> {
    (0..n).map(|_| rng.random_range(MIN_TOKEN..vocab)).collect()
}

impl Workload {
    /// Build the workload the arguments describe.
    pub fn build(a: &WorkloadArgs) -> Result<Self> {
        if a.vocab_size <= MIN_TOKEN + 1 {
            bail!("--vocab-size must be above {}", MIN_TOKEN + 1);
        }
        if !(0.0..1.0).contains(&a.range_ratio) {
            bail!("--range-ratio must be in [0, 1), got {}", a.range_ratio);
        }
        let mut rng = StdRng::seed_from_u64(a.seed);
        let v = a.vocab_size;
        let (kind, description, prompts) = match a.workload {
            WorkloadKind::SharedPrefix | WorkloadKind::GeneratedSharedPrefix => {
                let gsp = a.workload == WorkloadKind::GeneratedSharedPrefix;
                let g = a.groups.unwrap_or(if gsp { 64 } else { 150 });
                let u = a.users.unwrap_or(if gsp { 16 } else { 5 });
                let s = a.shared_len.unwrap_or(if gsp { 2048 } else { 6000 });
                let q = a.unique_len.unwrap_or(if gsp { 128 } else { 1200 });
                let o = a.output_len.unwrap_or(if gsp { 256 } else { 1000 });
                if g == 0 || u == 0 || s + q == 0 || o == 0 {
                    bail!("shared-prefix needs groups, users, output and prompt length > 0");
                }
                let mut prompts = Vec::with_capacity(g * u);
                for group in 0..g {
                    let shared = tokens(&mut rng, s, v);
                    for _ in 0..u {
                        let mut p = shared.clone();
                        p.extend(tokens(&mut rng, q, v));
                        prompts.push(Prompt {
                            tokens: p.into(),
                            max_tokens: o,
                            group,
                            reply: None,
                        });
                    }
                }
                let d =
                    format!("{g} groups x {u} users, {s} shared + {q} unique tokens in, {o} out");
                (a.workload, d, prompts)
            }
            WorkloadKind::MultiTurn => {
                let c = a.groups.unwrap_or(32);
                let t = a.turns;
                let q = a.unique_len.unwrap_or(256);
                let s = a.shared_len.unwrap_or(0);
                let o = a.output_len.unwrap_or(128);
                if c == 0 || t == 0 || q == 0 || o == 0 {
                    bail!("multi-turn needs conversations, turns, message and output length > 0");
                }
                // Turn-major order: all conversations' turn 0, then turn 1, …
                let mut convs: Vec<Vec<TokenId>> = (0..c).map(|_| tokens(&mut rng, s, v)).collect();
                let mut prompts = Vec::with_capacity(c * t);
                for _turn in 0..t {
                    for (group, history) in convs.iter_mut().enumerate() {
                        history.extend(tokens(&mut rng, q, v));
                        let reply: Arc<[TokenId]> = tokens(&mut rng, o, v).into();
                        prompts.push(Prompt {
                            tokens: history.clone().into(),
                            max_tokens: o,
                            group,
                            reply: Some(reply.clone()),
                        });
                        history.extend_from_slice(&reply);
                    }
                }
                let d =
                    format!("{c} conversations x {t} turns, {s} system + {q} per message, {o} out");
                (a.workload, d, prompts)
            }
            WorkloadKind::Random => {
                let n = a.num_prompts;
                let len = a.unique_len.unwrap_or(1024);
                let o = a.output_len.unwrap_or(128);
                if n == 0 || len == 0 || o == 0 {
                    bail!("random needs prompts, prompt and output length > 0");
                }
                let draw = |rng: &mut StdRng, m: usize| -> usize {
                    let lo = ((m as f64) * (1.0 - a.range_ratio)).round().max(1.0) as usize;
                    let hi = ((m as f64) * (1.0 + a.range_ratio)).round().max(lo as f64) as usize;
                    rng.random_range(lo..=hi)
                };
                let prompts = (0..n)
                    .map(|i| {
                        let pl = draw(&mut rng, len);
                        let ol = draw(&mut rng, o);
                        Prompt {
                            tokens: tokens(&mut rng, pl, v).into(),
                            max_tokens: ol,
                            group: i,
                            reply: None,
                        }
                    })
                    .collect();
                let d = format!(
                    "{n} random prompts, {len} in, {o} out, range ratio {}",
                    a.range_ratio
                );
                (a.workload, d, prompts)
            }
        };
        Ok(Self {
            kind,
            description,
            prompts,
            seed: a.seed,
        })
    }

    /// Indices into [`Self::prompts`] of the first `n` requests of pass sequence
    /// `stream` (different streams — e.g. warm-up and measurement — get different
    /// shuffles of the same prompts).
    pub fn order(&self, n: usize, stream: u64) -> Vec<usize> {
        let m = self.prompts.len();
        let mut out = Vec::with_capacity(n);
        if m == 0 {
            return out;
        }
        match self.kind {
            // Conversations must be replayed in turn order.
            WorkloadKind::MultiTurn => out.extend((0..n).map(|i| i % m)),
            _ => {
                let mut rng = StdRng::seed_from_u64(self.seed ^ 0x9e37_79b9_7f4a_7c15 ^ stream);
                let mut pass: Vec<usize> = (0..m).collect();
                while out.len() < n {
                    pass.shuffle(&mut rng);
                    out.extend(pass.iter().take(n - out.len()));
                }
            }
        }
        out
    }

    /// Number of sharing groups (shared-prefix groups, conversations, or prompts).
    pub fn groups(&self) -> usize {
        let mut g: Vec<usize> = self.prompts.iter().map(|p| p.group).collect();
        g.sort_unstable();
        g.dedup();
        g.len()
    }

    /// Tokens held by the distinct prompts with shared prefixes counted once (the
    /// "resident set" the cluster's caches would need to hold them all).
    pub fn resident_tokens(&self, block_size: usize) -> usize {
        let hasher = match reprise_protocol::BlockHasher::new(block_size, Default::default()) {
            Ok(h) => h,
            Err(_) => return 0,
        };
        let mut seen = std::collections::HashSet::new();
        for p in &self.prompts {
            for k in hasher.prompt_keys(&p.tokens, b"") {
                seen.insert(k);
            }
        }
        seen.len() * block_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kind: WorkloadKind) -> WorkloadArgs {
        WorkloadArgs {
            workload: kind,
            ..Default::default()
        }
    }

    #[test]
    fn shared_prefix_llm_d_shape_is_exact() {
        let w = Workload::build(&args(WorkloadKind::SharedPrefix)).unwrap();
        assert_eq!(w.prompts.len(), 750);
        for (i, p) in w.prompts.iter().enumerate() {
            assert_eq!(p.tokens.len(), 7200);
            assert_eq!(p.max_tokens, 1000);
            assert_eq!(p.group, i / 5);
            assert!(p.tokens.iter().all(|&t| (MIN_TOKEN..32000).contains(&t)));
        }
        // Same group: identical first 6,000 tokens, different rest.
        let (a, b) = (&w.prompts[5].tokens, &w.prompts[6].tokens);
        assert_eq!(a[..6000], b[..6000]);
        assert_ne!(a[6000..], b[6000..]);
        // Different groups differ from the first token block on.
        assert_ne!(w.prompts[0].tokens[..64], w.prompts[5].tokens[..64]);
        // 150·6000 + 750·1200 tokens, in whole 64-token blocks (6000 is not a multiple
        // of 64, so the block straddling the boundary is per user).
        let resident = w.resident_tokens(64);
        assert!(
            (1_800_000..1_800_000 + 750 * 64 + 150 * 64).contains(&resident),
            "{resident}"
        );
    }

    #[test]
    fn gsp_defaults_match_sglang() {
        let w = Workload::build(&args(WorkloadKind::GeneratedSharedPrefix)).unwrap();
        assert_eq!(w.prompts.len(), 64 * 16);
        assert!(w
            .prompts
            .iter()
            .all(|p| p.tokens.len() == 2048 + 128 && p.max_tokens == 256));
        assert_eq!(w.prompts[0].tokens[..2048], w.prompts[15].tokens[..2048]);
        assert_ne!(w.prompts[0].tokens[..2048], w.prompts[16].tokens[..2048]);
    }

    #[test]
    fn seeds_are_reproducible_and_distinct() {
        let mut a = args(WorkloadKind::Random);
        a.num_prompts = 20;
        a.range_ratio = 0.5;
        let w1 = Workload::build(&a).unwrap();
        let w2 = Workload::build(&a).unwrap();
        assert!(w1
            .prompts
            .iter()
            .zip(&w2.prompts)
            .all(|(x, y)| x.tokens == y.tokens));
        assert_eq!(w1.order(50, 1), w2.order(50, 1));
        assert_ne!(w1.order(50, 1), w1.order(50, 2));
        a.seed = 1;
        let w3 = Workload::build(&a).unwrap();
        assert_ne!(w1.prompts[0].tokens, w3.prompts[0].tokens);
        for p in &w1.prompts {
            assert!((512..=1536).contains(&p.tokens.len()));
            assert!((64..=192).contains(&p.max_tokens));
        }
    }

    #[test]
    fn order_cycles_through_every_prompt_once_per_pass() {
        let mut a = args(WorkloadKind::SharedPrefix);
        a.groups = Some(3);
        a.users = Some(4);
        let w = Workload::build(&a).unwrap();
        let o = w.order(30, 0);
        assert_eq!(o.len(), 30);
        for pass in o.chunks(12).filter(|c| c.len() == 12) {
            let mut p = pass.to_vec();
            p.sort_unstable();
            assert_eq!(p, (0..12).collect::<Vec<_>>());
        }
    }

    #[test]
    fn multi_turn_resends_the_conversation() {
        let mut a = args(WorkloadKind::MultiTurn);
        a.groups = Some(3);
        a.turns = 3;
        a.unique_len = Some(10);
        a.output_len = Some(4);
        a.shared_len = Some(6);
        let w = Workload::build(&a).unwrap();
        assert_eq!(w.prompts.len(), 9);
        assert_eq!(w.order(9, 0), (0..9).collect::<Vec<_>>());
        for c in 0..3 {
            let turns: Vec<&Prompt> = (0..3).map(|t| &w.prompts[t * 3 + c]).collect();
            for (t, p) in turns.iter().enumerate() {
                assert_eq!(p.group, c);
                assert_eq!(p.tokens.len(), 6 + (t + 1) * 10 + t * 4);
            }
            for t in 1..3 {
                let prev = turns[t - 1];
                let cur = &turns[t].tokens;
                assert_eq!(cur[..prev.tokens.len()], prev.tokens[..]);
                let reply = prev.reply.as_ref().unwrap();
                assert_eq!(cur[prev.tokens.len()..prev.tokens.len() + 4], reply[..]);
            }
        }
    }

    #[test]
    fn shared_prefix_custom_shape_is_token_exact_and_seeded() {
        let mut a = args(WorkloadKind::SharedPrefix);
        a.groups = Some(4);
        a.users = Some(3);
        a.shared_len = Some(100);
        a.unique_len = Some(28);
        a.output_len = Some(7);
        a.seed = 42;
        let w = Workload::build(&a).unwrap();
        assert_eq!(w.prompts.len(), 12);
        for (i, p) in w.prompts.iter().enumerate() {
            assert_eq!(p.tokens.len(), 128, "prompt {i}");
            assert_eq!(p.max_tokens, 7);
            assert_eq!(p.group, i / 3);
        }
        // Within a group exactly the first 100 tokens are shared; across groups none
        // of the first block is (ids are drawn from 31,000 values).
        for g in 0..4 {
            let first = &w.prompts[g * 3].tokens;
            for u in 1..3 {
                let other = &w.prompts[g * 3 + u].tokens;
                assert_eq!(first[..100], other[..100]);
                assert_ne!(first[100..], other[100..]);
            }
            if g > 0 {
                assert_ne!(first[..4], w.prompts[0].tokens[..4]);
            }
        }
        // 100 is a multiple of the block size 4: the resident set is exactly 4
        // shared contexts plus 12 unique tails.
        assert_eq!(w.resident_tokens(4), 4 * 100 + 12 * 28);
        assert_eq!(w.groups(), 4);
        // Same seed: same prompts and the same request order; another seed: both change.
        let again = Workload::build(&a).unwrap();
        assert!(w
            .prompts
            .iter()
            .zip(&again.prompts)
            .all(|(x, y)| x.tokens == y.tokens));
        assert_eq!(w.order(40, 0), again.order(40, 0));
        a.seed = 43;
        let other = Workload::build(&a).unwrap();
        assert_ne!(w.prompts[0].tokens, other.prompts[0].tokens);
        assert_ne!(w.order(40, 0), other.order(40, 0));
    }

    #[test]
    fn random_without_range_is_exact_and_unshared() {
        let mut a = args(WorkloadKind::Random);
        a.num_prompts = 10;
        a.unique_len = Some(33);
        a.output_len = Some(5);
        let w = Workload::build(&a).unwrap();
        assert!(w
            .prompts
            .iter()
            .all(|p| p.tokens.len() == 33 && p.max_tokens == 5));
        // Independent prompts: every full 16-token block is distinct (2 per prompt).
        assert_eq!(w.resident_tokens(16), 10 * 2 * 16);
        let groups: Vec<usize> = w.prompts.iter().map(|p| p.group).collect();
        assert_eq!(groups, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn bad_arguments_are_errors() {
        let mut a = args(WorkloadKind::Random);
        a.range_ratio = 1.0;
        assert!(Workload::build(&a).is_err());
        let mut a = args(WorkloadKind::SharedPrefix);
        a.groups = Some(0);
        assert!(Workload::build(&a).is_err());
    }
}
