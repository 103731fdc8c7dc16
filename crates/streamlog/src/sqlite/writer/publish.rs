//! After a batch commits: push appended records into the hot tails, publish the new heads
//! to readers, and answer the callers — or, when the batch failed, answer every caller
//! with the error.

use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::watch;

use super::{Done, Reply, Writer, batch_failed, cached};
use crate::cursor::Head;
use crate::error::LogError;
use crate::id::{Seq, StreamId};
use crate::sqlite::reader::{HotEntry, Subscription, Tail};

impl Writer {
    /// After the commit: update the hot tails and heads, then answer the caller.
    pub(super) fn publish(&mut self, done: Done) {
        match done {
            Done::Create(reply, r) => {
                let r = r.map(|(rid, meta)| {
                    self.hot_entry(meta.id, rid);
                    meta
                });
                let _ = reply.send(r);
            }
            Done::CreateLeased(reply, r) => {
                let r = r.map(|(rid, meta, lease)| {
                    self.hot_entry(meta.id, rid);
                    (meta, lease)
                });
                let _ = reply.send(r);
            }
            Done::Append(reply, r) => {
                let r = r.map(|(id, first, records)| {
                    let last = first + records.len() as u64 - 1;
                    let (rid, first_seq) = self
                        .cache
                        .get(&id)
                        .map_or((0, 1), |c| (c.rid, c.control.first_seq));
                    let (capacity, max_bytes) =
                        (self.settings.tail_capacity, self.settings.tail_bytes);
                    let mut hot = self.hot.lock().unwrap_or_else(PoisonError::into_inner);
                    let entry = hot
                        .entry(id)
                        .or_insert_with(|| new_hot(rid, first - 1, first_seq));
                    entry
                        .tail
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(first, records, capacity, max_bytes);
                    entry.head.send_replace(Head {
                        last,
                        terminal: false,
                    });
                    last
                });
                let _ = reply.send(r);
            }
            Done::Finish(reply, r) => {
                let r = r.map(|(id, last)| {
                    self.cache.remove(&id);
                    let removed = self
                        .hot
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&id);
                    if let Some(entry) = removed {
                        entry.head.send_replace(Head {
                            last,
                            terminal: true,
                        });
                    }
                });
                let _ = reply.send(r);
            }
            Done::Lease(reply, r) => {
                let _ = reply.send(r);
            }
            Done::Unit(reply, r) => {
                let _ = reply.send(r);
            }
            Done::Key(reply, r) => {
                let _ = reply.send(r);
            }
            Done::Trim(reply, r) => {
                let r = r.map(|(id, first)| {
                    if let Some(entry) = self
                        .hot
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get(&id)
                    {
                        entry
                            .tail
                            .write()
                            .unwrap_or_else(PoisonError::into_inner)
                            .trim(first);
                    }
                    // Ended streams are not kept cached (see `Finish`).
                    if self
                        .cache
                        .get(&id)
                        .is_some_and(|c| c.control.state.is_terminal())
                    {
                        self.cache.remove(&id);
                    }
                    first
                });
                let _ = reply.send(r);
            }
            Done::Purge(reply, r) => {
                let r = r.map(|ids| {
                    let mut hot = self.hot.lock().unwrap_or_else(PoisonError::into_inner);
                    for id in &ids {
                        hot.remove(id);
                    }
                    ids.len()
                });
                let _ = reply.send(r);
            }
            Done::Subscribe(id, reply) => {
                let _ = reply.send(self.subscribe(id));
            }
        }
    }

    /// A hot entry for a newly created stream.
    fn hot_entry(&self, id: StreamId, rid: i64) {
        self.hot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_insert_with(|| new_hot(rid, 0, 1));
    }

    fn subscribe(&mut self, id: StreamId) -> Result<Subscription, LogError> {
        if let Some(entry) = self
            .hot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
        {
            return Ok(live(entry));
        }
        let c = cached(&mut self.cache, &self.conn, id)?;
        let (rid, last, first_seq, state) = (
            c.rid,
            c.control.last_seq,
            c.control.first_seq,
            c.control.state,
        );
        if state.is_terminal() {
            self.cache.remove(&id);
            return Ok(Subscription::Ended { rid, last });
        }
        let mut hot = self.hot.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = hot
            .entry(id)
            .or_insert_with(|| new_hot(rid, last, first_seq));
        Ok(live(entry))
    }
}

/// A hot entry for an open stream whose last committed seq is `last` and first stored
/// seq `first_seq`.
fn new_hot(rid: i64, last: Seq, first_seq: Seq) -> HotEntry {
    let (head, _) = watch::channel(Head {
        last,
        terminal: false,
    });
    let mut tail = Tail::starting_at(last + 1);
    tail.trim(first_seq);
    HotEntry {
        rid,
        head,
        tail: Arc::new(RwLock::new(tail)),
    }
}

/// A live subscription to a hot entry.
pub(crate) fn live(entry: &HotEntry) -> Subscription {
    Subscription::Live {
        rid: entry.rid,
        head: entry.head.subscribe(),
        tail: Arc::clone(&entry.tail),
    }
}

/// Answer every caller of a batch that did not commit.
pub(super) fn fail(done: Done, e: &LogError) {
    fn answer<T, U>(reply: Reply<T>, r: Result<U, LogError>, e: &LogError) {
        let _ = reply.send(Err(match r {
            Ok(_) => batch_failed(e),
            Err(own) => own,
        }));
    }
    match done {
        Done::Create(reply, r) => answer(reply, r, e),
        Done::CreateLeased(reply, r) => answer(reply, r, e),
        Done::Append(reply, r) => answer(reply, r, e),
        Done::Finish(reply, r) => answer(reply, r, e),
        Done::Lease(reply, r) => answer(reply, r, e),
        Done::Unit(reply, r) => answer(reply, r, e),
        Done::Key(reply, r) => answer(reply, r, e),
        Done::Trim(reply, r) => answer(reply, r, e),
        Done::Purge(reply, r) => answer(reply, r, e),
        Done::Subscribe(_, reply) => {
            let _ = reply.send(Err(batch_failed(e)));
        }
    }
}
