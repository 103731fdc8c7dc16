//! Evicting slow readers (`[limits] slow_reader_timeout_ms`): a connection whose client
//! takes nothing for that long while bytes wait for it is closed.
//!
//! SSE bodies are pulled (`http::body`), so a client that stops reading holds no queue in
//! the gateway: the socket's send buffer fills, hyper stops pulling, and the reader's
//! cursor waits in the log. What it still holds is a connection, a reader slot and the
//! kernel's buffers. [`SlowWriter`] wraps the connection's socket: when a write has been
//! refused (`Pending`: the send buffer is full) for the whole timeout, the write fails
//! with `TimedOut` and hyper closes the connection. The client reconnects with its
//! `Last-Event-ID` and loses nothing. A write that goes through disarms the timer, so an
//! idle connection (nothing to send) is never evicted, and the timer costs nothing while
//! writes succeed. With HTTP/2 one stuck stream only fills its own flow-control window;
//! the connection is evicted only when the client stops reading altogether.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A socket whose writes fail once they have been refused for `timeout`.
pub struct SlowWriter<IO> {
    io: IO,
    timeout: Option<Duration>,
    /// Armed by the first refused write, disarmed by the next that goes through.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<IO> SlowWriter<IO> {
    /// Wrap `io`; `None` never evicts.
    pub fn new(io: IO, timeout: Option<Duration>) -> Self {
        Self {
            io,
            timeout,
            stalled: None,
        }
    }

    /// After a write attempt: `Pending` arms (or polls) the timer, anything else disarms.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.stalled = None;
            return result;
        }
        let Some(timeout) = self.timeout else {
            return Poll::Pending;
        };
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stalled.as_mut().poll(cx));
        self.stalled = None;
        metrics::counter!("unbroken_readers_evicted_total").increment(1);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client took nothing for slow_reader_timeout_ms",
        )))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for SlowWriter<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for SlowWriter<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A peer that never reads: writes fill the pipe, then stall until the timeout.
    #[tokio::test(start_paused = true)]
    async fn a_write_refused_for_the_timeout_fails_and_one_that_goes_through_disarms() {
        let (near, far) = tokio::io::duplex(64);
        let mut writer = SlowWriter::new(near, Some(Duration::from_secs(30)));
        writer.write_all(&[1; 64]).await.unwrap();
        // The pipe is full: the next write waits, then fails after 30 s (virtual time).
        let waited = tokio::time::timeout(Duration::from_secs(60), writer.write_all(&[2; 8])).await;
        let error = waited.expect("evicted within the timeout").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);

        // A reader that drains in time keeps the connection.
        let (near, mut far2) = tokio::io::duplex(64);
        let mut writer = SlowWriter::new(near, Some(Duration::from_secs(30)));
        writer.write_all(&[1; 64]).await.unwrap();
        let drain = async {
            tokio::time::sleep(Duration::from_secs(20)).await;
            let mut buf = [0; 64];
            tokio::io::AsyncReadExt::read_exact(&mut far2, &mut buf)
                .await
                .unwrap();
        };
        let (written, ()) = tokio::join!(writer.write_all(&[2; 8]), drain);
        written.unwrap();
        drop(far);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_timeout_a_stalled_write_just_waits() {
        let (near, _far) = tokio::io::duplex(8);
        let mut writer = SlowWriter::new(near, None);
        writer.write_all(&[1; 8]).await.unwrap();
        let waited =
            tokio::time::timeout(Duration::from_secs(3600), writer.write_all(&[2; 8])).await;
        assert!(waited.is_err(), "the write should still be waiting");
    }
}
