//! The Istio documents the integration tests give the daemon: the blog's
//! ServiceEntry and DestinationRule for `mydb.com`, and shorter `mydb.com`
//! documents to build on.

/// The blog's ServiceEntry for `mydb.com`, with our endpoint names and an
/// optional explicit VIP.
pub fn service_entry(
    vip: Option<&str>,
    east: (&str, &str, u16),
    west: (&str, &str, u16),
) -> String {
    let addresses = vip
        .map(|v| format!(" addresses:\n - {v}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
 name: external-svc-dns
spec:
 hosts:
 - mydb.com
{addresses} location: MESH_EXTERNAL
 ports:
 - number: 80
   name: http
   protocol: HTTP
 resolution: DNS
 endpoints:
 - address: {}
   locality: {}
   ports:
     http: {}
 - address: {}
   locality: {}
   ports:
     http: {}
",
        east.0, east.1, east.2, west.0, west.1, west.2
    )
}

/// The blog's DestinationRule, with our outlier timings.
pub fn destination_rule(consecutive: u32, interval: &str, base: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
 name: mydynamodb
spec:
 host: mydb.com
 trafficPolicy:
   outlierDetection:
     consecutive5xxErrors: {consecutive}
     interval: {interval}
     baseEjectionTime: {base}
"
    )
}

/// `mydb.com` at `vip`, HTTP port 80 → 8080, with `resolution` and the
/// already indented `endpoints` lines (each `  - {...}`).
pub fn mydb_entry(vip: &str, resolution: &str, endpoints: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [mydb.com]
  addresses: [{vip}]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  resolution: {resolution}
  endpoints:
{endpoints}"
    )
}

/// A DestinationRule for `mydb.com` with `traffic_policy` (indented four
/// spaces) under `trafficPolicy`.
pub fn mydb_rule(traffic_policy: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db}}
spec:
  host: mydb.com
  trafficPolicy:
{traffic_policy}"
    )
}
