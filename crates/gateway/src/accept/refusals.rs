//! hyper's own refusals, given our error body.
//!
//! hyper answers a request it cannot parse by itself, before any service sees it: `400`
//! (a malformed request line or header, two different `Content-Length`s, a
//! `Transfer-Encoding` whose last coding is not `chunked`), `414` (a URI longer than the
//! 65,534 bytes an `http::Uri` holds, so no router could ever see it) and `431` (a request
//! head larger than the read buffer), each with an empty body and `connection: close`.
//! hyper 1.x offers no hook for these answers (`Http1Transaction::on_error` is private,
//! and neither its builder nor hyper-util's has an option), so [`Refusals`] wraps an
//! HTTP/1.1 connection and rewrites them on their way out: the same status and `date`,
//! with `content-type: application/json` and the [`ApiError`] body every other error has.
//!
//! A refusal is recognised by its exact form at the end of a write: hyper's status line,
//! then only `connection: close`, `content-length: 0` and `date`. Nothing else the gateway
//! writes ends that way: its own errors all carry a body, and its bodies are JSON and SSE
//! events, which never hold a raw CR LF.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::ApiError;

/// A connection whose writes of hyper's refusals carry our JSON error body.
pub struct Refusals<I> {
    inner: I,
    /// A rewritten write on its way out.
    rewrite: Option<Rewrite>,
}

/// The bytes that replace one write, and how long that write was.
struct Rewrite {
    bytes: Vec<u8>,
    written: usize,
    replaces: usize,
}

impl<I> Refusals<I> {
    /// Wrap `inner`.
    pub fn new(inner: I) -> Self {
        Self {
            inner,
            rewrite: None,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Refusals<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Refusals<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // hyper repeats a write that was pending with the same bytes: the rewrite started
        // for them goes on.
        let mut rewrite = match this.rewrite.take() {
            Some(rewrite) => rewrite,
            None => match rewritten(buf) {
                Some(bytes) => Rewrite {
                    bytes,
                    written: 0,
                    replaces: buf.len(),
                },
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            },
        };
        while rewrite.written < rewrite.bytes.len() {
            match Pin::new(&mut this.inner).poll_write(cx, &rewrite.bytes[rewrite.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => rewrite.written += n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {
                    this.rewrite = Some(rewrite);
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(rewrite.replaces))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// `written` with the hyper refusal that ends it given our body; `None` when it does not
/// end with one.
fn rewritten(written: &[u8]) -> Option<Vec<u8>> {
    const START: &[u8] = b"HTTP/1.1 ";
    if !written.ends_with(b"\r\n\r\n") {
        return None;
    }
    let start = written
        .windows(START.len())
        .rposition(|window| window == START)?;
    let head = std::str::from_utf8(&written[start..]).ok()?;
    let mut lines = head.strip_suffix("\r\n\r\n")?.split("\r\n");
    let (status_line, error) = match lines.next()? {
        line @ "HTTP/1.1 400 Bad Request" => (line, ApiError::malformed_http()),
        line @ "HTTP/1.1 414 URI Too Long" => (line, ApiError::uri_too_long()),
        line @ "HTTP/1.1 431 Request Header Fields Too Large" => (line, ApiError::head_too_large()),
        _ => return None,
    };
    let mut date = None;
    for (n, line) in lines.enumerate() {
        match (n, line) {
            (0, "connection: close") | (1, "content-length: 0") => {}
            (2, line) if line.starts_with("date: ") => date = Some(line),
            _ => return None,
        }
    }
    let body = error.body().to_string();
    let mut out = written[..start].to_vec();
    out.extend_from_slice(status_line.as_bytes());
    out.extend_from_slice(b"\r\nconnection: close\r\ncontent-type: application/json\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    if let Some(date) = date {
        out.extend_from_slice(date.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "date: Sun, 06 Dec 2026 12:13:41 GMT";

    fn body_of(answer: &[u8]) -> serde_json::Value {
        let answer = String::from_utf8(answer.to_vec()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
        assert!(head.contains("\r\ncontent-type: application/json\r\n"));
        assert!(head.contains(DATE), "{head}");
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn each_hyper_refusal_gets_its_error_body() {
        for (status_line, code) in [
            ("HTTP/1.1 400 Bad Request", "malformed_request"),
            ("HTTP/1.1 414 URI Too Long", "uri_too_long"),
            (
                "HTTP/1.1 431 Request Header Fields Too Large",
                "headers_too_large",
            ),
        ] {
            let refusal = format!(
                "{status_line}\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n\r\n"
            );
            let answer = rewritten(refusal.as_bytes()).unwrap();
            assert!(answer.starts_with(format!("{status_line}\r\n").as_bytes()));
            assert_eq!(body_of(&answer)["error"]["code"], code);
        }
    }

    #[test]
    fn a_refusal_after_an_answer_keeps_the_answer() {
        let earlier = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        let refusal = format!(
            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n\r\n"
        );
        let answer = rewritten(&[&earlier[..], refusal.as_bytes()].concat()).unwrap();
        assert!(answer.starts_with(earlier));
        assert_eq!(
            body_of(&answer[earlier.len()..])["error"]["code"],
            "malformed_request"
        );
    }

    #[test]
    fn the_gateways_own_answers_pass_unchanged() {
        for written in [
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}".to_owned(),
            format!("HTTP/1.1 204 No Content\r\n{DATE}\r\n\r\n"),
            format!("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\nx: y\r\n{DATE}\r\n\r\n"),
            "data: {}\n\n".to_owned(),
        ] {
            assert!(rewritten(written.as_bytes()).is_none(), "{written}");
        }
    }

    #[tokio::test]
    async fn a_refusal_written_in_pieces_is_written_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A pipe of 16 bytes: the rewrite goes out over many pending writes.
        let (client, server) = tokio::io::duplex(16);
        let refusal = format!(
            "HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n\r\n"
        );
        let write = async move {
            let mut server = Refusals::new(server);
            server.write_all(refusal.as_bytes()).await.unwrap();
            server.shutdown().await.unwrap();
        };
        let mut answer = Vec::new();
        let mut client = client;
        let read = client.read_to_end(&mut answer);
        let ((), read) = tokio::join!(write, read);
        read.unwrap();
        assert_eq!(body_of(&answer)["error"]["code"], "uri_too_long");
    }
}
