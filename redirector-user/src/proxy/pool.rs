//! Idle upstream HTTP/1 connections, per endpoint, shared by all requests
//! of a service whatever app connection they came on.
//!
//! Without it every app connection costs an upstream connect (and a TLS
//! handshake when originating TLS), and since the proxy is then the side
//! that closes, every one leaves a TIME_WAIT on an ephemeral port: at a
//! few ten thousand new connections per second the port range runs out and
//! the kernel's port search eats the CPU. Reusing connections fixes both,
//! as nginx's `keepalive` and Envoy's connection pools do.
//!
//! Bounded: at most [`MAX_IDLE_PER_HOST`] idle connections per endpoint,
//! each dropped after [`IDLE_TIMEOUT`] unused (shorter than the 60 s many
//! servers use, so we rarely send into a connection the server is closing;
//! when we do, the request was not sent and is retried on a fresh one).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hyper::client::conn::http1::SendRequest;

use crate::cluster::HostKey;

pub const MAX_IDLE_PER_HOST: usize = 128;
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle connections of one endpoint, oldest first, with when they went idle.
type IdleList<B> = Vec<(Instant, SendRequest<B>)>;

pub struct Pool<B> {
    idle: Mutex<HashMap<Arc<HostKey>, IdleList<B>>>,
}

impl<B> Default for Pool<B> {
    fn default() -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
        }
    }
}

impl<B> Pool<B> {
    /// The most recently used idle connection to `host` that can take a
    /// request now; closed and expired ones are dropped on the way.
    pub fn checkout(&self, host: &HostKey) -> Option<SendRequest<B>> {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.get_mut(host)?;
        let now = Instant::now();
        let mut busy = Vec::new();
        let mut found = None;
        while let Some((since, sender)) = list.pop() {
            if sender.is_closed() || now.duration_since(since) > IDLE_TIMEOUT {
                continue;
            }
            if sender.is_ready() {
                found = Some(sender);
                break;
            }
            // Still finishing its last response; keep it for later.
            busy.push((since, sender));
        }
        list.extend(busy.into_iter().rev());
        found
    }

    /// Returns a connection after use; it is kept only while open and
    /// while the endpoint's idle list has room.
    pub fn checkin(&self, host: Arc<HostKey>, sender: SendRequest<B>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.entry(host).or_default();
        if list.len() < MAX_IDLE_PER_HOST {
            list.push((Instant::now(), sender));
        }
    }
}
