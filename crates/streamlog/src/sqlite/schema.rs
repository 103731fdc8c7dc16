//! The sqlite schema and row decoding. Streams get an integer `rid` so each record row
//! is keyed by `(rid, seq)` (a `WITHOUT ROWID` table clustered by stream and seq: a
//! replay is one range scan). Records are stored as their JSON (serialised once, by the
//! appending task, not by the writer thread), with their append time (`appended_ms`,
//! for trimming by age). A stream's `first_seq` is the first record still stored (1
//! until a trim deletes records): the records table holds exactly `first_seq ..=
//! last_seq` of it.
//!
//! # Migrations
//!
//! `migrate` brings a file created by an older version up to this schema, in place
//! and in O(1) (`ALTER TABLE … ADD COLUMN` only rewrites the schema, not the rows):
//! `streams.first_seq` is added with default 1 (nothing was trimmed), and
//! `records.appended_ms` with the time of the migration as its default, so records
//! from before it count as appended then — trimming by age deletes them once they are
//! that old, never sooner. New indexes need no step of their own: `SCHEMA` creates them
//! `IF NOT EXISTS` on every open, before `migrate`, so they may only cover columns every
//! version had (`streams_open`, the partial index of open streams by kind and owner
//! behind [`open_streams`] and [`count_open`], is built on the first open of an older
//! file: one pass over `streams`).

use rusqlite::{Connection, OptionalExtension, Row};

use crate::control::Control;
use crate::error::LogError;
use crate::id::StreamId;
use crate::record::{Lease, StreamKind, StreamMeta, StreamState};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS streams (
    rid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    kind INTEGER NOT NULL,
    request BLOB NOT NULL,
    state INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    first_seq INTEGER NOT NULL DEFAULT 1,
    lease_holder TEXT,
    lease_token INTEGER,
    lease_expires_ms INTEGER,
    fence INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS streams_ended ON streams(updated_ms) WHERE state != 0;
CREATE INDEX IF NOT EXISTS streams_leased ON streams(kind)
    WHERE state = 0 AND lease_holder IS NOT NULL;
CREATE INDEX IF NOT EXISTS streams_open ON streams(kind, owner, state) WHERE state = 0;
CREATE TABLE IF NOT EXISTS records (
    rid INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    body BLOB NOT NULL,
    appended_ms INTEGER NOT NULL,
    PRIMARY KEY (rid, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    principal TEXT NOT NULL,
    key TEXT NOT NULL,
    stream TEXT NOT NULL,
    request_hash BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (principal, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_stream ON idempotency(stream);
";

pub(crate) const CONTROL_COLUMNS: &str = "rid, state, last_seq, lease_holder, lease_token, \
     lease_expires_ms, fence, updated_ms, first_seq";

fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool, LogError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// Add what older versions of the schema lack (see the module documentation); `now` is
/// the append time given to records stored before. Idempotent; one transaction.
pub(crate) fn migrate(conn: &Connection, now: u64) -> Result<(), LogError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        if !has_column(conn, "streams", "first_seq")? {
            conn.execute_batch(
                "ALTER TABLE streams ADD COLUMN first_seq INTEGER NOT NULL DEFAULT 1",
            )?;
        }
        if !has_column(conn, "records", "appended_ms")? {
            // The default must be a literal; the number is formatted, never user input.
            conn.execute_batch(&format!(
                "ALTER TABLE records ADD COLUMN appended_ms INTEGER NOT NULL DEFAULT {}",
                to_i64(now)
            ))?;
        }
        conn.execute_batch("COMMIT")?;
        Ok(())
    })();
    if result.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn corrupt(what: &str) -> LogError {
    LogError::Corrupt(format!("invalid {what} in streams table"))
}

/// Decode `CONTROL_COLUMNS` starting at column `at`.
pub(crate) fn control_from_row(row: &Row<'_>, at: usize) -> Result<(i64, Control), LogError> {
    let rid: i64 = row.get(at)?;
    let state = StreamState::from_i64(row.get(at + 1)?).ok_or_else(|| corrupt("state"))?;
    let holder: Option<String> = row.get(at + 3)?;
    let token: Option<i64> = row.get(at + 4)?;
    let expires: Option<i64> = row.get(at + 5)?;
    let lease = match (holder, token, expires) {
        (Some(holder), Some(token), Some(expires)) => Some(Lease {
            holder,
            token: to_u64(token),
            expires_at_ms: to_u64(expires),
        }),
        _ => None,
    };
    Ok((
        rid,
        Control {
            state,
            last_seq: to_u64(row.get(at + 2)?),
            lease,
            fence: to_u64(row.get(at + 6)?),
            updated_ms: to_u64(row.get(at + 7)?),
            first_seq: to_u64(row.get(at + 8)?),
        },
    ))
}

/// Load a stream's rid and control state.
pub(crate) fn load_control(
    conn: &Connection,
    id: StreamId,
) -> Result<Option<(i64, Control)>, LogError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CONTROL_COLUMNS} FROM streams WHERE id = ?1"
    ))?;
    let mut rows = stmt.query([id.to_string()])?;
    let found = match rows.next()? {
        Some(row) => control_from_row(row, 0)?,
        None => return Ok(None),
    };
    drop(rows);
    let (rid, mut control) = found;
    catch_up(conn, rid, &mut control)?;
    Ok(Some((rid, control)))
}

/// Bring an open stream's `last_seq` and `updated_ms` up to its stored records: appends
/// insert records without rewriting the stream's row (that would cost a second page
/// per append in every commit), so for an open stream the row's values are only a
/// lower bound. Every other change (lease, finish, trim) writes the whole row.
fn catch_up(conn: &Connection, rid: i64, control: &mut Control) -> Result<(), LogError> {
    if control.state.is_terminal() {
        return Ok(());
    }
    let last: Option<(i64, i64)> = conn
        .prepare_cached(
            "SELECT seq, appended_ms FROM records WHERE rid = ?1 ORDER BY seq DESC LIMIT 1",
        )?
        .query_row([rid], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if let Some((seq, appended)) = last
        && to_u64(seq) > control.last_seq
    {
        control.last_seq = to_u64(seq);
        control.updated_ms = control.updated_ms.max(to_u64(appended));
    }
    Ok(())
}

/// The columns [`meta_from_row`] decodes: these, then `CONTROL_COLUMNS`.
const META_COLUMNS: &str = "id, owner, kind, request, created_ms";

/// Decode `META_COLUMNS` and `CONTROL_COLUMNS`, and bring an open stream's last seq
/// and update time up to its records.
fn meta_from_row(conn: &Connection, row: &Row<'_>) -> Result<StreamMeta, LogError> {
    let id: String = row.get(0)?;
    let kind: i64 = row.get(2)?;
    let request: Vec<u8> = row.get(3)?;
    let (rid, mut control) = control_from_row(row, 5)?;
    catch_up(conn, rid, &mut control)?;
    Ok(StreamMeta {
        id: id.parse().map_err(|_| corrupt("id"))?,
        owner: row.get(1)?,
        kind: StreamKind::from_i64(kind).ok_or_else(|| corrupt("kind"))?,
        request: request.into(),
        state: control.state,
        created_ms: to_u64(row.get(4)?),
        updated_ms: control.updated_ms,
        last_seq: control.last_seq,
        first_seq: control.first_seq,
        lease: control.lease,
        fence: control.fence,
    })
}

/// Load a stream's full metadata.
pub(crate) fn load_meta(conn: &Connection, id: StreamId) -> Result<StreamMeta, LogError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {META_COLUMNS}, {CONTROL_COLUMNS} FROM streams WHERE id = ?1"
    ))?;
    let mut rows = stmt.query([id.to_string()])?;
    match rows.next()? {
        Some(row) => meta_from_row(conn, row),
        None => Err(LogError::NotFound(id)),
    }
}

/// The metadata of every open stream of `kind` (the idle sweeper's walk, through
/// `streams_open`). Each one's last seq and update time come from its last record, as
/// for [`load_meta`].
pub(crate) fn open_streams(
    conn: &Connection,
    kind: StreamKind,
) -> Result<Vec<StreamMeta>, LogError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {META_COLUMNS}, {CONTROL_COLUMNS} FROM streams WHERE state = 0 AND kind = ?1"
    ))?;
    let mut rows = stmt.query([kind.to_i64()])?;
    let mut open = Vec::new();
    while let Some(row) = rows.next()? {
        open.push(meta_from_row(conn, row)?);
    }
    Ok(open)
}

/// How many open streams of `kind` `owner` owns: a count over `streams_open`, which
/// covers the query (`state` is among its columns for that alone: sqlite does not infer
/// it from the index's condition), so it reads only that owner's entries of the index.
pub(crate) fn count_open(
    conn: &Connection,
    owner: &str,
    kind: StreamKind,
) -> Result<u64, LogError> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM streams WHERE state = 0 AND kind = ?1 AND owner = ?2",
        )?
        .query_row(rusqlite::params![kind.to_i64(), owner], |r| r.get(0))?;
    Ok(to_u64(n))
}

/// The open streams of `kind` that hold a lease, with it (takeover's scan).
pub(crate) fn leased_streams(
    conn: &Connection,
    kind: StreamKind,
) -> Result<Vec<(StreamId, Lease)>, LogError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, lease_holder, lease_token, lease_expires_ms FROM streams
         WHERE kind = ?1 AND state = 0 AND lease_holder IS NOT NULL",
    )?;
    let rows = stmt.query_map([kind.to_i64()], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, i64>(2)?,
            row.get::<_, i64>(3)?,
        ))
    })?;
    let mut leased = Vec::new();
    for row in rows {
        let (id, holder, token, expires) = row?;
        let id = id.parse().map_err(|_| corrupt("id"))?;
        let lease = Lease {
            holder,
            token: to_u64(token),
            expires_at_ms: to_u64(expires),
        };
        leased.push((id, lease));
    }
    Ok(leased)
}

/// Write a stream's control state back.
pub(crate) fn store_control(conn: &Connection, rid: i64, c: &Control) -> Result<(), LogError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE streams SET state = ?2, last_seq = ?3, lease_holder = ?4, lease_token = ?5,
         lease_expires_ms = ?6, fence = ?7, updated_ms = ?8, first_seq = ?9 WHERE rid = ?1",
    )?;
    let lease = c.lease.as_ref();
    stmt.execute(rusqlite::params![
        rid,
        c.state.to_i64(),
        to_i64(c.last_seq),
        lease.map(|l| l.holder.as_str()),
        lease.map(|l| to_i64(l.token)),
        lease.map(|l| to_i64(l.expires_at_ms)),
        to_i64(c.fence),
        to_i64(c.updated_ms),
        to_i64(c.first_seq),
    ])?;
    Ok(())
}
