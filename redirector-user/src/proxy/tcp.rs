//! TCP (and TLS/HTTPS passthrough) ports: one upstream connection per app
//! connection, bytes copied both ways as they come.

use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::upstream::{Route, connect_first};

pub async fn serve(mut client: TcpStream, route: &Route) {
    match connect_first(route, true, &[]).await {
        Ok((host, mut upstream)) => {
            let _active = route.cluster.track(&host);
            match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                Ok((up, down)) => {
                    debug!(cluster = %route.cluster.name, endpoint = %host, up, down, "connection closed")
                }
                Err(e) => {
                    debug!(cluster = %route.cluster.name, endpoint = %host, error = %e, "connection ended with an error")
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
pub fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
