//! The report's section on pods: what pods cost the daemon, how soon a new
//! pod's first connect is served (with the CNI plugin and without), and a
//! client in a pod beside one on the node and nginx. Figures from
//! `summary.rs`.

use std::fmt::Write as _;

use crate::{
    format::{mib, ms, sig3},
    model::{BenchReport, Footprint, SystemId},
    summary::{Aggregate, PodCost, Spread, aggregate, pod_costs, pod_starts, ratios},
};

/// The whole section, if pods were run.
pub(super) fn section(report: &BenchReport, out: &mut String) {
    let client = report
        .cells
        .iter()
        .any(|c| c.system == SystemId::RedirectorPod);
    if report.pods.is_none() && !client {
        return;
    }
    let _ = writeln!(out, "## Pods\n");
    let _ = writeln!(
        out,
        "Real pods on the bench namespace as a node: each its own network namespace and \
         cgroup under the redirector's, wired by the CNI plugins bridge, host-local and \
         loopback (then `redirector-cni` when chained), served by the redirector's daemon \
         from inside the pod. Made before the cells, one at a time, alternately with the \
         redirector's CNI plugin in the chain and without.\n"
    );
    if let Some(pods) = &report.pods {
        cost_table(&pods.footprints, pods.after_delete.as_ref(), out);
        starts_table(report, out);
    }
    if client {
        client_table(report, out);
    }
}

fn cost_table(footprints: &[Footprint], after: Option<&Footprint>, out: &mut String) {
    if footprints.is_empty() {
        return;
    }
    let _ = writeln!(out, "### What a pod costs the daemon\n");
    let _ = writeln!(
        out,
        "The daemon and its netns helper, read from /proc once the pods are served and \
         idle: RSS (VmRSS), open descriptors (sockets among them), and the BPF maps the \
         descriptors hold with their kernel memory (fdinfo `memlock`). Each pod has made \
         one request by then, so it also holds the upstream connection the daemon pools \
         for it (one socket). Per pod: the difference from no pod, ÷ the pods \
         (and from the step before, for the pods it added).\n"
    );
    let _ = writeln!(
        out,
        "| pods served | RSS (MiB) | fds | sockets | BPF maps | BPF map memory (KiB) | RSS/pod (KiB) | fds/pod | sockets/pod | BPF maps/pod | BPF KiB/pod |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let costs = pod_costs(footprints);
    let cell = |f: &dyn Fn(&PodCost) -> f64, pods: u32| {
        let of = |c: &PodCost| sig3(f(c));
        let from_none = costs.iter().find(|c| c.from == 0 && c.to == pods);
        let marginal = costs.iter().find(|c| c.from != 0 && c.to == pods);
        match (from_none, marginal) {
            (Some(a), Some(b)) => format!("{} ({} since {})", of(a), of(b), b.from),
            (Some(a), None) => of(a),
            _ => "–".into(),
        }
    };
    let row = |out: &mut String, label: &str, f: &Footprint, pods: Option<u32>| {
        let per_pod = |g: &dyn Fn(&PodCost) -> f64| pods.map_or_else(|| "–".into(), |n| cell(g, n));
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            mib(f.rss_kib),
            f.fds,
            f.sockets,
            f.bpf_maps,
            f.bpf_map_kib,
            per_pod(&|c| c.rss_kib),
            per_pod(&|c| c.fds),
            per_pod(&|c| c.sockets),
            per_pod(&|c| c.bpf_maps),
            per_pod(&|c| c.bpf_map_kib),
        );
    };
    for f in footprints {
        let pods = (f.pods > 0).then_some(f.pods);
        row(out, &f.pods.to_string(), f, pods);
    }
    if let Some(f) = after {
        row(out, "0 (all deleted)", f, None);
    }
    out.push('\n');
    if let (Some(none), Some(last)) = (footprints.first(), footprints.last())
        && last.pods > none.pods
    {
        let pods = f64::from(last.pods - none.pods);
        let kinds: Vec<String> = last
            .fd_kinds
            .iter()
            .map(|(kind, &n)| {
                let before = none.fd_kinds.get(kind).copied().unwrap_or(0);
                (kind, (n as f64 - before as f64) / pods)
            })
            .filter(|(_, per_pod)| *per_pod != 0.0)
            .map(|(kind, per_pod)| format!("{kind} {}", sig3(per_pod)))
            .collect();
        if !kinds.is_empty() {
            let _ = writeln!(
                out,
                "Descriptors per pod by kind, from {} to {} pods: {}.\n",
                none.pods,
                last.pods,
                kinds.join(", ")
            );
        }
        let processes: Vec<String> = last
            .processes
            .iter()
            .filter_map(|(role, at_last)| {
                let at_none = none.processes.get(role)?;
                Some(format!(
                    "{role} {} → {} MiB, {} → {} fds",
                    mib(at_none.rss_kib),
                    mib(at_last.rss_kib),
                    at_none.fds,
                    at_last.fds
                ))
            })
            .collect();
        if !processes.is_empty() {
            let _ = writeln!(
                out,
                "By process, from {} to {} pods: {}.\n",
                none.pods,
                last.pods,
                processes.join("; ")
            );
        }
    }
}

fn spread(s: &Spread) -> String {
    format!("{} / {} / {}", sig3(s.p50), sig3(s.p99), sig3(s.max))
}

fn starts_table(report: &BenchReport, out: &mut String) {
    let Some(pods) = &report.pods else {
        return;
    };
    let starts = pod_starts(pods);
    if starts.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "### From a new pod's CNI ADD to its first served connect\n"
    );
    let _ = writeln!(
        out,
        "Times from the start of the pod's CNI ADD, p50 / p99 / max over the pods \
         (nearest rank: with fewer than 100 pods, p99 is the largest or the one \
         below). Right after the ADD the pod's app connects to a VIP every millisecond \
         until the daemon's proxy in the pod answers; until it listens there, connect4 \
         fails open and the kernel sends the connect straight to the endpoint. Served \
         connect: the `connect()` call of the first connection the proxy answered. \
         Waited: from the app's first `connect()` to that one. Daemon set-up: its own \
         time from being told of the pod or finding it to its listeners being up \
         (`redirector pods`).\n"
    );
    let _ = writeln!(
        out,
        "| how the daemon learns of the pod | pods | CNI ADD (ms) | → first connect (ms) | → first served connect (ms) | waited (ms) | connects sent straight to the endpoint (pods) | daemon set-up (ms) | listed as |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|---|");
    for s in &starts {
        let sources: Vec<String> = s.sources.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} |",
            if s.plugin {
                "its CNI plugin (ADD returns once served)"
            } else {
                "on its own (no plugin in the chain)"
            },
            s.pods,
            spread(&s.add_ms),
            spread(&s.first_connect_ms),
            spread(&s.served_ms),
            spread(&s.waited_ms),
            s.kernel_connects,
            s.pods_with_kernel_connects,
            spread(&s.setup_ms),
            sources.join(", "),
        );
    }
    let failed: u64 = starts.iter().map(|s| s.failed_connects).sum();
    if failed > 0 {
        let _ = writeln!(
            out,
            "\nConnects that failed before the first served one: {failed}."
        );
    }
    if let [with, without] = starts.as_slice() {
        let _ = writeln!(
            out,
            "\nWithout the plugin ÷ with it, to the first served connect: ×{} at p50, ×{} at p99.",
            sig3(without.served_ms.p50 / with.served_ms.p50),
            sig3(without.served_ms.p99 / with.served_ms.p99),
        );
    }
    out.push('\n');
}

/// One figure of an aggregate for the client table: rps, p50 / p99, CPU.
fn figures(a: &Aggregate) -> String {
    format!(
        "{:.0} rps, {} / {}, {}",
        a.rps.median,
        ms(a.p50_ms.median),
        ms(a.p99_ms.median),
        a.cpu_per_krps
            .map_or_else(|| "–".into(), |c| format!("{:.3}", c.median)),
    )
}

fn client_table(report: &BenchReport, out: &mut String) {
    let aggs = aggregate(report);
    let all = ratios(report);
    let _ = writeln!(out, "### A client in a pod, on the node, and nginx\n");
    let _ = writeln!(
        out,
        "The same daemon (the redirector's) with the load generator in a pod \
         (`redirector-pod`: the pod's namespace and cgroup; the proxy listens there \
         and connects upstream from the pod, across the node's bridge) and on the \
         node (`redirector`), beside nginx, in the same cells and repetitions. The \
         generator keeps the node's resolv.conf: with the pod's (search domains, \
         `ndots:5`) oha looks even the VIP's address up as a name, some 8 queries \
         per new connection through the daemon's DNS responder. Each cell: rps, \
         p50 / p99, the daemon's CPU seconds per 1000 requests (= vCPU per 1000 \
         rps). Ratios: medians of per-repetition ratios.\n"
    );
    let _ = writeln!(
        out,
        "| workload | redirector-pod | redirector | nginx | pod ÷ node p50 / p99 / CPU | pod ÷ nginx p50 / p99 / CPU |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let find = |w, s| aggs.iter().find(|a| a.workload == w && a.system == s);
    let mut workloads: Vec<_> = aggs
        .iter()
        .filter(|a| a.system == SystemId::RedirectorPod)
        .map(|a| a.workload)
        .collect();
    workloads.dedup();
    for w in workloads {
        let cell = |s| find(w, s).map_or_else(|| "–".into(), figures);
        let ratio = |b| {
            all.iter()
                .find(|r| r.workload == w && r.system == SystemId::RedirectorPod && r.baseline == b)
                .map_or_else(
                    || "–".into(),
                    |r| {
                        let x = |v: Option<f64>| v.map_or_else(|| "–".into(), sig3);
                        format!("{} / {} / {}", x(r.p50), x(r.p99), x(r.cpu_per_krps))
                    },
                )
        };
        let _ = writeln!(
            out,
            "| {w} | {} | {} | {} | {} | {} |",
            cell(SystemId::RedirectorPod),
            cell(SystemId::Redirector),
            cell(SystemId::Nginx),
            ratio(SystemId::Redirector),
            ratio(SystemId::Nginx),
        );
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fixture::{synthetic, with_pods},
        report::markdown,
        summary::pod_starts,
    };

    #[test]
    fn spread_is_nearest_rank() {
        assert_eq!(Spread::of([]), None);
        let s = Spread::of((1..=100).rev().map(f64::from)).unwrap();
        assert_eq!((s.p50, s.p99, s.max), (50.0, 99.0, 100.0));
        let s = Spread::of([3.0, 1.0, f64::NAN, 2.0, 5.0, 4.0]).unwrap();
        assert_eq!((s.p50, s.p99, s.max), (3.0, 5.0, 5.0));
    }

    #[test]
    fn costs_are_per_pod_from_none_then_for_the_pods_each_step_added() {
        let r = with_pods(synthetic(), 1.1);
        let costs = pod_costs(&r.pods.unwrap().footprints);
        let got: Vec<_> = costs
            .iter()
            .map(|c| {
                (
                    c.from,
                    c.to,
                    c.rss_kib,
                    c.fds,
                    c.sockets,
                    c.bpf_maps,
                    c.bpf_map_kib,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (0, 10, 300.0, 12.0, 6.0, 4.0, 100.0),
                (0, 50, 180.0, 7.2, 3.6, 2.4, 60.0),
                (10, 50, 150.0, 6.0, 3.0, 2.0, 50.0),
            ]
        );
        assert!(pod_costs(&[]).is_empty());
    }

    #[test]
    fn starts_with_the_plugin_then_without() {
        let r = with_pods(synthetic(), 1.1);
        let starts = pod_starts(r.pods.as_ref().unwrap());
        let [with, without] = starts.as_slice() else {
            panic!("{starts:?}");
        };
        assert!(with.plugin && !without.plugin);
        assert_eq!((with.pods, without.pods), (5, 5));
        assert_eq!(
            (with.served_ms.p50, with.served_ms.p99, with.served_ms.max),
            (44.0, 48.0, 48.0)
        );
        assert_eq!((with.waited_ms.p50, with.kernel_connects), (0.0, 0));
        assert_eq!(without.served_ms.p50, 40.0);
        assert_eq!((without.waited_ms.p50, without.waited_ms.max), (5.0, 5.0));
        assert_eq!(
            (without.kernel_connects, without.pods_with_kernel_connects),
            (25, 5)
        );
        assert_eq!(without.sources.get("found"), Some(&5));
    }

    #[test]
    fn markdown_has_the_pod_section() {
        let md = markdown(&with_pods(synthetic(), 1.1));
        println!("{md}");
        for needle in [
            "## Pods\n",
            "### What a pod costs the daemon\n",
            "| 0 | 9.8 | 100 | 10 | 60 | 5000 | – | – | – | – | – |",
            "| 10 | 12.7 | 220 | 70 | 100 | 6000 | 300 | 12.0 | 6.00 | 4.00 | 100 |",
            "| 50 | 18.6 | 460 | 190 | 180 | 8000 | 180 (150 since 10) | 7.20 (6.00 since 10) | 3.60 (3.00 since 10) | 2.40 (2.00 since 10) | 60.0 (50.0 since 10) |",
            "| 0 (all deleted) | 11.7 | 100 | 10 | 60 | 5000 | – |",
            "Descriptors per pod by kind, from 0 to 50 pods: bpf-map 2.40, file 0.200, net 1.00, socket 3.60.",
            "By process, from 0 to 50 pods: daemon 7.8 → 16.6 MiB, 90 → 450 fds; netns helper 2.0 → 2.0 MiB, 10 → 10 fds.",
            "### From a new pod's CNI ADD to its first served connect\n",
            "| its CNI plugin (ADD returns once served) | 5 | 39.0 / 43.0 / 43.0 | 44.0 / 48.0 / 48.0 | 44.0 / 48.0 / 48.0 | 0 / 0 / 0 | 0 (0) | 2.00 / 2.00 / 2.00 | cni 5 |",
            "| on its own (no plugin in the chain) | 5 | 25.0 / 29.0 / 29.0 | 35.0 / 39.0 / 39.0 | 40.0 / 44.0 / 44.0 | 5.00 / 5.00 / 5.00 | 25 (5) | 2.00 / 2.00 / 2.00 | found 5 |",
            "Without the plugin ÷ with it, to the first served connect: ×0.909 at p50, ×0.917 at p99.",
            "### A client in a pod, on the node, and nginx\n",
            "| keep-alive/plain/open-1000rps | 999 rps, 0.153 ms / 0.317 ms, 0.088 | 999 rps, 0.139 ms / 0.289 ms, 0.080 | 999 rps, 0.150 ms / 0.310 ms, 0.095 | 1.10 / 1.10 / 1.10 |",
        ] {
            assert!(md.contains(needle), "missing {needle:?}");
        }
        // Pods come after fail-open, before the targets; the pod row sits
        // after the redirector in the workload tables.
        assert!(md.find("## Fail-open").unwrap() < md.find("## Pods").unwrap());
        assert!(md.find("## Pods").unwrap() < md.find("## Targets").unwrap());
        let plain = &md[md.find("## keep-alive/plain").unwrap()..];
        assert!(
            plain.find("\n| redirector |").unwrap() < plain.find("\n| redirector-pod |").unwrap()
        );
    }

    #[test]
    fn no_pods_no_section() {
        assert!(!markdown(&synthetic()).contains("## Pods"));
    }
}
