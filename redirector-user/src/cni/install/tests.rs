use std::{cell::Cell, sync::mpsc};

use serde_json::json;

use super::*;

/// A node: a config dir, a bin dir and a stand-in for this binary.
struct Node {
    _dir: tempfile::TempDir,
    conf: PathBuf,
    bin: PathBuf,
    exe: PathBuf,
}

impl Node {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("net.d");
        let bin = dir.path().join("bin");
        fs::create_dir(&conf).unwrap();
        let exe = dir.path().join("redirector");
        fs::write(&exe, b"#!redirector\n").unwrap();
        Self {
            conf,
            bin,
            exe,
            _dir: dir,
        }
    }

    fn write(&self, name: &str, json: &Value) {
        fs::write(
            self.conf.join(name),
            serde_json::to_vec_pretty(json).unwrap(),
        )
        .unwrap();
    }

    fn read(&self, name: &str) -> Value {
        serde_json::from_slice(&fs::read(self.conf.join(name)).unwrap()).unwrap()
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.conf)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn args(&self) -> InstallArgs {
        InstallArgs {
            bin_dir: self.bin.clone(),
            conf_dir: self.conf.clone(),
            socket: protocol::DEFAULT_SOCKET.into(),
            log_file: None,
            wait: false,
            wait_timeout: Duration::from_secs(5),
        }
    }

    fn install(&self) -> Result<String, InstallError> {
        Installer::new(&self.exe).install(&self.args())
    }

    fn uninstall(&self) -> Result<Vec<String>, InstallError> {
        Installer::new(&self.exe).uninstall(&UninstallArgs {
            bin_dir: self.bin.clone(),
            conf_dir: self.conf.clone(),
        })
    }

    fn plugin(&self) -> PathBuf {
        self.bin.join("redirector-cni")
    }
}

fn calico() -> Value {
    json!({"cniVersion":"0.3.1","name":"k8s-pod-network","plugins":[
        {"type":"calico","ipam":{"type":"calico-ipam"},"kubernetes":{"kubeconfig":"/etc/cni/net.d/calico-kubeconfig"}},
        {"type":"portmap","snat":true,"capabilities":{"portMappings":true}}]})
}

fn ours() -> Value {
    json!({"type":"redirector-cni","socket":"/run/redirector/cni.sock"})
}

#[test]
fn a_conflist_gets_the_entry_last_and_the_binary_is_copied() {
    let node = Node::new();
    node.write("10-calico.conflist", &calico());
    let said = node.install().unwrap();
    assert!(said.contains("chained redirector-cni in"), "{said}");
    let after = node.read("10-calico.conflist");
    let mut want = calico();
    want["plugins"].as_array_mut().unwrap().push(ours());
    assert_eq!(after, want);
    assert_eq!(fs::read(node.plugin()).unwrap(), b"#!redirector\n");
    let mode = fs::metadata(node.plugin()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    // Nothing left aside, in either directory.
    assert_eq!(node.names(), ["10-calico.conflist"]);
    assert_eq!(fs::read_dir(&node.bin).unwrap().count(), 1);
}

#[test]
fn installing_twice_changes_nothing_the_second_time() {
    let node = Node::new();
    node.write("10-calico.conflist", &calico());
    node.install().unwrap();
    let path = node.conf.join("10-calico.conflist");
    let (bytes, id) = (
        fs::read(&path).unwrap(),
        FileId::of(&fs::metadata(&path).unwrap()),
    );
    let said = node.install().unwrap();
    assert!(said.contains("already chained"), "{said}");
    assert_eq!(fs::read(&path).unwrap(), bytes);
    assert_eq!(
        FileId::of(&fs::metadata(&path).unwrap()),
        id,
        "not even rewritten"
    );
    // A new socket updates the entry in place.
    let mut args = node.args();
    args.socket = "/run/other/cni.sock".into();
    Installer::new(&node.exe).install(&args).unwrap();
    let plugins = node.read("10-calico.conflist")["plugins"].clone();
    assert_eq!(plugins.as_array().unwrap().len(), 3);
    assert_eq!(plugins[2]["socket"], "/run/other/cni.sock");
}

#[test]
fn uninstall_restores_the_file_and_removes_the_binary_idempotently() {
    let node = Node::new();
    node.write("10-calico.conflist", &calico());
    let mode = 0o640;
    fs::set_permissions(
        node.conf.join("10-calico.conflist"),
        fs::Permissions::from_mode(mode),
    )
    .unwrap();
    node.install().unwrap();
    let said = node.uninstall().unwrap();
    assert_eq!(said.len(), 2, "{said:?}");
    assert_eq!(node.read("10-calico.conflist"), calico());
    let meta = fs::metadata(node.conf.join("10-calico.conflist")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, mode, "mode kept");
    assert!(!node.plugin().exists());
    let said = node.uninstall().unwrap();
    assert!(said[0].starts_with("nothing to remove"), "{said:?}");
    assert_eq!(node.read("10-calico.conflist"), calico());
}

#[test]
fn a_single_plugin_conf_becomes_a_conflist_and_comes_back() {
    let node = Node::new();
    let bridge = json!({"cniVersion":"1.0.0","name":"bridge","type":"bridge","bridge":"cni0",
                        "isGateway":true,"ipam":{"type":"host-local","subnet":"10.22.0.0/16"}});
    node.write("10-bridge.conf", &bridge);
    node.write(
        "99-loopback.conf",
        &json!({"cniVersion":"1.0.0","type":"loopback"}),
    );
    let said = node.install().unwrap();
    assert!(said.contains("became"), "{said}");
    assert_eq!(node.names(), ["10-bridge.conflist", "99-loopback.conf"]);
    assert_eq!(
        node.read("10-bridge.conflist"),
        json!({"cniVersion":"1.0.0","name":"bridge","plugins":[bridge.clone(),
              {"type":"redirector-cni","socket":"/run/redirector/cni.sock",
               "converted_from":"10-bridge.conf"}]})
    );
    // Idempotent on the converted file too.
    assert!(node.install().unwrap().contains("already chained"));
    node.uninstall().unwrap();
    assert_eq!(node.names(), ["10-bridge.conf", "99-loopback.conf"]);
    assert_eq!(node.read("10-bridge.conf"), bridge);
}

#[test]
fn the_first_file_by_name_is_the_primary() {
    let node = Node::new();
    node.write("20-flannel.conflist", &calico());
    node.write("10-calico.conflist", &calico());
    node.write("30-x.json", &json!({"cniVersion":"1.0.0","type":"x"}));
    // Skipped: other extensions, hidden temp files, directories.
    fs::write(node.conf.join("calico-kubeconfig"), "{").unwrap();
    fs::write(node.conf.join("00-notes.txt"), "{").unwrap();
    fs::create_dir(node.conf.join("05-dir.conflist")).unwrap();
    node.install().unwrap();
    let count = |name: &str| {
        node.read(name)["plugins"].as_array().map_or(0, |p| {
            p.iter().filter(|p| p["type"] == "redirector-cni").count()
        })
    };
    assert_eq!(count("10-calico.conflist"), 1);
    assert_eq!(count("20-flannel.conflist"), 0);
    // A .json that is first.
    let node = Node::new();
    node.write(
        "05-ptp.json",
        &json!({"cniVersion":"0.4.0","name":"p","type":"ptp"}),
    );
    node.write("10-calico.conflist", &calico());
    node.install().unwrap();
    assert_eq!(node.names(), ["05-ptp.conflist", "10-calico.conflist"]);
    node.uninstall().unwrap();
    assert_eq!(node.names(), ["05-ptp.json", "10-calico.conflist"]);
}

#[test]
fn a_conversion_that_would_change_the_primary_is_refused() {
    let node = Node::new();
    node.write("10-a.conf", &json!({"cniVersion":"1.0.0","type":"bridge"}));
    // Sorts after 10-a.conf and before 10-a.conflist.
    node.write(
        "10-a.conf.json",
        &json!({"cniVersion":"1.0.0","type":"ptp"}),
    );
    let err = node.install().unwrap_err().to_string();
    assert!(
        err.contains("10-a.conflist") && err.contains("10-a.conf.json sorts before it"),
        "{err}"
    );
    assert_eq!(
        node.names(),
        ["10-a.conf", "10-a.conf.json"],
        "nothing written"
    );
}

#[test]
fn broken_primaries_are_named_with_the_problem() {
    let node = Node::new();
    fs::write(node.conf.join("10-a.conflist"), "{\"name\": ").unwrap();
    let err = node.install().unwrap_err().to_string();
    assert!(err.contains("10-a.conflist: not JSON"), "{err}");
    node.write("10-a.conflist", &json!({"cniVersion":"1.0.0","name":"n"}));
    let err = node.install().unwrap_err().to_string();
    assert!(err.contains("10-a.conflist: no `plugins` array"), "{err}");
    node.write(
        "10-a.conflist",
        &json!({"cniVersion":"0.2.0","name":"n","plugins":[{"type":"a"}]}),
    );
    let err = node.install().unwrap_err().to_string();
    assert!(
        err.contains("\"0.2.0\" is not one redirector-cni speaks"),
        "{err}"
    );
    fs::remove_file(node.conf.join("10-a.conflist")).unwrap();
    let err = node.install().unwrap_err().to_string();
    assert!(
        err.contains("no CNI network config in") && err.contains("--wait"),
        "{err}"
    );
}

#[test]
fn wait_polls_until_the_primary_appears() {
    let node = Node::new();
    let mut args = node.args();
    args.wait = true;
    let (tx, rx) = mpsc::channel();
    let conf = node.conf.clone();
    let writer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        // Half a file first, as a careless installer writes it.
        fs::write(conf.join("10-calico.conflist"), "{\"cniVersion\":").unwrap();
        thread::sleep(Duration::from_millis(100));
        fs::write(
            conf.join("10-calico.conflist"),
            serde_json::to_vec(&calico()).unwrap(),
        )
        .unwrap();
        tx.send(()).unwrap();
    });
    let mut installer = Installer::new(&node.exe);
    installer.poll = Duration::from_millis(10);
    installer.install(&args).unwrap();
    rx.recv().unwrap();
    writer.join().unwrap();
    assert_eq!(
        node.read("10-calico.conflist")["plugins"][2]["type"],
        "redirector-cni"
    );
    // And gives up at the deadline, saying on what.
    let node = Node::new();
    let mut args = node.args();
    args.wait = true;
    args.wait_timeout = Duration::from_millis(50);
    let mut installer = Installer::new(&node.exe);
    installer.poll = Duration::from_millis(10);
    let err = installer.install(&args).unwrap_err().to_string();
    assert!(
        err.contains("waited") && err.contains("no CNI network config in"),
        "{err}"
    );
}

#[test]
fn a_file_rewritten_by_another_tool_meanwhile_is_read_again() {
    let node = Node::new();
    node.write("10-calico.conflist", &calico());
    let path = node.conf.join("10-calico.conflist");
    let rewrites = Cell::new(0);
    let mut rewritten = calico();
    rewritten["plugins"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type":"bandwidth"}));
    let rewritten_bytes = serde_json::to_vec(&rewritten).unwrap();
    let mut installer = Installer::new(&node.exe);
    installer.before_replace = Box::new(|p: &Path| {
        assert_eq!(p, path);
        if rewrites.get() == 0 {
            // The cluster's CNI writes its own file again, renamed over.
            let tmp = node.conf.join(".calico.tmp");
            fs::write(&tmp, &rewritten_bytes).unwrap();
            fs::rename(&tmp, &path).unwrap();
        }
        rewrites.set(rewrites.get() + 1);
    });
    installer.install(&node.args()).unwrap();
    assert_eq!(rewrites.get(), 2, "read again once");
    let mut want = rewritten.clone();
    want["plugins"].as_array_mut().unwrap().push(ours());
    assert_eq!(node.read("10-calico.conflist"), want, "its change kept");

    // A tool that rewrites it all the time: a clear error, nothing lost.
    let mut installer = Installer::new(&node.exe);
    let mut args = node.args();
    args.socket = "/run/other.sock".into();
    installer.before_replace = Box::new(|p: &Path| {
        let bytes = fs::read(p).unwrap();
        fs::write(p, bytes).unwrap();
        // Timestamps of two writes can be equal on coarse clocks: the
        // size tells them apart.
        let mut f = OpenOptions::new().append(true).open(p).unwrap();
        f.write_all(b" ").unwrap();
    });
    let err = installer.install(&args).unwrap_err().to_string();
    assert!(err.contains("changed while being edited"), "{err}");
}

#[test]
fn an_entry_removed_by_a_rewrite_comes_back_and_uninstall_keeps_the_rest() {
    let node = Node::new();
    node.write("10-calico.conflist", &calico());
    node.install().unwrap();
    // Calico restarts and writes its list again, without us, plus a field.
    let mut again = calico();
    again["plugins"][0]["mtu"] = json!(1450);
    node.write("10-calico.conflist", &again);
    node.install().unwrap();
    let mut want = again.clone();
    want["plugins"].as_array_mut().unwrap().push(ours());
    assert_eq!(node.read("10-calico.conflist"), want);
    // Someone chains another plugin after ours; uninstall takes only ours.
    let mut grown = want.clone();
    grown["plugins"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type":"tuning"}));
    node.write("10-calico.conflist", &grown);
    node.uninstall().unwrap();
    let mut left = again.clone();
    left["plugins"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type":"tuning"}));
    assert_eq!(node.read("10-calico.conflist"), left);
}

#[test]
fn a_single_file_written_again_replaces_the_list_made_from_it() {
    let node = Node::new();
    let bridge = json!({"cniVersion":"1.0.0","name":"bridge","type":"bridge"});
    node.write("10-bridge.conf", &bridge);
    node.install().unwrap();
    // The CNI writes its .conf again: it is first, and we chain it again.
    let mut newer = bridge.clone();
    newer["mtu"] = json!(9000);
    node.write("10-bridge.conf", &newer);
    node.install().unwrap();
    assert_eq!(node.names(), ["10-bridge.conflist"]);
    assert_eq!(node.read("10-bridge.conflist")["plugins"][0], newer);
    // Written again, then uninstalled: the stale list goes.
    node.write("10-bridge.conf", &newer);
    node.uninstall().unwrap();
    assert_eq!(node.names(), ["10-bridge.conf"]);
    assert_eq!(node.read("10-bridge.conf"), newer);
}

#[test]
fn the_binary_stays_while_a_config_still_names_it() {
    let node = Node::new();
    node.write("10-calico.conflist", &calico());
    node.install().unwrap();
    fs::write(
        node.conf.join("20-broken.conflist"),
        r#"{"plugins":[{"type":"redirector-cni"}"#,
    )
    .unwrap();
    let err = node.uninstall().unwrap_err().to_string();
    assert!(
        err.contains("20-broken.conflist") && err.contains("is kept"),
        "{err}"
    );
    assert!(node.plugin().exists());
    assert_eq!(
        node.read("10-calico.conflist"),
        calico(),
        "the rest is done"
    );
}
