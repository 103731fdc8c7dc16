//! The incremental decoder: bytes in any chunking become [`Frame`]s.
//!
//! The decoder implements the WHATWG HTML "event stream interpretation" (section 9.2.6):
//! the stream is UTF-8 decoded with U+FFFD replacement, one leading BOM is stripped, lines
//! end at CRLF, LF or CR, and each line is a comment, a field, or the blank line that
//! dispatches an event. Bytes are buffered only up to the next line end, so a multi-byte
//! character or a CRLF split across reads decodes as if it had arrived whole.

use std::borrow::Cow;
use std::collections::VecDeque;

use memchr::{memchr, memchr2};

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A dispatched event, as a browser's `MessageEvent` would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event type: the last `event:` field, or `"message"` when there was none.
    pub event: Cow<'static, str>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The stream's last event id at dispatch time (empty when none was ever set).
    pub id: String,
}

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A dispatched event.
    Event(Event),
    /// A valid `retry:` field set the reconnection time to this many milliseconds.
    Retry(u64),
}

/// The decoder refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A line or an event grew past the limit set with [`Decoder::with_max_event_size`].
    #[error("event larger than {limit} bytes")]
    EventTooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
}

/// An incremental SSE decoder with a push API.
///
/// Feed bytes with [`push`](Self::push) in any chunking, take complete frames with
/// [`next_frame`](Self::next_frame), and call [`finish`](Self::finish) at end of input,
/// which discards an incomplete event as the standard requires.
#[derive(Debug)]
pub struct Decoder {
    /// Bytes of a line whose end has not arrived yet.
    line: Vec<u8>,
    /// Still looking at the first bytes for a BOM.
    at_start: bool,
    /// The previous chunk ended with CR: a leading LF in the next chunk belongs to it.
    after_cr: bool,
    data: String,
    event_type: String,
    /// The "last event ID buffer" of the standard: set by `id:` fields.
    id_buffer: String,
    /// The "last event ID string": set from the buffer when an event is dispatched.
    last_event_id: String,
    retry: Option<u64>,
    max_event_size: Option<usize>,
    frames: VecDeque<Frame>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder for a new connection, with no last event id and no size limit.
    pub fn new() -> Self {
        Self {
            line: Vec::new(),
            at_start: true,
            after_cr: false,
            data: String::new(),
            event_type: String::new(),
            id_buffer: String::new(),
            last_event_id: String::new(),
            retry: None,
            max_event_size: None,
            frames: VecDeque::new(),
        }
    }

    /// A decoder for a reconnection: events without an `id:` field carry `last_event_id`.
    pub fn with_last_event_id(last_event_id: impl Into<String>) -> Self {
        let id: String = last_event_id.into();
        Self {
            id_buffer: id.clone(),
            last_event_id: id,
            ..Self::new()
        }
    }

    /// Refuse lines and events larger than `limit` bytes, so a hostile or broken server
    /// cannot make the decoder buffer without bound.
    pub fn with_max_event_size(mut self, limit: usize) -> Self {
        self.max_event_size = Some(limit);
        self
    }

    /// The last event id string: what a reconnection sends as `Last-Event-ID`.
    ///
    /// It changes only when an event is dispatched (even one with no data), so an `id:`
    /// of an event cut off by the end of the stream does not count.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The reconnection time set by the last valid `retry:` field, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// The next complete frame, if any.
    pub fn next_frame(&mut self) -> Option<Frame> {
        self.frames.pop_front()
    }

    /// Mark the end of input: a partial line and an undispatched event are discarded.
    pub fn finish(&mut self) {
        // "Once the end of the file is reached, any pending data must be discarded. (If
        // the file ends in the middle of an event, before the final empty line, the
        // incomplete event is not dispatched.)"
        self.line.clear();
        self.data.clear();
        self.event_type.clear();
        self.after_cr = false;
        // The standard keeps the id buffer; only dispatch publishes it. Reset it to the
        // published value so a decoder reused after EOF starts consistent.
        self.id_buffer.clone_from(&self.last_event_id);
        self.at_start = true;
    }

    /// Feed bytes, in any chunking.
    ///
    /// # Errors
    /// [`DecodeError::EventTooLarge`] when a size limit is set and a line or an event
    /// exceeds it; the decoder is then in an unspecified state and should be dropped.
    pub fn push(&mut self, mut input: &[u8]) -> Result<(), DecodeError> {
        if self.at_start {
            // Step: "one leading U+FEFF BYTE ORDER MARK is ignored". Wait until we can
            // tell whether the first three bytes are a BOM.
            let take = (BOM.len() - self.line.len()).min(input.len());
            self.line.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.line.len() < BOM.len() && BOM.starts_with(&self.line) {
                return Ok(());
            }
            self.at_start = false;
            let head = std::mem::take(&mut self.line);
            let head_rest = head.strip_prefix(BOM).unwrap_or(&head);
            self.feed(head_rest)?;
        }
        self.feed(input)
    }

    fn feed(&mut self, mut input: &[u8]) -> Result<(), DecodeError> {
        if self.after_cr && !input.is_empty() {
            self.after_cr = false;
            if input[0] == b'\n' {
                input = &input[1..];
            }
        }
        while let Some(pos) = memchr2(b'\n', b'\r', input) {
            if self.line.is_empty() {
                // The line arrived whole: no copy. It is held to the same limit as a line
                // assembled from several reads, so the chunking never changes the outcome.
                self.check_size(pos)?;
                self.process_line(&input[..pos])?;
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&input[..pos]);
                self.check_size(line.len())?;
                self.process_line(&line)?;
                line.clear();
                self.line = line;
            }
            let mut next = pos + 1;
            if input[pos] == b'\r' {
                match input.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            input = &input[next..];
        }
        if !input.is_empty() {
            self.check_size(self.line.len() + input.len())?;
            self.line.extend_from_slice(input);
        }
        Ok(())
    }

    fn check_size(&self, len: usize) -> Result<(), DecodeError> {
        match self.max_event_size {
            Some(limit) if len + self.data.len() > limit => {
                Err(DecodeError::EventTooLarge { limit })
            }
            _ => Ok(()),
        }
    }

    /// Process one line, without its terminator.
    fn process_line(&mut self, line: &[u8]) -> Result<(), DecodeError> {
        // "If the line is empty (a blank line): Dispatch the event."
        if line.is_empty() {
            self.dispatch();
            return Ok(());
        }
        // "If the line starts with a U+003A COLON character (:): Ignore the line."
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match memchr(b':', line) {
            // "If the line contains a U+003A COLON character: collect the characters on
            // the line before the first colon, and let field be that string. Collect the
            // characters on the line after the first colon, and let value be that string.
            // If value starts with a U+0020 SPACE character, remove it from value."
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            // "Otherwise, ... using the whole line as the field name, and the empty string
            // as the field value."
            None => (line, &b""[..]),
        };
        match field {
            // "If the field name is "event": Set the event type buffer to field value."
            b"event" => {
                self.event_type.clear();
                push_lossy(&mut self.event_type, value);
            }
            // "If the field name is "data": Append the field value to the data buffer,
            // then append a single U+000A LINE FEED (LF) character to the data buffer."
            b"data" => {
                self.check_size(value.len() + 1)?;
                // Room for the value and the LF at once: the buffer becomes the event's
                // `data`, so this is its one allocation in the common one-line case.
                self.data.reserve(value.len() + 1);
                push_lossy(&mut self.data, value);
                self.data.push('\n');
            }
            // "If the field name is "id": If the field value does not contain U+0000
            // NULL, then set the last event ID buffer to the field value. Otherwise,
            // ignore the field."
            b"id" if memchr(0, value).is_none() => {
                self.id_buffer.clear();
                push_lossy(&mut self.id_buffer, value);
            }
            // "If the field name is "retry": If the field value consists of only ASCII
            // digits, then interpret the field value as an integer in base ten, and set
            // the event stream's reconnection time to that integer. Otherwise, ignore the
            // field." (An empty value does not consist of digits.)
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                let ms = value.iter().fold(0u64, |acc, d| {
                    acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                });
                self.retry = Some(ms);
                self.frames.push_back(Frame::Retry(ms));
            }
            // "Otherwise: The field is ignored."
            _ => {}
        }
        Ok(())
    }

    /// The standard's "dispatch the event" steps.
    fn dispatch(&mut self) {
        // "1. Set the last event ID string of the event source to the value of the last
        // event ID buffer." It happens even when nothing is dispatched.
        if self.last_event_id != self.id_buffer {
            self.last_event_id.clone_from(&self.id_buffer);
        }
        // "2. If the data buffer is an empty string, set the data buffer and the event
        // type buffer to the empty string and return."
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        // "3. If the data buffer's last character is a U+000A LINE FEED (LF) character,
        // then remove the last character from the data buffer."
        if self.data.ends_with('\n') {
            self.data.pop();
        }
        // "5. Initialize event's type attribute to "message", its data attribute to data,
        // ... and its lastEventId attribute to the last event ID string. 6. If the event
        // type buffer has a value other than the empty string, change the type of the
        // newly created event to equal the value of the event type buffer. 7. Set the data
        // buffer and the event type buffer to the empty string." `take` does both.
        let event = if self.event_type.is_empty() {
            Cow::Borrowed("message")
        } else {
            Cow::Owned(std::mem::take(&mut self.event_type))
        };
        self.frames.push_back(Frame::Event(Event {
            event,
            data: std::mem::take(&mut self.data),
            id: self.last_event_id.clone(),
        }));
    }
}

/// Append `bytes` to `out` as UTF-8, replacing invalid sequences with U+FFFD.
fn push_lossy(out: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => out.push_str(text),
        Err(_) => out.push_str(&String::from_utf8_lossy(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> (Vec<Frame>, String) {
        let mut decoder = Decoder::new();
        let mut frames = Vec::new();
        for chunk in chunks {
            decoder.push(chunk).unwrap();
            while let Some(frame) = decoder.next_frame() {
                frames.push(frame);
            }
        }
        decoder.finish();
        (frames, decoder.last_event_id().to_owned())
    }

    fn event(event: &'static str, data: &str, id: &str) -> Frame {
        Frame::Event(Event {
            event: Cow::Borrowed(event),
            data: data.to_owned(),
            id: id.to_owned(),
        })
    }

    #[test]
    fn split_multibyte_character_decodes_whole() {
        let (frames, _) = decode_all(&[b"data: \xE2\x82", b"\xAC\n\n"]);
        assert_eq!(frames, vec![event("message", "€", "")]);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_character() {
        let (frames, _) = decode_all(&[b"data: a\xFFb\n\n"]);
        assert_eq!(frames, vec![event("message", "a\u{FFFD}b", "")]);
    }

    #[test]
    fn cr_and_lf_split_across_reads_is_one_line_end() {
        let (frames, _) = decode_all(&[b"data: a\r", b"\ndata: b\r", b"\r"]);
        assert_eq!(frames, vec![event("message", "a\nb", "")]);
    }

    #[test]
    fn incomplete_event_at_eof_is_discarded_with_its_id() {
        let (frames, last_id) = decode_all(&[b"id: 1\ndata: a\n\nid: 2\ndata: b\n"]);
        assert_eq!(frames, vec![event("message", "a", "1")]);
        assert_eq!(last_id, "1");
    }

    #[test]
    fn id_without_data_still_sets_last_event_id() {
        let (frames, last_id) = decode_all(&[b"id: 9\n\n"]);
        assert!(frames.is_empty());
        assert_eq!(last_id, "9");
    }

    #[test]
    fn retry_needs_only_digits() {
        let (frames, _) = decode_all(&[b"retry: 1500\nretry: 15x\nretry:\n\n"]);
        assert_eq!(frames, vec![Frame::Retry(1500)]);
    }

    #[test]
    fn huge_retry_saturates_instead_of_overflowing() {
        let (frames, _) = decode_all(&[b"retry: 99999999999999999999999999\n"]);
        assert_eq!(frames, vec![Frame::Retry(u64::MAX)]);
    }

    #[test]
    fn size_limit_refuses_a_long_line_in_small_chunks() {
        let mut decoder = Decoder::new().with_max_event_size(16);
        let mut result = Ok(());
        for _ in 0..10 {
            result = result.and(decoder.push(b"data: xxxx"));
        }
        assert_eq!(result, Err(DecodeError::EventTooLarge { limit: 16 }));
    }

    #[test]
    fn size_limit_refuses_a_long_line_arriving_whole() {
        // A long comment in one read used to pass while the same bytes in two reads were
        // refused: the limit must not depend on the chunking.
        let line = format!("id: 1\n:{}\n", "x".repeat(32));
        let mut whole = Decoder::new().with_max_event_size(16);
        assert_eq!(
            whole.push(line.as_bytes()),
            Err(DecodeError::EventTooLarge { limit: 16 })
        );
        let (head, tail) = line.as_bytes().split_at(12);
        let mut split = Decoder::new().with_max_event_size(16);
        let result = split.push(head).and_then(|()| split.push(tail));
        assert_eq!(result, Err(DecodeError::EventTooLarge { limit: 16 }));
    }

    #[test]
    fn size_limit_refuses_many_data_lines() {
        let mut decoder = Decoder::new().with_max_event_size(16);
        let result = (0..10).try_for_each(|_| decoder.push(b"data: xxxx\n"));
        assert_eq!(result, Err(DecodeError::EventTooLarge { limit: 16 }));
    }

    #[test]
    fn reconnection_keeps_the_last_event_id() {
        let mut decoder = Decoder::with_last_event_id("41");
        decoder.push(b"data: x\n\n").unwrap();
        assert_eq!(decoder.next_frame(), Some(event("message", "x", "41")));
    }
}
