//! Live benchmarks against any OpenAI-compatible server (`bench run`), and the
//! policy comparison that starts `reprise serve` once per policy (`bench compare`).
//!
//! Requests go to `/v1/completions` with the prompt as token ids, `ignore_eos`,
//! `temperature` 0 and `stream_options.include_usage`, one HTTP/1.1 connection per
//! request (plain `http://` only). TTFT is taken at the first chunk with non-empty
//! text, ITL between such chunks; token counts and cached tokens come from the final
//! `usage` chunk, the worker from the `x-reprise-worker` header.

use super::report;
use super::stats::{RequestRecord, Slo, Summary};
use super::workload::{Workload, WorkloadArgs};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Gamma};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// How load is offered and measured; shared by `bench run` and `bench compare`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Comma-separated request rates (req/s), run one after the other. Without it,
    /// all requests are sent at once, limited by --max-concurrency.
    #[arg(long)]
    pub rates: Option<String>,
    /// Most requests in flight.
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Requests per rate.
    #[arg(long, default_value_t = 200)]
    pub num_prompts: usize,
    /// Gamma shape of the inter-arrival gaps: 1 = Poisson, below 1 burstier.
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Requests sent before each rate's measurement (not recorded).
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 600.0)]
    pub timeout_s: f64,
    /// Seed of the arrival times.
    #[arg(long, default_value_t = 0)]
    pub arrival_seed: u64,
    /// Goodput SLOs in ms, vLLM syntax: `ttft:500 tpot:50 e2el:20000`.
    #[arg(long, num_args = 1..)]
    pub goodput: Vec<String>,
    /// Output directory for results.json, results.csv, requests.jsonl and pictures.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// The workload.
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

/// Options of `reprise bench run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Server base URL, e.g. http://127.0.0.1:8000.
    #[arg(long)]
    pub url: String,
    /// Model name to request (default: the first of GET /v1/models).
    #[arg(long)]
    pub model: Option<String>,
    /// Bearer token.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Label of the records (the `policy` field), e.g. the server's routing policy.
    #[arg(long, default_value = "server")]
    pub label: String,
    /// Load and workload.
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Options of `reprise bench compare`.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Comma-separated policies, each served by a fresh `reprise serve`.
    #[arg(
        long,
        default_value = "cost,precise,approximate,load,round-robin,random"
    )]
    pub policies: String,
    /// `--model` of `reprise serve` (default: its default model).
    #[arg(long)]
    pub model: Option<String>,
    /// `--devices` of `reprise serve`.
    #[arg(long, default_value = "cpu,cpu")]
    pub devices: String,
    /// More `reprise serve` arguments, one string (e.g. "--block-size 16 --num-kv-blocks 2048").
    #[arg(long, allow_hyphen_values = true)]
    pub serve_args: Option<String>,
    /// The `reprise` executable to start (default: this one). Point it at a copy when
    /// other builds may replace this one mid-run.
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Seconds to wait for each server's /health.
    #[arg(long, default_value_t = 300.0)]
    pub startup_timeout_s: f64,
    /// `in-process`: one `reprise serve` with a worker per `--devices` entry, routed by
    /// its own router; `route`: one single-worker `reprise serve` per entry (KV events
    /// and replay on), behind a `reprise route` with the policy.
    #[arg(long, default_value = "in-process")]
    pub deployment: String,
    /// Load and workload.
    #[command(flatten)]
    pub load: LoadArgs,
}

/// A parsed `http://host:port/prefix` URL.
#[derive(Clone, Debug, PartialEq)]
struct Endpoint {
    host: String,
    port: u16,
    prefix: String,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Self> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            anyhow!("--url must start with http:// (TLS is not supported): {url}")
        })?;
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().with_context(|| format!("bad port in {url}"))?),
            None => (authority, 80),
        };
        if host.is_empty() {
            bail!("no host in {url}");
        }
        let mut prefix = format!("/{}", path.trim_end_matches('/'));
        if prefix == "/" {
            prefix.clear();
        }
        // Accept a base URL that already ends in /v1.
        if let Some(p) = prefix.strip_suffix("/v1") {
            prefix = p.to_string();
        }
        Ok(Self {
            host: host.trim_matches(['[', ']']).to_string(),
            port,
            prefix,
        })
    }
}

/// One HTTP exchange's response head and body stream.
struct Response {
    status: u16,
    headers: hyper::HeaderMap,
    body: hyper::body::Incoming,
}

async fn send(
    ep: &Endpoint,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    key: Option<&str>,
) -> Result<Response> {
    let stream = TcpStream::connect((ep.host.as_str(), ep.port))
        .await
        .with_context(|| format!("cannot connect to {}:{}", ep.host, ep.port))?;
    stream.set_nodelay(true).ok();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("{}{path}", ep.prefix))
        .header(hyper::header::HOST, format!("{}:{}", ep.host, ep.port))
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(k) = key {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {k}"));
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = sender.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    Ok(Response {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

async fn read_all(body: hyper::body::Incoming) -> Result<Vec<u8>> {
    Ok(body.collect().await?.to_bytes().to_vec())
}

/// GET a path; Ok(status, body).
async fn get(ep: &Endpoint, path: &str, key: Option<&str>) -> Result<(u16, Vec<u8>)> {
    let r = send(ep, "GET", path, None, key).await?;
    Ok((r.status, read_all(r.body).await?))
}

/// Model name from GET /v1/models.
async fn first_model(ep: &Endpoint, key: Option<&str>) -> Result<String> {
    let (status, body) = get(ep, "/v1/models", key).await?;
    if status != 200 {
        bail!(
            "GET /v1/models answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let v: Value = serde_json::from_slice(&body).context("GET /v1/models: not JSON")?;
    v["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("GET /v1/models lists no model; pass --model"))
}

/// Send one streaming completion and time it; errors become a failed record.
async fn one_request(
    ep: &Endpoint,
    model: &str,
    key: Option<&str>,
    prompt: &[u32],
    max_tokens: usize,
    timeout: Duration,
    t0: Instant,
) -> RequestRecord {
    let start = Instant::now();
    let mut rec = RequestRecord {
        start_s: start.duration_since(t0).as_secs_f64(),
        prompt_tokens: prompt.len(),
        ..Default::default()
    };
    let body = json!({
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,
        "ignore_eos": true,
        "temperature": 0.0,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let fut = stream_completion(ep, key, body.to_string().into_bytes(), start, &mut rec);
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => rec.error = Some(format!("{e:#}")),
        Err(_) => rec.error = Some(format!("timed out after {:.0} s", timeout.as_secs_f64())),
    }
    rec.e2el_s = start.elapsed().as_secs_f64();
    rec
}

async fn stream_completion(
    ep: &Endpoint,
    key: Option<&str>,
    body: Vec<u8>,
    start: Instant,
    rec: &mut RequestRecord,
) -> Result<()> {
    let mut resp = send(ep, "POST", "/v1/completions", Some(body), key).await?;
    rec.worker = resp
        .headers
        .get("x-reprise-worker")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    if resp.status != 200 {
        let b = read_all(resp.body).await.unwrap_or_default();
        bail!(
            "HTTP {}: {}",
            resp.status,
            String::from_utf8_lossy(&b)
                .chars()
                .take(300)
                .collect::<String>()
        );
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut last: Option<Instant> = None;
    let mut chunks = 0usize;
    let mut usage: Option<Value> = None;
    let mut done = false;
    while let Some(frame) = resp.body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        // SSE events end with a blank line; handle both \n\n and \r\n\r\n.
        while let Some(pos) = find_event_end(&buf) {
            let (event, sep) = pos;
            let text = String::from_utf8_lossy(&buf[..event]).to_string();
            buf.drain(..event + sep);
            for line in text.lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let v: Value =
                    serde_json::from_str(data).with_context(|| format!("bad SSE data: {data}"))?;
                if let Some(err) = v.get("error") {
                    bail!("server error in stream: {err}");
                }
                let now = Instant::now();
                let text = v["choices"][0]["text"].as_str().unwrap_or("");
                if !text.is_empty() {
                    match last {
                        None => rec.ttft_s = Some(now.duration_since(start).as_secs_f64()),
                        Some(prev) => rec.itl_s.push(now.duration_since(prev).as_secs_f64()),
                    }
                    last = Some(now);
                    chunks += 1;
                }
                if v.get("usage").is_some_and(|u| !u.is_null()) {
                    usage = Some(v["usage"].clone());
                }
            }
        }
    }
    if !done {
        bail!("stream ended without [DONE]");
    }
    match usage {
        Some(u) => {
            rec.output_tokens = u["completion_tokens"]
                .as_u64()
                .map_or(chunks, |x| x as usize);
            if let Some(p) = u["prompt_tokens"].as_u64() {
                rec.prompt_tokens = p as usize;
            }
            rec.cached_tokens = u["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or(0) as usize;
        }
        None => rec.output_tokens = chunks,
    }
    if rec.ttft_s.is_none() {
        bail!("no non-empty token in the stream");
    }
    Ok(())
}

/// (end of the event, separator length) of the first complete SSE event in `buf`.
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Inter-arrival gaps (seconds) of `n` requests at `rate` with gamma shape
/// `burstiness` (1 = Poisson), vLLM's construction; the first request goes at 0.
pub fn arrival_times(n: usize, rate: f64, burstiness: f64, seed: u64) -> Result<Vec<f64>> {
    if !(burstiness.is_finite() && burstiness > 0.0) {
        bail!("--burstiness must be > 0");
    }
    let gamma = Gamma::new(burstiness, 1.0 / (rate * burstiness))
        .map_err(|e| anyhow!("bad rate {rate}: {e}"))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = 0.0;
    Ok((0..n)
        .map(|i| {
            if i > 0 {
                t += gamma.sample(&mut rng);
            }
            t
        })
        .collect())
}

/// One rate (or the unlimited-rate run) against one server.
#[allow(clippy::too_many_arguments)]
async fn run_rate(
    ep: &Arc<Endpoint>,
    model: &Arc<str>,
    key: Option<Arc<str>>,
    wl: &Arc<Workload>,
    load: &LoadArgs,
    rate: Option<f64>,
    stream: u64,
    bar: &ProgressBar,
) -> Result<(Vec<RequestRecord>, f64, Instant)> {
    let timeout = Duration::from_secs_f64(load.timeout_s.max(0.001));
    if load.warmup > 0 {
        let order = wl.order(load.warmup, 1_000_000 + stream);
        let sem = Arc::new(Semaphore::new(load.max_concurrency.unwrap_or(4).max(1)));
        let mut handles = Vec::new();
        let t0 = Instant::now();
        for i in order {
            let (ep, model, key, wl, sem) = (
                ep.clone(),
                model.clone(),
                key.clone(),
                wl.clone(),
                sem.clone(),
            );
            handles.push(tokio::spawn(async move {
                let _p = sem.acquire_owned().await;
                let p = &wl.prompts[i];
                one_request(
                    &ep,
                    &model,
                    key.as_deref(),
                    &p.tokens,
                    p.max_tokens,
                    timeout,
                    t0,
                )
                .await
            }));
        }
        for h in handles {
            let r = h.await?;
            if let Some(e) = r.error {
                bail!("warm-up request failed: {e}");
            }
        }
    }
    let n = load.num_prompts;
    let order = wl.order(n, stream);
    let times = match rate {
        Some(r) => arrival_times(n, r, load.burstiness, load.arrival_seed ^ stream)?,
        None => vec![0.0; n],
    };
    let sem = Arc::new(Semaphore::new(
        load.max_concurrency.unwrap_or(Semaphore::MAX_PERMITS),
    ));
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for (i, at) in order.into_iter().zip(times) {
        let (ep, model, key, wl, sem, bar) = (
            ep.clone(),
            model.clone(),
            key.clone(),
            wl.clone(),
            sem.clone(),
            bar.clone(),
        );
        handles.push(tokio::spawn(async move {
            tokio::time::sleep_until((t0 + Duration::from_secs_f64(at)).into()).await;
            let _p = sem.acquire_owned().await;
            let p = &wl.prompts[i];
            let r = one_request(
                &ep,
                &model,
                key.as_deref(),
                &p.tokens,
                p.max_tokens,
                timeout,
                t0,
            )
            .await;
            bar.inc(1);
            r
        }));
    }
    let mut recs = Vec::with_capacity(n);
    for h in handles {
        recs.push(h.await?);
    }
    Ok((recs, t0.elapsed().as_secs_f64(), t0))
}

/// Everything measured for one label (policy) over the rates.
struct LabelRun {
    summaries: Vec<Summary>,
    /// (label, rate, record) for requests.jsonl.
    requests: Vec<(f64, RequestRecord)>,
    /// (seconds since the label's first request, cached tokens) samples.
    cache_hits: Vec<(f64, usize)>,
}

async fn bench_label(
    ep: Endpoint,
    model: Option<String>,
    key: Option<String>,
    label: &str,
    load: &LoadArgs,
    wl: &Arc<Workload>,
) -> Result<LabelRun> {
    let ep = Arc::new(ep);
    let key: Option<Arc<str>> = key.map(Into::into);
    let model: Arc<str> = match model {
        Some(m) => m.into(),
        None => first_model(&ep, key.as_deref()).await?.into(),
    };
    let rates: Vec<Option<f64>> = match &load.rates {
        Some(r) => crate::options::parse_rates(r)?
            .into_iter()
            .map(Some)
            .collect(),
        None => vec![None],
    };
    let slo = Slo::parse(&load.goodput)?;
    let mut out = LabelRun {
        summaries: Vec::new(),
        requests: Vec::new(),
        cache_hits: Vec::new(),
    };
    let begin = Instant::now();
    for (k, rate) in rates.iter().enumerate() {
        let bar = report::progress_bar(load.num_prompts as u64, "requests");
        bar.set_message(format!(
            "{label} @ {}",
            rate.map_or("max".to_string(), |r| format!("{r} req/s"))
        ));
        let (recs, duration, t0) =
            run_rate(&ep, &model, key.clone(), wl, load, *rate, k as u64, &bar).await?;
        bar.finish_and_clear();
        let offset = t0.duration_since(begin).as_secs_f64();
        for r in recs.iter().filter(|r| r.ok()) {
            out.cache_hits.push((
                offset + r.start_s + r.ttft_s.unwrap_or(0.0),
                r.cached_tokens,
            ));
        }
        let mut s = Summary::from_records(label, rate.unwrap_or(0.0), &recs, duration, &slo);
        s.max_concurrency = load.max_concurrency;
        if let Some(e) = recs.iter().find_map(|r| r.error.as_ref()) {
            eprintln!("{label} @ {:?}: {} failed, e.g.: {e}", rate, s.failed);
        }
        report::print_table(std::slice::from_ref(&s));
        out.summaries.push(s);
        out.requests
            .extend(recs.into_iter().map(|r| (rate.unwrap_or(0.0), r)));
    }
    Ok(out)
}

fn write_live_report(
    load: &LoadArgs,
    wl: &Workload,
    runs: &[(String, LabelRun)],
    extra: Value,
) -> Result<()> {
    let dir = &load.out;
    crate::options::ensure_dir(dir)?;
    let rows: Vec<Summary> = runs
        .iter()
        .flat_map(|(_, r)| r.summaries.iter().cloned())
        .collect();
    report::write_records(dir, "results", &rows)?;
    let mut jsonl = String::new();
    for (label, r) in runs {
        for (rate, rec) in &r.requests {
            let mut v = serde_json::to_value(rec)?;
            v["policy"] = json!(label);
            v["request_rate"] = json!(rate);
            jsonl.push_str(&v.to_string());
            jsonl.push('\n');
        }
    }
    std::fs::write(dir.join("requests.jsonl"), jsonl).context("cannot write requests.jsonl")?;
    let cfg = json!({
        "mode": "live",
        "workload": wl.description,
        "num_prompts": load.num_prompts,
        "rates": load.rates,
        "max_concurrency": load.max_concurrency,
        "burstiness": load.burstiness,
        "warmup": load.warmup,
        "extra": extra,
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg)?)
        .context("cannot write config.json")?;
    let samples: Vec<(String, Vec<(f64, usize)>)> = runs
        .iter()
        .map(|(l, r)| (l.clone(), r.cache_hits.clone()))
        .collect();
    let timeline = report::cache_timeline(&samples);
    report::write_timeline(dir, &timeline)?;
    report::write_pictures(dir, &rows, &timeline, report::LIVE_TIME_LABEL)?;
    println!("\nsummary");
    report::print_table(&rows);
    eprintln!("wrote {}", dir.display());
    Ok(())
}

/// `reprise bench run`.
pub async fn run(a: RunArgs) -> Result<()> {
    let ep = Endpoint::parse(&a.url)?;
    let wl = Arc::new(Workload::build(&a.load.workload)?);
    eprintln!("benchmarking {} with {}", a.url, wl.description);
    let r = bench_label(
        ep,
        a.model.clone(),
        a.api_key.clone(),
        &a.label,
        &a.load,
        &wl,
    )
    .await?;
    write_live_report(
        &a.load,
        &wl,
        &[(a.label.clone(), r)],
        json!({ "url": a.url, "model": a.model }),
    )
}

/// A `reprise serve` child, killed when dropped.
struct Server {
    child: std::process::Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

/// The executable that serves: `--server-bin`, else this process's own file. When a
/// rebuild replaced that file while we run, Linux reports it as "PATH (deleted)";
/// the new file at PATH is then the one to start.
fn server_exe(a: &CompareArgs) -> Result<PathBuf> {
    if let Some(p) = &a.server_bin {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe().context("cannot find the reprise executable")?;
    if exe.exists() {
        return Ok(exe);
    }
    let s = exe.to_string_lossy();
    match s.strip_suffix(" (deleted)").map(PathBuf::from) {
        Some(p) if p.exists() => Ok(p),
        _ => bail!(
            "the reprise executable {} is gone (rebuilt?); pass --server-bin",
            exe.display()
        ),
    }
}

async fn start_server(a: &CompareArgs, policy: &str, log: PathBuf) -> Result<(Server, Endpoint)> {
    let port = free_port()?;
    let mut args: Vec<String> = [
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--policy",
        policy,
        "--devices",
        &a.devices,
    ]
    .map(String::from)
    .to_vec();
    serve_extras(a, &mut args);
    let what = format!("reprise serve --policy {policy}");
    spawn_and_wait(a, &args, port, &what, log).await
}

fn serve_extras(a: &CompareArgs, args: &mut Vec<String>) {
    if let Some(m) = &a.model {
        args.extend(["--model".to_string(), m.clone()]);
    }
    if let Some(extra) = &a.serve_args {
        args.extend(extra.split_whitespace().map(String::from));
    }
}

/// One single-worker `reprise serve` per `--devices` entry, publishing KV events,
/// behind a `reprise route --policy POLICY`: the processes (all killed on drop) and
/// the router's endpoint.
async fn start_route_deployment(
    a: &CompareArgs,
    policy: &str,
    logs: &std::path::Path,
) -> Result<(Vec<Server>, Endpoint)> {
    let mut servers = Vec::new();
    let mut route_args: Vec<String> = ["route", "--host", "127.0.0.1", "--policy", policy]
        .map(String::from)
        .to_vec();
    for (i, device) in a.devices.split(',').map(str::trim).enumerate() {
        let (port, events, replay) = (free_port()?, free_port()?, free_port()?);
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--devices".into(),
            device.to_string(),
            "--kv-events-endpoint".into(),
            format!("tcp://*:{events}"),
            "--kv-events-replay-endpoint".into(),
            format!("tcp://*:{replay}"),
        ];
        serve_extras(a, &mut args);
        let log = logs.join(format!("serve-{policy}-worker{i}.log"));
        let (s, _) = spawn_and_wait(
            a,
            &args,
            port,
            &format!("worker {i} of the {policy} deployment"),
            log,
        )
        .await?;
        servers.push(s);
        route_args.push("--worker".into());
        route_args.push(format!(
            "http://127.0.0.1:{port},events=tcp://127.0.0.1:{events},replay=tcp://127.0.0.1:{replay}"
        ));
    }
    if let Some(m) = &a.model {
        route_args.extend(["--model".to_string(), m.clone()]);
    }
    let port = free_port()?;
    route_args.extend(["--port".to_string(), port.to_string()]);
    let log = logs.join(format!("route-{policy}.log"));
    let (r, ep) = spawn_and_wait(
        a,
        &route_args,
        port,
        &format!("reprise route --policy {policy}"),
        log,
    )
    .await?;
    servers.push(r);
    Ok((servers, ep))
}

/// Starts `reprise ARGS` (logging to `log`) and waits for `/health` on `port`.
async fn spawn_and_wait(
    a: &CompareArgs,
    args: &[String],
    port: u16,
    what: &str,
    log: PathBuf,
) -> Result<(Server, Endpoint)> {
    let exe = server_exe(a)?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args);
    let f =
        std::fs::File::create(&log).with_context(|| format!("cannot write {}", log.display()))?;
    cmd.stdout(f.try_clone()?)
        .stderr(f)
        .stdin(std::process::Stdio::null());
    let mut server = Server {
        child: cmd
            .spawn()
            .with_context(|| format!("cannot start {what}"))?,
    };
    let ep = Endpoint {
        host: "127.0.0.1".into(),
        port,
        prefix: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs_f64(a.startup_timeout_s.max(1.0));
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            bail!(
                "{what} exited ({status}): {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
        }
        if let Ok((200, _)) = get(&ep, "/health", None).await {
            return Ok((server, ep));
        }
        if Instant::now() > deadline {
            let _ = server.child.kill();
            bail!(
                "{what} not ready after {:.0} s (log: {})",
                a.startup_timeout_s,
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `reprise bench compare`.
pub async fn compare(a: CompareArgs) -> Result<()> {
    let policies = crate::options::parse_policies(&a.policies)?;
    let route = match a.deployment.as_str() {
        "in-process" => false,
        "route" => true,
        other => bail!("--deployment: '{other}' is not in-process or route"),
    };
    let wl = Arc::new(Workload::build(&a.load.workload)?);
    crate::options::ensure_dir(&a.load.out)?;
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    // A policy that fails (server did not start, benchmark error) is reported at the
    // end; the others still run and are written.
    for p in policies {
        let r = if route {
            eprintln!(
                "starting {} reprise serve processes behind reprise route --policy {p}",
                a.devices.split(',').count()
            );
            match start_route_deployment(&a, p.name(), &a.load.out).await {
                Ok((servers, ep)) => {
                    let r = bench_label(ep, None, None, p.name(), &a.load, &wl).await;
                    drop(servers);
                    r
                }
                Err(e) => Err(e),
            }
        } else {
            eprintln!("starting reprise serve --policy {p}");
            let log = a.load.out.join(format!("serve-{p}.log"));
            match start_server(&a, p.name(), log).await {
                Ok((server, ep)) => {
                    let r = bench_label(ep, None, None, p.name(), &a.load, &wl).await;
                    drop(server);
                    r
                }
                Err(e) => Err(e),
            }
        };
        match r {
            Ok(r) => runs.push((p.name().to_string(), r)),
            Err(e) => {
                eprintln!("policy {p} failed: {e:#}");
                failures.push(format!("{p}: {e:#}"));
            }
        }
    }
    if !runs.is_empty() {
        write_live_report(
            &a.load,
            &wl,
            &runs,
            json!({
                "model": a.model,
                "devices": a.devices,
                "deployment": a.deployment,
                "serve_args": a.serve_args,
                "failed_policies": failures,
            }),
        )?;
    }
    if !failures.is_empty() {
        bail!(
            "{} policy run(s) failed: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let e = Endpoint::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("127.0.0.1", 8000, "")
        );
        let e = Endpoint::parse("http://h:1/v1/").unwrap();
        assert_eq!(e.prefix, "");
        let e = Endpoint::parse("http://h/api").unwrap();
        assert_eq!((e.port, e.prefix.as_str()), (80, "/api"));
        assert!(Endpoint::parse("https://h").is_err());
        assert!(Endpoint::parse("http://:80").is_err());
    }

    #[test]
    fn poisson_arrivals_have_the_right_mean_and_are_seeded() {
        let t = arrival_times(20_000, 4.0, 1.0, 7).unwrap();
        assert_eq!(t[0], 0.0);
        let mean_gap = t[t.len() - 1] / (t.len() - 1) as f64;
        assert!((mean_gap - 0.25).abs() < 0.01, "{mean_gap}");
        assert_eq!(t, arrival_times(20_000, 4.0, 1.0, 7).unwrap());
        assert!(arrival_times(3, 1.0, 0.0, 0).is_err());
    }

    #[test]
    fn sse_events_split_on_blank_lines() {
        assert_eq!(find_event_end(b"data: 1\n\ndata: 2"), Some((7, 2)));
        assert_eq!(find_event_end(b"data: 1\r\n\r\n"), Some((7, 4)));
        assert_eq!(find_event_end(b"data: 1\n"), None);
    }

    /// A tiny SSE server (a std thread): checks the request and streams three tokens.
    #[tokio::test]
    async fn streams_are_timed_and_usage_read() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = vec![0u8; 65536];
            let mut got = Vec::new();
            while !String::from_utf8_lossy(&got).contains("\"stream\":true") {
                let n = s.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            let mut out = String::from(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-reprise-worker: 1\r\nconnection: close\r\n\r\n",
            );
            for t in ["", "a", "b", "c"] {
                out.push_str(&format!("data: {{\"choices\":[{{\"text\":\"{t}\"}}]}}\n\n"));
            }
            out.push_str("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\ndata: [DONE]\n\n");
            s.write_all(out.as_bytes()).unwrap();
        });
        let ep = Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let r = one_request(
            &ep,
            "m",
            None,
            &[1, 2, 3, 4, 5],
            3,
            Duration::from_secs(5),
            Instant::now(),
        )
        .await;
        assert!(r.ok(), "{:?}", r.error);
        assert_eq!(
            (r.output_tokens, r.prompt_tokens, r.cached_tokens, r.worker),
            (3, 5, 4, Some(1))
        );
        assert_eq!(r.itl_s.len(), 2);
        assert!(r.ttft_s.unwrap() <= r.e2el_s);
    }
}
