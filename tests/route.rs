//! End-to-end tests of `reprise route` in front of real `reprise serve` processes
//! (one CPU worker each, KV events and replay on ports picked at run time): prefixes
//! follow the worker that holds them, SSE passes through, a killed worker costs no
//! request and comes back with its old blocks forgotten.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;

fn worker() -> Server {
    Server::start(&[
        "--devices",
        "cpu",
        "--kv-events-endpoint",
        "tcp://*:*",
        "--kv-events-replay-endpoint",
        "tcp://*:*",
    ])
}

/// `--worker` spec of a running server.
fn spec(w: &Server) -> String {
    let (events, replay) = kv_endpoints(w);
    format!(
        "http://{},events={events},replay={}",
        w.addr,
        replay.expect("replay endpoint")
    )
}

fn route(workers: &[&Server]) -> Server {
    let specs: Vec<String> = workers.iter().map(|w| spec(w)).collect();
    let mut args: Vec<&str> = Vec::new();
    for s in &specs {
        args.extend(["--worker", s.as_str()]);
    }
    Server::spawn_cmd("route", &args, false)
}

/// The value of `series` (name and labels) in `srv`'s /metrics.
fn metric(srv: &Server, series: &str) -> f64 {
    let m = srv.get("/metrics");
    assert_eq!(m.status, 200);
    m.text()
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{}", m.text()))
        .trim()
        .parse()
        .expect("number")
}

/// Waits up to `within` for `cond`.
fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cached(v: &Value) -> u64 {
    v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .expect("cached_tokens")
}

#[test]
fn prefixes_follow_the_worker_that_holds_them_and_sse_passes_through() {
    let (w0, w1) = (worker(), worker());
    // A prefix warmed straight on worker 1, before the router exists: its replay brings it.
    let warm = long_text("warmed directly", 120);
    let (_, v) = w1.ok(
        "/v1/completions",
        &json!({"prompt": format!("{warm} first"), "max_tokens": 2, "temperature": 0}),
    );
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    let r = route(&[&w0, &w1]);
    eventually(
        Duration::from_secs(15),
        "worker 1's replayed blocks",
        || metric(&r, "reprise:worker_engine_blocks{worker=\"1\"}") > 0.0,
    );
    let (resp, v) = r.ok(
        "/v1/completions",
        &json!({"prompt": format!("{warm} second"), "max_tokens": 2, "temperature": 0}),
    );
    assert_eq!(resp.worker(), 1, "{v}");
    assert!(
        cached(&v) >= 16 * ((prompt_tokens - 2) / 16).saturating_sub(1),
        "cached_tokens from worker 1's cache: {v} (warm prompt {prompt_tokens} tokens)"
    );

    // Groups of follow-ups stick to their first request's worker.
    let mut used = std::collections::HashSet::new();
    for g in 0..4 {
        let shared = long_text(&format!("group {g} shares this context"), 70);
        let first = r.post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": format!("{shared} Q0")}], "max_tokens": 2, "temperature": 0}),
        );
        assert_eq!(first.status, 200, "{}", first.text());
        let home = first.worker();
        used.insert(home);
        for q in 1..4 {
            let (resp, v) = r.ok(
                "/v1/chat/completions",
                &json!({"messages": [{"role": "user", "content": format!("{shared} Q{q}")}], "max_tokens": 2, "temperature": 0}),
            );
            assert_eq!(resp.worker(), home, "group {g} follow-up {q}");
            assert!(
                cached(&v) >= 64,
                "group {g} follow-up {q} hit the cache: {v}"
            );
        }
    }

    // SSE with usage through the router: chunks as the worker sends them, then [DONE].
    let resp = r.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 6,
                "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream")));
    resp.worker();
    let chunks = resp.chunks();
    let usage = chunks.last().expect("chunks")["usage"].clone();
    assert_eq!(usage["completion_tokens"], 6, "{usage}");
    // A character spread over several tokens arrives in one chunk, so six
    // tokens make one to six content chunks between the role and the finish.
    assert_eq!(
        chunks[0]["choices"][0]["delta"]["role"], "assistant",
        "{chunks:?}"
    );
    let finish = &chunks[chunks.len() - 2]["choices"][0];
    assert_eq!(finish["finish_reason"], "length", "{chunks:?}");
    let content = chunks.len() - 3;
    assert!(
        (1..=6).contains(&content),
        "role, tokens, finish, usage: {chunks:?}"
    );

    // The router serves models, health, tokenize and metrics itself.
    let (_, m) = r.ok_get("/v1/models");
    assert_eq!(m["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");
    let (_, t) = r.ok("/tokenize", &json!({"prompt": "hello world"}));
    let (_, t1) = w0.ok("/tokenize", &json!({"prompt": "hello world"}));
    assert_eq!(t["tokens"], t1["tokens"]);
    let (_, h) = r.ok_get("/health");
    assert_eq!(h["workers_healthy"], 2);
    // Every request so far was a decision: the warmed prompt, 16 in groups, the stream.
    let decided = |w: usize| {
        metric(
            &r,
            &format!("reprise:router_decisions_total{{policy=\"cost\",worker=\"{w}\"}}"),
        )
    };
    assert!(decided(1) >= 1.0);
    assert!(decided(0) + decided(1) >= 18.0);
    // Bad input is the router's own 400, OpenAI-shaped; nothing is forwarded.
    assert_error(
        &r.post("/v1/chat/completions", &json!({"messages": 5})),
        400,
        "messages",
    );
    assert_error(
        &r.post("/v1/completions", &json!({"prompt": [1, -2]})),
        400,
        "prompt",
    );
    let _ = used;
    drop(r);

    // A workers file, re-read when it changes: one worker, then both.
    let file = std::env::temp_dir().join(format!("reprise-workers-{}.yaml", std::process::id()));
    let entry = |w: &Server| {
        let (events, replay) = kv_endpoints(w);
        format!(
            "- url: http://{}\n  events: {events}\n  replay: {}\n",
            w.addr,
            replay.unwrap()
        )
    };
    std::fs::write(&file, entry(&w0)).unwrap();
    let r = Server::spawn_cmd("route", &["--workers-file", file.to_str().unwrap()], false);
    assert_eq!(r.ok_get("/health").1["workers"], 1);
    // Rewritten (the modification time must move on coarse file systems).
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&file, entry(&w0) + &entry(&w1)).unwrap();
    eventually(
        Duration::from_secs(10),
        "the second worker from the file",
        || r.ok_get("/health").1["workers_healthy"] == 2,
    );
    // The rebuilt index replays worker 1's stream: the warmed prefix still goes there.
    eventually(
        Duration::from_secs(10),
        "worker 1's replayed blocks after the rebuild",
        || metric(&r, "reprise:worker_engine_blocks{worker=\"1\"}") > 0.0,
    );
    let (resp, _) = r.ok(
        "/v1/completions",
        &json!({"prompt": format!("{warm} third"), "max_tokens": 2, "temperature": 0}),
    );
    assert_eq!(resp.worker(), 1);
    // A broken rewrite keeps the current workers.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&file, "- url: not-a-url\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(r.ok_get("/health").1["workers"], 2);
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_killed_worker_costs_no_request_and_returns_with_its_blocks_forgotten() {
    let w0 = worker();
    let mut w1 = worker();
    let (events, replay) = kv_endpoints(&w1);
    let replay = replay.expect("replay");
    let port_of = |ep: &str| ep.rsplit(':').next().expect("port").to_string();
    let (http_port, ev_port, rp_port) = (
        w1.addr.rsplit(':').next().unwrap().to_string(),
        port_of(&events),
        port_of(&replay),
    );
    let r = route(&[&w0, &w1]);
    // Worker 1 caches a prefix through the router.
    let mut on_one = None;
    for i in 0..12 {
        let p = long_text(&format!("kill test prompt {i}"), 60);
        let resp = r.post(
            "/v1/completions",
            &json!({"prompt": p, "max_tokens": 2, "temperature": 0}),
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
        if resp.worker() == 1 {
            on_one = Some(p);
            break;
        }
    }
    let on_one = on_one.expect("some request reached worker 1");
    eventually(
        Duration::from_secs(10),
        "worker 1's blocks in the index",
        || metric(&r, "reprise:worker_engine_blocks{worker=\"1\"}") > 0.0,
    );

    // Requests in flight while worker 1 is SIGKILLed, and after: none fails.
    let inflight: Vec<_> = (0..6)
        .map(|i| {
            let addr = r.addr.clone();
            std::thread::spawn(move || {
                let body = json!({"prompt": long_text(&format!("in flight {i}"), 40), "max_tokens": 24, "temperature": 0});
                request(&addr, "POST", "/v1/completions", &[], body.to_string().as_bytes())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let _ = w1.child.kill();
    let _ = w1.child.wait();
    for h in inflight {
        let resp = h.join().expect("request thread");
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    for i in 0..4 {
        let (resp, _) = r.ok(
            "/v1/completions",
            &json!({"prompt": format!("after the kill {i}"), "max_tokens": 2}),
        );
        assert_eq!(resp.worker(), 0);
    }
    eventually(Duration::from_secs(2), "worker 1 out of routing", || {
        r.ok_get("/health").1["workers_healthy"] == 1
    });

    // Restarted on the same ports (its KV-event numbers back at 0): it comes back,
    // its old blocks forgotten, and gets traffic again.
    let ev = format!("tcp://*:{ev_port}");
    let rp = format!("tcp://*:{rp_port}");
    let w1 = Server::start(&[
        "--devices",
        "cpu",
        "--port",
        &http_port,
        "--kv-events-endpoint",
        &ev,
        "--kv-events-replay-endpoint",
        &rp,
    ]);
    eventually(Duration::from_secs(20), "worker 1 back in routing", || {
        r.ok_get("/health").1["workers_healthy"] == 2
    });
    eventually(
        Duration::from_secs(5),
        "worker 1's old blocks forgotten",
        || metric(&r, "reprise:worker_engine_blocks{worker=\"1\"}") == 0.0,
    );
    let (resp, v) = r.ok(
        "/v1/completions",
        &json!({"prompt": on_one, "max_tokens": 2, "temperature": 0}),
    );
    if resp.worker() == 1 {
        assert_eq!(cached(&v), 0, "a restarted worker has nothing cached");
    }
    let mut back = false;
    for i in 0..10 {
        let (resp, _) = r.ok(
            "/v1/completions",
            &json!({"prompt": long_text(&format!("after the restart {i}"), 30), "max_tokens": 2}),
        );
        back |= resp.worker() == 1;
    }
    assert!(back, "the restarted worker gets traffic again");
    drop(w1);
}

/// One streamed completion's outcome under chaos.
struct Outcome {
    status: u16,
    worker: Option<usize>,
    done: bool,
    error_event: bool,
    text: String,
}

fn stream_once(addr: &str, i: usize) -> Outcome {
    let body = json!({"prompt": long_text(&format!("chaos load {i}"), 20 + i % 30),
        "max_tokens": 16, "temperature": 0, "stream": true});
    let mut msg = head("POST", "/v1/completions", &[], body.to_string().len()).into_bytes();
    msg.extend_from_slice(body.to_string().as_bytes());
    // A stream that neither ends nor errors within a minute is a hang.
    let resp = exchange(addr, msg, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("stream {i}: {e} (a hang)"));
    let events = resp.events();
    Outcome {
        status: resp.status,
        worker: resp.header("x-reprise-worker").and_then(|w| w.parse().ok()),
        done: events.last().map(String::as_str) == Some("[DONE]"),
        error_event: events.iter().any(|e| {
            serde_json::from_str::<Value>(e).is_ok_and(|v| v["error"]["message"].is_string())
        }),
        text: resp.text(),
    }
}

fn signal(srv: &Server, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &srv.pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {}", srv.pid);
}

/// Three workers under steady streaming load through `reprise route`: one killed -9
/// mid-stream, another stopped (SIGSTOP) past the health checks and resumed, the
/// killed one restarted on its ports. Streams already flowing on the killed worker end
/// with an error event (never a hang); every other request succeeds; the stopped worker
/// leaves routing and comes back; the restarted one's old blocks are gone from the
/// index before it serves (a prompt cached only there is a miss), with and without
/// KV-event replay.
fn chaos(replay: bool) {
    let start = |ports: Option<(&str, &str, &str)>| {
        let mut args: Vec<String> = vec!["--devices".into(), "cpu".into()];
        let (http, ev, rp) = ports.unwrap_or(("0", "*", "*"));
        args.extend(["--port".into(), http.into()]);
        args.extend(["--kv-events-endpoint".into(), format!("tcp://*:{ev}")]);
        if replay {
            args.extend([
                "--kv-events-replay-endpoint".into(),
                format!("tcp://*:{rp}"),
            ]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start(&refs)
    };
    let spec_of = |w: &Server| {
        let (events, rp) = kv_endpoints(w);
        match rp {
            Some(rp) if replay => format!("http://{},events={events},replay={rp}", w.addr),
            _ => format!("http://{},events={events}", w.addr),
        }
    };
    let (w0, w1, mut w2) = (start(None), start(None), start(None));
    let specs = [spec_of(&w0), spec_of(&w1), spec_of(&w2)];
    let mut args: Vec<&str> = Vec::new();
    for s in &specs {
        args.extend(["--worker", s.as_str()]);
    }
    let r = Server::spawn_cmd("route", &args, false);
    let port_of = |ep: &str| ep.rsplit(':').next().expect("port").to_string();
    let (events2, replay2) = kv_endpoints(&w2);
    let ports2 = (
        w2.addr.rsplit(':').next().expect("port").to_string(),
        port_of(&events2),
        replay2.as_deref().map(port_of).unwrap_or_default(),
    );

    // A prompt whose blocks only worker 2 holds.
    let mut on_two = None;
    for i in 0..30 {
        let p = long_text(&format!("chaos prefix {i}"), 80);
        let (resp, _) = r.ok("/v1/completions", &json!({"prompt": p, "max_tokens": 1}));
        if resp.worker() == 2 {
            on_two = Some(p);
            break;
        }
    }
    let on_two = on_two.expect("a request reached worker 2");
    eventually(
        Duration::from_secs(10),
        "worker 2's blocks in the index",
        || metric(&r, "reprise:worker_engine_blocks{worker=\"2\"}") > 0.0,
    );
    // The blocks the router matched on the worker it chose, for one request of `p`.
    let matched = |p: &str| {
        let before = metric(&r, "reprise:router_matched_blocks_sum{policy=\"cost\"}");
        let (resp, v) = r.ok("/v1/completions", &json!({"prompt": p, "max_tokens": 1}));
        let m = metric(&r, "reprise:router_matched_blocks_sum{policy=\"cost\"}") - before;
        (resp.worker(), m, cached(&v))
    };
    let (w, m, _) = matched(&on_two);
    assert!(
        w == 2 && m > 0.0,
        "a hit on worker 2 first: worker {w}, {m} blocks"
    );

    // Steady streaming load from 4 clients.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|c| {
            let (addr, stop) = (r.addr.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut outs = Vec::new();
                let mut i = c * 10_000;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    outs.push(stream_once(&addr, i));
                    i += 1;
                }
                outs
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = w2.child.kill();
    let _ = w2.child.wait();
    eventually(Duration::from_secs(3), "worker 2 out of routing", || {
        r.ok_get("/health").1["workers_healthy"] == 2
    });
    std::thread::sleep(Duration::from_millis(500));
    signal(&w1, "-STOP");
    eventually(
        Duration::from_secs(5),
        "the stopped worker out of routing",
        || r.ok_get("/health").1["workers_healthy"] == 1,
    );
    std::thread::sleep(Duration::from_millis(1500));
    signal(&w1, "-CONT");
    eventually(Duration::from_secs(5), "the resumed worker back", || {
        r.ok_get("/health").1["workers_healthy"] == 2
    });
    // The load stops so that nothing new lands on worker 2 before the check below.
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outs: Vec<Outcome> = load
        .into_iter()
        .flat_map(|h| h.join().expect("load thread"))
        .collect();
    let w2 = start(Some((&ports2.0, &ports2.1, &ports2.2)));
    eventually(Duration::from_secs(20), "worker 2 back in routing", || {
        r.ok_get("/health").1["workers_healthy"] == 3
    });
    // Its old blocks left the index when it came back, before it served anything: the
    // prompt only the dead process held is a miss everywhere.
    let (w, m, c) = matched(&on_two);
    assert_eq!(m, 0.0, "stale hit: {m} blocks matched on worker {w}");
    if w == 2 {
        assert_eq!(c, 0, "a restarted worker has nothing cached");
    }
    let failed: Vec<&Outcome> = outs
        .iter()
        .filter(|o| !(o.status == 200 && o.done && !o.error_event))
        .collect();
    for o in &failed {
        assert!(
            o.status == 200 && o.worker == Some(2) && o.error_event,
            "only streams flowing on the killed worker may fail, with an error event: status {} worker {:?}: {}",
            o.status,
            o.worker,
            o.text
        );
    }
    assert!(
        outs.len() > failed.len() + 8,
        "load kept flowing: {} streams, {} failed",
        outs.len(),
        failed.len()
    );
    eprintln!(
        "chaos (replay {replay}): {} streams, {} ended by the kill with an error event",
        outs.len(),
        failed.len()
    );
    drop(w2);
}

#[test]
fn chaos_under_route_with_replay() {
    chaos(true);
}

#[test]
fn chaos_under_route_without_replay() {
    chaos(false);
}
