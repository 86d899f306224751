//! Each peer for real (root): in a namespace of its own, with HTTP and
//! HTTPS upstreams on loopback addresses standing for the two regions,
//! curl as the client. Checks routing by Host, TLS origination (verified,
//! SNI), failover on 503 and on a stopped primary, and failback, and pins
//! down what each peer does where it differs from the redirector.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use redirector_tests::{
    client, http::HttpServer, https::HttpsServer, netns::Netns, pki::TestCa,
    privilege::require_root, tempdir::TempDir,
};

use super::{OutlierTiming, Peer, PeerConfig};
use crate::{install, model::SystemId, tools::Tools};

const PLAIN: &str = "plain.test";
const TLS: &str = "tls.test";
const LISTEN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15080);
const EAST_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 10, 1);
const WEST_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 20, 1);
/// The blog's consecutive5xxErrors, shorter times so the test is quick.
const OUTLIER: OutlierTiming = OutlierTiming {
    consecutive_5xx: 1,
    // Longer than the test: HAProxy's periodic checks stay out of the
    // way, only the one forced after a mark-down (fastinter) runs.
    interval: Duration::from_secs(30),
    base_ejection: Duration::from_secs(2),
};

/// Installed once per test binary (the tests run in parallel).
fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| install::ensure().expect("installing the peers"))
}

/// Two regions' upstreams, plain and HTTPS, in a namespace of their own.
struct Bed {
    // Servers before the namespace: drop order is field order.
    east: HttpServer,
    west: HttpServer,
    east_tls: HttpsServer,
    west_tls: HttpsServer,
    cfg: PeerConfig,
    _dir: TempDir,
    netns: Netns,
}

impl Bed {
    fn new(role: &str) -> Bed {
        let netns = Netns::new(role).expect("a namespace");
        let dir = TempDir::new(role).expect("a temp dir");
        let ca = TestCa::new();
        let (cert, key) = ca.leaf(&["east.test", "west.test", PLAIN, TLS]);
        let addr = |ip, port| SocketAddr::from(SocketAddrV4::new(ip, port));
        let east = HttpServer::start(&netns, addr(EAST_IP, 80), "east").expect("east");
        let west = HttpServer::start(&netns, addr(WEST_IP, 80), "west").expect("west");
        let east_tls = HttpsServer::start(&netns, addr(EAST_IP, 443), "east-tls", &cert, &key)
            .expect("east-tls");
        let west_tls = HttpsServer::start(&netns, addr(WEST_IP, 443), "west-tls", &cert, &key)
            .expect("west-tls");
        let cfg = PeerConfig {
            listen: LISTEN,
            plain_host: PLAIN.into(),
            tls_host: TLS.into(),
            east_plain: SocketAddrV4::new(EAST_IP, 80),
            west_plain: SocketAddrV4::new(WEST_IP, 80),
            east_tls: SocketAddrV4::new(EAST_IP, 443),
            west_tls: SocketAddrV4::new(WEST_IP, 443),
            east_name: "east.test".into(),
            west_name: "west.test".into(),
            ca_file: ca.write_ca(dir.path()),
            outlier: OUTLIER,
            connect_timeout: Duration::from_secs(10),
            dir: dir.path().join("peer"),
        };
        Bed {
            east,
            west,
            east_tls,
            west_tls,
            cfg,
            _dir: dir,
            netns,
        }
    }

    fn start(&self, system: SystemId) -> Peer {
        let cpu = thread::available_parallelism().map_or(0, |n| n.get() - 1);
        Peer::start(system, tools(), &self.cfg, &self.netns, cpu as u32)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `GET /` with `Host: host` through the peer: (status, body).
    fn get(&self, peer: &Peer, host: &str) -> (u16, String) {
        let header = format!("Host: {host}");
        let url = format!("http://{LISTEN}/");
        let args = [
            "-sS",
            "--max-time",
            "20",
            "-H",
            &header,
            "-w",
            "\n%{http_code}",
            &url,
        ];
        let out = client::run(&self.netns, None, "curl", &args, Duration::from_secs(25))
            .unwrap_or_else(|e| panic!("curl: {e:#}\n{}", peer.log()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl {host} via {}: {}{}\n{}",
            peer.system,
            stdout,
            String::from_utf8_lossy(&out.stderr),
            peer.log()
        );
        let (body, code) = stdout.rsplit_once('\n').expect("a status line");
        (code.parse().expect("a status"), body.to_owned())
    }

    /// Asserts `n` answers, all `status` with `body` (a prefix), for both
    /// services (`<region>` and `<region>-tls` bodies).
    fn expect(&self, peer: &Peer, n: usize, status: u16, region_body: &str) {
        for (host, suffix) in [(PLAIN, ""), (TLS, "-tls")] {
            let want = region_body.replace("{tls}", suffix);
            for i in 0..n {
                let (got_status, body) = self.get(peer, host);
                assert!(
                    got_status == status && body.starts_with(&want),
                    "{} request {i} for {host}: want {status} {want:?}, got {got_status} {body:?}\n{}",
                    peer.system,
                    peer.log()
                );
            }
        }
    }

    /// Polls until both services answer from east again; returns how long
    /// it took.
    fn wait_for_east(&self, peer: &Peer, within: Duration) -> Duration {
        let start = Instant::now();
        for (host, body) in [(PLAIN, "healthy: east"), (TLS, "healthy: east-tls")] {
            loop {
                let (status, got) = self.get(peer, host);
                assert_eq!(
                    status,
                    200,
                    "{} {host} while waiting for failback: {got}\n{}",
                    peer.system,
                    peer.log()
                );
                if got == body {
                    break;
                }
                assert!(
                    start.elapsed() < within,
                    "{} {host}: still {got:?} {within:?} after the primary recovered\n{}",
                    peer.system,
                    peer.log()
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
        start.elapsed()
    }

    fn set_east_status(&self, status: u16) {
        self.east.set_status(status).unwrap();
        self.east_tls.set_status(status).unwrap();
    }

    fn stop_east(&self) {
        self.east.stop().unwrap();
        self.east_tls.stop().unwrap();
    }
}

/// Routing by Host, an unknown host, TLS origination with pooled
/// connections: common to every peer. Returns the SNI east saw.
fn serves_both_services_from_east(bed: &Bed, peer: &Peer) -> Option<String> {
    bed.expect(peer, 3, 200, "healthy: east{tls}");
    let (status, _) = bed.get(peer, "other.test");
    assert_eq!(status, 404, "{}: an unknown host", peer.system);
    assert_eq!(bed.west.requests() + bed.west_tls.requests(), 0);
    // Three requests over one verified connection: it is pooled. HAProxy's
    // TLS health check may add one handshake of its own.
    let checks = u64::from(peer.system == SystemId::Haproxy);
    let handshakes = bed.east_tls.handshakes();
    assert!(
        (1..=1 + checks).contains(&handshakes),
        "{}: {handshakes} TLS handshakes for 3 requests",
        peer.system
    );
    assert_eq!(bed.east_tls.requests(), 3);
    bed.east_tls.last_sni()
}

/// The same peer trusting another CA: the TLS service fails (no plain
/// text fallback), the plain one still works.
fn rejects_an_untrusted_certificate(bed: &Bed, system: SystemId) {
    let mut cfg = bed.cfg.clone();
    cfg.listen = SocketAddrV4::new(Ipv4Addr::LOCALHOST, LISTEN.port() + 1);
    cfg.dir = bed.cfg.dir.with_file_name("peer-untrusted");
    std::fs::create_dir_all(&cfg.dir).unwrap();
    cfg.ca_file = TestCa::new().write_ca(&cfg.dir);
    let cpu = thread::available_parallelism().map_or(0, |n| n.get() - 1);
    let peer = Peer::start(system, tools(), &cfg, &bed.netns, cpu as u32)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let get = |host: &str| {
        let header = format!("Host: {host}");
        let url = format!("http://{}/", cfg.listen);
        let args = ["-sS", "-H", &header, "-w", "\n%{http_code}", &url];
        let out = client::run(&bed.netns, None, "curl", &args, Duration::from_secs(25)).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let tls = get(TLS);
    assert!(
        tls.ends_with("\n502") || tls.ends_with("\n503"),
        "{system} with an untrusted upstream certificate: {tls:?}\n{}",
        peer.log()
    );
    assert!(get(PLAIN).ends_with("\n200"));
}

#[test]
fn nginx_fails_over_to_the_backup_and_back() {
    require_root();
    let bed = Bed::new("peers_nginx");
    let peer = bed.start(SystemId::Nginx);
    assert_eq!(peer.pids().len(), 2, "master and one worker");
    // One name per location: the upstream block's, i.e. the service host.
    assert_eq!(
        serves_both_services_from_east(&bed, &peer).as_deref(),
        Some(TLS)
    );
    rejects_an_untrusted_certificate(&bed, peer.system);

    // The first 503 marks east failed and is retried on the backup: the
    // client never sees it.
    bed.set_east_status(503);
    let before = bed.east.requests();
    bed.expect(&peer, 3, 200, "healthy: west{tls}");
    assert_eq!(bed.east.requests() - before, 1);
    // After fail_timeout (counted in whole seconds, strictly more than it)
    // one request tries east again, and is retried on the backup.
    thread::sleep(OUTLIER.base_ejection + Duration::from_millis(1200));
    bed.expect(&peer, 2, 200, "healthy: west{tls}");
    assert_eq!(bed.east.requests() - before, 2);

    bed.set_east_status(200);
    let back = bed.wait_for_east(&peer, OUTLIER.base_ejection + Duration::from_secs(3));
    eprintln!("nginx: back on east {back:?} after the fault ended");

    bed.stop_east();
    bed.expect(&peer, 3, 200, "healthy: west{tls}");
}

#[test]
fn haproxy_fails_over_to_the_backup_after_one_503_per_ejection() {
    require_root();
    let bed = Bed::new("peers_haproxy");
    let peer = bed.start(SystemId::Haproxy);
    assert_eq!(peer.pids().len(), 1);
    // Per server: east's own name.
    assert_eq!(
        serves_both_services_from_east(&bed, &peer).as_deref(),
        Some("east.test")
    );
    rejects_an_untrusted_certificate(&bed, peer.system);

    // Retries never leave east while it is up (a backup is only chosen when
    // no primary is), and a retried response is not fed to `observe`: the
    // third 503 is, marks east down, and reaches the client. Then the
    // backup serves.
    bed.set_east_status(503);
    let before = bed.east.requests();
    bed.expect(&peer, 1, 503, "503 from east{tls}");
    assert_eq!(
        bed.east.requests() - before,
        3,
        "the first try and 2 retries"
    );
    bed.expect(&peer, 3, 200, "healthy: west{tls}");
    // East passes its TCP check after the ejection time and is up again:
    // one more 503 reaches the client.
    thread::sleep(OUTLIER.base_ejection + Duration::from_millis(500));
    bed.expect(&peer, 1, 503, "503 from east{tls}");
    bed.expect(&peer, 2, 200, "healthy: west{tls}");

    bed.set_east_status(200);
    let back = bed.wait_for_east(&peer, OUTLIER.base_ejection + Duration::from_secs(3));
    eprintln!("haproxy: back on east {back:?} after the fault ended");

    // A refused connect marks east down; the retry goes to the backup
    // after HAProxy's turn-around delay (min(timeout connect, 1 s)).
    bed.stop_east();
    let start = Instant::now();
    bed.expect(&peer, 3, 200, "healthy: west{tls}");
    eprintln!(
        "haproxy: 6 requests with east stopped took {:?}",
        start.elapsed()
    );
}

#[test]
fn envoy_as_istio_generates_it_never_ejects_one_of_two_hosts() {
    require_root();
    let bed = Bed::new("peers_envoy");
    let peer = bed.start(SystemId::Envoy);
    assert_eq!(peer.pids().len(), 1);
    // auto_sni: the request's Host.
    assert_eq!(
        serves_both_services_from_east(&bed, &peer).as_deref(),
        Some(TLS)
    );
    rejects_an_untrusted_certificate(&bed, peer.system);

    // max_ejection_percent 10% < 50%: east is never ejected, and every
    // retry goes back to it (the only priority-0 host).
    let before = bed.east.requests();
    bed.set_east_status(503);
    bed.expect(&peer, 3, 503, "503 from east{tls}");
    assert_eq!(bed.east.requests() - before, 9, "3 tries per request");
    assert_eq!(bed.west.requests() + bed.west_tls.requests(), 0);
    bed.set_east_status(200);
    bed.expect(&peer, 1, 200, "healthy: east{tls}");

    bed.stop_east();
    bed.expect(&peer, 3, 503, "upstream connect error");
    assert_eq!(bed.west.requests() + bed.west_tls.requests(), 0);
}

/// The configs as written (no root needed): the timings land where the
/// module docs say, and Envoy keeps Istio's unset fields unset.
#[test]
fn configs_carry_the_outlier_timings() {
    let dir = std::env::temp_dir();
    let cfg = PeerConfig {
        listen: LISTEN,
        plain_host: PLAIN.into(),
        tls_host: TLS.into(),
        east_plain: SocketAddrV4::new(EAST_IP, 80),
        west_plain: SocketAddrV4::new(WEST_IP, 80),
        east_tls: SocketAddrV4::new(EAST_IP, 443),
        west_tls: SocketAddrV4::new(WEST_IP, 443),
        east_name: "east.test".into(),
        west_name: "west.test".into(),
        ca_file: dir.join("ca.pem"),
        outlier: OutlierTiming {
            consecutive_5xx: 1,
            interval: Duration::from_secs(15),
            base_ejection: Duration::from_millis(60_500),
        },
        connect_timeout: Duration::from_secs(10),
        dir,
    };
    let nginx = super::nginx::config(&cfg);
    eprintln!("{nginx}");
    assert!(nginx.contains("server 127.0.10.1:80 max_fails=1 fail_timeout=61s;"));
    assert!(nginx.contains("server 127.0.20.1:443 backup;"));
    assert!(nginx.contains("proxy_connect_timeout 10000ms;"));

    let haproxy = super::haproxy::config(&cfg);
    eprintln!("{haproxy}");
    assert!(haproxy.contains(
        "check inter 15000ms fastinter 60500ms downinter 60500ms fall 1 rise 1 \
         observe layer7 error-limit 1 on-error mark-down"
    ));
    assert!(haproxy.contains("sni str(west.test) check-sni west.test backup"));

    let envoy = super::envoy::bootstrap_config(&cfg);
    eprintln!("{}", serde_json::to_string_pretty(&envoy).unwrap());
    let clusters = envoy["static_resources"]["clusters"].as_array().unwrap();
    for cluster in clusters {
        let od = &cluster["outlier_detection"];
        assert_eq!(od["interval"], "15.000s");
        assert_eq!(od["base_ejection_time"], "60.500s");
        assert!(od.get("max_ejection_percent").is_none());
        assert_eq!(
            cluster["common_lb_config"]["healthy_panic_threshold"]["value"],
            0
        );
        let priorities: Vec<_> = cluster["load_assignment"]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["locality"]["region"].clone(), e["priority"].clone()))
            .collect();
        assert_eq!(
            priorities,
            [
                (serde_json::json!("us-east1"), serde_json::json!(0)),
                (serde_json::json!("us-west"), serde_json::json!(1))
            ]
        );
    }
}
