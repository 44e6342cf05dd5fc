//! SIGTERM / ctrl-c: stop accepting, let in-flight requests finish within the
//! deadline, then let the workers exit.

use std::future::Future;
use tokio::sync::watch;

/// Installs the SIGTERM and SIGINT handlers now and returns a future that
/// resolves on the first of them.
///
/// Why install eagerly: tokio registers a signal handler only when its future is
/// first polled, and the serve loop starts polling after the ready line is
/// printed. A supervisor that sends SIGTERM right after reading that line would
/// otherwise hit the default action and kill the process without draining.
/// Must be called inside the tokio runtime.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut t), Ok(mut i)) => {
                    tokio::select! {
                        _ = t.recv() => {},
                        _ = i.recv() => {},
                    }
                }
                // Without handlers the default actions apply; nothing to wait for.
                _ => std::future::pending::<()>().await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A one-shot "shutdown started" flag that many tasks can wait on.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// The flag and its trigger.
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self { rx })
    }

    /// Resolves once shutdown has started.
    pub async fn started(mut self) {
        let _ = self.rx.wait_for(|&v| v).await;
    }
}
