//! The read side of the sqlite backend: the hot tail of open streams, and a small pool
//! of read-only connections for everything older. Live readers fetch from the tail (an
//! `RwLock` read and a clone of the requested records — no disk); a reader behind the
//! tail, or of a stream that has ended, reads a bounded chunk from the database on
//! tokio's blocking pool (`spawn_blocking`, awaited in place, so the task is owned by the
//! reader that waits for it). A semaphore caps concurrent database reads at the number of
//! pooled connections, so many lagging readers queue instead of opening connections.
//! Both the tail and the database only ever hold committed records. A chunk read from
//! the database stops at the cursor's [`ChunkBudget`] (records and bytes), so a reader
//! of large records holds one chunk of bounded size however far behind it is.
//!
//! After a trim, both answer a reader that asks for deleted records with the seq the
//! trim deleted through (the cursor's [`Chunk::after`]) and the records after it: the
//! tail remembers how far its stream was trimmed, and a database read gets `first_seq`
//! in the same statement as the records, so from the same snapshot.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Semaphore, watch};

use crate::LogFuture;
pub(crate) use crate::cursor::Tail;
use crate::cursor::{Chunk, ChunkBudget, FETCH_CHUNK, Fetch, Head};
use crate::error::LogError;
use crate::id::{Seq, StreamId};
use crate::record::Record;
use crate::sqlite::schema::{to_i64, to_u64};

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
/// trimmed ones, as many as a [`ChunkBudget`] admits. One statement, so `first_seq` and the records come from one snapshot;
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
    let mut budget = ChunkBudget::default();
    while let Some(row) = rows.next()? {
        let first: i64 = row.get(0)?;
        chunk.after = after.max(to_u64(first).saturating_sub(1));
        let Some(seq) = row.get::<_, Option<i64>>(1)? else {
            continue;
        };
        let body = row.get_ref(2)?.as_blob().map_err(LogError::storage)?;
        if !budget.admit(body.len()) {
            break;
        }
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
