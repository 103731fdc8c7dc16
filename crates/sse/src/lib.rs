//! Server-Sent Events wire format, exactly as browsers parse it.
//!
//! This crate is the lowest layer of unbroken: it turns bytes into events and events into
//! bytes, and knows nothing about sockets, runtimes or HTTP. It follows the WHATWG HTML
//! standard, section 9.2.6 "Interpreting an event stream", step by step.
//!
//! # Layout
//! - [`decode`]: the incremental [`Decoder`] (push bytes in any chunking, pull [`Frame`]s).
//! - [`stream`]: [`EventStream`], a `Stream` adapter over any byte stream, generic over the
//!   transport error.
//! - [`encode`]: writing events, comments and `retry:` fields, refusing field injection.
//!
//! # Example
//! ```
//! use sse::{Decoder, Frame};
//!
//! let mut decoder = Decoder::new();
//! decoder.push(b"id: 7\ndata: hel");
//! assert!(decoder.next_frame().is_none()); // the event is not complete yet
//! decoder.push(b"lo\n\n");
//! match decoder.next_frame() {
//!     Some(Frame::Event(event)) => {
//!         assert_eq!(event.data, "hello");
//!         assert_eq!(event.id, "7");
//!         assert_eq!(event.event, "message");
//!     }
//!     other => panic!("expected an event, got {other:?}"),
//! }
//! ```

pub mod decode;
pub mod encode;
pub mod stream;

pub use decode::{DecodeError, Decoder, Event, Frame};
pub use encode::{EncodeError, write_comment, write_event, write_retry};
pub use stream::{EventStream, EventStreamExt, StreamError};
