//! Property-based fuzzing of every endpoint from the server's own OpenAPI document
//! (`/openapi.json`): bodies generated from each operation's schema (valid values,
//! boundaries), then mutated (wrong types, unknown fields, missing required ones,
//! broken or nested JSON, invalid UTF-8, huge strings), with wrong methods, unknown
//! paths, missing keys and odd content types mixed in. Every answer must be a status
//! the document lists for that operation (or 404 / 405, in the same shape), never a
//! 5xx, with an OpenAI-shaped error body, within a timeout; afterwards the server is
//! idle. `REPRISE_FUZZ_CASES` (default 300) and `REPRISE_FUZZ_SEED` set the run;
//! `scripts/fuzz-api.sh` runs 10,000.

mod support;

use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};
use support::{exchange, metric_total, Resp, Server};

/// xorshift64*: reproducible cases from a seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

const KEY: &str = "fuzz-key";

fn string(r: &mut Rng) -> String {
    let pool = [
        "",
        "hello",
        "The capital of France is",
        "ünïcødé ✓ 你好",
        "\u{0}\u{1f}",
        "{\"a\": 1}",
        "<tool_call>",
        "a\\b\"c",
        "[0-9]+",
    ];
    r.pick(&pool).to_string()
}

/// A value for `schema` (resolving the document's `$ref`s), usually valid.
fn gen(r: &mut Rng, doc: &Value, schema: &Value, depth: usize) -> Value {
    if let Some(rf) = schema["$ref"].as_str() {
        let name = rf.rsplit('/').next().unwrap_or_default();
        return gen(r, doc, &doc["components"]["schemas"][name], depth);
    }
    if let Some(alts) = schema["oneOf"].as_array() {
        let alt = r.pick(alts).clone();
        return gen(r, doc, &alt, depth);
    }
    if let Some(e) = schema["enum"].as_array() {
        return r.pick(e).clone();
    }
    if !schema["const"].is_null() {
        return schema["const"].clone();
    }
    let ty = match &schema["type"] {
        Value::String(t) => t.clone(),
        Value::Array(ts) => r.pick(ts).as_str().unwrap_or("null").to_string(),
        _ => r
            .pick(&["string", "integer", "boolean", "object", "null"])
            .to_string(),
    };
    let lo = schema["minimum"]
        .as_f64()
        .or(schema["exclusiveMinimum"].as_f64().map(|x| x + 0.5))
        .unwrap_or(-3.0);
    let hi = schema["maximum"].as_f64().unwrap_or(20.0);
    match ty.as_str() {
        "null" => Value::Null,
        "boolean" => Value::Bool(r.chance(0.5)),
        "integer" => {
            let choices = [lo, hi, lo + 1.0, (lo + hi) / 2.0];
            json!(r.pick(&choices).floor() as i64)
        }
        "number" => {
            let choices = [lo, hi, (lo + hi) / 2.0, lo + 0.25];
            json!(*r.pick(&choices))
        }
        "string" => Value::String(string(r)),
        "array" => {
            let most = schema["maxItems"].as_u64().unwrap_or(3) as usize;
            let n = if depth > 3 {
                0
            } else {
                r.below(most.min(3)) + most.min(1)
            };
            let items = schema
                .get("items")
                .cloned()
                .unwrap_or(json!({"type": "string"}));
            Value::Array((0..n).map(|_| gen(r, doc, &items, depth + 1)).collect())
        }
        _ => {
            let mut o = Map::new();
            if let Some(props) = schema["properties"].as_object() {
                let required: Vec<&str> = schema["required"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                for (k, s) in props {
                    if depth < 4 && (required.contains(&k.as_str()) || r.chance(0.08)) {
                        o.insert(k.clone(), gen(r, doc, s, depth + 1));
                    }
                }
            }
            Value::Object(o)
        }
    }
}

/// What a case sends.
struct Case {
    method: String,
    path: String,
    auth: bool,
    content_type: &'static str,
    body: Vec<u8>,
    /// Statuses the document allows for it.
    allowed: Vec<u16>,
    what: String,
}

fn body_case(r: &mut Rng, doc: &Value, path: &str, op: &Value) -> (Vec<u8>, String) {
    let schema = &op["requestBody"]["content"]["application/json"]["schema"];
    let mut body = gen(r, doc, schema, 0);
    // Keep generation short: a small budget unless a mutation below breaks it.
    if let Some(o) = body.as_object_mut() {
        for k in ["max_tokens", "max_completion_tokens"] {
            let known = schema["properties"].get(k).is_some();
            if known && (o.contains_key(k) || path.ends_with("completions")) {
                o.insert(k.into(), json!(1 + r.below(5)));
            }
        }
        for k in ["n", "best_of"] {
            if o.contains_key(k) {
                o.insert(k.into(), json!(1 + r.below(2)));
            }
        }
        if let Some(m) = o.get_mut("min_tokens") {
            *m = json!(r.below(3));
        }
        o.insert("ignore_eos".into(), json!(false));
        o.remove("model");
        // Mostly one user turn: roles and tool turns are fuzzed the rest of the time.
        if o.contains_key("messages") && r.chance(0.7) {
            o.insert(
                "messages".into(),
                json!([{"role": "user", "content": string(r)}]),
            );
        }
    }
    let mutation = r.below(12);
    let what;
    match mutation {
        0 => {
            what = "unknown field";
            body["no_such_field"] = json!(1);
        }
        1 => {
            what = "wrong type";
            if let Some(o) = body.as_object_mut() {
                if let Some(k) = o.keys().nth(r.below(o.len())).cloned() {
                    let bad = [
                        json!("text"),
                        json!([1, 2]),
                        json!({"x": 1}),
                        json!(-1e300),
                        json!(true),
                    ];
                    o.insert(k, r.pick(&bad).clone());
                }
            }
        }
        2 => {
            what = "missing required";
            if let Some(o) = body.as_object_mut() {
                for k in ["prompt", "messages", "tokens"] {
                    o.remove(k);
                }
            }
        }
        3 => {
            what = "broken json";
            let mut b = serde_json::to_vec(&body).unwrap_or_default();
            b.truncate(b.len() / 2);
            return (b, what.into());
        }
        4 => {
            what = "not an object";
            body = r
                .pick(&[json!([1, 2]), json!(3), json!("s"), json!(null)])
                .clone();
        }
        5 => {
            what = "invalid utf-8";
            return (b"{\"prompt\": \"\xff\xfe\"}".to_vec(), what.into());
        }
        6 => {
            what = "deep nesting";
            let depth = 200 + r.below(2000);
            let b = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            return (b.into_bytes(), what.into());
        }
        7 => {
            what = "huge string";
            body["prompt"] = json!("x ".repeat(20_000 + r.below(200_000)));
        }
        8 => {
            what = "out-of-range numbers";
            for k in [
                "temperature",
                "top_p",
                "max_tokens",
                "n",
                "logprobs",
                "top_k",
            ] {
                if r.chance(0.5) {
                    body[k] = r
                        .pick(&[
                            json!(-1),
                            json!(1e12),
                            json!(-0.5),
                            json!(u64::MAX),
                            json!(0),
                        ])
                        .clone();
                }
            }
        }
        _ => what = "schema-valid",
    }
    (serde_json::to_vec(&body).unwrap_or_default(), what.into())
}

fn make_case(r: &mut Rng, doc: &Value, ops: &[(String, String, Value)]) -> Case {
    let (path, method, op) = r.pick(ops).clone();
    let documented: Vec<u16> = op["responses"]
        .as_object()
        .map(|m| m.keys().filter_map(|k| k.parse().ok()).collect())
        .unwrap_or_default();
    let secured = op.get("security") != Some(&json!([]));
    let mut case = Case {
        method: method.to_ascii_uppercase(),
        path: path.clone(),
        auth: true,
        content_type: "application/json",
        body: Vec::new(),
        allowed: documented.clone(),
        what: "valid".into(),
    };
    if op.get("requestBody").is_some() {
        let (body, what) = body_case(r, doc, &path, &op);
        case.body = body;
        case.what = what;
    }
    let roll = r.below(40);
    if roll == 0 {
        case.path = format!(
            "/{}",
            r.pick(&[
                "v1/nope",
                "v2/chat/completions",
                "admin",
                "%2e%2e/etc",
                "v1/completions/x"
            ])
        );
        case.allowed = vec![404];
        case.what = "unknown path".into();
    } else if roll <= 2 {
        let all = ["GET", "POST", "PUT", "DELETE", "PATCH"];
        let m = r.pick(&all).to_string();
        let served = doc["paths"][&path]
            .as_object()
            .is_some_and(|o| o.contains_key(&m.to_ascii_lowercase()));
        if !served {
            case.method = m;
            case.allowed = vec![405];
            case.what = "wrong method".into();
        }
    } else if roll <= 4 && secured {
        case.auth = false;
        case.allowed = vec![401];
        case.what = "no key".into();
    } else if roll == 5 {
        case.content_type = "text/plain";
    }
    case
}

fn send(addr: &str, c: &Case) -> Result<Resp, String> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        c.method,
        c.path,
        c.content_type,
        c.body.len()
    );
    if c.auth {
        head.push_str(&format!("Authorization: Bearer {KEY}\r\n"));
    }
    head.push_str("\r\n");
    let mut msg = head.into_bytes();
    msg.extend_from_slice(&c.body);
    exchange(addr, msg, Duration::from_secs(60))
}

fn openai_error(resp: &Resp) -> bool {
    let v: Value = match serde_json::from_slice(&resp.body) {
        Ok(v) => v,
        Err(_) => return false,
    };
    v["error"]["message"].is_string() && v["error"]["type"].is_string()
}

#[test]
fn every_endpoint_answers_fuzzed_requests_as_documented() {
    let cases: usize = std::env::var("REPRISE_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let seed: u64 = std::env::var("REPRISE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f022);
    let srv = Server::start(&[
        "--devices",
        "cpu",
        "--api-key",
        KEY,
        "--max-body-bytes",
        "256KiB",
    ]);
    let doc_resp = send(
        &srv.addr,
        &Case {
            method: "GET".into(),
            path: "/openapi.json".into(),
            auth: false,
            content_type: "application/json",
            body: Vec::new(),
            allowed: vec![200],
            what: String::new(),
        },
    )
    .expect("openapi");
    assert_eq!(doc_resp.status, 200);
    let doc = doc_resp.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut ops = Vec::new();
    for (path, methods) in doc["paths"].as_object().expect("paths") {
        for (m, op) in methods.as_object().expect("methods") {
            ops.push((path.clone(), m.clone(), op.clone()));
        }
    }
    let mut r = Rng(seed | 1);
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    let started = Instant::now();
    for i in 0..cases {
        let c = make_case(&mut r, &doc, &ops);
        let resp = send(&srv.addr, &c).unwrap_or_else(|e| {
            panic!(
                "case {i} ({} {} {}): {e}\nserver log:\n{}",
                c.method,
                c.path,
                c.what,
                srv.log()
            )
        });
        if std::env::var("REPRISE_FUZZ_VERBOSE").is_ok() && resp.status == 400 {
            eprintln!(
                "{} {} ({}): {}",
                c.method,
                c.path,
                c.what,
                String::from_utf8_lossy(&resp.body)
            );
        }
        let label = format!("{} {} {}", c.method, c.path, resp.status);
        *seen.entry(label).or_default() += 1;
        let body_text =
            String::from_utf8_lossy(&resp.body[..resp.body.len().min(300)]).into_owned();
        assert!(
            resp.status < 500 && c.allowed.contains(&resp.status),
            "case {i}: {} {} ({}) answered {} (documented: {:?}): {body_text}",
            c.method,
            c.path,
            c.what,
            resp.status,
            c.allowed
        );
        if resp.status != 200 {
            assert!(
                openai_error(&resp),
                "case {i}: {} {} ({}) {} without an OpenAI error body: {body_text}",
                c.method,
                c.path,
                c.what,
                resp.status
            );
        }
    }
    eprintln!(
        "{cases} cases (seed {seed}) in {:.1} s: {seen:#?}",
        started.elapsed().as_secs_f64()
    );
    // Afterwards nothing runs, waits or holds a block.
    let t = Instant::now();
    loop {
        let busy = metric_total(&srv, "reprise:num_requests_running")
            + metric_total(&srv, "reprise:num_requests_waiting")
            + metric_total(&srv, "reprise:kv_cache_usage_perc");
        if busy == 0.0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "server not idle after the fuzz run: running + waiting + kv usage = {busy}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
