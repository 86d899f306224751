//! `Upgrade` passed through, as Envoy's `upgrade_configs: websocket` does:
//! websockets (and any other protocol an app and its endpoint agree on)
//! work through the VIP without the proxy knowing the protocol.
//!
//! `Connection` and `Upgrade` are hop-by-hop, so they are stripped from
//! every other request; when the app asks for an upgrade they are sent on.
//! A `101` makes both connections raw byte streams, spliced until either
//! side closes; the upstream connection is never pooled. Any other answer
//! is an ordinary response. The request counts as active (LEAST_REQUEST)
//! until the `101`, like any request until its response head; the
//! upstream connection holds its `maxConnections` slot until the spliced
//! connection closes, as in Envoy, and closes after `tcpIdleTimeout`
//! without a byte either way.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, Response, header};
use hyper::{body::Incoming, upgrade::OnUpgrade};
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::proxy::{
    breakers::Slot,
    limits::{Activity, unless_idle},
};

/// An app's request to switch protocols.
pub(crate) struct Requested {
    protocol: HeaderValue,
    app: OnUpgrade,
}

/// The `Upgrade` value, when `Connection` lists `upgrade` (RFC 9110 §7.8).
/// Not `h2c`: its settings travel in a header only the next hop may read,
/// so, as Envoy does, the request goes on as plain HTTP/1.1.
pub(crate) fn protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let listed = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
    let protocol = headers.get(header::UPGRADE).filter(|_| listed)?;
    let h2c = protocol
        .to_str()
        .is_ok_and(|p| p.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c")));
    (!h2c).then(|| protocol.clone())
}

impl Requested {
    /// The app's upgrade request, if it made one; takes hold of its side of
    /// the connection for after the `101`.
    pub(crate) fn take(req: &mut Request<Incoming>) -> Option<Self> {
        let protocol = protocol(req.headers())?;
        Some(Requested {
            protocol,
            app: hyper::upgrade::on(req),
        })
    }

    /// Puts the upgrade request back on the (stripped) outgoing headers.
    pub(crate) fn ask(&self, headers: &mut HeaderMap) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, self.protocol.clone());
    }

    /// The endpoint switched protocols: the `101` for the app (with the
    /// hop-by-hop headers that make it one), and a task that splices the
    /// two connections once hyper has let go of both.
    /// `slot`: the upstream connection's `maxConnections` slot, held until
    /// the spliced connection closes; `(activity, idle)`: the app
    /// connection's activity and the idle timeout that closes it.
    pub(crate) fn accept(
        self,
        mut resp: Response<Incoming>,
        upgrade: Option<HeaderValue>,
        slot: Option<Slot>,
        (activity, idle): (Activity, Duration),
    ) -> Response<Incoming> {
        let upstream = hyper::upgrade::on(&mut resp);
        let headers = resp.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade.unwrap_or(self.protocol));
        tokio::spawn(async move {
            let _slot = slot;
            // Both ways pass through the app's connection, whose IO
            // reports to `activity`.
            if unless_idle(splice(self.app, upstream), &activity, idle)
                .await
                .is_none()
            {
                debug!(
                    ?idle,
                    "upgraded connection idle for tcpIdleTimeout; closing"
                );
            }
        });
        resp
    }
}

async fn splice(app: OnUpgrade, upstream: OnUpgrade) {
    let (app, upstream) = match tokio::try_join!(app, upstream) {
        Ok(both) => both,
        Err(e) => {
            debug!(error = %e, "upgrade abandoned before both sides switched");
            return;
        }
    };
    let (mut app, mut upstream) = (TokioIo::new(app), TokioIo::new(upstream));
    match tokio::io::copy_bidirectional(&mut app, &mut upstream).await {
        Ok((sent, received)) => debug!(sent, received, "upgraded connection closed"),
        Err(e) => debug!(error = %e, "upgraded connection ended with an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn an_upgrade_needs_both_headers() {
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(protocol(&ws).unwrap(), "websocket");
        assert!(protocol(&headers(&[("upgrade", "websocket")])).is_none());
        assert!(protocol(&headers(&[("connection", "upgrade")])).is_none());
        let split = headers(&[
            ("connection", "keep-alive"),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(protocol(&split).unwrap(), "websocket");
        let h2c = headers(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ]);
        assert!(protocol(&h2c).is_none());
    }
}
