//! The generators for real: every `Load` × `Conn` × `https` combination
//! for 1 s against `rdt-upstream`s (plain and TLS) in a fresh namespace,
//! straight to the upstream as the direct rows run.
//!
//! Needs root (namespaces), oha in `~/.cargo/bin`, wrk in `/usr/bin`
//! (`cargo xtask bench` installs both) and the test bed's binaries, so it
//! is ignored by default:
//! `cargo build -p redirector-tests --bins && cargo test -p xtask -- --ignored`.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    time::Duration,
};

use redirector_tests::{netns::Netns, pki::TestCa, tempdir::TempDir, upstream::UpstreamProcess};

use super::{LoadSpec, observe};
use crate::bench::{
    model::{Conn, Load, Upstream, Workload},
    tools::Tools,
};

fn tools() -> Tools {
    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME is set"));
    let tools = Tools {
        oha: home.join(".cargo/bin/oha"),
        wrk: PathBuf::from("/usr/bin/wrk"),
        nginx: PathBuf::new(),
        haproxy: PathBuf::new(),
        envoy: PathBuf::new(),
    };
    for tool in [&tools.oha, &tools.wrk] {
        assert!(
            tool.is_file(),
            "{} is missing: run cargo xtask bench once",
            tool.display()
        );
    }
    tools
}

fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(addr) => addr,
        SocketAddr::V6(addr) => panic!("{addr} is not IPv4"),
    }
}

#[test]
#[ignore = "root, oha and wrk: cargo build -p redirector-tests --bins && cargo test -p xtask -- --ignored"]
fn every_generator_mode_measures_the_upstream_directly() {
    let tools = tools();
    let netns = Netns::new("load").expect("a namespace");
    let ca = TestCa::new();
    let (cert, key) = ca.leaf(&["tls.test", "127.0.0.1"]);
    let dir = TempDir::new("load").expect("a temp dir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    // Upstreams on CPU 1, generators on CPU 0, as the direct-sut-core row.
    let plain = UpstreamProcess::start(&netns, any, "plain-east", 1024, None, Some(1))
        .expect("the plain upstream");
    let tls = UpstreamProcess::start(
        &netns,
        any,
        "tls-east",
        1024,
        Some((&cert_path, &key_path)),
        Some(1),
    )
    .expect("the TLS upstream");

    for https in [false, true] {
        for conn in [Conn::KeepAlive, Conn::NewPerRequest] {
            for load in [
                Load::OpenLoop { rps: 1000 },
                Load::ClosedLoop { connections: 16 },
            ] {
                let (target, host, upstream) = if https {
                    (v4(tls.addr()), "tls.test", Upstream::Tls)
                } else {
                    (v4(plain.addr()), "plain.test", Upstream::Plain)
                };
                let workload = Workload {
                    conn,
                    upstream,
                    load,
                };
                let spec = LoadSpec {
                    target,
                    host,
                    https,
                    workload,
                    duration: Duration::from_secs(1),
                };
                let seen = observe(&tools, &spec, &netns, None, 0)
                    .unwrap_or_else(|e| panic!("{workload}: {e:#}"));
                let r = &seen.result;
                eprintln!(
                    "{workload} https={https}: {} requests, {:.0} rps, p50 {:.3} ms, p99 {:.3} ms, \
                     p99.9 {:.3} ms, max {:.3} ms, {} errors, {:?} bytes/response",
                    r.requests,
                    r.rps,
                    r.p50_ms,
                    r.p99_ms,
                    r.p999_ms,
                    r.max_ms,
                    r.errors,
                    seen.bytes_per_response
                );
                assert_eq!(r.errors, 0, "{workload}: {r:?}");
                assert!(r.requests > 0 && r.rps > 0.0, "{workload}: {r:?}");
                assert!(
                    0.0 < r.p50_ms && r.p50_ms <= r.p99_ms && r.p99_ms <= r.p999_ms,
                    "{workload}: {r:?}"
                );
                assert!(r.p999_ms <= r.max_ms, "{workload}: {r:?}");
                assert!((0.9..1.5).contains(&r.duration_secs), "{workload}: {r:?}");
                let bytes = seen.bytes_per_response.expect("responses were counted");
                match load {
                    Load::OpenLoop { rps } => {
                        let target = f64::from(rps);
                        assert!(
                            (0.9 * target..1.05 * target).contains(&r.rps),
                            "{workload}: {r:?}"
                        );
                        // oha counts the body alone.
                        assert_eq!(bytes, 1024.0, "{workload}");
                    }
                    Load::ClosedLoop { .. } => {
                        // wrk counts status line and headers too.
                        assert!((1024.0..1200.0).contains(&bytes), "{workload}: {bytes}");
                    }
                }
            }
        }
    }
    drop((plain, tls));
}
