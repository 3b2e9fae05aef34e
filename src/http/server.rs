//! `hookscope serve`: opens the engine, starts the flusher and the HTTP API, and on
//! SIGTERM / ctrl-c stops accepting, finishes in-flight requests, flushes the buffer
//! to Parquet and stops the WAL.
//!
//! Invariant: the server refuses to listen beyond loopback without a read-side token
//! unless started with `--insecure`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::engine::{Engine, EngineSettings, Mode};
use crate::http::{self, AppState};
use crate::ingest::receive::Receiver;
use crate::outbound::forward::Forwarder;

/// Options of `serve` that are not configuration.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Allow listening beyond loopback without a token.
    pub insecure: bool,
}

/// Runs the server until a shutdown signal.
pub async fn serve(config: Config, options: ServeOptions) -> anyhow::Result<()> {
    let addr = resolve(&config.listen).await?;
    if !addr.ip().is_loopback() && config.auth.token.is_none() && !options.insecure {
        bail!(
            "refusing to listen on {addr} without a token: anyone who can reach it could read every delivery. \
             Set HOOKSCOPE_TOKEN (or [auth] token), or pass --insecure if the network is trusted"
        );
    }
    let receiver =
        Receiver::new(&config).map_err(|e| anyhow::anyhow!("invalid source configuration: {e}"))?;
    let engine = Engine::open(EngineSettings::from_config(&config), Mode::Serve)
        .await
        .with_context(|| format!("cannot open data directory {}", config.data_dir.display()))?;
    let replay = engine.replay_summary();
    tracing::info!(
        data_dir = %config.data_dir.display(),
        wal_records = replay.records,
        torn_bytes_cut = replay.torn_bytes_cut,
        "engine open"
    );
    let mut queries = crate::monitor::Registry::load(&config.queries_dirs);
    queries.check(engine.query()).await;
    for note in queries.notes() {
        tracing::warn!("saved queries: {note}");
    }
    for problem in queries.problems() {
        tracing::error!("saved query not used: {problem}");
    }
    tracing::info!(
        queries = queries.queries().count(),
        problems = queries.problems().len(),
        "saved queries loaded"
    );
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (is another server using the port?)"))?;
    let local = listener.local_addr()?;
    let queries = Arc::new(queries);
    let runs: Arc<crate::monitor::runs::RunLog> = Default::default();
    let metrics: Arc<crate::telemetry::metrics::Metrics> = Default::default();
    let notifier = Arc::new(
        crate::outbound::sinks::Notifier::new(&config.alerts.sinks, Arc::clone(&metrics))
            .map_err(anyhow::Error::msg)?,
    );
    let sender = Arc::clone(&notifier);
    let alerting = Arc::new(crate::monitor::alerts::Alerting::new(
        config.alerts.renotify.0,
        move |alert| sender.send(alert),
    ));
    // Set when a stop signal arrives: long-lived answers (the live stream) end, so
    // the graceful shutdown does not wait for their clients.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let state = Arc::new(AppState {
        engine: Arc::clone(&engine),
        receiver,
        forwarder: Forwarder::new().map_err(anyhow::Error::msg)?,
        config,
        metrics,
        queries: Arc::clone(&queries),
        runs: Arc::clone(&runs),
        alerting: Arc::clone(&alerting),
        live: tokio::sync::broadcast::channel(super::api::LIVE_CAPACITY).0,
        stopping,
    });
    let app = http::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let flusher = engine.spawn_flusher(stop_rx.clone());
    let interval = engine.settings().compact_interval;
    for (table, days) in &engine.settings().retention {
        if interval.is_zero() {
            tracing::warn!(
                table = table.name(),
                days,
                "retention is set but [parquet] compact_interval is 0: nothing expires while the server runs (`hookscope compact` applies it)"
            );
        } else {
            tracing::info!(
                table = table.name(),
                days,
                "retention: hourly partitions older than this many days are dropped"
            );
        }
    }
    let scheduler = crate::monitor::scheduler::spawn(
        Arc::clone(&engine),
        queries,
        runs,
        alerting,
        stop_rx.clone(),
    );
    let compactor = (!interval.is_zero()).then(|| engine.spawn_compactor(interval, stop_rx));
    // Machine-readable first line on stdout: tests and scripts wait for it.
    println!("hookscope listening on http://{local}");
    tracing::info!(%local, "listening");
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            let _ = stopping_tx.send(true);
        })
        .await
        .context("HTTP server failed")?;
    tracing::info!("shutting down: flushing the buffer to Parquet");
    let _ = stop_tx.send(true);
    let _ = scheduler.await;
    notifier.drain(std::time::Duration::from_secs(5)).await;
    let _ = flusher.await;
    if let Some(compactor) = compactor {
        let _ = compactor.await;
    }
    engine
        .shutdown()
        .await
        .context("final flush failed; the WAL keeps the rows for the next start")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn resolve(listen: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(addr) = listen.parse() {
        return Ok(addr);
    }
    tokio::net::lookup_host(listen)
        .await
        .with_context(|| {
            format!("invalid listen address {listen:?}: expected host:port, e.g. 127.0.0.1:8080")
        })?
        .next()
        .with_context(|| format!("listen address {listen:?} resolves to nothing"))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
