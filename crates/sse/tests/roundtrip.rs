//! Property tests: what the encoder writes, the decoder reads back, in any chunking.
//!
//! - Data of arbitrary Unicode (CR, LF and CRLF included) comes back with every line end
//!   normalised to LF: the encoder splits on all three, the decoder joins with `\n`.
//! - `id` and `event` values without CR, LF or NUL come back exactly; with any of them the
//!   encoder refuses the event and writes nothing.
//! - A stream of many events, comments and `retry:` fields decodes to the same frames
//!   whatever the chunking.

// Test code: a broken fixture or a decoder error should abort loudly, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use sse::{
    DecodeError, Decoder, EncodeError, Event, Frame, write_comment, write_event, write_retry,
};

/// Decode `chunks` in order, then finish; returns the frames and the last event id.
fn decode(chunks: &[&[u8]]) -> (Vec<Frame>, String) {
    let mut decoder = Decoder::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        decoder.push(chunk).unwrap();
        frames.extend(std::iter::from_fn(|| decoder.next_frame()));
    }
    decoder.finish();
    frames.extend(std::iter::from_fn(|| decoder.next_frame()));
    (frames, decoder.last_event_id().to_owned())
}

fn single_event(bytes: &[u8]) -> Event {
    match decode(&[bytes]).0.as_slice() {
        [Frame::Event(event)] => event.clone(),
        other => panic!("expected exactly one event, got {other:?}"),
    }
}

/// The decoder's view of a line end: CRLF, then lone CR, become LF.
fn normalise_line_ends(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// Arbitrary text with line ends, NUL, spaces and non-ASCII made frequent.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\r".to_owned()),
        Just("\n".to_owned()),
        Just("\r\n".to_owned()),
        Just(" ".to_owned()),
        Just(":".to_owned()),
        Just("\0".to_owned()),
        Just("\u{FEFF}".to_owned()),
        any::<char>().prop_map(String::from),
        "[a-z]{1,8}",
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

/// Arbitrary text for a single-line field: no CR, LF or NUL.
fn single_line() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just(" ".to_owned()),
        Just(":".to_owned()),
        Just("\u{2026}".to_owned()),
        "[^\r\n\0]",
        "[a-z0-9-]{1,8}",
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

/// Single-line text with at least one CR, LF or NUL in it.
fn multi_line() -> impl Strategy<Value = String> {
    (
        single_line(),
        prop::sample::select(vec!['\r', '\n', '\0']),
        text(),
    )
        .prop_map(|(head, bad, tail)| format!("{head}{bad}{tail}"))
}

/// One item of an encoded stream.
#[derive(Debug, Clone)]
enum Item {
    Event {
        event: Option<String>,
        id: Option<String>,
        data: String,
    },
    Comment(String),
    Retry(u64),
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        6 => (
            prop::option::of(single_line()),
            prop::option::of(single_line()),
            text()
        )
            .prop_map(|(event, id, data)| Item::Event { event, id, data }),
        1 => text().prop_map(Item::Comment),
        1 => any::<u64>().prop_map(Item::Retry),
    ]
}

fn encode(items: &[Item]) -> Vec<u8> {
    let mut buf = Vec::new();
    for item in items {
        match item {
            Item::Event { event, id, data } => {
                write_event(&mut buf, event.as_deref(), id.as_deref(), data).unwrap();
            }
            Item::Comment(text) => write_comment(&mut buf, text),
            Item::Retry(ms) => write_retry(&mut buf, *ms),
        }
    }
    buf
}

/// The frames a decoder must produce for `items`, following the standard: an event's id
/// is the last `id:` seen so far, its type `message` unless a non-empty `event:` was given.
fn expected_frames(items: &[Item]) -> Vec<Frame> {
    let mut last_id = String::new();
    let mut frames = Vec::new();
    for item in items {
        match item {
            Item::Event { event, id, data } => {
                if let Some(id) = id {
                    last_id.clone_from(id);
                }
                let event = match event.as_deref() {
                    None | Some("") => "message".into(),
                    Some(name) => name.to_owned().into(),
                };
                frames.push(Frame::Event(Event {
                    event,
                    data: normalise_line_ends(data),
                    id: last_id.clone(),
                }));
            }
            Item::Comment(_) => {}
            Item::Retry(ms) => frames.push(Frame::Retry(*ms)),
        }
    }
    frames
}

/// Cut `bytes` at the given positions (taken modulo the length, in any order).
fn split_at_points<'a>(bytes: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = points.iter().map(|p| p % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for cut in cuts {
        chunks.push(&bytes[start..cut]);
        start = cut;
    }
    chunks.push(&bytes[start..]);
    chunks
}

/// Everything observable about decoding `chunks`, stopping at the first refusal (after
/// which the decoder's state is unspecified).
fn observe(chunks: &[&[u8]], limit: Option<usize>) -> (Vec<Frame>, Option<DecodeError>, String) {
    let mut decoder = Decoder::new();
    if let Some(limit) = limit {
        decoder = decoder.with_max_event_size(limit);
    }
    let mut frames = Vec::new();
    for chunk in chunks {
        let pushed = decoder.push(chunk);
        frames.extend(std::iter::from_fn(|| decoder.next_frame()));
        if let Err(error) = pushed {
            return (frames, Some(error), String::new());
        }
    }
    decoder.finish();
    (frames, None, decoder.last_event_id().to_owned())
}

/// Arbitrary bytes that look like an event stream often enough to reach every branch.
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"\r".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\xEF\xBB\xBF".to_vec()),
        Just(b"data:".to_vec()),
        Just(b"data: ".to_vec()),
        Just(b"id:".to_vec()),
        Just(b"event:".to_vec()),
        Just(b"retry:".to_vec()),
        Just(b":".to_vec()),
        Just(b"\xE2\x82".to_vec()),
        prop::collection::vec(any::<u8>(), 1..8),
        "[a-z0-9 ]{1,24}".prop_map(String::into_bytes),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

proptest! {
    /// The property of the fuzz target (`fuzz/fuzz_targets/decode.rs`), on stable.
    #[test]
    fn arbitrary_bytes_decode_the_same_whole_and_split(
        bytes in wire_bytes(),
        at in any::<usize>(),
        limit in prop::option::of(0usize..64),
    ) {
        let (head, tail) = bytes.split_at(at % (bytes.len() + 1));
        prop_assert_eq!(observe(&[head, tail], limit), observe(&[&bytes], limit));
    }

    #[test]
    fn data_round_trips_with_line_ends_normalised(data in text()) {
        let mut buf = Vec::new();
        write_event(&mut buf, None, None, &data).unwrap();
        let event = single_event(&buf);
        prop_assert_eq!(event.data, normalise_line_ends(&data));
        prop_assert_eq!(event.event, "message");
        prop_assert_eq!(event.id, "");
    }

    #[test]
    fn single_line_ids_and_event_names_round_trip_exactly(
        event in single_line(),
        id in single_line(),
        data in text(),
    ) {
        let mut buf = Vec::new();
        write_event(&mut buf, Some(&event), Some(&id), &data).unwrap();
        let decoded = single_event(&buf);
        // The standard maps an empty `event:` value to the default type.
        let expected_type = if event.is_empty() { "message" } else { event.as_str() };
        prop_assert_eq!(decoded.event, expected_type);
        prop_assert_eq!(decoded.id, id);
        prop_assert_eq!(decoded.data, normalise_line_ends(&data));
    }

    #[test]
    fn ids_and_event_names_with_cr_lf_or_nul_are_refused(
        bad in multi_line(),
        good in single_line(),
        data in text(),
    ) {
        let mut buf = b"untouched".to_vec();
        prop_assert_eq!(
            write_event(&mut buf, Some(&good), Some(&bad), &data),
            Err(EncodeError::InvalidField { field: "id" })
        );
        prop_assert_eq!(
            write_event(&mut buf, Some(&bad), Some(&good), &data),
            Err(EncodeError::InvalidField { field: "event" })
        );
        prop_assert_eq!(buf, b"untouched".to_vec());
    }

    #[test]
    fn any_chunking_of_a_stream_gives_the_same_frames(
        items in prop::collection::vec(item(), 1..12),
        points in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let bytes = encode(&items);
        let (whole, whole_id) = decode(&[&bytes]);
        prop_assert_eq!(&whole, &expected_frames(&items));

        let (split, split_id) = decode(&split_at_points(&bytes, &points));
        prop_assert_eq!(&split, &whole);
        prop_assert_eq!(split_id, whole_id);

        let one_byte: Vec<&[u8]> = bytes.chunks(1).collect();
        let (bytewise, _) = decode(&one_byte);
        prop_assert_eq!(&bytewise, &whole);
    }
}
