//! A resumable Server-Sent Events client: the reader half of unbroken's promise.
//!
//! [`EventSource`] opens a request, decodes the answer with the `sse` crate, and when the
//! connection drops, ends, stalls or fails with a retryable status, opens a fresh one with
//! `Last-Event-ID`, after an exponential backoff with full jitter. Every reconnection is
//! visible as a [`State`] item, and [`Stats`] sums them up.
//!
//! # Layout
//! - [`policy`]: [`Policy`], the backoff and retry knobs, and the delay computation.
//! - [`source`]: [`EventSource`], the reconnecting stream of [`Update`]s.
//! - [`error`]: [`ClientError`], which knows whether it is worth another attempt.
//! - [`chat`]: [`chat::Chat`], a streamed chat completion through an unbroken gateway that
//!   survives drops: POST with an idempotency key, resume with `GET /v1/streams/{id}`.
//!
//! # Example
//! ```no_run
//! use futures_util::StreamExt;
//! use unbroken_client::{EventSource, Policy, Request, Update};
//!
//! # async fn run() -> Result<(), unbroken_client::ClientError> {
//! let request = Request::get("http://127.0.0.1:8080/v1/streams/abc")?;
//! let mut source = EventSource::new(request, Policy::default())?;
//! while let Some(update) = source.next().await {
//!     if let Update::Event(event) = update? {
//!         println!("{}: {}", event.id, event.data);
//!     }
//! }
//! # Ok(())
//! # }
//! ```

pub mod chat;
pub mod error;
pub mod policy;
pub mod source;

pub use error::ClientError;
pub use policy::Policy;
pub use source::{EventSource, Request, ResumeWith, State, Stats, Update};
pub use sse::Event;
