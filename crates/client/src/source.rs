//! [`EventSource`]: a stream of [`Update`]s that outlives any one connection.
//!
//! Each attempt is a fresh connection (the HTTP client keeps no idle connections, so a
//! half-dead socket is never reused). The reader keeps the decoder's last event id across
//! attempts and sends it as `Last-Event-ID`, so a server that honours it replays exactly
//! what was missed. A connection that ends — cleanly or not — is followed by another,
//! until the server answers 204 (stop), a permanent error occurs, or the policy's retries
//! run out.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use sse::{Decoder, EventStream, Frame};

use crate::error::ClientError;
use crate::policy::Policy;

/// Picks the request for later attempts from the first response's headers (e.g. a POST
/// that created a stream is resumed with a GET of that stream).
pub type ResumeWith = Arc<dyn Fn(&HeaderMap) -> Option<Request> + Send + Sync>;

/// What to send on every attempt.
#[derive(Clone)]
pub struct Request {
    /// GET or POST.
    pub method: Method,
    /// The stream's URL.
    pub url: reqwest::Url,
    /// Extra headers (authorisation, idempotency key …).
    pub headers: HeaderMap,
    /// A body for POST.
    pub body: Option<Bytes>,
    /// The `Last-Event-ID` for the first attempt, when resuming a stream seen before.
    pub last_event_id: Option<String>,
    /// Called with the headers of the first successful response; a returned request
    /// replaces this one for every later attempt.
    pub resume_with: Option<ResumeWith>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &self.url.as_str())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("last_event_id", &self.last_event_id)
            .finish_non_exhaustive()
    }
}

impl Request {
    /// A GET of `url`.
    ///
    /// # Errors
    /// [`ClientError::InvalidRequest`] when `url` does not parse.
    pub fn get(url: &str) -> Result<Self, ClientError> {
        Ok(Self {
            method: Method::GET,
            url: parse_url(url)?,
            headers: HeaderMap::new(),
            body: None,
            last_event_id: None,
            resume_with: None,
        })
    }

    /// A POST of `body` to `url`.
    ///
    /// # Errors
    /// [`ClientError::InvalidRequest`] when `url` does not parse.
    pub fn post(url: &str, body: impl Into<Bytes>) -> Result<Self, ClientError> {
        Ok(Self {
            method: Method::POST,
            body: Some(body.into()),
            ..Self::get(url)?
        })
    }

    /// Add a header given as text (`"Name: value"` parts).
    ///
    /// # Errors
    /// [`ClientError::InvalidRequest`] for a name or value HTTP does not allow.
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, ClientError> {
        let name = HeaderName::try_from(name)
            .map_err(|e| ClientError::InvalidRequest(format!("header name {name:?}: {e}")))?;
        let value = HeaderValue::try_from(value)
            .map_err(|e| ClientError::InvalidRequest(format!("header {name} value: {e}")))?;
        self.headers.append(name, value);
        Ok(self)
    }
}

fn parse_url(url: &str) -> Result<reqwest::Url, ClientError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ClientError::InvalidRequest(format!("URL {url:?}: {e}")))?;
    match parsed.scheme() {
        "http" | "https" => Ok(parsed),
        other => Err(ClientError::InvalidRequest(format!(
            "URL scheme {other:?} is not supported (http or https)"
        ))),
    }
}

/// A change in the connection's life, for status lines and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// A connection is open and its response is an event stream.
    Connected {
        /// 0 for the first connection, then the number of the retry that succeeded.
        attempt: u32,
    },
    /// The connection resumed a stream: the server was sent this `Last-Event-ID`.
    Resumed {
        /// The id sent.
        last_event_id: String,
    },
    /// The connection failed or ended; another attempt follows after `delay`.
    RetryScheduled {
        /// The retry's number, from 1.
        attempt: u32,
        /// How long until it starts.
        delay: Duration,
        /// What ended the previous connection, for people.
        error: String,
    },
    /// No retries are left (or the server said 204): nothing more will come.
    Exhausted,
}

/// An item of an [`EventSource`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// An event from the server.
    Event(sse::Event),
    /// The server set the reconnection delay (a `retry:` field), in milliseconds.
    Retry(u64),
    /// The connection's state changed.
    State(State),
}

/// Totals over the life of an [`EventSource`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connection attempts made, the first included.
    pub attempts: u32,
    /// Connections that failed or ended before the stream did.
    pub errors: u32,
    /// Time spent without a connection between a loss and the next success.
    pub downtime: Duration,
    /// What ended the last failed connection.
    pub last_error: Option<String>,
}

/// A reconnecting SSE reader: a `Stream` of [`Update`]s.
///
/// It ends (`None`) after the server answered 204 or after the last retry of a stream
/// that ended cleanly; it yields `Err` and then ends on a permanent error or when the
/// retries run out after an error.
pub struct EventSource {
    inner: BoxStream<'static, Result<Update, ClientError>>,
    stats: Arc<Mutex<Stats>>,
}

impl std::fmt::Debug for EventSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSource")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl EventSource {
    /// Start reading `request` with `policy`. Nothing is sent until the stream is polled.
    ///
    /// # Errors
    /// [`ClientError::InvalidRequest`] when the HTTP client cannot be built.
    pub fn new(request: Request, policy: Policy) -> Result<Self, ClientError> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .connect_timeout(policy.connect_timeout)
            .build()
            .map_err(|e| ClientError::InvalidRequest(e.to_string()))?;
        let stats = Arc::new(Mutex::new(Stats::default()));
        let last_event_id = request.last_event_id.clone().unwrap_or_default();
        let reader = Reader {
            http,
            request,
            policy,
            stats: Arc::clone(&stats),
            connection: None,
            last_event_id,
            server_retry: None,
            failures: 0,
            lost_at: None,
            delay: None,
            pending: VecDeque::new(),
            done: false,
        };
        let inner = stream::unfold(reader, |mut reader| async move {
            let item = reader.next_update().await?;
            Some((item, reader))
        })
        .boxed();
        Ok(Self { inner, stats })
    }

    /// A snapshot of the totals so far.
    pub fn stats(&self) -> Stats {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Stream for EventSource {
    type Item = Result<Update, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

type Connection = EventStream<BoxStream<'static, Result<Bytes, ClientError>>>;

/// The state machine behind [`EventSource`].
struct Reader {
    http: reqwest::Client,
    request: Request,
    policy: Policy,
    stats: Arc<Mutex<Stats>>,
    connection: Option<Connection>,
    /// Survives connections: what the next attempt sends as `Last-Event-ID`.
    last_event_id: String,
    server_retry: Option<Duration>,
    /// Consecutive attempts without an event.
    failures: u32,
    lost_at: Option<Instant>,
    /// The wait before the next attempt, once its announcement has been handed out.
    delay: Option<Duration>,
    pending: VecDeque<Result<Update, ClientError>>,
    done: bool,
}

impl Reader {
    async fn next_update(&mut self) -> Option<Result<Update, ClientError>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            let Some(connection) = self.connection.as_mut() else {
                if let Some(delay) = self.delay.take() {
                    tokio::time::sleep(delay).await;
                }
                self.connect().await;
                continue;
            };
            match connection.next().await {
                Some(Ok(Frame::Event(event))) => {
                    self.last_event_id.clone_from(&event.id);
                    self.failures = 0;
                    return Some(Ok(Update::Event(event)));
                }
                Some(Ok(Frame::Retry(ms))) => {
                    self.server_retry = Some(Duration::from_millis(ms));
                    return Some(Ok(Update::Retry(ms)));
                }
                Some(Err(sse::StreamError::Transport(error))) => self.lost(error),
                Some(Err(sse::StreamError::Decode(error))) => self.fail(error.into()),
                None => {
                    // The last event id also changes on dispatches without data.
                    self.last_event_id = connection.last_event_id().to_owned();
                    self.connection = None;
                    self.retry_after_loss("the server closed the stream".to_owned(), None, None);
                }
            }
        }
    }

    /// One connection attempt; on success `self.connection` is set.
    async fn connect(&mut self) {
        let attempt = self.failures;
        self.with_stats(|stats| stats.attempts += 1);
        match self.open().await {
            Ok(Some(connection)) => {
                self.connection = Some(connection);
                if let Some(lost_at) = self.lost_at.take() {
                    let down = lost_at.elapsed();
                    self.with_stats(|stats| stats.downtime += down);
                }
                self.pending
                    .push_back(Ok(Update::State(State::Connected { attempt })));
                if !self.last_event_id.is_empty() {
                    self.pending.push_back(Ok(Update::State(State::Resumed {
                        last_event_id: self.last_event_id.clone(),
                    })));
                }
            }
            Ok(None) => {
                // 204 No Content: the server says there is nothing more to read.
                self.pending.push_back(Ok(Update::State(State::Exhausted)));
                self.done = true;
            }
            Err(error) if error.is_retryable() => self.lost(error),
            Err(error) => self.fail(error),
        }
    }

    /// Send the request; `Ok(None)` for 204.
    async fn open(&mut self) -> Result<Option<Connection>, ClientError> {
        let mut builder = self
            .http
            .request(self.request.method.clone(), self.request.url.clone())
            .headers(self.request.headers.clone())
            .header(header::ACCEPT, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache");
        if !self.last_event_id.is_empty() {
            builder = builder.header("last-event-id", self.last_event_id.as_str());
        }
        if let Some(body) = &self.request.body {
            builder = builder.body(body.clone());
        }
        let timeout = self.policy.connect_timeout;
        let response = tokio::time::timeout(timeout, builder.send())
            .await
            .map_err(|_| ClientError::ConnectTimeout(timeout))?
            .map_err(|e| {
                if e.is_builder() {
                    ClientError::InvalidRequest(e.to_string())
                } else {
                    ClientError::Connect(e)
                }
            })?;
        let status = response.status();
        if status == StatusCode::OK
            && let Some(resume_with) = self.request.resume_with.take()
            && let Some(next) = resume_with(response.headers())
        {
            self.request = next;
        }
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if status != StatusCode::OK {
            let retry_after = retry_after(response.headers());
            return Err(ClientError::Status {
                status: status.as_u16(),
                message: crate::error::message_of(response, timeout).await,
                retry_after,
                retryable: self.policy.is_retryable_status(status.as_u16()),
            });
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        if !is_event_stream(&content_type) {
            return Err(ClientError::ContentType(content_type));
        }
        let decoder = Decoder::with_last_event_id(self.last_event_id.clone())
            .with_max_event_size(self.policy.max_event_size);
        Ok(Some(EventStream::with_decoder(
            body_stream(response, self.policy.idle_timeout),
            decoder,
        )))
    }

    /// A connection broke with a retryable error.
    fn lost(&mut self, error: ClientError) {
        if let Some(connection) = self.connection.take() {
            self.last_event_id = connection.last_event_id().to_owned();
        }
        let retry_after = error.retry_after();
        let message = error.to_string();
        self.retry_after_loss(message, retry_after, Some(error));
    }

    /// Schedule and wait out the next retry, or give up.
    fn retry_after_loss(
        &mut self,
        message: String,
        retry_after: Option<Duration>,
        error: Option<ClientError>,
    ) {
        self.lost_at.get_or_insert_with(Instant::now);
        self.failures = self.failures.saturating_add(1);
        self.with_stats(|stats| {
            stats.errors += 1;
            stats.last_error = Some(message.clone());
        });
        let attempt = self.failures;
        if !self.policy.allows(attempt) {
            self.pending.push_back(Ok(Update::State(State::Exhausted)));
            if let Some(error) = error {
                self.pending.push_back(Err(error));
            }
            self.done = true;
            return;
        }
        let base = self.server_retry.unwrap_or(self.policy.base_delay);
        let delay = self
            .policy
            .delay(attempt, base, rand::random::<f64>(), retry_after);
        tracing::debug!(attempt, ?delay, error = %message, "reconnect scheduled");
        // The state item goes out before the wait, so a caller can show it.
        self.pending
            .push_back(Ok(Update::State(State::RetryScheduled {
                attempt,
                delay,
                error: message,
            })));
        self.delay = Some(delay);
    }

    fn fail(&mut self, error: ClientError) {
        self.with_stats(|stats| {
            stats.errors += 1;
            stats.last_error = Some(error.to_string());
        });
        self.connection = None;
        self.pending.push_back(Err(error));
        self.done = true;
    }

    fn with_stats(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.stats.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// Install rustls' `ring` provider as the process default unless one is installed (the
/// workspace builds reqwest without a provider of its own).
pub(crate) fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: a provider is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The response body as a byte stream that fails when nothing arrives for `idle`.
fn body_stream(
    response: reqwest::Response,
    idle: Option<Duration>,
) -> BoxStream<'static, Result<Bytes, ClientError>> {
    stream::unfold(Some(response), move |response| async move {
        let mut response = response?;
        let chunk = match idle {
            Some(idle) => match tokio::time::timeout(idle, response.chunk()).await {
                Ok(chunk) => chunk,
                Err(_) => return Some((Err(ClientError::Idle(idle)), None)),
            },
            None => response.chunk().await,
        };
        match chunk {
            Ok(Some(bytes)) => Some((Ok(bytes), Some(response))),
            Ok(None) => None,
            Err(error) => Some((Err(ClientError::Read(error)), None)),
        }
    })
    .boxed()
}

/// `text/event-stream`, with any parameters, in any letter case.
fn is_event_stream(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// `Retry-After` in seconds (the HTTP-date form is not used by SSE servers in practice and
/// is ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_essence_is_compared_case_insensitively() {
        assert!(is_event_stream("text/event-stream"));
        assert!(is_event_stream("Text/Event-Stream; charset=utf-8"));
        assert!(!is_event_stream("text/plain"));
        assert!(!is_event_stream(""));
    }

    #[test]
    fn only_http_urls_are_accepted() {
        assert!(Request::get("http://127.0.0.1:1/x").is_ok());
        assert!(Request::get("https://127.0.0.1:1/x").is_ok());
        assert!(matches!(
            Request::get("ftp://127.0.0.1:1/x"),
            Err(ClientError::InvalidRequest(_))
        ));
        assert!(matches!(
            Request::get("not a url"),
            Err(ClientError::InvalidRequest(_))
        ));
    }

    #[test]
    fn retry_after_seconds_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }
}
