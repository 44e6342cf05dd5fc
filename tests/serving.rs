//! The serving path under load and abuse, end to end against the real binary: what
//! the router sees during a long prefill, stop conditions as vLLM returns them, the
//! metrics' clocks, tokenization off the async runtime, limits, the step watchdog,
//! request ids, timeouts and the listener's connection limits.

mod support;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use support::*;

const C: &str = "/v1/completions";
const CHAT: &str = "/v1/chat/completions";

#[test]
fn a_burst_during_a_long_prefill_sees_the_busy_worker() {
    // The weighted score shares the burst (neither worker looks idle while it has
    // requests in hand); the cost policy sends it where no long prefill is ahead.
    for policy in ["precise", "cost"] {
        let (on_long, elsewhere) = burst_during_long_prefill(policy);
        eprintln!("{policy}: {on_long} on the busy worker, {elsewhere} elsewhere");
        match policy {
            "precise" => assert!(
                on_long.min(elsewhere) >= 4,
                "precise: {on_long} of 16 on the worker busy with the long prefill"
            ),
            _ => assert!(
                elsewhere >= 14,
                "cost: {on_long} of 16 queued behind the long prefill"
            ),
        }
    }
}

/// Sends a ~2,000-token prompt, then 16 short ones while it is prefilled; returns how
/// many of the short ones went to its worker and how many elsewhere.
fn burst_during_long_prefill(policy: &str) -> (usize, usize) {
    let srv = Server::start(&["--devices", "cpu,cpu", "--policy", policy]);
    // ~2000 tokens: one prefill step of a few seconds on whichever worker gets it.
    let long = json!({"prompt": long_text("long", 1700), "max_tokens": 1, "temperature": 0});
    let addr = srv.addr.clone();
    let first =
        std::thread::spawn(move || request(&addr, "POST", C, &[], long.to_string().as_bytes()));
    // Let it reach its worker and start the step.
    std::thread::sleep(Duration::from_millis(600));
    let burst: Vec<Value> = (0..16)
        .map(|i| json!({"prompt": format!("Request {i}: name a colour {}.", "please ".repeat(i)), "max_tokens": 1, "temperature": 0}))
        .collect();
    let addr = srv.addr.clone();
    let workers = parallel(burst, move |b| {
        let r = request(&addr, "POST", C, &[], b.to_string().as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
        r.worker()
    });
    let long_worker = {
        let r = first.join().expect("long request");
        assert_eq!(r.status, 200, "{}", r.text());
        r.worker()
    };
    let on_long = workers.iter().filter(|&&w| w == long_worker).count();
    (on_long, workers.len() - on_long)
}

#[test]
fn stop_tokens_and_strings_end_the_text_as_vllm_does() {
    let srv = shared();
    let hello = json!([{"role": "user", "content": "Say hello in one short sentence."}]);
    let run = |extra: Value| {
        let mut body = json!({"messages": hello, "max_tokens": 64, "temperature": 0, "skip_special_tokens": false});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        let (_, v) = srv.ok(CHAT, &body);
        v["choices"][0].clone()
    };
    // EOS ends the choice, its text stays out even with special tokens kept.
    let plain = run(json!({}));
    assert_eq!(plain["finish_reason"], "stop", "{plain}");
    assert_eq!(
        plain["stop_reason"],
        Value::Null,
        "EOS is not a stop reason"
    );
    let text = plain["message"]["content"].as_str().expect("content");
    assert!(!text.is_empty() && !text.contains("<|im_end|>"), "{text:?}");
    // ...unless the stop text is asked for.
    let kept = run(json!({"include_stop_str_in_output": true}));
    let kept_text = kept["message"]["content"].as_str().expect("content");
    assert_eq!(kept_text, format!("{text}<|im_end|>"));
    // A stop string: the text before it, or through it, and vLLM's stop_reason.
    let word = text
        .split_whitespace()
        .nth(1)
        .expect("a second word")
        .trim_matches(|c: char| !c.is_alphanumeric());
    let cut = run(json!({"stop": [word]}));
    assert_eq!(cut["finish_reason"], "stop");
    assert_eq!(cut["stop_reason"], word);
    let before = &text[..text.find(word).expect("word in text")];
    assert_eq!(cut["message"]["content"], before);
    let through = run(json!({"stop": [word], "include_stop_str_in_output": true}));
    assert_eq!(through["message"]["content"], format!("{before}{word}"));
    // min_tokens holds EOS back: the short answer goes on past it.
    let (_, long) = srv.ok(
        CHAT,
        &json!({"messages": hello, "max_tokens": 64, "temperature": 0, "min_tokens": 48}),
    );
    let made = long["usage"]["completion_tokens"].as_u64().expect("usage");
    let short = text.len();
    assert!(made >= 48, "{long}");
    assert!(
        long["choices"][0]["message"]["content"]
            .as_str()
            .expect("text")
            .len()
            > short
    );
    // A stop token id is reported as the reason, its text left out.
    let (_, t) = srv.ok(
        "/tokenize",
        &json!({"prompt": text, "add_special_tokens": false}),
    );
    let toks: Vec<u64> = t["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|x| x.as_u64().expect("id"))
        .collect();
    let at = (1..toks.len())
        .find(|&i| !toks[..i].contains(&toks[i]))
        .expect("a token not seen before it");
    let by_id = run(json!({"stop_token_ids": [toks[at]], "skip_special_tokens": true}));
    assert_eq!(by_id["finish_reason"], "stop", "{by_id}");
    assert_eq!(by_id["stop_reason"], json!(toks[at]));
    let (_, d) = srv.ok("/detokenize", &json!({"tokens": toks[..at]}));
    assert_eq!(by_id["message"]["content"], d["prompt"]);
}

#[test]
fn n_choices_stopped_by_a_string_make_no_more_tokens_than_they_return() {
    let srv = Server::start(&["--devices", "cpu"]);
    let before = metric_total(&srv, "vllm:generation_tokens_total");
    let (_, v) = srv.ok(
        C,
        &json!({"prompt": "Write a long story about a dragon and a knight.", "n": 2, "max_tokens": 200,
            "temperature": 1.0, "seed": 7, "stop": ["e"]}),
    );
    let choices = v["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 2);
    for c in choices {
        assert_eq!(c["finish_reason"], "stop", "{c}");
        assert_eq!(c["stop_reason"], "e");
        assert!(!c["text"].as_str().expect("text").contains('e'));
    }
    let returned = v["usage"]["completion_tokens"].as_f64().expect("usage");
    // Both choices stopped early: far from 2 × 200.
    assert!(returned < 100.0, "{v}");
    let made = metric_total(&srv, "vllm:generation_tokens_total") - before;
    assert_eq!(made, returned, "tokens generated vs returned: {v}");
    assert!(v["usage"]["prompt_tokens_details"]["cached_tokens"].is_u64());
}

#[test]
fn ttft_is_measured_from_arrival_for_queued_requests() {
    // One worker running one sequence at a time: five of the six wait in its queue.
    let srv = Server::start(&["--devices", "cpu", "--max-num-seqs", "1"]);
    let ttft_sum = |srv: &Server| metric_total(srv, "vllm:time_to_first_token_seconds_sum");
    let queue_count = |srv: &Server| metric_total(srv, "vllm:request_queue_time_seconds_count");
    let (ttft0, queue0) = (ttft_sum(&srv), queue_count(&srv));
    let addr = srv.addr.clone();
    let client: Vec<f64> = parallel((0..6).collect::<Vec<usize>>(), move |i| {
        let body = json!({"prompt": long_text(&format!("queued {i}"), 150), "max_tokens": 8,
            "temperature": 0, "ignore_eos": true, "stream": true});
        let t0 = Instant::now();
        let mut s = Stream::open(&addr, C, &body);
        s.read_until("data: {", 1);
        let ttft = t0.elapsed().as_secs_f64();
        let r = s.finish();
        assert_eq!(r.status, 200);
        ttft
    });
    let client_sum: f64 = client.iter().sum();
    let server_sum = ttft_sum(&srv) - ttft0;
    eprintln!("TTFT sums: server {server_sum:.3} s, client {client_sum:.3} s");
    assert!(
        server_sum >= 0.9 * client_sum && server_sum <= client_sum * 1.01,
        "server TTFT sum {server_sum:.3} s vs client {client_sum:.3} s ({client:?})"
    );
    assert_eq!(queue_count(&srv) - queue0, 6.0, "a queue time per request");
}

#[test]
fn health_stays_fast_while_huge_prompts_are_tokenized() {
    let srv = Server::start(&["--devices", "cpu"]);
    // ~6 MB each: seconds of tokenizer work, then a 400 (far past the context).
    let huge = long_text("huge", 900_000);
    assert!(huge.len() > 6_000_000);
    let addr = srv.addr.clone();
    let t0 = Instant::now();
    let big = std::thread::spawn(move || {
        parallel(vec![huge.clone(), huge.clone(), huge], move |p| {
            let body = json!({"prompt": p, "max_tokens": 1});
            let r = request(&addr, "POST", C, &[], body.to_string().as_bytes());
            (r.status, Instant::now())
        })
    });
    let mut worst = Duration::ZERO;
    let mut polls = 0;
    while !big.is_finished() {
        let t = Instant::now();
        let r = srv.get("/health");
        worst = worst.max(t.elapsed());
        assert_eq!(r.status, 200);
        polls += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let results = big.join().expect("big requests");
    let busy = results
        .iter()
        .map(|(_, done)| done.duration_since(t0))
        .max()
        .unwrap_or_default();
    for (status, _) in &results {
        assert_eq!(*status, 400, "a prompt past the context is refused");
    }
    eprintln!("/health: worst {worst:?} over {polls} polls while tokenizing for {busy:?}");
    assert!(
        busy > Duration::from_secs(1) && polls >= 10,
        "the prompts must keep the tokenizer busy while /health is polled ({busy:?}, {polls} polls)"
    );
    assert!(
        worst < Duration::from_millis(500),
        "/health took {worst:?} while prompts were tokenized"
    );
}

#[test]
fn limits_are_400s_that_name_the_field() {
    let srv = Server::start(&[
        "--devices",
        "cpu",
        "--max-logprobs",
        "5",
        "--max-num-seqs",
        "8",
    ]);
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let stops: Vec<String> = (0..33).map(|i| format!("s{i}")).collect();
    let bias: serde_json::Map<String, Value> =
        (0..1025).map(|i| (i.to_string(), json!(1))).collect();
    let ids: Vec<u32> = vec![1; 257];
    let cases = [
        (C, json!({"prompt": "hi", "n": 9}), "n"),
        (C, json!({"prompt": "hi", "n": 129}), "n"),
        (C, json!({"prompt": "hi", "logprobs": 6}), "logprobs"),
        (
            CHAT,
            json!({"messages": msgs, "logprobs": true, "top_logprobs": 6}),
            "top_logprobs",
        ),
        (C, json!({"prompt": "hi", "stop": stops}), "stop"),
        (
            C,
            json!({"prompt": "hi", "stop": ["x".repeat(5000)]}),
            "stop",
        ),
        (
            C,
            json!({"prompt": "hi", "stop_token_ids": ids}),
            "stop_token_ids",
        ),
        (
            C,
            json!({"prompt": "hi", "max_tokens": 100_000}),
            "max_tokens",
        ),
        (C, json!({"prompt": "hi", "logit_bias": bias}), "logit_bias"),
        (
            C,
            json!({"prompt": "hi", "use_beam_search": true}),
            "use_beam_search",
        ),
        (C, json!({"prompt": "hi", "min_p": 1.5}), "min_p"),
        (
            C,
            json!({"prompt": "hi", "min_tokens": 9, "max_tokens": 8}),
            "min_tokens",
        ),
        (
            CHAT,
            json!({"messages": msgs, "response_format": {"type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}),
            "response_format",
        ),
        (
            CHAT,
            json!({"messages": msgs, "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            "tool_choice",
        ),
        (C, json!({"prompt": "hi", "temprature": 0.2}), "temprature"),
    ];
    for (path, body, param) in cases {
        let e = assert_error(&srv.post(path, &body), 400, param);
        assert_eq!(e["param"], param, "{body}");
    }
    // At the limits themselves, requests are served.
    let (_, v) = srv.ok(
        C,
        &json!({"prompt": "hi", "n": 8, "logprobs": 5, "max_tokens": 2}),
    );
    assert_eq!(v["choices"].as_array().map(Vec::len), Some(8));
    assert_eq!(
        v["choices"][0]["logprobs"]["top_logprobs"][0]
            .as_object()
            .map(|o| o.len()),
        Some(5)
    );
}

#[test]
fn a_hung_step_fails_its_worker_within_the_step_timeout() {
    let srv = Server::start(&[
        "--devices",
        "cpu,cpu",
        "--policy",
        "round-robin",
        "--step-timeout",
        "2",
        "--inject-worker-hang",
        "0:1",
    ]);
    let body = json!({"prompt": "Hello there", "max_tokens": 4, "temperature": 0});
    let addr = srv.addr.clone();
    let t0 = Instant::now();
    let rs = parallel(vec![body.clone(), body.clone()], move |b| {
        request(&addr, "POST", C, &[], b.to_string().as_bytes())
    });
    let took = t0.elapsed();
    let failed: Vec<&Resp> = rs.iter().filter(|r| r.status == 500).collect();
    assert_eq!(
        failed.len(),
        1,
        "{:?}",
        rs.iter().map(Resp::text).collect::<Vec<_>>()
    );
    assert_eq!(failed[0].worker(), 0);
    assert!(
        failed[0].text().contains("step-timeout"),
        "{}",
        failed[0].text()
    );
    assert!(took < Duration::from_secs(6), "failed after {took:?}");
    // The hung worker is out of routing; the other keeps serving.
    for _ in 0..4 {
        let (r, _) = srv.ok(C, &body);
        assert_eq!(r.worker(), 1);
    }
    let (_, h) = srv.ok_get("/health");
    assert_eq!(h["workers_alive"], 1);
}

#[test]
fn request_ids_are_echoed_or_made_up_and_name_the_response() {
    let srv = shared();
    let body = json!({"prompt": "hi", "max_tokens": 2});
    let r = request(
        &srv.addr,
        "POST",
        C,
        &[("x-request-id", "abc-123")],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    assert_eq!(r.json()["id"], "cmpl-abc-123");
    let chat =
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": true});
    let r = request(
        &srv.addr,
        "POST",
        CHAT,
        &[("x-request-id", "chat-9")],
        chat.to_string().as_bytes(),
    );
    assert_eq!(r.header("x-request-id"), Some("chat-9"));
    for c in r.chunks() {
        assert_eq!(c["id"], "chatcmpl-chat-9");
    }
    // None sent: one is made up, and the response is named after it.
    let (r, v) = srv.ok(C, &body);
    let made = r.header("x-request-id").expect("generated id").to_string();
    assert!(!made.is_empty());
    assert_eq!(v["id"], format!("cmpl-{made}"));
    // vLLM's body field counts when there is no header; every response carries an id.
    let (r, v) = srv.ok(
        C,
        &json!({"prompt": "hi", "max_tokens": 1, "request_id": "from-body"}),
    );
    assert_eq!(r.header("x-request-id"), Some("from-body"));
    assert_eq!(v["id"], "cmpl-from-body");
    assert!(srv.get("/health").header("x-request-id").is_some());
    let bad = request(
        &srv.addr,
        "GET",
        "/health",
        &[("x-request-id", &"x".repeat(300))],
        b"",
    );
    assert_error(&bad, 400, "an over-long request id");
}

#[test]
fn request_timeout_cancels_and_answers_504() {
    let srv = Server::start(&["--devices", "cpu", "--request-timeout", "1"]);
    let body = json!({"prompt": "Count to a million:", "max_tokens": 3000, "ignore_eos": true});
    let t0 = Instant::now();
    let e = assert_error(&srv.post(C, &body), 504, "timeout");
    assert_eq!(e["code"], "request_timeout");
    assert!(t0.elapsed() < Duration::from_secs(4));
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let r = srv.post(C, &stream);
    assert_eq!(r.status, 200);
    let events = r.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let err: Value = serde_json::from_str(&events[events.len() - 2]).expect("error event");
    assert_eq!(err["error"]["code"], "request_timeout");
    // The cancelled requests gave their KV blocks back.
    let t = Instant::now();
    while metric_total(&srv, "vllm:kv_cache_usage_perc") > 0.0 {
        assert!(t.elapsed() < Duration::from_secs(5), "KV blocks not freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_listener_bounds_connections_and_header_time() {
    let srv = Server::start(&[
        "--devices",
        "cpu",
        "--max-connections",
        "2",
        "--header-read-timeout",
        "1",
    ]);
    let mut idle: Vec<_> = (0..2).map(|_| connect(&srv.addr)).collect();
    std::thread::sleep(Duration::from_millis(100));
    // A third connection is told why and closed.
    let mut third = connect(&srv.addr);
    let mut raw = Vec::new();
    third.read_to_end(&mut raw).expect("read refusal");
    let r = parse_response(&raw);
    assert_error(&r, 503, "over the connection limit");
    assert!(r.text().contains("--max-connections"));
    // Connections that never send their headers are cut off after the timeout...
    let t0 = Instant::now();
    for s in &mut idle {
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n");
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert!(
            n == 0 || String::from_utf8_lossy(&buf[..n]).contains("408"),
            "expected the server to close the connection"
        );
    }
    let waited = t0.elapsed();
    assert!(waited < Duration::from_secs(4), "closed after {waited:?}");
    // ...which frees their slots.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(srv.get("/health").status, 200);
}
