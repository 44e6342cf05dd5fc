//! Scheduler and block-pool throughput with 1,000 running sequences.
//! `cargo bench -p reprise-engine --bench scheduler` (a report, not a timed test).

use reprise_engine::executor::{CostModel, CostModelExecutor, Executor};
use reprise_engine::kv::{BlockPool, BlockTable};
use reprise_engine::scheduler::{Scheduler, SchedulerConfig};
use std::hint::black_box;
use std::time::Instant;

fn main() {
    let seqs = 1000;
    let block_size = 16;
    let cfg = SchedulerConfig {
        num_blocks: 100_000,
        block_size,
        max_num_batched_tokens: 1 << 20,
        max_num_seqs: seqs,
        ..Default::default()
    };
    let mut s = Scheduler::new(cfg).expect("valid config");
    let cost = CostModel {
        name: "zero".into(),
        step_overhead_s: 0.0,
        prefill_token_s: 0.0,
        prefill_attention_pair_s: 0.0,
        decode_seq_s: 0.0,
        decode_context_token_s: 0.0,
    };
    let mut exec = CostModelExecutor::new(cost, 7);
    // 1,000 sequences sharing 8 system prompts of 256 tokens plus 256 own tokens.
    for i in 0..seqs as u32 {
        let mut p: Vec<u32> = (0..256).map(|t| (i % 8) * 10_000 + t).collect();
        p.extend((0..256).map(|t| 100_000 + i * 1000 + t));
        s.add(p, Vec::new()).expect("fits");
    }
    let mut run_step = |s: &mut Scheduler| {
        let plan = s.schedule();
        let out = exec
            .execute(&s.inputs(&plan))
            .expect("cost model never fails");
        s.complete(&plan);
        for o in out {
            s.append_token(o.seq, o.token);
        }
        plan.num_tokens()
    };
    while s.load().running < seqs {
        run_step(&mut s);
    }
    let _ = s.drain_events();
    let steps = 500;
    let t = Instant::now();
    let mut tokens = 0;
    for _ in 0..steps {
        tokens += run_step(&mut s);
        black_box(s.drain_events());
    }
    let dt = t.elapsed().as_secs_f64();
    println!(
        "decode steps with {seqs} running sequences: {:.0} steps/s ({:.1} µs/step, {:.2} M scheduled tokens/s)",
        steps as f64 / dt,
        dt / steps as f64 * 1e6,
        tokens as f64 / dt / 1e6
    );
    assert_eq!(s.load().running, seqs);

    // Raw pool: allocate a 48-block table per sequence, release, repeat.
    let mut pool = BlockPool::new(80_000, block_size);
    let rounds = 200;
    let t = Instant::now();
    for _ in 0..rounds {
        let mut tables: Vec<BlockTable> = (0..seqs).map(|_| BlockTable::new()).collect();
        for table in tables.iter_mut() {
            for _ in 0..48 {
                pool.grow(table).expect("pool is large enough");
            }
        }
        for table in tables {
            pool.release(table);
        }
    }
    let dt = t.elapsed().as_secs_f64();
    let allocs = (rounds * seqs * 48) as f64;
    println!(
        "block pool: {:.1} M allocations/s (+ as many releases), {:.1} ns per allocate+release",
        allocs / dt / 1e6,
        dt / allocs * 1e9
    );
}
