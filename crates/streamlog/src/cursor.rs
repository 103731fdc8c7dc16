//! The reader cursor every backend shares. A reader holds only a position (`cursor`),
//! a receiver of the stream's [`Head`] (the last durable seq and whether the stream has
//! ended, published through a `tokio::sync::watch`), and at most one fetched chunk. It
//! subscribes to the head *before* it looks at the log, and always fetches by seq range
//! from the backend, so the switch from replay to live can neither skip nor repeat a
//! record, and a reader that falls behind costs a re-read, never memory in the writer.
//!
//! Records the retention trimmed ([`crate::StreamLog::trim`]) before the reader reached
//! them are skipped: the backend answers a fetch with the seq the trim deleted through,
//! and the reader moves its position there and continues with the first kept record. It
//! never goes back, so a trim under a live reader can make it skip, never repeat.
//!
//! Memory a reader or a stream pins is bounded in bytes as well as in records: a fetched
//! chunk holds at most [`FETCH_CHUNK`] records and [`FETCH_BYTES`] bytes ([`ChunkBudget`];
//! at least one record, so a record larger than that still goes through, alone), and a
//! [`Tail`] keeps at most its capacity in records and its byte bound (always at least
//! the newest record). Sizes are the records' stored JSON lengths.

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::stream;
use tokio::sync::watch;

use crate::error::LogError;
use crate::id::Seq;
use crate::record::Record;
use crate::{LogFuture, RecordStream};

/// Records a reader fetches at most per round trip to the backend.
pub(crate) const FETCH_CHUNK: u64 = 512;

/// Bytes (of stored JSON) a reader fetches at most per round trip, unless one record
/// alone is larger: 256 KiB.
pub(crate) const FETCH_BYTES: usize = 256 * 1024;

/// Counts what a fetched chunk holds, so every backend cuts chunks by the same rule: at
/// most [`FETCH_CHUNK`] records and [`FETCH_BYTES`] bytes, and always the first record.
#[derive(Debug, Default)]
pub(crate) struct ChunkBudget {
    records: u64,
    bytes: usize,
}

impl ChunkBudget {
    /// Whether the next record, of `size` bytes, still belongs in the chunk; it is
    /// counted if so.
    pub fn admit(&mut self, size: usize) -> bool {
        if self.records > 0
            && (self.records >= FETCH_CHUNK || self.bytes.saturating_add(size) > FETCH_BYTES)
        {
            return false;
        }
        self.records += 1;
        self.bytes = self.bytes.saturating_add(size);
        true
    }
}

/// What a reader needs to know about the end of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Head {
    /// The seq of the last durable (committed) record.
    pub last: Seq,
    /// The stream is in a terminal state: once `last` is delivered, the reader ends.
    pub terminal: bool,
}

/// What a fetch returns: the records after `after`, which is the position asked for,
/// or later if the records up to it were trimmed.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    /// Every record in `(asked, after]` was trimmed; `records` start at `after + 1`.
    pub after: Seq,
    /// Consecutive records from `after + 1`.
    pub records: Vec<(Seq, Record)>,
}

/// A backend's way to fetch committed records.
pub(crate) trait Fetch: Send + Sync + 'static {
    /// The records with seq in `(after', upto]`, in order, as many as a [`ChunkBudget`]
    /// admits, where `after'` is `after` or, if the records after it were trimmed, the
    /// last trimmed seq (`first_seq - 1`; it may exceed `upto`, never the committed last
    /// seq). Fewer records than asked (but at least one) is fine; none without a skip
    /// means they are gone.
    fn fetch(&self, after: Seq, upto: Seq) -> LogFuture<'static, Chunk>;
}

/// Where the reader learns the head from.
pub(crate) enum HeadSource {
    /// A live stream: follow its watch.
    Live(watch::Receiver<Head>),
    /// A stream that has already ended: its head cannot change.
    Fixed(Head),
}

struct Cursor {
    fetch: Arc<dyn Fetch>,
    head: HeadSource,
    cursor: Seq,
    buf: VecDeque<(Seq, Record)>,
    done: bool,
}

/// A [`RecordStream`] over `fetch` that yields every record after `after`, follows the
/// head, and ends after the last record of a terminal stream.
pub(crate) fn follow(fetch: Arc<dyn Fetch>, head: HeadSource, after: Seq) -> RecordStream {
    let cursor = Cursor {
        fetch,
        head,
        cursor: after,
        buf: VecDeque::new(),
        done: false,
    };
    Box::pin(stream::unfold(cursor, |mut c| async move {
        let item = c.next().await?;
        Some((item, c))
    }))
}

impl Cursor {
    async fn next(&mut self) -> Option<Result<(Seq, Record), LogError>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(item) = self.buf.pop_front() {
                return Some(Ok(item));
            }
            let head = match &mut self.head {
                HeadSource::Live(rx) => *rx.borrow_and_update(),
                HeadSource::Fixed(head) => *head,
            };
            if self.cursor < head.last {
                let upto = head.last.min(self.cursor + FETCH_CHUNK);
                match self.fetch.fetch(self.cursor, upto).await {
                    Ok(chunk) => {
                        if let Err(e) = self.accept(chunk) {
                            self.done = true;
                            return Some(Err(e));
                        }
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
                continue;
            }
            if head.terminal {
                return None;
            }
            let changed = match &mut self.head {
                HeadSource::Live(rx) => rx.changed().await,
                HeadSource::Fixed(_) => return None,
            };
            if changed.is_err() {
                // The backend dropped the stream's head without ending it: the log shut
                // down under the reader.
                self.done = true;
                return Some(Err(LogError::Closed));
            }
        }
    }

    /// Check a fetched chunk continues exactly at the cursor (or after records trimmed
    /// since), then queue it.
    fn accept(&mut self, chunk: Chunk) -> Result<(), LogError> {
        let Chunk { after, records } = chunk;
        if after < self.cursor {
            return Err(LogError::Corrupt(format!(
                "asked for records after seq {}, store answered after {after}",
                self.cursor
            )));
        }
        if records.is_empty() && after == self.cursor {
            return Err(LogError::Corrupt(format!(
                "records after seq {} are missing (stream purged?)",
                self.cursor
            )));
        }
        // Records up to `after` were trimmed: the reader skips them.
        self.cursor = after;
        for (seq, _) in &records {
            if *seq != self.cursor + 1 {
                return Err(LogError::Corrupt(format!(
                    "expected seq {}, store returned {seq}",
                    self.cursor + 1
                )));
            }
            self.cursor = *seq;
        }
        self.buf.extend(records);
        Ok(())
    }
}

/// The last records of an open stream, kept in memory for live readers, each with its
/// size (stored JSON bytes).
#[derive(Debug, Default)]
pub(crate) struct Tail {
    /// The seq the next pushed record must have.
    next: Seq,
    /// Records `next - len .. next`, with their sizes.
    records: VecDeque<(Record, usize)>,
    /// The sum of the sizes of `records`.
    bytes: usize,
    /// The stream's records up to this seq were trimmed (`first_seq - 1`), as far as
    /// the tail has been told.
    trimmed: Seq,
}

impl Tail {
    /// The seq the next pushed record must have.
    pub fn next(&self) -> Seq {
        self.next
    }

    /// The bytes the tail's records take (their stored JSON sizes).
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// An empty tail whose next record is `next`.
    pub fn starting_at(next: Seq) -> Self {
        Self {
            next,
            records: VecDeque::new(),
            bytes: 0,
            trimmed: 0,
        }
    }

    /// Drop the `n` oldest records.
    fn drop_front(&mut self, n: usize) {
        for (_, size) in self.records.drain(..n.min(self.records.len())) {
            self.bytes -= size;
        }
    }

    /// The stream was trimmed: its first kept seq is `first_seq`. Drops the records
    /// before it.
    pub fn trim(&mut self, first_seq: Seq) {
        self.trimmed = self.trimmed.max(first_seq.saturating_sub(1));
        let first = self.next - self.records.len() as u64;
        let gone = self.trimmed.saturating_add(1).saturating_sub(first);
        self.drop_front(usize::try_from(gone).unwrap_or(usize::MAX));
    }

    /// Add committed records starting at seq `first`, each with its size; keep at most
    /// `capacity` records and `max_bytes` bytes, but always the newest record (readers
    /// further behind read from the store).
    pub fn push(
        &mut self,
        first: Seq,
        records: impl IntoIterator<Item = (Record, usize)>,
        capacity: usize,
        max_bytes: usize,
    ) {
        if first > self.next {
            // Records between are only in the store; the tail restarts here.
            self.drop_front(self.records.len());
            self.next = first;
        }
        for (seq, (record, size)) in (first..).zip(records) {
            if seq == self.next {
                self.records.push_back((record, size));
                self.bytes += size;
                self.next += 1;
            }
        }
        self.drop_front(self.records.len().saturating_sub(capacity));
        while self.bytes > max_bytes && self.records.len() > 1 {
            self.drop_front(1);
        }
    }

    /// Records in `(after, upto]` (after skipping trimmed ones), as many as a
    /// [`ChunkBudget`] admits, if the tail holds the first of them.
    pub fn get(&self, after: Seq, upto: Seq) -> Option<Chunk> {
        let after = after.max(self.trimmed);
        if after >= upto {
            // All asked for was trimmed; the reader moves past it.
            return Some(Chunk {
                after,
                records: Vec::new(),
            });
        }
        let first = self.next - self.records.len() as u64;
        if after + 1 < first || after + 1 >= self.next {
            return None;
        }
        let end = upto.min(self.next - 1);
        let start = usize::try_from(after + 1 - first).ok()?;
        let len = usize::try_from(end - after).ok()?;
        let mut budget = ChunkBudget::default();
        Some(Chunk {
            after,
            records: (after + 1..)
                .zip(self.records.range(start..start + len))
                .take_while(|(_, (_, size))| budget.admit(*size))
                .map(|(seq, (record, _))| (seq, record.clone()))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(seq: u64) -> Record {
        Record::Text {
            text: seq.to_string(),
        }
    }

    /// Record `seq`, counted as 10 bytes.
    fn sized(seq: u64) -> (Record, usize) {
        (text(seq), 10)
    }

    /// A record of `size` bytes of text, with its stored size.
    fn large(size: usize) -> (Record, usize) {
        let record = Record::Text {
            text: "x".repeat(size),
        };
        let len = record.json_len();
        (record, len)
    }

    #[test]
    fn tail_serves_what_it_holds_and_trims() {
        let get = |tail: &Tail, after, upto| tail.get(after, upto).map(|c| c.records);
        let mut tail = Tail::starting_at(1);
        tail.push(1, (1..=5).map(sized), 3, usize::MAX);
        // Holds 3, 4, 5.
        assert!(tail.get(0, 5).is_none());
        assert!(tail.get(1, 5).is_none());
        let got = get(&tail, 2, 5).unwrap();
        assert_eq!(got, vec![(3, text(3)), (4, text(4)), (5, text(5))]);
        assert_eq!(get(&tail, 3, 4).unwrap(), vec![(4, text(4))]);
        assert!(tail.get(5, 9).is_none());
        // Duplicates are skipped, a gap restarts the tail.
        tail.push(4, (4..=6).map(sized), 3, usize::MAX);
        assert_eq!(get(&tail, 5, 6).unwrap(), vec![(6, text(6))]);
        tail.push(9, (9..=9).map(sized), 3, usize::MAX);
        assert!(tail.get(6, 9).is_none());
        assert_eq!(get(&tail, 8, 9).unwrap(), vec![(9, text(9))]);
    }

    #[test]
    fn tail_skips_trimmed_records() {
        let mut tail = Tail::starting_at(1);
        tail.push(1, (1..=6).map(sized), 10, usize::MAX);
        tail.trim(4);
        // Asking from before the trim skips to seq 4.
        let chunk = tail.get(0, 6).unwrap();
        assert_eq!(chunk.after, 3);
        assert_eq!(
            chunk.records,
            vec![(4, text(4)), (5, text(5)), (6, text(6))]
        );
        // Asking for trimmed records only: skipped, nothing to return.
        let chunk = tail.get(1, 2).unwrap();
        assert_eq!((chunk.after, chunk.records.len()), (3, 0));
        // Not behind the trim: unchanged.
        let chunk = tail.get(4, 6).unwrap();
        assert_eq!((chunk.after, chunk.records.len()), (4, 2));
        // Trimming never moves back, and may empty the tail.
        tail.trim(2);
        assert_eq!(tail.get(0, 6).unwrap().after, 3);
        tail.trim(7);
        assert_eq!(tail.records.len(), 0);
        let chunk = tail.get(0, 6).unwrap();
        assert_eq!((chunk.after, chunk.records.len()), (6, 0));
        tail.push(7, [sized(7)], 10, usize::MAX);
        assert_eq!(tail.get(0, 7).unwrap().records, vec![(7, text(7))]);
    }

    #[test]
    fn tail_is_bounded_in_bytes_and_keeps_the_newest_record() {
        let mut tail = Tail::starting_at(1);
        // Ten records of 10 bytes within 35 bytes: the newest three stay.
        tail.push(1, (1..=10).map(sized), 100, 35);
        assert_eq!(tail.bytes(), 30);
        assert!(tail.get(6, 10).is_none());
        assert_eq!(tail.get(7, 10).unwrap().records.len(), 3);
        // A record over the bound alone: it stays, alone.
        tail.push(11, [large(100)], 100, 35);
        assert!(tail.get(9, 11).is_none());
        assert_eq!(tail.get(10, 11).unwrap().records.len(), 1);
        assert!(tail.bytes() > 100);
        tail.push(12, [sized(12)], 100, 35);
        assert_eq!(tail.bytes(), 10);
        // A trim keeps the count right.
        tail.push(13, (13..=14).map(sized), 100, 35);
        tail.trim(14);
        assert_eq!(tail.bytes(), 10);
        // A gap restarts the tail.
        tail.push(20, [sized(20)], 100, 35);
        assert_eq!(tail.bytes(), 10);
    }

    #[test]
    fn chunks_are_bounded_in_records_and_bytes() {
        let mut budget = ChunkBudget::default();
        // The first record always goes, however large.
        assert!(budget.admit(FETCH_BYTES * 4));
        assert!(!budget.admit(1));
        let mut budget = ChunkBudget::default();
        let half = FETCH_BYTES / 2;
        assert!(budget.admit(half) && budget.admit(half));
        assert!(!budget.admit(1));
        let mut budget = ChunkBudget::default();
        let admitted = (0..FETCH_CHUNK * 2).take_while(|_| budget.admit(1)).count();
        assert_eq!(admitted as u64, FETCH_CHUNK);

        // A tail cuts its chunks by the same rule.
        let mut tail = Tail::starting_at(1);
        let size = FETCH_BYTES / 3;
        tail.push(1, (1..=7).map(|_| large(size)), 100, usize::MAX);
        let chunk = tail.get(0, 7).unwrap();
        assert_eq!(chunk.records.len(), 2);
        assert_eq!(chunk.records[0].0, 1);
        let chunk = tail.get(6, 7).unwrap();
        assert_eq!(chunk.records.len(), 1);
    }
}
