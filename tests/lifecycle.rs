//! Stopping and restarting the daemon on real BPF: SIGTERM lets requests
//! in flight finish (a long transfer completes), sends new connects past
//! the stopping proxy (the kernel datapath serves them), closes what
//! outlives `--drain-timeout`, and a restart under steady load loses no
//! request; a successor started with `--take-over` gets the listeners
//! handed over, and not one request or DNS lookup fails, even for a
//! TLS-originating service (which cannot fail open).

use std::{process::Command, thread, time::Duration};

use redirector_tests::{
    cgroup::TestCgroup,
    client::{self, Client},
    http::HttpServer,
    istio::mydb_entry,
    netns::Netns,
    origination,
    scenario::{Node, TIMEOUT, assert_all_ok, start_daemon, wait_until},
    tcp::TcpServer,
};

const VIP: &str = "240.240.0.70";

fn one_endpoint() -> String {
    mydb_entry(
        VIP,
        "STATIC",
        "  - {address: 127.0.10.1, locality: us-east1}\n",
    )
}

#[test]
fn sigterm_lets_a_request_in_flight_finish_and_new_connects_bypass_the_proxy() {
    let mut node = Node::new();
    let east = node.http("127.0.10.1:8080", "east");
    node.start(&one_endpoint(), "us-east1", false);
    // Slow enough that the request is still in flight once the drain has
    // started and the next request was made, however loaded the machine.
    node.servers[east].set_delay(Duration::from_secs(5));
    let answer = thread::scope(|s| {
        let request = s.spawn(|| node.curl(VIP));
        wait_until("the request to reach east", TIMEOUT, || {
            node.servers[east].requests() == 1
        });
        let pid = node.daemon.as_ref().unwrap().pid();
        redirector_tests::process::signal(pid, libc::SIGTERM).unwrap();
        wait_until("the drain to start", TIMEOUT, || {
            node.log().contains("draining open connections")
        });
        // While the daemon drains, a new connect goes straight to east.
        node.servers[east].set_delay(Duration::ZERO);
        let during = node.curl(VIP);
        assert_eq!(
            during,
            Ok((200, "healthy: east".to_owned())),
            "{}",
            node.log()
        );
        request.join().expect("the request in flight")
    });
    let status = node.daemon.as_mut().unwrap().terminate().unwrap();
    assert_eq!(
        answer,
        Ok((200, "healthy: east".to_owned())),
        "{}",
        node.log()
    );
    assert!(status.success(), "{status}\n{}", node.log());
    let log = node.log();
    assert!(log.contains("open_connections=1"), "{log}");
    assert!(log.contains("drained; exiting"), "{log}");
    assert_eq!(node.servers[east].requests(), 2);
}

#[test]
fn sigterm_closes_what_outlives_the_drain_timeout() {
    let mut node = Node::new();
    let _east = TcpServer::start(&node.ns, "127.0.10.1:9000".parse().unwrap(), "east").unwrap();
    let config = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: pg}}
spec:
  hosts: [pg.example]
  addresses: [{VIP}]
  resolution: STATIC
  ports: [{{number: 5432, name: tcp-pg, targetPort: 9000}}]
  endpoints: [{{address: 127.0.10.1, locality: us-east1}}]
"
    );
    node.write_config(&config);
    let mut args = node.args("us-east1");
    args.extend(["--drain-timeout".into(), "1s".into()]);
    node.daemon = Some(start_daemon(&node.ns, args));
    // An app holds a TCP connection open and reads until it ends.
    let script = format!(
        "
import socket
s = socket.create_connection(('{VIP}', 5432), timeout=30)
f = s.makefile('rb')
print(f.readline().decode().strip())
open('{ready}', 'w').close()
print('ended' if f.readline() == b'' else 'data')
",
        ready = node.dir.path().join("ready").display()
    );
    let out = thread::scope(|s| {
        let app = s.spawn(|| {
            Client::new(&node.ns, "python3")
                .args(["-c", &script])
                .cgroup(&node.cgroup)
                .timeout(TIMEOUT)
                .run()
                .expect("running the app")
        });
        wait_until("the app's connection", TIMEOUT, || {
            node.dir.path().join("ready").exists()
        });
        let status = node.daemon.as_mut().unwrap().terminate().unwrap();
        assert!(status.success(), "{status}\n{}", node.log());
        app.join().expect("the app")
    });
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ["hello from east", "ended"],
        "{out:?}"
    );
    assert!(
        node.log().contains("drain timeout reached"),
        "{}",
        node.log()
    );
}

/// `rdt-load` in the app's position with a new connection per request:
/// the status of every request.
fn new_connections_load(
    ns: &Netns,
    cgroup: &TestCgroup,
    vip: &str,
    rps: u32,
    secs: u32,
) -> Vec<u64> {
    let mut cmd = Command::new(client::rdt_load_bin());
    ns.configure(&mut cmd);
    cgroup.configure(&mut cmd);
    client::rdt_load(cmd, vip, rps, f64::from(secs), &["--new-connections"])
        .iter()
        .map(|v| v["status"].as_u64().expect("status"))
        .collect()
}

/// Waits until `server` has had `n` more requests (a steady load flowing
/// for a while), however fast the machine is.
fn more_requests(server: &HttpServer, what: &str, n: u64) {
    let until = server.requests() + n;
    wait_until(&format!("{n} more requests {what}"), TIMEOUT, || {
        server.requests() >= until
    });
}

#[test]
fn a_restart_under_steady_load_loses_no_request() {
    let mut node = Node::new();
    let east = node.http("127.0.10.1:8080", "east");
    node.start(&one_endpoint(), "us-east1", false);
    // Each request takes a while, so some are always in flight.
    node.servers[east].set_delay(Duration::from_millis(20));
    let args = node.args("us-east1");
    let statuses = {
        let Node {
            ns,
            cgroup,
            daemon,
            servers,
            ..
        } = &mut node;
        let (ns, cgroup, east) = (&*ns, &*cgroup, &servers[east]);
        thread::scope(|s| {
            let load = s.spawn(|| new_connections_load(ns, cgroup, VIP, 200, 6));
            more_requests(east, "through the first daemon", 300);
            let status = daemon.as_mut().unwrap().terminate().unwrap();
            assert!(status.success(), "{status}");
            more_requests(east, "while no daemon runs", 50);
            *daemon = Some(start_daemon(ns, args));
            load.join().expect("the load")
        })
    };
    assert_all_ok("the load", &statuses, 1200, &node.log());
    assert!(
        node.log().contains("taking over the datapath"),
        "{}",
        node.log()
    );
}

/// `getaddrinfo("mydb.com")` (A and AAAA) in a loop for `secs` seconds, as
/// an app of the cgroup whose resolver asks the node's nameserver once,
/// with no retry: (lookups that gave `vip` and an IPv6 VIP, the others with
/// what went wrong).
fn lookups(ns: &Netns, cgroup: &TestCgroup, vip: &str, secs: u32) -> (u64, Vec<String>) {
    let script = format!(
        "
import socket, time
ok, bad, end = 0, [], time.time() + {secs}
while time.time() < end:
    try:
        got = {{a[4][0] for a in socket.getaddrinfo('mydb.com', 80, proto=socket.IPPROTO_TCP)}}
        v6 = [a for a in got if a.startswith('2001:2:')]
        if len(got) == 2 and '{vip}' in got and len(v6) == 1:
            ok += 1
        else:
            bad.append('answered %s' % sorted(got))
    except Exception as e:
        bad.append('failed: %s' % e)
    time.sleep(0.01)
print(ok)
for b in bad:
    print(b)
"
    );
    let out = Client::new(ns, "python3")
        .args(["-c", &script])
        .cgroup(cgroup)
        .resolv_conf("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        .timeout(TIMEOUT + Duration::from_secs(u64::from(secs)))
        .run()
        .expect("running the lookups");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let ok = lines.next().and_then(|l| l.parse().ok()).expect("a count");
    (ok, lines.map(str::to_owned).collect())
}

#[test]
fn a_take_over_under_load_fails_no_request_and_no_lookup_even_with_tls_origination() {
    let (mut node, ca, ca_file) = origination::node();
    let east = origination::https(
        &node,
        origination::EAST_TLS,
        "east",
        ca.leaf(&["east.test"]),
    );
    let vip = origination::VIP;
    node.write_config(
        &(origination::entry(&[("east.test", "us-east1")]) + &origination::rule(&ca_file, None)),
    );
    // Each daemon keeps its own readiness, as each pod's probe asks it.
    let ready_files = [
        node.dir.path().join("old-ready"),
        node.dir.path().join("new-ready"),
    ];
    let with_ready_file = |i: usize| {
        let mut args = node.args("us-east1");
        args.extend(["--ready-file".into(), ready_files[i].display().to_string()]);
        args
    };
    let old_args = with_ready_file(0);
    let mut args = with_ready_file(1);
    args.push("--take-over".into());
    node.daemon = Some(start_daemon(&node.ns, old_args));
    let first = node.daemon.as_ref().unwrap().pid();
    assert_eq!(ready(&ready_files[0]), Ok(first));
    let Node {
        ns, cgroup, daemon, ..
    } = &mut node;
    let (ns, cgroup) = (&*ns, &*cgroup);
    let (statuses, (resolved, unresolved), second) = thread::scope(|s| {
        let load = s.spawn(|| new_connections_load(ns, cgroup, vip, 100, 6));
        let dns = s.spawn(|| lookups(ns, cgroup, vip, 6));
        let more_requests = |what: &str, n: u64| {
            let until = east.requests() + n;
            wait_until(&format!("{n} more requests {what}"), TIMEOUT, || {
                east.requests() >= until
            });
        };
        more_requests("through the old daemon", 100);
        let second = start_daemon(ns, args);
        let old = daemon.as_mut().unwrap();
        let handed = format!(
            "handed the listeners and the datapath over to pid {}",
            second.pid()
        );
        wait_until("the old daemon's handover", TIMEOUT, || {
            old.log().contains(&handed)
        });
        // The old pod is not ready any more, the new one is, though the
        // admin port (shared, with host networking) now answers for both.
        assert_eq!(ready(&ready_files[1]), Ok(second.pid()));
        let not_ready = ready(&ready_files[0]).unwrap_err();
        assert!(not_ready.contains("handed over"), "{not_ready}");
        // Kubernetes deletes the old pod once the new one is ready; the
        // new one serves meanwhile.
        more_requests("through the new daemon", 100);
        let status = old.terminate().unwrap();
        assert!(status.success(), "{status}\n{}", old.log());
        (
            load.join().expect("the load"),
            dns.join().expect("the lookups"),
            second,
        )
    });
    let old_log = node.log();
    node.daemon = Some(second);
    assert_all_ok(
        "the load",
        &statuses,
        600,
        &format!("old daemon:\n{old_log}\nnew daemon:\n{}", node.log()),
    );
    assert!(
        unresolved.is_empty() && resolved > 50,
        "{resolved} lookups gave the VIP; the others: {unresolved:?}\n{old_log}"
    );
    assert!(old_log.contains("exiting"), "{old_log}");
    let log = node.log();
    for line in [
        format!("pid {first} holds"),
        "took over the listeners".to_owned(),
        format!("replacing those of pid {first}"),
    ] {
        assert!(log.contains(&line), "{line:?} in:\n{log}");
    }
    // The successor serves on its own now: through its proxy, over TLS.
    let accepted = log.matches(": accepted ").count();
    assert_eq!(node.curl(vip), Ok((200, "healthy: east".to_owned())));
    let log = node.log();
    assert!(log.matches(": accepted ").count() > accepted, "{log}");
    assert!(east.accepted() > 0);
    let eps = node.endpoints();
    assert_eq!(eps["daemon_running"], true, "{eps:#}");
    assert_eq!(eps["proxy_listening"], true, "{eps:#}");
}

/// `redirector ready --ready-file <file>`: the pid it reports ready, or
/// what it said.
fn ready(file: &std::path::Path) -> Result<u32, String> {
    let out = Command::new(redirector_tests::daemon::redirector_bin())
        .arg("ready")
        .arg("--ready-file")
        .arg(file)
        .output()
        .expect("running redirector ready");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        let pid = stdout
            .trim()
            .strip_prefix("ready (pid ")
            .and_then(|p| p.strip_suffix(')'))
            .and_then(|p| p.parse().ok());
        pid.ok_or_else(|| format!("unexpected output {stdout:?}"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
