//! One remote worker's KV events, read on a thread of their own: a ZMQ SUB socket on
//! every topic for the live stream, a DEALER for replays, and a
//! [`RemoteStream`] that turns them into the router's own keys.
//!
//! Replays (vLLM's protocol: `["", start_seq]` to the ROUTER socket; answers
//! `["", topic, seq, payload]`, or `["", seq, payload]` from older vLLM, then an end
//! marker whose seq frame is `0xff×8`): from 0 when the subscriber starts, from the
//! first missing number on a gap, from 0 when the worker restarted or came back from
//! being unreachable. Live batches arriving meanwhile are held and applied after it.
//! When a replay cannot fill a gap (no replay socket, no answer within
//! [`REPLAY_TIMEOUT`], or its buffer no longer reaches back) the worker's entries are
//! dropped and the stream is accepted from where it is: the index then misses
//! blocks, but never keeps one the worker has dropped.

use super::worker::RemoteWorker;
use reprise_protocol::wire::{parse_seq, REPLAY_END_SEQ};
use reprise_protocol::KvEvent;
use reprise_router::remote::{Offer, RemoteStream};
use reprise_router::Router;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a replay may stay silent before it counts as failed.
pub const REPLAY_TIMEOUT: Duration = Duration::from_secs(2);
/// Live batches held while a replay runs; past it the oldest are dropped (the replay
/// or a resync covers them).
const MAX_HELD: usize = 100_000;
/// Replays from the same number that may fail to fill a gap before it is given up.
const MAX_SAME_REPLAYS: u32 = 3;

/// Commands to a subscriber.
pub enum Command {
    /// The worker was unreachable and is back (maybe restarted): forget its entries and
    /// replay from 0.
    Resync,
}

/// A running subscriber; dropping it stops the thread.
pub struct Subscriber {
    stop: Arc<AtomicBool>,
    /// Where to send [`Command`]s.
    pub commands: flume::Sender<Command>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts `worker`'s subscriber feeding `router` (worker index = `worker.index`).
/// Sockets connect lazily (ZMQ retries in the background), so a worker that is not
/// up yet is picked up when it starts.
pub fn spawn(
    worker: Arc<RemoteWorker>,
    router: Arc<Router>,
) -> std::io::Result<Option<Subscriber>> {
    let Some(events) = worker.spec.events.clone() else {
        return Ok(None);
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = flume::unbounded();
    let stop2 = stop.clone();
    std::thread::Builder::new()
        .name(format!("reprise-route-events-{}", worker.index))
        .spawn(move || {
            if let Err(e) = run(&worker, &router, &events, &stop2, &rx) {
                tracing::error!(worker = worker.index, "KV-event subscriber stopped: {e}");
            }
        })?;
    Ok(Some(Subscriber { stop, commands: tx }))
}

struct Replay {
    from: u64,
    last_message: Instant,
}

struct State<'a> {
    worker: &'a RemoteWorker,
    router: &'a Router,
    stream: RemoteStream,
    dealer: Option<zmq::Socket>,
    replay: Option<Replay>,
    /// The last replay's start and how many times in a row it was asked for.
    last_from: Option<(u64, u32)>,
    held: BTreeMap<u64, Vec<u8>>,
    out: Vec<KvEvent>,
}

fn run(
    worker: &RemoteWorker,
    router: &Router,
    events: &str,
    stop: &AtomicBool,
    commands: &flume::Receiver<Command>,
) -> Result<(), zmq::Error> {
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB)?;
    sub.set_linger(0)?;
    sub.set_rcvhwm(0)?;
    sub.connect(events)?;
    sub.set_subscribe(b"")?;
    let dealer = match &worker.spec.replay {
        None => None,
        Some(r) => {
            let d = ctx.socket(zmq::DEALER)?;
            d.set_linger(0)?;
            d.set_rcvhwm(0)?;
            d.connect(r)?;
            Some(d)
        }
    };
    let mut st = State {
        worker,
        router,
        stream: RemoteStream::new(router.hasher()),
        dealer,
        replay: None,
        last_from: None,
        held: BTreeMap::new(),
        out: Vec::new(),
    };
    st.request_replay(0);
    while !stop.load(Ordering::Relaxed) {
        while let Ok(Command::Resync) = commands.try_recv() {
            st.stream.reset(&mut st.out);
            st.held.clear();
            st.replay = None;
            st.last_from = None;
            st.apply();
            st.request_replay(0);
        }
        let (live, replayed) = {
            let mut items = vec![sub.as_poll_item(zmq::POLLIN)];
            if let Some(d) = &st.dealer {
                items.push(d.as_poll_item(zmq::POLLIN));
            }
            zmq::poll(&mut items, 100)?;
            (
                items[0].is_readable(),
                items.get(1).is_some_and(|i| i.is_readable()),
            )
        };
        if live {
            while let Ok(parts) = sub.recv_multipart(zmq::DONTWAIT) {
                match <[Vec<u8>; 3]>::try_from(parts) {
                    Ok([_topic, seq, payload]) => match parse_seq(&seq) {
                        Some(seq) => st.live(seq, payload),
                        None => tracing::debug!(
                            worker = worker.index,
                            "ignoring a message whose seq is not 8 bytes"
                        ),
                    },
                    Err(p) => tracing::debug!(
                        worker = worker.index,
                        "ignoring a message of {} frames",
                        p.len()
                    ),
                }
            }
        }
        if replayed {
            while let Some(Ok(parts)) = st.dealer.as_ref().map(|d| d.recv_multipart(zmq::DONTWAIT))
            {
                st.replayed(parts);
            }
        }
        if st
            .replay
            .as_ref()
            .is_some_and(|r| r.last_message.elapsed() > REPLAY_TIMEOUT)
        {
            tracing::warn!(
                worker = worker.index,
                "KV-event replay got no answer; resyncing from the live stream"
            );
            st.replay = None;
            st.flush_held(true);
        }
        worker.set_stream_stats(st.stream.stats());
    }
    Ok(())
}

impl State<'_> {
    fn apply(&mut self) {
        if self.out.is_empty() {
            return;
        }
        if let Err(e) = self.router.apply_events(self.worker.index, &self.out) {
            tracing::warn!(
                worker = self.worker.index,
                "KV events rejected by the router: {e}"
            );
        }
        self.out.clear();
    }

    /// Asks for a replay from `from`; false when the same one failed too often.
    fn request_replay(&mut self, from: u64) -> bool {
        let Some(d) = &self.dealer else { return false };
        let n = match self.last_from {
            Some((f, n)) if f == from => n + 1,
            _ => 1,
        };
        if n > MAX_SAME_REPLAYS {
            return false;
        }
        self.last_from = Some((from, n));
        match d.send_multipart([&b""[..], &from.to_be_bytes()[..]], zmq::DONTWAIT) {
            Ok(()) => {
                self.replay = Some(Replay {
                    from,
                    last_message: Instant::now(),
                })
            }
            Err(e) => tracing::debug!(worker = self.worker.index, "replay request not sent: {e}"),
        }
        true
    }

    fn hold(&mut self, seq: u64, payload: Vec<u8>) {
        self.held.insert(seq, payload);
        while self.held.len() > MAX_HELD {
            self.held.pop_first();
        }
    }

    /// Offers a batch; `Err` is an undecodable payload (logged and skipped).
    fn offer(&mut self, seq: u64, payload: &[u8], replayed: bool) -> Option<Offer> {
        match self.stream.offer(seq, payload, replayed, &mut self.out) {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!(
                    worker = self.worker.index,
                    seq,
                    "skipping a KV-event batch: {e}"
                );
                None
            }
        }
    }

    fn live(&mut self, seq: u64, payload: Vec<u8>) {
        if self.replay.is_some() {
            self.hold(seq, payload);
            return;
        }
        match self.offer(seq, &payload, false) {
            Some(Offer::Gap { from }) => {
                self.hold(seq, payload);
                if !self.request_replay(from) {
                    self.flush_held(true);
                }
            }
            Some(Offer::Restarted { applied: false }) => {
                self.apply();
                self.hold(seq, payload);
                self.last_from = None;
                if !self.request_replay(0) {
                    self.flush_held(true);
                }
            }
            _ => {}
        }
        self.apply();
    }

    fn replayed(&mut self, mut parts: Vec<Vec<u8>>) {
        if parts.first().is_some_and(Vec::is_empty) {
            parts.remove(0);
        }
        // vLLM 0.26: [topic, seq, payload]; older: [seq, payload].
        let (seq, payload) = match parts.len() {
            3 => (parts[1].clone(), parts.swap_remove(2)),
            2 => (parts[0].clone(), parts.swap_remove(1)),
            n => {
                tracing::debug!(
                    worker = self.worker.index,
                    "ignoring a replay message of {n} frames"
                );
                return;
            }
        };
        let Some(r) = self.replay.as_mut() else {
            return; // an answer to a replay we gave up on
        };
        r.last_message = Instant::now();
        let from = r.from;
        if seq == REPLAY_END_SEQ {
            self.replay = None;
            self.flush_held(false);
            return;
        }
        let Some(seq) = parse_seq(&seq) else { return };
        if let Some(Offer::Gap { .. }) = self.offer(seq, &payload, true) {
            // The worker's buffer no longer reaches back to `from`: accept from here.
            tracing::warn!(
                worker = self.worker.index,
                from,
                first = seq,
                "replay cannot fill the gap; resyncing"
            );
            self.stream.resync(seq, &mut self.out);
            self.offer(seq, &payload, true);
        }
        self.apply();
    }

    /// Applies the held live batches in order; a gap left among them (lost for good)
    /// resyncs when `resync_gaps`, else asks for another replay.
    fn flush_held(&mut self, resync_gaps: bool) {
        while let Some((seq, payload)) = self.held.pop_first() {
            match self.offer(seq, &payload, false) {
                Some(Offer::Gap { from }) if !resync_gaps && self.request_replay(from) => {
                    self.held.insert(seq, payload);
                    self.apply();
                    return;
                }
                Some(Offer::Gap { .. }) | Some(Offer::Restarted { applied: false }) => {
                    self.stream.resync(seq, &mut self.out);
                    self.offer(seq, &payload, false);
                }
                _ => {}
            }
        }
        self.apply();
    }
}
