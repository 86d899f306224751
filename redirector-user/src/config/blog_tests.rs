//! The blog post's documents load unchanged, alone and in the combinations
//! the post applies them, and every shipped config file loads.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::model::{DEFAULT_VIP_RANGE, Resolution, ServicePort, TrafficPolicy};
use super::*;
use crate::topology::{Failover, Locality};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is inside the workspace")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The `{{< text yaml >}}` blocks of the post, in order.
fn blog_blocks() -> Vec<String> {
    let post = read(&repo().join("config/blog/external-locality-failover.md"));
    let mut blocks = Vec::new();
    let mut rest = post.as_str();
    while let Some(start) = rest.find("{{< text yaml >}}\n") {
        let body = &rest[start + "{{< text yaml >}}\n".len()..];
        let end = body.find("{{< /text >}}").expect("every block is closed");
        blocks.push(body[..end].to_owned());
        rest = &body[end..];
    }
    assert_eq!(blocks.len(), 5, "the post has five YAML blocks");
    blocks
}

fn load_docs(name: &str, docs: &[&str]) -> Config {
    let text = docs.join("---\n");
    load_str(name, &text, &NodeSettings::default())
        .unwrap_or_else(|e| panic!("{name} should load:\n{e}\n--- text ---\n{text}"))
}

fn only_service(config: &Config) -> &Service {
    assert_eq!(config.services.len(), 1, "services: {:#?}", config.services);
    &config.services[0]
}

fn ep(address: &str, port: u16, locality: &str) -> EndpointSpec {
    EndpointSpec {
        address: EndpointAddress::Dns(address.into()),
        port,
        locality: Locality::parse(locality).expect("test locality"),
        weight: 1,
        labels: Default::default(),
        network: String::new(),
    }
}

fn blog_outlier() -> Option<OutlierPolicy> {
    Some(OutlierPolicy {
        consecutive_5xx: 1,
        interval: Duration::from_secs(15),
        base_ejection_time: Duration::from_secs(60),
        ..OutlierPolicy::default()
    })
}

const EAST: &str = "dynamodb.us-east-1.amazonaws.com";
const WEST: &str = "dynamodb.us-west-1.amazonaws.com";

#[test]
fn shipped_blog_files_are_the_posts_blocks() {
    let names = [
        "01-service-entry.yaml",
        "02-destination-rule.yaml",
        "03-service-entry-primary-down.yaml",
        "04-https-service-entry.yaml",
        "05-https-destination-rule.yaml",
    ];
    for (name, block) in names.iter().zip(blog_blocks()) {
        assert_eq!(
            read(&repo().join("config/blog").join(name)),
            block,
            "{name} differs from the post"
        );
    }
}

#[test]
fn blog_service_entry_alone() {
    let [se1, ..] = &blog_blocks()[..] else {
        unreachable!()
    };
    let config = load_docs("se1", &[se1]);
    let s = only_service(&config);
    assert_eq!(s.host, "mydb.com");
    assert_eq!(
        s.port,
        ServicePort {
            number: 80,
            name: "http".into(),
            protocol: Protocol::Http,
            target_port: 80
        }
    );
    assert_eq!(s.resolution, Resolution::Dns);
    assert_eq!(
        s.endpoints,
        [ep(EAST, 80, "us-east1"), ep(WEST, 80, "us-west1")]
    );
    assert_eq!(s.policy, TrafficPolicy::default());
    assert_eq!(
        s.policy.outlier, None,
        "no DestinationRule, no outlier detection"
    );
    assert!(s.policy.locality_lb.enabled);
    assert_eq!(s.service_entry, "external-svc-dns");
    assert_eq!(s.destination_rule, None);
    assert!(s.vip_allocated);
    assert!(
        DEFAULT_VIP_RANGE.contains(&s.vip),
        "{} outside the default range",
        s.vip
    );
    assert_eq!(config.vip_range, DEFAULT_VIP_RANGE);
}

#[test]
fn blog_service_entry_with_rule() {
    let blocks = blog_blocks();
    let config = load_docs("se1+dr1", &[&blocks[0], &blocks[1]]);
    let s = only_service(&config);
    assert_eq!(s.policy.outlier, blog_outlier());
    assert_eq!(s.policy.tls, TlsPolicy::Disable);
    assert_eq!(s.policy.locality_lb, TrafficPolicy::default().locality_lb);
    assert_eq!(s.destination_rule.as_deref(), Some("mydynamodb"));
    // Adding the rule does not move the VIP.
    let alone = load_docs("se1", &[&blocks[0]]);
    assert_eq!(alone.services[0].vip, s.vip);
}

#[test]
fn blog_primary_down_with_rule() {
    let blocks = blog_blocks();
    let config = load_docs("se-failure+dr1", &[&blocks[2], &blocks[1]]);
    let s = only_service(&config);
    assert_eq!(
        s.endpoints,
        [ep(EAST, 81, "us-central1"), ep(WEST, 80, "us-west")]
    );
    assert_eq!(s.policy.outlier, blog_outlier());
}

#[test]
fn blog_https_variant() {
    let blocks = blog_blocks();
    let config = load_docs("se-https+dr-https", &[&blocks[3], &blocks[4]]);
    let s = only_service(&config);
    assert_eq!(s.port.number, 80);
    assert_eq!(s.port.name, "http-port");
    assert_eq!(s.port.protocol, Protocol::Http);
    assert_eq!(s.port.target_port, 443);
    // No per-endpoint ports: every endpoint uses targetPort.
    assert_eq!(
        s.endpoints,
        [ep(EAST, 443, "us-east1"), ep(WEST, 443, "us-west")]
    );
    assert_eq!(
        s.policy,
        TrafficPolicy {
            load_balancer: LbAlgorithm::RoundRobin,
            connection_pool: Default::default(),
            outlier: blog_outlier(),
            locality_lb: LocalityLbPolicy {
                enabled: true,
                failover: vec![Failover {
                    from: "us-east1".into(),
                    to: "us-west".into()
                }],
                failover_priority: Vec::new(),
                distribute: Vec::new(),
            },
            tls: TlsPolicy::Originate(Default::default()),
        }
    );
    assert!(s.vip_allocated && DEFAULT_VIP_RANGE.contains(&s.vip));
}

/// Every `config/*.yaml` must load: they are what the docs and demos use.
#[test]
fn every_shipped_config_loads() {
    let dir = repo().join("config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "expected the demo and example configs, found {files:?}"
    );
    for file in &files {
        let config = load_file(file, &NodeSettings::default())
            .unwrap_or_else(|e| panic!("{} should load:\n{e}", file.display()));
        assert!(
            !config.services.is_empty(),
            "{} has no services",
            file.display()
        );
    }
}

#[test]
fn demo_configs_use_the_demo_names() {
    let load = |name: &str| {
        load_file(&repo().join("config").join(name), &NodeSettings::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let east = "dynamodb.us-east-1.demo.test";
    let west = "dynamodb.us-west-1.demo.test";
    let demo = load("demo.yaml");
    let s = only_service(&demo);
    assert_eq!(
        s.endpoints,
        [ep(east, 80, "us-east1"), ep(west, 80, "us-west1")]
    );
    assert_eq!(s.policy.outlier, blog_outlier());
    let without = load("demo-without-rule.yaml");
    assert_eq!(only_service(&without).policy.outlier, None);
    assert_eq!(only_service(&without).vip, s.vip, "same host, same VIP");
    let down = load("demo-primary-down.yaml");
    assert_eq!(
        only_service(&down).endpoints,
        [ep(east, 81, "us-central1"), ep(west, 80, "us-west")]
    );
    let https = load("demo-https.yaml");
    let s = only_service(&https);
    assert_eq!(
        s.endpoints,
        [ep(east, 443, "us-east1"), ep(west, 443, "us-west")]
    );
    let tls = s.policy.tls.origination().expect("originates TLS");
    assert_eq!(tls.sni, None, "each endpoint's own name");
    assert!(tls.ca_certificates.is_some());
}

#[test]
fn example_config_sets_everything() {
    let c = load_file(
        &repo().join("config/example.yaml"),
        &NodeSettings::default(),
    )
    .unwrap_or_else(|e| panic!("example.yaml: {e}"));
    assert_eq!(
        c.node,
        NodeSettings {
            locality: Some(Locality::parse("us-east1/us-east1-b").expect("locality")),
            cgroup: Some("/sys/fs/cgroup/apps".into()),
            nameservers: vec![
                "10.0.0.2:53".parse().expect("addr"),
                "10.0.0.3:5353".parse().expect("addr")
            ],
            listen_port: Some(15001),
            dns_port: Some(15053),
            admin_port: Some(15000),
            vip_range: Some("240.240.0.0/16".parse().expect("net")),
            vip_range6: Some("2001:2::/48".parse().expect("net")),
            pin_dir: Some("/sys/fs/bpf/redirector".into()),
            limits: crate::config::LimitSettings {
                request_headers_timeout: Some(std::time::Duration::from_secs(60)),
                stream_idle_timeout: Some(std::time::Duration::from_secs(300)),
                tcp_idle_timeout: Some(std::time::Duration::from_secs(3600)),
                max_connections: Some(4096),
                max_connections_per_namespace: Some(1024),
            },
        }
    );
    let hosts: Vec<(&str, u16)> = c
        .services
        .iter()
        .map(|s| (s.host.as_str(), s.port.number))
        .collect();
    assert_eq!(
        hosts,
        [
            ("db.legacy.internal", 5432),
            ("db.legacy.internal", 8008),
            ("mydb.com", 80)
        ]
    );
    let legacy = &c.services[0];
    assert_eq!(
        (legacy.vip, legacy.vip_allocated),
        (Ipv4Addr::new(10, 200, 0, 10), false)
    );
    assert_eq!(legacy.port.protocol, Protocol::Tcp);
    assert_eq!(legacy.resolution, Resolution::Static);
    assert_eq!(
        legacy.endpoints[0].address,
        EndpointAddress::Ip(Ipv4Addr::new(192, 168, 10, 11).into())
    );
    let mydb = &c.services[2];
    assert_eq!(mydb.service_entry, "storage/dynamodb");
    assert_eq!(mydb.destination_rule.as_deref(), Some("storage/dynamodb"));
    assert_eq!(
        mydb.endpoints.iter().map(|e| e.port).collect::<Vec<_>>(),
        [443, 443]
    );
    let tls = mydb.policy.tls.origination().expect("originates TLS");
    assert_eq!(tls.sni.as_deref(), Some(EAST));
    assert_eq!(
        tls.ca_certificates.as_ref().map(|f| f.path.clone()),
        Some("/etc/ssl/certs/ca-certificates.crt".into())
    );
    assert!(tls.client.is_none() && !tls.insecure_skip_verify);
    let outlier = mydb.policy.outlier.as_ref().expect("outlier detection");
    assert_eq!(
        (
            outlier.consecutive_gateway,
            outlier.max_ejection_percent,
            outlier.min_health_percent
        ),
        (Some(1), Some(50), 0)
    );
    assert_eq!(
        mydb.policy.connection_pool,
        ConnectionPoolPolicy {
            connect_timeout: Duration::from_secs(2),
            max_connections: 100,
            tcp_keepalive: Some(TcpKeepalive {
                probes: Some(3),
                time: Some(Duration::from_secs(60)),
                interval: Some(Duration::from_secs(10)),
            }),
            http1_max_pending_requests: 50,
            max_requests_per_connection: 1000,
            idle_timeout: Duration::from_secs(300),
            max_retries: 10,
        }
    );
    // Port 5432 has the rule's top-level policy: distribute, LEAST_REQUEST,
    // default outlier detection.
    assert_eq!(legacy.policy.load_balancer, LbAlgorithm::LeastRequest);
    assert_eq!(legacy.policy.locality_lb.distribute.len(), 1);
    assert_eq!(legacy.policy.outlier, Some(OutlierPolicy::default()));
    // Port 8008's entry replaced the whole policy: its outlier detection and
    // pool, defaults for the rest (no distribute).
    let admin = &c.services[1];
    let admin_outlier = admin.policy.outlier.as_ref().expect("port-level");
    assert!(admin_outlier.split_external_local_origin_errors);
    assert_eq!(admin_outlier.consecutive_local_origin, 2);
    assert_eq!(admin.policy.connection_pool.max_connections, 20);
    assert!(admin.policy.locality_lb.distribute.is_empty());
    assert_eq!(legacy.policy.connection_pool.max_connections, u32::MAX);
    assert_eq!(
        legacy.destination_rule.as_deref(),
        Some("legacy-db"),
        "{legacy:#?}"
    );
    // The effective config serializes (the admin port serves it).
    let json = serde_json::to_string(&c).expect("serializes");
    assert!(json.contains("\"vip_range\":\"240.240.0.0/16\""), "{json}");
    assert!(json.contains("\"base_ejection_time\":\"1m0s\""), "{json}");
}
