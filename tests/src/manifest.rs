//! The Kubernetes manifests of `deploy/`, read as the YAML they are, for
//! the tests that run their containers as written (`tests/deploy.rs` with
//! the binary, `tests/image.rs` from the image).

use std::{collections::BTreeMap, path::PathBuf};

use serde_json::Value;

/// `deploy/` of the workspace.
pub fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every document of `deploy/<file>`.
///
/// # Panics
/// If the file does not read or parse.
pub fn documents(file: &str) -> Vec<Value> {
    let path = deploy_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The pod spec of the DaemonSet in `deploy/<file>`.
///
/// # Panics
/// If there is none.
pub fn pod_spec(file: &str) -> Value {
    documents(file)
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .unwrap_or_else(|| panic!("a DaemonSet in deploy/{file}"))["spec"]["template"]["spec"]
        .clone()
}

/// The entry `name` of the pod's `list` (`containers`, `initContainers`).
///
/// # Panics
/// If there is none.
pub fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list}"))
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {list} entry {name}"))
}

/// A list of strings (args, a command).
///
/// # Panics
/// If `v` is not one.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap_or_else(|| panic!("not a string: {a}"))
                .to_owned()
        })
        .collect()
}

/// The value after `flag` in `args`.
///
/// # Panics
/// If `flag` is not there with a value.
pub fn flag(args: &[String], flag: &str) -> String {
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    args.get(at + 1)
        .unwrap_or_else(|| panic!("{flag} without a value"))
        .clone()
}

/// The hostPath of each hostPath volume of `pod`, by volume name.
pub fn host_paths(pod: &Value) -> BTreeMap<String, String> {
    pod["volumes"]
        .as_array()
        .map(|volumes| {
            volumes
                .iter()
                .filter_map(|v| {
                    Some((
                        v["name"].as_str()?.to_owned(),
                        v["hostPath"]["path"].as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The mount path of volume `name` in `container`.
///
/// # Panics
/// If the container does not mount it.
pub fn mount_path<'a>(container: &'a Value, name: &str) -> &'a str {
    container["volumeMounts"]
        .as_array()
        .and_then(|mounts| mounts.iter().find(|m| m["name"] == name))
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or_else(|| panic!("{} mounts no {name}", container["name"]))
}

/// The capabilities `container` adds, lowercase without `CAP_` (as
/// Kubernetes writes them, lowercased), after checking it drops all
/// others, is not privileged and cannot gain privileges.
///
/// # Panics
/// If the security context is not of that shape.
pub fn added_capabilities(container: &Value) -> Vec<String> {
    let sc = &container["securityContext"];
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{sc}"
    );
    assert_eq!(sc["privileged"], false, "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    assert_eq!(sc["runAsUser"], 0, "{sc}");
    sc["capabilities"]["add"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c.as_str().unwrap_or_default().to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default()
}

/// Bits of capability names as [`added_capabilities`] gives them.
///
/// # Panics
/// On a capability this does not know.
pub fn cap_bits(names: &[String]) -> u64 {
    names.iter().fold(0u64, |acc, n| {
        acc | match n.as_str() {
            "net_admin" => 1 << 12,
            "net_raw" => 1 << 13,
            "sys_ptrace" => 1 << 19,
            "sys_admin" => 1 << 21,
            "bpf" => 1 << 39,
            other => panic!("a capability this test does not know: {other}"),
        }
    })
}
