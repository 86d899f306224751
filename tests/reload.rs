//! Hot reload on real BPF: the daemon notices its config file changing
//! however it was changed (written in place, renamed over, a Kubernetes
//! ConfigMap's `..data` symlink swapped) and the TLS files it names (a
//! rotated CA), with no signal; an invalid edit keeps the running config;
//! open app connections carry on (keep-alive HTTP follows the new config
//! from its next request, a TCP connection is left alone); an endpoint the
//! reload removed drains: its in-flight request finishes, its idle pooled
//! connection is closed.
//!
//! Waits are bounded (TIMEOUT) but never asserted as durations: the
//! machines are shared. The daemon logs how long each reload took.

use std::{
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use redirector_tests::{
    client::Client,
    istio::mydb_entry,
    pki::TestCa,
    scenario::{Node, TIMEOUT, count, wait_until},
    tcp::TcpServer,
};

const VIP: &str = "240.240.0.60";
const EAST: &str = "healthy: east";
const WEST: &str = "healthy: west";

/// `mydb.com` at VIP:80 → one STATIC endpoint on :8080.
fn to(ip: &str) -> String {
    mydb_entry(
        VIP,
        "STATIC",
        &format!("  - {{address: {ip}, locality: us-east1}}\n"),
    )
}

fn east_west() -> Node {
    let mut node = Node::new();
    node.http("127.0.10.1:8080", "east");
    node.http("127.0.10.2:8080", "west");
    node
}

/// Waits until a request through the VIP is answered `body`.
fn wait_for_answer(node: &Node, body: &str) {
    wait_until(&format!("answers from {body:?}"), TIMEOUT, || {
        node.curl(VIP).is_ok_and(|(s, b)| s == 200 && b == body)
    });
}

fn reloads(node: &Node) -> usize {
    node.log().matches("config reloaded").count()
}

#[test]
fn a_config_written_in_place_applies_without_a_signal() {
    let mut node = east_west();
    node.start(&to("127.0.10.1"), "us-east1", false);
    assert_eq!(count(&node.bodies(VIP, 2), EAST), 2);
    node.write_config(&to("127.0.10.2"));
    wait_for_answer(&node, WEST);
    assert_eq!(count(&node.bodies(VIP, 3), WEST), 3);
    assert!(node.log().contains("changed: reloading"), "{}", node.log());
    assert_eq!(reloads(&node), 1, "one reload per change:\n{}", node.log());
}

#[test]
fn a_config_renamed_over_the_old_one_applies() {
    let mut node = east_west();
    node.start(&to("127.0.10.1"), "us-east1", false);
    assert_eq!(count(&node.bodies(VIP, 2), EAST), 2);
    let tmp = node.dir.path().join(".redirector.yaml.tmp");
    std::fs::write(&tmp, to("127.0.10.2")).unwrap();
    std::fs::rename(&tmp, node.config_path()).unwrap();
    wait_for_answer(&node, WEST);
}

/// Writes `text` as a new ConfigMap version under `dir` and points
/// `..data` at it, as the kubelet's atomic writer does.
fn configmap_version(dir: &Path, version: u32, text: &str) {
    let name = format!("..2026_12_05_00_00_0{version}.000");
    std::fs::create_dir(dir.join(&name)).unwrap();
    std::fs::write(dir.join(&name).join("config.yaml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    symlink(&name, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[test]
fn a_configmap_symlink_swap_applies() {
    let mut node = east_west();
    let mount = node.dir.path().join("configmap");
    std::fs::create_dir(&mount).unwrap();
    configmap_version(&mount, 1, &to("127.0.10.1"));
    let config = mount.join("config.yaml");
    symlink("..data/config.yaml", &config).unwrap();
    // The daemon reads the ConfigMap's file, not the node's default path.
    let mut args = node.args("us-east1");
    let at = args.iter().position(|a| a == "--config").unwrap() + 1;
    args[at] = config.display().to_string();
    node.start_args(args);
    assert_eq!(count(&node.bodies(VIP, 2), EAST), 2);
    configmap_version(&mount, 2, &to("127.0.10.2"));
    wait_for_answer(&node, WEST);
}

#[test]
fn an_invalid_edit_is_rejected_and_the_running_config_keeps_serving() {
    let mut node = east_west();
    node.start(&to("127.0.10.1"), "us-east1", false);
    node.write_config("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nspec: [broken\n");
    wait_until("the rejection", TIMEOUT, || {
        node.log().contains("config reload rejected")
    });
    assert!(node.log().contains("redirector.yaml:3:"), "{}", node.log());
    assert_eq!(count(&node.bodies(VIP, 3), EAST), 3);
    // Fixed, it applies.
    node.write_config(&to("127.0.10.2"));
    wait_for_answer(&node, WEST);
}

/// Runs `python3 -c script` as the app, with [`STEPS`] defined: each
/// `step()` in the script waits until the test has run the next of
/// `steps`.
fn app_with_steps(node: &Node, script: &str, steps: &mut [&mut dyn FnMut()]) -> String {
    let dir = node.dir.path().to_owned();
    let script = STEPS.replace("DIR", &dir.display().to_string()) + script;
    thread::scope(|s| {
        let app = s.spawn(|| {
            Client::new(&node.ns, "python3")
                .args(["-c", &script])
                .cgroup(&node.cgroup)
                .timeout(TIMEOUT * 2)
                .run()
                .expect("running the python app")
        });
        for (k, step) in steps.iter_mut().enumerate() {
            let ready = dir.join(format!("ready{k}"));
            wait_until(&format!("the app at step {k}"), TIMEOUT, || ready.exists());
            step();
            std::fs::write(dir.join(format!("go{k}")), "").unwrap();
        }
        let out = app.join().expect("the app thread");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
}

const STEPS: &str = "
import os, time
_steps = [0]
def step():
    k = _steps[0]
    _steps[0] += 1
    open(f'DIR/ready{k}', 'w').close()
    for _ in range(400):
        if os.path.exists(f'DIR/go{k}'): return
        time.sleep(0.05)
    raise SystemExit(f'no go at step {k}')
";

#[test]
fn a_keep_alive_connection_follows_the_reload_from_its_next_request() {
    let mut node = east_west();
    node.start(&to("127.0.10.1"), "us-east1", false);
    let script = format!(
        "
import http.client
c = http.client.HTTPConnection('{VIP}', 80, timeout=10)
def get():
    c.request('GET', '/', headers={{'Host': 'mydb.com'}})
    r = c.getresponse()
    return r.status, r.read().decode(), c.sock.getsockname()
a = get()
step()
b = get()
print(a[0], a[1]); print(b[0], b[1]); print('same connection' if a[2] == b[2] else 'new connection')
"
    );
    let out = app_with_steps(
        &node,
        &script,
        &mut [&mut || {
            node.reload(&to("127.0.10.2"), "config reloaded");
        }],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["200 healthy: east", "200 healthy: west", "same connection"],
        "{out}\n{}",
        node.log()
    );
}

#[test]
fn an_established_tcp_connection_is_left_alone_by_a_reload() {
    let mut node = Node::new();
    let _east = TcpServer::start(&node.ns, "127.0.10.1:9000".parse().unwrap(), "east").unwrap();
    let _west = TcpServer::start(&node.ns, "127.0.10.2:9000".parse().unwrap(), "west").unwrap();
    let tcp = |ip: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: pg}}
spec:
  hosts: [pg.example]
  addresses: [{VIP}]
  resolution: STATIC
  ports: [{{number: 5432, name: tcp-pg, targetPort: 9000}}]
  endpoints: [{{address: {ip}, locality: us-east1}}]
"
        )
    };
    node.start(&tcp("127.0.10.1"), "us-east1", false);
    let script = format!(
        "
import socket
s = socket.create_connection(('{VIP}', 5432), timeout=10)
f = s.makefile('rwb')
print(f.readline().decode().strip())
f.write(b'before\\n'); f.flush(); print(f.readline().decode().strip())
step()
f.write(b'after\\n'); f.flush(); print(f.readline().decode().strip())
n = socket.create_connection(('{VIP}', 5432), timeout=10)
print(n.makefile('rb').readline().decode().strip())
"
    );
    let out = app_with_steps(
        &node,
        &script,
        &mut [&mut || {
            node.reload(&tcp("127.0.10.2"), "config reloaded");
        }],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["hello from east", "before", "after", "hello from west"],
        "{out}\n{}",
        node.log()
    );
}

#[test]
fn a_removed_endpoint_drains() {
    let mut node = east_west();
    let both = mydb_entry(
        VIP,
        "STATIC",
        "  - {address: 127.0.10.1, locality: us-east1}\n  - {address: 127.0.10.2, locality: us-west1}\n",
    ) + "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db}
spec:
  host: mydb.com
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1}
";
    node.start(&both, "us-east1", false);
    // An app connection open across the reload holds on to the config it
    // came in under, which must not keep east's connections alive.
    let script = format!(
        "
import http.client
c = http.client.HTTPConnection('{VIP}', 80, timeout=10)
def get():
    c.request('GET', '/', headers={{'Host': 'mydb.com'}})
    r = c.getresponse()
    return r.read().decode()
print(get())
step()
print(get())
step()
"
    );
    let mut slow = None;
    let out = app_with_steps(
        &node,
        &script,
        &mut [
            &mut || {
                assert_eq!(node.established_to("127.0.10.1:8080"), 1, "pooled");
                // A slow request is on its way to east when east is removed.
                node.servers[0].set_delay(Duration::from_millis(1500));
                thread::scope(|s| {
                    let request = s.spawn(|| node.curl(VIP));
                    wait_until("the slow request to reach east", TIMEOUT, || {
                        node.servers[0].requests() == 2
                    });
                    node.reload(&to("127.0.10.2"), "config reloaded");
                    slow = Some(request.join().expect("the slow request"));
                });
            },
            &mut || {
                // The app's connection is still open: nothing to east is.
                wait_until("no connection to east", TIMEOUT, || {
                    node.established_to("127.0.10.1:8080") == 0
                });
            },
        ],
    );
    assert_eq!(
        slow,
        Some(Ok((200, EAST.to_owned()))),
        "in flight: finished"
    );
    assert_eq!(out.lines().collect::<Vec<_>>(), [EAST, WEST], "{out}");
    assert_eq!(node.servers[0].requests(), 2);
}

#[test]
fn a_rotated_ca_file_reloads_tls_without_a_signal() {
    let mut node = Node::new();
    node.a_record("east.test", [127, 0, 10, 1], 30);
    let (old_ca, new_ca) = (TestCa::new(), TestCa::new());
    let east_cert = old_ca.leaf(&["east.test"]);
    let _east = redirector_tests::https::HttpsServer::start(
        &node.ns,
        "127.0.10.1:443".parse().unwrap(),
        "east",
        &east_cert.0,
        &east_cert.1,
    )
    .unwrap();
    let ca_file: PathBuf = TestCa::write(node.dir.path(), "ca.pem", &old_ca.cert_pem());
    let config = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db}}
spec:
  host: mydb.com
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {}}}
",
        mydb_entry(
            VIP,
            "DNS",
            "  - {address: east.test, locality: us-east1, ports: {http: 443}}\n"
        ),
        ca_file.display()
    );
    node.start(&config, "us-east1", false);
    assert_eq!(count(&node.bodies(VIP, 2), EAST), 2);
    // The CA file now holds a CA that did not sign east: the rotation
    // must take effect, pooled connections included.
    std::fs::write(&ca_file, new_ca.cert_pem()).unwrap();
    wait_until("the new CA to apply", TIMEOUT, || {
        node.curl(VIP)
            .is_ok_and(|(s, b)| s == 503 && b.contains("UnknownIssuer"))
    });
    assert!(
        node.log().contains("ca.pem changed: reloading"),
        "{}",
        node.log()
    );
}
