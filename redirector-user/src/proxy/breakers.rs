//! Envoy's circuit breakers for one service: upstream connections
//! (`maxConnections`), requests waiting for one (`http1MaxPendingRequests`)
//! and retries in flight (`maxRetries`).
//!
//! Each limit is a counter taken by an RAII guard, so a slot is given back
//! however the connection, wait or retry ends. Nothing here queues: a
//! caller over a limit is told at once, counts an overflow and fails fast,
//! as Envoy's `upstream_cx_overflow`, `upstream_rq_pending_overflow` and
//! `upstream_rq_retry_overflow` do. Requests that wait for a connection
//! hold a pending slot, so the wait is bounded by `http1MaxPendingRequests`.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};
use tracing::warn;

use crate::config::ConnectionPoolPolicy;

/// Overflow warnings per service at most this often.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// Which limit a caller ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    Connections,
    Pending,
    Retries,
}

impl Limit {
    /// The Istio field.
    pub(crate) fn field(self) -> &'static str {
        match self {
            Limit::Connections => "connectionPool.tcp.maxConnections",
            Limit::Pending => "connectionPool.http.http1MaxPendingRequests",
            Limit::Retries => "connectionPool.http.maxRetries",
        }
    }
}

struct Counter {
    max: u32,
    active: AtomicU32,
    overflows: AtomicU64,
}

impl Counter {
    fn new(max: u32) -> Self {
        Self {
            max,
            active: AtomicU32::new(0),
            overflows: AtomicU64::new(0),
        }
    }

    fn try_take(&self) -> bool {
        self.active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }
}

pub(crate) struct Breakers {
    /// `outbound|80||mydb.com`, for log lines.
    name: String,
    connections: Counter,
    pending: Counter,
    retries: Counter,
    /// A connection closed or went back to the pool: waiters look again.
    freed: Notify,
    started: Instant,
    /// Milliseconds after `started` of the last overflow warning, plus one
    /// (0: none yet).
    last_warn_ms: AtomicU64,
}

impl Breakers {
    pub(crate) fn new(name: &str, policy: &ConnectionPoolPolicy) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            connections: Counter::new(policy.max_connections),
            pending: Counter::new(policy.http1_max_pending_requests),
            retries: Counter::new(policy.max_retries),
            freed: Notify::new(),
            started: Instant::now(),
            last_warn_ms: AtomicU64::new(0),
        })
    }

    fn counter(&self, limit: Limit) -> &Counter {
        match limit {
            Limit::Connections => &self.connections,
            Limit::Pending => &self.pending,
            Limit::Retries => &self.retries,
        }
    }

    /// A slot under `limit`, or `None` (counted and logged) when it is full.
    pub(crate) fn try_take(self: &Arc<Self>, limit: Limit) -> Option<Slot> {
        if self.counter(limit).try_take() {
            Some(Slot {
                breakers: self.clone(),
                limit,
            })
        } else {
            self.overflowed(limit);
            None
        }
    }

    /// Like [`Breakers::try_take`], without counting a refusal: for
    /// callers that will wait and ask again.
    pub(crate) fn try_take_quietly(self: &Arc<Self>, limit: Limit) -> Option<Slot> {
        self.counter(limit).try_take().then(|| Slot {
            breakers: self.clone(),
            limit,
        })
    }

    pub(crate) fn max(&self, limit: Limit) -> u32 {
        self.counter(limit).max
    }

    #[cfg(test)]
    pub(crate) fn active(&self, limit: Limit) -> u32 {
        self.counter(limit).active.load(Ordering::Acquire)
    }

    #[cfg(test)]
    pub(crate) fn overflows(&self, limit: Limit) -> u64 {
        self.counter(limit).overflows.load(Ordering::Relaxed)
    }

    /// Counts an overflow and warns, at most once per [`WARN_EVERY`].
    pub(crate) fn overflowed(&self, limit: Limit) {
        let total = self
            .counter(limit)
            .overflows
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        if due
            && self
                .last_warn_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                cluster = %self.name, limit = limit.field(), max = self.max(limit),
                overflows = total, "circuit breaker overflow"
            );
        }
    }

    /// Wakes requests waiting for a connection, if there are any (most of
    /// the time there are none, and this is one atomic load per request).
    pub(crate) fn notify_freed(&self) {
        if self.pending.active.load(Ordering::SeqCst) > 0 {
            self.freed.notify_waiters();
        }
    }

    /// Completes after the next [`Breakers::notify_freed`]; create (and
    /// `enable`) it before looking, so no wake-up is lost.
    pub(crate) fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }
}

/// One unit of a limit, given back on drop.
pub(crate) struct Slot {
    breakers: Arc<Breakers>,
    limit: Limit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.breakers
            .counter(self.limit)
            .active
            .fetch_sub(1, Ordering::SeqCst);
        if self.limit == Limit::Connections {
            self.breakers.notify_freed();
        }
    }
}

/// An upstream connection's `maxConnections` slot, shared by the task
/// that runs the connection (which gives it back when the connection
/// ends) and the request that asks it to upgrade: hyper ends that task at
/// the `101`, while the upgraded connection lives on and, as in Envoy,
/// still counts until it closes.
#[derive(Clone, Default)]
pub(crate) struct Held(Arc<Mutex<Option<Slot>>>);

impl Held {
    pub(crate) fn new(slot: Slot) -> Self {
        Self(Arc::new(Mutex::new(Some(slot))))
    }

    /// The slot, for whoever takes the connection over.
    pub(crate) fn take(&self) -> Option<Slot> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Back to the connection (no upgrade after all).
    pub(crate) fn put_back(&self, slot: Slot) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(slot);
    }

    /// The connection ended: its slot is free, unless taken over.
    pub(crate) fn release(&self) {
        drop(self.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(connections: u32, pending: u32, retries: u32) -> Arc<Breakers> {
        Breakers::new(
            "test",
            &ConnectionPoolPolicy {
                max_connections: connections,
                http1_max_pending_requests: pending,
                max_retries: retries,
                ..ConnectionPoolPolicy::default()
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn slots_up_to_the_limit_then_overflow() {
        let b = breakers(2, 1, 0);
        let one = b.try_take(Limit::Connections).expect("first");
        let two = b.try_take(Limit::Connections).expect("second");
        assert!(b.try_take(Limit::Connections).is_none());
        assert_eq!(b.overflows(Limit::Connections), 1);
        assert_eq!(b.active(Limit::Connections), 2);
        drop(one);
        assert_eq!(b.active(Limit::Connections), 1);
        let _three = b.try_take(Limit::Connections).expect("a freed slot");
        drop(two);
        // Limits are independent.
        let _p = b.try_take(Limit::Pending).expect("pending");
        assert!(b.try_take(Limit::Pending).is_none());
        assert_eq!(b.overflows(Limit::Pending), 1);
        assert_eq!(b.overflows(Limit::Connections), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_allows_nothing() {
        let b = breakers(1, 1, 0);
        assert!(b.try_take(Limit::Retries).is_none());
        assert_eq!(b.overflows(Limit::Retries), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_refusals_are_not_overflows() {
        let b = breakers(1, 1, 1);
        let _c = b.try_take(Limit::Connections).unwrap();
        assert!(b.try_take_quietly(Limit::Connections).is_none());
        assert_eq!(b.overflows(Limit::Connections), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_connection_wakes_waiters() {
        let b = breakers(1, 1, 1);
        let slot = b.try_take(Limit::Connections).unwrap();
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move {
                // Only waiters holding a pending slot are woken.
                let _pending = b.try_take(Limit::Pending).expect("a pending slot");
                loop {
                    let freed = b.freed();
                    tokio::pin!(freed);
                    freed.as_mut().enable();
                    if let Some(s) = b.try_take_quietly(Limit::Connections) {
                        return s;
                    }
                    freed.await;
                }
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(slot);
        let got = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("no panic");
        assert_eq!(b.active(Limit::Connections), 1);
        drop(got);
    }

    #[tokio::test(start_paused = true)]
    async fn defaults_are_unlimited() {
        let b = Breakers::new("test", &ConnectionPoolPolicy::default());
        let slots: Vec<Slot> = (0..1000)
            .map(|_| b.try_take(Limit::Connections).unwrap())
            .collect();
        assert_eq!(b.active(Limit::Connections), 1000);
        assert_eq!(b.max(Limit::Retries), u32::MAX);
        drop(slots);
    }
}
