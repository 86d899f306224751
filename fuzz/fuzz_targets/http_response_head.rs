//! An endpoint's response head (`name: value` lines) → what the proxy
//! lets through: no hop-by-hop header and nothing `Connection` names
//! reaches the app, and ambiguous framing is always seen.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let headers: Vec<(&[u8], &[u8])> = data
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let value = &line[colon + 1..];
            let value = value.strip_prefix(b" ").unwrap_or(value);
            Some((&line[..colon], value))
        })
        .collect();
    let head = redirector_user::fuzzing::http_response_head(&headers);
    let has = |want: &str| head.received.iter().any(|(n, _)| n == want);
    assert_eq!(
        head.ambiguous_framing,
        has("content-length") && has("transfer-encoding"),
        "{headers:?}"
    );
    let listed: Vec<String> = head
        .received
        .iter()
        .filter(|(n, _)| n == "connection")
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        .collect();
    for name in &head.forwarded {
        assert!(
            ![
                "connection",
                "keep-alive",
                "proxy-connection",
                "te",
                "upgrade"
            ]
            .contains(&name.as_str()),
            "hop-by-hop {name} passed: {headers:?}"
        );
        assert!(
            !listed.contains(name),
            "{name} is named by Connection: {headers:?}"
        );
    }
    if head.upgrade.is_some() {
        assert!(has("upgrade") && listed.iter().any(|t| t == "upgrade"));
    }
});
