//! TCP (and TLS/HTTPS passthrough) ports: one upstream connection per app
//! connection, bytes copied both ways as they come. Each holds one of the
//! service's `maxConnections`; over it the app's connection is reset at
//! once, as Envoy's TCP proxy does on `upstream_cx_overflow`. A
//! connection that moves no byte either way for `tcpIdleTimeout` (Envoy's
//! TCP proxy `idle_timeout`, 1 h) is closed: an app or endpoint that
//! stops reading stalls our writes, and that counts as no progress.

use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::{
    breakers::Limit,
    limits::{Activity, unless_idle},
    route::Route,
    upstream::connect_first,
};
use crate::netns::Namespace;

pub(crate) async fn serve(client: TcpStream, route: &Route, ns: &Namespace, idle: Duration) {
    let Some(_slot) = route.breakers.try_take(Limit::Connections) else {
        debug!(cluster = %route.cluster.name, "maxConnections reached; resetting the app's connection");
        return reset(client);
    };
    match connect_first(route, ns, true, &[]).await {
        Ok((host, mut upstream)) => {
            let _active = route.cluster.track(&host);
            // Every byte either way passes through the app's socket.
            let activity = Activity::new();
            let mut client = activity.wrap(client);
            let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
            match unless_idle(copy, &activity, idle).await {
                Some(Ok((up, down))) => {
                    debug!(cluster = %route.cluster.name, endpoint = %host, up, down, "connection closed");
                }
                Some(Err(e)) => {
                    debug!(cluster = %route.cluster.name, endpoint = %host, error = %e, "connection ended with an error");
                }
                None => {
                    debug!(cluster = %route.cluster.name, endpoint = %host, ?idle, "no byte either way for tcpIdleTimeout; closing");
                }
            }
        }
        Err(no) => {
            warn!(cluster = %route.cluster.name, "{no}; resetting the app's connection");
            reset(client);
        }
    }
}

/// Closes with RST, the TCP way of saying "nothing there".
pub(crate) fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
