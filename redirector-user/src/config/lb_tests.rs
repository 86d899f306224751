//! Load balancing settings, through `load_str`: `loadBalancer.simple`,
//! `localityLbSetting` and endpoint `weight`, `labels`, `network`.

use super::tests::*;
use super::*;

/// SE + DR with `lb` (a `loadBalancer:` body at six spaces) after the DR's
/// outlier detection.
fn with_lb(lb: &str) -> String {
    se_and_dr(&format!("    loadBalancer:\n{lb}"))
}

/// The same without outlier detection.
fn without_outlier(lb: &str) -> String {
    with_lb(lb).replace("    outlierDetection:\n      consecutive5xxErrors: 2\n", "")
}

fn locality_lb(text: &str) -> LocalityLbPolicy {
    load(text).services[0].policy.locality_lb.clone()
}

/// The one problem of `text` (searched from the DR on), at `needle`.
#[track_caller]
fn rejects_in_dr(text: &str, needle: &str, field: &str, message: &str) -> Problem {
    rejects_after(text, 15, needle, field, message)
}

const LB: &str = "spec.trafficPolicy.loadBalancer";
const LLB: &str = "spec.trafficPolicy.loadBalancer.localityLbSetting";

#[test]
fn simple_names_istio_algorithms() {
    let algorithm = |text: &str| load(text).services[0].policy.load_balancer;
    // No DestinationRule, or no `simple`: Istio's default.
    assert_eq!(algorithm(SE), LbAlgorithm::LeastRequest);
    assert_eq!(
        algorithm(&se_and_dr("")),
        LbAlgorithm::LeastRequest,
        "a DestinationRule without loadBalancer"
    );
    for (simple, expected) in [
        ("ROUND_ROBIN", LbAlgorithm::RoundRobin),
        ("LEAST_REQUEST", LbAlgorithm::LeastRequest),
        // Istio's deprecated alias.
        ("LEAST_CONN", LbAlgorithm::LeastRequest),
        ("RANDOM", LbAlgorithm::Random),
        ("UNSPECIFIED", LbAlgorithm::LeastRequest),
    ] {
        let text = with_lb(&format!("      simple: {simple}\n"));
        assert_eq!(algorithm(&text), expected, "{simple}");
    }
}

#[test]
fn passthrough_has_nothing_to_pass_through_to() {
    let text = with_lb("      simple: PASSTHROUGH\n");
    let p = rejects_in_dr(
        &text,
        "PASSTHROUGH",
        &format!("{LB}.simple"),
        "PASSTHROUGH sends each connection to the address the app dialled",
    );
    assert!(p.message.contains("allocated by redirector"), "{p}");
    // With an explicit address it would mean no redirect at all.
    let text = text.replace(
        "  resolution: DNS\n",
        "  resolution: DNS\n  addresses: [10.9.9.9]\n",
    );
    let p = rejects_in_dr(
        &text,
        "PASSTHROUGH",
        &format!("{LB}.simple"),
        "not implemented yet: PASSTHROUGH would send connections to 10.9.9.9 itself",
    );
    assert!(p.message.contains("not redirecting this service"), "{p}");
}

#[test]
fn endpoint_weight_labels_and_network() {
    let text = se_with(
        "    weight: 3\n    network: net-1\n    labels:\n      app: db\n      topology.istio.io/network: lab\n",
    );
    let c = load(&text);
    let ep = &c.services[0].endpoints[0];
    assert_eq!(ep.weight, 3);
    assert_eq!(ep.network, "net-1");
    assert_eq!(
        ep.labels.iter().collect::<Vec<_>>(),
        [
            (&"app".to_owned(), &"db".to_owned()),
            (&"topology.istio.io/network".to_owned(), &"lab".to_owned())
        ]
    );
    // Unset, and 0 (Istio's "unset"), are 1.
    assert_eq!(load(SE).services[0].endpoints[0].weight, 1);
    assert_eq!(
        load(&se_with("    weight: 0\n")).services[0].endpoints[0].weight,
        1
    );
    assert_eq!(
        load(&se_with("    weight: 4294967295\n")).services[0].endpoints[0].weight,
        u32::MAX
    );
}

#[test]
fn endpoint_field_rejections() {
    for (tail, needle, field, message) in [
        (
            "    weight: -1\n",
            "-1",
            "spec.endpoints[0].weight",
            "weight -1 is out of range 0-4294967295",
        ),
        (
            "    weight: 4294967296\n",
            "4294967296",
            "spec.endpoints[0].weight",
            "out of range",
        ),
        (
            "    labels: {\"-bad\": x}\n",
            "\"-bad\"",
            "spec.endpoints[0].labels.-bad",
            "not a valid label key",
        ),
        (
            "    labels: {\"Example.com/app\": x}\n",
            "\"Example.com/app\"",
            "spec.endpoints[0].labels.Example.com/app",
            "not a valid label key",
        ),
        (
            "    labels: {app: \"a b\"}\n",
            "\"a b\"",
            "spec.endpoints[0].labels.app",
            "not a valid label value",
        ),
    ] {
        let text = se_with(tail);
        rejects(&text, needle, field, message);
    }
    // Fine: a prefixed key and an empty value.
    load(&se_with("    labels: {example.com/app: \"\"}\n"));
}

#[test]
fn weights_of_a_locality_must_fit_envoys_limit() {
    let text = se_with(
        "    weight: 4294967295\n  - address: west.example\n    locality: us-east1\n    weight: 1\n",
    );
    rejects_after(
        &text,
        14,
        "west.example",
        "spec.endpoints[1].weight",
        "the weights of the endpoints in locality \"us-east1\" add up to more than 4294967295",
    );
    // Another locality has its own budget.
    load(&text.replace(
        "    locality: us-east1\n    weight: 1\n",
        "    locality: eu\n",
    ));
}

#[test]
fn failover_priority_is_read() {
    let text = with_lb(
        "      localityLbSetting:\n        failoverPriority:\n        - topology.istio.io/network=net-1\n        - topology.kubernetes.io/region\n        - tier=gold\n",
    );
    assert_eq!(
        locality_lb(&text).failover_priority,
        [
            "topology.istio.io/network=net-1",
            "topology.kubernetes.io/region",
            "tier=gold"
        ]
    );
}

#[test]
fn failover_priority_rejections() {
    let fp = |entries: &str| {
        with_lb(&format!(
            "      localityLbSetting:\n        failoverPriority: [{entries}]\n"
        ))
    };
    let field = format!("{LLB}.failoverPriority[1]");
    for (text, needle, message) in [
        (
            fp("topology.kubernetes.io/zone, tier"),
            "tier]",
            "the node has no label tier",
        ),
        (
            fp("topology.kubernetes.io/zone, topology.istio.io/network"),
            "topology.istio.io/network]",
            "write topology.istio.io/network=<value>",
        ),
        (
            fp("tier=a, \"tier=b\""),
            "\"tier=b\"",
            "label tier is listed twice",
        ),
        (
            fp("tier=a, \"x=a b\""),
            "\"x=a b\"",
            "not a valid label value",
        ),
        (fp("tier=a, \"=a\""), "\"=a\"", "not a valid label key"),
    ] {
        let p = problems(&text);
        assert_problem(&p, &text, needle, 15, &field, message);
        assert_eq!(p.len(), 1, "{p:#?}");
    }
    // Istio refuses topology labels next to failover.
    let text = with_lb(
        "      localityLbSetting:\n        failover: [{from: us-east1, to: us-west1}]\n        failoverPriority: [topology.kubernetes.io/region]\n",
    );
    rejects_in_dr(
        &text,
        "topology.kubernetes.io/region]",
        &format!("{LLB}.failoverPriority[0]"),
        "cannot use the topology label topology.kubernetes.io/region together with failover",
    );
    // Other labels combine with failover.
    let text = text.replace("[topology.kubernetes.io/region]", "[tier=gold]");
    assert_eq!(locality_lb(&text).failover_priority, ["tier=gold"]);
}

#[test]
fn failover_needs_outlier_detection() {
    let text = without_outlier(
        "      localityLbSetting:\n        failover: [{from: us-east1, to: us-west1}]\n",
    );
    rejects_in_dr(
        &text,
        "failover:",
        &format!("{LLB}.failover"),
        "failover needs outlierDetection",
    );
    let text = without_outlier(
        "      localityLbSetting:\n        failoverPriority: [topology.kubernetes.io/zone]\n",
    );
    rejects_in_dr(
        &text,
        "failoverPriority:",
        &format!("{LLB}.failoverPriority"),
        "failover needs outlierDetection",
    );
    // distribute does not need it.
    let text = without_outlier(
        "      localityLbSetting:\n        distribute:\n        - from: \"*\"\n          to: {\"*\": 100}\n",
    );
    assert_eq!(locality_lb(&text).distribute.len(), 1);
}

#[test]
fn disabled_locality_lb_takes_nothing_else() {
    let text = with_lb(
        "      localityLbSetting:\n        enabled: false\n        failover: [{from: us-east1, to: us-west1}]\n",
    );
    rejects_in_dr(
        &text,
        "failover:",
        &format!("{LLB}.failover"),
        "has no effect with enabled: false",
    );
    let off = locality_lb(&with_lb(
        "      localityLbSetting:\n        enabled: false\n",
    ));
    assert!(!off.enabled);
}

#[test]
fn distribute_is_read() {
    let text = with_lb(
        "      localityLbSetting:\n        distribute:\n        - from: us-east1/*\n          to:\n            \"us-east1/*\": 80\n            \"us-west1/*\": 20\n        - from: us-west1\n          to: {us-west1: 100}\n",
    );
    assert_eq!(
        locality_lb(&text).distribute,
        [
            Distribute {
                from: "us-east1/*".into(),
                to: vec![("us-east1/*".into(), 80), ("us-west1/*".into(), 20)],
            },
            Distribute {
                from: "us-west1".into(),
                to: vec![("us-west1".into(), 100)],
            },
        ]
    );
}

#[test]
fn distribute_rejections() {
    let d = |body: &str| {
        with_lb(&format!(
            "      localityLbSetting:\n        distribute:\n{body}"
        ))
    };
    let entry = format!("{LLB}.distribute[0]");
    let cases: Vec<(String, &str, String, &str)> = vec![
        (
            d("        - from: a\n          to: {a: 60, b: 30}\n"),
            "{a: 60",
            format!("{entry}.to"),
            "the weights add up to 90; they must add up to 100",
        ),
        (
            d("        - from: a\n          to: {a: 100, b: 0}\n"),
            "0}",
            format!("{entry}.to[\"b\"]"),
            "locality weight 0 is out of range 1-100",
        ),
        (
            d("        - from: a\n          to: {a: 101}\n"),
            "101",
            format!("{entry}.to[\"a\"]"),
            "out of range 1-100",
        ),
        (
            d("        - from: \"us-*\"\n          to: {a: 100}\n"),
            "\"us-*\"",
            format!("{entry}.from"),
            "`*` can only be the whole last part",
        ),
        (
            d("        - from: a\n          to: {\"*/z\": 100}\n"),
            "\"*/z\"",
            format!("{entry}.to[\"*/z\"]"),
            "`*` can only be the whole last part",
        ),
        (
            d("        - from: a//c\n          to: {a: 100}\n"),
            "a//c",
            format!("{entry}.from"),
            "must not contain an empty region, zone or subzone",
        ),
        (
            d("        - from: a/b/c/d\n          to: {a: 100}\n"),
            "a/b/c/d",
            format!("{entry}.from"),
            "more than three",
        ),
        (
            d("        - from: a\n          to: {a: 50, a/z: 50}\n"),
            "a/z:",
            format!("{entry}.to[\"a/z\"]"),
            "\"a/z\" overlaps \"a\"",
        ),
        (
            d("        - from: a\n          to: {}\n"),
            "{}",
            format!("{entry}.to"),
            "at least one locality",
        ),
        (
            d("        - to: {a: 100}\n"),
            "to:",
            format!("{entry}.from"),
            "required",
        ),
        (
            d(
                "        - from: a/*\n          to: {a: 100}\n        - from: a/z\n          to: {a: 100}\n",
            ),
            "a/z",
            format!("{LLB}.distribute[1].from"),
            "\"a/z\" overlaps \"a/*\" of an earlier entry",
        ),
    ];
    for (text, needle, field, message) in &cases {
        let p = problems(text);
        assert_problem(&p, text, needle, 15, field, message);
        assert_eq!(p.len(), 1, "{field} {message:?}: {p:#?}");
    }
}

#[test]
fn distribute_excludes_failover_and_failover_priority() {
    let text = with_lb(
        "      localityLbSetting:\n        failover: [{from: us-east1, to: us-west1}]\n        distribute:\n        - from: \"*\"\n          to: {\"*\": 100}\n",
    );
    rejects_in_dr(
        &text,
        "distribute:",
        &format!("{LLB}.distribute"),
        "distribute and failover cannot both be set",
    );
    let text = with_lb(
        "      localityLbSetting:\n        failoverPriority: [topology.kubernetes.io/zone]\n        distribute:\n        - from: \"*\"\n          to: {\"*\": 100}\n",
    );
    rejects_in_dr(
        &text,
        "failoverPriority:",
        &format!("{LLB}.failoverPriority"),
        "failoverPriority has no effect with distribute",
    );
}
