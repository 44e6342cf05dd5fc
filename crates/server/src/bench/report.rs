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

/// Each policy pooled over its whole ladder: every request of every rate, durations
/// added (ITL is not pooled: the per-stage gaps are dropped to bound memory).
pub fn ladder_rows(results: &[SimResult], slo: &Slo) -> Vec<Summary> {
    results
        .iter()
        .map(|r| {
            let recs: Vec<RequestRecord> = r
                .stages
                .iter()
                .flat_map(|s| s.records.iter().cloned())
                .collect();
            let duration: f64 = r.stages.iter().map(|s| s.end_s - s.start_s).sum();
            let mut s = Summary::from_records(r.policy.name(), 0.0, &recs, duration, slo);
            s.preemptions = Some(r.stages.iter().map(|s| s.preemptions).sum());
            s
        })
        .collect()
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
    // About 120 bins over the longest run, in a round number of seconds.
    let width = [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0]
        .into_iter()
        .find(|w| end / w <= 150.0)
        .unwrap_or(end / 150.0)
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
    super::ensure_dir(dir)?;
    let rows = sim_rows(results, slo);
    write_records(dir, "results", &rows)?;
    let ladder = ladder_rows(results, slo);
    write_records(dir, "ladder", &ladder)?;
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
    write_pictures(
        dir,
        &rows,
        &timeline,
        "virtual time since the ladder started (s)",
    )
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

/// Colour of a policy, fixed so pictures are comparable.
fn color(policy: &str, i: usize) -> RGBColor {
    match policy {
        "precise" => RGBColor(31, 119, 180),
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

/// A line chart; with `log_y` values are drawn on a log10 axis labelled in the
/// original unit (zeros and negatives are left out).
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    lines: &[Line],
    log_y: bool,
) -> Result<()> {
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
        y1 = y1.ceil().max(y0 + 1.0);
    } else {
        y0 = y0.min(0.0);
        y1 = if y1 > y0 { y1 * 1.08 } else { y0 + 1.0 };
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
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
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
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
        format!("{v:.2}")
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
        true,
    )?;
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
        false,
    )?;
    line_chart(
        &dir.join("cache_hit_ratio_vs_rate.svg"),
        "Cached prompt-token ratio vs request rate",
        "request rate (req/s)",
        "cached / prompt tokens (%)",
        &simple(&|r| 100.0 * r.cached_token_ratio),
        false,
    )?;
    let lines: Vec<Line> = timeline
        .iter()
        .map(|(p, pts)| Line {
            label: p.clone(),
            policy: p.clone(),
            dashed: false,
            points: pts.clone(),
        })
        .collect();
    line_chart(
        &dir.join("effective_cache_throughput.svg"),
        "Effective cache throughput over time (prompt tokens/s served from cache)",
        time_label,
        "cached prompt tokens/s",
        &lines,
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_bins_tokens_per_second() {
        let t = cache_timeline(&[("p".into(), vec![(0.5, 100), (0.7, 100), (3.2, 50)])]);
        let pts = &t[0].1;
        assert_eq!(pts.len(), 4);
        assert_eq!(pts[0], (0.0, 200.0));
        assert_eq!(pts[3], (3.0, 50.0));
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
        for f in [
            "ttft_vs_rate.svg",
            "throughput_vs_rate.svg",
            "cache_hit_ratio_vs_rate.svg",
            "effective_cache_throughput.svg",
        ] {
            let s = std::fs::read_to_string(dir.join(f)).unwrap();
            assert!(s.contains("<svg") && s.contains("precise"), "{f}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
