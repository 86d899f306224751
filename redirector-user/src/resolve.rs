//! DNS for endpoint names, refreshed on the answer's TTL.
//!
//! Each name is watched by one task that resolves it, hands the addresses
//! to the clusters using it, and sleeps until the TTL runs out (at least 1 s,
//! at most Istio's 60 s default refresh). A failure or an empty answer keeps
//! the last good addresses: a flaky resolver must not take healthy
//! endpoints away. hickory sits behind [`Resolve`] so tests and later
//! features can swap the lookup. Its sockets carry the proxy's mark
//! (`marked.rs`), so DNS capture never catches the daemon's own lookups.

mod marked;

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use hickory_resolver::{
    Resolver,
    config::{
        ConnectionConfig, LookupIpStrategy, NameServerConfig, ProtocolConfig, ResolverConfig,
    },
};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

const MIN_REFRESH: Duration = Duration::from_secs(1);
const MAX_REFRESH: Duration = Duration::from_secs(60);
const RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ResolveError {
    #[error("reading the system resolver configuration (/etc/resolv.conf): {0}")]
    SystemConfig(String),
    #[error("{name}: {error}")]
    Lookup { name: String, error: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) addrs: Vec<IpAddr>,
    pub(crate) ttl: Duration,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub(crate) trait Resolve: Send + Sync + 'static {
    fn lookup_ip<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Answer, ResolveError>>;
}

pub(crate) struct Hickory(Resolver<marked::MarkedRuntime>);

impl Hickory {
    /// `nameservers` empty: the system's (`/etc/resolv.conf`).
    pub(crate) fn new(nameservers: &[SocketAddr]) -> Result<Self, ResolveError> {
        let provider = marked::MarkedRuntime::default();
        let mut builder = if nameservers.is_empty() {
            Resolver::builder(provider).map_err(|e| ResolveError::SystemConfig(e.to_string()))?
        } else {
            let servers = nameservers
                .iter()
                .map(|ns| {
                    let conn = |protocol| {
                        let mut c = ConnectionConfig::new(protocol);
                        c.port = ns.port();
                        c
                    };
                    NameServerConfig::new(
                        ns.ip(),
                        true,
                        vec![conn(ProtocolConfig::Udp), conn(ProtocolConfig::Tcp)],
                    )
                })
                .collect();
            Resolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        let opts = builder.options_mut();
        // Envoy's V4_PREFERRED (Istio's default for DNS clusters): the A
        // records when there are any, else the AAAA ones. A dual-stack
        // name keeps its IPv4 endpoints (a node with IPv4 only reaches
        // them), and an IPv6-only name still resolves.
        opts.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
        // We schedule refreshes ourselves; keep the cache from serving an
        // answer longer than we would wait anyway.
        opts.positive_max_ttl = Some(MAX_REFRESH);
        opts.negative_max_ttl = Some(MIN_REFRESH);
        let resolver = builder
            .build()
            .map_err(|e| ResolveError::SystemConfig(e.to_string()))?;
        Ok(Self(resolver))
    }
}

impl Resolve for Hickory {
    fn lookup_ip<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Answer, ResolveError>> {
        Box::pin(async move {
            // A trailing dot: endpoint addresses are absolute names, never
            // subject to resolv.conf search domains.
            let fqdn = if name.ends_with('.') {
                name.to_owned()
            } else {
                format!("{name}.")
            };
            let lookup = match self.0.lookup_ip(fqdn).await {
                Ok(lookup) => lookup,
                // NODATA: the name exists with no A records. Reported as an
                // empty answer, which the watcher treats like a failure.
                Err(e) if e.is_no_records_found() && !e.is_nx_domain() => {
                    return Ok(Answer {
                        addrs: Vec::new(),
                        ttl: MIN_REFRESH,
                    });
                }
                Err(e) => {
                    return Err(ResolveError::Lookup {
                        name: name.to_owned(),
                        error: e.to_string(),
                    });
                }
            };
            let ttl = lookup
                .valid_until()
                .saturating_duration_since(std::time::Instant::now());
            let addrs = lookup.iter().collect();
            Ok(Answer { addrs, ttl })
        })
    }
}

/// What one refresh of a name came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refresh {
    /// A non-empty answer that differs from the last one.
    Changed(Vec<IpAddr>),
    /// The same addresses again.
    Unchanged,
    /// A failure or an empty answer; the last good answer stays.
    Failed,
}

/// Resolves `name` now and on every TTL expiry, telling `update` how each
/// refresh went. Runs until aborted.
pub(crate) fn watch(
    resolver: Arc<dyn Resolve>,
    name: String,
    update: impl Fn(Refresh) + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<Vec<IpAddr>> = None;
        let mut retry = RETRY;
        loop {
            let wait = match resolver.lookup_ip(&name).await {
                Ok(answer) if !answer.addrs.is_empty() => {
                    let mut addrs = answer.addrs;
                    addrs.sort_unstable();
                    if last.as_ref() != Some(&addrs) {
                        info!(%name, ?addrs, ttl = ?answer.ttl, "resolved endpoint");
                        update(Refresh::Changed(addrs.clone()));
                        last = Some(addrs);
                    } else {
                        debug!(%name, ttl = ?answer.ttl, "endpoint addresses unchanged");
                        update(Refresh::Unchanged);
                    }
                    retry = RETRY;
                    answer.ttl.clamp(MIN_REFRESH, MAX_REFRESH)
                }
                outcome => {
                    let why = match outcome {
                        Ok(_) => "empty answer (no A records)".to_owned(),
                        Err(e) => e.to_string(),
                    };
                    match &last {
                        Some(addrs) => {
                            warn!(%name, error = %why, kept = ?addrs, "DNS refresh failed; keeping the last good answer");
                        }
                        None => {
                            warn!(%name, error = %why, "DNS lookup failed; endpoint has no address yet");
                        }
                    }
                    update(Refresh::Failed);
                    let wait = retry;
                    retry = (retry * 2).min(MAX_RETRY);
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Answers from a script, one per lookup; the last one repeats.
    struct Scripted(Mutex<Vec<Result<Answer, ResolveError>>>);

    impl Resolve for Scripted {
        fn lookup_ip<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Answer, ResolveError>> {
            let mut script = self.0.lock().unwrap();
            let next = if script.len() > 1 {
                script.remove(0)
            } else {
                match &script[0] {
                    Ok(a) => Ok(a.clone()),
                    Err(_) => Err(ResolveError::Lookup {
                        name: name.into(),
                        error: "SERVFAIL".into(),
                    }),
                }
            };
            Box::pin(async move { next })
        }
    }

    fn ok(addrs: &[[u8; 4]], ttl: u64) -> Result<Answer, ResolveError> {
        Ok(Answer {
            addrs: addrs
                .iter()
                .map(|a| std::net::Ipv4Addr::from(*a).into())
                .collect(),
            ttl: Duration::from_secs(ttl),
        })
    }

    fn fail() -> Result<Answer, ResolveError> {
        Err(ResolveError::Lookup {
            name: "x".into(),
            error: "SERVFAIL".into(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn follows_ttl_and_keeps_last_good_answer() {
        let script = vec![
            ok(&[[10, 0, 0, 2], [10, 0, 0, 1]], 5),
            fail(),
            ok(&[], 5),
            ok(&[[10, 0, 0, 1], [10, 0, 0, 2]], 5),
            ok(&[[10, 0, 0, 3]], 30),
        ];
        let resolver: Arc<dyn Resolve> = Arc::new(Scripted(Mutex::new(script)));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let task = watch(resolver, "db.test".into(), move |r| {
            if let Refresh::Changed(a) = r {
                s.lock().unwrap().push(a);
            }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        let first: Vec<IpAddr> = vec![[10, 0, 0, 1].into(), [10, 0, 0, 2].into()];
        assert_eq!(*seen.lock().unwrap(), vec![first.clone()]);
        // TTL 5 s, then a failure (retry 1 s), then an empty answer (retry
        // 2 s): neither replaces the answer; the same set again is no update.
        tokio::time::sleep(Duration::from_secs(5 + 1 + 2)).await;
        assert_eq!(*seen.lock().unwrap(), vec![first.clone()]);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            *seen.lock().unwrap(),
            vec![first, vec![IpAddr::from([10, 0, 0, 3])]]
        );
        task.abort();
    }
}
