//! End-to-end tests: start the real `reprise` binary with the default model on a
//! free port and talk HTTP/1.1 to it over a raw `TcpStream` (raw so that invalid
//! UTF-8, broken JSON and half-read streams can be sent exactly as a bad client
//! would).
//!
//! Most tests share one default server (`cpu,cpu`, policy `cost`) to keep the
//! run short; tests that need other options, or that kill, flood or shut down a
//! server, start their own.

mod support;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

// ---------------------------------------------------------------------------
// Correctness through the API
// ---------------------------------------------------------------------------

#[test]
fn golden_cases_give_their_greedy_text() {
    let srv = shared();
    let g = golden();
    let max_new = g["generation"]["max_new_tokens"].as_u64().expect("max_new");
    let cases = g["cases"].as_array().expect("cases").clone();
    assert!(cases.len() >= 8);
    // Every case three ways at once (chat or text prompt, token-id prompt), so the
    // batch also checks that greedy output does not depend on its neighbours.
    let mut reqs = Vec::new();
    for c in &cases {
        let common = json!({"max_tokens": max_new, "temperature": 0});
        let mut by_ids = common.clone();
        by_ids["prompt"] = c["prompt_token_ids"].clone();
        reqs.push((c.clone(), "/v1/completions", by_ids));
        if c["kind"] == "chat" {
            let mut chat = common.clone();
            chat["messages"] = c["messages"].clone();
            reqs.push((c.clone(), "/v1/chat/completions", chat));
        }
        let mut text = common;
        text["prompt"] = c["rendered_prompt"].clone();
        reqs.push((c.clone(), "/v1/completions", text));
    }
    let addr = srv.addr.clone();
    let results = parallel(reqs, move |(c, path, body)| {
        let r = request(&addr, "POST", path, &[], body.to_string().as_bytes());
        (c, path, r)
    });
    for (c, path, r) in results {
        assert_eq!(r.status, 200, "{} {path}: {}", c["id"], r.text());
        assert!(r.worker() < 2);
        let v = r.json();
        let choice = &v["choices"][0];
        let text = if path.contains("chat") {
            choice["message"]["content"].as_str()
        } else {
            choice["text"].as_str()
        }
        .expect("text");
        assert_eq!(text, c["greedy_text"], "case {} via {path}", c["id"]);
        // The golden file says `eos` where OpenAI says `stop`.
        let want_finish = if c["finish_reason"] == "eos" {
            json!("stop")
        } else {
            c["finish_reason"].clone()
        };
        assert_eq!(choice["finish_reason"], want_finish, "case {}", c["id"]);
        let n_prompt = c["n_prompt_tokens"].as_u64().expect("n_prompt");
        assert_eq!(v["usage"]["prompt_tokens"], n_prompt, "case {}", c["id"]);
        if c["finish_reason"] == "length" {
            assert_eq!(v["usage"]["completion_tokens"], max_new);
        }
        let u = &v["usage"];
        assert_eq!(
            u["total_tokens"].as_u64(),
            Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
        );
    }
}

#[test]
fn repeated_long_prompt_reports_cached_tokens() {
    // One worker of its own: on the busy shared server the router may rightly send
    // the repeat elsewhere when the caching worker is the most loaded one.
    let srv = Server::start(&["--devices", "cpu", "--kv-cache-memory", "64MiB"]);
    let prompt = long_text("Cache test 4471", 600);
    let body = json!({"prompt": prompt, "max_tokens": 12, "temperature": 0});
    let (r1, a) = srv.ok("/v1/completions", &body);
    let (r2, b) = srv.ok("/v1/completions", &body);
    let prompt_tokens = a["usage"]["prompt_tokens"].as_u64().expect("prompt_tokens");
    assert!(prompt_tokens > 500, "{prompt_tokens}");
    assert_eq!(a["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let cached = b["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .expect("cached_tokens");
    assert!(
        cached > 0 && cached < prompt_tokens,
        "second time: {cached} of {prompt_tokens} cached"
    );
    assert!(
        cached >= prompt_tokens - 32,
        "most of it is cached: {cached}"
    );
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    assert_eq!((r1.worker(), r2.worker()), (0, 0));
    // The engine's prefix-cache counters saw the hit as well.
    assert!(srv.metric("reprise:prefix_cache_hits_total", 0) >= cached as f64);
}

#[test]
fn sixty_four_concurrent_streams_all_finish() {
    let srv = shared();
    let addr = srv.addr.clone();
    let results = parallel((0..64).collect(), move |i: usize| {
        let body = json!({
            "prompt": format!("Request number {i} says:"),
            "max_tokens": 8, "temperature": 0.7, "seed": i, "ignore_eos": true,
            "stream": true, "stream_options": {"include_usage": true},
        });
        request(
            &addr,
            "POST",
            "/v1/completions",
            &[],
            body.to_string().as_bytes(),
        )
    });
    for r in results {
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.worker() < 2);
        assert!(r
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")));
        let chunks = r.chunks();
        let usage = &chunks.last().expect("usage chunk")["usage"];
        assert_eq!(usage["completion_tokens"], 8, "{}", r.text());
        let finish: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"].get(0))
            .map(|c| &c["finish_reason"])
            .filter(|f| !f.is_null())
            .collect();
        assert_eq!(finish, vec![&json!("length")]);
    }
}

#[test]
fn streaming_chat_and_completions_match_and_include_usage() {
    let srv = shared();
    let c = case("p07_multilingual_multiturn");
    let body = json!({"messages": c["messages"], "max_tokens": 48, "temperature": 0,
        "stream": true, "stream_options": {"include_usage": true}});
    let r = srv.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.worker() < 2);
    let chunks = r.chunks();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    let mut finish = None;
    for ch in &chunks {
        for choice in ch["choices"].as_array().expect("choices") {
            if let Some(t) = choice["delta"]["content"].as_str() {
                text.push_str(t);
            }
            if !choice["finish_reason"].is_null() {
                finish = Some(choice["finish_reason"].clone());
            }
        }
    }
    assert_eq!(text, c["greedy_text"]);
    assert_eq!(finish, Some(json!("stop")));
    let last = chunks.last().expect("usage chunk");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], c["n_prompt_tokens"]);
    assert!(last["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(last["usage"]["prompt_tokens_details"]["cached_tokens"].is_u64());

    // Without include_usage there is no usage chunk.
    let c = case("p01_fact_germany");
    let body = json!({"prompt": c["prompt"], "max_tokens": 48, "temperature": 0, "stream": true});
    let r = srv.post("/v1/completions", &body);
    assert_eq!(r.status, 200);
    let chunks = r.chunks();
    assert!(chunks
        .iter()
        .all(|c| c.get("usage").is_none_or(Value::is_null)));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, c["greedy_text"]);
}

#[test]
fn stop_strings_never_leak() {
    let srv = shared();
    let c = case("p01_fact_germany");
    let greedy = c["greedy_text"].as_str().expect("text");
    // Multi-token stop strings: a streamed prefix of one must be held back.
    for stop in ["United States", "approximately 311", "\n\nThe"] {
        let want = &greedy[..greedy.find(stop).expect("stop occurs")];
        let body = json!({"prompt": c["prompt"], "max_tokens": 48, "temperature": 0,
            "stop": [stop, "never-seen-stop"]});
        let (_, v) = srv.ok("/v1/completions", &body);
        assert_eq!(v["choices"][0]["text"], want, "stop {stop:?}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");

        let mut sbody = body.clone();
        sbody["stream"] = json!(true);
        let r = srv.post("/v1/completions", &sbody);
        let chunks = r.chunks();
        let pieces: Vec<&str> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["text"].as_str())
            .collect();
        assert_eq!(pieces.concat(), want, "streamed, stop {stop:?}");
        let reasons: Vec<&Value> = chunks
            .iter()
            .map(|c| &c["choices"][0]["finish_reason"])
            .filter(|f| !f.is_null())
            .collect();
        assert_eq!(reasons, vec![&json!("stop")]);
    }
    // Chat too, with a single string.
    let c = case("p05_shared_prefix_recipes_bread");
    let greedy = c["greedy_text"].as_str().expect("text");
    let want = &greedy[..greedy.find("bread").expect("occurs")];
    let body =
        json!({"messages": c["messages"], "max_tokens": 48, "temperature": 0, "stop": "bread"});
    let (_, v) = srv.ok("/v1/chat/completions", &body);
    assert_eq!(v["choices"][0]["message"]["content"], want);
}

#[test]
fn n_two_seed_and_logprobs() {
    let srv = shared();
    let c = case("p01_fact_germany");
    let greedy = c["greedy_text"].as_str().expect("text");

    // n=2 greedy: both choices are the greedy text.
    let body = json!({"prompt": c["prompt"], "max_tokens": 48, "temperature": 0, "n": 2});
    let (r, v) = srv.ok("/v1/completions", &body);
    assert!(r.worker() < 2);
    let choices = v["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 2);
    for (i, ch) in choices.iter().enumerate() {
        assert_eq!(ch["index"], i);
        assert_eq!(ch["text"], greedy);
    }
    assert_eq!(v["usage"]["completion_tokens"], 96);
    assert_eq!(v["usage"]["prompt_tokens"], 5);

    // n=2 sampled and streamed: two indices, each finishing once.
    let body = json!({"prompt": "Once upon a time", "max_tokens": 10, "temperature": 1.0,
        "seed": 7, "n": 2, "ignore_eos": true, "stream": true,
        "stream_options": {"include_usage": true}});
    let chunks = srv.post("/v1/completions", &body).chunks();
    let mut texts = [String::new(), String::new()];
    let mut finished = [0, 0];
    for ch in &chunks {
        for choice in ch["choices"].as_array().expect("choices") {
            let i = choice["index"].as_u64().expect("index") as usize;
            texts[i].push_str(choice["text"].as_str().unwrap_or(""));
            finished[i] += usize::from(!choice["finish_reason"].is_null());
        }
    }
    assert_eq!(finished, [1, 1]);
    assert!(texts.iter().all(|t| !t.is_empty()));
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 20);

    // The same seed gives the same sample; other seeds give other samples.
    let sample = |seed: u64| {
        let body = json!({"prompt": "My favourite animal is", "max_tokens": 16,
            "temperature": 1.0, "seed": seed, "ignore_eos": true});
        let (_, v) = srv.ok("/v1/completions", &body);
        v["choices"][0]["text"].as_str().expect("text").to_string()
    };
    let a = sample(1234);
    assert_eq!(a, sample(1234), "same seed, same text");
    let others: Vec<String> = (1..=4).map(sample).collect();
    assert!(
        others.iter().any(|o| *o != a),
        "seeds must matter: {a:?} {others:?}"
    );

    // Completions logprobs: one entry per token, the greedy token is the top one.
    let body = json!({"prompt": c["prompt"], "max_tokens": 8, "temperature": 0, "logprobs": 3});
    let (_, v) = srv.ok("/v1/completions", &body);
    let lp = &v["choices"][0]["logprobs"];
    let tokens = lp["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), 8);
    assert_eq!(
        tokens
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect::<String>(),
        v["choices"][0]["text"].as_str().unwrap()
    );
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .expect("text_offset")
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
    for (i, (l, top)) in lp["token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(lp["top_logprobs"].as_array().unwrap())
        .enumerate()
    {
        let l = l.as_f64().expect("logprob");
        assert!(l <= 0.0);
        let top = top.as_object().expect("top map");
        assert!(!top.is_empty() && top.len() <= 3);
        let best = top
            .values()
            .map(|x| x.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!(
            (best - l).abs() < 1e-4,
            "token {i}: greedy pick is the most likely"
        );
    }

    // Chat logprobs / top_logprobs.
    let body = json!({"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 6,
        "temperature": 0, "logprobs": true, "top_logprobs": 2});
    let (_, v) = srv.ok("/v1/chat/completions", &body);
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("content");
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for e in content {
        assert!(e["token"].is_string() && e["logprob"].as_f64().unwrap() <= 0.0);
        assert!(e["bytes"].is_array());
        assert_eq!(e["top_logprobs"].as_array().unwrap().len(), 2);
    }
}

// ---------------------------------------------------------------------------
// The other routes
// ---------------------------------------------------------------------------

#[test]
fn models_health_metrics_tokenize_detokenize() {
    let srv = shared();
    let m = srv.get("/v1/models");
    assert_eq!(m.status, 200);
    let m = m.json();
    assert_eq!(m["object"], "list");
    let model = m["data"][0]["id"].as_str().expect("model id").to_string();
    assert_eq!(m["data"][0]["object"], "model");
    let max_len = m["data"][0]["max_model_len"]
        .as_u64()
        .expect("max_model_len");
    assert!(max_len >= 2048);

    let h = srv.get("/health");
    assert_eq!(h.status, 200, "{}", h.text());

    let t = srv.post(
        "/tokenize",
        &json!({"model": model, "prompt": "The capital of Germany is", "add_special_tokens": true}),
    );
    assert_eq!(t.status, 200, "{}", t.text());
    let t = t.json();
    assert_eq!(t["tokens"], json!([504, 3575, 282, 4521, 314]));
    assert_eq!(t["count"], 5);
    assert_eq!(t["max_model_len"], max_len);
    let chat = srv.post(
        "/tokenize",
        &json!({"messages": case("p07_multilingual_multiturn")["messages"]}),
    );
    assert_eq!(
        chat.json()["tokens"],
        case("p07_multilingual_multiturn")["prompt_token_ids"]
    );
    let d = srv.post(
        "/detokenize",
        &json!({"model": model, "tokens": [504, 3575, 282, 4521, 314]}),
    );
    assert_eq!(d.status, 200, "{}", d.text());
    assert_eq!(d.json(), json!({"prompt": "The capital of Germany is"}));

    // A request with the model named explicitly is accepted.
    let (r, v) = srv.ok(
        "/v1/completions",
        &json!({"model": model, "prompt": "Hi", "max_tokens": 2}),
    );
    assert!(r.worker() < 2);
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], model);

    let metrics = srv.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    let text = metrics.text();
    for name in [
        "reprise:num_requests_running",
        "reprise:num_requests_waiting",
        "reprise:kv_cache_usage_perc",
        "reprise:prefix_cache_queries_total",
        "reprise:prefix_cache_hits_total",
        "reprise:prompt_tokens_total",
        "reprise:generation_tokens_total",
    ] {
        for w in 0..2 {
            assert!(
                text.contains(&format!("{name}{{worker=\"{w}\"}} ")),
                "{name} worker {w}"
            );
        }
    }
    for name in [
        "reprise:time_to_first_token_seconds",
        "reprise:inter_token_latency_seconds",
        "reprise:e2e_request_latency_seconds",
    ] {
        assert!(text.contains(&format!("# TYPE {name} histogram")), "{name}");
        assert!(text.contains(&format!("{name}_bucket{{worker=\"0\",le=\"+Inf\"}}")));
        assert!(text.contains(&format!("{name}_count{{worker=\"1\"}}")));
    }
    assert!(text.contains("reprise:router_decisions_total{policy=\"cost\",worker=\"0\"}"));
    assert!(text.contains("reprise:router_matched_blocks_bucket{"));
    assert!(text.contains("reprise:router_decision_seconds_bucket{"));
    let generated = srv.metric("reprise:generation_tokens_total", 0)
        + srv.metric("reprise:generation_tokens_total", 1);
    assert!(generated >= 2.0, "tokens were generated: {generated}");
}

// ---------------------------------------------------------------------------
// Bad requests
// ---------------------------------------------------------------------------

#[test]
fn malformed_requests_get_openai_errors() {
    let srv = shared();
    let max_len = srv.get("/v1/models").json()["data"][0]["max_model_len"]
        .as_u64()
        .expect("max_model_len") as usize;
    let raw = |path: &str, body: &[u8]| request(&srv.addr, "POST", path, &[], body);
    let c = "/v1/completions";
    let chat = "/v1/chat/completions";

    for (body, what) in [
        (&b"{\"prompt\": \"hi\","[..], "truncated JSON"),
        (b"{prompt: hi}", "not JSON"),
        (b"", "empty body"),
        (b"[1, 2, 3]", "not an object"),
        (b"{\"prompt\": \"caf\xc3\"}", "invalid UTF-8 in a string"),
        (b"\xff\xfe{\"prompt\": \"hi\"}", "invalid UTF-8 bytes"),
    ] {
        for path in [c, chat, "/tokenize"] {
            assert_error(&raw(path, body), 400, &format!("{what} to {path}"));
        }
    }

    let cases: Vec<(&str, Value, &str)> = vec![
        (c, json!({"prompt": 5}), "prompt"),
        (c, json!({}), "prompt"),
        (c, json!({"prompt": []}), "prompt"),
        (c, json!({"prompt": [1, -2]}), "prompt"),
        (c, json!({"prompt": [99999999]}), "prompt"),
        (c, json!({"prompt": "hi", "max_tokens": "16"}), "max_tokens"),
        (c, json!({"prompt": "hi", "max_tokens": 2.5}), "max_tokens"),
        (c, json!({"prompt": "hi", "max_tokens": -1}), "max_tokens"),
        (c, json!({"prompt": "hi", "max_tokens": 0}), "max_tokens"),
        (
            c,
            json!({"prompt": "hi", "max_tokens": 1_000_000_000_000u64}),
            "max_tokens",
        ),
        (
            c,
            json!({"prompt": "hi", "max_tokens": u64::MAX}),
            "max_tokens",
        ),
        (
            c,
            json!({"prompt": "hi", "max_tokens": max_len}),
            "max_tokens",
        ),
        (
            c,
            json!({"prompt": "hi", "temperature": -0.5}),
            "temperature",
        ),
        (
            c,
            json!({"prompt": "hi", "temperature": 2.5}),
            "temperature",
        ),
        (
            c,
            json!({"prompt": "hi", "temperature": "hot"}),
            "temperature",
        ),
        (c, json!({"prompt": "hi", "top_p": 0}), "top_p"),
        (c, json!({"prompt": "hi", "top_p": 1.5}), "top_p"),
        (c, json!({"prompt": "hi", "top_k": -3}), "top_k"),
        (c, json!({"prompt": "hi", "n": 0}), "n"),
        (c, json!({"prompt": "hi", "n": 1000}), "n"),
        (c, json!({"prompt": "hi", "logprobs": 100}), "logprobs"),
        (c, json!({"prompt": "hi", "logprobs": -1}), "logprobs"),
        (
            c,
            json!({"prompt": "hi", "presence_penalty": 9}),
            "presence_penalty",
        ),
        (c, json!({"prompt": "hi", "seed": "abc"}), "seed"),
        (c, json!({"prompt": "hi", "stop": 3}), "stop"),
        (c, json!({"prompt": "hi", "stream": "yes"}), "stream"),
        (
            c,
            json!({"prompt": "hi", "stream_options": 1}),
            "stream_options",
        ),
        (c, json!({"prompt": "hi", "ignore_eos": "no"}), "ignore_eos"),
        (
            c,
            json!({"prompt": "hi", "stop_token_ids": [-1]}),
            "stop_token_ids",
        ),
        (chat, json!({}), "messages"),
        (chat, json!({"messages": "hello"}), "messages"),
        (chat, json!({"messages": []}), "messages"),
        (chat, json!({"messages": [{"content": "hi"}]}), "messages"),
        (
            chat,
            json!({"messages": [{"role": "user", "content": 5}]}),
            "messages",
        ),
        (
            chat,
            json!({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}),
            "max_completion_tokens",
        ),
        (
            chat,
            json!({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}),
            "top_logprobs",
        ),
        (
            chat,
            json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}),
            "temperature",
        ),
        ("/tokenize", json!({"prompt": 3}), "prompt"),
        ("/detokenize", json!({"tokens": "abc"}), "tokens"),
        ("/detokenize", json!({"tokens": [99999999]}), "tokens"),
    ];
    for (path, body, param) in cases {
        let e = assert_error(&srv.post(path, &body), 400, &format!("{path} {body}"));
        assert_eq!(e["param"], param, "{path} {body}: {e}");
        assert_eq!(e["type"], "invalid_request_error");
    }

    // A prompt longer than the context.
    let long = "hello ".repeat(max_len + 50);
    for (path, body) in [
        (c, json!({"prompt": long, "max_tokens": 1})),
        (
            chat,
            json!({"messages": [{"role": "user", "content": long}]}),
        ),
    ] {
        let e = assert_error(&srv.post(path, &body), 400, "prompt over the context");
        assert!(
            e["message"].as_str().unwrap().contains("context length"),
            "{e}"
        );
    }

    // Unknown model: 404 for generation, tokenize and detokenize.
    for (path, body) in [
        (c, json!({"model": "gpt-9", "prompt": "hi"})),
        (
            chat,
            json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        ("/tokenize", json!({"model": "gpt-9", "prompt": "hi"})),
    ] {
        let e = assert_error(&srv.post(path, &body), 404, "unknown model");
        assert_eq!(e["code"], "model_not_found");
        assert_eq!(e["param"], "model");
    }

    // Unknown routes and wrong methods.
    assert_error(&srv.get("/v1/nothing-here"), 404, "unknown route");
    assert_error(
        &srv.post("/v2/completions", &json!({})),
        404,
        "unknown route",
    );
    assert_error(&srv.get("/v1/completions"), 405, "GET on a POST route");

    // Unknown fields are refused by name, as OpenAI does; metadata fields are kept.
    let e = assert_error(
        &srv.post(
            c,
            &json!({"prompt": "hi", "max_tokens": 1, "user": "x", "whatever": {"a": [1]}}),
        ),
        400,
        "unknown field",
    );
    assert_eq!(e["param"], "whatever");
    let (_, v) = srv.ok(c, &json!({"prompt": "hi", "max_tokens": 1, "user": "x"}));
    assert_eq!(v["usage"]["completion_tokens"], 1);

    // The server is still healthy after all of that.
    assert_eq!(srv.get("/health").status, 200);
}

#[test]
fn api_key_body_limit_and_admission_queue() {
    let srv = Server::start(&[
        "--devices",
        "cpu",
        "--kv-cache-memory",
        "64MiB",
        "--api-key",
        "sekret-key",
        "--max-queue",
        "1",
        "--max-body-bytes",
        "16KiB",
    ]);
    let body = json!({"prompt": "Hi", "max_tokens": 2}).to_string();
    let post = |headers: &[(&str, &str)], body: &[u8]| {
        request(&srv.addr, "POST", "/v1/completions", headers, body)
    };
    let good = [("Authorization", "Bearer sekret-key")];

    // 401: missing, wrong, malformed key; on every protected route.
    for h in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", "sekret-key")],
        vec![("Authorization", "Bearer sekret-key-and-more")],
    ] {
        let e = assert_error(&post(&h, body.as_bytes()), 401, &format!("{h:?}"));
        assert_eq!(e["code"], "invalid_api_key");
    }
    assert_error(&srv.get("/v1/models"), 401, "models without key");
    assert_error(
        &srv.post("/tokenize", &json!({"prompt": "x"})),
        401,
        "tokenize without key",
    );
    // /health and /metrics stay open for probes and scrapers.
    assert_eq!(srv.get("/health").status, 200);
    assert_eq!(srv.get("/metrics").status, 200);
    let r = post(&good, body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.worker(), 0);
    let r = request(&srv.addr, "GET", "/v1/models", &good, b"");
    assert_eq!(r.status, 200);

    // 413: a body over --max-body-bytes (declared, and large enough to matter).
    let big = json!({"prompt": "x".repeat(40 * 1024), "max_tokens": 1}).to_string();
    let e = assert_error(&post(&good, big.as_bytes()), 413, "body over the limit");
    assert_eq!(e["type"], "invalid_request_error");
    // Without Content-Length (chunked), the limit applies while reading.
    let mut s = connect(&srv.addr);
    let mut msg = b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer sekret-key\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    msg.extend_from_slice(format!("{:x}\r\n", big.len()).as_bytes());
    msg.extend_from_slice(big.as_bytes());
    msg.extend_from_slice(b"\r\n0\r\n\r\n");
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&msg);
    });
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let _ = writer.join();
    assert_error(&parse_response(&raw), 413, "chunked body over the limit");
    // Just under the limit is fine.
    let ok = json!({"prompt": "Hi", "max_tokens": 1, "user": "x".repeat(15 * 1024)}).to_string();
    assert!(ok.len() < 16 * 1024);
    let r = post(&good, ok.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());

    // 429: one long request holds the only admission slot.
    let mut s = connect(&srv.addr);
    let long = json!({"prompt": "Count:", "max_tokens": 1000, "ignore_eos": true, "stream": true})
        .to_string();
    let mut msg = head("POST", "/v1/completions", &good, long.len());
    msg.push_str(&long);
    s.write_all(msg.as_bytes()).expect("send");
    let mut first = [0u8; 256];
    let got = s.read(&mut first).expect("stream starts");
    let first = String::from_utf8_lossy(&first[..got]);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let e = assert_error(&post(&good, body.as_bytes()), 429, "queue full");
    assert_eq!(e["type"], "rate_limit_error");
    // Dropping the connection frees the slot (the request is cancelled).
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = post(&good, body.as_bytes());
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 429, "{}", r.text());
        assert!(
            Instant::now() < deadline,
            "slot never freed:\n{}",
            srv.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// Disconnects, routing, faults, shutdown
// ---------------------------------------------------------------------------

#[test]
fn client_disconnect_frees_kv_blocks() {
    let srv = Server::start(&["--devices", "cpu", "--kv-cache-memory", "128MiB"]);
    let idle = srv.metric("reprise:kv_cache_usage_perc", 0);
    let body = json!({"prompt": long_text("Disconnect", 300), "max_tokens": 1500,
        "ignore_eos": true, "temperature": 0, "stream": true});
    for round in 0..2 {
        let mut st = Stream::open(&srv.addr, "/v1/completions", &body);
        st.read_until("\"text\"", 3);
        let busy = srv.metric("reprise:kv_cache_usage_perc", 0);
        assert!(
            busy > idle,
            "round {round}: a live request holds blocks ({busy} vs {idle})"
        );
        assert_eq!(srv.metric("reprise:num_requests_running", 0), 1.0);
        drop(st);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = srv.metric("reprise:kv_cache_usage_perc", 0);
            if now == idle && srv.metric("reprise:num_requests_running", 0) == 0.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: KV usage stuck at {now} (idle {idle})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // A non-streaming request whose client goes away is cancelled too.
    let mut plain = body.clone();
    plain["stream"] = json!(false);
    let st = Stream::open(&srv.addr, "/v1/completions", &plain);
    let deadline = Instant::now() + Duration::from_secs(30);
    while srv.metric("reprise:kv_cache_usage_perc", 0) == idle {
        assert!(Instant::now() < deadline, "the request never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(st);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = srv.metric("reprise:kv_cache_usage_perc", 0);
        if now == idle && srv.metric("reprise:num_requests_running", 0) == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "non-streaming: KV usage stuck at {now} (idle {idle})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The server keeps serving.
    let (_, v) = srv.ok("/v1/completions", &json!({"prompt": "Hi", "max_tokens": 3}));
    assert_eq!(v["usage"]["completion_tokens"], 3);
}

#[test]
fn shared_prefixes_stick_to_one_worker_and_others_spread() {
    let srv = Server::start(&[
        "--devices",
        "cpu,cpu",
        "--policy",
        "precise",
        "--kv-cache-memory",
        "128MiB",
    ]);
    let prefix = long_text("Shared system prompt for the routing test", 1000);
    let n = srv.post("/tokenize", &json!({"prompt": prefix})).json()["count"]
        .as_u64()
        .expect("count");
    assert!((900..1400).contains(&n), "prefix of {n} tokens");

    let mut home = None;
    for i in 0..5 {
        let body = json!({"prompt": format!("{prefix}\nQuestion {i}: what comes next?"),
            "max_tokens": 4, "temperature": 0});
        let (r, v) = srv.ok("/v1/completions", &body);
        let w = r.worker();
        let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .expect("cached");
        match home {
            None => {
                home = Some(w);
                assert_eq!(cached, 0);
            }
            Some(h) => {
                assert_eq!(w, h, "request {i} left the worker holding its prefix");
                assert!(cached >= n - 16, "request {i}: {cached} of {n} cached");
            }
        }
    }
    let mut seen = [0usize; 2];
    for i in 0..12 {
        let body = json!({"prompt": format!("Unrelated topic {i}: {}", long_text(&format!("Story {i}"), 40)),
            "max_tokens": 2});
        let (r, _) = srv.ok("/v1/completions", &body);
        seen[r.worker()] += 1;
    }
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "unrelated prompts spread: {seen:?}"
    );
    let decisions = srv.get("/metrics").text();
    assert!(decisions.contains("reprise:router_decisions_total{policy=\"precise\",worker=\"1\"}"));
}

#[test]
fn a_panicking_worker_fails_only_its_requests() {
    let srv = Server::start(&[
        "--devices",
        "cpu,cpu",
        "--kv-cache-memory",
        "64MiB",
        "--inject-worker-panic",
        "0:2",
    ]);
    let mut failed = false;
    for i in 0..16 {
        let body = json!({"prompt": format!("Prompt {i} about {}", long_text(&format!("t{i}"), 8)),
            "max_tokens": 4, "ignore_eos": true});
        let r = srv.post("/v1/completions", &body);
        if r.status == 500 {
            let e = assert_error(&r, 500, "the panicking worker's request");
            assert_eq!(e["type"], "server_error");
            assert_eq!(r.worker(), 0, "the failed response names its worker");
            failed = true;
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.worker(), 1, "worker 0 panics on its first request");
    }
    assert!(failed, "no request reached worker 0:\n{}", srv.log());
    // Worker 0 leaves routing; worker 1 serves everything, streaming included.
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.metric("reprise:worker_alive", 0) != 0.0 {
        assert!(Instant::now() < deadline, "worker 0 still routable");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(srv.metric("reprise:worker_alive", 1), 1.0);
    let health = srv.get("/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["workers_alive"], 1);
    for i in 0..6 {
        let body = json!({"prompt": format!("After the fault {i}"), "max_tokens": 3,
            "stream": i % 2 == 1});
        let r = srv.post("/v1/completions", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.worker(), 1);
        if i % 2 == 1 {
            r.chunks();
        }
    }
}

fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Waits for the server process to exit by itself; asserts exit status 0.
fn wait_exit(srv: &mut Server, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if let Some(code) = srv.child.try_wait().expect("wait") {
            assert!(code.success(), "exit status {code}:\n{}", srv.log());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still running {within:?} after SIGTERM:\n{}",
            srv.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits() {
    let mut srv = Server::start(&[
        "--devices",
        "cpu",
        "--kv-cache-memory",
        "64MiB",
        "--shutdown-timeout",
        "60",
    ]);
    // An idle keep-alive connection must not hold the shutdown up.
    let mut idle = connect(&srv.addr);
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("send");
    let mut buf = [0u8; 1024];
    let got = idle.read(&mut buf).expect("health");
    assert!(buf[..got].starts_with(b"HTTP/1.1 200"));

    let body = json!({"prompt": "Count to one hundred:", "max_tokens": 160, "ignore_eos": true,
        "temperature": 0, "stream": true, "stream_options": {"include_usage": true}});
    let mut st = Stream::open(&srv.addr, "/v1/completions", &body);
    st.read_until("\"text\"", 2);
    sigterm(srv.pid);
    // New requests are no longer served while the old one is still running.
    std::thread::sleep(Duration::from_millis(300));
    if let Ok(mut s) = TcpStream::connect(&srv.addr) {
        s.set_read_timeout(Some(Duration::from_secs(2))).ok();
        let b = json!({"prompt": "Hi", "max_tokens": 1}).to_string();
        let _ =
            s.write_all(format!("{}{b}", head("POST", "/v1/completions", &[], b.len())).as_bytes());
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        assert!(
            !String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"),
            "served a request after SIGTERM"
        );
    }
    assert!(
        srv.child.try_wait().expect("wait").is_none(),
        "exited with a request in flight"
    );
    // The in-flight request runs to its end.
    let r = st.finish();
    assert_eq!(r.status, 200);
    let chunks = r.chunks();
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 160);
    // Then the process exits 0, well before the 60 s deadline.
    wait_exit(&mut srv, Duration::from_secs(20));
    drop(idle);
}

#[test]
fn sigterm_right_after_the_ready_line_is_a_clean_exit() {
    let mut srv = Server::start(&["--devices", "cpu", "--kv-cache-memory", "32MiB"]);
    sigterm(srv.pid);
    wait_exit(&mut srv, Duration::from_secs(20));
}
