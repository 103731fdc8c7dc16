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
