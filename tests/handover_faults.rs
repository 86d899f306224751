//! Handovers that go wrong, on real BPF and real sockets (see
//! `redirector-user/src/handover.rs`): a successor killed right after it
//! received the listeners leaves the old daemon serving (not one request
//! of a steady load fails) and a later take-over works; a root process
//! without capabilities asking for the listeners is refused and the daemon
//! serves on; an endpoint ejected before a take-over stays ejected after
//! it; pods are served again on their own sockets; a successor killed once
//! it serves, or held up past the deadline, leaves the old daemon's
//! programs, maps and death-watch registration in place.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use redirector_common::{Life, map_names};
use redirector_tests::{
    cgroup::TestCgroup,
    client,
    daemon::redirector_bin,
    istio::{mydb_entry, mydb_rule},
    netns::Netns,
    process,
    scenario::{Node, TIMEOUT, assert_all_ok, start_daemon, wait_until},
    tempdir::TempDir,
};

const VIP: &str = "240.240.0.71";

fn one_endpoint() -> String {
    mydb_entry(
        VIP,
        "STATIC",
        "  - {address: 127.0.10.1, locality: us-east1}\n",
    )
}

/// `rdt-load` in the app's position, a new connection per request, each
/// with a 10 s timeout: the status of every request (0: no answer).
fn load(ns: &Netns, cgroup: &TestCgroup, rps: u32, secs: u32) -> Vec<serde_json::Value> {
    let mut cmd = Command::new(client::rdt_load_bin());
    ns.configure(&mut cmd);
    cgroup.configure(&mut cmd);
    client::rdt_load(
        cmd,
        VIP,
        rps,
        f64::from(secs),
        &["--new-connections", "--timeout", "10"],
    )
}

fn statuses(requests: &[serde_json::Value]) -> Vec<u64> {
    requests
        .iter()
        .map(|v| v["status"].as_u64().expect("status"))
        .collect()
}

/// The daemon with `args` in `ns`, logging to `log`, not waited for.
fn spawn(ns: &Netns, args: &[String], log: &Path, env: &[(&str, &str)]) -> Child {
    let file = File::create(log).unwrap();
    let mut cmd = Command::new(redirector_bin());
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    ns.configure(&mut cmd);
    cmd.spawn().expect("starting the successor")
}

/// The time of day (seconds) of the first line of `log` containing
/// `needle`, from its timestamp (`2026-12-07T14:55:21.704701Z ...`).
fn logged_at(log: &str, needle: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(needle))?;
    let time = line.split_once('T')?.1.split_once('Z')?.0;
    let mut parts = time.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// Where the daemon holding `pin_dir` takes handover requests (as
/// `datapath::handover_path` names it).
fn handover_socket(pin_dir: &Path) -> PathBuf {
    let name: String = pin_dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    PathBuf::from(format!("/run/redirector/{name}.handover"))
}

/// A take-over under a steady load (100 new connections a second for 8 s)
/// whose successor kills itself at `point` (`REDIRECTOR_TEST_KILL_SELF`,
/// see `app.rs`); returns when the old daemon serves again and more
/// requests went through it: every request and the successor's log.
fn killed_during_take_over(
    node: &Node,
    east: usize,
    point: &str,
) -> (Vec<serde_json::Value>, String) {
    let mut args = node.args("us-east1");
    args.push("--take-over".into());
    let dir = TempDir::new("successor").unwrap();
    let log_path = dir.path().join("successor.log");
    let successor_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let (ns, cgroup, east) = (&node.ns, &node.cgroup, &node.servers[east]);
    let old = node.daemon.as_ref().unwrap();
    let statuses = thread::scope(|s| {
        let load = s.spawn(|| load(ns, cgroup, 100, 8));
        let more = |what: &str, n: u64| {
            let until = east.requests() + n;
            wait_until(&format!("{n} more requests {what}"), TIMEOUT, || {
                east.requests() >= until
            });
        };
        more("through the old daemon", 100);
        let mut successor = spawn(
            ns,
            &args,
            &log_path,
            &[("REDIRECTOR_TEST_KILL_SELF", point)],
        );
        let status = process::wait_timeout(&mut successor, TIMEOUT)
            .unwrap()
            .expect("the successor to kill itself");
        let killed = Instant::now();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "{}",
            successor_log()
        );
        while !old
            .log()
            .contains("did not take over: this daemon serves again")
        {
            assert!(
                killed.elapsed() < TIMEOUT,
                "the old daemon did not serve again:\n{}",
                old.log()
            );
            thread::sleep(Duration::from_millis(5));
        }
        // For the record (not asserted: the machine may be loaded): from
        // the end of the exchange to accepting again, in the old daemon's log.
        let old_log = old.log();
        if let (Some(ended), Some(again)) = (
            logged_at(&old_log, "closed the connection without confirming"),
            logged_at(&old_log, "did not take over: this daemon serves again"),
        ) {
            eprintln!(
                "{point}: serving again {:.1} ms after the successor's end",
                (again - ended) * 1000.0
            );
        }
        let log = successor_log();
        if let (Some(start), Some(asked)) = (
            log.lines().next().and_then(|l| logged_at(l, "")),
            logged_at(&log, "the programs load and the pinned maps fit"),
        ) {
            eprintln!(
                "the successor's checks before asking: {:.0} ms after its first log line",
                (asked - start) * 1000.0
            );
        }
        more("through the old daemon again", 100);
        load.join().expect("the load")
    });
    (statuses, successor_log())
}

#[test]
fn a_successor_killed_right_after_it_received_the_listeners_fails_no_request_and_the_old_daemon_serves_on()
 {
    let mut node = Node::new();
    let east = node.http("127.0.10.1:8080", "east");
    node.start(&one_endpoint(), "us-east1", false);
    node.servers[east].set_delay(Duration::from_millis(10));
    let first = node.daemon.as_ref().unwrap().pid();
    let (requests, successor_log) = killed_during_take_over(&node, east, "received");
    let statuses = statuses(&requests);
    assert!(
        successor_log.contains("took over the listeners")
            && !successor_log.contains("attached connect4"),
        "{successor_log}"
    );
    let mut args = node.args("us-east1");
    args.push("--take-over".into());
    let log = node.log();
    assert_all_ok(
        "the load",
        &statuses,
        800,
        &format!("old daemon:\n{log}\nsuccessor:\n{successor_log}"),
    );
    assert!(
        log.contains("closed the connection without confirming"),
        "{log}"
    );
    // The old daemon is still the one the pins name, and it serves through
    // its proxy.
    let accepted = log.matches(": accepted ").count();
    assert_eq!(node.curl(VIP), Ok((200, "healthy: east".to_owned())));
    assert!(node.log().matches(": accepted ").count() > accepted);
    let eps = node.endpoints();
    assert_eq!(eps["proxy_listening"], true, "{eps:#}");

    // A later take-over works.
    let second = start_daemon(&node.ns, args);
    let handed = format!(
        "handed the listeners and the datapath over to pid {}",
        second.pid()
    );
    wait_until("the old daemon's handover", TIMEOUT, || {
        node.log().contains(&handed)
    });
    let old_log = node.log();
    // For the record: how long new connects waited in the queues.
    if let (Some(asked), Some(handed)) = (
        logged_at(
            &old_log,
            &format!("pid {} asks for the listeners", second.pid()),
        ),
        logged_at(&old_log, &handed),
    ) {
        eprintln!(
            "phase 1 of a completed take-over (not accepting): {:.1} ms",
            (handed - asked) * 1000.0
        );
    }
    let status = node.daemon.as_mut().unwrap().terminate().unwrap();
    assert!(status.success(), "{status}\n{}", node.log());
    node.daemon = Some(second);
    assert_eq!(node.curl(VIP), Ok((200, "healthy: east".to_owned())));
    let log = node.log();
    assert!(
        log.contains(&format!("replacing those of pid {first}"))
            && log.contains("the previous daemon acknowledged"),
        "{log}"
    );
}

#[test]
fn a_root_process_without_capabilities_is_refused_the_listeners_and_the_daemon_serves_on() {
    let mut node = Node::new();
    node.http("127.0.10.1:8080", "east");
    node.start(&one_endpoint(), "us-east1", false);
    let socket = handover_socket(node.pins.path());
    // Root (uid 0), but with no capabilities at all: it asks as a
    // successor does.
    let script = r#"
import json, os, socket, sys
caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(b'{"version":2,"pid":%d}\n' % os.getpid())
msg, fds, _, _ = socket.recv_fds(s, 1 << 20, 300)
print(json.dumps({"uid": os.getuid(), "caps": caps, "fds": len(fds), "answer": msg.decode(errors='replace')}))
"#;
    let out = Command::new("setpriv")
        .args([
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--",
            "python3",
            "-c",
            script,
        ])
        .arg(&socket)
        .output()
        .expect("running the peer");
    assert!(out.status.success(), "{out:?}");
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the peer's JSON");
    assert_eq!(got["uid"], 0, "{got}");
    assert_eq!(got["caps"], "0000000000000000", "{got}");
    assert_eq!(got["fds"], 0, "it got descriptors: {got}");
    let answer = got["answer"].as_str().unwrap();
    assert!(
        answer.contains("refused") && answer.contains("lacks CAP_BPF (or CAP_SYS_ADMIN)"),
        "{answer}"
    );
    let log = node.log();
    assert!(
        log.contains("refusing a handover request")
            && log.contains("lacks CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN"),
        "{log}"
    );
    assert!(!log.contains("handing over"), "{log}");
    // Still serving, through its proxy.
    let accepted = log.matches(": accepted ").count();
    assert_eq!(node.curl(VIP), Ok((200, "healthy: east".to_owned())));
    assert!(node.log().matches(": accepted ").count() > accepted);
}

#[test]
fn an_endpoint_ejected_before_a_take_over_stays_ejected_after_it() {
    let mut node = Node::new();
    let east = node.http("127.0.10.1:8080", "east");
    let west = node.http("127.0.10.2:8080", "west");
    let config = mydb_entry(
        VIP,
        "STATIC",
        "  - {address: 127.0.10.1, locality: us-east1}\n  - {address: 127.0.10.2, locality: us-east1}\n",
    ) + &mydb_rule(
        "    outlierDetection:\n      consecutive5xxErrors: 1\n      interval: 1s\n      baseEjectionTime: 5m\n",
    );
    node.start(&config, "us-east1", false);
    node.servers[east].set_status(503).unwrap();
    wait_until("east's ejection", TIMEOUT, || {
        let _ = node.curl(VIP);
        node.log().contains("endpoint ejected by outlier detection")
    });
    // Healthy again: only its ejection keeps traffic from it.
    node.servers[east].set_status(200).unwrap();
    let mut args = node.args("us-east1");
    args.push("--take-over".into());
    let second = start_daemon(&node.ns, args);
    let status = node.daemon.as_mut().unwrap().terminate().unwrap();
    assert!(status.success(), "{status}\n{}", node.log());
    node.daemon = Some(second);
    let before = node.servers[east].requests();
    let bodies = node.bodies(VIP, 10);
    assert!(
        bodies.iter().all(|b| b == "healthy: west"),
        "{bodies:?}\n{}",
        node.log()
    );
    assert_eq!(node.servers[east].requests(), before);
    assert!(node.servers[west].requests() >= 10);
    let log = node.log();
    assert!(
        log.contains("took over the previous daemon's outlier state"),
        "{log}"
    );
    // The kernel's table says so too (what fail-open would use).
    let eps = node.endpoints();
    let east_ep = eps["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.10.1"))
        })
        .unwrap_or_else(|| panic!("no east in {eps:#}"));
    assert_eq!(east_ep["outlier_check"], "FAILED", "{eps:#}");
}

#[test]
fn a_successor_held_up_past_the_deadline_stops_unacknowledged_and_the_old_daemon_takes_all_back() {
    let mut node = Node::new();
    node.http("127.0.10.1:8080", "east");
    node.start(&one_endpoint(), "us-east1", false);
    let first = node.daemon.as_ref().unwrap().pid();
    let mut args = node.args("us-east1");
    args.push("--take-over".into());
    let dir = TempDir::new("successor").unwrap();
    let log_path = dir.path().join("successor.log");
    let successor_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // Held up (as by a stall on a loaded node) right after it received
    // the listeners, before it confirms: it stops itself there.
    let mut successor = spawn(
        &node.ns,
        &args,
        &log_path,
        &[("REDIRECTOR_TEST_KILL_SELF", "received:stop")],
    );
    wait_until("the successor to stop itself", TIMEOUT, || {
        successor_log().contains(&format!("signal {} to this process", libc::SIGSTOP))
    });
    let deadline = TIMEOUT + Duration::from_secs(15);
    wait_until("the old daemon to give up waiting", deadline, || {
        node.log()
            .contains("did not take over: this daemon serves again")
    });
    assert!(
        node.log().contains("did not confirm within 15s"),
        "{}",
        node.log()
    );
    assert_eq!(node.curl(VIP), Ok((200, "healthy: east".to_owned())));
    // Let go: it attaches, confirms, gets no ack and stops.
    process::signal(successor.id(), libc::SIGCONT).unwrap();
    let status = process::wait_timeout(&mut successor, deadline)
        .unwrap()
        .expect("the successor to stop");
    assert!(!status.success(), "{}", successor_log());
    assert!(
        successor_log().contains("did not acknowledge this daemon's confirmation"),
        "{}",
        successor_log()
    );
    wait_until("the old daemon to take the datapath back", TIMEOUT, || {
        node.log()
            .contains("is gone; the datapath is this daemon's as it left it")
    });
    // The maps name the old daemon again (the successor had written its
    // own pid), and it serves through its proxy.
    let eps = node.endpoints();
    assert_eq!(eps["daemon_pid"], first, "{eps:#}");
    assert_eq!(eps["daemon_running"], true, "{eps:#}");
    assert_eq!(eps["proxy_listening"], true, "{eps:#}");
    let accepted = node.log().matches(": accepted ").count();
    assert_eq!(node.curl(VIP), Ok((200, "healthy: east".to_owned())));
    assert!(node.log().matches(": accepted ").count() > accepted);
}

#[test]
fn a_successor_killed_once_it_serves_but_before_it_confirmed_fails_no_request_and_the_old_daemon_is_watched_again()
 {
    let mut node = Node::new();
    let east = node.http("127.0.10.1:8080", "east");
    node.start(&one_endpoint(), "us-east1", false);
    node.servers[east].set_delay(Duration::from_millis(10));
    let first = node.daemon.as_ref().unwrap().pid();
    // Killed with its programs attached and itself registered as the
    // serving daemon for the death watch, which marks it dying: connects
    // fail open until the old daemon registers itself again.
    let (requests, successor_log) = killed_during_take_over(&node, east, "serving");
    assert!(
        successor_log.contains("redirector ready"),
        "{successor_log}"
    );
    // The only requests that may fail are those the killed successor's
    // proxy took (nothing saves those, as with any kill -9): its accept
    // loops ran from when it had the listeners until the old daemon served
    // again, and it logged the app's address of those it handled.
    let carried: Vec<&str> = successor_log
        .lines()
        .filter(|l| l.contains(": accepted "))
        .filter_map(|l| l.split("peer=").nth(1)?.split_whitespace().next())
        .collect();
    let window = (
        logged_at(&successor_log, "took over the listeners").expect("a log line"),
        logged_at(&node.log(), "did not take over: this daemon serves again").expect("a log line"),
    );
    let failed: Vec<&serde_json::Value> = requests.iter().filter(|r| r["status"] != 200).collect();
    let not_carried: Vec<&&serde_json::Value> = failed
        .iter()
        .filter(|r| {
            // Seconds of the (UTC) day, as the log's timestamps.
            let connect = r["connect_unix_ms"].as_f64().unwrap_or(0.0) / 1000.0 % 86_400.0;
            let in_window = (window.0 - 0.01..=window.1 + 0.01).contains(&connect);
            !in_window && !carried.contains(&r["local"].as_str().unwrap_or(""))
        })
        .collect();
    eprintln!(
        "serving: {} requests failed, all taken by the killed successor ({} it had accepted)",
        failed.len(),
        carried.len()
    );
    assert_eq!(requests.len(), 800);
    assert!(
        not_carried.is_empty(),
        "failed, and not taken by the killed successor: {not_carried:#?}\nold daemon:\n{}\nsuccessor:\n{successor_log}",
        node.log()
    );
    // Its programs are the old daemon's again, the maps name it, and the
    // death watch does not take its listeners for a dying daemon's:
    // connects reach its proxy, not the endpoint straight.
    let log = node.log();
    assert!(
        log.contains("closed the connection without confirming"),
        "{log}"
    );
    let eps = node.endpoints();
    assert_eq!(eps["daemon_pid"], first, "{eps:#}");
    // The killed successor was marked dying; the old daemon is the
    // serving one again, not dying.
    let pin = node.pins.path().join("v3").join(map_names::LIFE);
    let data = MapData::from_pin(&pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    let life: Array<MapData, Life> = Array::try_from(Map::Array(data)).expect("an array of Life");
    let life = life.get(&0, 0).unwrap();
    assert_eq!((life.serving_pid, life.dying_pid), (first, 0), "{life:?}");
    let accepted = log.matches(": accepted ").count();
    for _ in 0..3 {
        assert_eq!(node.curl(VIP), Ok((200, "healthy: east".to_owned())));
    }
    let log = node.log();
    assert!(log.matches(": accepted ").count() >= accepted + 3, "{log}");
}

#[test]
fn pods_are_served_again_by_the_old_daemon_when_the_successor_dies_after_receiving_them() {
    let mut node = Node::new();
    let pods_net = node.pods().clone();
    let east_ns = node.endpoint_ns("east", "10.213.1.1/24", "10.213.1.2/24");
    let east = redirector_tests::http::HttpServer::start(
        &east_ns,
        "10.213.1.2:8080".parse().unwrap(),
        "east",
    )
    .expect("starting east");
    node.start(
        &mydb_entry(
            VIP,
            "STATIC",
            "  - {address: 10.213.1.2, locality: us-east1}\n",
        ),
        "us-east1",
        false,
    );
    let pods: Vec<_> = (0..3)
        .map(|i| pods_net.pod(&format!("app-{i}")).expect("creating a pod"))
        .collect();
    wait_until("3 pods served", TIMEOUT, || {
        node.report("pods")["namespaces"]
            .as_array()
            .is_some_and(|r| r.iter().filter(|r| r["state"] == "served").count() >= 4)
    });
    let mut args = node.args("us-east1");
    args.push("--take-over".into());
    let dir = TempDir::new("successor").unwrap();
    let log_path = dir.path().join("successor.log");
    let records: Vec<Vec<serde_json::Value>> = thread::scope(|s| {
        let loads: Vec<_> = pods
            .iter()
            .map(|pod| {
                s.spawn(move || {
                    let cmd = pod.command(client::rdt_load_bin());
                    client::rdt_load(cmd, VIP, 20, 6.0, &["--new-connections", "--timeout", "10"])
                })
            })
            .collect();
        let until = east.requests() + 60;
        wait_until("requests from the pods", TIMEOUT, || {
            east.requests() >= until
        });
        let mut successor = spawn(
            &node.ns,
            &args,
            &log_path,
            &[("REDIRECTOR_TEST_KILL_SELF", "received")],
        );
        process::wait_timeout(&mut successor, TIMEOUT)
            .unwrap()
            .expect("the successor to kill itself");
        wait_until("the old daemon to serve again", TIMEOUT, || {
            node.log()
                .contains("did not take over: this daemon serves again")
        });
        let until = east.requests() + 60;
        wait_until("more requests from the pods", TIMEOUT, || {
            east.requests() >= until
        });
        loads
            .into_iter()
            .map(|l| l.join().expect("a pod's load"))
            .collect()
    });
    let log = node.log();
    assert!(log.contains("namespaces_not_resumed=0"), "{log}");
    for (pod, records) in pods.iter().zip(&records) {
        assert_all_ok(pod.name(), &statuses(records), 120, &log);
    }
}
