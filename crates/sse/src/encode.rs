//! Writing events: `data:` lines, `id:`, `event:`, comments and `retry:`.
//!
//! Every function appends to a caller-owned buffer, so a server can reuse one buffer per
//! connection. Data is split into one `data:` line per line (CR, LF and CRLF all count as
//! line ends, so the decoder restores it with `\n`). An `id` or `event` value containing CR,
//! LF or NUL is refused: written as is it would inject fields into the stream.

/// An event could not be written safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The value of a single-line field contains CR, LF or NUL.
    #[error("the `{field}` field must not contain CR, LF or NUL")]
    InvalidField {
        /// `"id"` or `"event"`.
        field: &'static str,
    },
}

fn check_single_line(field: &'static str, value: &str) -> Result<(), EncodeError> {
    if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | b'\0')) {
        Err(EncodeError::InvalidField { field })
    } else {
        Ok(())
    }
}

/// Append one event: optional `event:` and `id:` fields, the data lines, a blank line.
///
/// # Errors
/// [`EncodeError::InvalidField`] when `event` or `id` contains CR, LF or NUL; nothing is
/// written then.
///
/// # Example
/// ```
/// let mut buf = Vec::new();
/// sse::write_event(&mut buf, Some("token"), Some("3"), "a\nb").unwrap();
/// assert_eq!(buf, b"event: token\nid: 3\ndata: a\ndata: b\n\n");
/// ```
pub fn write_event(
    buf: &mut Vec<u8>,
    event: Option<&str>,
    id: Option<&str>,
    data: &str,
) -> Result<(), EncodeError> {
    if let Some(event) = event {
        check_single_line("event", event)?;
    }
    if let Some(id) = id {
        check_single_line("id", id)?;
    }
    buf.reserve(data.len() + 16);
    if let Some(event) = event {
        write_field(buf, b"event", event);
    }
    if let Some(id) = id {
        write_field(buf, b"id", id);
    }
    for line in lines(data) {
        write_field(buf, b"data", line);
    }
    buf.push(b'\n');
    Ok(())
}

/// Append a comment (one `:` line per line of `text`). Clients ignore comments; servers
/// send them as heartbeats so idle connections are not cut.
pub fn write_comment(buf: &mut Vec<u8>, text: &str) {
    for line in lines(text) {
        buf.push(b':');
        if !line.is_empty() {
            buf.push(b' ');
            buf.extend_from_slice(line.as_bytes());
        }
        buf.push(b'\n');
    }
}

/// Append a `retry:` field telling the client to wait `ms` milliseconds before reconnecting.
pub fn write_retry(buf: &mut Vec<u8>, ms: u64) {
    buf.extend_from_slice(b"retry: ");
    buf.extend_from_slice(ms.to_string().as_bytes());
    buf.push(b'\n');
}

fn write_field(buf: &mut Vec<u8>, name: &[u8], value: &str) {
    buf.extend_from_slice(name);
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value.as_bytes());
    buf.push(b'\n');
}

/// Split on CRLF, LF or CR — the line ends the decoder recognises. Always yields at least
/// one (possibly empty) line.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.find(['\r', '\n']) {
            Some(pos) => {
                let skip = if current[pos..].starts_with("\r\n") {
                    2
                } else {
                    1
                };
                rest = Some(&current[pos + skip..]);
                Some(&current[..pos])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_data_becomes_one_data_line_per_line() {
        let mut buf = Vec::new();
        write_event(&mut buf, None, None, "a\r\nb\rc\n").unwrap();
        assert_eq!(buf, b"data: a\ndata: b\ndata: c\ndata: \n\n");
    }

    #[test]
    fn injection_through_id_or_event_is_refused() {
        let mut buf = Vec::new();
        for bad in ["1\ndata: evil", "1\r", "a\0b"] {
            assert_eq!(
                write_event(&mut buf, None, Some(bad), "x"),
                Err(EncodeError::InvalidField { field: "id" })
            );
            assert_eq!(
                write_event(&mut buf, Some(bad), None, "x"),
                Err(EncodeError::InvalidField { field: "event" })
            );
        }
        assert!(buf.is_empty(), "nothing is written for a refused event");
    }

    #[test]
    fn comments_and_retry() {
        let mut buf = Vec::new();
        write_comment(&mut buf, "");
        write_comment(&mut buf, "ping\npong");
        write_retry(&mut buf, 2500);
        assert_eq!(buf, b":\n: ping\n: pong\nretry: 2500\n");
    }
}
