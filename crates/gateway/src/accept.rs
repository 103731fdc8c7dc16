//! The accept loop: every connection served by hyper with a deadline on its request
//! headers (`axum::serve` installs no timer, so hyper's header timeout never fires and a
//! client that sends nothing, or half a request, holds its connection for ever).
//!
//! On `signal` the listener closes and every connection shuts down gracefully: a request
//! in flight finishes (the SSE bodies end on the gateway's own shutdown signal), an idle
//! keep-alive connection closes. Connections still open `grace` + [`LAST_WRITES`] after
//! the signal (a client half-way through sending its request, say) are closed, so the
//! shutdown is bounded by the grace, not by the slowest client.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::signal::Signal;

/// After the shutdown grace, how long the last events (a reader's `interrupted` error)
/// have to reach their clients before the connections are closed.
pub const LAST_WRITES: Duration = Duration::from_secs(1);

/// Serve `app` on `listener` until `signal`, then wait for its connections to close, for
/// `grace` + [`LAST_WRITES`] at most.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    grace: Duration,
    signal: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    // One contiguous write per flush, as `axum::serve` did: a token's chunk header, event
    // and CRLF are copied together (callgrind over 20 k tokens: 616 M instructions, as
    // before, against 631 M with hyper's vectored writes).
    http.writev(false)
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    let connections = tokio_util::task::TaskTracker::new();
    let close_all = Signal::new();
    let mut signal = std::pin::pin!(signal);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    if !is_connection_error(&error) {
                        // Out of descriptors, say: wait for some to be freed rather than spin.
                        tracing::error!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
            () = &mut signal => break,
        };
        // Tokens are small writes that must leave at once: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        let connection =
            http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        let closed = close_all.clone();
        connections.spawn(async move {
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                }
                () = closed.raised() => {}
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace + LAST_WRITES, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace; closing them");
        close_all.raise();
    }
    connections.close();
    connections.wait().await;
}

/// Errors of one connection that the listener survives unharmed.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}
