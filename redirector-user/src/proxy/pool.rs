//! Idle upstream HTTP/1 connections, per endpoint and network namespace,
//! shared by all requests of a service from that namespace whatever app
//! connection they came on. A pod's upstream connections are made from its
//! own namespace (its address, its egress policy), so they are never lent
//! to another pod or to the host.
//!
//! Without it every app connection costs an upstream connect (and a TLS
//! handshake when originating TLS), and since the proxy is then the side
//! that closes, every one leaves a TIME_WAIT on an ephemeral port: at a
//! few ten thousand new connections per second the port range runs out and
//! the kernel's port search eats the CPU. Reusing connections fixes both,
//! as nginx's `keepalive` and Envoy's connection pools do.
//!
//! Bounded: at most [`MAX_IDLE_PER_HOST`] idle connections per endpoint,
//! each closed once idle for the service's `connectionPool.http.idleTimeout`
//! (Istio's default: 1 h). A sweeper closes them on time, not only when
//! the next request looks, since an idle connection still holds one of the
//! service's `maxConnections`. When a server closes an idle connection
//! first, the request sent into it was not sent and goes out again on a
//! fresh one.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use hyper::client::conn::http1::SendRequest;
use redirector_common::NsId;

use crate::cluster::HostKey;

/// Which idle list a connection belongs to: the namespace it was made in
/// and the endpoint it goes to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub(crate) ns: NsId,
    pub(crate) host: Arc<HostKey>,
}

pub(crate) const MAX_IDLE_PER_HOST: usize = 128;

/// An upstream connection with how many requests it has carried.
pub(crate) struct Conn<B> {
    pub(crate) sender: SendRequest<B>,
    pub(crate) requests: u32,
    /// Its `maxConnections` slot.
    pub(crate) slot: super::breakers::Held,
}

/// Idle connections of one endpoint, oldest first, with when they went idle.
type IdleList<B> = Vec<(Instant, Conn<B>)>;

pub(crate) struct Pool<B> {
    idle_timeout: Duration,
    idle: Mutex<HashMap<PoolKey, IdleList<B>>>,
    /// Replaced by a reload: takes no connection back.
    retired: AtomicBool,
}

impl<B: Send + 'static> Pool<B> {
    /// A pool, and (inside a tokio runtime) a task that closes expired idle
    /// connections until the pool is dropped.
    pub(crate) fn new(idle_timeout: Duration) -> Arc<Self> {
        let pool = Arc::new(Self {
            idle_timeout,
            idle: Mutex::new(HashMap::new()),
            retired: AtomicBool::new(false),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(Arc::downgrade(&pool)));
        }
        pool
    }
}

async fn sweep<B>(weak: Weak<Pool<B>>) {
    let Some(every) = weak.upgrade().map(|p| sweep_period(p.idle_timeout)) else {
        return;
    };
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match weak.upgrade() {
            Some(pool) => pool.purge(),
            None => return,
        }
    }
}

/// Often enough that a connection outlives its idle timeout by at most a
/// half, rarely enough to cost nothing.
fn sweep_period(idle_timeout: Duration) -> Duration {
    (idle_timeout / 2).clamp(Duration::from_millis(50), Duration::from_secs(30))
}

impl<B> Pool<B> {
    /// The most recently used idle connection to `host` that can take a
    /// request now; closed and expired ones are dropped on the way.
    pub(crate) fn checkout(&self, key: &PoolKey) -> Option<Conn<B>> {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.get_mut(key)?;
        let now = Instant::now();
        let mut busy = Vec::new();
        let mut found = None;
        while let Some((since, conn)) = list.pop() {
            if conn.sender.is_closed() || now.duration_since(since) > self.idle_timeout {
                continue;
            }
            if conn.sender.is_ready() {
                found = Some(conn);
                break;
            }
            // Still finishing its last response; keep it for later.
            busy.push((since, conn));
        }
        list.extend(busy.into_iter().rev());
        found
    }

    /// Returns a connection after use; it is kept only while open and
    /// while the endpoint's idle list has room.
    pub(crate) fn checkin(&self, key: PoolKey, conn: Conn<B>) {
        if conn.sender.is_closed() || self.retired.load(Ordering::Relaxed) {
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_HOST {
            list.push((Instant::now(), conn));
        }
    }

    /// A reload replaces this pool with `to`: the idle connections to hosts
    /// `keep` accepts move there, the others close, and from now on this
    /// pool takes nothing back, so a connection busy with an answer closes
    /// once it is done (an endpoint the reload removed drains that way).
    pub(crate) fn hand_over(&self, to: Option<&Pool<B>>, keep: impl Fn(&HostKey) -> bool) {
        self.retired.store(true, Ordering::SeqCst);
        let idle = std::mem::take(&mut *self.idle.lock().expect("pool lock"));
        let Some(to) = to else { return };
        let mut target = to.idle.lock().expect("pool lock");
        for (key, list) in idle {
            if keep(&key.host) {
                target.entry(key).or_default().extend(list);
            }
        }
    }

    /// Closes the idle connections made in namespace `ns` (it is gone).
    pub(crate) fn forget_namespace(&self, ns: NsId) {
        self.idle
            .lock()
            .expect("pool lock")
            .retain(|key, _| key.ns != ns);
    }

    /// Drops closed and expired idle connections.
    pub(crate) fn purge(&self) {
        let now = Instant::now();
        let mut idle = self.idle.lock().expect("pool lock");
        for list in idle.values_mut() {
            list.retain(|(since, c)| {
                !c.sender.is_closed() && now.duration_since(*since) <= self.idle_timeout
            });
        }
        idle.retain(|_, list| !list.is_empty());
    }

    /// Closes the longest-idle connection that is not busy and not to
    /// `keep`, to make room under `maxConnections` for a new connection.
    /// Returns whether there was one.
    pub(crate) fn evict_one(&self, keep: Option<&PoolKey>) -> bool {
        self.purge();
        let mut idle = self.idle.lock().expect("pool lock");
        let oldest = idle
            .iter()
            .filter(|(key, _)| keep != Some(*key))
            .flat_map(|(key, list)| {
                list.iter()
                    .enumerate()
                    .filter(|(_, (_, c))| c.sender.is_ready())
                    .map(move |(i, (since, _))| (*since, key.clone(), i))
            })
            .min_by_key(|(since, _, _)| *since);
        let Some((_, key, i)) = oldest else {
            return false;
        };
        if let Some(list) = idle.get_mut(&key) {
            list.remove(i);
        }
        true
    }

    #[cfg(test)]
    /// Idle connections held, over all endpoints.
    pub(crate) fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .expect("pool lock")
            .values()
            .map(Vec::len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, net::Ipv4Addr};

    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper_util::rt::TokioIo;

    use super::*;
    use crate::config::EndpointAddress;

    type B = Empty<Bytes>;

    fn key(last: u8) -> PoolKey {
        let ip = Ipv4Addr::new(127, 0, 0, last);
        PoolKey {
            ns: 1,
            host: Arc::new(HostKey {
                address: EndpointAddress::Ip(ip.into()),
                port: 80,
                ip: ip.into(),
            }),
        }
    }

    /// A real HTTP/1 client connection to an in-memory server, ready for a
    /// request.
    async fn conn() -> Conn<B> {
        let (client, server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, Infallible>(hyper::Response::new(Empty::<Bytes>::new()))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), service)
                .await;
        });
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        sender.ready().await.expect("ready");
        Conn {
            sender,
            requests: 0,
            slot: crate::proxy::breakers::Held::default(),
        }
    }

    #[tokio::test]
    async fn a_checked_in_connection_is_handed_out_once() {
        let pool = Pool::<B>::new(Duration::from_secs(60));
        pool.checkin(key(1), conn().await);
        assert_eq!(pool.idle_count(), 1);
        assert!(pool.checkout(&key(2)).is_none(), "another endpoint's");
        assert!(pool.checkout(&key(1)).is_some());
        assert!(pool.checkout(&key(1)).is_none());
    }

    #[tokio::test]
    async fn expired_connections_are_not_handed_out() {
        let pool = Pool::<B>::new(Duration::from_millis(20));
        pool.checkin(key(1), conn().await);
        std::thread::sleep(Duration::from_millis(40));
        assert!(pool.checkout(&key(1)).is_none());
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn the_sweeper_closes_expired_connections_on_time() {
        let pool = Pool::<B>::new(Duration::from_millis(100));
        pool.checkin(key(1), conn().await);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(pool.idle_count(), 1, "not yet expired");
        // Expired at 100 ms, swept every 50 ms.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn eviction_closes_the_longest_idle_connection() {
        let pool = Pool::<B>::new(Duration::from_secs(60));
        assert!(!pool.evict_one(None), "nothing to evict");
        pool.checkin(key(1), conn().await);
        std::thread::sleep(Duration::from_millis(2));
        pool.checkin(key(2), conn().await);
        // The connection to the endpoint a waiting request wants is kept.
        assert!(pool.evict_one(Some(&key(1))));
        assert_eq!(pool.idle_count(), 1);
        assert!(pool.checkout(&key(2)).is_none());
        assert!(!pool.evict_one(Some(&key(1))), "only the kept one is left");
        // Otherwise the longest idle goes first.
        pool.checkin(key(2), conn().await);
        assert!(pool.evict_one(None));
        assert_eq!(pool.idle_count(), 1);
        assert!(pool.checkout(&key(1)).is_none(), "the older one went");
        assert!(pool.checkout(&key(2)).is_some());
    }

    #[tokio::test]
    async fn a_handed_over_pool_keeps_what_is_kept_and_takes_nothing_back() {
        let (old, new) = (
            Pool::<B>::new(Duration::from_secs(60)),
            Pool::<B>::new(Duration::from_secs(60)),
        );
        old.checkin(key(1), conn().await);
        old.checkin(key(2), conn().await);
        let busy = conn().await;
        old.hand_over(Some(&new), |k| *k == *key(1).host);
        assert_eq!((old.idle_count(), new.idle_count()), (0, 1));
        assert!(new.checkout(&key(1)).is_some(), "kept and moved");
        assert!(new.checkout(&key(2)).is_none(), "removed: closed");
        // A connection that was busy during the reload is not taken back.
        old.checkin(key(1), busy);
        assert_eq!(old.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_namespace_never_gets_another_namespaces_connection() {
        let pool = Pool::<B>::new(Duration::from_secs(60));
        pool.checkin(key(1), conn().await);
        let other = PoolKey { ns: 2, ..key(1) };
        assert!(pool.checkout(&other).is_none(), "made in another namespace");
        pool.forget_namespace(1);
        assert!(pool.checkout(&key(1)).is_none(), "the namespace is gone");
    }

    #[test]
    fn sweeps_at_half_the_idle_timeout_within_bounds() {
        assert_eq!(
            sweep_period(Duration::from_secs(3600)),
            Duration::from_secs(30)
        );
        assert_eq!(sweep_period(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(
            sweep_period(Duration::from_millis(10)),
            Duration::from_millis(50)
        );
    }
}
