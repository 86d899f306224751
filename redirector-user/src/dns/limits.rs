//! What one app can hold of the responder, so that no process, pod or
//! unanswering nameserver starves the node's DNS.
//!
//! Forwarded UDP queries ([`Forwards`]) are counted three ways at once, and
//! a query is forwarded only if all three have room:
//!
//! - the whole node: [`MAX_FORWARDS`] upstream at once, over every
//!   namespace's responders;
//! - per source, a namespace and the app's source address (a pod, or a
//!   process of the node that bound its own address): [`MAX_FORWARDS_PER_SOURCE`];
//! - per nameserver, a namespace and the address asked:
//!   [`MAX_FORWARDS_PER_NAMESERVER`], less than a source's share, so a
//!   process flooding one nameserver leaves room for its neighbours' queries
//!   to another even when they share a source address (the node's
//!   processes all send from 127.0.0.1).
//!
//! A nameserver that has timed out [`DOWN_AFTER`] times in a row, with no
//! answer for a whole [`FORWARD_TIMEOUT`], is remembered as down for
//! [`DOWN_FOR`]: its queries get SERVFAIL at once instead of each holding a
//! slot for the whole timeout. Then one query goes through as a probe (the
//! others still fail fast while it is out); an answer ends it.
//!
//! DNS over TCP ([`TcpConns`]): connections are counted for the node and
//! per source the same way.
//!
//! The clock is passed in, so the logic is tested without waiting.

use std::{
    collections::HashMap,
    hash::Hash,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use redirector_common::NsId;

/// Queries upstream at once, node-wide.
pub(crate) const MAX_FORWARDS: usize = 1024;
/// Queries upstream at once from one source (namespace, address).
pub(crate) const MAX_FORWARDS_PER_SOURCE: usize = 128;
/// Queries upstream at once to one nameserver of a namespace.
pub(crate) const MAX_FORWARDS_PER_NAMESERVER: usize = 64;
/// How long a nameserver has to answer a forwarded query: CoreDNS
/// forward's read timeout, shorter than a stub resolver's own (glibc: 5 s
/// per try), so the app hears SERVFAIL and tries its next nameserver
/// rather than waiting out its timeout.
pub(crate) const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Timeouts in a row (with no answer for a whole timeout) that mark a
/// nameserver down.
pub(crate) const DOWN_AFTER: u32 = 3;
/// How long a nameserver marked down gets SERVFAIL at once.
pub(crate) const DOWN_FOR: Duration = Duration::from_secs(2);
/// Nameservers whose failures are remembered; past this, new ones are not
/// (their queries are still bounded by the counts).
const MAX_REMEMBERED: usize = 4096;
/// How long a remembered nameserver with nothing new is kept.
const REMEMBER_FOR: Duration = Duration::from_secs(30);

/// DNS-over-TCP connections open at once, node-wide.
pub(crate) const MAX_TCP_CONNS: usize = 512;
/// DNS-over-TCP connections open at once from one source.
pub(crate) const MAX_TCP_CONNS_PER_SOURCE: usize = 32;

/// Who sent a query: the namespace and the source address.
pub(crate) type Source = (NsId, IpAddr);
/// Where it goes: the namespace (whose network carries it) and the
/// nameserver.
pub(crate) type Nameserver = (NsId, SocketAddr);

/// Why a query is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// The node, the source or the nameserver has no room: REFUSED, as
    /// CoreDNS's `max_concurrent` answers.
    Busy,
    /// The nameserver is remembered as not answering: SERVFAIL.
    Down,
}

/// How a forwarded query ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The nameserver answered.
    Answered,
    /// No answer within [`FORWARD_TIMEOUT`].
    TimedOut,
    /// A local or network error (say ICMP port unreachable): quick, and
    /// says nothing about a black hole.
    Failed,
}

/// Counts per key, with a cap per key and one for all.
#[derive(Debug)]
struct Counts<K> {
    by_key: HashMap<K, usize>,
    per_key: usize,
}

impl<K: Hash + Eq + Copy> Counts<K> {
    fn new(per_key: usize) -> Self {
        Self {
            by_key: HashMap::new(),
            per_key,
        }
    }

    fn has_room(&self, key: &K) -> bool {
        self.by_key.get(key).copied().unwrap_or(0) < self.per_key
    }

    fn add(&mut self, key: K) {
        *self.by_key.entry(key).or_insert(0) += 1;
    }

    fn remove(&mut self, key: &K) {
        if let Some(n) = self.by_key.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.by_key.remove(key);
            }
        }
    }

    #[cfg(test)]
    fn get(&self, key: &K) -> usize {
        self.by_key.get(key).copied().unwrap_or(0)
    }
}

/// What is remembered of a nameserver that failed.
#[derive(Debug, Clone, Copy)]
struct Health {
    timeouts: u32,
    last_answer: Option<Instant>,
    down_until: Option<Instant>,
    last_event: Instant,
}

#[derive(Debug)]
struct ForwardState {
    total: usize,
    sources: Counts<Source>,
    nameservers: Counts<Nameserver>,
    health: HashMap<Nameserver, Health>,
}

/// The forwarding limits (see the module docs); shared by every responder.
#[derive(Debug)]
pub(crate) struct Forwards {
    max: usize,
    state: Mutex<ForwardState>,
}

impl Default for Forwards {
    fn default() -> Self {
        Self::new(
            MAX_FORWARDS,
            MAX_FORWARDS_PER_SOURCE,
            MAX_FORWARDS_PER_NAMESERVER,
        )
    }
}

impl Forwards {
    pub(crate) fn new(max: usize, per_source: usize, per_nameserver: usize) -> Self {
        Self {
            max,
            state: Mutex::new(ForwardState {
                total: 0,
                sources: Counts::new(per_source),
                nameservers: Counts::new(per_nameserver),
                health: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ForwardState> {
        // The state is counters only, consistent after any panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a query from `source` to `nameserver` at `now`, or why
    /// not. The slot is given back when the permit is dropped; report how
    /// the query ended with [`ForwardPermit::finish`] first.
    pub(crate) fn admit(
        self: &Arc<Self>,
        source: Source,
        nameserver: Nameserver,
        now: Instant,
    ) -> Result<ForwardPermit, Denied> {
        let mut st = self.lock();
        let down_until = st.health.get(&nameserver).and_then(|h| h.down_until);
        if down_until.is_some_and(|until| now < until) {
            return Err(Denied::Down);
        }
        if st.total >= self.max
            || !st.sources.has_room(&source)
            || !st.nameservers.has_room(&nameserver)
        {
            return Err(Denied::Busy);
        }
        if down_until.is_some()
            && let Some(h) = st.health.get_mut(&nameserver)
        {
            // Time for a probe: this query; the others keep failing fast
            // until it is answered or times out.
            h.down_until = Some(now + FORWARD_TIMEOUT);
        }
        st.total += 1;
        st.sources.add(source);
        st.nameservers.add(nameserver);
        Ok(ForwardPermit {
            forwards: Arc::clone(self),
            source,
            nameserver,
        })
    }

    fn release(&self, source: &Source, nameserver: &Nameserver) {
        let mut st = self.lock();
        st.total -= 1;
        st.sources.remove(source);
        st.nameservers.remove(nameserver);
    }

    fn record(&self, nameserver: Nameserver, outcome: Outcome, now: Instant) {
        let mut st = self.lock();
        match outcome {
            Outcome::Answered => {
                // Only nameservers that failed are remembered.
                if let Some(h) = st.health.get_mut(&nameserver) {
                    h.timeouts = 0;
                    h.last_answer = Some(now);
                    h.down_until = None;
                    h.last_event = now;
                }
            }
            Outcome::TimedOut => {
                if !st.health.contains_key(&nameserver) && st.health.len() >= MAX_REMEMBERED {
                    st.health.retain(|_, h| {
                        h.down_until.is_some_and(|d| d > now)
                            || now.duration_since(h.last_event) < REMEMBER_FOR
                    });
                    if st.health.len() >= MAX_REMEMBERED {
                        return;
                    }
                }
                let h = st.health.entry(nameserver).or_insert(Health {
                    timeouts: 0,
                    last_answer: None,
                    down_until: None,
                    last_event: now,
                });
                h.timeouts = h.timeouts.saturating_add(1);
                h.last_event = now;
                // A nameserver that answers anything (other names, other
                // apps) is up: a name it is slow on is not its fault.
                let silent = h
                    .last_answer
                    .is_none_or(|t| now.duration_since(t) >= FORWARD_TIMEOUT);
                if h.timeouts >= DOWN_AFTER && silent {
                    h.down_until = Some(now + DOWN_FOR);
                }
            }
            Outcome::Failed => {}
        }
    }

    /// Queries upstream now (for tests and the log).
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.lock().total
    }
}

/// One forwarded query's slot.
#[derive(Debug)]
pub(crate) struct ForwardPermit {
    forwards: Arc<Forwards>,
    source: Source,
    nameserver: Nameserver,
}

impl ForwardPermit {
    /// Reports how the query ended (at `now`), and gives the slot back.
    pub(crate) fn finish(self, outcome: Outcome, now: Instant) {
        self.forwards.record(self.nameserver, outcome, now);
    }
}

impl Drop for ForwardPermit {
    fn drop(&mut self) {
        self.forwards.release(&self.source, &self.nameserver);
    }
}

#[derive(Debug)]
struct TcpState {
    total: usize,
    sources: Counts<Source>,
}

/// The DNS-over-TCP connection limits; shared by every responder.
#[derive(Debug)]
pub(crate) struct TcpConns {
    max: usize,
    state: Mutex<TcpState>,
}

impl Default for TcpConns {
    fn default() -> Self {
        Self::new(MAX_TCP_CONNS, MAX_TCP_CONNS_PER_SOURCE)
    }
}

impl TcpConns {
    pub(crate) fn new(max: usize, per_source: usize) -> Self {
        Self {
            max,
            state: Mutex::new(TcpState {
                total: 0,
                sources: Counts::new(per_source),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TcpState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Room for one more connection from `source`, held until the permit
    /// is dropped; `None` when the node or the source is at its cap.
    pub(crate) fn admit(self: &Arc<Self>, source: Source) -> Option<TcpPermit> {
        let mut st = self.lock();
        if st.total >= self.max || !st.sources.has_room(&source) {
            return None;
        }
        st.total += 1;
        st.sources.add(source);
        Some(TcpPermit {
            conns: Arc::clone(self),
            source,
        })
    }
}

/// One DNS-over-TCP connection's place.
#[derive(Debug)]
pub(crate) struct TcpPermit {
    conns: Arc<TcpConns>,
    source: Source,
}

impl Drop for TcpPermit {
    fn drop(&mut self) {
        let mut st = self.conns.lock();
        st.total -= 1;
        st.sources.remove(&self.source);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn src(ns: NsId, last: u8) -> Source {
        (ns, IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
    }

    fn ns(id: NsId, last: u8) -> Nameserver {
        (id, SocketAddr::from((Ipv4Addr::new(10, 0, 0, last), 53)))
    }

    #[test]
    fn one_source_cannot_take_more_than_its_share() {
        let f = Arc::new(Forwards::new(10, 4, 3));
        let now = Instant::now();
        let mut held = Vec::new();
        // Source 1 spreads over nameservers: stopped at its own cap.
        for i in 0..10 {
            match f.admit(src(1, 1), ns(1, i), now) {
                Ok(p) => held.push(p),
                Err(e) => assert_eq!(e, Denied::Busy),
            }
        }
        assert_eq!(held.len(), 4);
        // Others still get the rest, each up to its share, until the node's
        // cap.
        for s in 2..=4 {
            for i in 0..4 {
                if let Ok(p) = f.admit(src(1, s), ns(1, 10 + i), now) {
                    held.push(p);
                }
            }
        }
        assert_eq!(held.len(), 10, "the node's cap is reached");
        assert_eq!(f.in_flight(), 10);
        assert_eq!(
            f.admit(src(2, 9), ns(2, 1), now).unwrap_err(),
            Denied::Busy,
            "the node is full"
        );
        // A finished query gives its slot back, to whoever asks next.
        held.pop().expect("a permit").finish(Outcome::Answered, now);
        assert_eq!(f.in_flight(), 9);
        held.push(f.admit(src(2, 9), ns(2, 1), now).expect("room again"));
        drop(held);
        assert_eq!(f.in_flight(), 0);
        let st = f.lock();
        assert!(st.sources.by_key.is_empty() && st.nameservers.by_key.is_empty());
    }

    #[test]
    fn one_nameserver_cannot_take_a_whole_sources_share() {
        let f = Arc::new(Forwards::new(100, 8, 5));
        let now = Instant::now();
        let flood: Vec<_> = (0..20)
            .filter_map(|_| f.admit(src(1, 1), ns(1, 66), now).ok())
            .collect();
        assert_eq!(flood.len(), 5, "the black hole's cap");
        // The same source (processes of the node share 127.0.0.1) still
        // reaches its other nameserver.
        let other: Vec<_> = (0..3)
            .map(|_| f.admit(src(1, 1), ns(1, 1), now).expect("room"))
            .collect();
        assert_eq!(f.lock().sources.get(&src(1, 1)), 8);
        // The same nameserver address in another namespace is another
        // nameserver.
        assert!(f.admit(src(2, 1), ns(2, 66), now).is_ok());
        drop((flood, other));
    }

    #[test]
    fn a_silent_nameserver_fails_fast_then_is_probed() {
        let f = Arc::new(Forwards::new(100, 100, 100));
        let t0 = Instant::now();
        let hole = ns(1, 66);
        for _ in 0..DOWN_AFTER {
            let p = f.admit(src(1, 1), hole, t0).expect("not down yet");
            p.finish(Outcome::TimedOut, t0 + FORWARD_TIMEOUT);
        }
        let t1 = t0 + FORWARD_TIMEOUT;
        assert_eq!(f.admit(src(1, 1), hole, t1).unwrap_err(), Denied::Down);
        assert_eq!(
            f.admit(src(2, 1), hole, t1 + DOWN_FOR / 2).unwrap_err(),
            Denied::Down,
            "for every source"
        );
        assert!(
            f.admit(src(1, 1), ns(1, 1), t1).is_ok(),
            "other nameservers are not affected"
        );
        // After DOWN_FOR, one probe; the others still fail fast meanwhile.
        let t2 = t1 + DOWN_FOR;
        let probe = f.admit(src(1, 1), hole, t2).expect("a probe");
        assert_eq!(f.admit(src(1, 1), hole, t2).unwrap_err(), Denied::Down);
        // The probe times out: down again.
        probe.finish(Outcome::TimedOut, t2 + FORWARD_TIMEOUT);
        let t3 = t2 + FORWARD_TIMEOUT;
        assert_eq!(f.admit(src(1, 1), hole, t3).unwrap_err(), Denied::Down);
        // The next probe is answered: up, for everyone.
        let t4 = t3 + DOWN_FOR;
        f.admit(src(1, 1), hole, t4)
            .expect("a probe")
            .finish(Outcome::Answered, t4);
        let many: Vec<_> = (0..10)
            .map(|_| f.admit(src(1, 1), hole, t4).expect("up again"))
            .collect();
        drop(many);
    }

    #[test]
    fn a_nameserver_that_answers_others_is_not_marked_down() {
        // Timeouts for one slow name while the nameserver answers others.
        let f = Arc::new(Forwards::new(100, 100, 100));
        let t0 = Instant::now();
        let dns = ns(1, 10);
        // A first timeout makes it remembered; then an answer.
        f.admit(src(1, 1), dns, t0)
            .unwrap()
            .finish(Outcome::TimedOut, t0);
        f.admit(src(1, 1), dns, t0)
            .unwrap()
            .finish(Outcome::Answered, t0);
        let t1 = t0 + FORWARD_TIMEOUT / 2;
        for _ in 0..10 {
            f.admit(src(1, 1), dns, t1)
                .expect("still up")
                .finish(Outcome::TimedOut, t1);
        }
        assert!(f.admit(src(1, 1), dns, t1).is_ok());
        // Errors (ICMP) never mark it down: they do not hold slots.
        let other = ns(1, 11);
        for _ in 0..10 {
            f.admit(src(1, 1), other, t1)
                .expect("up")
                .finish(Outcome::Failed, t1);
        }
        assert!(f.admit(src(1, 1), other, t1).is_ok());
    }

    #[test]
    fn remembered_nameservers_are_bounded() {
        let f = Arc::new(Forwards::new(10, 10, 10));
        let t0 = Instant::now();
        let mut all = 0u32;
        for a in 0..=255u8 {
            for b in 0..20u8 {
                let hole = (1, SocketAddr::from((Ipv4Addr::new(10, 1, a, b), 53)));
                f.admit(src(1, 1), hole, t0)
                    .unwrap()
                    .finish(Outcome::TimedOut, t0);
                all += 1;
            }
        }
        assert!(all as usize > MAX_REMEMBERED);
        assert_eq!(f.lock().health.len(), MAX_REMEMBERED);
        // Old entries make room for new ones.
        let later = t0 + REMEMBER_FOR;
        let hole = (1, SocketAddr::from((Ipv4Addr::new(10, 2, 0, 1), 53)));
        f.admit(src(1, 1), hole, later)
            .unwrap()
            .finish(Outcome::TimedOut, later);
        let st = f.lock();
        assert_eq!(st.health.len(), 1);
        assert!(st.health.contains_key(&hole));
    }

    #[test]
    fn tcp_connections_are_capped_per_source_and_for_the_node() {
        let c = Arc::new(TcpConns::new(5, 2));
        let a: Vec<_> = (0..4).filter_map(|_| c.admit(src(1, 1))).collect();
        assert_eq!(a.len(), 2);
        let b: Vec<_> = (0..4).filter_map(|_| c.admit(src(2, 1))).collect();
        assert_eq!(b.len(), 2, "another namespace, the same address");
        let fifth = c.admit(src(1, 2)).expect("room");
        assert!(c.admit(src(1, 3)).is_none(), "the node's cap");
        drop(a);
        let again = c.admit(src(1, 1)).expect("room");
        let sixth = c.admit(src(1, 3)).expect("room");
        assert!(c.admit(src(1, 4)).is_none());
        drop((b, fifth, again, sixth));
        assert_eq!(c.lock().total, 0);
        assert!(c.lock().sources.by_key.is_empty());
    }
}
