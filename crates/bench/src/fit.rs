//! `reprise bench fit`: a [`CostModel`] from a live run's per-request records
//! (requests.jsonl), by non-negative least squares.
//!
//! - Prefill, from TTFT: `ttft ≈ c + a·n + b·n·(C + n/2)` with `n` the uncached and
//!   `C` the cached prompt tokens, giving `prefill_token_s = a` and
//!   `prefill_attention_pair_s = b`. Fit it on an unloaded run (low rate): queueing
//!   inflates TTFT and the fit cannot tell it from compute.
//! - Decode, from TPOT: one step costs `o + Σ_seq (d + e·ctx)`; for request `i`,
//!   `tpot ≈ o + B_i·d + B_i·X_i·e` with `B_i` the mean number of requests decoding on
//!   its worker during its decode (from the records' overlaps, itself included) and
//!   `X_i` their mean context, giving `step_overhead_s = o`, `decode_seq_s = d`,
//!   `decode_context_token_s = e`.
//!
//! A coefficient the data drive negative is set to 0 and the rest refitted.

use super::stats::RequestRecord;
use anyhow::{bail, Context, Result};
use clap::Args;
use reprise_engine::executor::CostModel;
use std::path::PathBuf;

/// Options of `reprise bench fit`.
#[derive(Debug, Clone, Args)]
pub struct FitArgs {
    /// requests.jsonl of a live run (`bench run` / `bench compare`).
    #[arg(long)]
    pub from: PathBuf,
    /// Only records of this policy label.
    #[arg(long)]
    pub policy: Option<String>,
    /// Name written into the cost model.
    #[arg(long, default_value = "fitted from a live run")]
    pub name: String,
    /// Where to write the cost model JSON (default: stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Least squares `x` minimising |A x − y|² with x ≥ 0 (active set: drop the most
/// negative coefficient and refit). None when there are too few rows.
pub fn nnls(rows: &[Vec<f64>], y: &[f64]) -> Option<Vec<f64>> {
    let k = rows.first()?.len();
    let mut active: Vec<bool> = vec![true; k];
    loop {
        let idx: Vec<usize> = (0..k).filter(|&j| active[j]).collect();
        if idx.is_empty() {
            return Some(vec![0.0; k]);
        }
        let m = idx.len();
        // Normal equations over the active columns, scaled by column norms so that
        // columns in seconds and in millions of token pairs are equally conditioned.
        let norms: Vec<f64> = idx
            .iter()
            .map(|&j| {
                rows.iter()
                    .map(|r| r[j] * r[j])
                    .sum::<f64>()
                    .sqrt()
                    .max(1e-300)
            })
            .collect();
        let mut ata = vec![vec![0.0; m + 1]; m];
        for (r, &yv) in rows.iter().zip(y) {
            for p in 0..m {
                let xp = r[idx[p]] / norms[p];
                for q in 0..m {
                    ata[p][q] += xp * r[idx[q]] / norms[q];
                }
                ata[p][m] += xp * yv;
            }
        }
        let sol = solve(ata)?;
        let mut x = vec![0.0; k];
        for (p, &j) in idx.iter().enumerate() {
            x[j] = sol[p] / norms[p];
        }
        match (0..k)
            .filter(|&j| active[j] && x[j] < 0.0)
            .min_by(|&a, &b| x[a].total_cmp(&x[b]))
        {
            Some(j) => active[j] = false,
            None => return Some(x),
        }
    }
}

/// Gaussian elimination with partial pivoting on an augmented matrix.
fn solve(mut a: Vec<Vec<f64>>) -> Option<Vec<f64>> {
    let n = a.len();
    for c in 0..n {
        let p = (c..n).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))?;
        if a[p][c].abs() < 1e-12 {
            return None;
        }
        a.swap(c, p);
        let pivot = a[c].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != c {
                let f = row[c] / pivot[c];
                for (x, pv) in row[c..].iter_mut().zip(&pivot[c..]) {
                    *x -= f * pv;
                }
            }
        }
    }
    Some((0..n).map(|i| a[i][n] / a[i][i]).collect())
}

/// Fit a cost model from completed requests.
pub fn fit(records: &[RequestRecord], name: &str) -> Result<CostModel> {
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok()).collect();
    if ok.len() < 4 {
        bail!(
            "need at least 4 completed requests to fit, got {}",
            ok.len()
        );
    }
    // Prefill.
    let mut rows = Vec::new();
    let mut y = Vec::new();
    for r in &ok {
        let n = r.prompt_tokens.saturating_sub(r.cached_tokens) as f64;
        let c = r.cached_tokens as f64;
        rows.push(vec![1.0, n, n * (c + n / 2.0)]);
        y.push(r.ttft_s.unwrap_or(0.0));
    }
    let pre = nnls(&rows, &y).context("prefill fit is degenerate (vary the prompt lengths)")?;
    // Decode: each request's decode interval and context.
    let span = |r: &RequestRecord| (r.start_s + r.ttft_s.unwrap_or(0.0), r.start_s + r.e2el_s);
    let ctx = |r: &RequestRecord| r.prompt_tokens as f64 + r.output_tokens as f64 / 2.0;
    let mut rows = Vec::new();
    let mut y = Vec::new();
    for r in ok.iter().filter(|r| r.output_tokens > 1) {
        let (s, e) = span(r);
        let len = e - s;
        if len <= 0.0 {
            continue;
        }
        let (mut b, mut bx) = (0.0, 0.0);
        for o in ok.iter().filter(|o| o.worker == r.worker) {
            let (os, oe) = span(o);
            let overlap = (oe.min(e) - os.max(s)).max(0.0) / len;
            b += overlap;
            bx += overlap * ctx(o);
        }
        let b = b.max(1.0);
        rows.push(vec![1.0, b, bx.max(ctx(r))]);
        y.push(r.tpot_s().unwrap_or(0.0));
    }
    let dec = if rows.len() >= 3 {
        nnls(&rows, &y).unwrap_or_else(|| vec![y.iter().sum::<f64>() / y.len() as f64, 0.0, 0.0])
    } else {
        bail!("need at least 3 requests with more than one output token");
    };
    Ok(CostModel {
        name: name.to_string(),
        step_overhead_s: dec[0],
        prefill_token_s: pre[1],
        prefill_attention_pair_s: pre[2],
        decode_seq_s: dec[1],
        decode_context_token_s: dec[2],
    })
}

/// `reprise bench fit`.
pub fn run(a: &FitArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.from)
        .with_context(|| format!("cannot read {}", a.from.display()))?;
    let mut recs = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", a.from.display(), i + 1))?;
        if let Some(p) = &a.policy {
            if v.get("policy").and_then(|x| x.as_str()) != Some(p) {
                continue;
            }
        }
        recs.push(
            serde_json::from_value::<RequestRecord>(v)
                .with_context(|| format!("{}:{}: not a request record", a.from.display(), i + 1))?,
        );
    }
    let c = fit(&recs, &a.name)?;
    let json = serde_json::to_string_pretty(&c)?;
    match &a.out {
        Some(p) => {
            std::fs::write(p, json + "\n")
                .with_context(|| format!("cannot write {}", p.display()))?;
            eprintln!("fitted {} requests into {}", recs.len(), p.display());
        }
        None => println!("{json}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{simulate, ClusterConfig, Stage};
    use crate::stats::Slo;
    use crate::workload::{Workload, WorkloadArgs, WorkloadKind};
    use reprise_router::{PolicyKind, RouterConfig};

    #[test]
    fn nnls_recovers_exact_coefficients_and_clamps() {
        let rows: Vec<Vec<f64>> = (0..10)
            .map(|i| vec![1.0, i as f64, (i * i) as f64])
            .collect();
        let y: Vec<f64> = rows
            .iter()
            .map(|r| 0.5 + 2.0 * r[1] + 0.25 * r[2])
            .collect();
        let x = nnls(&rows, &y).unwrap();
        for (a, b) in x.iter().zip([0.5, 2.0, 0.25]) {
            assert!((a - b).abs() < 1e-9, "{x:?}");
        }
        // y decreasing in the last column: that coefficient is clamped to 0.
        let y: Vec<f64> = rows.iter().map(|r| 1.0 + r[1] - 0.01 * r[2]).collect();
        let x = nnls(&rows, &y).unwrap();
        assert_eq!(x[2], 0.0);
        assert!(x.iter().all(|v| *v >= 0.0));
    }

    #[test]
    fn fit_recovers_the_prefill_cost_of_a_simulated_run() {
        let truth = CostModel {
            name: "truth".into(),
            step_overhead_s: 0.02,
            prefill_token_s: 2e-4,
            prefill_attention_pair_s: 1e-8,
            decode_seq_s: 1e-3,
            decode_context_token_s: 1e-6,
        };
        let wl = Workload::build(&WorkloadArgs {
            workload: WorkloadKind::Random,
            num_prompts: 60,
            unique_len: Some(1500),
            output_len: Some(20),
            range_ratio: 0.9,
            ..Default::default()
        })
        .unwrap();
        let cfg = ClusterConfig {
            workers: 1,
            num_blocks: 1 << 14,
            block_size: 16,
            max_num_batched_tokens: 1 << 16,
            max_num_seqs: 64,
            cost: truth.clone(),
            event_delay_s: 0.0,
            router: RouterConfig::default(),
            ladder: Default::default(),
        };
        // Low rate: requests rarely overlap, so TTFT is pure prefill.
        let stages = [Stage {
            rate: 0.05,
            requests: 60,
            warmup: false,
            max_tokens: None,
        }];
        let r = simulate(
            &cfg,
            &wl,
            PolicyKind::Precise,
            &stages,
            5,
            &Slo::default(),
            &|_| {},
        )
        .unwrap();
        let c = fit(&r.stages[0].records, "fit").unwrap();
        assert!(
            (c.prefill_token_s / truth.prefill_token_s - 1.0).abs() < 0.1,
            "{c:?}"
        );
        assert!(
            (c.prefill_attention_pair_s / truth.prefill_attention_pair_s - 1.0).abs() < 0.25,
            "{c:?}"
        );
        // Decode alone: tpot = o + d + e·ctx per step.
        let alone = |ctx: f64| c.step_overhead_s + c.decode_seq_s + c.decode_context_token_s * ctx;
        let truth_alone = |ctx: f64| 0.02 + 1e-3 + 1e-6 * ctx;
        assert!(
            (alone(1500.0) / truth_alone(1500.0) - 1.0).abs() < 0.1,
            "{c:?}"
        );
    }
}
