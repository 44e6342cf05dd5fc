//! The serve loop both apps run: the ready line, then the listener until SIGTERM /
//! ctrl-c, then draining with a deadline.

use crate::listener::{self, ListenerLimits};
use crate::shutdown::{signal, Shutdown};
use axum::Router;
use std::sync::Arc;
use std::time::Duration;

/// Prints the ready line, serves `app` until SIGTERM / ctrl-c, then stops accepting,
/// calls `drain` (which stops admission and returns the requests in flight) and
/// gives those requests `timeout` to finish. Shared by `serve` and `route`.
pub async fn serve_until_signal(
    app: Router,
    listener: tokio::net::TcpListener,
    limits: ListenerLimits,
    timeout: Duration,
    ready_line: String,
    drain: impl Fn() -> usize + Send + Sync + 'static,
) -> std::io::Result<()> {
    let drain = Arc::new(drain);
    let (trigger, shutdown) = Shutdown::new();
    let signalled = signal();
    let d = drain.clone();
    let server = listener::serve(listener, app, limits, async move {
        signalled.await;
        let in_flight = d();
        tracing::info!(
            in_flight,
            "shutting down: no new requests; waiting for in-flight ones"
        );
        let _ = trigger.send(true);
    });
    println!("{ready_line}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let deadline = async {
        shutdown.started().await;
        tokio::time::sleep(timeout).await;
    };
    tokio::select! {
        _ = server => {},
        _ = deadline => {
            tracing::warn!(
                in_flight = drain(),
                "shutdown deadline passed; dropping the remaining requests"
            );
        }
    }
    Ok(())
}
