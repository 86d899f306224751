//! The `redirector.dev/datapath` annotation, through `load_str`.

use super::tests::*;
use super::*;

const TCP_SE: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: db
  annotations:
    redirector.dev/datapath: kernel
    example.com/owner: team-db
spec:
  hosts: [pg.example]
  resolution: STATIC
  ports:
  - number: 5432
    name: tcp-pg
  - number: 443
    name: https
  endpoints:
  - address: 10.0.0.1
";

#[test]
fn proxy_is_the_default_and_kernel_is_chosen_by_annotation() {
    let config = load(SE);
    assert_eq!(config.services[0].datapath, DatapathMode::Proxy);
    let config = load(TCP_SE);
    assert!(
        config
            .services
            .iter()
            .all(|s| s.datapath == DatapathMode::Kernel),
        "{:#?}",
        config.services
    );
    let explicit = TCP_SE.replace("datapath: kernel", "datapath: proxy");
    assert!(
        load(&explicit)
            .services
            .iter()
            .all(|s| s.datapath == DatapathMode::Proxy)
    );
}

#[test]
fn unknown_values_and_keys_are_errors_at_their_line() {
    let text = TCP_SE.replace("datapath: kernel", "datapath: ebpf");
    rejects(
        &text,
        "ebpf",
        "metadata.annotations.redirector.dev/datapath",
        "unknown datapath \"ebpf\"; expected proxy or kernel",
    );
    let text = TCP_SE.replace("redirector.dev/datapath", "redirector.dev/data-path");
    rejects(
        &text,
        "redirector.dev/data-path",
        "metadata.annotations.redirector.dev/data-path",
        "unknown redirector annotation",
    );
}

#[test]
fn kernel_on_an_http_port_says_why_not() {
    let text = TCP_SE.replace("name: https", "name: http");
    rejects(
        &text,
        "kernel",
        "metadata.annotations.redirector.dev/datapath",
        "datapath kernel cannot serve port 443 (http): it is HTTP",
    );
}

#[test]
fn kernel_with_tls_origination_says_why_not() {
    let se = TCP_SE.replace("  - number: 443\n    name: https\n", "");
    let text = format!(
        "{se}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: pg-tls
spec:
  host: pg.example
  trafficPolicy:
    tls:
      mode: SIMPLE
"
    );
    rejects(
        &text,
        "kernel",
        "metadata.annotations.redirector.dev/datapath",
        "DestinationRule pg-tls originates TLS (tls.mode SIMPLE), which only the proxy can do",
    );
}
