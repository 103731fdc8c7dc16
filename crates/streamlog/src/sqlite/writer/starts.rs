//! Which commands start a stream (its creation, its first records), and how they move
//! ahead of the batch the writer gathered, to commit first in a transaction of their own:
//! a new stream's first token then waits behind no other stream's tokens.

use std::collections::HashSet;

use super::{Command, Op, Writer};
use crate::id::StreamId;

impl Op {
    /// The stream the operation reads or changes; `None` for one that may touch any.
    fn stream(&self) -> Option<StreamId> {
        match self {
            Op::Create(new, _) | Op::CreateLeased { new, .. } => Some(new.id),
            Op::Append { id, .. }
            | Op::Finish { id, .. }
            | Op::Acquire { id, .. }
            | Op::Renew { id, .. }
            | Op::Release { id, .. }
            | Op::Trim { id, .. }
            | Op::Subscribe(id, _) => Some(*id),
            Op::InsertKey { entry, .. } => Some(entry.stream),
            Op::ReleaseKey { stream, .. } => Some(*stream),
            Op::Purge(_) => None,
        }
    }
}

impl Writer {
    /// Whether `op` starts a stream: creates it, or appends its first records (as far as
    /// the cache knows; a stream created in the same batch is not cached yet).
    pub(super) fn starts_stream(&self, op: &Op) -> bool {
        match op {
            Op::Create(..) | Op::CreateLeased { .. } => true,
            Op::Append { id, .. } => self.cache.get(id).is_some_and(|c| c.control.last_seq == 0),
            _ => false,
        }
    }

    /// Move the commands that start a stream (its creation, its first records) out of
    /// `batch`, to be committed first and on their own: a new stream's first token then
    /// waits for no other stream's tokens, however many of those queued meanwhile. A
    /// command stays where it is when an earlier command of the batch touches its
    /// stream, or may touch any (a purge), so no stream sees its commands reordered.
    pub(super) fn take_starts(&self, batch: &mut Vec<Command>) -> Vec<Command> {
        let mut starts = Vec::new();
        let mut rest = Vec::with_capacity(batch.len());
        let mut created = HashSet::new();
        let mut behind = HashSet::new();
        let mut barrier = false;
        for cmd in batch.drain(..) {
            let stream = cmd.op.stream();
            let starting = match (&cmd.op, stream) {
                (Op::Append { .. }, Some(id)) => {
                    created.contains(&id) || self.starts_stream(&cmd.op)
                }
                (op, _) => self.starts_stream(op),
            };
            match stream {
                Some(id) if starting && !barrier && !behind.contains(&id) => {
                    created.insert(id);
                    starts.push(cmd);
                }
                Some(id) => {
                    behind.insert(id);
                    rest.push(cmd);
                }
                None => {
                    barrier = true;
                    rest.push(cmd);
                }
            }
        }
        *batch = rest;
        starts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::control::Control;
    use crate::id::Seq;
    use crate::record::StreamKind;
    use crate::record::{NewStream, Record};
    use crate::sqlite::writer::{Cached, WriterSettings};
    use rusqlite::Connection;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::sync::Semaphore;
    use tokio::sync::oneshot;

    struct Fixture {
        writer: Writer,
        permits: Arc<Semaphore>,
    }

    impl Fixture {
        fn new() -> Self {
            let settings = WriterSettings {
                max_batch_records: 4096,
                max_batch_delay: Duration::from_micros(500),
                tail_capacity: 16,
                tail_bytes: 1 << 20,
                stream_ttl_ms: 1000,
            };
            let conn = Connection::open_in_memory().unwrap();
            let writer = Writer::new(conn, Arc::new(SystemClock), Arc::default(), settings);
            Self {
                writer,
                permits: Arc::new(Semaphore::new(64)),
            }
        }

        /// A stream the writer has seen, with `last_seq` records.
        fn known(&mut self, last_seq: Seq) -> StreamId {
            let id = StreamId::new();
            let mut control = Control::new(0);
            control.last_seq = last_seq;
            let cached = Cached {
                rid: 1,
                control,
                dirty: false,
            };
            self.writer.cache.insert(id, cached);
            id
        }

        fn command(&self, op: Op) -> Command {
            Command {
                op,
                _permit: Arc::clone(&self.permits).try_acquire_owned().unwrap(),
            }
        }

        fn create(&self, id: StreamId) -> Command {
            let new = NewStream {
                id,
                owner: "p".into(),
                kind: StreamKind::Chat,
                request: Default::default(),
            };
            self.command(Op::CreateLeased {
                new,
                holder: "node".into(),
                ttl_ms: 1000,
                reply: oneshot::channel().0,
            })
        }

        fn append(&self, id: StreamId) -> Command {
            self.command(Op::Append {
                id,
                token: 1,
                records: vec![Record::Text { text: "t".into() }],
                bodies: vec![b"{}".to_vec()],
                reply: oneshot::channel().0,
            })
        }

        fn renew(&self, id: StreamId) -> Command {
            self.command(Op::Renew {
                id,
                token: 1,
                ttl_ms: 1000,
                reply: oneshot::channel().0,
            })
        }
    }

    /// What a command is, and of which stream, to compare batches.
    fn shape(batch: &[Command]) -> Vec<(&'static str, Option<StreamId>)> {
        batch
            .iter()
            .map(|c| {
                let kind = match c.op {
                    Op::CreateLeased { .. } => "create",
                    Op::Append { .. } => "append",
                    Op::Renew { .. } => "renew",
                    Op::Purge(_) => "purge",
                    _ => "other",
                };
                (kind, c.op.stream())
            })
            .collect()
    }

    #[test]
    fn new_streams_go_first_and_no_stream_is_reordered() {
        let mut f = Fixture::new();
        let running = f.known(5);
        let opened = f.known(0);
        let renewed = f.known(0);
        let new = StreamId::new();
        let mut batch = vec![
            f.append(running),
            f.renew(renewed),
            f.create(new),
            f.append(running),
            f.append(new),
            f.append(opened),
            // Its stream had an earlier command in the batch: it stays behind it.
            f.append(renewed),
            f.renew(new),
        ];
        let starts = f.writer.take_starts(&mut batch);
        assert_eq!(
            shape(&starts),
            [
                ("create", Some(new)),
                ("append", Some(new)),
                ("append", Some(opened))
            ]
        );
        assert_eq!(
            shape(&batch),
            [
                ("append", Some(running)),
                ("renew", Some(renewed)),
                ("append", Some(running)),
                ("append", Some(renewed)),
                ("renew", Some(new)),
            ]
        );
    }

    #[test]
    fn nothing_moves_ahead_of_a_purge() {
        let f = Fixture::new();
        let before = StreamId::new();
        let after = StreamId::new();
        let mut batch = vec![
            f.create(before),
            f.command(Op::Purge(oneshot::channel().0)),
            f.create(after),
            f.append(after),
        ];
        let starts = f.writer.take_starts(&mut batch);
        assert_eq!(shape(&starts), [("create", Some(before))]);
        assert_eq!(
            shape(&batch),
            [
                ("purge", None),
                ("create", Some(after)),
                ("append", Some(after))
            ]
        );
    }
}
