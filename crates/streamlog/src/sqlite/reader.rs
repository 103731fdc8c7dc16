//! The read side of the sqlite backend: the hot tail of open streams, and a small pool
//! of read-only connections for everything older. Live readers fetch from the tail (an
//! `RwLock` read and a clone of the requested records — no disk); a reader behind the
//! tail, or of a stream that has ended, reads a bounded chunk from the database on
//! tokio's blocking pool (`spawn_blocking`, awaited in place, so the task is owned by the
//! reader that waits for it). A semaphore caps concurrent database reads at the number of
//! pooled connections, so many lagging readers queue instead of opening connections.
//! Both the tail and the database only ever hold committed records.
//!
//! After a trim, both answer a reader that asks for deleted records with the seq the
//! trim deleted through (the cursor's [`Chunk::after`]) and the records after it: the
//! tail remembers how far its stream was trimmed, and a database read gets `first_seq`
//! in the same statement as the records, so from the same snapshot.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Semaphore, watch};

use crate::LogFuture;
use crate::cursor::{Chunk, FETCH_CHUNK, Fetch, Head};
use crate::error::LogError;
use crate::id::{Seq, StreamId};
use crate::record::Record;
use crate::sqlite::schema::{to_i64, to_u64};

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
    fn get(&self, after: Seq, upto: Seq) -> Option<Chunk> {
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

/// What the writer keeps per open stream: the head it publishes and the tail.
pub(crate) struct HotEntry {
    pub rid: i64,
    pub head: watch::Sender<Head>,
    pub tail: Arc<RwLock<Tail>>,
}

/// Open streams, by id. Only the writer thread inserts, updates and removes entries;
/// readers look entries up.
pub(crate) type HotMap = Mutex<HashMap<StreamId, HotEntry>>;

/// How a reader follows a stream, as handed out by the writer or the hot map.
pub(crate) enum Subscription {
    /// An open stream.
    Live {
        rid: i64,
        head: watch::Receiver<Head>,
        tail: Arc<RwLock<Tail>>,
    },
    /// A stream that has ended with `last` records.
    Ended { rid: i64, last: Seq },
}

/// A bounded pool of read-only connections.
pub(crate) struct ReadPool {
    path: PathBuf,
    conns: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl ReadPool {
    pub fn new(path: PathBuf, size: usize) -> Self {
        Self {
            path,
            conns: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1)),
        }
    }

    fn open(&self) -> Result<Connection, LogError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(conn)
    }

    /// Run `f` on a pooled connection on the blocking pool.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let _permit = self.permits.acquire().await.map_err(|_| LogError::Closed)?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let pooled = pool
                .conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let conn = match pooled {
                Some(conn) => conn,
                None => pool.open()?,
            };
            let out = f(&conn);
            pool.conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
            out
        })
        .await
        .map_err(LogError::storage)?
    }
}

/// Read committed records `(after, upto]` of stream `rid` from the database, skipping
/// trimmed ones. One statement, so `first_seq` and the records come from one snapshot;
/// no row at all means the stream is gone (purged), and the chunk is empty.
pub(crate) fn read_range(
    conn: &Connection,
    rid: i64,
    after: Seq,
    upto: Seq,
) -> Result<Chunk, LogError> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.first_seq, r.seq, r.body FROM streams AS s
         LEFT JOIN records AS r
           ON r.rid = s.rid AND r.seq > max(?2, s.first_seq - 1) AND r.seq <= ?3
         WHERE s.rid = ?1 ORDER BY r.seq",
    )?;
    let mut rows = stmt.query(rusqlite::params![rid, to_i64(after), to_i64(upto)])?;
    let mut chunk = Chunk {
        after,
        records: Vec::with_capacity((upto.saturating_sub(after)).min(FETCH_CHUNK) as usize),
    };
    while let Some(row) = rows.next()? {
        let first: i64 = row.get(0)?;
        chunk.after = after.max(to_u64(first).saturating_sub(1));
        let Some(seq) = row.get::<_, Option<i64>>(1)? else {
            continue;
        };
        let body = row.get_ref(2)?.as_blob().map_err(LogError::storage)?;
        let record: Record =
            serde_json::from_slice(body).map_err(|e| LogError::Corrupt(e.to_string()))?;
        chunk.records.push((to_u64(seq), record));
    }
    Ok(chunk)
}

/// The [`Fetch`] of one sqlite reader: tail first, database otherwise.
pub(crate) struct SqliteFetch {
    pub rid: i64,
    pub tail: Option<Arc<RwLock<Tail>>>,
    pub pool: Arc<ReadPool>,
}

impl Fetch for SqliteFetch {
    fn fetch(&self, after: Seq, upto: Seq) -> LogFuture<'static, Chunk> {
        if let Some(tail) = &self.tail {
            let hit = tail
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(after, upto);
            if let Some(records) = hit {
                return Box::pin(std::future::ready(Ok(records)));
            }
        }
        let pool = Arc::clone(&self.pool);
        let rid = self.rid;
        let upto = upto.min(after + FETCH_CHUNK);
        Box::pin(async move {
            pool.run(move |conn| read_range(conn, rid, after, upto))
                .await
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
