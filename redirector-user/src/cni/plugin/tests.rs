use std::collections::BTreeMap;

use super::*;

/// The runtime's variables, as a table.
impl Env for BTreeMap<&str, &str> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key)
            .filter(|v| !v.is_empty())
            .map(|v| (*v).to_owned())
    }
}

const PREV: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/cni-1"}],
  "ips":[{"address":"10.244.1.7/24","gateway":"10.244.1.1","interface":0}],"dns":{}}"#;

fn config(extra: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"redirector-cni"{extra},"prevResult":{PREV}}}"#
    )
}

fn env<'a>(command: &'a str, extra: &[(&'a str, &'a str)]) -> BTreeMap<&'a str, &'a str> {
    let mut env = BTreeMap::from([
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "3f2a"),
        ("CNI_NETNS", "/proc/self/ns/net"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=sleep",
        ),
    ]);
    env.extend(extra.iter().copied());
    env
}

/// A socket path where nothing listens.
fn nowhere(dir: &tempfile::TempDir) -> String {
    format!(r#","socket":"{}""#, dir.path().join("cni.sock").display())
}

#[test]
fn a_config_parses_with_defaults() {
    let conf = NetConf::parse(
        br#"{"cniVersion":"0.4.0","name":"net","type":"redirector-cni","runtimeConfig":{}}"#,
    )
    .unwrap();
    assert_eq!(conf.cni_version, "0.4.0");
    assert_eq!(conf.name, "net");
    assert_eq!(conf.socket, PathBuf::from(protocol::DEFAULT_SOCKET));
    assert_eq!(conf.log_file, None);
    assert!(conf.prev_result.is_none());
    assert!(conf.unknown.is_empty(), "{:?}", conf.unknown);

    let conf = NetConf::parse(
        br#"{"cniVersion":"1.1.0","type":"redirector-cni","socket":"/run/x.sock",
             "log_file":"/var/log/r.log","prevResult":null,"sokcet":1,"converted_from":"10-a.conf"}"#,
    )
    .unwrap();
    assert_eq!(conf.socket, PathBuf::from("/run/x.sock"));
    assert_eq!(conf.log_file, Some(PathBuf::from("/var/log/r.log")));
    assert!(conf.prev_result.is_none(), "null is no result");
    assert_eq!(conf.unknown, ["sokcet"], "a typo is reported, not fatal");
}

#[test]
fn configs_the_runtime_got_wrong_are_errors_with_the_spec_codes() {
    let cases: [(&[u8], u32, &str); 8] = [
        (b"", code::DECODE, "not a JSON object"),
        (b"[1,2]", code::DECODE, "not a JSON object"),
        (b"{\"cniVersion\":", code::DECODE, "not a JSON object"),
        (br#"{"name":"n"}"#, code::INVALID_CONFIG, "no `cniVersion`"),
        (
            br#"{"cniVersion":"0.2.0"}"#,
            code::INCOMPATIBLE_VERSION,
            "does not speak CNI version \"0.2.0\"",
        ),
        (
            br#"{"cniVersion":"1.0.0","socket":5}"#,
            code::INVALID_CONFIG,
            "field `socket`",
        ),
        (
            br#"{"cniVersion":"1.0.0","socket":"relative.sock"}"#,
            code::INVALID_CONFIG,
            "not an absolute path",
        ),
        (
            br#"{"cniVersion":"1.0.0","log_file":["x"]}"#,
            code::INVALID_CONFIG,
            "field `log_file`",
        ),
    ];
    for (input, code, words) in cases {
        let err = NetConf::parse(input).unwrap_err();
        assert_eq!(
            err.code,
            code,
            "{err} for {:?}",
            String::from_utf8_lossy(input)
        );
        assert!(err.to_string().contains(words), "{err}");
    }
}

#[test]
fn errors_are_the_spec_error_object() {
    let err = CniError::new(code::INVALID_ENV, "CNI_NETNS is not set", "");
    let json: serde_json::Value = serde_json::from_str(&err.to_json("0.4.0")).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"cniVersion":"0.4.0","code":4,"msg":"CNI_NETNS is not set"})
    );
    let err = CniError::new(code::DECODE, "bad", "line 1");
    let json: serde_json::Value = serde_json::from_str(&err.to_json("1.0.0")).unwrap();
    assert_eq!(json["details"], "line 1");
}

#[test]
fn add_passes_the_previous_result_through_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    // No daemon at all: the pod is created as if the plugin were not there.
    let out = handle(&env("ADD", &[]), config(&nowhere(&dir)).as_bytes()).unwrap();
    assert_eq!(out, PREV);
}

#[test]
fn a_result_without_a_version_gets_the_configs() {
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        r#"{{"cniVersion":"0.3.1","name":"n","type":"redirector-cni"{},"prevResult":{{"ips":[]}}}}"#,
        nowhere(&dir)
    );
    let out = handle(&env("ADD", &[]), conf.as_bytes()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json, serde_json::json!({"cniVersion":"0.3.1","ips":[]}));
    // Alone in its list: an empty result in the config's version.
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"n","type":"redirector-cni"{}}}"#,
        nowhere(&dir)
    );
    let out = handle(&env("ADD", &[]), conf.as_bytes()).unwrap();
    assert_eq!(out, r#"{"cniVersion":"1.0.0"}"#);
}

#[test]
fn add_fails_only_for_the_runtimes_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let conf = config(&nowhere(&dir));
    let mut e = env("ADD", &[]);
    e.remove("CNI_NETNS");
    let (err, version) = handle(&e, conf.as_bytes()).unwrap_err();
    assert_eq!((err.code, version.as_str()), (code::INVALID_ENV, "1.0.0"));
    assert!(err.msg.contains("CNI_NETNS"), "{err}");

    let mut e = env("ADD", &[]);
    e.remove("CNI_CONTAINERID");
    let (err, _) = handle(&e, conf.as_bytes()).unwrap_err();
    assert!(err.msg.contains("CNI_CONTAINERID"), "{err}");

    let mut e = env("ADD", &[]);
    e.remove("CNI_COMMAND");
    let (err, version) = handle(&e, conf.as_bytes()).unwrap_err();
    assert_eq!(
        (err.code, version.as_str()),
        (code::INVALID_ENV, NEWEST_VERSION)
    );

    let (err, _) = handle(&env("FROB", &[]), conf.as_bytes()).unwrap_err();
    assert!(err.msg.contains("FROB"), "{err}");

    let (err, _) = handle(&env("ADD", &[]), b"{oops").unwrap_err();
    assert_eq!(err.code, code::DECODE);

    // A namespace that cannot be opened, or is no network namespace, is
    // not the runtime's error: logged, and the pod goes on.
    let file = dir.path().join("not-a-netns");
    fs::write(&file, "").unwrap();
    for netns in [file.to_str().unwrap(), "/nonexistent/netns"] {
        let out = handle(&env("ADD", &[("CNI_NETNS", netns)]), conf.as_bytes()).unwrap();
        assert_eq!(out, PREV);
    }
}

#[test]
fn del_never_fails_and_prints_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let conf = config(&nowhere(&dir));
    assert_eq!(handle(&env("DEL", &[]), conf.as_bytes()).unwrap(), "");
    // The namespace gone, no container id, a config it cannot read.
    let mut e = env("DEL", &[("CNI_NETNS", "/var/run/netns/gone")]);
    assert_eq!(handle(&e, conf.as_bytes()).unwrap(), "");
    e.remove("CNI_CONTAINERID");
    e.remove("CNI_NETNS");
    assert_eq!(handle(&e, b"not json").unwrap(), "");
}

#[test]
fn check_status_and_gc_succeed_without_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let conf = config(&nowhere(&dir));
    for command in ["CHECK", "STATUS", "GC"] {
        assert_eq!(handle(&env(command, &[]), conf.as_bytes()).unwrap(), "");
    }
    let (err, _) = handle(&env("CHECK", &[]), b"{}").unwrap_err();
    assert_eq!(err.code, code::INVALID_CONFIG);
}

#[test]
fn version_lists_what_the_plugin_speaks() {
    let out = handle(&env("VERSION", &[]), br#"{"cniVersion":"0.4.0"}"#).unwrap();
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["cniVersion"], "0.4.0");
    assert_eq!(
        json["supportedVersions"],
        serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    // Nothing, or a version it does not speak: the newest.
    for stdin in [&b""[..], br#"{"cniVersion":"9.9.9"}"#] {
        let out = handle(&env("VERSION", &[]), stdin).unwrap();
        assert!(out.contains(r#""cniVersion":"1.1.0""#), "{out}");
    }
}

#[test]
fn the_log_file_gets_a_line_per_pod_event() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("cni.log");
    let conf = config(&format!(
        r#"{},"log_file":"{}""#,
        nowhere(&dir),
        log.display()
    ));
    handle(&env("ADD", &[]), conf.as_bytes()).unwrap();
    handle(&env("DEL", &[]), conf.as_bytes()).unwrap();
    let text = fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains("ADD pod default/sleep container 3f2a netns /proc/self/ns/net: not served: connecting to the daemon at"),
        "{text}"
    );
    assert!(lines[1].contains(" DEL pod default/sleep"), "{text}");
    // Bounded: a big file moves aside.
    fs::write(&log, vec![b'x'; MAX_LOG as usize + 1]).unwrap();
    append_log(&log, "next\n").unwrap();
    assert_eq!(fs::read_to_string(&log).unwrap(), "next\n");
    assert!(dir.path().join("cni.log.1").exists());
}

#[test]
fn only_network_namespaces_are_opened() {
    assert!(open_netns(Path::new("/proc/self/ns/net")).is_ok());
    let err = open_netns(Path::new("/proc/self/ns/uts")).unwrap_err();
    assert!(err.to_string().contains("not a network namespace"), "{err}");
}

#[test]
fn log_lines_are_stamped_in_rfc3339_utc_seconds() {
    let now = utc_now();
    // 2026-12-07T05:31:50Z
    assert_eq!(now.len(), 20, "{now}");
    assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T', "{now}");
}
