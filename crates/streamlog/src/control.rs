//! The rules every backend applies to a stream's control state: who may append, how
//! leases are granted, renewed and released, and how fencing tokens rise. Keeping them
//! in one pure type makes the backends behave identically (the conformance suite checks
//! it) and gives the Redis backend a precise spec for its Lua scripts.

use crate::clock::millis;
use crate::error::LogError;
use crate::id::{Seq, StreamId};
use crate::record::{FencingToken, Lease, StreamState, Trim};

/// The mutable part of a stream's metadata.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Control {
    pub state: StreamState,
    pub last_seq: Seq,
    /// The first stored seq (records `first_seq ..= last_seq` are kept).
    pub first_seq: Seq,
    pub lease: Option<Lease>,
    pub fence: FencingToken,
    pub updated_ms: u64,
}

impl Control {
    /// A fresh open stream.
    pub fn new(now: u64) -> Self {
        Self {
            state: StreamState::Open,
            last_seq: 0,
            first_seq: 1,
            lease: None,
            fence: 0,
            updated_ms: now,
        }
    }

    fn check_open(&self, id: StreamId) -> Result<(), LogError> {
        if self.state.is_terminal() {
            return Err(LogError::AlreadyFinished {
                id,
                state: self.state,
            });
        }
        Ok(())
    }

    /// A write (append, finish, renew, release) is allowed iff the stream is open and
    /// `token` is the token of its current lease. Expiry alone does not fence a writer:
    /// a new grant does (it raises the token), so an expired lease that nobody took over
    /// still works.
    pub fn check_writer(&self, id: StreamId, token: FencingToken) -> Result<(), LogError> {
        self.check_open(id)?;
        match &self.lease {
            Some(lease) if lease.token == token => Ok(()),
            other => Err(LogError::StaleToken {
                id,
                presented: token,
                current: other.as_ref().map(|l| l.token),
            }),
        }
    }

    /// Grant a lease if there is none, the current one has expired, or it is held by
    /// `replaces` (a holder known to be dead: the same node before a restart).
    pub fn acquire(
        &mut self,
        id: StreamId,
        holder: String,
        ttl_ms: u64,
        now: u64,
        replaces: Option<&str>,
    ) -> Result<Lease, LogError> {
        self.check_open(id)?;
        if let Some(lease) = &self.lease
            && lease.expires_at_ms > now
            && replaces != Some(lease.holder.as_str())
        {
            return Err(LogError::LeaseHeld {
                id,
                holder: lease.holder.clone(),
                expires_at_ms: lease.expires_at_ms,
            });
        }
        self.fence += 1;
        let lease = Lease {
            holder,
            token: self.fence,
            expires_at_ms: now.saturating_add(ttl_ms),
        };
        self.lease = Some(lease.clone());
        self.updated_ms = now;
        Ok(lease)
    }

    /// Extend the current lease.
    pub fn renew(
        &mut self,
        id: StreamId,
        token: FencingToken,
        ttl_ms: u64,
        now: u64,
    ) -> Result<Lease, LogError> {
        self.check_writer(id, token)?;
        let lease = self.lease.as_mut().ok_or(LogError::StaleToken {
            id,
            presented: token,
            current: None,
        })?;
        lease.expires_at_ms = now.saturating_add(ttl_ms);
        let lease = lease.clone();
        self.updated_ms = now;
        Ok(lease)
    }

    /// Give the lease up (the fence stays, so the released token stays stale).
    pub fn release(&mut self, id: StreamId, token: FencingToken, now: u64) -> Result<(), LogError> {
        self.check_writer(id, token)?;
        self.lease = None;
        self.updated_ms = now;
        Ok(())
    }

    /// Record an append of `count` records; returns the seq of the first.
    pub fn append(
        &mut self,
        id: StreamId,
        token: FencingToken,
        count: usize,
        now: u64,
    ) -> Result<Seq, LogError> {
        self.check_writer(id, token)?;
        if count == 0 {
            return Err(LogError::InvalidArgument("append of zero records"));
        }
        let first = self.last_seq + 1;
        self.last_seq += count as u64;
        self.updated_ms = now;
        Ok(first)
    }

    /// End the stream; clears the lease.
    pub fn finish(
        &mut self,
        id: StreamId,
        token: FencingToken,
        state: StreamState,
        now: u64,
    ) -> Result<(), LogError> {
        if !state.is_terminal() {
            return Err(LogError::InvalidArgument("finish needs a terminal state"));
        }
        self.check_writer(id, token)?;
        self.state = state;
        self.lease = None;
        self.updated_ms = now;
        Ok(())
    }

    /// The seq through which `trim`'s position and count limits delete (0: none). The
    /// age limit needs the stored append times, so each backend adds it with
    /// [`Control::age_cutoff`].
    pub fn trim_target(&self, trim: &Trim) -> Seq {
        let by_count = trim
            .max_records
            .map_or(0, |max| self.last_seq.saturating_sub(max));
        trim.keep_after.max(by_count)
    }

    /// Records appended strictly before this time (clock ms) are old enough to trim;
    /// `None` if the trim has no age limit.
    pub fn age_cutoff(trim: &Trim, now: u64) -> Option<u64> {
        trim.max_age.map(|age| now.saturating_sub(millis(age)))
    }

    /// Delete the records through `keep_after` (clamped to `last_seq`; the first kept seq
    /// never moves back). Returns the new first kept seq. Needs no lease and changes
    /// neither `last_seq` nor `updated_ms` (which retention of ended streams counts from).
    pub fn trim(&mut self, keep_after: Seq) -> Seq {
        let first = keep_after.min(self.last_seq).saturating_add(1);
        self.first_seq = self.first_seq.max(first);
        self.first_seq
    }

    /// Whether retention has run out: ended at least `ttl_ms` ago.
    pub fn expired(&self, ttl_ms: u64, now: u64) -> bool {
        self.state.is_terminal() && self.updated_ms.saturating_add(ttl_ms) <= now
    }
}
