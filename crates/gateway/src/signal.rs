//! A stop signal that costs one atomic load to check.
//!
//! Every generation and every reader waits for a stop (cancel, shutdown, hard stop) in
//! the same `select!` as its next token, so the stop future is polled once per token.
//! `tokio_util`'s `CancellationToken` takes a mutex on every poll of its future (and
//! the shutdown tokens are shared by every stream, so those mutexes are contended);
//! profiles of 256 streams showed it as the gateway's top user-space symbol. A
//! [`Signal`]'s future checks a flag, registers with the `Notify` only on its first poll
//! (or when polled by another task), and is woken once when the signal is raised.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

/// A one-way flag: once raised, it stays raised, and every waiter wakes.
#[derive(Debug, Clone, Default)]
pub struct Signal(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    raised: AtomicBool,
    notify: Notify,
}

impl Signal {
    /// A signal not raised yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raise it; every [`Signal::raised`] future completes.
    pub fn raise(&self) {
        self.0.raised.store(true, Ordering::Release);
        self.0.notify.notify_waiters();
    }

    /// Whether it was raised.
    pub fn is_raised(&self) -> bool {
        self.0.raised.load(Ordering::Acquire)
    }

    /// Completes once the signal is raised (at once if it already was).
    pub fn raised(&self) -> Raised {
        Raised {
            notified: Box::pin(Arc::clone(&self.0).wait()),
            inner: Arc::clone(&self.0),
            registered: None,
        }
    }
}

impl Inner {
    async fn wait(self: Arc<Self>) {
        loop {
            let notified = self.notify.notified();
            if self.raised.load(Ordering::Acquire) {
                return;
            }
            notified.await;
            if self.raised.load(Ordering::Acquire) {
                return;
            }
        }
    }
}

/// The future of [`Signal::raised`].
pub struct Raised {
    inner: Arc<Inner>,
    notified: Pin<Box<dyn Future<Output = ()> + Send + Sync>>,
    /// The waker the `Notify` holds, once registered.
    registered: Option<Waker>,
}

impl Future for Raised {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.raised.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            // The Notify already holds this task's waker: nothing to do until woken.
            return Poll::Pending;
        }
        let polled = self.notified.as_mut().poll(cx);
        self.registered = Some(cx.waker().clone());
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn raising_wakes_every_waiter_and_stays_raised() {
        let signal = Signal::new();
        let tasks = tokio_util::task::TaskTracker::new();
        let mut waiters = Vec::new();
        for _ in 0..3 {
            waiters.push(tasks.spawn(signal.raised()));
        }
        // A waiter polled (and registered) before the raise completes too.
        let mut early = Box::pin(signal.raised());
        assert!(futures_util::poll!(early.as_mut()).is_pending());
        assert!(futures_util::poll!(early.as_mut()).is_pending());
        assert!(!signal.is_raised());
        signal.raise();
        assert!(signal.is_raised());
        early.await;
        for waiter in waiters {
            waiter.await.unwrap();
        }
        signal.raised().await;
    }
}
