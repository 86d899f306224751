//! HTTP/1.1 ports: hyper on both sides, so every response status feeds
//! outlier detection and bodies stream through with back-pressure.
//!
//! Every request is balanced on its own, as Envoy does: it goes to the first
//! host of the cluster's current attempt order, over an idle connection
//! from the shared pool or a new one, which goes back to the pool after the
//! answer. So traffic on long-lived app connections follows ejections and
//! returns to the primary region as soon as it is un-ejected.
//!
//! A request is retried on another endpoint when it provably never reached
//! one (connect failure, a pooled connection the server had closed), and,
//! like Istio's default retry policy (two retries on 503, never the same
//! host twice), when it has no body and the answer is 503. A body-less
//! request with an idempotent method whose connection broke before the
//! answer is retried too (a killed endpoint). So the app sees neither the
//! blog's "first call fails" nor a 503 while a healthy endpoint exists.
//! With none left it gets a 503 whose body says why, like Envoy's "no
//! healthy upstream".
//!
//! The service's `connectionPool` applies as in Envoy: a request that needs
//! a new connection while `maxConnections` are open waits for one (holding
//! one of `http1MaxPendingRequests`), and fails at once with a 503 naming
//! the limit when those are taken too; every retry (503, reset, or a
//! connect moving on to the next endpoint) holds one of `maxRetries`, and
//! without one the request is not retried; a connection that has carried
//! `maxRequestsPerConnection` requests asks the endpoint to close it
//! (`Connection: close`) and is not reused.
//!
//! The app should not be able to tell the proxy from the endpoint, and
//! neither side should be able to hurt the other through it:
//! - Bodies are never buffered whole: each frame goes on when the other
//!   side takes it, so a slow reader holds the writer back through TCP.
//! - `Host` and the other end-to-end headers go on as the app sent them;
//!   hop-by-hop ones stop here, except an upgrade's (`upgrade.rs`).
//! - `Expect: 100-continue` is answered here once an endpoint is connected
//!   and the body is about to be read, and not sent on (Envoy's default):
//!   the app's wait ends as soon as the body can flow.
//! - Heads are limited as Envoy limits them (100 headers, 60 KiB): the
//!   app gets hyper's 431, an endpoint's oversized head is its failure.
//! - Ambiguous framing is refused where it can be seen: hyper answers 400
//!   to two different `Content-Length`s or a non-chunked
//!   `Transfer-Encoding`, and a response with both `Content-Length` and
//!   `Transfer-Encoding` is a malformed one. A request with both is read
//!   as chunked, sent on without its `Content-Length`, and its connection
//!   closed after the answer (RFC 9112 §6.3), so nothing smuggled behind
//!   it is ever read. Envoy rejects such a request with 400; hyper drops
//!   the `Content-Length` before the request reaches us, so we cannot.
//! - Whatever an endpoint sends, the app gets a response the proxy can
//!   vouch for or a clean error (`reply.rs`, `watch.rs`).

pub(crate) mod reply;
pub(crate) mod upgrade;
mod watch;

use std::{net::SocketAddrV4, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header, request};
use http_body_util::{BodyExt as _, Either, Empty, Full, Limited};
use hyper::{
    body::{Body as _, Incoming},
    client::conn::http1 as client,
    server::conn::http1 as server,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use reply::{Local, MAX_HEAD_BYTES, ResponseError};
use watch::Watched;

use super::{
    Limits,
    breakers::{Held, Limit, Slot},
    limits::{Activity, unless_idle},
    pool::{Conn, PoolKey},
    route::{Route, Routes, UpBody},
    upstream::{candidates, connect_in_order},
};
use crate::{
    cluster::{Host, HostKey},
    metrics::Retry,
    netns::Namespace,
    outlier::Outcome,
};

/// What the app receives: the upstream's streamed body or one we made.
type Body = Either<Watched, Full<Bytes>>;

/// Istio's default `retries.attempts` (for 503, and here also for resets of
/// idempotent requests).
const RETRIES: usize = 2;
/// Sends of a request that never left (a pooled connection was dead); the
/// resends use fresh connections.
const RESENDS: usize = 3;
/// A 503 body kept to hand back if no other endpoint answers.
const MAX_BUFFERED_503: usize = 64 * 1024;
/// How often a request waiting for a connection looks again, at most (it
/// is also woken when a connection closes or goes back to the pool).
const MAX_WAIT_POLL: Duration = Duration::from_millis(32);

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::UPGRADE,
];

/// Serves one app connection to `orig`. Each request goes by the route
/// the current config has for `orig`, so a reload applies to keep-alive
/// connections from their next request on; `accepted` (the route when the
/// connection came in) serves it if a reload removed the service, until
/// the app closes it.
///
/// A request head must be in within `requestHeadersTimeout` of the accept
/// or of the previous answer (so an idle keep-alive connection closes
/// then too), and the connection closes after `streamIdleTimeout` without
/// a byte either way (`limits.rs`).
pub(crate) async fn serve(
    client: TcpStream,
    routes: Routes,
    orig: SocketAddrV4,
    accepted: Arc<Route>,
    ns: Arc<Namespace>,
    stop: CancellationToken,
    limits: &Limits,
) {
    let activity = Activity::new();
    let io = TokioIo::new(activity.wrap(client));
    let upgraded = (activity.clone(), limits.tcp_idle_timeout);
    let service = service_fn(move |req| {
        let current = routes.read().expect("routes lock").get(&orig).cloned();
        let route = current.unwrap_or_else(|| accepted.clone());
        let ns = ns.clone();
        let upgraded = upgraded.clone();
        async move {
            let resp = forward(req, &route, &ns, upgraded).await;
            route.cluster.stats.request(resp.status().as_u16());
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    // Too many or too large request headers get hyper's 431; the count
    // limit is hyper's default (setting it moves the parse to the heap).
    // hyper's header-read timeout runs only with a timer.
    let mut builder = server::Builder::new();
    builder
        .max_header_size(MAX_HEAD_BYTES)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_headers_timeout);
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let idle = limits.stream_idle_timeout;
    let result = tokio::select! {
        r = conn.as_mut() => Some(r),
        () = stop.cancelled() => {
            // The daemon stops: the request in flight gets its answer
            // (with `Connection: close`), an idle connection closes now.
            conn.as_mut().graceful_shutdown();
            unless_idle(conn, &activity, idle).await
        }
        () = activity.idle_for(idle) => None,
    };
    match result {
        Some(Err(e)) => debug!(error = %e, "app connection ended with an error"),
        None => debug!(
            ?idle,
            "no byte either way on the app connection for streamIdleTimeout; closing"
        ),
        Some(Ok(())) => {}
    }
}

/// `upgraded`: the app connection's activity and the idle timeout of the
/// connection if it switches protocols.
async fn forward(
    mut req: Request<Incoming>,
    route: &Route,
    ns: &Namespace,
    upgraded: (Activity, Duration),
) -> Response<Body> {
    let mut upgrade = upgrade::Requested::take(&mut req);
    strip_hop_by_hop(req.headers_mut());
    // hyper's server answers `100 Continue` itself when the body is first
    // read, i.e. once an endpoint is connected (Envoy's default).
    req.headers_mut().remove(header::EXPECT);
    // Only a request without a body can be sent again after it left.
    let replay: Option<request::Parts> = req.body().is_end_stream().then(|| head_of(&req));
    let mut next: Request<UpBody> = req.map(Either::Left);
    let mut tried: Vec<Arc<HostKey>> = Vec::new();
    let mut fallback: Option<Response<Body>> = None;
    // Why the request is being retried, for the app if nothing else answers.
    let mut retrying_after: Option<String> = None;
    let (mut retries, mut resends) = (RETRIES, RESENDS);
    // Retries in flight under `maxRetries`, held until the answer.
    let mut retry_slots: Vec<Slot> = Vec::new();
    let max_requests = route
        .cluster
        .service
        .policy
        .connection_pool
        .max_requests_per_connection;
    // After a pooled connection turned out dead, connect afresh.
    let mut fresh = false;
    loop {
        let (host, mut conn) = match open(route, ns, &tried, fresh, &mut retry_slots).await {
            Ok(conn) => conn,
            Err(mut local) => {
                if let Some(why) = &retrying_after {
                    local.detail += &format!(" (retried after {why})");
                }
                return fallback.unwrap_or_else(|| local.into_response());
            }
        };
        conn.requests += 1;
        let last = max_requests > 0 && conn.requests >= max_requests;
        // Asked to upgrade, the connection's maxConnections slot is kept
        // here: its task ends at the `101`, the upgraded connection goes on.
        let mut reserved = Reserved {
            held: conn.slot.clone(),
            slot: upgrade.as_ref().and_then(|_| conn.slot.take()),
        };
        if let Some(upgrade) = &upgrade {
            upgrade.ask(next.headers_mut());
        } else if last {
            next.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        } else {
            next.headers_mut().remove(header::CONNECTION);
        }
        // In flight until the response head (LEAST_REQUEST).
        let _active = route.cluster.track(&host);
        let answer = match conn.sender.try_send_request(next).await {
            Ok(resp) => match ResponseError::check_framing(resp.headers()) {
                Err(e) => Err(e),
                Ok(()) if resp.status() == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_none() => {
                    Err(ResponseError::UnaskedUpgrade)
                }
                Ok(()) => Ok(resp),
            },
            Err(mut e) => match e.take_message() {
                None => Err(ResponseError::classify(e.error())),
                Some(unsent) => {
                    debug!(endpoint = %host, error = %e.error(), "upstream connection was not usable; resending");
                    resends -= 1;
                    if resends == 0 {
                        return Local::unavailable(
                            "upstream connections kept closing before the request could be sent",
                        )
                        .into_response();
                    }
                    fresh = true;
                    next = unsent;
                    continue;
                }
            },
        };
        let mut resp = match answer {
            Ok(resp) => resp,
            Err(e @ ResponseError::AppBody(_)) => {
                // The app's fault: the endpoint is not blamed.
                debug!(endpoint = %host, "{e}");
                return Local::new(StatusCode::BAD_REQUEST, e.to_string()).into_response();
            }
            Err(e @ ResponseError::Unsendable(_)) => {
                warn!(endpoint = %host, "{e}");
                return Local::new(StatusCode::BAD_GATEWAY, e.to_string()).into_response();
            }
            Err(e) => {
                // It left and no usable response came back: Envoy's
                // "upstream reset" (protocol errors included), a
                // local-origin failure for outlier detection.
                let error = e.to_string();
                route
                    .cluster
                    .record(&host, Outcome::ConnectFailed, Some(&error));
                // Sending an idempotent request again is safe (RFC 9110
                // §9.2.2); without a body we still have all of it.
                if let Some(head) = replay.as_ref().filter(|h| h.method.is_idempotent())
                    && retries > 0
                    && let Some(slot) = route.breakers.try_take(Limit::Retries)
                {
                    debug!(endpoint = %host, "{error}; retrying on another endpoint");
                    route.cluster.stats.retry(Retry::Reset);
                    retry_slots.push(slot);
                    retries -= 1;
                    tried.push(host.key.clone());
                    retrying_after = Some(format!("{host}: {error}"));
                    next = Request::from_parts(head.clone(), Either::Right(Empty::new()));
                    continue;
                }
                warn!(endpoint = %host, "{error}");
                return Local::new(StatusCode::BAD_GATEWAY, format!("{host}: {error}"))
                    .into_response();
            }
        };
        let status = resp.status();
        route
            .cluster
            .record(&host, Outcome::Status(status.as_u16()), None);
        let protocol = resp.headers().get(header::UPGRADE).cloned();
        strip_hop_by_hop(resp.headers_mut());
        if upgrade.is_none() && !last {
            // Busy until the app has read the body; the pool skips it
            // until then.
            route.pool.checkin(pool_key(ns, &host), conn);
            route.breakers.notify_freed();
        }
        // A last request's connection (or one asked to upgrade) closes
        // after this answer and gives its maxConnections slot back then.
        if status == StatusCode::SWITCHING_PROTOCOLS
            && let Some(upgrade) = upgrade.take()
        {
            debug!(endpoint = %host, "switching protocols");
            return upgrade
                .accept(resp, protocol, reserved.slot.take(), upgraded)
                .map(|body| Either::Left(Watched::new(body, route.cluster.clone(), host)));
        }
        let Some(head) = replay.as_ref().filter(|_| status == 503 && retries > 0) else {
            return resp.map(|body| Either::Left(Watched::new(body, route.cluster.clone(), host)));
        };
        let Some(slot) = route.breakers.try_take(Limit::Retries) else {
            return resp.map(|body| Either::Left(Watched::new(body, route.cluster.clone(), host)));
        };
        retry_slots.push(slot);
        let Some(buffered) = buffer(resp).await else {
            return Local::unavailable(format!(
                "{host} answered 503 and its body could not be read"
            ))
            .into_response();
        };
        debug!(endpoint = %host, "503; retrying on another endpoint");
        route.cluster.stats.retry(Retry::Status503);
        retries -= 1;
        tried.push(host.key);
        fallback = Some(buffered);
        retrying_after = None;
        next = Request::from_parts(head.clone(), Either::Right(Empty::new()));
    }
}

/// The slot of a connection asked to upgrade, given back to the
/// connection unless the upgrade takes it.
struct Reserved {
    held: Held,
    slot: Option<Slot>,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.held.put_back(slot);
        }
    }
}

/// A copy of a request's head, for sending it again.
fn head_of<B>(req: &Request<B>) -> request::Parts {
    let mut copy = Request::new(());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy.into_parts().0
}

/// Reads a (small) response body so the response can be returned later.
async fn buffer(resp: Response<Incoming>) -> Option<Response<Body>> {
    let (parts, body) = resp.into_parts();
    let bytes = Limited::new(body, MAX_BUFFERED_503)
        .collect()
        .await
        .ok()?
        .to_bytes();
    Some(Response::from_parts(parts, Either::Right(Full::new(bytes))))
}

/// An upstream HTTP/1 connection to the first endpoint (not in `exclude`)
/// in attempt order: an idle pooled one if there is (unless `fresh`), else
/// a new one under `maxConnections`, to the next endpoint if that one does
/// not answer (each next one a retry under `maxRetries`).
async fn open(
    route: &Route,
    ns: &Namespace,
    exclude: &[Arc<HostKey>],
    fresh: bool,
    retry_slots: &mut Vec<Slot>,
) -> Result<(Host, Conn<UpBody>), Local> {
    let order = candidates(route, exclude);
    let Some(first) = order.first().cloned() else {
        let service = &route.cluster.service;
        warn!(cluster = %route.cluster.name, "no healthy upstream");
        return Err(Local::unavailable(format!(
            "no healthy upstream for {}:{}",
            service.host, service.port.number
        )));
    };
    if !fresh && let Some(conn) = route.pool.checkout(&pool_key(ns, &first)) {
        route.cluster.record(&first, Outcome::Connected, None);
        return Ok((first, conn));
    }
    let slot = match route.breakers.try_take_quietly(Limit::Connections) {
        Some(slot) => slot,
        None => match wait_for_connection(route, ns, &first, fresh).await? {
            Waited::Pooled(conn) => {
                route.cluster.record(&first, Outcome::Connected, None);
                return Ok((first, conn));
            }
            Waited::Slot(slot) => slot,
        },
    };
    let breakers = &route.breakers;
    let mut refused = false;
    let mut may_retry = || match breakers.try_take(Limit::Retries) {
        Some(slot) => {
            retry_slots.push(slot);
            true
        }
        None => {
            refused = true;
            false
        }
    };
    let connected = connect_in_order(route, ns, order, false, &mut may_retry).await;
    let (host, stream) = connected.map_err(|no| {
        let mut detail = no.to_string();
        if refused {
            detail += &format!(
                "; not tried further: {} retries already in flight ({})",
                breakers.max(Limit::Retries),
                Limit::Retries.field()
            );
        }
        warn!(cluster = %route.cluster.name, "{detail}");
        Local::unavailable(detail)
    })?;
    // A response head over the limits is an error, like a malformed one.
    let handshake = client::Builder::new()
        .max_header_size(MAX_HEAD_BYTES)
        .handshake(TokioIo::new(stream));
    match handshake.await {
        Ok((sender, conn)) => {
            let slot = Held::new(slot);
            let held = slot.clone();
            tokio::spawn(async move {
                // The connection counts toward maxConnections until it ends
                // (or, upgraded, until the upgraded connection closes).
                if let Err(e) = conn.with_upgrades().await {
                    debug!(error = %e, "upstream connection ended with an error");
                }
                held.release();
            });
            Ok((
                host,
                Conn {
                    sender,
                    requests: 0,
                    slot,
                },
            ))
        }
        Err(e) => {
            let error = format!("HTTP/1 handshake: {e}");
            route
                .cluster
                .record(&host, Outcome::ConnectFailed, Some(&error));
            Err(Local::unavailable(error))
        }
    }
}

/// What a request waiting under `maxConnections` got.
enum Waited {
    /// An idle connection to the host it wants.
    Pooled(Conn<UpBody>),
    /// Room for a new connection.
    Slot(Slot),
}

/// Waits, as one of `http1MaxPendingRequests`, for an idle connection to
/// `host` or room for a new one, for at most the connect timeout. Idle
/// connections to other endpoints are closed to make room.
async fn wait_for_connection(
    route: &Route,
    ns: &Namespace,
    host: &Host,
    fresh: bool,
) -> Result<Waited, Local> {
    let breakers = &route.breakers;
    let service = &route.cluster.service;
    let Some(_pending) = breakers.try_take(Limit::Pending) else {
        return Err(Local::overflow(format!(
            "{}:{} has {} connections open ({}) and {} requests already waiting for one ({})",
            service.host,
            service.port.number,
            breakers.max(Limit::Connections),
            Limit::Connections.field(),
            breakers.max(Limit::Pending),
            Limit::Pending.field(),
        )));
    };
    let timeout = service.policy.connection_pool.connect_timeout;
    let deadline = crate::config::deadline(timeout);
    let mut poll = Duration::from_millis(1);
    let key = pool_key(ns, host);
    loop {
        let freed = breakers.freed();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if !fresh && let Some(conn) = route.pool.checkout(&key) {
            return Ok(Waited::Pooled(conn));
        }
        if let Some(slot) = breakers.try_take_quietly(Limit::Connections) {
            return Ok(Waited::Slot(slot));
        }
        // An idle connection elsewhere gives its slot back once closed (one
        // to `host` that turns ready is ours to take, not to close).
        route.pool.evict_one((!fresh).then_some(&key));
        tokio::select! {
            () = &mut freed => {}
            () = tokio::time::sleep(poll) => poll = (poll * 2).min(MAX_WAIT_POLL),
            () = tokio::time::sleep_until(deadline) => {
                breakers.overflowed(Limit::Connections);
                return Err(Local::overflow(format!(
                    "no connection to {}:{} became free within the connect timeout ({timeout:?}); \
                     all {} ({}) are busy",
                    service.host,
                    service.port.number,
                    breakers.max(Limit::Connections),
                    Limit::Connections.field(),
                )));
            }
        }
    }
}

/// The pool's key of connections to `host` made in `ns`.
fn pool_key(ns: &Namespace, host: &Host) -> PoolKey {
    PoolKey {
        ns: ns.id,
        host: host.key.clone(),
    }
}

pub(crate) fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    // Over the bytes, not `to_str`: a value with obs-text (bytes past
    // ASCII) in one token still names the others (found by fuzzing: such
    // a value let every header it named through).
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&listed) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::HOST, HeaderValue::from_static("mydb.com"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h[header::HOST], "mydb.com");
    }

    #[test]
    fn a_connection_value_with_obs_text_still_names_its_other_headers() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"close, \xd7\x87 x, X-Private").unwrap(),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(header::HOST, HeaderValue::from_static("mydb.com"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[header::HOST], "mydb.com");
    }

    #[test]
    fn head_copy_keeps_method_uri_and_headers() {
        let req = Request::post("/x?y=1")
            .header(header::HOST, "mydb.com")
            .body(())
            .unwrap();
        let head = head_of(&req);
        assert_eq!(head.method, http::Method::POST);
        assert_eq!(head.uri, "/x?y=1");
        assert_eq!(head.headers[header::HOST], "mydb.com");
    }
}
