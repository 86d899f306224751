//! Pods: apps in network namespaces of their own, made by the real CNI
//! plugins (bridge, host-local, loopback) in the node's cgroup, next to
//! each other. The daemon serves each from inside it (its own listeners
//! and sockets there), whether the pod came before it, after it, or was
//! announced by the CNI plugin; pods that break the rules are left alone
//! and reported, and none can reach another's traffic.
//!
//! Endpoints live in namespaces of their own (10.213.x.2) that pods reach
//! through the node; the VIPs have no route anywhere, so only the redirect
//! can reach them.

use std::{
    collections::BTreeMap,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    thread,
    time::{Duration, Instant},
};

use redirector_tests::{
    client,
    http::HttpServer,
    istio::{destination_rule, service_entry},
    netns::Netns,
    pod::{Pod, PodNetwork},
    scenario::{Node, TIMEOUT, assert_all_ok, count, metric, wait_until},
};
use serde_json::Value;

const VIP: &str = "240.240.0.10";
const EAST: &str = "healthy: east";
const WEST: &str = "healthy: west";

/// A node with pods, and east and west HTTP endpoints (port 8080) in
/// namespaces of their own, named `east.test` and `west.test`.
struct Bed {
    node: Node,
    pods: PodNetwork,
    east: HttpServer,
    west: HttpServer,
    _east_ns: Netns,
    _west_ns: Netns,
}

fn bed() -> Bed {
    let node = Node::new();
    let pods = node.pods().clone();
    let east_ns = node.endpoint_ns("east", "10.213.1.1/24", "10.213.1.2/24");
    let west_ns = node.endpoint_ns("west", "10.213.2.1/24", "10.213.2.2/24");
    let east = HttpServer::start(&east_ns, "10.213.1.2:8080".parse().unwrap(), "east")
        .expect("starting east");
    let west = HttpServer::start(&west_ns, "10.213.2.2:8080".parse().unwrap(), "west")
        .expect("starting west");
    node.a_record("east.test", [10, 213, 1, 2], 30);
    node.a_record("west.test", [10, 213, 2, 2], 30);
    Bed {
        node,
        pods,
        east,
        west,
        _east_ns: east_ns,
        _west_ns: west_ns,
    }
}

fn blog_entry(east_port: u16) -> String {
    service_entry(
        Some(VIP),
        ("east.test", "us-east1", east_port),
        ("west.test", "us-west1", 8080),
    )
}

impl Bed {
    /// The daemon, outside the pods' cgroup, with `yaml`.
    fn start(&mut self, yaml: &str) {
        self.node.start(yaml, "us-east1", false);
    }

    /// `n` requests to `http://mydb.com/` from `pod`, resolved through the
    /// pod's resolv.conf (cluster DNS, search domains, ndots:5), that must
    /// all succeed; their bodies.
    fn bodies(&self, pod: &Pod, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| match pod.get("http://mydb.com/") {
                Ok((200, body)) => body,
                other => panic!(
                    "request {i} from pod {}: {other:?}\ndaemon log:\n{}",
                    pod.name(),
                    self.node.log()
                ),
            })
            .collect()
    }

    /// `redirector pods --output json`.
    fn report(&self) -> Value {
        self.node.report("pods")
    }

    /// `pod`'s row in `redirector pods`, if listed.
    fn row(&self, pod: &Pod) -> Option<Value> {
        let cookie = netns_cookie(pod);
        self.report()["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .find(|r| r["netns"] == cookie)
            .cloned()
    }

    /// Waits until `redirector pods` shows `pod` in `state`; its row.
    fn wait_for(&self, pod: &Pod, state: &str) -> Value {
        let mut row = None;
        wait_until(&format!("pod {} {state}", pod.name()), TIMEOUT, || {
            row = self.row(pod).filter(|r| r["state"] == state);
            row.is_some()
        });
        row.unwrap()
    }

    fn daemon_pid(&self) -> u32 {
        self.node.daemon.as_ref().expect("a daemon").pid()
    }
}

/// The netns cookie of `pod`'s namespace, as `redirector pods` prints it.
fn netns_cookie(pod: &Pod) -> String {
    let out = pod
        .client("python3")
        .args([
            "-c",
            "import socket, struct\n\
             s = socket.socket()\n\
             print(hex(struct.unpack('Q', s.getsockopt(socket.SOL_SOCKET, 71, 8))[0]))",
        ])
        .timeout(TIMEOUT)
        .run()
        .expect("running python3 in the pod");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `rdt-load` from `pod` against `vip`:80 (Host mydb.com): `rps` requests
/// a second for `secs` seconds, a new connection for each; every request's
/// record (see `rdt-load`).
fn load_records(pod: &Pod, vip: &str, rps: u32, secs: u32) -> Vec<Value> {
    let cmd = pod.command(client::rdt_load_bin());
    client::rdt_load(cmd, vip, rps, f64::from(secs), &["--new-connections"])
}

/// [`load_records`]' statuses.
fn load(pod: &Pod, vip: &str, rps: u32, secs: u32) -> Vec<u64> {
    load_records(pod, vip, rps, secs)
        .iter()
        .map(|v| v["status"].as_u64().expect("status"))
        .collect()
}

/// Open file descriptors of process `pid` by kind (`socket`,
/// `anon_inode:bpf-map`, `net`, …), sockets by the inode of their
/// network namespace (`socket in <inode>`).
fn fd_kinds(pid: u32) -> BTreeMap<String, usize> {
    // pidfd_getfd(2) copies each socket here; SIOCGSKNS then opens its
    // namespace. (Opening /proc/<pid>/fd/<n> of a socket is refused.)
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    assert!(
        pidfd >= 0,
        "pidfd_open({pid}): {}",
        std::io::Error::last_os_error()
    );
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mut kinds = BTreeMap::new();
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the daemon's fds");
    for entry in entries.flatten() {
        let target = std::fs::read_link(entry.path())
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        let kind = match target.split(':').next().unwrap_or_default() {
            "anon_inode" => target.clone(),
            "socket" => {
                let fd: i32 = entry.file_name().to_string_lossy().parse().unwrap_or(-1);
                format!("socket in {}", socket_netns(&pidfd, fd).unwrap_or(0))
            }
            kind => kind.to_owned(),
        };
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
}

/// The inode of the network namespace of socket `fd` of the process
/// behind `pidfd`.
fn socket_netns(pidfd: &OwnedFd, fd: i32) -> Option<u64> {
    const SIOCGSKNS: libc::c_ulong = 0x894C;
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) } as i32;
    if copy < 0 {
        return None;
    }
    let copy = unsafe { OwnedFd::from_raw_fd(copy) };
    let ns = unsafe { libc::ioctl(copy.as_raw_fd(), SIOCGSKNS) };
    if ns < 0 {
        return None;
    }
    let ns = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(ns) });
    ns.metadata().ok().map(|m| m.ino())
}

/// The inode of `ns`.
fn ns_inode(ns: &Netns) -> u64 {
    std::fs::metadata(ns.path())
        .expect("the namespace's file")
        .ino()
}

/// Waits until process `pid` holds sockets only in the namespaces `keep`
/// (inodes) and no more namespaces, BPF maps or other descriptors than it
/// did (`before`, from [`fd_kinds`]); says what is left if not.
fn wait_until_let_go(pid: u32, keep: &[u64], before: &BTreeMap<String, usize>) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = fd_kinds(pid);
        let sockets_elsewhere = now.keys().any(|k| {
            k.strip_prefix("socket in ")
                .is_some_and(|ns| !keep.iter().any(|i| i.to_string() == ns))
        });
        let more = now
            .iter()
            .filter(|(k, _)| !k.starts_with("socket in "))
            .any(|(k, n)| *n > before.get(k).copied().unwrap_or(0));
        if !sockets_elsewhere && !more {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon still holds {now:?}; before: {before:?}; namespaces kept: {keep:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The blog post's three steps, from a pod resolving `mydb.com` through
/// its cluster DNS: both regions answer without a DestinationRule; with
/// outlier detection only the local one; and once the primary is broken
/// (wrong port, other locality), the failover region answers every
/// request, none failing.
#[test]
fn the_blogs_scenario_from_a_pod() {
    let mut bed = bed();
    let app = bed.pods.pod("app").expect("creating the pod");
    bed.start(&blog_entry(8080));
    bed.wait_for(&app, "served");
    let bodies = bed.bodies(&app, 10);
    assert_eq!(count(&bodies, EAST), 5, "{bodies:?}");
    assert_eq!(count(&bodies, WEST), 5, "{bodies:?}");

    bed.node.reload(
        &(blog_entry(8080) + &destination_rule(1, "15s", "1m")),
        "config reloaded",
    );
    let bodies = bed.bodies(&app, 10);
    assert_eq!(count(&bodies, EAST), 10, "{bodies:?}");

    let broken = service_entry(
        Some(VIP),
        ("east.test", "us-central1", 8081),
        ("west.test", "us-west", 8080),
    ) + &destination_rule(1, "15s", "1m");
    bed.node.reload(&broken, "config reloaded");
    let bodies = bed.bodies(&app, 10);
    assert_eq!(count(&bodies, WEST), 10, "{bodies:?}");
    let east = bed.node.endpoint("east.test");
    assert_eq!(east["outlier_check"], "FAILED", "{east:#}");
    // The pod's requests reached the endpoints from the pod's own address
    // (the daemon connects from inside the pod), not the node's.
    let log = bed.node.log();
    assert!(log.contains("serving the pod's network namespace"), "{log}");
    assert_eq!(bed.west.last_peer_ip(), Some(app.ip().into()));
}

/// The blog's HTTPS variant from a pod: the daemon originates verified TLS
/// (a CA made for the test) from inside the pod, and fails over to west
/// with no failed request once east stops.
#[test]
fn tls_origination_from_a_pod_fails_over_with_zero_errors() {
    use redirector_tests::{https::HttpsServer, origination, pki::TestCa};
    let mut bed = bed();
    let ca = TestCa::new();
    let ca_file = ca.write_ca(bed.node.dir.path());
    let https = |ns: &Netns, addr: &str, name: &str| {
        let (cert, key) = ca.leaf(&[&format!("{name}.test")]);
        HttpsServer::start(ns, addr.parse().unwrap(), name, &cert, &key)
            .unwrap_or_else(|e| panic!("starting HTTPS {name}: {e:#}"))
    };
    let east = https(&bed._east_ns, "10.213.1.2:443", "east");
    let west = https(&bed._west_ns, "10.213.2.2:443", "west");
    let app = bed.pods.pod("app").expect("creating the pod");
    bed.start(&origination::two_regions(&ca_file, None));
    bed.wait_for(&app, "served");
    let bodies = bed.bodies(&app, 5);
    assert_eq!(count(&bodies, EAST), 5, "{bodies:?}");
    assert!(east.handshakes() > 0);
    east.stop().expect("stopping east");
    let bodies = bed.bodies(&app, 10);
    assert_eq!(count(&bodies, WEST), 10, "{bodies:?}");
    assert!(west.handshakes() > 0);
    assert_eq!(bed.node.endpoint("east.test")["outlier_check"], "FAILED");
}

/// Pods made before the daemon started and after it (no CNI plugin in the
/// chain) are both found and served; `redirector pods` and the metrics say
/// so.
#[test]
fn pods_made_before_and_after_the_daemon_are_found_and_served() {
    let mut bed = bed();
    let before = bed.pods.pod("before").expect("creating a pod");
    bed.start(&blog_entry(8080));
    let after = bed.pods.pod("after").expect("creating a pod");
    for pod in [&before, &after] {
        let row = bed.wait_for(pod, "served");
        assert_eq!(row["source"], "found", "{row:#}");
        let listeners = row["listeners"].as_array().unwrap();
        assert!(listeners.contains(&"proxy4".into()), "{row:#}");
        assert!(listeners.contains(&"dns4".into()), "{row:#}");
        let bodies = bed.bodies(pod, 4);
        assert_eq!(count(&bodies, EAST) + count(&bodies, WEST), 4);
    }
    let report = bed.report();
    assert_eq!(report["daemon_running"], true, "{report:#}");
    let host = report["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["source"] == "host")
        .unwrap_or_else(|| panic!("no host row in {report:#}"));
    assert_eq!(host["state"], "served", "{report:#}");
    let metrics = bed.node.metrics();
    assert_eq!(metric(&metrics, "redirector_pods_served"), 2.0, "{metrics}");
    assert_eq!(metric(&metrics, "redirector_pods_left_alone"), 0.0);
}

/// A pod deleted while its app holds connections through the daemon: the
/// daemon lets go of the namespace (listeners, sockets, maps) and gets
/// back to the file descriptors it had before the pod.
#[test]
fn a_deleted_pod_is_let_go_with_its_connections() {
    let mut bed = bed();
    bed.start(&blog_entry(8080));
    let pid = bed.daemon_pid();
    let before = fd_kinds(pid);
    let app = bed.pods.pod("app").expect("creating the pod");
    bed.wait_for(&app, "served");
    assert_eq!(bed.bodies(&app, 2).len(), 2);
    // Two connections through the proxy, each with a request answered,
    // kept open.
    let script = format!(
        "import socket, sys, time\n\
         held = []\n\
         for _ in range(2):\n\
         \x20   s = socket.create_connection(('{VIP}', 80))\n\
         \x20   s.sendall(b'GET / HTTP/1.1\\r\\nHost: mydb.com\\r\\n\\r\\n')\n\
         \x20   s.recv(4096)\n\
         \x20   held.append(s)\n\
         print('open', flush=True)\n\
         time.sleep(600)\n"
    );
    let mut holder = app.spawn("python3", ["-c", &script]).expect("holding");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.take_stdout().expect("stdout")),
        &mut line,
    )
    .expect("reading the holder");
    assert_eq!(line.trim(), "open");
    // The table is rewritten about once a second.
    wait_until("the two connections in `redirector pods`", TIMEOUT, || {
        bed.row(&app)
            .is_some_and(|r| r["open_connections"].as_u64() >= Some(2))
    });
    let cookie = netns_cookie(&app);
    let pod_ns = ns_inode(app.netns());
    assert!(
        fd_kinds(pid).contains_key(&format!("socket in {pod_ns}")),
        "the daemon has sockets in the pod"
    );
    app.delete().expect("deleting the pod");
    wait_until("the daemon to let go of the pod", TIMEOUT, || {
        !bed.report()["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["netns"] == cookie)
    });
    wait_until_let_go(pid, &[ns_inode(&bed.node.ns)], &before);
    assert_eq!(metric(&bed.node.metrics(), "redirector_pods_served"), 0.0);
    let log = bed.node.log();
    assert!(
        log.contains("released the pod's network namespace"),
        "{log}"
    );
    // It still serves new pods.
    let next = bed.pods.pod("next").expect("creating another pod");
    bed.wait_for(&next, "served");
    assert_eq!(bed.bodies(&next, 2).len(), 2);
}

/// A pod whose own proxy holds 127.0.0.1:15001 (an Istio sidecar's
/// outbound port) is left alone: its traffic untouched, reported by
/// `redirector pods` and the metrics; its neighbour is served.
#[test]
fn a_pod_holding_the_proxy_port_is_left_alone_and_reported() {
    let mut bed = bed();
    let sidecar = bed.pods.pod("sidecar").expect("creating a pod");
    let _own_proxy = sidecar
        .spawn(
            "python3",
            [
                "-c",
                "import socket, time\n\
                 s = socket.socket()\n\
                 s.bind(('127.0.0.1', 15001))\n\
                 s.listen()\n\
                 time.sleep(600)\n",
            ],
        )
        .expect("starting the pod's own proxy");
    wait_until("the pod's own proxy listening", TIMEOUT, || {
        let out = sidecar
            .client("ss")
            .args(["-Htln", "sport = :15001"])
            .timeout(TIMEOUT)
            .run()
            .expect("running ss");
        !out.stdout.is_empty()
    });
    let app = bed.pods.pod("app").expect("creating a pod");
    bed.start(&blog_entry(8080));
    let row = bed.wait_for(&sidecar, "left alone");
    let detail = row["detail"].as_str().unwrap();
    assert!(detail.contains("15001"), "{row:#}");
    bed.wait_for(&app, "served");
    assert_eq!(bed.bodies(&app, 4).len(), 4);
    let metrics = bed.node.metrics();
    assert_eq!(
        metric(&metrics, "redirector_pods_left_alone"),
        1.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "redirector_pods_served"), 1.0, "{metrics}");
    // Untouched: its connect to the VIP goes where the pod's routes say
    // (nowhere), not to the endpoints.
    let requests = bed.east.requests() + bed.west.requests();
    let got = sidecar
        .client("curl")
        .args(["-sS", "-m", "3", &format!("http://{VIP}/")])
        .timeout(TIMEOUT)
        .run()
        .expect("running curl");
    assert!(!got.status.success(), "{got:?}");
    assert_eq!(bed.east.requests() + bed.west.requests(), requests);
}

/// A hostile pod tries to take the daemon's ports in its namespace and
/// floods it with connects and DNS queries; its neighbour's requests all
/// succeed and the daemon keeps serving both.
#[test]
fn a_hostile_pod_cannot_disturb_its_neighbour() {
    let mut bed = bed();
    bed.start(&blog_entry(8080));
    let hostile = bed.pods.pod("hostile").expect("creating a pod");
    let app = bed.pods.pod("app").expect("creating a pod");
    bed.wait_for(&hostile, "served");
    bed.wait_for(&app, "served");
    // Every way to share or shadow the listeners is refused.
    let squat = hostile
        .client("python3")
        .args([
            "-c",
            "import socket\n\
             for addr in [('127.0.0.1', 15001), ('0.0.0.0', 15001), ('127.0.0.1', 15053)]:\n\
             \x20   for kind in [socket.SOCK_STREAM, socket.SOCK_DGRAM]:\n\
             \x20       s = socket.socket(socket.AF_INET, kind)\n\
             \x20       s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             \x20       s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n\
             \x20       try:\n\
             \x20           s.bind(addr)\n\
             \x20           if kind == socket.SOCK_STREAM: s.listen()\n\
             \x20           if addr[1] == 15001 and kind == socket.SOCK_DGRAM: continue\n\
             \x20           print('bound', addr, kind)\n\
             \x20       except OSError as e:\n\
             \x20           pass\n",
        ])
        .timeout(TIMEOUT)
        .run()
        .expect("running python3");
    assert!(squat.status.success(), "{squat:?}");
    assert_eq!(String::from_utf8_lossy(&squat.stdout), "", "{squat:?}");
    let (flood, statuses) = thread::scope(|s| {
        let connects = s.spawn(|| load(&hostile, VIP, 400, 5));
        let dns = s.spawn(|| {
            hostile
                .client("python3")
                .args([
                    "-c",
                    "import socket, time\n\
                     s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                     q = bytes.fromhex('abcd01000001000000000000056d7964620363'\
                     '6f6d0000010001')\n\
                     end = time.time() + 5\n\
                     n = 0\n\
                     while time.time() < end:\n\
                     \x20   s.sendto(q, ('10.96.0.10', 53))\n\
                     \x20   n += 1\n\
                     print(n)\n",
                ])
                .timeout(TIMEOUT)
                .run()
                .expect("running the DNS flood")
        });
        let started = Instant::now();
        let mut statuses = Vec::new();
        while started.elapsed() < Duration::from_secs(4) {
            statuses.push(match app.get("http://mydb.com/") {
                Ok((status, _)) => u64::from(status),
                Err(e) => panic!("the neighbour's request failed: {e}\n{}", bed.node.log()),
            });
        }
        let _ = connects.join().expect("the connect flood");
        (dns.join().expect("the DNS flood"), statuses)
    });
    assert!(flood.status.success(), "{flood:?}");
    assert!(!statuses.is_empty());
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        bed.node
            .daemon
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none()
    );
    bed.wait_for(&hostile, "served");
    bed.wait_for(&app, "served");
}

/// A hundred pods come and go while one pod runs a steady load: no request
/// of the steady pod fails, and the daemon ends with the file descriptors
/// it had and at most a little more memory.
#[test]
fn a_hundred_pods_come_and_go_under_load_without_leaking() {
    let mut bed = bed();
    bed.start(&blog_entry(8080));
    let steady = bed.pods.pod("steady").expect("creating a pod");
    bed.wait_for(&steady, "served");
    assert_eq!(bed.bodies(&steady, 2).len(), 2);
    let pid = bed.daemon_pid();
    let (before, rss_before) = (fd_kinds(pid), rss_kib(pid));
    let done = std::sync::atomic::AtomicBool::new(false);
    let statuses = thread::scope(|s| {
        let load = s.spawn(|| {
            let mut all = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                all.extend(load(&steady, VIP, 20, 3));
            }
            all
        });
        for round in 0..10 {
            let pods: Vec<Pod> = (0..10)
                .map(|i| {
                    bed.pods
                        .pod(&format!("churn-{round}-{i}"))
                        .expect("creating a pod")
                })
                .collect();
            // One of each batch is used before it goes.
            bed.wait_for(&pods[round % 10], "served");
            assert_eq!(bed.bodies(&pods[round % 10], 1).len(), 1);
            for pod in pods {
                pod.delete().expect("deleting a pod");
            }
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        load.join().expect("the steady load")
    });
    let expected = statuses.len();
    assert_all_ok("the steady pod", &statuses, expected, &bed.node.log());
    wait_until("the churned pods let go", TIMEOUT * 2, || {
        bed.report()["namespaces"].as_array().unwrap().len() == 2
    });
    wait_until_let_go(
        pid,
        &[ns_inode(&bed.node.ns), ns_inode(steady.netns())],
        &before,
    );
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB over 100 pods"
    );
    assert_eq!(metric(&bed.node.metrics(), "redirector_pods_served"), 1.0);
}

/// Resident memory of process `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Twenty pods under load through an upgrade (`--take-over`) and then a
/// `kill -9` and restart: no request of any pod fails across the upgrade,
/// and none across the kill but the kill's own (those the killed daemon
/// was carrying, and connects made in the milliseconds it took to die).
/// While no daemon runs, the kernel sends the pods' connects to healthy
/// endpoints itself; each daemon serves the pods from inside them again.
#[test]
fn twenty_pods_under_load_lose_no_connection_across_a_take_over_and_a_kill() {
    let mut bed = bed();
    bed.start(&blog_entry(8080));
    let pods: Vec<Pod> = (0..20)
        .map(|i| bed.pods.pod(&format!("app-{i}")).expect("creating a pod"))
        .collect();
    for pod in &pods {
        bed.wait_for(pod, "served");
    }
    let mut args = bed.node.args("us-east1");
    args.push("--take-over".into());
    let restart_args = bed.node.args("us-east1");
    let (east, ns) = (&bed.east, &bed.node.ns);
    let mut old = bed.node.daemon.take().unwrap();
    let (records, (kill_sent, reaped), last) = thread::scope(|s| {
        let loads: Vec<_> = pods
            .iter()
            .map(|pod| s.spawn(move || load_records(pod, VIP, 10, 12)))
            .collect();
        let more = |what: &str, n: u64| {
            let until = east.requests() + n;
            wait_until(&format!("{n} more requests {what}"), TIMEOUT, || {
                east.requests() >= until
            });
        };
        more("through the first daemon", 200);
        let mut second = redirector_tests::scenario::start_daemon(ns, args);
        let handed = format!(
            "handed the listeners and the datapath over to pid {}",
            second.pid()
        );
        wait_until("the handover", TIMEOUT, || old.log().contains(&handed));
        let status = old.terminate().expect("stopping the old daemon");
        assert!(status.success(), "{status}\n{}", old.log());
        more("through the second daemon", 200);
        // It took the pods over with their sockets and maps, rather than
        // finding them again.
        let log = second.log();
        assert!(
            log.contains("took over the pods the previous daemon served pods=20"),
            "{log}"
        );
        // From SIGKILL to the process reaped, its listeners may still take
        // connects into their backlog, which then die with it.
        let kill_sent = unix_ms();
        second.kill().expect("kill -9");
        let killed = (kill_sent, unix_ms());
        more("while no daemon runs", 100);
        let third = redirector_tests::scenario::start_daemon(ns, restart_args);
        more("through the restarted daemon", 200);
        let records: Vec<Vec<Value>> = loads
            .into_iter()
            .map(|l| l.join().expect("a pod's load"))
            .collect();
        (records, killed, third)
    });
    bed.node.daemon = Some(last);
    let log = bed.node.log();
    let (mut carried_n, mut raced_n) = (0, 0);
    for (pod, records) in pods.iter().zip(&records) {
        assert_eq!(records.len(), 120, "{}", pod.name());
        let failed: Vec<&Value> = records.iter().filter(|r| r["status"] != 200).collect();
        let lost: Vec<&Value> = failed
            .iter()
            .copied()
            .filter(|r| {
                // The kill's own: carried by the killed daemon (connected
                // before the kill, over after it), or a connect made while
                // it was dying (SIGKILL to reaped): the death watch fails
                // those open once the first of the daemon's threads takes
                // the signal, which on a loaded machine can lag the kill.
                let connect = r["connect_unix_ms"].as_f64().unwrap_or(0.0);
                let done = r["done_unix_ms"].as_f64().unwrap_or(f64::MAX);
                if connect < kill_sent && done >= kill_sent {
                    carried_n += 1;
                    return false;
                }
                if (kill_sent..=reaped).contains(&connect) {
                    raced_n += 1;
                    return false;
                }
                true
            })
            .collect();
        assert!(
            lost.is_empty(),
            "pod {}: requests that failed on their own: {lost:#?}\n{log}",
            pod.name()
        );
    }
    eprintln!(
        "20 pods, 2400 requests: {carried_n} carried by the killed daemon failed, {raced_n} \
         connected while it died ({:.1} ms from SIGKILL to reaped), none otherwise",
        reaped - kill_sent
    );
    for pod in &pods {
        bed.wait_for(pod, "served");
    }
}

/// Now on the wall clock, in milliseconds (as `rdt-load` prints times).
fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
        * 1000.0
}

/// With the redirector's plugin in the chain, a pod is served by the time
/// its sandbox is up (the plugin's ADD returns once the daemon listens in
/// the pod), under the name the runtime gave; its DEL lets it go before
/// returning. The runtime gets the previous plugin's result unchanged.
#[test]
fn a_pod_announced_by_the_cni_plugin_is_served_before_its_app_starts() {
    let mut bed = bed();
    let socket = bed.node.dir.path().join("cni.sock");
    let mut args = bed.node.args("us-east1");
    args.extend(["--cni-socket".into(), socket.display().to_string()]);
    bed.node.write_config(&blog_entry(8080));
    bed.node.start_args(args);
    bed.pods
        .chain_redirector(&socket)
        .expect("chaining the plugin");
    let web = bed.pods.pod_in("shop", "web").expect("creating the pod");
    // No waiting: listed, and served, as the sandbox comes up.
    let row = bed.row(&web).expect("the pod listed at once");
    assert_eq!(row["state"], "served", "{row:#}");
    assert_eq!(row["source"], "cni", "{row:#}");
    assert_eq!(row["pod"], "shop/web", "{row:#}");
    let address = web.result()["ips"][0]["address"]
        .as_str()
        .unwrap_or_default();
    assert!(
        address.starts_with(&format!("{}/", web.ip())),
        "{:#}",
        web.result()
    );
    let bodies = bed.bodies(&web, 4);
    assert_eq!(count(&bodies, EAST) + count(&bodies, WEST), 4);
    let cookie = netns_cookie(&web);
    web.delete().expect("deleting the pod");
    let report = bed.report();
    assert!(
        !report["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["netns"] == cookie),
        "{report:#}"
    );
    let log = bed.node.log();
    assert!(
        log.contains("released the pod's network namespace (CNI DEL)"),
        "{log}"
    );
}

/// The plugin never fails a pod over the daemon: with no daemon on its
/// socket the pod comes up as without the redirector; the daemon, once
/// started, finds it and serves it.
#[test]
fn the_plugin_lets_pods_start_without_a_daemon() {
    let mut bed = bed();
    let socket = bed.node.dir.path().join("cni.sock");
    bed.pods
        .chain_redirector(&socket)
        .expect("chaining the plugin");
    let early = bed.pods.pod("early").expect("a pod with no daemon running");
    assert_eq!(
        early.get("http://10.213.1.2:8080/"),
        Ok((200, EAST.to_owned()))
    );
    let mut args = bed.node.args("us-east1");
    args.extend(["--cni-socket".into(), socket.display().to_string()]);
    bed.node.write_config(&blog_entry(8080));
    bed.node.start_args(args);
    let row = bed.wait_for(&early, "served");
    assert_eq!(row["source"], "found", "{row:#}");
    assert_eq!(bed.bodies(&early, 2).len(), 2);
}

/// A pod whose processes make network namespaces of their own gets a few
/// of them served, not more: its neighbours still are.
#[test]
fn a_pod_making_namespaces_gets_a_few_served_not_more() {
    let mut bed = bed();
    bed.start(&blog_entry(8080));
    let greedy = bed.pods.pod("greedy").expect("creating a pod");
    bed.wait_for(&greedy, "served");
    let _made: Vec<_> = (0..6)
        .map(|_| {
            greedy
                .spawn(
                    "unshare",
                    ["--net", "sh", "-c", "ip link set lo up && exec sleep 600"],
                )
                .expect("making a namespace in the pod")
        })
        .collect();
    let found = || {
        bed.report()["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["source"] == "found" && r["state"] == "served")
            .count()
    };
    wait_until("the namespaces made in the pod refused", TIMEOUT, || {
        bed.node
            .log()
            .contains("the most one cgroup gets without the CNI plugin")
    });
    // The pod's own and three of the six: four for its cgroup.
    wait_until("four served in the pod's cgroup", TIMEOUT, || found() == 4);
    let neighbour = bed.pods.pod("neighbour").expect("creating a pod");
    bed.wait_for(&neighbour, "served");
    assert_eq!(bed.bodies(&neighbour, 2).len(), 2);
    assert_eq!(found(), 5);
}

/// The hole pods used to open: a pod that holds 15001 and 15053 itself
/// (left alone) and connects and queries from thousands of source ports
/// cannot steer a host app's or another pod's connections or DNS, which
/// all get the right service and the right answers meanwhile.
#[test]
fn a_pod_holding_the_ports_and_spraying_changes_nothing_for_others() {
    let mut bed = bed();
    let squatter = bed.pods.pod("squatter").expect("creating a pod");
    let _ports = squatter
        .spawn(
            "python3",
            [
                "-c",
                "import socket, time\n\
                 held = []\n\
                 for kind in [socket.SOCK_STREAM, socket.SOCK_DGRAM]:\n\
                 \x20   for port in [15001, 15053]:\n\
                 \x20       if kind == socket.SOCK_DGRAM and port == 15001: continue\n\
                 \x20       s = socket.socket(socket.AF_INET, kind)\n\
                 \x20       s.bind(('127.0.0.1', port))\n\
                 \x20       if kind == socket.SOCK_STREAM: s.listen(4096)\n\
                 \x20       held.append(s)\n\
                 print('bound', flush=True)\n\
                 time.sleep(600)\n",
            ],
        )
        .expect("the pod's own listeners");
    wait_until("the pod's own listeners", TIMEOUT, || {
        let out = squatter
            .client("ss")
            .args(["-Hln", "sport = :15053"])
            .timeout(TIMEOUT)
            .run()
            .expect("running ss");
        String::from_utf8_lossy(&out.stdout).lines().count() >= 2
    });
    let neighbour = bed.pods.pod("neighbour").expect("creating a pod");
    bed.start(&blog_entry(8080));
    bed.wait_for(&squatter, "left alone");
    bed.wait_for(&neighbour, "served");
    let spray = format!(
        "import socket, struct, time\n\
         q = bytes.fromhex('abcd01000001000000000000056d79646203636f6d0000010001')\n\
         end = time.time() + 4\n\
         port = 20000\n\
         while time.time() < end:\n\
         \x20   port = 20000 + (port - 19999) % 40000\n\
         \x20   for dst in [('{VIP}', 80), ('127.0.0.1', 15001)]:\n\
         \x20       s = socket.socket()\n\
         \x20       s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         \x20       s.setblocking(False)\n\
         \x20       try:\n\
         \x20           s.bind(('0.0.0.0', port))\n\
         \x20           s.connect_ex(dst)\n\
         \x20       except OSError:\n\
         \x20           pass\n\
         \x20       s.close()\n\
         \x20   u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         \x20   try:\n\
         \x20       u.bind(('0.0.0.0', port))\n\
         \x20       u.sendto(q, ('10.96.0.10', 53))\n\
         \x20       u.sendto(q, ('127.0.0.1', 15053))\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         \x20   u.close()\n"
    );
    let node = &bed.node;
    let (sprayed, host, pod) = thread::scope(|s| {
        let spray = s.spawn(|| {
            squatter
                .client("python3")
                .args(["-c", &spray])
                .timeout(TIMEOUT)
                .run()
                .expect("running the spray")
        });
        let host = s.spawn(|| {
            let started = Instant::now();
            let mut got = Vec::new();
            while started.elapsed() < Duration::from_secs(3) {
                got.push(
                    redirector_tests::client::http_get_by_name(
                        &node.ns,
                        Some(&node.cgroup),
                        "mydb.com",
                        [127, 0, 0, 1].into(),
                        Duration::from_secs(10),
                    )
                    .expect("running curl on the node"),
                );
            }
            got
        });
        let started = Instant::now();
        let mut pod = Vec::new();
        while started.elapsed() < Duration::from_secs(3) {
            pod.push(neighbour.get("http://mydb.com/"));
        }
        (
            spray.join().expect("the spray"),
            host.join().expect("the host app"),
            pod,
        )
    });
    assert!(sprayed.status.success(), "{sprayed:?}");
    for (who, got) in [("the host app", host), ("the neighbour pod", pod)] {
        assert!(!got.is_empty());
        let wrong: Vec<_> = got
            .iter()
            .filter(|r| !matches!(r, Ok((200, body)) if body == EAST || body == WEST))
            .collect();
        assert!(wrong.is_empty(), "{who}: {wrong:?}\n{}", bed.node.log());
    }
    let log = bed.node.log();
    assert!(!log.contains("without a redirect record"), "{log}");
    bed.wait_for(&squatter, "left alone");
}

/// SIGTERM drains every pod: a request in flight in each finishes, and
/// new connects meanwhile go straight to the endpoints.
#[test]
fn sigterm_drains_every_pod() {
    let mut bed = bed();
    bed.start(&blog_entry(8080));
    let pods: Vec<Pod> = (0..3)
        .map(|i| bed.pods.pod(&format!("app-{i}")).expect("creating a pod"))
        .collect();
    for pod in &pods {
        bed.wait_for(pod, "served");
    }
    bed.east.set_delay(Duration::from_millis(1500));
    bed.west.set_delay(Duration::from_millis(1500));
    let in_flight = bed.east.requests() + bed.west.requests() + 3;
    let node = &mut bed.node;
    let (east, west) = (&bed.east, &bed.west);
    let answers = thread::scope(|s| {
        let requests: Vec<_> = pods
            .iter()
            .map(|pod| s.spawn(move || pod.get("http://mydb.com/")))
            .collect();
        wait_until("a request in flight from each pod", TIMEOUT, || {
            east.requests() + west.requests() >= in_flight
        });
        let daemon = node.daemon.as_mut().unwrap();
        redirector_tests::process::signal(daemon.pid(), libc::SIGTERM).expect("SIGTERM");
        wait_until("the drain", TIMEOUT, || daemon.log().contains("draining"));
        // New connects while draining do not reach the daemon.
        let during = pods[0].get("http://mydb.com/");
        let answers: Vec<_> = requests
            .into_iter()
            .map(|r| r.join().expect("a pod's request"))
            .collect();
        (answers, during)
    });
    let (answers, during) = answers;
    let log = bed.node.log();
    for answer in answers {
        assert!(
            matches!(&answer, Ok((200, body)) if body == EAST || body == WEST),
            "{answer:?}\n{log}"
        );
    }
    assert!(
        matches!(&during, Ok((200, _))),
        "a request while draining: {during:?}\n{log}"
    );
    let status = bed
        .node
        .daemon
        .as_mut()
        .unwrap()
        .terminate()
        .expect("the daemon exits");
    assert!(status.success(), "{status}\n{}", bed.node.log());
}
