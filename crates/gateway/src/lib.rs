//! # unbroken gateway
//!
//! The server as a library: [`app`] builds the router over an [`AppState`], [`run`]
//! serves it on a listener until a shutdown signal, then drains. A generation is a
//! detached writer (the [`supervisor`]) into the stream log; every HTTP response is only
//! a reader that replays from `Last-Event-ID` and follows live.
//!
//! # Layout
//! - [`config`]: the TOML + environment configuration, validated at start-up.
//! - [`state`]: [`AppState`], shared by handlers and supervisors, built from the config.
//! - [`auth`]: API keys → [`auth::Principal`]; streams are bound to their principal.
//! - [`router`]: model → targets; queues, permits, retries, fallback, peek-before-commit.
//! - [`supervisor`]: the writer of one generation; continuation after upstream failure.
//! - [`live`]: generations running here and their reader counts (`reader_grace`).
//! - [`http`]: routes; `render` turns records into OpenAI chunks or generic events;
//!   `body` is the reader cursor behind every SSE response.
//! - [`error`]: [`error::ApiError`], the OpenAI-shaped error every client sees.

pub mod auth;
pub mod config;
pub mod error;
pub mod http;
pub mod live;
pub mod router;
pub mod state;
pub mod supervisor;

use std::future::Future;

use axum::Router;
use tokio::net::TcpListener;

pub use config::Config;
pub use state::AppState;
pub use state::open_log;

/// The gateway's routes over `state`.
pub fn app(state: AppState) -> Router {
    http::ops::prometheus();
    http::routes(state)
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
        state.shutdown.clone().cancelled_owned(),
    ));
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: closing readers, draining writers");
        token.cancel();
    };
    axum::serve(listener, app(state.clone()))
        .with_graceful_shutdown(signal)
        .await?;
    state.tasks.close();
    let grace = state.server.shutdown_grace();
    if tokio::time::timeout(grace, state.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "writers still running after the shutdown grace; stopping them"
        );
        state.hard_stop.cancel();
        state.tasks.wait().await;
    }
    housekeeping.close();
    housekeeping.wait().await;
    Ok(())
}
