//! Fuzz target `decode`: the decoder never panics, and splitting the input into two reads
//! at any point gives exactly what decoding it whole gives (frames, last event id, retry,
//! and whether a size limit refuses it).
//!
//! Input layout: byte 0 and 1 choose the split point (little-endian, modulo the length),
//! byte 2 chooses a size limit (0 = none, else `n * 4` bytes), the rest is the stream.
//! Run with `cargo +nightly fuzz run decode` from `crates/sse`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sse::{DecodeError, Decoder, Frame};

/// Everything observable about one decoding run.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Frame>,
    error: Option<DecodeError>,
    last_event_id: String,
    retry: Option<u64>,
}

fn decode(chunks: &[&[u8]], limit: Option<usize>) -> Outcome {
    let mut decoder = Decoder::new();
    if let Some(limit) = limit {
        decoder = decoder.with_max_event_size(limit);
    }
    let mut frames = Vec::new();
    for chunk in chunks {
        let pushed = decoder.push(chunk);
        frames.extend(std::iter::from_fn(|| decoder.next_frame()));
        if let Err(error) = pushed {
            // After an error the decoder's state is unspecified: compare up to here.
            return Outcome {
                frames,
                error: Some(error),
                last_event_id: String::new(),
                retry: None,
            };
        }
    }
    decoder.finish();
    frames.extend(std::iter::from_fn(|| decoder.next_frame()));
    Outcome {
        frames,
        error: None,
        last_event_id: decoder.last_event_id().to_owned(),
        retry: decoder.retry(),
    }
}

fuzz_target!(|data: &[u8]| {
    let [lo, hi, limit, input @ ..] = data else {
        return;
    };
    let at = usize::from(u16::from_le_bytes([*lo, *hi])) % (input.len() + 1);
    let limit = (*limit != 0).then(|| usize::from(*limit) * 4);
    let (head, tail) = input.split_at(at);

    let whole = decode(&[input], limit);
    let split = decode(&[head, tail], limit);
    assert_eq!(
        whole,
        split,
        "split at {at} of {} bytes, limit {limit:?}",
        input.len()
    );
});
