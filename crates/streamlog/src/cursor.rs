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
    /// The records with seq in `(after', upto]`, in order, at most [`FETCH_CHUNK`] of
    /// them, where `after'` is `after` or, if the records after it were trimmed, the
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

/// The last records of an open stream, kept in memory for live readers.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    /// The seq the next pushed record must have.
    next: Seq,
    /// Records `next - len .. next`.
    records: VecDeque<Record>,
    /// The stream's records up to this seq were trimmed (`first_seq - 1`), as far as
    /// the tail has been told.
    trimmed: Seq,
}

impl Tail {
    /// The seq the next pushed record must have.
    pub fn next(&self) -> Seq {
        self.next
    }

    /// An empty tail whose next record is `next`.
    pub fn starting_at(next: Seq) -> Self {
        Self {
            next,
            records: VecDeque::new(),
            trimmed: 0,
        }
    }

    /// The stream was trimmed: its first kept seq is `first_seq`. Drops the records
    /// before it.
    pub fn trim(&mut self, first_seq: Seq) {
        self.trimmed = self.trimmed.max(first_seq.saturating_sub(1));
        let first = self.next - self.records.len() as u64;
        let gone = self.trimmed.saturating_add(1).saturating_sub(first);
        let gone = usize::try_from(gone).map_or(self.records.len(), |g| g.min(self.records.len()));
        self.records.drain(..gone);
    }

    /// Add committed records starting at seq `first`; keep at most `capacity`.
    pub fn push(&mut self, first: Seq, records: impl IntoIterator<Item = Record>, capacity: usize) {
        if first > self.next {
            // Records between are only in the database; the tail restarts here.
            self.records.clear();
            self.next = first;
        }
        for (seq, record) in (first..).zip(records) {
            if seq == self.next {
                self.records.push_back(record);
                self.next += 1;
            }
        }
        while self.records.len() > capacity {
            self.records.pop_front();
        }
    }

    /// Records in `(after, upto]` (after skipping trimmed ones) if the tail holds the
    /// first of them.
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
        let end = upto.min(self.next - 1).min(after + FETCH_CHUNK);
        let start = (after + 1 - first) as usize;
        let len = (end - after) as usize;
        Some(Chunk {
            after,
            records: (after + 1..=end)
                .zip(self.records.range(start..start + len).cloned())
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

    #[test]
    fn tail_serves_what_it_holds_and_trims() {
        let get = |tail: &Tail, after, upto| tail.get(after, upto).map(|c| c.records);
        let mut tail = Tail::starting_at(1);
        tail.push(1, (1..=5).map(text), 3);
        // Holds 3, 4, 5.
        assert!(tail.get(0, 5).is_none());
        assert!(tail.get(1, 5).is_none());
        let got = get(&tail, 2, 5).unwrap();
        assert_eq!(got, vec![(3, text(3)), (4, text(4)), (5, text(5))]);
        assert_eq!(get(&tail, 3, 4).unwrap(), vec![(4, text(4))]);
        assert!(tail.get(5, 9).is_none());
        // Duplicates are skipped, a gap restarts the tail.
        tail.push(4, (4..=6).map(text), 3);
        assert_eq!(get(&tail, 5, 6).unwrap(), vec![(6, text(6))]);
        tail.push(9, (9..=9).map(text), 3);
        assert!(tail.get(6, 9).is_none());
        assert_eq!(get(&tail, 8, 9).unwrap(), vec![(9, text(9))]);
    }

    #[test]
    fn tail_skips_trimmed_records() {
        let mut tail = Tail::starting_at(1);
        tail.push(1, (1..=6).map(text), 10);
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
        tail.push(7, [text(7)], 10);
        assert_eq!(tail.get(0, 7).unwrap().records, vec![(7, text(7))]);
    }
}
