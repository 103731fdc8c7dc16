//! The read side of the sqlite backend: the hot tail of open streams, and a small pool
//! of read-only connections for everything older. Live readers fetch from the tail (an
//! `RwLock` read and a clone of the requested records — no disk); a reader behind the
//! tail, or of a stream that has ended, reads a bounded chunk from the database on
//! tokio's blocking pool (`spawn_blocking`, awaited in place, so the task is owned by the
//! reader that waits for it). A semaphore caps concurrent database reads at the number of
//! pooled connections, so many lagging readers queue instead of opening connections.
//! Both the tail and the database only ever hold committed records.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Semaphore, watch};

use crate::LogFuture;
use crate::cursor::{FETCH_CHUNK, Fetch, Head};
use crate::error::LogError;
use crate::id::{Seq, StreamId};
use crate::record::Record;
use crate::sqlite::schema::to_i64;

/// The last records of an open stream, kept in memory for live readers.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    /// The seq the next pushed record must have.
    next: Seq,
    /// Records `next - len .. next`.
    records: VecDeque<Record>,
}

impl Tail {
    /// An empty tail whose next record is `next`.
    pub fn starting_at(next: Seq) -> Self {
        Self {
            next,
            records: VecDeque::new(),
        }
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

    /// Records in `(after, upto]` if the tail holds `after + 1`.
    fn get(&self, after: Seq, upto: Seq) -> Option<Vec<(Seq, Record)>> {
        let first = self.next - self.records.len() as u64;
        if after + 1 < first || after + 1 >= self.next {
            return None;
        }
        let end = upto.min(self.next - 1).min(after + FETCH_CHUNK);
        let start = (after + 1 - first) as usize;
        let len = (end - after) as usize;
        Some(
            (after + 1..=end)
                .zip(self.records.range(start..start + len).cloned())
                .collect(),
        )
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

/// Read committed records `(after, upto]` of stream `rid` from the database.
pub(crate) fn read_range(
    conn: &Connection,
    rid: i64,
    after: Seq,
    upto: Seq,
) -> Result<Vec<(Seq, Record)>, LogError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, body FROM records WHERE rid = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq",
    )?;
    let mut rows = stmt.query(rusqlite::params![rid, to_i64(after), to_i64(upto)])?;
    let mut out = Vec::with_capacity((upto - after).min(FETCH_CHUNK) as usize);
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let body = row.get_ref(1)?.as_blob().map_err(LogError::storage)?;
        let record: Record =
            serde_json::from_slice(body).map_err(|e| LogError::Corrupt(e.to_string()))?;
        out.push((u64::try_from(seq).unwrap_or(0), record));
    }
    Ok(out)
}

/// The [`Fetch`] of one sqlite reader: tail first, database otherwise.
pub(crate) struct SqliteFetch {
    pub rid: i64,
    pub tail: Option<Arc<RwLock<Tail>>>,
    pub pool: Arc<ReadPool>,
}

impl Fetch for SqliteFetch {
    fn fetch(&self, after: Seq, upto: Seq) -> LogFuture<'static, Vec<(Seq, Record)>> {
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
        let mut tail = Tail::starting_at(1);
        tail.push(1, (1..=5).map(text), 3);
        // Holds 3, 4, 5.
        assert!(tail.get(0, 5).is_none());
        assert!(tail.get(1, 5).is_none());
        let got = tail.get(2, 5).unwrap();
        assert_eq!(got, vec![(3, text(3)), (4, text(4)), (5, text(5))]);
        assert_eq!(tail.get(3, 4).unwrap(), vec![(4, text(4))]);
        assert!(tail.get(5, 9).is_none());
        // Duplicates are skipped, a gap restarts the tail.
        tail.push(4, (4..=6).map(text), 3);
        assert_eq!(tail.get(5, 6).unwrap(), vec![(6, text(6))]);
        tail.push(9, (9..=9).map(text), 3);
        assert!(tail.get(6, 9).is_none());
        assert_eq!(tail.get(8, 9).unwrap(), vec![(9, text(9))]);
    }
}
