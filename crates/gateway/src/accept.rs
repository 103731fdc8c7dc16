//! The accept loop: every connection served by hyper with a deadline on its request
//! headers (`axum::serve` installs no timer, so hyper's header timeout never fires and a
//! client that sends nothing, or half a request, holds its connection for ever).
//!
//! Plain connections speak HTTP/1.1. With [`Options::tls`] every connection is HTTPS: the
//! TLS handshake runs in the connection's own task (a slow client cannot stall the loop)
//! under the header deadline, then ALPN picks the protocol: `h2` is served by hyper's
//! HTTP/2 (a bounded number of streams per connection, keep-alive pings), anything else
//! by the same HTTP/1.1 as plain connections. The protocol is taken from ALPN, not
//! sniffed from the first bytes as hyper-util's `auto` builder does: its sniffing has no
//! deadline, so a client silent after the handshake would hold its connection for ever.
//!
//! At most [`Options::max_connections`] are open at once (the `unbroken_connections`
//! gauge). One more is answered `503` with `Retry-After` straight on the socket, from the
//! loop itself, without a task or hyper, and closed; over TLS it is closed unanswered (a
//! handshake is the work the cap exists to refuse).
//!
//! hyper answers a request it cannot parse itself (`400`, `414`, `431`); on HTTP/1.1 those
//! answers get our JSON error body too ([`refusals`]). Every socket is a [`SlowWriter`]:
//! with [`Options::slow_reader_timeout`], a client that reads nothing for that long while
//! bytes wait for it is disconnected.
//!
//! On `signal` the listener closes and every connection shuts down gracefully: a request
//! in flight finishes (the SSE bodies end on the gateway's own shutdown signal), an idle
//! keep-alive connection closes (HTTP/2: a GOAWAY), a TLS handshake under way is
//! abandoned. Connections still open `grace` + [`LAST_WRITES`] after the signal (a client
//! half-way through sending its request, say) are closed, so the shutdown is bounded by
//! the grace, not by the slowest client.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::signal::Signal;
use crate::slow::SlowWriter;

mod refusals;

use refusals::Refusals;

/// After the shutdown grace, how long the last events (a reader's `interrupted` error)
/// have to reach their clients before the connections are closed.
pub const LAST_WRITES: Duration = Duration::from_secs(1);

/// HTTP/2: streams one connection may have open at once (each is a request and its
/// answer; the client is told in its SETTINGS, and refused past it).
const H2_MAX_STREAMS: u32 = 256;

/// HTTP/2: an idle connection is pinged this often, and closed when a ping is not
/// answered within as long (a peer that vanished without a FIN).
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// How [`serve`] serves.
pub struct Options {
    /// A client has this long to send a request's headers (HTTP/1.1), and to finish its
    /// TLS handshake.
    pub header_timeout: Duration,
    /// How long connections have to finish after the signal (plus [`LAST_WRITES`]).
    pub grace: Duration,
    /// Connections open at once, all clients together; 0 is no limit.
    pub max_connections: usize,
    /// HTTPS, when set.
    pub tls: Option<TlsAcceptor>,
    /// A connection whose writes have been refused this long (its client reads nothing
    /// while bytes wait) is closed ([`SlowWriter`]); `None` never closes one.
    pub slow_reader_timeout: Option<Duration>,
}

impl Options {
    /// The options `[server]` and `[limits] max_connections` ask for; loads the TLS
    /// certificate and key.
    ///
    /// # Errors
    /// An `InvalidInput` error naming the key at fault when the certificate or key cannot
    /// be loaded (see [`crate::tls::acceptor`]).
    pub fn new(server: &ServerConfig, max_connections: usize) -> std::io::Result<Self> {
        let tls = crate::tls::acceptor(server)
            .map_err(|message| std::io::Error::new(std::io::ErrorKind::InvalidInput, message))?;
        Ok(Self {
            header_timeout: server.request_read_timeout(),
            grace: server.shutdown_grace(),
            max_connections,
            tls,
            slow_reader_timeout: None,
        })
    }
}

/// Serve `app` on `listener` until `signal`, then wait for its connections to close, for
/// `options.grace` + [`LAST_WRITES`] at most.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: Options,
    signal: impl Future<Output = ()>,
) {
    let connections = TaskTracker::new();
    let mut http = http1::Builder::new();
    // One contiguous write per flush, as `axum::serve` did: a token's chunk header, event
    // and CRLF are copied together (callgrind over 20 k tokens: 616 M instructions, as
    // before, against 631 M with hyper's vectored writes). It also hands a refusal of
    // hyper's to [`Refusals`] in one piece.
    http.writev(false)
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    let tls = options.tls.map(|acceptor| {
        Arc::new(Tls {
            acceptor,
            handshake_timeout: options.header_timeout,
            http1: http.clone(),
            http2: http2_builder(&connections),
        })
    });
    let capacity = Capacity::new(options.max_connections);
    let refusal = refusal();
    let graceful = GracefulShutdown::new();
    let close_all = Signal::new();
    let stopping = Signal::new();
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
        let Some(slot) = capacity.admit() else {
            refuse(tcp, tls.is_none().then_some(&refusal[..]));
            continue;
        };
        // Tokens are small writes that must leave at once: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let closed = close_all.clone();
        let tcp = SlowWriter::new(tcp, options.slow_reader_timeout);
        match &tls {
            None => {
                let io = TokioIo::new(Refusals::new(tcp));
                let connection = graceful.watch(http.serve_connection(io, service));
                connections.spawn(async move {
                    let _slot = slot;
                    tokio::select! {
                        result = connection => log_end(result),
                        () = closed.raised() => {}
                    }
                });
            }
            Some(tls) => {
                let tls = Arc::clone(tls);
                let watcher = graceful.watcher();
                let stopping = stopping.clone();
                connections.spawn(async move {
                    let _slot = slot;
                    tokio::select! {
                        () = tls.serve(tcp, service, watcher, &stopping) => {}
                        () = closed.raised() => {}
                    }
                });
            }
        }
    }
    drop(listener);
    stopping.raise();
    if tokio::time::timeout(options.grace + LAST_WRITES, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace; closing them");
        close_all.raise();
    }
    connections.close();
    connections.wait().await;
}

/// HTTPS: the acceptor and the protocols ALPN chooses from.
struct Tls {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    http1: http1::Builder,
    http2: http2::Builder<Tracked>,
}

impl Tls {
    /// Shake hands (unless the server stops first), then serve the protocol the client
    /// chose by ALPN until the connection ends.
    async fn serve(
        &self,
        tcp: SlowWriter<TcpStream>,
        service: TowerToHyperService<Router>,
        watcher: Watcher,
        stopping: &Signal,
    ) {
        let handshake = tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(tcp));
        let stream = tokio::select! {
            done = handshake => match done {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            },
            // No request yet: closed like an idle keep-alive connection.
            () = stopping.raised() => return,
        };
        let h2 = stream.get_ref().1.alpn_protocol() == Some(crate::tls::H2);
        let result = if h2 {
            let io = TokioIo::new(stream);
            watcher
                .watch(self.http2.serve_connection(io, service))
                .await
        } else {
            let io = TokioIo::new(Refusals::new(stream));
            watcher
                .watch(self.http1.serve_connection(io, service))
                .await
        };
        log_end(result);
    }
}

/// HTTP/2 with a timer, keep-alive pings and at most [`H2_MAX_STREAMS`] streams per
/// connection; each stream's task is owned by `connections`.
fn http2_builder(connections: &TaskTracker) -> http2::Builder<Tracked> {
    let mut http = http2::Builder::new(Tracked(connections.clone()));
    http.timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(H2_KEEP_ALIVE)
        .max_concurrent_streams(H2_MAX_STREAMS);
    http
}

/// hyper's executor for HTTP/2 streams: every stream is a task of the tracker, which the
/// shutdown waits for (a stream ends when its connection is closed).
#[derive(Clone)]
struct Tracked(TaskTracker);

impl<F> hyper::rt::Executor<F> for Tracked
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(future);
    }
}

fn log_end(result: hyper::Result<()>) {
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// The open connections against the cap.
struct Capacity {
    max: usize,
    open: Arc<Open>,
}

/// What every [`Slot`] shares.
struct Open {
    count: AtomicUsize,
    gauge: metrics::Gauge,
}

/// One open connection; its drop (the connection's task ending, however it ends) frees
/// the place.
struct Slot(Arc<Open>);

impl Capacity {
    fn new(max: usize) -> Self {
        metrics::describe_gauge!("unbroken_connections", "client connections open");
        metrics::describe_counter!(
            "unbroken_connections_refused_total",
            "connections answered 503 because `limits.max_connections` were open"
        );
        Self {
            max,
            open: Arc::new(Open {
                count: AtomicUsize::new(0),
                gauge: metrics::gauge!("unbroken_connections"),
            }),
        }
    }

    /// A place for one more connection, unless `max` are open.
    fn admit(&self) -> Option<Slot> {
        let open = self.open.count.fetch_add(1, Ordering::Relaxed);
        if self.max != 0 && open >= self.max {
            self.open.count.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!("unbroken_connections_refused_total").increment(1);
            return None;
        }
        self.open.gauge.increment(1.0);
        Some(Slot(Arc::clone(&self.open)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
        self.0.gauge.decrement(1.0);
    }
}

/// The whole answer to a connection past the cap: a `503` with our error body.
fn refusal() -> Vec<u8> {
    let error = ApiError {
        code: "too_many_connections".into(),
        retry_after: Some(1),
        ..ApiError::unavailable("too many connections are open; retry shortly")
    };
    let body = error.body().to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Retry-After: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Write `answer` (if any) on a connection past the cap and close it, without waiting for
/// anything: the socket is non-blocking and a new socket's send buffer takes the few
/// hundred bytes at once.
fn refuse(tcp: TcpStream, answer: Option<&[u8]>) {
    use std::io::{Read as _, Write as _};
    // Tokio's own `try_write` reports a socket the reactor has not polled yet as not
    // writable; the standard stream (still non-blocking) just writes.
    let Ok(mut tcp) = tcp.into_std() else {
        return;
    };
    // Read what the client already sent: closing a socket with unread data sends a reset,
    // which may discard the answer before the client reads it; a close sends a FIN.
    let mut sent = [0; 4096];
    for _ in 0..4 {
        match tcp.read(&mut sent) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    if let Some(answer) = answer {
        let _ = tcp.write(answer);
    }
}

/// Errors of one connection that the listener survives unharmed.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_whole_503_with_our_error_body() {
        let refusal = String::from_utf8(refusal()).unwrap();
        let (head, body) = refusal.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(head.contains("\r\nRetry-After: 1"));
        assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "too_many_connections");
        assert_eq!(body["error"]["type"], "server_error");
    }

    #[test]
    fn a_slot_is_freed_when_dropped_and_zero_is_no_limit() {
        let capacity = Capacity::new(1);
        let slot = capacity.admit().unwrap();
        assert!(capacity.admit().is_none());
        drop(slot);
        assert!(capacity.admit().is_some());
        let unlimited = Capacity::new(0);
        let slots: Vec<Slot> = (0..3).filter_map(|_| unlimited.admit()).collect();
        assert_eq!(slots.len(), 3);
    }
}
