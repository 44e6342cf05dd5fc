//! `reprise`: the binary. `reprise serve` starts the workers, the router and
//! the OpenAI-compatible HTTP API in one process; `reprise route` (crate
//! `reprise-route`) routes to remote workers; `reprise bench` (crate `reprise-bench`)
//! measures. The HTTP layer both servers share is the crate `reprise-api`.
//!
//! A request's path: the shared HTTP skeleton (`reprise_api::app`: admission, then
//! on the CPU pool the fields, template and tokenization) → `backend.rs` (the
//! in-process workers of `local.rs` as a `Backend`) → `dispatch.rs` (router, worker channel) →
//! `generate.rs` (worker events → text) → `completions.rs` / `chat.rs` → JSON, or
//! SSE via `sse.rs`.

mod backend;
mod chat;
mod cli;
mod completions;
mod config;
#[cfg(test)]
mod deploy_check;
mod dispatch;
mod generate;
mod kv_publisher;
mod local;
mod metrics;
mod sse;
mod startup;

use clap::Parser;
use cli::{Cli, Command, ServeArgs};
use std::process::ExitCode;

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let cfg = config::ServeConfig::from_args(args)?;
    // Listen before loading the model: a port in use is reported at once, and the
    // KV-event topic can name the real port.
    let listener = std::net::TcpListener::bind(cfg.http.addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.http.addr))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    // Before any model runs: every worker's quantized products read it.
    reprise_engine::cpu::quant::set_numerics(cfg.cpu_numerics);
    let loaded = startup::load_model(cfg.model.as_deref(), cfg.devices[0].model_device())?;
    let started = startup::start(&cfg, loaded, addr)?;
    let app = started.app;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let events = match &app.backend.kv_publisher {
            None => String::new(),
            Some(p) => match &p.replay_endpoint {
                None => format!(", KV events on {}", p.endpoint),
                Some(r) => format!(", KV events on {} (replay {r})", p.endpoint),
            },
        };
        let ready = format!(
            "reprise: serving {} on http://{} with {} worker{} (policy {}, {} KV blocks of {} tokens each, context {}, CPU kernels {} ({} numerics){events})",
            app.model.served_model_name,
            addr,
            cfg.devices.len(),
            if cfg.devices.len() == 1 { "" } else { "s" },
            cfg.policy,
            started.num_blocks,
            cfg.block_size,
            app.model.max_model_len,
            reprise_engine::simd::isa().name(),
            cfg.cpu_numerics.name(),
        );
        let refresher = tokio::spawn(local::refresh_loop(app.clone()));
        reprise_api::app::serve(app.clone(), listener, ready).await?;
        refresher.abort();
        app.backend.dispatcher.shutdown_workers();
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

fn bench_main(args: reprise_bench::BenchArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(reprise_bench::run(args))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,reprise=info")),
        )
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Route(args) => reprise_route::run(&args).map_err(anyhow::Error::from),
        Command::Bench(args) => bench_main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reprise: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
