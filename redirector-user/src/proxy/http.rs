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

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header, request};
use http_body_util::{BodyExt as _, Either, Empty, Full, Limited};
use hyper::{
    body::{Body as _, Incoming},
    client::conn::http1 as client,
    server::conn::http1 as server,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::{
    breakers::{Limit, Slot},
    pool::Conn,
    upstream::{Route, candidates, connect_in_order},
};
use crate::{
    cluster::{Host, HostKey},
    outlier::Outcome,
};

/// What the app receives: the upstream's streamed body or one we made.
type Body = Either<Incoming, Full<Bytes>>;
/// What the endpoint receives: the app's streamed body, or none on a retry.
pub type UpBody = Either<Incoming, Empty<Bytes>>;

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

pub async fn serve(client: TcpStream, route: Arc<Route>) {
    let service = service_fn(move |req| {
        let route = route.clone();
        async move { Ok::<_, std::convert::Infallible>(forward(req, &route).await) }
    });
    if let Err(e) = server::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await
    {
        debug!(error = %e, "app connection ended with an error");
    }
}

async fn forward(mut req: Request<Incoming>, route: &Route) -> Response<Body> {
    strip_hop_by_hop(req.headers_mut());
    // Only a request without a body can be sent again after it left.
    let replay: Option<request::Parts> = req.body().is_end_stream().then(|| head_of(&req));
    let mut next: Request<UpBody> = req.map(Either::Left);
    let mut tried: Vec<Arc<HostKey>> = Vec::new();
    let mut fallback: Option<Response<Body>> = None;
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
        let (host, mut conn) = match open(route, &tried, fresh, &mut retry_slots).await {
            Ok(conn) => conn,
            Err(reply) => return fallback.unwrap_or(reply),
        };
        conn.requests += 1;
        let last = max_requests > 0 && conn.requests >= max_requests;
        if last {
            next.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        } else {
            next.headers_mut().remove(header::CONNECTION);
        }
        // In flight until the response head (LEAST_REQUEST).
        let _active = route.cluster.track(&host);
        match conn.sender.try_send_request(next).await {
            Ok(mut resp) => {
                let status = resp.status();
                route
                    .cluster
                    .record(&host, Outcome::Status(status.as_u16()), None);
                strip_hop_by_hop(resp.headers_mut());
                if !last {
                    // Busy until the app has read the body; the pool skips
                    // it until then.
                    route.pool.checkin(host.key.clone(), conn);
                    route.breakers.notify_freed();
                }
                // A last request's connection closes after this answer and
                // gives its maxConnections slot back then.
                let Some(head) = replay.as_ref().filter(|_| status == 503 && retries > 0) else {
                    return resp.map(Either::Left);
                };
                let Some(slot) = route.breakers.try_take(Limit::Retries) else {
                    return resp.map(Either::Left);
                };
                retry_slots.push(slot);
                let Some(buffered) = buffer(resp).await else {
                    return local_reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("{host} answered 503 and its body could not be read"),
                    );
                };
                debug!(endpoint = %host, "503; retrying on another endpoint");
                retries -= 1;
                tried.push(host.key);
                fallback = Some(buffered);
                next = Request::from_parts(head.clone(), Either::Right(Empty::new()));
            }
            Err(mut e) => {
                let Some(unsent) = e.take_message() else {
                    // It left and the connection broke before a response:
                    // Envoy's "upstream reset", a 5xx for outlier detection.
                    let error = format!(
                        "upstream reset before response: {}",
                        crate::tls::explain(e.error()).unwrap_or_else(|| e.error().to_string())
                    );
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
                        retry_slots.push(slot);
                        retries -= 1;
                        tried.push(host.key);
                        next = Request::from_parts(head.clone(), Either::Right(Empty::new()));
                        continue;
                    }
                    return local_reply(StatusCode::BAD_GATEWAY, &format!("{host}: {error}"));
                };
                debug!(endpoint = %host, error = %e.error(), "upstream connection was not usable; resending");
                resends -= 1;
                if resends == 0 {
                    return local_reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "upstream connections kept closing before the request could be sent",
                    );
                }
                fresh = true;
                next = unsent;
            }
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
    exclude: &[Arc<HostKey>],
    fresh: bool,
    retry_slots: &mut Vec<Slot>,
) -> Result<(Host, Conn<UpBody>), Response<Body>> {
    let order = candidates(route, exclude);
    let Some(first) = order.first().cloned() else {
        let service = &route.cluster.service;
        warn!(cluster = %route.cluster.name, "no healthy upstream");
        return Err(local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "no healthy upstream for {}:{}",
                service.host, service.port.number
            ),
        ));
    };
    if !fresh && let Some(conn) = route.pool.checkout(&first.key) {
        route.cluster.record(&first, Outcome::Connected, None);
        return Ok((first, conn));
    }
    let slot = match route.breakers.try_take_quietly(Limit::Connections) {
        Some(slot) => slot,
        None => match wait_for_connection(route, &first, fresh).await? {
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
    let connected = connect_in_order(route, order, false, &mut may_retry).await;
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
        local_reply(StatusCode::SERVICE_UNAVAILABLE, &detail)
    })?;
    match client::handshake(TokioIo::new(stream)).await {
        Ok((sender, conn)) => {
            tokio::spawn(async move {
                // The connection counts toward maxConnections until it ends.
                let _slot = slot;
                if let Err(e) = conn.await {
                    debug!(error = %e, "upstream connection ended with an error");
                }
            });
            Ok((
                host,
                Conn {
                    sender,
                    requests: 0,
                },
            ))
        }
        Err(e) => {
            let error = format!("HTTP/1 handshake: {e}");
            route
                .cluster
                .record(&host, Outcome::ConnectFailed, Some(&error));
            Err(local_reply(StatusCode::SERVICE_UNAVAILABLE, &error))
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
    host: &Host,
    fresh: bool,
) -> Result<Waited, Response<Body>> {
    let breakers = &route.breakers;
    let service = &route.cluster.service;
    let Some(_pending) = breakers.try_take(Limit::Pending) else {
        return Err(overflow_reply(&format!(
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
    let deadline = tokio::time::Instant::now() + timeout;
    let mut poll = Duration::from_millis(1);
    loop {
        let freed = breakers.freed();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if !fresh && let Some(conn) = route.pool.checkout(&host.key) {
            return Ok(Waited::Pooled(conn));
        }
        if let Some(slot) = breakers.try_take_quietly(Limit::Connections) {
            return Ok(Waited::Slot(slot));
        }
        // An idle connection elsewhere gives its slot back once closed (one
        // to `host` that turns ready is ours to take, not to close).
        route.pool.evict_one((!fresh).then_some(&*host.key));
        tokio::select! {
            _ = &mut freed => {}
            _ = tokio::time::sleep(poll) => poll = (poll * 2).min(MAX_WAIT_POLL),
            _ = tokio::time::sleep_until(deadline) => {
                breakers.overflowed(Limit::Connections);
                return Err(overflow_reply(&format!(
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

/// A 503 for a circuit breaker, marked the way Envoy marks its own.
fn overflow_reply(detail: &str) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(format!(
        "upstream overflow (circuit breaker): {detail}\n"
    )))));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    resp
}

fn local_reply(status: StatusCode, detail: &str) -> Response<Body> {
    let what = match status {
        StatusCode::SERVICE_UNAVAILABLE => "no healthy upstream",
        _ => "upstream error",
    };
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(format!(
        "{what}: {detail}\n"
    )))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
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
