//! The CNI plugin as a runtime runs it: the `redirector` binary exec'd
//! under the name `redirector-cni` (or as `redirector cni`), `CNI_*` in
//! its environment, the network config on stdin, the result read from
//! stdout. Against a real Unix socket server standing in for the daemon,
//! which checks that the descriptor it got is the pod's network namespace,
//! and with no daemon at all. Needs no root: the "pod" is this test's own
//! namespace, `/proc/self/ns/net`.

use std::{
    io::{BufRead as _, BufReader, IoSliceMut, Write as _},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{
            fs::{MetadataExt as _, symlink},
            net::{UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::{self, JoinHandle},
    time::Duration,
};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixAddr, recvmsg};
use serde_json::{Value, json};

const PREV: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"address":"10.244.0.9/24","interface":0}]}"#;

fn redirector() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_redirector"))
}

/// `<dir>/redirector-cni`, a link to the binary, as a `CNI_PATH` holds it.
fn plugin_in(dir: &Path) -> PathBuf {
    let path = dir.join("redirector-cni");
    symlink(redirector(), &path).unwrap();
    path
}

fn config(socket: &Path, extra: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"redirector-cni","socket":"{}"{extra},"prevResult":{PREV}}}"#,
        socket.display()
    )
}

fn pod_env(command: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", command.into()),
        ("CNI_CONTAINERID", "8d1e2c".into()),
        ("CNI_NETNS", "/proc/self/ns/net".into()),
        ("CNI_IFNAME", "eth0".into()),
        ("CNI_PATH", "/opt/cni/bin".into()),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-5d9".into(),
        ),
        // Even with every log line on: stdout carries only the result.
        ("REDIRECTOR_LOG", "debug".into()),
    ]
}

struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `program args` as the runtime does: only the CNI variables, the
/// config on stdin.
fn run(program: &Path, args: &[&str], env: &[(&str, String)], stdin: &str) -> Ran {
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A plugin that refuses its environment exits before reading stdin; the
    // write then fails with EPIPE, which Go's os/exec (libcni's runner)
    // ignores too.
    match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.unwrap(),
    }
    let out = child.wait_with_output().unwrap();
    Ran {
        ok: out.status.success(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// What the stand-in daemon got.
struct Received {
    request: Value,
    fds: Vec<OwnedFd>,
}

/// A daemon stand-in at `<dir>/cni.sock`: takes one request with its
/// descriptors and answers `answer`.
fn daemon(dir: &Path, answer: &'static str) -> (PathBuf, JoinHandle<Received>) {
    let path = dir.join("cni.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (first, fds) = recv_with_fds(&stream);
        let mut line = first;
        if !line.ends_with('\n') {
            BufReader::new(&stream).read_line(&mut line).unwrap();
        }
        (&stream).write_all(answer.as_bytes()).unwrap();
        Received {
            request: serde_json::from_str(line.trim_end()).unwrap(),
            fds,
        }
    });
    (path, handle)
}

fn recv_with_fds(stream: &UnixStream) -> (String, Vec<OwnedFd>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<UnixAddr>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .unwrap();
    let mut fds = Vec::new();
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these for us.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let n = msg.bytes;
    (String::from_utf8(buf[..n].to_vec()).unwrap(), fds)
}

/// Device and inode: a namespace's identity.
fn ns_identity(fd: &OwnedFd) -> (u64, u64) {
    let file = std::fs::File::from(fd.try_clone().unwrap());
    let meta = file.metadata().unwrap();
    (meta.dev(), meta.ino())
}

fn own_netns() -> (u64, u64) {
    let meta = std::fs::metadata("/proc/self/ns/net").unwrap();
    (meta.dev(), meta.ino())
}

#[test]
fn add_hands_the_pods_namespace_to_the_daemon_and_passes_the_result_through() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = plugin_in(dir.path());
    let (socket, daemon) = daemon(dir.path(), "{\"outcome\":\"served\",\"detail\":\"\"}\n");
    let ran = run(&plugin, &[], &pod_env("ADD"), &config(&socket, ""));
    assert!(ran.ok, "{}", ran.stderr);
    assert_eq!(ran.stdout.trim_end(), PREV, "the result, unchanged");
    let got = daemon.join().unwrap();
    assert_eq!(
        got.request,
        json!({"op":"add","container_id":"8d1e2c","netns":"/proc/self/ns/net",
               "pod_namespace":"shop","pod_name":"cart-5d9"})
    );
    assert_eq!(got.fds.len(), 1, "one descriptor");
    assert_eq!(ns_identity(&got.fds[0]), own_netns(), "the pod's netns");
    assert!(ran.stderr.contains("served"), "{}", ran.stderr);
}

#[test]
fn as_redirector_cni_del_tells_the_daemon_and_prints_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, daemon) = daemon(dir.path(), "{\"outcome\":\"released\"}\n");
    let ran = run(
        &redirector(),
        &["cni"],
        &pod_env("DEL"),
        &config(&socket, ""),
    );
    assert!(ran.ok, "{}", ran.stderr);
    assert_eq!(ran.stdout, "");
    let got = daemon.join().unwrap();
    assert_eq!(got.request["op"], "del");
    assert_eq!(got.request["container_id"], "8d1e2c");
    // The namespace still exists here, so it comes along.
    assert_eq!(got.fds.len(), 1);
    assert_eq!(ns_identity(&got.fds[0]), own_netns());
}

#[test]
fn without_a_daemon_the_pod_is_created_all_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = plugin_in(dir.path());
    let log = dir.path().join("redirector-cni.log");
    let socket = dir.path().join("no-daemon.sock");
    let conf = config(&socket, &format!(r#","log_file":"{}""#, log.display()));
    let ran = run(&plugin, &[], &pod_env("ADD"), &conf);
    assert!(ran.ok, "{}", ran.stderr);
    assert_eq!(ran.stdout.trim_end(), PREV);
    assert!(
        ran.stderr.contains("not served") && ran.stderr.contains("no-daemon.sock"),
        "{}",
        ran.stderr
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("ADD pod shop/cart-5d9 container 8d1e2c")
            && logged.contains("no-daemon.sock"),
        "{logged}"
    );
    // A daemon that answers nonsense, or hangs up: the same.
    let (socket, daemon) = daemon(dir.path(), "what?\n");
    let ran = run(&plugin, &[], &pod_env("ADD"), &config(&socket, ""));
    assert!(ran.ok, "{}", ran.stderr);
    assert_eq!(ran.stdout.trim_end(), PREV);
    assert!(ran.stderr.contains("answered nonsense"), "{}", ran.stderr);
    daemon.join().unwrap();
    // DEL, CHECK, STATUS without a daemon.
    let conf = config(&dir.path().join("gone.sock"), "");
    for command in ["DEL", "CHECK", "STATUS"] {
        let ran = run(&plugin, &[], &pod_env(command), &conf);
        assert!(ran.ok, "{command}: {}", ran.stderr);
        assert_eq!(ran.stdout, "", "{command}");
    }
}

#[test]
fn the_runtimes_errors_are_cni_error_objects_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = plugin_in(dir.path());
    let conf = config(&dir.path().join("cni.sock"), "");
    let error = |env: &[(&str, String)], stdin: &str| {
        let ran = run(&plugin, &[], env, stdin);
        assert!(!ran.ok, "{}", ran.stdout);
        assert_eq!(
            ran.stdout.lines().count(),
            1,
            "only the error: {}",
            ran.stdout
        );
        let json: Value = serde_json::from_str(&ran.stdout).unwrap();
        (json, ran.stderr)
    };
    let (json, _) = error(&[], &conf);
    assert_eq!(json["code"], 4);
    assert!(
        json["msg"].as_str().unwrap().contains("CNI_COMMAND"),
        "{json}"
    );
    let mut env = pod_env("ADD");
    env.retain(|(k, _)| *k != "CNI_NETNS");
    let (json, _) = error(&env, &conf);
    assert_eq!(
        (json["code"].clone(), json["cniVersion"].clone()),
        (json!(4), json!("1.0.0"))
    );
    let (json, _) = error(&pod_env("ADD"), "{not json");
    assert_eq!(json["code"], 6);
    let (json, _) = error(
        &pod_env("ADD"),
        r#"{"cniVersion":"0.1.0","name":"n","type":"redirector-cni"}"#,
    );
    assert_eq!(json["code"], 1);
}

#[test]
fn version_says_which_versions_it_speaks() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = plugin_in(dir.path());
    let ran = run(
        &plugin,
        &[],
        &[("CNI_COMMAND", "VERSION".into())],
        r#"{"cniVersion":"1.0.0"}"#,
    );
    assert!(ran.ok, "{}", ran.stderr);
    let json: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(
        json,
        json!({"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]})
    );
}
