//! Command-line options both servers share (`HttpArgs`, flattened into `serve` and
//! `route`), and their checks: one error type naming the option, sizes, durations,
//! addresses, the served name, ZMQ endpoints, and the listener's limits.

use crate::listener::ListenerLimits;
use clap::Args;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// A rejected option: one line naming the option.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--{option}: {message}")]
pub struct ConfigError {
    /// The option, without dashes.
    pub option: &'static str,
    /// What is wrong.
    pub message: String,
}

/// A [`ConfigError`] about `option`.
pub fn err(option: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        option,
        message: message.into(),
    }
}

/// Parses `512MiB`, `2GiB`, `1.5GB`, `64k`, `1000`: a byte count with an optional unit.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 512MiB, 2GiB, 1000000)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024.0f64.powi(4),
        "t" | "tb" => 1e12,
        u => {
            return Err(format!(
                "unknown size unit '{u}' in '{s}' (use B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    let bytes = value * mult;
    if !bytes.is_finite() || !(1.0..=1e15).contains(&bytes) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(bytes as u64)
}

/// The address `--host` and `--port` name.
fn listen_addr(host: &str, port: u16) -> Result<SocketAddr, ConfigError> {
    match host.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, port)),
        Err(_) => (host, port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut it| it.next())
            .ok_or_else(|| err("host", format!("cannot resolve '{host}'"))),
    }
}

/// `--served-model-name` must not be blank.
fn check_served_name(name: Option<&str>) -> Result<(), ConfigError> {
    match name {
        Some(n) if n.trim().is_empty() => Err(err("served-model-name", "must not be empty")),
        _ => Ok(()),
    }
}

/// `--max-body-bytes` in bytes (at least 1 KiB).
fn max_body_bytes(s: &str) -> Result<usize, ConfigError> {
    let max_body = parse_size(s).map_err(|m| err("max-body-bytes", m))?;
    if max_body < 1024 {
        return Err(err("max-body-bytes", "must be at least 1KiB"));
    }
    Ok(usize::try_from(max_body).unwrap_or(usize::MAX))
}

/// A duration option in seconds within `min..=max`.
pub fn seconds(option: &'static str, v: f64, min: f64, max: f64) -> Result<Duration, ConfigError> {
    if !v.is_finite() || v < min || v > max {
        return Err(err(
            option,
            format!("must be between {min} and {max} seconds, got {v}"),
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Checks a ZMQ endpoint: `tcp://HOST:PORT` (PORT a number or `*`), `ipc://PATH` or
/// `inproc://NAME`.
pub fn check_zmq_endpoint(option: &'static str, s: &str) -> Result<(), ConfigError> {
    let bad = |why: String| {
        err(
            option,
            format!("'{s}' {why} (expected tcp://HOST:PORT, e.g. tcp://*:5557, ipc://PATH or inproc://NAME)"),
        )
    };
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(bad("has no scheme".into()));
    };
    match scheme {
        "tcp" => {
            let Some((host, port)) = rest.rsplit_once(':') else {
                return Err(bad("has no port".into()));
            };
            if host.is_empty() {
                return Err(bad("has no host".into()));
            }
            if port != "*" && !port.parse::<u16>().is_ok_and(|p| p > 0) {
                return Err(bad(format!("has an invalid port '{port}'")));
            }
            Ok(())
        }
        "ipc" | "inproc" if !rest.is_empty() => Ok(()),
        "ipc" | "inproc" => Err(bad("has an empty name".into())),
        other => Err(bad(format!("uses the unsupported transport '{other}'"))),
    }
}

/// `--max-connections` and `--header-read-timeout`, checked.
fn listener_limits(a: &ListenerArgs) -> Result<ListenerLimits, ConfigError> {
    if a.max_connections == 0 || a.max_connections > 1_000_000 {
        return Err(err(
            "max-connections",
            format!("{} is out of range 1..=1000000", a.max_connections),
        ));
    }
    Ok(ListenerLimits {
        max_connections: a.max_connections,
        header_read_timeout: seconds("header-read-timeout", a.header_read_timeout, 0.01, 3600.0)?,
    })
}

/// The HTTP options of `serve` and `route`.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on (0 picks a free one; the ready line names it).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,

    /// Require `Authorization: Bearer <key>` on every route except /health and /metrics.
    #[arg(long, env = "REPRISE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Model name reported by /v1/models and accepted in requests (default: the model's
    /// name); `reprise route` forwards other names as LoRA adapters of it.
    #[arg(long)]
    pub served_model_name: Option<String>,

    /// Most generation requests in flight at once; more get 429.
    #[arg(long, default_value_t = 1024)]
    pub max_queue: usize,

    /// Largest accepted request body, e.g. `8MiB` (larger gets 413).
    #[arg(long, default_value = "8MiB")]
    pub max_body_bytes: String,

    /// Seconds to let in-flight requests finish after SIGTERM / ctrl-c.
    #[arg(long, default_value_t = 30.0)]
    pub shutdown_timeout: f64,

    /// Connection limits of the HTTP listener.
    #[command(flatten)]
    pub listener: ListenerArgs,
}

/// [`HttpArgs`], checked.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Listen address.
    pub addr: SocketAddr,
    /// Required bearer token.
    pub api_key: Option<String>,
    /// Name reported and accepted (`None`: the model's).
    pub served_model_name: Option<String>,
    /// Admission bound.
    pub max_queue: usize,
    /// Body limit in bytes.
    pub max_body_bytes: usize,
    /// Drain deadline.
    pub shutdown_timeout: Duration,
    /// Connection limits.
    pub listener: ListenerLimits,
}

impl HttpConfig {
    /// Checks every option; the first problem is the error.
    pub fn from_args(a: &HttpArgs) -> Result<Self, ConfigError> {
        check_served_name(a.served_model_name.as_deref())?;
        if a.max_queue == 0 {
            return Err(err("max-queue", "must be at least 1"));
        }
        Ok(Self {
            addr: listen_addr(&a.host, a.port)?,
            api_key: a.api_key.clone().filter(|k| !k.is_empty()),
            served_model_name: a.served_model_name.clone(),
            max_queue: a.max_queue,
            max_body_bytes: max_body_bytes(&a.max_body_bytes)?,
            shutdown_timeout: seconds("shutdown-timeout", a.shutdown_timeout, 0.0, 86400.0)?,
            listener: listener_limits(&a.listener)?,
        })
    }
}

/// Options of the HTTP listener, shared by `serve` and `route`.
#[derive(Debug, Clone, Args)]
pub struct ListenerArgs {
    /// Most client connections open at once; one more is answered 503 and closed.
    #[arg(long, default_value_t = 2048)]
    pub max_connections: usize,

    /// Seconds a connection has to send a request's complete headers (a client that
    /// connects and sends nothing, or trickles its headers, is cut off; an idle
    /// keep-alive connection is closed after this long).
    #[arg(long, default_value_t = 30.0)]
    pub header_read_timeout: f64,
}
