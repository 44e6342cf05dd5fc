//! Publishes this process's KV events in vLLM's wire format over ZMQ, so llm-d (or a
//! `reprise route` in front of several processes) can route to it by prefix.
//!
//! One stream for the whole process: the union of its workers' caches
//! ([`reprise_router::union`]). Workers call [`KvPublisher::worker_events`] from their
//! own threads; under one short lock their events become a wire batch with the next
//! sequence number, which enters the replay buffer and a bounded queue to the PUB
//! thread. Nothing here can block a worker: a full queue drops the live copy (it stays
//! in the replay buffer, and the subscriber sees the gap and replays), and ZMQ's PUB
//! socket drops messages for subscribers beyond their high-water mark.
//!
//! Replay (vLLM 0.26's framing): a ROUTER socket answers `[start_seq as 8 bytes BE]`
//! (from a REQ, or a DEALER sending an empty delimiter first) with every buffered batch
//! from that number as `[topic, seq, payload]`, then `[b"", 0xff×8, b""]`.

use parking_lot::Mutex;
use reprise_protocol::wire::{
    encode_batch, seq_frame, EventFormat, WireBatch, WireEvent, REPLAY_END_SEQ,
};
use reprise_protocol::KvEvent;
use reprise_router::union::CacheUnion;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// vLLM's default high-water mark of the PUB socket (messages per subscriber).
const PUB_HWM: i32 = 100_000;
/// Batches waiting for the PUB thread before live copies are dropped.
const QUEUE: usize = 10_000;
/// How often the replay thread checks for shutdown while idle.
const POLL: Duration = Duration::from_millis(200);

/// Settings of the publisher (`reprise serve --kv-events-*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublisherConfig {
    /// PUB endpoint: bound when it holds `*` or `::` or is `ipc://` / `inproc://`,
    /// connected otherwise (vLLM's rule).
    pub endpoint: String,
    /// ROUTER endpoint for replays (always bound).
    pub replay_endpoint: Option<String>,
    /// Event encoding.
    pub format: EventFormat,
    /// Topic frame.
    pub topic: String,
    /// Batches kept for replay.
    pub buffer_steps: usize,
    /// Tokens per block (the `block_size` of every `BlockStored`).
    pub block_size: usize,
}

/// Why the publisher could not start.
#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    /// A socket could not be created, bound or connected.
    #[error("{option} {endpoint}: cannot {action}: {source}")]
    Socket {
        /// The option naming the endpoint.
        option: &'static str,
        /// The endpoint.
        endpoint: String,
        /// bind or connect.
        action: &'static str,
        /// ZMQ's reason.
        source: zmq::Error,
    },
    /// A publisher thread could not be started.
    #[error("cannot start the KV-event publisher thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Whether vLLM binds (rather than connects) a PUB endpoint.
pub fn binds(endpoint: &str) -> bool {
    endpoint.contains('*')
        || endpoint.contains("::")
        || endpoint.starts_with("ipc://")
        || endpoint.starts_with("inproc://")
}

struct State {
    union: CacheUnion,
    next_seq: u64,
    buffer: VecDeque<(u64, Arc<[u8]>)>,
    scratch: Vec<WireEvent>,
}

struct Shared {
    state: Mutex<State>,
    tx: flume::Sender<(u64, Arc<[u8]>)>,
    format: EventFormat,
    topic: Vec<u8>,
    buffer_steps: usize,
    stop: AtomicBool,
    batches: AtomicU64,
    dropped: AtomicU64,
}

/// The running publisher; shared by the workers' event sinks.
pub struct KvPublisher {
    shared: Arc<Shared>,
    /// The PUB endpoint as bound (a `*` port resolved) or connected.
    pub endpoint: String,
    /// The replay endpoint as bound.
    pub replay_endpoint: Option<String>,
}

impl KvPublisher {
    /// Binds or connects the sockets (so a bad address or a port in use is an error
    /// now) and starts the PUB and replay threads.
    pub fn start(cfg: &PublisherConfig) -> Result<Self, PublisherError> {
        let ctx = zmq::Context::new();
        let sock_err = |option, endpoint: &str, action, source| PublisherError::Socket {
            option,
            endpoint: endpoint.to_string(),
            action,
            source,
        };
        let publisher = ctx
            .socket(zmq::PUB)
            .map_err(|e| sock_err("--kv-events-endpoint", &cfg.endpoint, "create a socket", e))?;
        let _ = publisher.set_sndhwm(PUB_HWM);
        let _ = publisher.set_linger(0);
        let endpoint = if binds(&cfg.endpoint) {
            publisher
                .bind(&cfg.endpoint)
                .map_err(|e| sock_err("--kv-events-endpoint", &cfg.endpoint, "bind", e))?;
            last_endpoint(&publisher).unwrap_or_else(|| cfg.endpoint.clone())
        } else {
            publisher
                .connect(&cfg.endpoint)
                .map_err(|e| sock_err("--kv-events-endpoint", &cfg.endpoint, "connect", e))?;
            cfg.endpoint.clone()
        };
        let replay = match &cfg.replay_endpoint {
            None => None,
            Some(ep) => {
                let opt = "--kv-events-replay-endpoint";
                let s = ctx
                    .socket(zmq::ROUTER)
                    .map_err(|e| sock_err(opt, ep, "create a socket", e))?;
                // A replay sends up to the whole buffer at once: never drop part of it.
                let _ = s.set_sndhwm(0);
                let _ = s.set_linger(0);
                let _ = s.set_rcvtimeo(POLL.as_millis() as i32);
                s.bind(ep).map_err(|e| sock_err(opt, ep, "bind", e))?;
                let bound = last_endpoint(&s).unwrap_or_else(|| ep.clone());
                Some((s, bound))
            }
        };
        let (tx, rx) = flume::bounded(QUEUE);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                union: CacheUnion::new(cfg.block_size),
                next_seq: 0,
                buffer: VecDeque::with_capacity(cfg.buffer_steps.min(1 << 16)),
                scratch: Vec::new(),
            }),
            tx,
            format: cfg.format,
            topic: cfg.topic.as_bytes().to_vec(),
            buffer_steps: cfg.buffer_steps.max(1),
            stop: AtomicBool::new(false),
            batches: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let topic = shared.topic.clone();
        std::thread::Builder::new()
            .name("reprise-kv-pub".into())
            .spawn(move || {
                for (seq, payload) in rx.iter() {
                    let frames: [&[u8]; 3] = [&topic, &seq_frame(seq), &payload];
                    if let Err(e) = publisher.send_multipart(frames, zmq::DONTWAIT) {
                        tracing::debug!("KV-event batch {seq} not published: {e}");
                    }
                }
            })?;
        let replay_endpoint = match replay {
            None => None,
            Some((sock, bound)) => {
                let sh = shared.clone();
                std::thread::Builder::new()
                    .name("reprise-kv-replay".into())
                    .spawn(move || serve_replays(&sh, &sock))?;
                Some(bound)
            }
        };
        Ok(Self {
            shared,
            endpoint,
            replay_endpoint,
        })
    }

    /// Publish what `worker`'s events change in the union (nothing when they change
    /// nothing: a block another worker already holds). Called on the worker's thread.
    pub fn worker_events(&self, worker: usize, events: &[KvEvent]) {
        let sh = &self.shared;
        let mut st = sh.state.lock();
        let st = &mut *st;
        st.scratch.clear();
        st.union.apply(worker, events, &mut st.scratch);
        if st.scratch.is_empty() {
            return;
        }
        let batch = WireBatch {
            ts: reprise_api::ids::unix_now_f64(),
            events: std::mem::take(&mut st.scratch),
            data_parallel_rank: Some(0),
        };
        let payload: Arc<[u8]> = encode_batch(&batch, sh.format).into();
        st.scratch = batch.events;
        let seq = st.next_seq;
        st.next_seq += 1;
        if st.buffer.len() == sh.buffer_steps {
            st.buffer.pop_front();
        }
        st.buffer.push_back((seq, payload.clone()));
        sh.batches.fetch_add(1, Ordering::Relaxed);
        // Sent under the lock so the PUB order is the sequence order.
        if sh.tx.try_send((seq, payload)).is_err() {
            sh.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Batches published so far, and live copies dropped because the PUB thread lagged.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.batches.load(Ordering::Relaxed),
            self.shared.dropped.load(Ordering::Relaxed),
        )
    }
}

impl Drop for KvPublisher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

fn last_endpoint(s: &zmq::Socket) -> Option<String> {
    s.get_last_endpoint().ok().and_then(Result::ok)
}

/// Answers replay requests until the publisher is dropped.
fn serve_replays(sh: &Shared, sock: &zmq::Socket) {
    while !sh.stop.load(Ordering::Relaxed) {
        let frames = match sock.recv_multipart(0) {
            Ok(f) => f,
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => continue,
            Err(e) => {
                tracing::error!("KV-event replay socket failed: {e}; replays stop");
                return;
            }
        };
        // [identity, "", start] from REQ or a DEALER with a delimiter; [identity, start] without.
        let (identity, delimited, start) = match frames.as_slice() {
            [id, empty, start] if empty.is_empty() => (id, true, start),
            [id, start] => (id, false, start),
            other => {
                tracing::debug!("ignoring a replay request of {} frames", other.len());
                continue;
            }
        };
        let Some(start) = reprise_protocol::wire::parse_seq(start) else {
            tracing::debug!(
                "ignoring a replay request whose start is {} bytes, not 8",
                start.len()
            );
            continue;
        };
        let batches: Vec<(u64, Arc<[u8]>)> = {
            let st = sh.state.lock();
            st.buffer
                .iter()
                .filter(|(s, _)| *s >= start)
                .cloned()
                .collect()
        };
        let send = |parts: [&[u8]; 3]| {
            let r = if delimited {
                sock.send_multipart([identity.as_slice(), b"", parts[0], parts[1], parts[2]], 0)
            } else {
                sock.send_multipart([identity.as_slice(), parts[0], parts[1], parts[2]], 0)
            };
            r.is_ok()
        };
        let mut ok = true;
        for (seq, payload) in &batches {
            if !send([&sh.topic, &seq_frame(*seq), payload]) {
                ok = false;
                break;
            }
        }
        if ok {
            let _ = send([b"", &REPLAY_END_SEQ, b""]);
        }
    }
}
