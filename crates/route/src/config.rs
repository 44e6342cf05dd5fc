//! `reprise route`'s options, checked in one place, and the worker list: `--worker`
//! specs and the `--workers-file` format.

use clap::Args;
use reprise_api::options::{check_zmq_endpoint, err, seconds, ConfigError, HttpArgs, HttpConfig};
use reprise_router::{PolicyKind, RouterConfig};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// One remote worker: its OpenAI-compatible base URL and, when it publishes them, its
/// KV-event and replay endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSpec {
    /// `http://host:port` (with an optional path prefix).
    pub url: String,
    /// ZMQ PUB endpoint of its KV events (`tcp://host:port`).
    #[serde(default)]
    pub events: Option<String>,
    /// ZMQ ROUTER endpoint answering replays.
    #[serde(default)]
    pub replay: Option<String>,
}

impl WorkerSpec {
    /// Parses `URL[,events=ADDR][,replay=ADDR]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',').map(str::trim);
        let url = parts.next().unwrap_or_default().to_string();
        let mut spec = WorkerSpec {
            url,
            events: None,
            replay: None,
        };
        for p in parts {
            match p.split_once('=') {
                Some(("events", v)) if spec.events.is_none() => spec.events = Some(v.to_string()),
                Some(("replay", v)) if spec.replay.is_none() => spec.replay = Some(v.to_string()),
                _ => {
                    return Err(format!(
                        "'{p}' in '{s}' is not events=ADDR or replay=ADDR (each at most once)"
                    ))
                }
            }
        }
        spec.check()?;
        Ok(spec)
    }

    /// Checks the URL and endpoints.
    pub fn check(&self) -> Result<(), String> {
        let (authority, _) = split_url(&self.url)?;
        if authority.is_empty() {
            return Err(format!("'{}' has no host", self.url));
        }
        for (opt, ep) in [("events", &self.events), ("replay", &self.replay)] {
            if let Some(ep) = ep {
                check_zmq_endpoint("worker", ep).map_err(|e| format!("{opt}={}", e.message))?;
            }
        }
        if self.replay.is_some() && self.events.is_none() {
            return Err(format!("{}: replay= needs events=", self.url));
        }
        Ok(())
    }

    /// `host:port` and the path prefix (without a trailing `/`).
    pub fn authority_and_base(&self) -> (String, String) {
        split_url(&self.url).unwrap_or_default()
    }
}

/// `http://host[:port][/base]` → (`host:port`, `/base`).
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        if url.starts_with("https://") {
            format!("'{url}': https is not supported; reach workers over http (e.g. inside a private network)")
        } else {
            format!("'{url}' is not an http:// URL")
        }
    })?;
    let (authority, base) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let authority = if authority.contains(':') && !authority.ends_with(']') {
        let (host, port) = authority.rsplit_once(':').unwrap_or((authority, ""));
        if port.parse::<u16>().is_err() {
            return Err(format!("'{url}' has an invalid port '{port}'"));
        }
        if host.is_empty() {
            return Err(format!("'{url}' has no host"));
        }
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, base.to_string()))
}

/// Reads a workers file: a JSON or YAML list of `{url, events, replay}`.
pub fn read_workers_file(path: &std::path::Path) -> Result<Vec<WorkerSpec>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // YAML is a superset of JSON: one parser reads both.
    let list: Vec<WorkerSpec> = serde_yaml_ng::from_str(&text).map_err(|e| {
        format!(
            "{}: not a list of {{url, events, replay}}: {e}",
            path.display()
        )
    })?;
    for w in &list {
        w.check().map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(list)
}

/// Options of `reprise route`.
#[derive(Debug, Clone, Args)]
pub struct RouteArgs {
    /// A worker, repeatable (order = worker index): `URL[,events=ZMQ_ADDR][,replay=ZMQ_ADDR]`,
    /// e.g. `http://10.0.0.5:8000,events=tcp://10.0.0.5:5557,replay=tcp://10.0.0.5:5558`.
    #[arg(long = "worker", value_name = "SPEC")]
    pub workers: Vec<String>,

    /// A JSON or YAML list of `{url, events, replay}` workers, re-read when it changes
    /// (after the --worker ones).
    #[arg(long, value_name = "FILE")]
    pub workers_file: Option<String>,

    /// Where the tokenizer and chat template come from (the same forms as `serve
    /// --model`; only those are loaded, never weights). Default: the default model.
    #[arg(long)]
    pub model: Option<String>,

    /// Routing policy: cost, precise, approximate, load, round-robin or random
    /// (default: the router config's, else cost).
    #[arg(long)]
    pub policy: Option<String>,

    /// A JSON or YAML file of router settings (policy, block_size, hash_algo, weights,
    /// overload, speculative_ttl_ms, speculative_max_ttl_ms, seed).
    #[arg(long, value_name = "FILE")]
    pub router_config: Option<String>,

    /// Tokens per block of the router's keys; every worker's block size must be a
    /// multiple of it (default: the router config's, else 16).
    #[arg(long)]
    pub block_size: Option<usize>,

    /// The HTTP options `serve` and `route` share.
    #[command(flatten)]
    pub http: HttpArgs,

    /// Seconds between health checks of each worker (two failures take it out of
    /// routing, two successes bring it back).
    #[arg(long, default_value_t = 0.25)]
    pub health_check_interval: f64,

    /// Seconds to wait for a worker's TCP connection.
    #[arg(long, default_value_t = 2.0)]
    pub connect_timeout: f64,

    /// Seconds to wait for a worker's response headers (a non-streaming response's
    /// headers come when it is complete).
    #[arg(long, default_value_t = 600.0)]
    pub first_byte_timeout: f64,
}

/// `reprise route`'s validated settings.
#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// Workers given with `--worker`.
    pub workers: Vec<WorkerSpec>,
    /// `--workers-file`, watched for changes.
    pub workers_file: Option<PathBuf>,
    /// Tokenizer source.
    pub model: Option<String>,
    /// Router settings (policy and block size resolved).
    pub router: RouterConfig,
    /// The HTTP options.
    pub http: HttpConfig,
    /// Between health checks.
    pub health_interval: Duration,
    /// TCP connect timeout to a worker.
    pub connect_timeout: Duration,
    /// Timeout for a worker's response headers.
    pub first_byte_timeout: Duration,
}

impl RouteConfig {
    /// Checks every option; the first problem is the error.
    pub fn from_args(a: &RouteArgs) -> Result<Self, ConfigError> {
        let workers = a
            .workers
            .iter()
            .map(|w| WorkerSpec::parse(w).map_err(|m| err("worker", m)))
            .collect::<Result<Vec<_>, _>>()?;
        let workers_file = a.workers_file.as_ref().map(PathBuf::from);
        if let Some(f) = &workers_file {
            // Must be readable now; later changes that break it are logged and ignored.
            read_workers_file(f).map_err(|m| err("workers-file", m))?;
        }
        if workers.is_empty() && workers_file.is_none() {
            return Err(err(
                "worker",
                "give at least one --worker URL or a --workers-file",
            ));
        }
        let mut router = match &a.router_config {
            None => RouterConfig::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| err("router-config", format!("{p}: {e}")))?;
                serde_yaml_ng::from_str(&text)
                    .map_err(|e| err("router-config", format!("{p}: {e}")))?
            }
        };
        if let Some(p) = &a.policy {
            router.policy = p
                .parse::<PolicyKind>()
                .map_err(|e| err("policy", e.to_string()))?;
        }
        if let Some(b) = a.block_size {
            if b == 0 || b > 1024 {
                return Err(err("block-size", format!("{b} is out of range 1..=1024")));
            }
            router.block_size = b;
        }
        router
            .validate()
            .map_err(|e| err("router-config", e.to_string()))?;
        Ok(Self {
            workers,
            workers_file,
            model: a.model.clone(),
            router,
            http: HttpConfig::from_args(&a.http)?,
            health_interval: seconds("health-check-interval", a.health_check_interval, 0.01, 60.0)?,
            connect_timeout: seconds("connect-timeout", a.connect_timeout, 0.01, 600.0)?,
            first_byte_timeout: seconds("first-byte-timeout", a.first_byte_timeout, 0.01, 86400.0)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: RouteArgs,
    }

    fn args(extra: &[&str]) -> RouteArgs {
        let mut v = vec!["route"];
        v.extend_from_slice(extra);
        Cmd::try_parse_from(v).expect("parse").args
    }

    #[test]
    fn worker_specs() {
        let w = WorkerSpec::parse(
            "http://10.0.0.5:8000,events=tcp://10.0.0.5:5557,replay=tcp://10.0.0.5:5558",
        )
        .unwrap();
        assert_eq!(w.events.as_deref(), Some("tcp://10.0.0.5:5557"));
        assert_eq!(
            w.authority_and_base(),
            ("10.0.0.5:8000".into(), String::new())
        );
        let w = WorkerSpec::parse("http://pod/prefix/").unwrap();
        assert_eq!(w.authority_and_base(), ("pod:80".into(), "/prefix".into()));
        for bad in [
            "10.0.0.5:8000",
            "https://x:1",
            "http://x:port",
            "http://:80",
            "http://x:1,events=5557",
            "http://x:1,replay=tcp://x:2",
            "http://x:1,foo=bar",
            "http://x:1,events=tcp://a:1,events=tcp://b:2",
        ] {
            assert!(WorkerSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_and_their_errors() {
        let c = RouteConfig::from_args(&args(&[
            "--worker",
            "http://127.0.0.1:8001",
            "--block-size",
            "64",
        ]))
        .unwrap();
        assert_eq!(c.router.block_size, 64);
        assert_eq!(c.router.policy, PolicyKind::Cost);
        let cases: [(&[&str], &str); 5] = [
            (&[], "--worker"),
            (&["--worker", "ftp://x"], "--worker"),
            (&["--worker", "http://x:1", "--policy", "best"], "--policy"),
            (
                &[
                    "--worker",
                    "http://x:1",
                    "--workers-file",
                    "/nonexistent.yaml",
                ],
                "--workers-file",
            ),
            (
                &["--worker", "http://x:1", "--health-check-interval", "0"],
                "--health-check-interval",
            ),
        ];
        for (a, opt) in cases {
            let e = RouteConfig::from_args(&args(a)).unwrap_err().to_string();
            assert!(e.starts_with(opt), "{a:?}: {e}");
        }
    }

    #[test]
    fn workers_files_in_json_and_yaml_and_router_config() {
        let dir = std::env::temp_dir().join(format!("reprise-route-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("w.json");
        std::fs::write(
            &json,
            r#"[{"url": "http://a:1", "events": "tcp://a:2"}, {"url": "http://b:1"}]"#,
        )
        .unwrap();
        let yaml = dir.join("w.yaml");
        std::fs::write(
            &yaml,
            "- url: http://a:1\n  events: tcp://a:2\n- url: http://b:1\n",
        )
        .unwrap();
        assert_eq!(
            read_workers_file(&json).unwrap(),
            read_workers_file(&yaml).unwrap()
        );
        std::fs::write(&yaml, "- url: http://a:1\n  evnts: tcp://a:2\n").unwrap();
        assert!(read_workers_file(&yaml).unwrap_err().contains("evnts"));
        let rc = dir.join("router.yaml");
        std::fs::write(&rc, "policy: load\nblock_size: 32\nweights: {prefix: 2, queue: 1, kv_usage: 1, running: 0}\n").unwrap();
        let c = RouteConfig::from_args(&args(&[
            "--worker",
            "http://x:1",
            "--router-config",
            rc.to_str().unwrap(),
        ]))
        .unwrap();
        assert_eq!(
            (c.router.policy, c.router.block_size),
            (PolicyKind::Load, 32)
        );
        let c = RouteConfig::from_args(&args(&[
            "--worker",
            "http://x:1",
            "--router-config",
            rc.to_str().unwrap(),
            "--policy",
            "random",
        ]))
        .unwrap();
        assert_eq!(
            c.router.policy,
            PolicyKind::Random,
            "the flag wins over the file"
        );
        std::fs::write(&rc, "policy: load\nblok_size: 32\n").unwrap();
        assert!(RouteConfig::from_args(&args(&[
            "--worker",
            "http://x:1",
            "--router-config",
            rc.to_str().unwrap()
        ]))
        .is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
