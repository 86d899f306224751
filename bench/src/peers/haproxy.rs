//! HAProxy as its users would set up failover to a backup region: a
//! backend per service, the primary health-checked and also marked down by
//! observing live traffic (`observe layer7 … on-error mark-down`), the other
//! region as `backup`, L7 retries (`retry-on`) with redispatch, connection
//! reuse, verified TLS with session reuse (HAProxy's default).
//!
//! Mapping of the outlier timings, and where HAProxy differs:
//! - `error-limit = consecutive_5xx` consecutive errors (5xx other than 501
//!   and 505, and connection errors) mark the primary down at once; it
//!   comes back at its next passing health check (`rise 1`): the one
//!   forced `fastinter` = `base_ejection` after the mark-down, or the
//!   periodic one (every `interval`) if that comes first. So an ejection
//!   lasts min(base_ejection, time to the next periodic check), without
//!   Envoy's growing multiplier. While down, checks run every `downinter` =
//!   `base_ejection`. The checks are TCP (TLS for the TLS service)
//!   connects: a primary answering 503 passes them, so, as in Envoy, it is
//!   tried again after each ejection.
//! - A response that is retried is not fed to `observe`; only the last
//!   try's is. And a backup server is chosen only when no primary is up, so
//!   all tries of a request go to an up primary: the request that meets a
//!   503-answering primary gets 503 (its third try marks the primary down),
//!   later ones the backup; one 503 reaches a client per ejection. A
//!   refused connect does mark the primary down at once, and its retry
//!   goes to the backup after HAProxy's turn-around delay (min(timeout
//!   connect, 1 s)): no error, one slow request.
//! - TLS: per server, so each region is verified against, and sent as SNI,
//!   its own name (east.test / west.test), like the redirector. HAProxy
//!   checks the certificate against the SNI when `verify required`.
//! - Timeouts: `timeout connect` is the connect timeout; client and server
//!   timeouts are the 50 s of Debian's packaged haproxy.cfg (HAProxy has no
//!   built-in default and warns without them), so `retry-on
//!   response-timeout` only fires after 50 s.

use std::fs;

use anyhow::{Context, Result};

use super::{Launch, PeerConfig, millis};
use crate::tools::Tools;

pub(super) fn launch(tools: &Tools, cfg: &PeerConfig) -> Result<Launch> {
    let conf = cfg.dir.join("haproxy.cfg");
    fs::write(&conf, config(cfg)).with_context(|| format!("writing {}", conf.display()))?;
    let mut command = std::process::Command::new(&tools.haproxy);
    // -db: foreground, no daemon; alerts and warnings go to stderr (the
    // peer's .out file).
    command.arg("-db").arg("-f").arg(&conf);
    Ok(Launch {
        command,
        logs: Vec::new(),
        admin_address_file: None,
    })
}

pub(super) fn config(cfg: &PeerConfig) -> String {
    let listen = cfg.listen;
    let plain = &cfg.plain_host;
    let tls = &cfg.tls_host;
    let connect_timeout = millis(cfg.connect_timeout);
    let inter = millis(cfg.outlier.interval);
    let ejection = millis(cfg.outlier.base_ejection);
    let errors = cfg.outlier.consecutive_5xx;
    let ca = cfg.ca_file.display();
    let (east_plain, west_plain) = (cfg.east_plain, cfg.west_plain);
    let (east_tls, west_tls) = (cfg.east_tls, cfg.west_tls);
    let (east_name, west_name) = (&cfg.east_name, &cfg.west_name);
    let primary = format!(
        "check inter {inter} fastinter {ejection} downinter {ejection} fall 1 rise 1 \
         observe layer7 error-limit {errors} on-error mark-down"
    );
    let backup = format!("backup check inter {inter} fall 1 rise 1");
    let tls_opts = format!("ssl verify required ca-file \"{ca}\"");
    format!(
        r#"# Written by cargo xtask bench (peers/haproxy.rs).
global
    nbthread 1

defaults
    mode http
    timeout connect {connect_timeout}
    timeout client 50s
    timeout server 50s
    # The first try and 2 retries, like Istio; never the same server once
    # it is down.
    retries 2
    option redispatch
    retry-on conn-failure empty-response response-timeout 503
    http-reuse always

frontend bench
    bind {listen}
    acl is_plain req.hdr(host),field(1,:) -i -m str {plain}
    acl is_tls req.hdr(host),field(1,:) -i -m str {tls}
    # Unknown hosts get 404, as in Envoy.
    http-request return status 404 unless is_plain || is_tls
    use_backend tls if is_tls
    default_backend plain

backend plain
    server east {east_plain} {primary}
    server west {west_plain} {backup}

backend tls
    server east {east_tls} {tls_opts} sni str({east_name}) check-sni {east_name} {primary}
    server west {west_tls} {tls_opts} sni str({west_name}) check-sni {west_name} {backup}
"#
    )
}
