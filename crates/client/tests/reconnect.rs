//! The reader against a real TCP server that misbehaves on purpose: cuts connections at
//! random byte positions, answers with errors, stalls. What arrives must be exactly the
//! uninterrupted sequence.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test's panic is its failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_util::task::TaskTracker;
use unbroken_client::{ClientError, EventSource, Policy, Request, State, Update};

/// What the test server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    last_event_id: Option<String>,
    headers: String,
    body: Vec<u8>,
}

/// How the server answers one request.
enum Reply {
    /// Raw bytes, then close; `cut` stops after that many bytes.
    Raw { bytes: Vec<u8>, cut: Option<usize> },
    /// Headers only, then hold the connection open and silent.
    Stall,
}

struct Server {
    url: String,
    requests: Arc<AtomicU32>,
    seen: Arc<Mutex<Vec<Seen>>>,
    tracker: TaskTracker,
}

impl Server {
    async fn start<F>(reply: F) -> Server
    where
        F: Fn(u32, &Seen) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/stream", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicU32::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tracker = TaskTracker::new();
        let reply = Arc::new(reply);
        let (count, log, inner) = (requests.clone(), seen.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let n = count.fetch_add(1, Ordering::SeqCst);
                let (reply, log) = (reply.clone(), log.clone());
                inner.spawn(async move {
                    serve(socket, n, reply.as_ref(), &log).await;
                });
            }
        });
        Server {
            url,
            requests,
            seen,
            tracker,
        }
    }

    fn requests(&self) -> u32 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.tracker.close();
    }
}

async fn serve<F>(mut socket: TcpStream, n: u32, reply: &F, log: &Mutex<Vec<Seen>>)
where
    F: Fn(u32, &Seen) -> Reply,
{
    let Some(seen) = read_request(&mut socket).await else {
        return;
    };
    log.lock().await.push(seen.clone());
    match reply(n, &seen) {
        Reply::Raw { bytes, cut } => {
            let end = cut.unwrap_or(bytes.len()).min(bytes.len());
            let _ = socket.write_all(&bytes[..end]).await;
            let _ = socket.shutdown().await;
        }
        Reply::Stall => {
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
                .await;
            // Hold the connection until the client gives up on it.
            let mut sink = [0u8; 64];
            while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
        }
    }
}

async fn read_request(socket: &mut TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Seen {
        method: head.split(' ').next().unwrap_or_default().to_owned(),
        last_event_id: header("last-event-id"),
        headers: head.clone(),
        body,
    })
}

fn sse_response(body: &[u8], chunked: bool) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n".to_vec();
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
        for piece in body.chunks(7) {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
    } else {
        out.extend_from_slice(b"connection: close\r\n\r\n");
        out.extend_from_slice(body);
    }
    out
}

fn status_response(status: &str, extra: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n{extra}\r\n")
        .into_bytes()
}

/// Events `from..=to`, with multi-line data and a multi-byte character to make cuts nasty.
fn events(from: u32, to: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for id in from..=to {
        let data = format!("token {id} €\nline two of {id}");
        sse::write_event(&mut out, None, Some(&id.to_string()), &data).unwrap();
        if id % 5 == 0 {
            sse::write_comment(&mut out, "heartbeat");
        }
    }
    out
}

fn fast_policy() -> Policy {
    Policy {
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        max_retries: None,
        ..Policy::default()
    }
}

async fn collect(source: EventSource) -> (Vec<(String, String)>, Vec<State>, Option<ClientError>) {
    let mut events = Vec::new();
    let mut states = Vec::new();
    let mut error = None;
    let mut source = source;
    while let Some(update) = source.next().await {
        match update {
            Ok(Update::Event(event)) => events.push((event.id, event.data)),
            Ok(Update::State(state)) => states.push(state),
            Ok(Update::Retry(_)) => {}
            Err(e) => error = Some(e),
        }
    }
    (events, states, error)
}

#[tokio::test]
async fn random_cuts_deliver_every_event_exactly_once() {
    const TOTAL: u32 = 200;
    let (mut resumes, mut requests) = (0, 0);
    for seed in 0..8u64 {
        let rng = Arc::new(std::sync::Mutex::new(StdRng::seed_from_u64(seed)));
        let server = Server::start(move |_, seen| {
            let last: u32 = seen
                .last_event_id
                .as_deref()
                .and_then(|id| id.parse().ok())
                .unwrap_or(0);
            if last >= TOTAL {
                return Reply::Raw {
                    bytes: status_response("204 No Content", ""),
                    cut: None,
                };
            }
            let mut rng = rng.lock().unwrap();
            let chunked = rng.random_bool(0.5);
            let bytes = sse_response(&events(last + 1, TOTAL), chunked);
            // Three times in four the connection is cut at a random byte.
            let cut = rng
                .random_bool(0.75)
                .then(|| rng.random_range(0..bytes.len()));
            Reply::Raw { bytes, cut }
        })
        .await;
        let source = EventSource::new(Request::get(&server.url).unwrap(), fast_policy()).unwrap();
        let (events, states, error) = collect(source).await;

        assert!(error.is_none(), "seed {seed}: unexpected error {error:?}");
        let expected: Vec<(String, String)> = (1..=TOTAL)
            .map(|id| (id.to_string(), format!("token {id} €\nline two of {id}")))
            .collect();
        assert_eq!(events, expected, "seed {seed}");
        assert_eq!(states.last(), Some(&State::Exhausted), "seed {seed}");
        resumes += states
            .iter()
            .filter(|s| matches!(s, State::Resumed { .. }))
            .count();
        requests += server.requests();
    }
    // The cuts did happen: the sequence was put together over many connections.
    assert!(resumes >= 8, "only {resumes} resumes");
    assert!(requests >= 24, "only {requests} requests");
}

#[tokio::test]
async fn reconnect_sends_the_last_event_id_and_the_same_request() {
    let server = Server::start(|n, _| {
        let body = if n == 0 { events(1, 3) } else { Vec::new() };
        if n >= 2 {
            return Reply::Raw {
                bytes: status_response("204 No Content", ""),
                cut: None,
            };
        }
        Reply::Raw {
            bytes: sse_response(&body, false),
            cut: None,
        }
    })
    .await;
    let request = Request::post(&server.url, &b"{\"q\":1}"[..])
        .unwrap()
        .header("authorization", "Bearer k")
        .unwrap();
    let (events, _, error) = collect(EventSource::new(request, fast_policy()).unwrap()).await;
    assert!(error.is_none());
    assert_eq!(events.len(), 3);
    let seen = server.seen.lock().await.clone();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].last_event_id, None);
    assert_eq!(seen[1].last_event_id.as_deref(), Some("3"));
    for request in &seen {
        assert_eq!(request.method, "POST");
        assert_eq!(request.body, b"{\"q\":1}");
        assert!(
            request
                .headers
                .to_ascii_lowercase()
                .contains("authorization: bearer k")
        );
    }
}

#[tokio::test]
async fn wrong_content_type_fails_without_retry() {
    let server = Server::start(|_, _| Reply::Raw {
        bytes: b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nhi"
            .to_vec(),
        cut: None,
    })
    .await;
    let (_, _, error) =
        collect(EventSource::new(Request::get(&server.url).unwrap(), fast_policy()).unwrap()).await;
    assert!(matches!(error, Some(ClientError::ContentType(ref t)) if t == "text/plain"));
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn client_error_status_is_permanent() {
    let server = Server::start(|_, _| Reply::Raw {
        bytes: status_response("404 Not Found", ""),
        cut: None,
    })
    .await;
    let (_, _, error) =
        collect(EventSource::new(Request::get(&server.url).unwrap(), fast_policy()).unwrap()).await;
    assert!(matches!(
        error,
        Some(ClientError::Status {
            status: 404,
            retryable: false,
            ..
        })
    ));
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn a_refusal_carries_the_servers_message() {
    let body = r#"{"error":{"message":"the model \"nope\" does not exist","type":"invalid_request_error","code":"model_not_found"}}"#;
    let server = Server::start(move |_, _| Reply::Raw {
        bytes: format!(
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
        cut: None,
    })
    .await;
    let (_, _, error) =
        collect(EventSource::new(Request::get(&server.url).unwrap(), fast_policy()).unwrap()).await;
    let error = error.unwrap();
    assert!(
        matches!(&error, ClientError::Status { status: 404, message: Some(m), .. } if m == "the model \"nope\" does not exist"),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "server answered HTTP 404: the model \"nope\" does not exist"
    );
}

#[tokio::test]
async fn retryable_statuses_are_retried_then_succeed() {
    let server = Server::start(|n, _| match n {
        0 => Reply::Raw {
            bytes: status_response("503 Service Unavailable", "retry-after: 0\r\n"),
            cut: None,
        },
        1 => Reply::Raw {
            bytes: status_response("429 Too Many Requests", ""),
            cut: None,
        },
        2 => Reply::Raw {
            bytes: sse_response(&events(1, 2), false),
            cut: None,
        },
        _ => Reply::Raw {
            bytes: status_response("204 No Content", ""),
            cut: None,
        },
    })
    .await;
    let source = EventSource::new(Request::get(&server.url).unwrap(), fast_policy()).unwrap();
    let mut source = source;
    let mut retries = Vec::new();
    let mut ids = Vec::new();
    while let Some(update) = source.next().await {
        match update.unwrap() {
            Update::State(State::RetryScheduled { attempt, .. }) => retries.push(attempt),
            Update::Event(event) => ids.push(event.id),
            _ => {}
        }
    }
    assert_eq!(ids, ["1", "2"]);
    // Two failed attempts, then the clean end of the stream counts as the first loss
    // after an event reset the count.
    assert_eq!(retries, [1, 2, 1]);
    let stats = source.stats();
    assert_eq!(stats.attempts, 4);
    assert_eq!(stats.errors, 3);
    assert_eq!(server.requests(), 4);
}

#[tokio::test]
async fn retries_run_out_after_errors_with_the_last_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    drop(listener); // nothing listens: connections are refused
    let policy = Policy {
        max_retries: Some(2),
        ..fast_policy()
    };
    let source = EventSource::new(Request::get(&url).unwrap(), policy).unwrap();
    let (_, states, error) = collect(source).await;
    assert!(matches!(error, Some(ClientError::Connect(_))), "{error:?}");
    let scheduled = states
        .iter()
        .filter(|s| matches!(s, State::RetryScheduled { .. }))
        .count();
    assert_eq!(scheduled, 2);
    assert_eq!(states.last(), Some(&State::Exhausted));
}

#[tokio::test]
async fn clean_end_with_no_retries_left_is_not_an_error() {
    let server = Server::start(|_, _| Reply::Raw {
        bytes: sse_response(&events(1, 2), false),
        cut: None,
    })
    .await;
    let policy = Policy {
        max_retries: Some(0),
        ..fast_policy()
    };
    let (events, states, error) =
        collect(EventSource::new(Request::get(&server.url).unwrap(), policy).unwrap()).await;
    assert!(error.is_none());
    assert_eq!(events.len(), 2);
    assert_eq!(states.last(), Some(&State::Exhausted));
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn a_silent_connection_is_abandoned_after_the_idle_timeout() {
    let server = Server::start(|n, _| match n {
        0 => Reply::Stall,
        1 => Reply::Raw {
            bytes: sse_response(&events(1, 1), false),
            cut: None,
        },
        _ => Reply::Raw {
            bytes: status_response("204 No Content", ""),
            cut: None,
        },
    })
    .await;
    let policy = Policy {
        idle_timeout: Some(Duration::from_millis(200)),
        ..fast_policy()
    };
    let (events, states, error) =
        collect(EventSource::new(Request::get(&server.url).unwrap(), policy).unwrap()).await;
    assert!(error.is_none());
    assert_eq!(events.len(), 1);
    assert!(
        states.iter().any(
            |s| matches!(s, State::RetryScheduled { error, .. } if error.starts_with("no data"))
        )
    );
}
