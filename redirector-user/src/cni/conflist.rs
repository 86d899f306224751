//! The node's network config as JSON: which files count, what the runtime
//! accepts, and the plugin's entry put in and taken out (pure; the files
//! are `install.rs`'s).
//!
//! Runtimes (kubelet's libcni, containerd's go-cni, CRI-O) read
//! `*.conflist`, `*.conf` and `*.json` of the config directory and use the
//! lexicographically first. A `.conflist` holds `{"cniVersion", "name",
//! "plugins": [..]}`, run in order; a `.conf` or `.json` holds one plugin
//! (`{"cniVersion", "name", "type", ..}`). A chained plugin goes at the end
//! of the list, so a single-plugin file becomes a list first, as istio-cni
//! does it: `{"cniVersion", "name", "plugins": [<the file, as it was>,
//! <ours>]}`, in `<stem>.conflist`. Our entry remembers the file it was
//! made from (`converted_from`), so uninstall turns it back when nothing
//! else was added meanwhile.
//!
//! Keys keep their values but not their order (the JSON is rewritten
//! sorted, as Istio's Go rewrites it).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{PLUGIN_TYPE, SUPPORTED_VERSIONS};

/// A conflist made from a single plugin without a `name` gets istio-cni's.
const DEFAULT_NETWORK_NAME: &str = "k8s-pod-network";
/// Our entry's key for the single-plugin file it was made from.
pub(crate) const CONVERTED_FROM: &str = "converted_from";

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfError {
    #[error("{file}: not JSON: {error}")]
    Json {
        file: String,
        error: serde_json::Error,
    },
    #[error("{file}: {problem}")]
    Invalid { file: String, problem: String },
}

/// How the runtime reads a file, by its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `.conflist`: a list of plugins.
    List,
    /// `.conf`, `.json`: one plugin.
    Single,
}

impl Kind {
    /// The kind of a config file's name; `None` for files runtimes skip.
    pub(crate) fn of(name: &str) -> Option<Kind> {
        match Path::new(name).extension()?.to_str()? {
            "conflist" => Some(Kind::List),
            "conf" | "json" => Some(Kind::Single),
            _ => None,
        }
    }
}

/// What the plugin's entry says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) socket: PathBuf,
    pub(crate) log_file: Option<PathBuf>,
}

impl Entry {
    fn to_json(&self, converted_from: Option<&str>) -> Value {
        let mut entry = Map::new();
        entry.insert("type".into(), PLUGIN_TYPE.into());
        entry.insert(
            "socket".into(),
            self.socket.to_string_lossy().into_owned().into(),
        );
        if let Some(log) = &self.log_file {
            entry.insert("log_file".into(), log.to_string_lossy().into_owned().into());
        }
        if let Some(from) = converted_from {
            entry.insert(CONVERTED_FROM.into(), from.into());
        }
        Value::Object(entry)
    }
}

/// A config file, read as the runtime reads it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NetConfig {
    pub(crate) kind: Kind,
    pub(crate) json: Map<String, Value>,
}

fn invalid(file: &str, problem: impl Into<String>) -> ConfError {
    ConfError::Invalid {
        file: file.into(),
        problem: problem.into(),
    }
}

/// Parses `bytes` of the config file `file` and checks what the runtime
/// needs to use it: an object, a `type` for one plugin, a `name` and a
/// non-empty `plugins` array of objects for a list.
pub(crate) fn parse(file: &str, kind: Kind, bytes: &[u8]) -> Result<NetConfig, ConfError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|error| ConfError::Json {
        file: file.into(),
        error,
    })?;
    let Value::Object(json) = value else {
        return Err(invalid(file, "not a JSON object"));
    };
    match kind {
        Kind::Single => {
            if !json.get("type").is_some_and(Value::is_string) {
                return Err(invalid(
                    file,
                    "no plugin `type` (is it a conflist under a .conf or .json name?)",
                ));
            }
        }
        Kind::List => {
            if !json.get("name").is_some_and(Value::is_string) {
                return Err(invalid(file, "no `name` (runtimes refuse such a list)"));
            }
            match json.get("plugins") {
                Some(Value::Array(plugins)) if plugins.is_empty() => {
                    return Err(invalid(file, "the `plugins` array is empty"));
                }
                Some(Value::Array(plugins)) => {
                    if let Some(i) = plugins.iter().position(|p| !p.is_object()) {
                        return Err(invalid(file, format!("plugins[{i}] is not an object")));
                    }
                }
                Some(_) => return Err(invalid(file, "`plugins` is not an array")),
                None => return Err(invalid(file, "no `plugins` array")),
            }
        }
    }
    Ok(NetConfig { kind, json })
}

/// The config's `cniVersion`, checked against what the plugin speaks (a
/// runtime would fail every pod on a version it does not).
pub(crate) fn check_version(file: &str, config: &NetConfig) -> Result<(), ConfError> {
    match config.json.get("cniVersion") {
        Some(Value::String(v)) if SUPPORTED_VERSIONS.contains(&v.as_str()) => Ok(()),
        Some(Value::String(v)) => Err(invalid(
            file,
            format!(
                "cniVersion {v:?} is not one redirector-cni speaks ({}); chaining it there would \
                 fail every pod",
                SUPPORTED_VERSIONS.join(", ")
            ),
        )),
        _ => Err(invalid(file, "no `cniVersion`")),
    }
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// Whether the config holds our entry.
pub(crate) fn has_entry(config: &NetConfig) -> bool {
    match config.kind {
        Kind::Single => is_ours(&Value::Object(config.json.clone())),
        Kind::List => plugins(&config.json).iter().any(is_ours),
    }
}

fn plugins(json: &Map<String, Value>) -> &[Value] {
    json.get("plugins")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The conflist with our entry: updated where it is (and any duplicate
/// dropped), else appended; a single plugin (from file `file`) becomes a
/// list of it and ours.
pub(crate) fn with_entry(config: &NetConfig, file: &str, entry: &Entry) -> Map<String, Value> {
    match config.kind {
        Kind::Single => {
            let single = config.json.clone();
            let mut list = Map::new();
            list.insert(
                "cniVersion".into(),
                single.get("cniVersion").cloned().unwrap_or(Value::Null),
            );
            list.insert(
                "name".into(),
                single
                    .get("name")
                    .cloned()
                    .unwrap_or_else(|| DEFAULT_NETWORK_NAME.into()),
            );
            list.insert(
                "plugins".into(),
                Value::Array(vec![Value::Object(single), entry.to_json(Some(file))]),
            );
            list
        }
        Kind::List => {
            let mut list = config.json.clone();
            let mut out: Vec<Value> = Vec::new();
            let mut placed = false;
            for plugin in plugins(&config.json) {
                if !is_ours(plugin) {
                    out.push(plugin.clone());
                } else if !placed {
                    // Keep where it is, and what it was converted from.
                    let from = plugin.get(CONVERTED_FROM).and_then(Value::as_str);
                    out.push(entry.to_json(from));
                    placed = true;
                }
            }
            if !placed {
                out.push(entry.to_json(None));
            }
            list.insert("plugins".into(), Value::Array(out));
            list
        }
    }
}

/// A conflist without our entries.
#[derive(Debug, PartialEq)]
pub(crate) struct Removed {
    /// How many entries were taken out.
    pub(crate) count: usize,
    /// What to write: the list without them, or the single-plugin file it
    /// was made from (its name, its content) when nothing else was added.
    pub(crate) result: Restored,
}

#[derive(Debug, PartialEq)]
pub(crate) enum Restored {
    List(Map<String, Value>),
    Single {
        file: String,
        json: Map<String, Value>,
    },
}

/// `config` (a list) without our entries.
pub(crate) fn without_entry(config: &NetConfig) -> Removed {
    let all = plugins(&config.json);
    let converted_from = all
        .iter()
        .filter(|p| is_ours(p))
        .find_map(|p| p.get(CONVERTED_FROM).and_then(Value::as_str))
        .filter(|f| Kind::of(f) == Some(Kind::Single) && !f.contains('/'))
        .map(str::to_owned);
    let rest: Vec<Value> = all.iter().filter(|p| !is_ours(p)).cloned().collect();
    let count = all.len() - rest.len();
    if let (Some(file), [Value::Object(single)]) = (converted_from, rest.as_slice()) {
        return Removed {
            count,
            result: Restored::Single {
                file,
                json: single.clone(),
            },
        };
    }
    let mut list = config.json.clone();
    list.insert("plugins".into(), Value::Array(rest));
    Removed {
        count,
        result: Restored::List(list),
    }
}

/// The name a single-plugin file `file` gets as a list: `<stem>.conflist`.
pub(crate) fn list_name(file: &str) -> String {
    let stem = Path::new(file)
        .file_stem()
        .map_or_else(|| file.to_owned(), |s| s.to_string_lossy().into_owned());
    format!("{stem}.conflist")
}

/// Pretty JSON with a final newline, as config files are written.
pub(crate) fn to_bytes(json: &Map<String, Value>) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(json).expect("JSON serializes");
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entry() -> Entry {
        Entry {
            socket: "/run/redirector/cni.sock".into(),
            log_file: None,
        }
    }

    fn object(v: Value) -> Map<String, Value> {
        let Value::Object(m) = v else { panic!() };
        m
    }

    fn list(v: Value) -> NetConfig {
        NetConfig {
            kind: Kind::List,
            json: object(v),
        }
    }

    #[test]
    fn files_count_by_extension() {
        assert_eq!(Kind::of("10-calico.conflist"), Some(Kind::List));
        assert_eq!(Kind::of("10-bridge.conf"), Some(Kind::Single));
        assert_eq!(Kind::of("99-loopback.json"), Some(Kind::Single));
        assert_eq!(Kind::of("calico-kubeconfig"), None);
        assert_eq!(Kind::of(".10-x.conflist.tmp"), None);
        assert_eq!(list_name("10-bridge.conf"), "10-bridge.conflist");
        assert_eq!(list_name("10-bridge.json"), "10-bridge.conflist");
    }

    #[test]
    fn what_the_runtime_would_refuse_is_named() {
        let cases: [(Kind, &str, &str); 7] = [
            (Kind::List, "{", "not JSON"),
            (Kind::List, "[]", "not a JSON object"),
            (Kind::List, r#"{"name":"n"}"#, "no `plugins` array"),
            (Kind::List, r#"{"name":"n","plugins":{}}"#, "not an array"),
            (Kind::List, r#"{"name":"n","plugins":[]}"#, "empty"),
            (Kind::List, r#"{"plugins":[{"type":"a"}]}"#, "no `name`"),
            (
                Kind::Single,
                r#"{"name":"n","plugins":[]}"#,
                "no plugin `type`",
            ),
        ];
        for (kind, text, words) in cases {
            let err = parse("10-x.conflist", kind, text.as_bytes()).unwrap_err();
            let said = err.to_string();
            assert!(
                said.starts_with("10-x.conflist: ") && said.contains(words),
                "{said}"
            );
        }
        let old = list(json!({"cniVersion":"0.2.0","name":"n","plugins":[{"type":"a"}]}));
        let err = check_version("f", &old).unwrap_err().to_string();
        assert!(
            err.contains("0.2.0") && err.contains("fail every pod"),
            "{err}"
        );
    }

    #[test]
    fn the_entry_is_appended_once_and_updated_in_place() {
        let original = json!({"cniVersion":"1.0.0","name":"k8s","plugins":[
            {"type":"calico"},{"type":"portmap","capabilities":{"portMappings":true}}]});
        let first = with_entry(&list(original.clone()), "10-calico.conflist", &entry());
        assert_eq!(
            first["plugins"],
            json!([{"type":"calico"},{"type":"portmap","capabilities":{"portMappings":true}},
                   {"type":"redirector-cni","socket":"/run/redirector/cni.sock"}])
        );
        let again = with_entry(&list(Value::Object(first.clone())), "f", &entry());
        assert_eq!(again, first, "idempotent");
        // Another plugin chained after ours later: ours stays where it is,
        // with the new settings; a duplicate goes.
        let mut later = first.clone();
        let plugins = later["plugins"].as_array_mut().unwrap();
        plugins.push(json!({"type":"bandwidth"}));
        plugins.push(json!({"type":"redirector-cni","socket":"/old"}));
        let moved = Entry {
            socket: "/run/other.sock".into(),
            log_file: Some("/var/log/r.log".into()),
        };
        let updated = with_entry(&list(Value::Object(later)), "f", &moved);
        assert_eq!(
            updated["plugins"],
            json!([{"type":"calico"},{"type":"portmap","capabilities":{"portMappings":true}},
                   {"type":"redirector-cni","socket":"/run/other.sock","log_file":"/var/log/r.log"},
                   {"type":"bandwidth"}])
        );
    }

    #[test]
    fn a_single_plugin_becomes_a_list_and_back() {
        let single = object(
            json!({"cniVersion":"0.3.1","name":"bridge-net","type":"bridge",
                                   "bridge":"cni0","ipam":{"type":"host-local"}}),
        );
        let config = NetConfig {
            kind: Kind::Single,
            json: single.clone(),
        };
        let converted = with_entry(&config, "10-bridge.conf", &entry());
        assert_eq!(
            Value::Object(converted.clone()),
            json!({"cniVersion":"0.3.1","name":"bridge-net","plugins":[
                Value::Object(single.clone()),
                {"type":"redirector-cni","socket":"/run/redirector/cni.sock",
                 "converted_from":"10-bridge.conf"}]})
        );
        let removed = without_entry(&list(Value::Object(converted.clone())));
        assert_eq!(removed.count, 1);
        assert_eq!(
            removed.result,
            Restored::Single {
                file: "10-bridge.conf".into(),
                json: single
            }
        );
        // Something else chained meanwhile: it stays a list.
        let mut grown = converted;
        grown["plugins"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type":"portmap"}));
        let removed = without_entry(&list(Value::Object(grown)));
        let Restored::List(l) = removed.result else {
            panic!("{removed:?}")
        };
        assert_eq!(l["plugins"].as_array().unwrap().len(), 2);
        // No name: istio-cni's.
        let nameless = NetConfig {
            kind: Kind::Single,
            json: object(json!({"cniVersion":"1.0.0","type":"ptp"})),
        };
        assert_eq!(
            with_entry(&nameless, "a.json", &entry())["name"],
            "k8s-pod-network"
        );
    }

    #[test]
    fn removing_from_a_list_without_it_changes_nothing() {
        let original = json!({"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"calico"}]});
        let removed = without_entry(&list(original.clone()));
        assert_eq!(removed.count, 0);
        assert_eq!(removed.result, Restored::List(object(original)));
    }
}
