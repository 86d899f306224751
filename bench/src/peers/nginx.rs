//! nginx as its users would set up failover to a backup region: one
//! `upstream` per service, the primary with passive health (`max_fails`,
//! `fail_timeout`), the other region as `backup`, `proxy_next_upstream` to
//! retry connect errors and 503s on the next server, pooled keep-alive
//! upstream connections, verified TLS with session reuse.
//!
//! Mapping of the outlier timings, and where nginx differs:
//! - `max_fails = consecutive_5xx`, `fail_timeout = base_ejection` (whole
//!   seconds, rounded up: nginx takes no smaller unit there): nginx
//!   counts failures *within* `fail_timeout` (not consecutive ones), and
//!   once more than `fail_timeout` has passed (on its one-second clock: up to
//!   1 s more) sends one request to the primary again (if it fails,
//!   that request is retried on the backup). `interval` has no
//!   counterpart: there are no active checks in open-source nginx.
//! - With `http_503` in `proxy_next_upstream`, a 503 counts as a failure
//!   and is retried on the backup; the client sees a 503 only when every
//!   try answered 503.
//! - TLS name: one per `location` (`proxy_ssl_name`), not per server, so
//!   both regions are verified against, and sent as SNI, the name nginx
//!   uses by default, `$proxy_host`, which is the upstream block's name:
//!   the service host (`tls.test`). The redirector uses each endpoint's own
//!   name (east.test / west.test).
//! - Defaults kept: `proxy_read_timeout` 60 s, `keepalive_requests` 1000
//!   (client and upstream connections are closed after 1000 requests).

use std::fs;

use anyhow::{Context, Result};

use super::{Launch, PeerConfig, millis, seconds_up};
use crate::tools::Tools;

pub(super) fn launch(tools: &Tools, cfg: &PeerConfig) -> Result<Launch> {
    let conf = cfg.dir.join("nginx.conf");
    let error_log = cfg.dir.join("nginx-error.log");
    fs::write(&conf, config(cfg)).with_context(|| format!("writing {}", conf.display()))?;
    // nginx makes the temp directories, not their parent.
    let temp = cfg.dir.join("nginx-temp");
    fs::create_dir_all(&temp).with_context(|| format!("creating {}", temp.display()))?;
    let mut command = std::process::Command::new(&tools.nginx);
    command
        .arg("-p")
        .arg(&cfg.dir)
        .arg("-c")
        .arg(&conf)
        // Where nginx logs before it has read the config (its compiled-in
        // default is /var/log/nginx/error.log).
        .arg("-e")
        .arg(&error_log);
    Ok(Launch {
        command,
        logs: vec![error_log],
        admin_address_file: None,
    })
}

pub(super) fn config(cfg: &PeerConfig) -> String {
    let dir = cfg.dir.display();
    let listen = cfg.listen;
    let plain = &cfg.plain_host;
    let tls = &cfg.tls_host;
    let max_fails = cfg.outlier.consecutive_5xx;
    let fail_timeout = seconds_up(cfg.outlier.base_ejection);
    let connect_timeout = millis(cfg.connect_timeout);
    let ca = cfg.ca_file.display();
    let (east_plain, west_plain) = (cfg.east_plain, cfg.west_plain);
    let (east_tls, west_tls) = (cfg.east_tls, cfg.west_tls);
    format!(
        r#"# Written by cargo xtask bench (peers/nginx.rs).
daemon off;
master_process on;
worker_processes 1;
pid "{dir}/nginx.pid";
error_log "{dir}/nginx-error.log" warn;
# nginx clears its workers' environment; keep the test bed's owner mark so
# its sweep can find them.
env RDT_OWNER_PID;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path "{dir}/nginx-temp/client_body";
    proxy_temp_path "{dir}/nginx-temp/proxy";
    fastcgi_temp_path "{dir}/nginx-temp/fastcgi";
    uwsgi_temp_path "{dir}/nginx-temp/uwsgi";
    scgi_temp_path "{dir}/nginx-temp/scgi";

    # Upstream keep-alive needs HTTP/1.1 and no "Connection: close".
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_connect_timeout {connect_timeout};
    # Retry connect errors, timeouts and 503s on the next server (the
    # backup), at most 3 tries: the first and 2 retries, like Istio.
    proxy_next_upstream error timeout http_503;
    proxy_next_upstream_tries 3;

    # Named after the service, so $proxy_host (the default Host header,
    # TLS name and SNI) is the service host.
    upstream {plain} {{
        server {east_plain} max_fails={max_fails} fail_timeout={fail_timeout};
        server {west_plain} backup;
        keepalive 32;
    }}
    upstream {tls} {{
        server {east_tls} max_fails={max_fails} fail_timeout={fail_timeout};
        server {west_tls} backup;
        keepalive 32;
    }}

    # Unknown hosts get 404, as in Envoy.
    server {{
        listen {listen} default_server;
        return 404;
    }}
    server {{
        listen {listen};
        server_name {plain};
        location / {{
            proxy_pass http://{plain};
        }}
    }}
    server {{
        listen {listen};
        server_name {tls};
        location / {{
            proxy_pass https://{tls};
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate "{ca}";
            proxy_ssl_server_name on;
            proxy_ssl_name {tls};
            proxy_ssl_session_reuse on;
        }}
    }}
}}
"#
    )
}
