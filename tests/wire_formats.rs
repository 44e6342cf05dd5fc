//! End-to-end tests of the formats outside tools read: vLLM's KV events over ZMQ
//! (live stream, replay, the union of two workers, a dying worker), vLLM's metric
//! names, the render endpoints, and the options that configure them. Each test
//! starts its own `reprise serve` on ports picked at run time and subscribes with a
//! real ZMQ socket (libzmq, as vLLM's pyzmq and llm-d's Go client are).

mod support;

use reprise_protocol::wire::{decode_batch, parse_seq, EngineHash, WireEvent, REPLAY_END_SEQ};
use reprise_protocol::{BlockHasher, HashAlgo};
use reprise_router::index::precise::PreciseIndex;
use reprise_router::remote::{Offer, RemoteStream};
use serde_json::json;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use support::*;

/// One published message.
#[derive(Clone, Debug, PartialEq)]
struct Frame {
    topic: Vec<u8>,
    seq: u64,
    payload: Vec<u8>,
}

/// A SUB socket on its own thread, subscribed to every topic.
struct Sub {
    /// Frames as they arrive, or what was wrong with one (reported by the test
    /// thread that reads it, as itself).
    rx: mpsc::Receiver<Result<Frame, String>>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Sub {
    fn connect(endpoint: &str) -> Sub {
        let ctx = zmq::Context::new();
        let s = ctx.socket(zmq::SUB).expect("SUB socket");
        s.connect(endpoint).expect("connect SUB");
        s.set_subscribe(b"").expect("subscribe");
        s.set_rcvtimeo(100).expect("rcvtimeo");
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let reader = std::thread::spawn(move || {
            let _ctx = ctx;
            while !stop2.load(Ordering::Relaxed) {
                let got = match s.recv_multipart(0) {
                    Ok(parts) if parts.len() != 3 => Err(format!(
                        "a message of {} frames, not [topic, seq, payload]",
                        parts.len()
                    )),
                    Ok(parts) => match parse_seq(&parts[1]) {
                        Some(seq) => Ok(Frame {
                            topic: parts[0].clone(),
                            seq,
                            payload: parts[2].clone(),
                        }),
                        None => Err(format!("a seq frame of {} bytes, not 8", parts[1].len())),
                    },
                    Err(zmq::Error::EAGAIN) => continue,
                    Err(e) => Err(format!("SUB: {e}")),
                };
                let failed = got.is_err();
                if tx.send(got).is_err() || failed {
                    return;
                }
            }
        });
        // ZMQ's slow joiner: the subscription must reach the publisher before it sends.
        std::thread::sleep(Duration::from_millis(400));
        Sub {
            rx,
            stop,
            reader: Some(reader),
        }
    }

    /// The next `n` messages, or a failure after `within`.
    fn take(&self, n: usize, within: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + within;
        (0..n)
            .map(|i| {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(left) {
                    Ok(Ok(f)) => f,
                    Ok(Err(e)) => panic!("KV-event message {} of {n}: {e}", i + 1),
                    Err(_) => panic!("KV-event message {} of {n} never came", i + 1),
                }
            })
            .collect()
    }

    /// Asserts nothing is published for `d`.
    fn quiet(&self, d: Duration, what: &str) {
        match self.rx.recv_timeout(d) {
            Ok(Ok(f)) => panic!(
                "{what}: unexpected batch {} {:?}",
                f.seq,
                decode_batch(&f.payload)
            ),
            Ok(Err(e)) => panic!("{what}: {e}"),
            Err(_) => {}
        }
    }
}

/// Every batch the replay socket holds from `start`, as a DEALER (vLLM's framing).
fn replay(endpoint: &str, start: u64) -> Vec<Frame> {
    let ctx = zmq::Context::new();
    let s = ctx.socket(zmq::DEALER).expect("DEALER");
    s.set_rcvtimeo(5000).expect("rcvtimeo");
    s.connect(endpoint).expect("connect replay");
    s.send_multipart([&b""[..], &start.to_be_bytes()[..]], 0)
        .expect("send replay request");
    let mut out = Vec::new();
    loop {
        let parts = s.recv_multipart(0).expect("replay answer within 5 s");
        assert_eq!(parts.len(), 4, "[\"\", topic, seq, payload]: {parts:?}");
        assert!(parts[0].is_empty(), "delimiter frame first");
        if parts[2] == REPLAY_END_SEQ {
            assert!(parts[1].is_empty() && parts[3].is_empty(), "end marker");
            return out;
        }
        out.push(Frame {
            topic: parts[1].clone(),
            seq: parse_seq(&parts[2]).expect("seq"),
            payload: parts[3].clone(),
        });
    }
}

fn hasher() -> BlockHasher {
    BlockHasher::new(16, HashAlgo::Xxh3).expect("hasher")
}

/// Engine hashes of `tokens`' full blocks, as reprise publishes them.
fn hashes(tokens: &[u32]) -> Vec<EngineHash> {
    hasher()
        .prompt_keys(tokens, b"")
        .into_iter()
        .map(EngineHash::of_key)
        .collect()
}

fn stored(evs: &[WireEvent]) -> (Vec<EngineHash>, Vec<u32>) {
    let mut h = Vec::new();
    let mut t = Vec::new();
    for e in evs {
        if let WireEvent::BlockStored(s) = e {
            h.extend(s.block_hashes.iter().cloned());
            t.extend(&s.token_ids);
        }
    }
    (h, t)
}

fn removed(evs: &[WireEvent]) -> Vec<EngineHash> {
    evs.iter()
        .flat_map(|e| match e {
            WireEvent::BlockRemoved(r) => r.block_hashes.clone(),
            _ => Vec::new(),
        })
        .collect()
}

fn events(frames: &[Frame]) -> Vec<WireEvent> {
    frames
        .iter()
        .flat_map(|f| decode_batch(&f.payload).expect("decodable batch").events)
        .collect()
}

/// Completion on token ids, one token out; returns the serving worker.
fn complete(srv: &Server, prompt: &[u32]) -> Resp {
    srv.post(
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 1, "temperature": 0}),
    )
}

fn prompt(base: u32) -> Vec<u32> {
    (base..base + 70).collect() // 4 full blocks of 16 and 6 tokens
}

#[test]
fn kv_events_stream_union_replay_and_a_dying_worker() {
    let srv = Server::start(&[
        "--devices",
        "cpu,cpu",
        "--policy",
        "round-robin",
        "--kv-events-endpoint",
        "tcp://*:*",
        "--kv-events-replay-endpoint",
        "tcp://*:*",
        "--inject-worker-panic",
        "1:3",
    ]);
    let (pub_ep, replay_ep) = kv_endpoints(&srv);
    let replay_ep = replay_ep.expect("replay endpoint in the ready line");
    let sub = Sub::connect(&pub_ep);
    let wait = Duration::from_secs(20);
    let (p, q, s, t, u) = (
        prompt(1000),
        prompt(2000),
        prompt(3000),
        prompt(4000),
        prompt(5000),
    );

    // P on worker 0: exactly its 4 full blocks, one chain from block 0.
    let r = complete(&srv, &p);
    assert_eq!((r.status, r.worker()), (200, 0), "{}", r.text());
    let f = sub.take(1, wait);
    let evs = events(&f);
    assert_eq!(stored(&evs), (hashes(&p), p[..64].to_vec()), "{evs:?}");
    let WireEvent::BlockStored(first) = &evs[0] else {
        panic!("{evs:?}")
    };
    assert_eq!(first.parent_block_hash, None);
    assert_eq!(
        (first.block_size, first.medium.as_deref()),
        (16, Some("GPU"))
    );
    // The topic is llm-d's convention.
    let topic = String::from_utf8(f[0].topic.clone()).unwrap();
    assert_eq!(topic, format!("kv@{}@SmolLM2-135M-Instruct.Q4_1", srv.addr));

    // P again, on worker 1: the union already holds it; nothing is published.
    let r = complete(&srv, &p);
    assert_eq!((r.status, r.worker()), (200, 1));
    sub.quiet(Duration::from_millis(700), "repeated prompt");

    // Q on 0, S on 1, T on 0: each its own blocks.
    let mut all = f;
    for (x, w) in [(&q, 0), (&s, 1), (&t, 0)] {
        let r = complete(&srv, x);
        assert_eq!((r.status, r.worker()), (200, w), "{}", r.text());
        let f = sub.take(1, wait);
        assert_eq!(stored(&events(&f)).0, hashes(x));
        all.extend(f);
    }
    // U on worker 1, whose third step panics: its blocks go, except those worker 0
    // also holds (P's): S's blocks are removed, nothing else.
    let r = complete(&srv, &u);
    assert_eq!((r.status, r.worker()), (500, 1), "{}", r.text());
    let f = sub.take(1, wait);
    let evs = events(&f);
    let mut want = hashes(&s);
    let mut got = removed(&evs);
    want.sort();
    got.sort();
    assert_eq!(got, want, "{evs:?}");
    assert_eq!(stored(&evs).0, Vec::new());
    all.extend(f);
    sub.quiet(Duration::from_millis(300), "after the removal");

    // Contiguous numbers from 0, one topic.
    let seqs: Vec<u64> = all.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, (0..all.len() as u64).collect::<Vec<_>>());
    assert!(all.iter().all(|f| f.topic == all[0].topic));

    // Replay from 0 returns every batch byte for byte, then the end marker; from 3, the rest.
    assert_eq!(replay(&replay_ep, 0), all);
    assert_eq!(replay(&replay_ep, 3), all[3..].to_vec());
    assert_eq!(replay(&replay_ep, 99), Vec::new());

    // What an outside router builds from the stream: P, Q and T cached, S gone.
    let index = PreciseIndex::new(1, 16);
    let mut stream = RemoteStream::new(hasher());
    for f in &all {
        let mut out = Vec::new();
        assert_eq!(
            stream.offer(f.seq, &f.payload, false, &mut out).unwrap(),
            Offer::Applied
        );
        index.apply(0, &out).unwrap();
    }
    let run = |x: &[u32]| {
        let mut o = [0usize];
        index.match_prefix(&hasher().prompt_keys(x, b""), 1, &mut o);
        o[0]
    };
    assert_eq!(
        [run(&p), run(&q), run(&s), run(&t), run(&u)],
        [4, 4, 0, 4, 0]
    );
}

#[test]
fn kv_events_in_the_array_encoding_and_a_cache_salt() {
    let srv = Server::start(&[
        "--devices",
        "cpu",
        "--kv-events-endpoint",
        "tcp://127.0.0.1:*",
        "--kv-events-format",
        "array",
        "--kv-events-topic",
        "custom-topic",
    ]);
    let (pub_ep, replay_ep) = kv_endpoints(&srv);
    assert_eq!(replay_ep, None);
    let sub = Sub::connect(&pub_ep);
    let p = prompt(7000);
    let r = srv.post(
        "/v1/completions",
        &json!({"prompt": p, "max_tokens": 1, "temperature": 0, "cache_salt": "tenant-a"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let f = sub.take(1, Duration::from_secs(20));
    assert_eq!(f[0].topic, b"custom-topic");
    // The batch is an array; its events are arrays with the tag first.
    let v = rmpv::decode::read_value(&mut &f[0].payload[..]).unwrap();
    let evs = v.as_array().unwrap()[1].as_array().unwrap();
    let first = evs[0].as_array().expect("positional event");
    assert_eq!(first[0].as_str(), Some("BlockStored"));
    assert_eq!(first.len(), 12);
    // Decoded: the salted chain, its salt in block 0's extra keys.
    let evs = events(&f);
    let WireEvent::BlockStored(s) = &evs[0] else {
        panic!("{evs:?}")
    };
    assert_eq!(s.cache_salt(), Some("tenant-a"));
    let keys: Vec<EngineHash> = hasher()
        .prompt_keys(&p, b"tenant-a")
        .into_iter()
        .map(EngineHash::of_key)
        .collect();
    assert_eq!(stored(&evs).0, keys);
}

/// The value of the series starting with `series` in a /metrics text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no series {series} in /metrics"))
        .trim()
        .parse()
        .expect("number")
}

fn sum_workers(text: &str, name: &str) -> f64 {
    (0..2)
        .map(|w| metric(text, &format!("{name}{{worker=\"{w}\"}}")))
        .sum()
}

#[test]
fn vllm_metric_names_agree_with_reprises_own() {
    let srv = Server::start(&[]);
    let text = long_text("metrics", 80);
    for i in 0..3 {
        let r = srv.post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": text}], "max_tokens": 4 + i, "temperature": 0}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = srv.post(
        "/v1/completions",
        &json!({"prompt": "Count: one two", "max_tokens": 3, "n": 2, "temperature": 0.8, "seed": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let m = srv.get("/metrics");
    assert_eq!(m.status, 200);
    let t = m.text();
    let l = "{engine=\"0\",model_name=\"SmolLM2-135M-Instruct.Q4_1\"}";
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:prompt_tokens_total",
        "vllm:prompt_tokens_cached_total",
        "vllm:generation_tokens_total",
        "vllm:num_preemptions_total",
    ] {
        metric(&t, &format!("{name}{l}"));
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        assert!(t.contains(&format!("# TYPE {name} {kind}")), "{name}");
    }
    for h in [
        "vllm:iteration_tokens_total",
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
        "vllm:request_time_per_output_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:request_prefill_time_seconds",
        "vllm:request_decode_time_seconds",
        "vllm:request_inference_time_seconds",
        "vllm:request_prompt_tokens",
        "vllm:request_generation_tokens",
        "vllm:request_params_max_tokens",
    ] {
        assert!(t.contains(&format!("# TYPE {h} histogram")), "{h}");
        let count = metric(&t, &format!("{h}_count{l}"));
        assert!(count >= 4.0, "{h}: {count} observations");
    }
    // The same figures under both names.
    for (v, r) in [
        ("vllm:prompt_tokens_total", "reprise:prompt_tokens_total"),
        (
            "vllm:generation_tokens_total",
            "reprise:generation_tokens_total",
        ),
        (
            "vllm:prefix_cache_queries_total",
            "reprise:prefix_cache_queries_total",
        ),
        (
            "vllm:prefix_cache_hits_total",
            "reprise:prefix_cache_hits_total",
        ),
        (
            "vllm:num_preemptions_total",
            "reprise:num_preemptions_total",
        ),
        ("vllm:num_requests_running", "reprise:num_requests_running"),
    ] {
        assert_eq!(metric(&t, &format!("{v}{l}")), sum_workers(&t, r), "{v}");
    }
    for h in [
        (
            "vllm:time_to_first_token_seconds",
            "reprise:time_to_first_token_seconds",
        ),
        (
            "vllm:e2e_request_latency_seconds",
            "reprise:e2e_request_latency_seconds",
        ),
        (
            "vllm:request_queue_time_seconds",
            "reprise:request_queue_time_seconds",
        ),
    ] {
        for part in ["_count", "_sum"] {
            let v = metric(&t, &format!("{}{part}{l}", h.0));
            let r = sum_workers(&t, &format!("{}{part}", h.1));
            assert!((v - r).abs() < 1e-9, "{}{part}: {v} vs {r}", h.0);
        }
    }
    assert_eq!(
        metric(&t, &format!("vllm:e2e_request_latency_seconds_count{l}")),
        4.0
    );
    assert_eq!(
        metric(&t, "vllm:request_success_total{engine=\"0\",finished_reason=\"length\",model_name=\"SmolLM2-135M-Instruct.Q4_1\"}")
            + metric(&t, "vllm:request_success_total{engine=\"0\",finished_reason=\"stop\",model_name=\"SmolLM2-135M-Instruct.Q4_1\"}"),
        5.0,
        "3 chat choices + 2 completion choices"
    );
    // Repeated prompts hit the cache: the cached-token counter saw them.
    assert!(metric(&t, &format!("vllm:prompt_tokens_cached_total{l}")) > 0.0);
    let cfg = t
        .lines()
        .find(|l| l.starts_with("vllm:cache_config_info{"))
        .expect("cache_config_info");
    assert!(
        cfg.contains("block_size=\"16\"") && cfg.ends_with(" 1"),
        "{cfg}"
    );
    assert!(cfg.contains("num_gpu_blocks=\""), "{cfg}");
}

#[test]
fn render_version_and_ping() {
    let srv = shared();
    let (_, tok) = srv.ok("/tokenize", &json!({"prompt": "Hello there"}));
    let (r, v) = srv.ok(
        "/v1/completions/render",
        &json!({"prompt": ["Hello there", [1, 2, 3]], "max_tokens": 5, "cache_salt": "s"}),
    );
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    let list = v.as_array().expect("a list, one per prompt");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["token_ids"], tok["tokens"]);
    assert_eq!(list[1]["token_ids"], json!([1, 2, 3]));
    assert_eq!(list[0]["sampling_params"]["max_tokens"], 5);
    assert_eq!(list[0]["cache_salt"], "s");
    assert!(list[0]["request_id"]
        .as_str()
        .is_some_and(|s| s.starts_with("cmpl-")));
    let messages = json!([{"role": "user", "content": "What is 2+2?"}]);
    let (_, tok) = srv.ok("/tokenize", &json!({"messages": messages}));
    let (_, v) = srv.ok(
        "/v1/chat/completions/render",
        &json!({"messages": messages}),
    );
    assert_eq!(v["token_ids"], tok["tokens"]);
    assert_eq!(v["model"], "SmolLM2-135M-Instruct.Q4_1");
    // Validated as the generating endpoints are.
    assert_error(
        &srv.post(
            "/v1/completions/render",
            &json!({"prompt": "x", "top_p": 7}),
        ),
        400,
        "top_p",
    );
    assert_error(
        &srv.post("/v1/chat/completions/render", &json!({"messages": []})),
        400,
        "messages",
    );
    assert_error(
        &srv.post(
            "/v1/completions/render",
            &json!({"prompt": "x", "model": "other"}),
        ),
        404,
        "model",
    );
    let (_, v) = srv.ok_get("/version");
    assert!(v["version"].as_str().is_some_and(|s| !s.is_empty()));
    for method in ["GET", "POST"] {
        let r = request(&srv.addr, method, "/ping", &[], b"");
        assert_eq!(r.status, 200, "{method} /ping");
        assert!(r.body.is_empty());
    }
}

/// `reprise serve ARGS` must fail: returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .arg("serve")
        .args(["--port", "0"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run reprise");
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_kv_event_options_are_one_line_and_a_non_zero_exit() {
    for (args, needle) in [
        (
            &["--kv-events-endpoint", "localhost:5557"][..],
            "--kv-events-endpoint",
        ),
        (
            &["--kv-events-endpoint", "tcp://*:70000"][..],
            "invalid port",
        ),
        (
            &[
                "--kv-events-format",
                "json",
                "--kv-events-endpoint",
                "tcp://*:*",
            ][..],
            "--kv-events-format",
        ),
        (
            &["--kv-events-replay-endpoint", "tcp://*:*"][..],
            "--kv-events-endpoint",
        ),
    ] {
        let err = fails(args);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(
            lines[0].starts_with("reprise: error:") && lines[0].contains(needle),
            "{args:?}: {err}"
        );
    }
    // A port in use: the bind fails once the model is loaded, with the reason.
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let ep = format!("tcp://*:{port}");
    let err = fails(&["--devices", "cpu", "--kv-events-endpoint", &ep]);
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(
        last.starts_with("reprise: error: --kv-events-endpoint") && last.contains("in use"),
        "{err}"
    );
}
