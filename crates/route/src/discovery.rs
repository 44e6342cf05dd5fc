//! `--workers-file`: re-read when its modification time changes (discovery systems
//! write such files); a new, valid list replaces the worker set. An unreadable or
//! invalid file is logged and the current set kept.

use crate::pool::WorkerSet;
use crate::remote::RouteApp;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often the file's modification time is looked at.
const POLL: Duration = Duration::from_secs(1);

/// Watches the workers file (if any) forever.
pub async fn watch(app: Arc<RouteApp>) {
    let state = &app.backend;
    let Some(path) = state.cfg.workers_file.clone() else {
        return;
    };
    let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen: Option<SystemTime> = mtime(&path);
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        let now = mtime(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let listed = match crate::config::read_workers_file(&path) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(
                    "--workers-file changed but cannot be used (keeping the current workers): {e}"
                );
                continue;
            }
        };
        let mut specs = state.cfg.workers.clone();
        specs.extend(listed);
        if specs == state.set().specs {
            continue;
        }
        if specs.len() > reprise_router::index::MAX_WORKERS {
            tracing::warn!(
                "--workers-file lists too many workers ({}); keeping the current ones",
                specs.len()
            );
            continue;
        }
        match WorkerSet::build(specs, &state.cfg.router) {
            Ok(set) => {
                tracing::info!(
                    workers = set.workers.len(),
                    "worker set changed; rebuilding the index from replays"
                );
                for w in &set.workers {
                    tracing::info!(worker = w.index, url = %w.spec.url, events = ?w.spec.events, "worker");
                }
                state.replace_set(set);
            }
            Err(e) => tracing::warn!("cannot use the new worker set: {e}"),
        }
    }
}
