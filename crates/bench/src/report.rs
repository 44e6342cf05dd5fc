//! Reports: results.json (one flat `vllm bench serve`-style record per policy and
//! rate), results.csv, ladder.json (each policy pooled over its whole ladder), the
//! cache timeline, and SVG pictures.

use super::sim::SimResult;
use super::stats::{RequestRecord, Slo, Summary};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use std::io::Write;
use std::path::Path;

/// A progress bar on stderr.
pub fn progress_bar(total: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let tmpl =
        format!("{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {unit} {{msg}} (eta {{eta}})");
    if let Ok(style) = ProgressStyle::with_template(&tmpl) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Per-stage summaries of every policy, in policy then rate order.
pub fn sim_rows(results: &[SimResult], _slo: &Slo) -> Vec<Summary> {
    results
        .iter()
        .flat_map(|r| r.stages.iter().map(|s| s.summary.clone()))
        .collect()
}

/// Each policy pooled over its whole ladder: every request of every rate, the rungs'
/// measured durations added (ITL is not pooled: the per-stage gaps are dropped to
/// bound memory). inference-perf's "Summary across QPS" (and so llm-d's published
/// table) pools its latencies this way: its TTFT p90 is above the mean of the rungs'.
pub fn ladder_rows(results: &[SimResult], slo: &Slo) -> Vec<Summary> {
    results
        .iter()
        .map(|r| {
            let recs: Vec<RequestRecord> = r
                .stages
                .iter()
                .flat_map(|s| s.records.iter().cloned())
                .collect();
            let duration: f64 = r.stages.iter().map(|s| s.summary.duration).sum();
            let mut s = Summary::from_records(r.policy.name(), 0.0, &recs, duration, slo);
            s.preemptions = Some(r.stages.iter().map(|s| s.preemptions).sum());
            s
        })
        .collect()
}

/// Each policy's rungs averaged: every rate and latency figure is the mean of the
/// per-rung figures (inference-perf's "Summary across QPS" gives its throughputs so); counts and `duration` are summed;
/// `request_rate` is the mean rate.
pub fn mean_rows(rows: &[Summary]) -> Result<Vec<Summary>> {
    let mut policies: Vec<&str> = Vec::new();
    for r in rows {
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
    }
    let mut out = Vec::with_capacity(policies.len());
    for p in policies {
        let vals: Vec<serde_json::Value> = rows
            .iter()
            .filter(|r| r.policy == p)
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?;
        let Some(serde_json::Value::Object(first)) = vals.first() else {
            continue;
        };
        let mut m = first.clone();
        for (k, v) in m.iter_mut() {
            let nums: Option<Vec<&serde_json::Value>> = vals
                .iter()
                .map(|x| x.get(k).filter(|y| y.is_number()))
                .collect();
            let Some(nums) = nums else { continue };
            let n = nums.len() as f64;
            if k == "duration" || nums.iter().all(|y| y.is_u64()) {
                let sum: u64 = nums.iter().filter_map(|y| y.as_u64()).sum();
                *v = if k == "duration" {
                    serde_json::json!(nums.iter().filter_map(|y| y.as_f64()).sum::<f64>())
                } else {
                    serde_json::json!(sum)
                };
            } else {
                *v = serde_json::json!(nums.iter().filter_map(|y| y.as_f64()).sum::<f64>() / n);
            }
        }
        m.insert("per_worker".into(), serde_json::json!([]));
        out.push(serde_json::from_value(serde_json::Value::Object(m))?);
    }
    Ok(out)
}

/// CSV columns, in `vllm bench serve` order.
const CSV_COLUMNS: &[&str] = &[
    "policy",
    "request_rate",
    "max_concurrency",
    "completed",
    "failed",
    "duration",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
    "cached_tokens",
    "cached_token_ratio",
    "effective_cache_throughput",
    "mean_ttft_ms",
    "median_ttft_ms",
    "p90_ttft_ms",
    "p95_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "median_tpot_ms",
    "p90_tpot_ms",
    "p95_tpot_ms",
    "p99_tpot_ms",
    "mean_itl_ms",
    "median_itl_ms",
    "p90_itl_ms",
    "p95_itl_ms",
    "p99_itl_ms",
    "mean_e2el_ms",
    "median_e2el_ms",
    "p90_e2el_ms",
    "p95_e2el_ms",
    "p99_e2el_ms",
    "preemptions",
];

/// Write `records` as `<stem>.json` (an array) and `<stem>.csv`.
pub fn write_records(dir: &Path, stem: &str, records: &[Summary]) -> Result<()> {
    let json = serde_json::to_string_pretty(records)?;
    write(&dir.join(format!("{stem}.json")), json.as_bytes())?;
    let mut csv = CSV_COLUMNS.join(",");
    csv.push('\n');
    for r in records {
        let v = serde_json::to_value(r)?;
        let cells: Vec<String> = CSV_COLUMNS
            .iter()
            .map(|c| match v.get(*c) {
                None | Some(serde_json::Value::Null) => String::new(),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(x) => x.to_string(),
            })
            .collect();
        csv.push_str(&cells.join(","));
        csv.push('\n');
    }
    write(&dir.join(format!("{stem}.csv")), csv.as_bytes())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Effective cache throughput over time: per policy, (bin start s, cached prompt
/// tokens per second in the bin), from (time, cached tokens) samples.
pub fn cache_timeline(samples: &[(String, Vec<(f64, usize)>)]) -> Vec<(String, Vec<(f64, f64)>)> {
    let end = samples
        .iter()
        .flat_map(|(_, v)| v.iter().map(|x| x.0))
        .fold(0.0f64, f64::max);
    // At most 80 bins over the longest run, in a round number of seconds: finer bins
    // turn the gaps between ladder rungs (no prefill completes while a rung drains)
    // into a comb of zeros that hides the level.
    let width = [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0]
        .into_iter()
        .find(|w| end / w <= 80.0)
        .unwrap_or(end / 80.0)
        .max(1e-3);
    samples
        .iter()
        .map(|(name, v)| {
            let last = v.iter().map(|x| x.0).fold(0.0f64, f64::max);
            let n = (last / width).floor() as usize + 1;
            let mut bins = vec![0usize; n];
            for &(t, c) in v {
                let i = ((t / width).floor() as usize).min(n - 1);
                bins[i] += c;
            }
            let pts = bins
                .iter()
                .enumerate()
                .map(|(i, &c)| (i as f64 * width, c as f64 / width))
                .collect();
            (name.clone(), pts)
        })
        .collect()
}

/// Write the simulator's whole report under `dir`.
pub fn write_sim_report(
    dir: &Path,
    setup: &impl serde::Serialize,
    results: &[SimResult],
    slo: &Slo,
    wall_s: f64,
) -> Result<()> {
    crate::options::ensure_dir(dir)?;
    let rows = sim_rows(results, slo);
    write_records(dir, "results", &rows)?;
    let ladder = ladder_rows(results, slo);
    write_records(dir, "ladder", &ladder)?;
    write_records(dir, "ladder_mean", &mean_rows(&rows)?)?;
    let cfg = serde_json::json!({ "mode": "sim", "setup": setup, "wall_seconds": wall_s });
    write(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&cfg)?.as_bytes(),
    )?;
    let samples: Vec<(String, Vec<(f64, usize)>)> = results
        .iter()
        .map(|r| (r.policy.name().to_string(), r.cache_hits.clone()))
        .collect();
    let timeline = cache_timeline(&samples);
    write_timeline(dir, &timeline)?;
    write_pictures(dir, &rows, &timeline, SIM_TIME_LABEL)
}

/// cache_timeline.csv: policy, time, cached tokens/s.
pub fn write_timeline(dir: &Path, timeline: &[(String, Vec<(f64, f64)>)]) -> Result<()> {
    let mut csv = String::from("policy,time_s,effective_cache_throughput\n");
    for (p, pts) in timeline {
        for (t, v) in pts {
            csv.push_str(&format!("{p},{t},{v:.1}\n"));
        }
    }
    write(&dir.join("cache_timeline.csv"), csv.as_bytes())
}

/// Label of the timeline's x axis for a simulated run.
const SIM_TIME_LABEL: &str = "virtual time since the ladder started (s)";
/// Label of the timeline's x axis for a live run.
pub const LIVE_TIME_LABEL: &str = "seconds since the policy's first request";

/// Redraw a results directory's pictures from its results.json and
/// cache_timeline.csv (`reprise bench plot`).
pub fn replot(dir: &Path) -> Result<()> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
    };
    let rows: Vec<Summary> =
        serde_json::from_str(&read("results.json")?).context("results.json is not valid")?;
    let mut timeline: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for (n, line) in read("cache_timeline.csv")?.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let parsed = match f.as_slice() {
            [p, t, v] => t
                .parse::<f64>()
                .ok()
                .zip(v.parse::<f64>().ok())
                .map(|x| (*p, x)),
            _ => None,
        };
        let Some((p, pt)) = parsed else {
            anyhow::bail!(
                "cache_timeline.csv line {}: expected policy,time,value",
                n + 1
            );
        };
        match timeline.iter_mut().find(|(q, _)| q == p) {
            Some((_, v)) => v.push(pt),
            None => timeline.push((p.to_string(), vec![pt])),
        }
    }
    let live = read("config.json")
        .ok()
        .and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok())
        .is_some_and(|c| c["mode"] == "live");
    let label = if live {
        LIVE_TIME_LABEL
    } else {
        SIM_TIME_LABEL
    };
    write_pictures(dir, &rows, &timeline, label)?;
    eprintln!("redrew the pictures in {}", dir.display());
    Ok(())
}

/// Print the headline table (policy, rate, p50/p90 TTFT, throughput, cache hits).
pub fn print_table(rows: &[Summary]) {
    println!(
        "{:<12} {:>7} {:>9} {:>12} {:>12} {:>11} {:>9} {:>12}",
        "policy",
        "rate",
        "completed",
        "p50 TTFT s",
        "p90 TTFT s",
        "out tok/s",
        "cached",
        "cache tok/s"
    );
    for r in rows {
        println!(
            "{:<12} {:>7.1} {:>9} {:>12.3} {:>12.3} {:>11.0} {:>8.1}% {:>12.0}",
            r.policy,
            r.request_rate,
            r.completed,
            r.ttft.median / 1000.0,
            r.ttft.p90 / 1000.0,
            r.output_throughput,
            100.0 * r.cached_token_ratio,
            r.effective_cache_throughput
        );
    }
}

/// One policy's pooled ladder beside llm-d's published summary of the same scheduler.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// Policy.
    pub policy: String,
    /// Simulated p90 TTFT over the ladder, seconds.
    pub sim_ttft_p90_s: f64,
    /// llm-d's, seconds.
    pub llm_d_ttft_p90_s: f64,
    /// Simulated mean TTFT, seconds.
    pub sim_ttft_mean_s: f64,
    /// llm-d's, seconds.
    pub llm_d_ttft_mean_s: f64,
    /// Simulated output tokens/s.
    pub sim_output_tok_s: f64,
    /// llm-d's.
    pub llm_d_output_tok_s: f64,
}

impl Comparison {
    /// How many times apart the p90 TTFTs are (>= 1, whichever is larger).
    pub fn ttft_p90_factor(&self) -> f64 {
        let (a, b) = (self.sim_ttft_p90_s, self.llm_d_ttft_p90_s);
        if a <= 0.0 || b <= 0.0 {
            f64::INFINITY
        } else {
            (a / b).max(b / a)
        }
    }

    /// Relative difference of the output throughputs (simulated over llm-d's, − 1).
    pub fn throughput_error(&self) -> f64 {
        self.sim_output_tok_s / self.llm_d_output_tok_s - 1.0
    }

    /// The bar: p90 TTFT within 2x, throughput within 25%.
    pub fn within_bounds(&self) -> bool {
        self.ttft_p90_factor() <= 2.0 && self.throughput_error().abs() <= 0.25
    }
}

/// The policies llm-d ran beside its summary, computed as its summary is: TTFT over
/// the pooled `ladder` rows, output throughput as the `mean` of the rungs'.
pub fn published_comparison(ladder: &[Summary], mean: &[Summary]) -> Vec<Comparison> {
    use super::published::{index_of, SUMMARY};
    ladder
        .iter()
        .filter_map(|r| {
            let policy = r.policy.parse().ok()?;
            let l = SUMMARY[index_of(policy)?];
            let m = mean.iter().find(|m| m.policy == r.policy)?;
            Some(Comparison {
                policy: r.policy.clone(),
                sim_ttft_p90_s: r.ttft.p90 / 1000.0,
                llm_d_ttft_p90_s: l.ttft_p90_s,
                sim_ttft_mean_s: r.ttft.mean / 1000.0,
                llm_d_ttft_mean_s: l.ttft_mean_s,
                sim_output_tok_s: m.output_throughput,
                llm_d_output_tok_s: l.output_tok_s,
            })
        })
        .collect()
}

/// Print [`published_comparison`]'s rows.
pub fn print_comparison(rows: &[Comparison]) {
    println!(
        "{:<12} {:>12} {:>12} {:>7} {:>12} {:>12} {:>11} {:>11} {:>7} {:>6}",
        "policy",
        "p90 TTFT s",
        "llm-d",
        "x",
        "mean TTFT s",
        "llm-d",
        "out tok/s",
        "llm-d",
        "diff",
        "within"
    );
    for c in rows {
        println!(
            "{:<12} {:>12.3} {:>12.3} {:>7.2} {:>12.3} {:>12.3} {:>11.0} {:>11.0} {:>+6.0}% {:>6}",
            c.policy,
            c.sim_ttft_p90_s,
            c.llm_d_ttft_p90_s,
            c.ttft_p90_factor(),
            c.sim_ttft_mean_s,
            c.llm_d_ttft_mean_s,
            c.sim_output_tok_s,
            c.llm_d_output_tok_s,
            100.0 * c.throughput_error(),
            if c.within_bounds() { "yes" } else { "no" }
        );
    }
}

/// llm-d-comparison.csv under `dir`.
pub fn write_comparison(dir: &Path, rows: &[Comparison]) -> Result<()> {
    let mut out = String::from(
        "policy,sim_ttft_p90_s,llm_d_ttft_p90_s,ttft_p90_factor,sim_ttft_mean_s,llm_d_ttft_mean_s,sim_output_tok_s,llm_d_output_tok_s,throughput_error,within_bounds\n",
    );
    for c in rows {
        out.push_str(&format!(
            "{},{:.4},{:.4},{:.3},{:.4},{:.4},{:.1},{:.1},{:.4},{}\n",
            c.policy,
            c.sim_ttft_p90_s,
            c.llm_d_ttft_p90_s,
            c.ttft_p90_factor(),
            c.sim_ttft_mean_s,
            c.llm_d_ttft_mean_s,
            c.sim_output_tok_s,
            c.llm_d_output_tok_s,
            c.throughput_error(),
            c.within_bounds()
        ));
    }
    write(&dir.join("llm-d-comparison.csv"), out.as_bytes())
}

/// Colour of a policy, fixed so pictures are comparable.
fn color(policy: &str, i: usize) -> RGBColor {
    match policy {
        "precise" => RGBColor(31, 119, 180),
        "cost" => RGBColor(23, 190, 207),
        "approximate" => RGBColor(255, 127, 14),
        "load" => RGBColor(44, 160, 44),
        "round-robin" => RGBColor(148, 103, 189),
        "random" => RGBColor(214, 39, 40),
        _ => [
            RGBColor(23, 190, 207),
            RGBColor(127, 127, 127),
            RGBColor(188, 189, 34),
            RGBColor(140, 86, 75),
        ][i % 4],
    }
}

/// One line of a chart.
pub struct Line {
    /// Legend label.
    pub label: String,
    /// Colour key (policy name).
    pub policy: String,
    /// Dashed (secondary statistic) or solid.
    pub dashed: bool,
    /// Points, x ascending.
    pub points: Vec<(f64, f64)>,
}

/// How a chart's y axis and legend are laid out.
pub struct ChartStyle {
    /// Draw y on a log10 axis labelled in the original unit (zeros and negatives
    /// are left out).
    pub log_y: bool,
    /// Fixed top of a linear y axis (e.g. 100 for percentages).
    pub y_max: Option<f64>,
    /// Where the legend goes (away from where the lines usually are).
    pub legend: SeriesLabelPosition,
}

/// A line chart of `lines`, styled by `style`.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    lines: &[Line],
    style: ChartStyle,
) -> Result<()> {
    let log_y = style.log_y;
    let tf = |y: f64| if log_y { y.log10() } else { y };
    let pts: Vec<Vec<(f64, f64)>> = lines
        .iter()
        .map(|l| {
            l.points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite() && (!log_y || p.1 > 0.0))
                .map(|&(x, y)| (x, tf(y)))
                .collect()
        })
        .collect();
    let all = pts.iter().flatten();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if log_y {
        y0 = y0.floor();
        // One empty decade on top keeps an upper legend clear of the lines.
        y1 = y1.ceil().max(y0 + 1.0) + 1.0;
    } else {
        y0 = y0.min(0.0);
        y1 = match style.y_max {
            Some(m) => m,
            None if y1 > y0 => y1 * 1.08,
            None => y0 + 1.0,
        };
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(56)
        .y_label_area_size(90)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(&e))?;
    let fmt_y = |v: &f64| {
        let y = if log_y { 10f64.powf(*v) } else { *v };
        human(y)
    };
    let decades = (y1 - y0).round() as usize;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .y_label_formatter(&fmt_y)
        .x_label_formatter(&|v| human(*v))
        .y_labels(if log_y { decades + 1 } else { 10 })
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (l, p)) in lines.iter().zip(pts).enumerate() {
        let c = color(&l.policy, i);
        let style = ShapeStyle::from(&c).stroke_width(if l.dashed { 2 } else { 3 });
        if l.dashed {
            chart
                .draw_series(DashedLineSeries::new(p.clone(), 8, 5, style))
                .map_err(|e| err(&e))?
                .label(l.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 8, y)], style));
        } else {
            chart
                .draw_series(LineSeries::new(p.clone(), style))
                .map_err(|e| err(&e))?
                .label(l.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        if p.len() <= 40 {
            chart
                .draw_series(p.iter().map(|&pt| Circle::new(pt, 3, c.filled())))
                .map_err(|e| err(&e))?;
        }
    }
    chart
        .configure_series_labels()
        .position(style.legend)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// One policy's bar(s) in a bar chart: `low` (drawn dark, in front) and `high`
/// (drawn light, behind) share the bar; `low` alone when there is one statistic.
pub struct Bar {
    /// Policy name (x label and colour key).
    pub policy: String,
    /// Front value.
    pub low: f64,
    /// Back value, at least `low`.
    pub high: Option<f64>,
}

/// A bar chart with one bar per policy: a run at a single rate has no "against
/// rate" line to draw. `unit` is appended to the value printed above each bar.
pub fn bar_chart(path: &Path, title: &str, y_label: &str, unit: &str, bars: &[Bar]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
    let top = bars
        .iter()
        .map(|b| b.high.unwrap_or(b.low).max(b.low))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let y1 = if top > 0.0 { top * 1.15 } else { 1.0 };
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let n = bars.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(56)
        .y_label_area_size(90)
        // A segmented 0..k range has k + 1 segments: one per bar.
        .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..y1)
        .map_err(|e| err(&e))?;
    let names: Vec<String> = bars.iter().map(|b| b.policy.clone()).collect();
    let fmt_x = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&fmt_x)
        .y_desc(y_label)
        .y_label_formatter(&|v| human(*v))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, b) in bars.iter().enumerate() {
        let c = color(&b.policy, i);
        let rect = |v: f64, style: ShapeStyle| {
            let mut r = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), v),
                ],
                style,
            );
            r.set_margin(0, 0, 18, 18);
            r
        };
        let mut labels = vec![(b.low, format!("{}{unit}", human(b.low)))];
        if let Some(h) = b.high {
            chart
                .draw_series(std::iter::once(rect(h, c.mix(0.35).filled())))
                .map_err(|e| err(&e))?;
            labels.push((h, format!("{}{unit}", human(h))));
        }
        chart
            .draw_series(std::iter::once(rect(b.low, c.filled())))
            .map_err(|e| err(&e))?;
        for (v, t) in labels {
            chart
                .draw_series(std::iter::once(Text::new(
                    t,
                    (SegmentValue::CenterOf(i), v + y1 * 0.035),
                    ("sans-serif", 14),
                )))
                .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Centred moving average of `pts`' y over `half` points either side (fewer at the
/// ends).
pub fn moving_average(pts: &[(f64, f64)], half: usize) -> Vec<(f64, f64)> {
    (0..pts.len())
        .map(|i| {
            let w = &pts[i.saturating_sub(half)..(i + half + 1).min(pts.len())];
            (
                pts[i].0,
                w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64,
            )
        })
        .collect()
}

/// Short human form of a number for axis labels (1.5k, 2M, 0.05).
fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e4 {
        format!("{}k", trim(v / 1e3))
    } else if a >= 1.0 || a == 0.0 {
        trim(v)
    } else {
        // Enough decimals for one significant digit (0.1, 0.05, 0.001), no trailing zeros.
        let d = (-a.log10()).ceil().clamp(1.0, 6.0) as usize;
        let s = format!("{v:.d$}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

/// The four pictures: TTFT p50/p90, output throughput and cache hit ratio against
/// request rate per policy, and effective cache throughput over time.
pub fn write_pictures(
    dir: &Path,
    rows: &[Summary],
    timeline: &[(String, Vec<(f64, f64)>)],
    time_label: &str,
) -> Result<()> {
    let mut policies: Vec<&str> = Vec::new();
    for r in rows {
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
    }
    let mut rates: Vec<f64> = rows.iter().map(|r| r.request_rate).collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    if rates.len() == 1 {
        let bars = |low: &dyn Fn(&Summary) -> f64, high: Option<&dyn Fn(&Summary) -> f64>| {
            rows.iter()
                .map(|r| Bar {
                    policy: r.policy.clone(),
                    low: low(r),
                    high: high.map(|h| h(r)),
                })
                .collect::<Vec<_>>()
        };
        let at = if rates[0] > 0.0 {
            format!("{} req/s", human(rates[0]))
        } else {
            "max rate".to_string()
        };
        bar_chart(
            &dir.join("ttft_vs_rate.svg"),
            &format!("Time to first token at {at} (dark p50, light p90)"),
            "TTFT (s)",
            " s",
            &bars(&|r| r.ttft.median / 1000.0, Some(&|r| r.ttft.p90 / 1000.0)),
        )?;
        bar_chart(
            &dir.join("throughput_vs_rate.svg"),
            &format!("Output token throughput at {at}"),
            "output tokens/s",
            "",
            &bars(&|r| r.output_throughput, None),
        )?;
        bar_chart(
            &dir.join("cache_hit_ratio_vs_rate.svg"),
            &format!("Cached prompt-token ratio at {at}"),
            "cached / prompt tokens (%)",
            "%",
            &bars(&|r| 100.0 * r.cached_token_ratio, None),
        )?;
        return timeline_chart(dir, timeline, time_label);
    }
    let series = |f: &dyn Fn(&Summary) -> f64, p: &str| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r.policy == p)
            .map(|r| (r.request_rate, f(r)))
            .collect()
    };
    let mut ttft = Vec::new();
    for p in &policies {
        ttft.push(Line {
            label: format!("{p} p90"),
            policy: p.to_string(),
            dashed: false,
            points: series(&|r| r.ttft.p90 / 1000.0, p),
        });
        ttft.push(Line {
            label: format!("{p} p50"),
            policy: p.to_string(),
            dashed: true,
            points: series(&|r| r.ttft.median / 1000.0, p),
        });
    }
    line_chart(
        &dir.join("ttft_vs_rate.svg"),
        "Time to first token vs request rate (solid p90, dashed p50)",
        "request rate (req/s)",
        "TTFT (s, log scale)",
        &ttft,
        ChartStyle {
            log_y: true,
            y_max: None,
            legend: SeriesLabelPosition::UpperLeft,
        },
    )?;
    let linear = |legend| ChartStyle {
        log_y: false,
        y_max: None,
        legend,
    };
    let simple = |f: &dyn Fn(&Summary) -> f64| -> Vec<Line> {
        policies
            .iter()
            .map(|p| Line {
                label: p.to_string(),
                policy: p.to_string(),
                dashed: false,
                points: series(f, p),
            })
            .collect()
    };
    line_chart(
        &dir.join("throughput_vs_rate.svg"),
        "Output token throughput vs request rate",
        "request rate (req/s)",
        "output tokens/s",
        &simple(&|r| r.output_throughput),
        linear(SeriesLabelPosition::UpperLeft),
    )?;
    line_chart(
        &dir.join("cache_hit_ratio_vs_rate.svg"),
        "Cached prompt-token ratio vs request rate",
        "request rate (req/s)",
        "cached / prompt tokens (%)",
        &simple(&|r| 100.0 * r.cached_token_ratio),
        ChartStyle {
            y_max: Some(105.0),
            ..linear(SeriesLabelPosition::MiddleRight)
        },
    )?;
    timeline_chart(dir, timeline, time_label)
}

/// effective_cache_throughput.svg.
fn timeline_chart(
    dir: &Path,
    timeline: &[(String, Vec<(f64, f64)>)],
    time_label: &str,
) -> Result<()> {
    // A centred 5-bin moving average: bins in which a rung drains (no prefill
    // completes) otherwise draw a comb of zeros over the level (the CSV keeps the
    // raw bins).
    let lines: Vec<Line> = timeline
        .iter()
        .map(|(p, pts)| Line {
            label: p.clone(),
            policy: p.clone(),
            dashed: false,
            points: moving_average(pts, 2),
        })
        .collect();
    line_chart(
        &dir.join("effective_cache_throughput.svg"),
        "Effective cache throughput over time (prompt tokens/s from cache, 5-bin mean)",
        time_label,
        "cached prompt tokens/s",
        &lines,
        ChartStyle {
            log_y: false,
            y_max: None,
            legend: SeriesLabelPosition::UpperRight,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_comparison_uses_pooled_ttft_and_mean_throughput_and_llm_ds_bar() {
        let row = |policy: &str, p90_ms: f64, tok_s: f64| {
            let mut s = Summary {
                policy: policy.into(),
                output_throughput: tok_s,
                ..Default::default()
            };
            s.ttft.p90 = p90_ms;
            s
        };
        // precise: 1.0 s pooled (llm-d 0.542: 1.85x), 9,000 tok/s mean (+3%);
        // random: 200 s (2.16x): out; cost is not in llm-d's table.
        let ladder = [
            row("precise", 1000.0, 1.0),
            row("random", 200_000.0, 1.0),
            row("cost", 1.0, 1.0),
        ];
        let mean = [
            row("precise", 0.0, 9000.0),
            row("random", 0.0, 4500.0),
            row("cost", 0.0, 1.0),
        ];
        let c = published_comparison(&ladder, &mean);
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].sim_ttft_p90_s, c[0].sim_output_tok_s), (1.0, 9000.0));
        assert!((c[0].ttft_p90_factor() - 1.0 / 0.542).abs() < 1e-9);
        assert!(c[0].within_bounds());
        assert!(!c[1].within_bounds(), "{:?}", c[1]);
        let mut slow = c[0].clone();
        slow.sim_output_tok_s = 0.7 * slow.llm_d_output_tok_s;
        assert!(!slow.within_bounds());
    }

    #[test]
    fn timeline_bins_tokens_per_second() {
        let t = cache_timeline(&[("p".into(), vec![(0.5, 100), (0.7, 100), (3.2, 50)])]);
        let pts = &t[0].1;
        assert_eq!(pts.len(), 4);
        assert_eq!(pts[0], (0.0, 200.0));
        assert_eq!(pts[3], (3.0, 50.0));
    }

    #[test]
    fn mean_rows_average_rungs_and_sum_counts() {
        let mk = |p: &str, rate: f64, ttft: f64| {
            let rec = RequestRecord {
                ttft_s: Some(ttft),
                e2el_s: 2.0,
                prompt_tokens: 10,
                output_tokens: 4,
                worker: Some(0),
                ..Default::default()
            };
            Summary::from_records(p, rate, &[rec], 2.0, &Slo::default())
        };
        let rows = vec![mk("a", 1.0, 0.1), mk("a", 3.0, 0.3), mk("b", 2.0, 1.0)];
        let m = mean_rows(&rows).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].policy.as_str(), m[0].completed), ("a", 2));
        assert!((m[0].request_rate - 2.0).abs() < 1e-12);
        assert!((m[0].ttft.p90 - 200.0).abs() < 1e-9);
        assert!((m[0].duration - 4.0).abs() < 1e-12);
        assert!((m[0].output_throughput - 2.0).abs() < 1e-12);
        assert_eq!(m[0].total_output_tokens, 8);
        assert!((m[1].ttft.median - 1000.0).abs() < 1e-9);
    }

    #[test]
    fn moving_average_is_centred() {
        let m = moving_average(&[(0.0, 3.0), (1.0, 0.0), (2.0, 3.0), (3.0, 6.0)], 1);
        assert_eq!(m, vec![(0.0, 1.5), (1.0, 2.0), (2.0, 3.0), (3.0, 4.5)]);
        assert!(moving_average(&[], 1).is_empty());
    }

    #[test]
    fn a_single_rate_draws_bars_per_policy() {
        let dir = std::env::temp_dir().join(format!("reprise-bars-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rows: Vec<Summary> = ["precise", "random"]
            .iter()
            .map(|p| {
                let rec = RequestRecord {
                    ttft_s: Some(0.5),
                    e2el_s: 1.0,
                    prompt_tokens: 10,
                    output_tokens: 5,
                    cached_tokens: 5,
                    worker: Some(0),
                    ..Default::default()
                };
                Summary::from_records(p, 0.5, &[rec], 2.0, &Slo::default())
            })
            .collect();
        write_pictures(&dir, &rows, &[], "t (s)").unwrap();
        let s = std::fs::read_to_string(dir.join("ttft_vs_rate.svg")).unwrap();
        assert!(s.contains("at 0.5 req/s") && s.contains("random"), "{s}");
        assert!(s.contains("<rect"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn axis_numbers_are_short() {
        assert_eq!(human(0.1), "0.1");
        assert_eq!(human(0.05), "0.05");
        assert_eq!(human(0.0), "0");
        assert_eq!(human(2.5), "2.5");
        assert_eq!(human(1500.0), "1500");
        assert_eq!(human(25_000.0), "25k");
        assert_eq!(human(2_000_000.0), "2M");
    }

    #[test]
    fn records_csv_and_pictures_are_written() {
        let dir = std::env::temp_dir().join(format!("reprise-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut rows = Vec::new();
        for (p, k) in [("precise", 1.0), ("random", 10.0)] {
            for rate in [1.0, 2.0, 4.0] {
                let rec = RequestRecord {
                    ttft_s: Some(0.1 * k * rate),
                    e2el_s: 1.0,
                    prompt_tokens: 10,
                    output_tokens: 5,
                    cached_tokens: 5,
                    worker: Some(0),
                    ..Default::default()
                };
                rows.push(Summary::from_records(p, rate, &[rec], 2.0, &Slo::default()));
            }
        }
        write_records(&dir, "results", &rows).unwrap();
        let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
        assert_eq!(csv.lines().count(), 7);
        assert!(csv.starts_with("policy,request_rate,"));
        assert!(csv
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("precise,1.0,,1,0,2.0,"));
        let tl = cache_timeline(&[("precise".into(), vec![(1.0, 10), (5.0, 20)])]);
        write_pictures(&dir, &rows, &tl, "t (s)").unwrap();
        write_timeline(&dir, &tl).unwrap();
        for f in [
            "ttft_vs_rate.svg",
            "throughput_vs_rate.svg",
            "cache_hit_ratio_vs_rate.svg",
            "effective_cache_throughput.svg",
        ] {
            let s = std::fs::read_to_string(dir.join(f)).unwrap();
            assert!(s.contains("<svg") && s.contains("precise"), "{f}");
        }
        // `bench plot` redraws them from results.json and cache_timeline.csv.
        std::fs::remove_file(dir.join("ttft_vs_rate.svg")).unwrap();
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string(&rows).unwrap(),
        )
        .unwrap();
        replot(&dir).unwrap();
        assert!(dir.join("ttft_vs_rate.svg").exists());
        std::fs::write(dir.join("cache_timeline.csv"), "h\nprecise,x,1\n").unwrap();
        assert!(replot(&dir).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
