//! Decode throughput on a typical LLM token stream, ours against `eventsource-stream`.
//!
//! The input is 4096 OpenAI-style `chat.completion.chunk` events, each an `id:` line and a
//! ~125-byte JSON `data:` line (574 KiB, 143 bytes per event on the wire), cut into
//! network-sized reads (1 KiB and 16 KiB).
//! Three decoders see the same chunks:
//! - `unbroken/push`: [`sse::Decoder`] driven directly;
//! - `unbroken/stream`: the [`sse::EventStream`] adapter over a `futures_util` stream;
//! - `eventsource-stream`: its `Eventsource` adapter over the same stream.
//!
//! Both stream adapters are driven the same way, by one current-thread tokio runtime.
//! Group `bytes` reports MB/s, group `events` events/s. Run: `cargo bench -p unbroken-sse`.

// A benchmark is test code: a failure here should abort loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// `criterion_group!` generates a `pub fn` that cannot carry a doc comment.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use eventsource_stream::Eventsource;
use futures_util::{StreamExt, stream};
use sse::{Decoder, EventStreamExt, Frame};

const EVENTS: usize = 4096;
const TOKENS: [&str; 8] = [
    "hello", " world", ",", " the", " quick", " brown", " fox", " jumps",
];

/// `EVENTS` events as an upstream LLM provider sends them.
fn llm_stream() -> Vec<u8> {
    let mut buf = Vec::new();
    for i in 0..EVENTS {
        let token = TOKENS[i % TOKENS.len()];
        let data = format!(
            r#"{{"id":"chatcmpl-9xKqJ2mZLrA8cYbF3dTqVwE1","object":"chat.completion.chunk","choices":[{{"index":0,"delta":{{"content":"{token}"}}}}]}}"#
        );
        sse::write_event(&mut buf, None, Some(&i.to_string()), &data).unwrap();
    }
    buf
}

/// What every decoder must find, to check the benchmark measures real work.
struct Tally {
    events: usize,
    data_bytes: usize,
}

fn unbroken_push(chunks: &[&[u8]]) -> Tally {
    let mut decoder = Decoder::new();
    let mut tally = Tally {
        events: 0,
        data_bytes: 0,
    };
    for chunk in chunks {
        decoder.push(chunk).unwrap();
        while let Some(frame) = decoder.next_frame() {
            if let Frame::Event(event) = frame {
                tally.events += 1;
                tally.data_bytes += black_box(event).data.len();
            }
        }
    }
    decoder.finish();
    tally
}

fn unbroken_stream(runtime: &tokio::runtime::Runtime, chunks: &[&[u8]]) -> Tally {
    runtime.block_on(async {
        let mut events = stream::iter(chunks.iter().map(Ok::<_, Infallible>)).sse();
        let mut tally = Tally {
            events: 0,
            data_bytes: 0,
        };
        while let Some(frame) = events.next().await {
            if let Frame::Event(event) = frame.unwrap() {
                tally.events += 1;
                tally.data_bytes += black_box(event).data.len();
            }
        }
        tally
    })
}

fn eventsource_stream(runtime: &tokio::runtime::Runtime, chunks: &[&[u8]]) -> Tally {
    runtime.block_on(async {
        let mut events = stream::iter(chunks.iter().map(Ok::<_, Infallible>)).eventsource();
        let mut tally = Tally {
            events: 0,
            data_bytes: 0,
        };
        while let Some(event) = events.next().await {
            tally.events += 1;
            tally.data_bytes += black_box(event.unwrap()).data.len();
        }
        tally
    })
}

fn run_group(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &tokio::runtime::Runtime,
    input: &[u8],
) {
    for (label, size) in [("1KiB", 1024), ("16KiB", 16 * 1024)] {
        let chunks: Vec<&[u8]> = input.chunks(size).collect();
        group.bench_function(format!("unbroken/push/{label}"), |b| {
            b.iter(|| unbroken_push(black_box(&chunks)))
        });
        group.bench_function(format!("unbroken/stream/{label}"), |b| {
            b.iter(|| unbroken_stream(runtime, black_box(&chunks)))
        });
        group.bench_function(format!("eventsource-stream/{label}"), |b| {
            b.iter(|| eventsource_stream(runtime, black_box(&chunks)))
        });
    }
}

fn decode(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    let input = llm_stream();

    // All three decoders agree on the work before anything is timed.
    let chunks: Vec<&[u8]> = input.chunks(1024).collect();
    for tally in [
        unbroken_push(&chunks),
        unbroken_stream(&runtime, &chunks),
        eventsource_stream(&runtime, &chunks),
    ] {
        assert_eq!(tally.events, EVENTS);
        assert_eq!(
            tally.data_bytes,
            unbroken_push(&[input.as_slice()]).data_bytes
        );
    }

    let mut bytes = c.benchmark_group("bytes");
    bytes.throughput(Throughput::Bytes(input.len() as u64));
    run_group(&mut bytes, &runtime, &input);
    bytes.finish();

    let mut events = c.benchmark_group("events");
    events.throughput(Throughput::Elements(EVENTS as u64));
    run_group(&mut events, &runtime, &input);
    events.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = decode
}
criterion_main!(benches);
