//! Conformance with the WHATWG "event stream interpretation" rules, on the
//! web-platform-tests vectors in `fixtures/wpt_sse_vectors.json` (see `fixtures/README.md`).
//!
//! Every vector is decoded whole, byte by byte, split into two pieces at every position,
//! and through the [`EventStream`] adapter over the same chunkings. Each run must give the
//! events a browser dispatches, the `Last-Event-ID` a reconnection would send and the
//! reconnection time. All failures are collected and reported by vector name.

// Test code: a broken fixture or a decoder error should abort loudly, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::convert::Infallible;

use futures_util::{FutureExt, StreamExt, stream};
use serde::{Deserialize, Deserializer};
use sse::{Decoder, EventStream, Frame};

/// Embedded at compile time: the test never reads outside the crate.
const VECTORS: &str = include_str!("fixtures/wpt_sse_vectors.json");

/// One case. Every key of the file is named here and unknown keys are refused, so a new
/// kind of expectation added to the fixture fails loudly instead of being ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // descriptive keys are parsed so that `deny_unknown_fields` holds
struct Vector {
    name: String,
    origin: String,
    source: String,
    /// Readable rendering of the input; `input_hex` is authoritative.
    input: String,
    input_encoding: String,
    input_hex: String,
    content_type: String,
    expected: Vec<ExpectedEvent>,
    expected_retry_ms: Option<u64>,
    /// Absent: the vector says nothing; `Some(None)`: no `Last-Event-ID` header is sent.
    #[serde(default, deserialize_with = "present")]
    expected_reconnect_last_event_id: Option<Option<String>>,
    initial_last_event_id: Option<String>,
    #[serde(default)]
    expect_connection_failure: bool,
    chunking: Option<String>,
    known_deviations: Option<serde_json::Map<String, serde_json::Value>>,
    notes: String,
}

/// Distinguishes a key that is present with `null` from an absent key.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

#[derive(Debug, Deserialize, PartialEq, Eq, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ExpectedEvent {
    r#type: String,
    data: String,
    last_event_id: String,
}

/// What one run of the decoder observed.
#[derive(Debug)]
struct Outcome {
    events: Vec<ExpectedEvent>,
    /// `Decoder::retry()` after the end of input.
    retry: Option<u64>,
    /// `Decoder::last_event_id()` after `finish()`: what a reconnection sends.
    last_event_id: String,
}

fn vectors() -> Vec<Vector> {
    serde_json::from_str(VECTORS).expect("fixtures/wpt_sse_vectors.json parses")
}

fn bytes_of(vector: &Vector) -> Vec<u8> {
    let hex = vector.input_hex.as_bytes();
    assert!(hex.len() % 2 == 0, "{}: odd input_hex", vector.name);
    hex.chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).expect("hex is ASCII");
            u8::from_str_radix(text, 16).expect("valid hex digit pair")
        })
        .collect()
}

fn decoder_for(vector: &Vector) -> Decoder {
    match &vector.initial_last_event_id {
        Some(id) => Decoder::with_last_event_id(id.as_str()),
        None => Decoder::new(),
    }
}

/// The frames as the events a browser would dispatch; `Retry` frames must agree with the
/// decoder's final `retry()`, which is what the reconnection uses.
fn outcome(frames: Vec<Frame>, retry: Option<u64>, last_event_id: &str) -> Outcome {
    let mut events = Vec::new();
    let mut last_retry_frame = None;
    for frame in frames {
        match frame {
            Frame::Event(event) => events.push(ExpectedEvent {
                r#type: event.event.into_owned(),
                data: event.data,
                last_event_id: event.id,
            }),
            Frame::Retry(ms) => last_retry_frame = Some(ms),
        }
    }
    assert_eq!(
        last_retry_frame, retry,
        "the last Retry frame and Decoder::retry() disagree"
    );
    Outcome {
        events,
        retry,
        last_event_id: last_event_id.to_owned(),
    }
}

/// Decode with the push API, one `push` per chunk.
fn decode_push(vector: &Vector, chunks: &[&[u8]]) -> Result<Outcome, String> {
    let mut decoder = decoder_for(vector);
    let mut frames = Vec::new();
    for chunk in chunks {
        decoder.push(chunk).map_err(|error| error.to_string())?;
        frames.extend(std::iter::from_fn(|| decoder.next_frame()));
    }
    decoder.finish();
    frames.extend(std::iter::from_fn(|| decoder.next_frame()));
    Ok(outcome(frames, decoder.retry(), decoder.last_event_id()))
}

/// Decode through the `Stream` adapter over an in-memory stream of the same chunks. The
/// source is always ready, so the whole stream is collected in a single poll.
fn decode_stream(vector: &Vector, chunks: &[&[u8]]) -> Result<Outcome, String> {
    let source = stream::iter(chunks.iter().map(|c| Ok::<_, Infallible>(c.to_vec())));
    let mut events = EventStream::with_decoder(source, decoder_for(vector));
    let items: Vec<_> = events
        .by_ref()
        .collect::<Vec<_>>()
        .now_or_never()
        .ok_or("an always-ready source made the EventStream pend")?;
    let frames = items
        .into_iter()
        .collect::<Result<Vec<Frame>, _>>()
        .map_err(|error| error.to_string())?;
    Ok(outcome(frames, events.retry(), events.last_event_id()))
}

/// Every chunking we try: whole, one byte per read, and two pieces split at each position.
fn chunkings(input: &[u8]) -> Vec<(String, Vec<&[u8]>)> {
    let mut all = vec![
        ("whole".to_owned(), vec![input]),
        ("byte by byte".to_owned(), input.chunks(1).collect()),
    ];
    for at in 0..=input.len() {
        let (head, tail) = input.split_at(at);
        all.push((format!("split at {at}"), vec![head, tail]));
    }
    all
}

/// What the vector says the decoder must produce.
#[derive(Debug)]
struct Expectation {
    events: Vec<ExpectedEvent>,
    retry: Option<u64>,
    /// `None` when the vector is silent about the reconnection: the id is then checked
    /// through each event's `lastEventId` only.
    reconnect_last_event_id: Option<String>,
}

impl Expectation {
    fn of(vector: &Vector, all: &[Vector]) -> Result<Self, String> {
        let mut events = vector.expected.clone();
        if vector.expect_connection_failure {
            // The browser fails these connections because of the response's MIME type,
            // before reading a byte of the body, so it dispatches nothing. The decoder
            // never sees headers: the `Content-Type` rule lives in the client crate
            // (`unbroken-client`, `is_event_stream` in `src/source.rs`), which refuses the
            // response with `ClientError::ContentType` before it builds a decoder.
            // What the decoder must do with the body is what it does for the same bytes
            // under a valid MIME type, so that expectation comes from the vector with
            // identical input that succeeds.
            if !events.is_empty() {
                return Err("a failed connection cannot dispatch events".to_owned());
            }
            let twin = all
                .iter()
                .find(|v| !v.expect_connection_failure && v.input_hex == vector.input_hex)
                .ok_or("no vector with the same body and a valid MIME type to compare")?;
            events = twin.expected.clone();
        }
        Ok(Self {
            events,
            // `expected_retry_ms` is absent exactly when the stream holds no valid
            // `retry:` field: the reconnection time stays at the client's default.
            retry: vector.expected_retry_ms,
            // The standard sends `Last-Event-ID` only when the last event ID string is
            // not empty, so "no header" (`null`) is the empty string.
            reconnect_last_event_id: vector
                .expected_reconnect_last_event_id
                .clone()
                .map(Option::unwrap_or_default),
        })
    }

    fn mismatch(&self, got: &Outcome) -> Option<String> {
        if got.events != self.events {
            return Some(format!(
                "events\n    got      {:?}\n    expected {:?}",
                got.events, self.events
            ));
        }
        if got.retry != self.retry {
            return Some(format!(
                "retry: got {:?}, expected {:?}",
                got.retry, self.retry
            ));
        }
        match &self.reconnect_last_event_id {
            Some(id) if *id != got.last_event_id => Some(format!(
                "reconnect Last-Event-ID: got {:?}, expected {id:?}",
                got.last_event_id
            )),
            _ => None,
        }
    }
}

fn check(vector: &Vector, all: &[Vector]) -> Result<(), String> {
    if let Some(chunking) = &vector.chunking {
        // Byte-by-byte delivery is one of the chunkings every vector gets anyway.
        if chunking != "byte-by-byte" {
            return Err(format!("unknown chunking {chunking:?}"));
        }
    }
    let expected = Expectation::of(vector, all)?;
    let input = bytes_of(vector);
    for (how, chunks) in chunkings(&input) {
        for (api, result) in [
            ("push", decode_push(vector, &chunks)),
            ("EventStream", decode_stream(vector, &chunks)),
        ] {
            let got = result.map_err(|e| format!("{api}, {how}: error {e}"))?;
            if let Some(why) = expected.mismatch(&got) {
                return Err(format!("{api}, {how}: {why}"));
            }
        }
    }
    Ok(())
}

#[test]
fn every_vector_decodes_like_a_browser_in_every_chunking() {
    let all = vectors();
    let failures: Vec<String> = all
        .iter()
        .filter_map(|vector| {
            check(vector, &all)
                .err()
                .map(|why| format!("{}: {why}", vector.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} vectors failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[test]
fn the_fixture_is_complete() {
    let all = vectors();
    assert_eq!(all.len(), 40, "the fixture has 40 cases");
    let failing_mime = all.iter().filter(|v| v.expect_connection_failure).count();
    assert_eq!(failing_mime, 2, "two cases are about the MIME type only");
    // The decoder ignores `Content-Type`, so it decodes UTF-8 even under
    // `charset=windows-1252` (format-utf-8), as the standard says; Chromium 156 instead
    // fails such a connection (see the vector's `known_deviations`). A gateway must only
    // ever send `text/event-stream` or `text/event-stream;charset=utf-8`.
    let utf8 = all
        .iter()
        .find(|v| v.name == "format-utf-8")
        .expect("format-utf-8 is present");
    assert!(utf8.content_type.contains("windows-1252"));
}

#[test]
fn event_names_are_borrowed_for_the_default_type() {
    // Not a vector: the common case of no `event:` field must not allocate a type name.
    let mut decoder = Decoder::new();
    decoder.push(b"data: x\n\n").unwrap();
    match decoder.next_frame() {
        Some(Frame::Event(event)) => assert!(matches!(event.event, Cow::Borrowed("message"))),
        other => panic!("expected an event, got {other:?}"),
    }
}
