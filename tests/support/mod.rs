//! What the end-to-end tests share: starting the real `reprise` binary on a free
//! port (killed on drop), a raw HTTP/1.1 client (raw so that invalid UTF-8, broken
//! JSON and half-read streams can be sent exactly as a bad client would), SSE
//! parsing, and the golden cases.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------

/// A running `reprise serve`, killed on drop.
pub struct Server {
    pub child: Child,
    /// `127.0.0.1:PORT` from the ready line.
    pub addr: String,
    /// The server's stderr so far, shown when a test fails.
    pub log: Arc<Mutex<String>>,
    /// PID of the reprise process itself (the child may be a watchdog shell).
    pub pid: u32,
    /// The ready line.
    pub ready: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `reprise serve --port 0 ARGS` and waits for its ready line.
    pub fn start(args: &[&str]) -> Server {
        Self::spawn(args, false)
    }

    /// Like [`Server::start`], but behind a shell that kills the server when this test
    /// process exits (its stdin pipe closes): a server kept in a `static` is never
    /// dropped, and must not outlive the test binary.
    pub fn start_shared(args: &[&str]) -> Server {
        Self::spawn(args, true)
    }

    pub fn spawn(args: &[&str], watchdog: bool) -> Server {
        Self::spawn_cmd("serve", args, watchdog)
    }

    /// Starts `reprise SUBCOMMAND --port 0 ARGS` (`serve` or `route`) and waits for
    /// its ready line.
    pub fn spawn_cmd(subcommand: &str, args: &[&str], watchdog: bool) -> Server {
        let bin = env!("CARGO_BIN_EXE_reprise");
        let mut cmd = if watchdog {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(r#""$@" </dev/null & pid=$!; echo "reprise-pid $pid"; read -r _; kill -9 $pid; wait $pid"#)
                .arg("sh")
                .arg(bin);
            c.stdin(Stdio::piped());
            c
        } else {
            let mut c = Command::new(bin);
            c.stdin(Stdio::null());
            c
        };
        cmd.arg(subcommand);
        if !args.contains(&"--port") {
            cmd.args(["--port", "0"]);
        }
        cmd.args(args)
            .env("RUST_LOG", "warn,reprise=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start reprise");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "reprise printed no ready line; stderr:\n{}",
                        log.lock().unwrap()
                    );
                }
            };
            if let Some(p) = line.strip_prefix("reprise-pid ") {
                pid = p.trim().parse().expect("pid");
                continue;
            }
            // "reprise: serving NAME on http://127.0.0.1:PORT with ..."
            if let Some(rest) = line.split(" on http://").nth(1) {
                let addr = rest.split_whitespace().next().expect("address").to_string();
                return Server {
                    child,
                    addr,
                    log,
                    pid,
                    ready: line,
                };
            }
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn post(&self, path: &str, body: &Value) -> Resp {
        request(&self.addr, "POST", path, &[], body.to_string().as_bytes())
    }

    pub fn get(&self, path: &str) -> Resp {
        request(&self.addr, "GET", path, &[], b"")
    }

    /// A 200 JSON response to `GET path`, or a failure that shows the response.
    pub fn ok_get(&self, path: &str) -> (Resp, Value) {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        let v = r.json();
        (r, v)
    }

    /// A 200 JSON response to `body`, or a failure that shows the response.
    pub fn ok(&self, path: &str, body: &Value) -> (Resp, Value) {
        let r = self.post(path, body);
        assert_eq!(r.status, 200, "{path} {body}: {}", r.text());
        let v = r.json();
        (r, v)
    }

    /// The whole ready line (the last line read before the server was handed over).
    pub fn ready_line(&self) -> &str {
        &self.ready
    }

    /// The value of an unlabelled-but-for-worker gauge or counter in /metrics.
    pub fn metric(&self, name: &str, worker: usize) -> f64 {
        let m = self.get("/metrics");
        assert_eq!(m.status, 200);
        let key = format!("{name}{{worker=\"{worker}\"}} ");
        m.text()
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .unwrap_or_else(|| panic!("{key} not in /metrics"))
            .trim()
            .parse()
            .expect("metric value")
    }
}

/// The sum over every series of metric `name` (all label sets) in `/metrics`.
pub fn metric_total(srv: &Server, name: &str) -> f64 {
    let m = srv.get("/metrics");
    assert_eq!(m.status, 200);
    m.text()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let base = series.split('{').next()?;
            (base == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// The default server (`cpu,cpu`, `precise`), shared by the tests that only
/// send ordinary requests.
pub fn shared() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| Server::start_shared(&[]))
}

// ---------------------------------------------------------------------------
// A small HTTP/1.1 client
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The worker named by `x-reprise-worker`.
    pub fn worker(&self) -> usize {
        self.header("x-reprise-worker")
            .unwrap_or_else(|| panic!("no x-reprise-worker header: {:?}", self.headers))
            .parse()
            .expect("worker index")
    }

    /// The `data:` payloads of an SSE body, in order.
    pub fn events(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|e| e.trim().strip_prefix("data: ").map(str::to_string))
            .collect()
    }

    /// SSE payloads parsed as JSON; asserts the stream ends with `data: [DONE]`.
    pub fn chunks(&self) -> Vec<Value> {
        let ev = self.events();
        assert_eq!(
            ev.last().map(String::as_str),
            Some("[DONE]"),
            "stream must end with [DONE]: {}",
            self.text()
        );
        ev[..ev.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap_or_else(|_| panic!("bad chunk {e}")))
            .collect()
    }
}

pub fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(600))).ok();
    s
}

pub fn head(method: &str, path: &str, headers: &[(&str, &str)], len: usize) -> String {
    let mut h = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n"
    );
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h
}

/// One request on a fresh connection; reads the whole response.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut msg = head(method, path, headers, body.len()).into_bytes();
    msg.extend_from_slice(body);
    exchange(addr, msg, Duration::from_secs(600)).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Sends the raw request `msg` on a fresh connection and reads the whole response;
/// an error when nothing came back within `timeout` (a hang or a dropped connection).
pub fn exchange(addr: &str, msg: Vec<u8>, timeout: Duration) -> Result<Resp, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).ok();
    // The server may answer (413) before reading all of a large body; write from
    // another thread so that a refused body never blocks reading the answer.
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&msg);
    });
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    let _ = writer.join();
    if raw.is_empty() {
        return Err(format!("no response ({read:?})"));
    }
    Ok(parse_response(&raw))
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn parse_response(raw: &[u8]) -> Resp {
    let end = find(raw, b"\r\n\r\n").expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(b, b"\r\n") {
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("chunk size");
        b = &b[eol + 2..];
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[..size.min(b.len())]);
        b = &b[(size + 2).min(b.len())..];
    }
    out
}

/// A streaming request whose response is read bit by bit.
pub struct Stream {
    pub s: TcpStream,
    pub raw: Vec<u8>,
}

impl Stream {
    pub fn open(addr: &str, path: &str, body: &Value) -> Stream {
        let mut s = connect(addr);
        let body = body.to_string();
        s.write_all(head("POST", path, &[], body.len()).as_bytes())
            .expect("send");
        s.write_all(body.as_bytes()).expect("send");
        Stream { s, raw: Vec::new() }
    }

    /// Reads until `needle` has been seen `times` times in the raw response.
    pub fn read_until(&mut self, needle: &str, times: usize) {
        let mut buf = [0u8; 4096];
        while self
            .raw
            .windows(needle.len())
            .filter(|w| *w == needle.as_bytes())
            .count()
            < times
        {
            let n = self.s.read(&mut buf).expect("read stream");
            assert!(
                n > 0,
                "stream ended before {needle:?}: {}",
                String::from_utf8_lossy(&self.raw)
            );
            self.raw.extend_from_slice(&buf[..n]);
        }
    }

    pub fn finish(mut self) -> Resp {
        self.s.read_to_end(&mut self.raw).expect("read stream");
        parse_response(&self.raw)
    }
}

/// Asserts `r` is an OpenAI error with status `status`, and returns its `error`.
pub fn assert_error(r: &Resp, status: u16, what: &str) -> Value {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    let v = r.json();
    let e = &v["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
    assert!(e["type"].is_string(), "{what}: {v}");
    let obj = e.as_object().expect("error object");
    assert!(
        obj.contains_key("param") && obj.contains_key("code"),
        "{what}: {v}"
    );
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{what}"
    );
    e.clone()
}

pub fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/golden/smollm2_golden_public.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("golden json")
}

pub fn case(id: &str) -> Value {
    golden()["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no golden case {id}"))
        .clone()
}

/// Runs `f` over `items` on one thread each and returns the results in order.
pub fn parallel<T: Send + 'static, R: Send + 'static>(
    items: Vec<T>,
    f: impl Fn(T) -> R + Send + Sync + 'static,
) -> Vec<R> {
    let f = Arc::new(f);
    let handles: Vec<_> = items
        .into_iter()
        .map(|it| {
            let f = f.clone();
            std::thread::spawn(move || f(it))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("worker thread"))
        .collect()
}

/// About `n` tokens of varied text that starts with `tag`.
pub fn long_text(tag: &str, words: usize) -> String {
    const W: [&str; 16] = [
        "river", "lantern", "copper", "meadow", "violet", "harbor", "quartz", "falcon", "cedar",
        "ember", "glacier", "saffron", "tundra", "willow", "zephyr", "orchid",
    ];
    let mut s = format!("{tag}.");
    for i in 0..words {
        s.push(' ');
        s.push_str(W[(i * 7 + i / 16) % W.len()]);
        if i % 12 == 11 {
            s.push('.');
        }
    }
    s
}

/// `(PUB, replay)` endpoints from the ready line, made dialable on loopback.
pub fn kv_endpoints(srv: &Server) -> (String, Option<String>) {
    let line = srv.ready_line();
    let after = line
        .split("KV events on ")
        .nth(1)
        .unwrap_or_else(|| panic!("no KV events in the ready line: {line}"));
    let fix = |s: &str| s.replace("0.0.0.0", "127.0.0.1");
    let pub_ep = fix(after.split([' ', ')', ',']).next().expect("endpoint"));
    let replay = after
        .split("(replay ")
        .nth(1)
        .map(|r| fix(r.split(')').next().expect("replay endpoint")));
    (pub_ep, replay)
}
