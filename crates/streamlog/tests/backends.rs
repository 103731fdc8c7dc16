//! Runs the conformance suite against every backend, plus the tests only a durable
//! backend can pass (reopening keeps everything).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[macro_use]
mod conformance;

use std::sync::Arc;

use streamlog::redis::LocalServer;
use streamlog::{
    ManualClock, MemoryLog, RedisConfig, RedisLog, SqliteConfig, SqliteLog, StreamLog,
};

use conformance::{Backend, TTL};

const START_MS: u64 = 1_700_000_000_000;

struct Memory {
    clock: Arc<ManualClock>,
}

impl Backend for Memory {
    fn open(&self) -> Arc<dyn StreamLog> {
        Arc::new(MemoryLog::with_ttl(self.clock.clone(), TTL))
    }
    fn clock(&self) -> &Arc<ManualClock> {
        &self.clock
    }
}

fn memory() -> Memory {
    Memory {
        clock: Arc::new(ManualClock::new(START_MS)),
    }
}

struct Sqlite {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
}

impl Backend for Sqlite {
    fn open(&self) -> Arc<dyn StreamLog> {
        let mut config = SqliteConfig::new(self.dir.path().join("log.db"));
        config.stream_ttl = TTL;
        // A tiny tail, so live readers also exercise the fall-back to the database.
        config.tail_capacity = 16;
        config.max_batch_records = 64;
        Arc::new(SqliteLog::open(config, self.clock.clone()).unwrap())
    }
    fn clock(&self) -> &Arc<ManualClock> {
        &self.clock
    }
}

fn sqlite() -> Sqlite {
    Sqlite {
        dir: tempfile::tempdir().unwrap(),
        clock: Arc::new(ManualClock::new(START_MS)),
    }
}

struct Redis {
    server: LocalServer,
    clock: Arc<ManualClock>,
}

impl Backend for Redis {
    fn open(&self) -> Arc<dyn StreamLog> {
        let mut config = RedisConfig::new(self.server.url.clone());
        config.stream_ttl = TTL;
        config.ca_pem.clone_from(&self.server.ca_pem);
        Arc::new(RedisLog::open(config, self.clock.clone()).unwrap())
    }
    fn clock(&self) -> &Arc<ManualClock> {
        &self.clock
    }
}

/// A Redis of its own per test (a real `redis-server`, no persistence).
fn redis() -> Redis {
    Redis {
        server: LocalServer::start().unwrap(),
        clock: Arc::new(ManualClock::new(START_MS)),
    }
}

mod memory {
    conformance_suite!(super::memory());
}

mod redis {
    conformance_suite!(super::redis());

    /// `rediss://` with a private authority: the same log over TLS.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_tls() {
        let tls = super::Redis {
            server: super::LocalServer::start_tls().unwrap(),
            clock: std::sync::Arc::new(super::ManualClock::new(super::START_MS)),
        };
        assert!(tls.server.url.starts_with("rediss://"));
        crate::conformance::ordering(tls).await;
    }

    /// A Redis written before the index of open streams existed gets it built once, by
    /// the first log that counts or lists open streams.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn indexes_open_streams_written_before_the_index() {
        use streamlog::{StreamKind, StreamState};
        let backend = super::redis();
        let log = crate::conformance::Backend::open(&backend);
        let owned = crate::conformance::owned;
        let (open, _) = owned(&*log, "alice", StreamKind::Session).await;
        let (ended, token) = owned(&*log, "alice", StreamKind::Session).await;
        log.finish(ended, token, StreamState::Finished)
            .await
            .unwrap();
        let count = || log.count_open("alice".into(), StreamKind::Session);
        assert_eq!(count().await.unwrap(), 1);

        // Forget the index (and that it was built), as an older version never wrote it.
        let client = ::redis::Client::open(backend.server.url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg("unbroken:open*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(keys.len(), 3, "{keys:?}");
        ::redis::cmd("DEL")
            .arg(&keys)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();

        let log = crate::conformance::Backend::open(&backend);
        assert_eq!(
            log.count_open("alice".into(), StreamKind::Session)
                .await
                .unwrap(),
            1
        );
        let listed = log.open_streams(StreamKind::Session).await.unwrap();
        assert_eq!(listed, vec![log.status(open).await.unwrap()]);
    }
}

mod sqlite {
    conformance_suite!(super::sqlite());

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopening_keeps_everything() {
        super::reopen::reopening_keeps_everything(super::sqlite()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopening_keeps_trims_and_append_times() {
        super::reopen::reopening_keeps_trims_and_append_times(super::sqlite()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migrates_a_file_of_the_previous_schema() {
        super::reopen::migrates_a_file_of_the_previous_schema(super::sqlite()).await;
    }
}

mod reopen {
    use std::time::Duration;

    use streamlog::{
        IdempotencyEntry, IdempotencyOutcome, LogError, StreamId, StreamKind, StreamState, Trim,
    };

    use crate::conformance::{
        Backend, LEASE, append_range, assert_exact, collect, take, text, writable,
    };

    pub async fn reopening_keeps_everything<B: Backend>(backend: B) {
        let log = backend.open();
        let (done, t1) = writable(&*log).await;
        log.append(done, t1, (1..=50).map(|s| text(1, s)).collect())
            .await
            .unwrap();
        log.finish(done, t1, StreamState::Finished).await.unwrap();
        let (open, t2) = writable(&*log).await;
        log.append(open, t2, (1..=20).map(|s| text(2, s)).collect())
            .await
            .unwrap();
        let entry = IdempotencyEntry {
            stream: open,
            request_hash: vec![4, 2],
        };
        log.insert_idempotency_key("p".into(), "k".into(), entry.clone())
            .await
            .unwrap();
        let before = (
            log.status(done).await.unwrap(),
            log.status(open).await.unwrap(),
        );
        drop(log);

        let log = backend.open();
        assert_eq!(log.status(done).await.unwrap(), before.0);
        assert_eq!(log.status(open).await.unwrap(), before.1);
        // The open stream is listed as it was, its last append time included, and
        // counted.
        assert_eq!(
            log.open_streams(StreamKind::Chat).await.unwrap(),
            vec![before.1.clone()]
        );
        assert_eq!(
            log.count_open("alice".into(), StreamKind::Chat)
                .await
                .unwrap(),
            1
        );
        assert_exact(&collect(log.read(done, 0).await.unwrap()).await, 1, 0, 50);
        let other = IdempotencyEntry {
            stream: StreamId::new(),
            request_hash: vec![],
        };
        assert_eq!(
            log.insert_idempotency_key("p".into(), "k".into(), other)
                .await
                .unwrap(),
            IdempotencyOutcome::Existing(entry)
        );
        // The lease survived; its holder continues the open stream, and a reader that
        // attaches to it before the restart's first append follows it live.
        let err = log
            .acquire_lease(open, "x".into(), LEASE)
            .await
            .unwrap_err();
        assert!(matches!(err, LogError::LeaseHeld { .. }), "{err:?}");
        let reader = log.read(open, 10).await.unwrap();
        assert_eq!(
            log.append(open, t2, (21..=30).map(|s| text(2, s)).collect())
                .await
                .unwrap(),
            30
        );
        // After expiry a takeover gets a greater token than before the restart.
        backend.clock().advance(LEASE + Duration::from_millis(1));
        let taken = log.acquire_lease(open, "x".into(), LEASE).await.unwrap();
        assert!(taken.token > t2);
        log.finish(open, taken.token, StreamState::Finished)
            .await
            .unwrap();
        assert_exact(&collect(reader).await, 2, 10, 30);
    }

    pub async fn reopening_keeps_trims_and_append_times<B: Backend>(backend: B) {
        let log = backend.open();
        let (id, token) = writable(&*log).await;
        append_range(&*log, id, token, 3, 1, 30, 7).await;
        backend.clock().advance(Duration::from_secs(60));
        append_range(&*log, id, token, 3, 31, 40, 7).await;
        let keep_after = |seq| Trim {
            keep_after: seq,
            ..Trim::default()
        };
        assert_eq!(log.trim(id, keep_after(5)).await.unwrap(), 6);
        let before = log.status(id).await.unwrap();
        drop(log);

        let log = backend.open();
        assert_eq!(log.status(id).await.unwrap(), before);
        assert_eq!(before.first_seq, 6);
        assert_exact(&collect_open(&*log, id, 0, 35).await, 3, 5, 40);
        // The append times were stored: records 6..=30 are a minute older than the rest.
        let by_age = Trim {
            max_age: Some(Duration::from_secs(30)),
            ..Trim::default()
        };
        assert_eq!(log.trim(id, by_age).await.unwrap(), 31);
        append_range(&*log, id, token, 3, 41, 41, 1).await;
        assert_eq!(log.status(id).await.unwrap().first_seq, 31);
        log.finish(id, token, StreamState::Finished).await.unwrap();
        drop(log);
        let log = backend.open();
        assert_exact(&collect(log.read(id, 0).await.unwrap()).await, 3, 30, 41);
    }

    /// The next `n` records of an open stream from `after`.
    async fn collect_open(
        log: &dyn streamlog::StreamLog,
        id: StreamId,
        after: u64,
        n: usize,
    ) -> Vec<(u64, streamlog::Record)> {
        let mut reader = log.read(id, after).await.unwrap();
        take(&mut reader, n).await
    }

    pub async fn migrates_a_file_of_the_previous_schema(backend: crate::Sqlite) {
        use crate::OldFile;
        let id = backend.write_old_file(20);
        // Opened an hour after the old records were written.
        backend.clock().advance(Duration::from_secs(3600));
        let log = backend.open();
        let meta = log.status(id).await.unwrap();
        assert_eq!((meta.first_seq, meta.last_seq), (1, 20));
        assert_exact(&collect_open(&*log, id, 0, 20).await, 7, 0, 20);
        // The index of open streams was built on the old file.
        assert_eq!(
            log.count_open("alice".into(), StreamKind::Topic)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            log.open_streams(StreamKind::Topic).await.unwrap(),
            vec![meta]
        );
        // Old records count as appended when the file was migrated: not older than that.
        let by_age = Trim {
            max_age: Some(Duration::from_secs(60)),
            ..Trim::default()
        };
        assert_eq!(log.trim(id, by_age).await.unwrap(), 1);
        // The old writer continues; new records are stored with their own time.
        backend.clock().advance(Duration::from_secs(61));
        append_range(&*log, id, 1, 7, 21, 25, 5).await;
        assert_eq!(log.trim(id, by_age).await.unwrap(), 21);
        drop(log);
        // Migrating again is a no-op.
        let log = backend.open();
        let meta = log.status(id).await.unwrap();
        assert_eq!((meta.first_seq, meta.last_seq), (21, 25));
        assert_exact(&collect_open(&*log, id, 0, 5).await, 7, 20, 25);
    }
}

/// The schema of the first release, before trimming (no `first_seq`, no `appended_ms`).
const OLD_SCHEMA: &str = "
CREATE TABLE streams (
    rid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, owner TEXT NOT NULL,
    kind INTEGER NOT NULL, request BLOB NOT NULL, state INTEGER NOT NULL,
    created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    lease_holder TEXT, lease_token INTEGER, lease_expires_ms INTEGER, fence INTEGER NOT NULL
);
CREATE INDEX streams_ended ON streams(updated_ms) WHERE state != 0;
CREATE TABLE records (
    rid INTEGER NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (rid, seq)
) WITHOUT ROWID;
CREATE TABLE idempotency (
    principal TEXT NOT NULL, key TEXT NOT NULL, stream TEXT NOT NULL,
    request_hash BLOB NOT NULL, created_ms INTEGER NOT NULL, PRIMARY KEY (principal, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_stream ON idempotency(stream);
";

impl Sqlite {
    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("log.db")
    }
}

trait OldFile {
    /// Write a file in the old schema holding one open stream with `records` records
    /// and a lease with token 1; returns its id.
    fn write_old_file(&self, records: u64) -> streamlog::StreamId;
}

impl OldFile for Sqlite {
    fn write_old_file(&self, records: u64) -> streamlog::StreamId {
        let id = streamlog::StreamId::new();
        let conn = rusqlite::Connection::open(self.path()).unwrap();
        conn.execute_batch(OLD_SCHEMA).unwrap();
        conn.execute(
            "INSERT INTO streams (rid, id, owner, kind, request, state, created_ms, updated_ms,
             last_seq, lease_holder, lease_token, lease_expires_ms, fence)
             VALUES (1, ?1, 'alice', 2, x'', 0, 1, 1, ?2, 'w', 1, ?3, 1)",
            rusqlite::params![
                id.to_string(),
                i64::try_from(records).unwrap(),
                i64::try_from(START_MS + 3_600_000).unwrap()
            ],
        )
        .unwrap();
        for seq in 1..=records {
            let body = conformance::text(7, seq).to_json().unwrap();
            conn.execute(
                "INSERT INTO records (rid, seq, body) VALUES (1, ?1, ?2)",
                rusqlite::params![i64::try_from(seq).unwrap(), body],
            )
            .unwrap();
        }
        id
    }
}
