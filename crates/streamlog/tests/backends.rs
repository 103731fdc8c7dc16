//! Runs the conformance suite against every backend, plus the tests only a durable
//! backend can pass (reopening keeps everything).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[macro_use]
mod conformance;

use std::sync::Arc;

use streamlog::{ManualClock, MemoryLog, SqliteConfig, SqliteLog, StreamLog};

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

mod memory {
    conformance_suite!(super::memory());
}

mod sqlite {
    conformance_suite!(super::sqlite());

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopening_keeps_everything() {
        super::reopen::reopening_keeps_everything(super::sqlite()).await;
    }
}

mod reopen {
    use std::time::Duration;

    use streamlog::{IdempotencyEntry, IdempotencyOutcome, LogError, StreamId, StreamState};

    use crate::conformance::{Backend, LEASE, assert_exact, collect, text, writable};

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
}
