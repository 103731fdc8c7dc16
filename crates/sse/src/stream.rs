//! [`EventStream`]: the decoder as a `Stream` adapter over any byte stream.
//!
//! The adapter is generic over the chunk type (anything that is `AsRef<[u8]>`: `Bytes`,
//! `Vec<u8>`, `&[u8]`) and over the transport error, which it passes through unchanged in
//! [`StreamError::Transport`]. It pulls from the inner stream only when it has no complete
//! frame to hand out, so backpressure flows through it.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use pin_project_lite::pin_project;

use crate::decode::{DecodeError, Decoder, Frame};

/// What can go wrong while reading an event stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError<E> {
    /// The byte stream failed.
    #[error("transport error: {0}")]
    Transport(#[source] E),
    /// The decoder refused the input.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

pin_project! {
    /// Decodes a byte stream into SSE [`Frame`]s. Ends when the byte stream ends; an
    /// incomplete final event is discarded, as the standard requires.
    #[derive(Debug)]
    pub struct EventStream<S> {
        #[pin]
        inner: S,
        decoder: Decoder,
        ended: bool,
    }
}

impl<S> EventStream<S> {
    /// Wrap `inner` with a fresh [`Decoder`].
    pub fn new(inner: S) -> Self {
        Self::with_decoder(inner, Decoder::new())
    }

    /// Wrap `inner` with a configured decoder (a last event id, a size limit).
    pub fn with_decoder(inner: S, decoder: Decoder) -> Self {
        Self {
            inner,
            decoder,
            ended: false,
        }
    }

    /// The last event id string so far (see [`Decoder::last_event_id`]).
    pub fn last_event_id(&self) -> &str {
        self.decoder.last_event_id()
    }

    /// The reconnection time from the last valid `retry:` field, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.decoder.retry()
    }
}

impl<S, B, E> Stream for EventStream<S>
where
    S: Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
{
    type Item = Result<Frame, StreamError<E>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if let Some(frame) = this.decoder.next_frame() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if *this.ended {
                return Poll::Ready(None);
            }
            match this.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    if let Err(error) = this.decoder.push(chunk.as_ref()) {
                        *this.ended = true;
                        return Poll::Ready(Some(Err(error.into())));
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    return Poll::Ready(Some(Err(StreamError::Transport(error))));
                }
                Poll::Ready(None) => {
                    this.decoder.finish();
                    *this.ended = true;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Adds [`sse`](EventStreamExt::sse) to every byte stream.
pub trait EventStreamExt: Sized {
    /// Decode this byte stream as Server-Sent Events.
    fn sse(self) -> EventStream<Self>;
}

impl<S, B, E> EventStreamExt for S
where
    S: Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
{
    fn sse(self) -> EventStream<Self> {
        EventStream::new(self)
    }
}
