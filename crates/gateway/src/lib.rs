//! # unbroken gateway
//!
//! The server as a library: [`app`] builds the router over an [`AppState`], [`run`]
//! serves it on a listener until a shutdown signal, then drains. A generation is a
//! detached writer (see [`generation`]) into the stream log; every HTTP response is only
//! a reader that replays from `Last-Event-ID` and follows live.
//!
//! # Layout
//! - [`config`]: the TOML + environment configuration, validated at start-up.
//! - [`state`]: [`AppState`], shared by handlers and supervisors, built from the config.
//! - [`auth`]: API keys → [`auth::Principal`]; streams are bound to their principal.
//! - [`router`]: model → targets; queues, permits, retries, fallback, peek-before-commit.
//! - [`breaker`]: a circuit breaker per target.
//! - [`generation`]: a generation's whole life: starting it as one detached unit, its
//!   writer (continuation after upstream failure), the session relay, the one reader path
//!   of answers, and takeover of answers whose writer died.
//! - [`live`]: generations running here and their reader counts (`reader_grace`).
//! - [`http`]: routes; `render` turns records into OpenAI chunks or generic events;
//!   `body` is the reader cursor behind every SSE response.
//! - [`writers`]: this node's leases for request-driven writes (topics, tasks).
//! - [`error`]: [`error::ApiError`], the OpenAI-shaped error every client sees.

mod accept;
pub mod auth;
pub mod breaker;
pub mod config;
pub mod error;
pub mod generation;
pub mod http;
pub mod idle;
pub mod limits;
pub mod live;
pub mod responses;
pub mod router;
pub mod signal;
mod slow;
pub mod state;
mod tls;
pub mod usage;
pub mod writers;

use std::future::Future;

use axum::Router;
use tokio::net::TcpListener;

pub use config::Config;
pub use state::AppState;
pub use state::open_log;

/// The gateway's routes over `state`.
pub fn app(state: AppState) -> Router {
    http::ops::prometheus();
    http::ops::register_metrics(&state.models);
    http::routes(state)
}

/// Load `[server] tls_cert` and `tls_key`, if set, so a bad pair is reported before the
/// gateway says where it listens.
///
/// # Errors
/// A message naming the file at fault.
pub fn check_tls(server: &config::ServerConfig) -> Result<(), String> {
    tls::acceptor(server).map(|_| ())
}

/// Serve until `shutdown` resolves, then shut down gracefully: stop accepting, end every
/// reader cleanly (clients reconnect elsewhere with their `Last-Event-ID`), let writers
/// finish within `shutdown_grace`, and stop the rest where they are — their streams stay
/// unfinished, never reported as finished.
///
/// # Errors
/// I/O errors of the listener.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let token = state.shutdown.clone();
    // Housekeeping has its own tracker: `state.tasks` holds generations only.
    let housekeeping = tokio_util::task::TaskTracker::new();
    housekeeping.spawn(streamlog::retention::purge_periodically(
        std::sync::Arc::clone(&state.log),
        std::time::Duration::from_secs(60),
        state.shutdown.raised(),
    ));
    housekeeping.spawn(http::hub::retention(state.clone(), state.shutdown.clone()));
    housekeeping.spawn(generation::scan_periodically(state.clone()));
    housekeeping.spawn(idle::sweep_periodically(
        state.clone(),
        state.shutdown.clone(),
    ));
    housekeeping.spawn(limits::keep_holds(
        state.holdings.clone(),
        state.shutdown.clone(),
    ));
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: draining answers in flight, closing other readers");
        token.raise();
    };
    let grace = state.server.shutdown_grace();
    // The grace counts from the signal, while the server drains: answers in flight keep
    // their readers until they finish or the grace ends (then those readers get an
    // `interrupted` error event); every other reader ends at the signal.
    let stopping = state.clone();
    let drain = async move {
        stopping.shutdown.raised().await;
        stopping.tasks.close();
        if tokio::time::timeout(grace, stopping.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "writers still running after the shutdown grace; stopping them"
            );
            stopping.hard_stop.raise();
        }
    };
    let mut options = match accept::Options::new(&state.server, state.limits.max_connections) {
        Ok(options) => options,
        Err(error) => {
            // Nothing was served: stop the housekeeping started above.
            state.shutdown.raise();
            return Err(error);
        }
    };
    options.slow_reader_timeout = (state.limits.slow_reader_timeout_ms > 0)
        .then(|| std::time::Duration::from_millis(state.limits.slow_reader_timeout_ms));
    let serve = accept::serve(listener, app(state.clone()), options, signal);
    let mut drain = std::pin::pin!(drain);
    let mut serve = std::pin::pin!(serve);
    tokio::select! {
        // The server returns once the signal came: then the drain is under way.
        () = &mut serve => (&mut drain).await,
        () = &mut drain => serve.await,
    }
    // A generation a request started just before the signal, after the drain looked.
    if tokio::time::timeout(grace, state.tasks.wait())
        .await
        .is_err()
    {
        state.hard_stop.raise();
        state.tasks.wait().await;
    }
    housekeeping.close();
    housekeeping.wait().await;
    Ok(())
}

/// Bind `addr` with a listen backlog fit for bursts of thousands of connections (the
/// standard library's default of 128 overflows and makes clients retry SYNs for seconds).
///
/// # Errors
/// When the address cannot be bound.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
