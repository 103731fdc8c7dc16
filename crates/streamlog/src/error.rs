//! The one error type of the stream log. Each variant says what went wrong in the
//! caller's terms (the stream is gone, the writer was fenced off, the stream already
//! ended) or that the storage failed underneath; [`LogError::is_retryable`] tells the
//! supervisor whether trying again can help.

use crate::id::StreamId;
use crate::record::{FencingToken, StreamState};

/// Errors of every [`crate::StreamLog`] operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// No stream with this id (never created, or purged after its retention).
    #[error("stream {0} not found")]
    NotFound(StreamId),
    /// `create` with an id that already exists.
    #[error("stream {0} already exists")]
    AlreadyExists(StreamId),
    /// The writer's fencing token is not the stream's current lease: another writer took
    /// the stream over, or the lease was released. The writer must stop.
    #[error("stream {id}: fencing token {presented} is stale (current lease: {current:?})")]
    StaleToken {
        /// The stream.
        id: StreamId,
        /// The token the caller presented.
        presented: FencingToken,
        /// The token of the current lease, if any.
        current: Option<FencingToken>,
    },
    /// `acquire_lease` while another holder's lease is still valid.
    #[error("stream {id}: lease held by {holder} until {expires_at_ms}")]
    LeaseHeld {
        /// The stream.
        id: StreamId,
        /// Who holds it.
        holder: String,
        /// When that lease expires (clock milliseconds).
        expires_at_ms: u64,
    },
    /// The stream is in a terminal state; nothing can be appended or leased.
    #[error("stream {id} already ended ({state:?})")]
    AlreadyFinished {
        /// The stream.
        id: StreamId,
        /// Its terminal state.
        state: StreamState,
    },
    /// The caller passed something the operation cannot accept (e.g. `finish` with
    /// `StreamState::Open`, or an empty append).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// A stored record or row could not be decoded: the store is corrupt or was written
    /// by an incompatible version.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The log has shut down (its writer is gone).
    #[error("stream log is closed")]
    Closed,
    /// Another node asked for the stream to be cancelled ([`crate::StreamLog::request_cancel`]):
    /// the append or renewal that reports it did nothing, and the writer should end the
    /// stream as cancelled (its next write goes through).
    #[error("stream {0}: cancel requested")]
    CancelRequested(StreamId),
    /// `create` refused: the store's byte budget is spent by open streams alone (every
    /// ended stream it could evict is gone already). Open streams are never evicted and
    /// their appends never refused, so this clears as they end; the HTTP layer answers
    /// 503. Only a log with a byte budget ([`crate::MemoryLog::with_budget`]) says it.
    #[error("the store's byte budget is spent by open streams")]
    Full,
    /// The storage engine failed (I/O error, disk full, database locked …).
    #[error("storage error: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl LogError {
    /// Whether the same call may succeed if tried again later. Storage failures are
    /// (they are usually transient: busy, I/O hiccup), and so is [`LogError::Full`] (it
    /// clears as open streams end); every other error describes the state of the stream
    /// or the caller's mistake and will not change by retrying.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LogError::Storage(_) | LogError::Full)
    }

    pub(crate) fn storage(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        LogError::Storage(Box::new(e))
    }
}

impl From<rusqlite::Error> for LogError {
    fn from(e: rusqlite::Error) -> Self {
        LogError::storage(e)
    }
}
