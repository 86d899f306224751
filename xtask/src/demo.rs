//! `cargo xtask demo`: Istio's "Configuring failover for external
//! services" blog post, reproduced on this machine with no internet.
//!
//! Two regional endpoints run in their own network namespaces behind veth
//! links; a real DNS server resolves their names; the redirector runs in a
//! node namespace whose only routes lead to those two, so a connect the
//! kernel did not redirect cannot leave the machine. The app is curl in a
//! pod: a network namespace of its own, made by the real CNI plugins
//! (bridge, host-local, loopback, then the redirector's own plugin, which
//! returns once the redirector listens inside the pod), in a child of the
//! cgroup the redirector attached to, resolving `mydb.com` through the
//! cluster DNS address, whose server does not know the name: the
//! redirector's DNS capture in the pod answers it with the VIP. The config
//! moves through the blog's three documents (`config/demo-*.yaml`) with
//! SIGHUP reloads, and each phase checks that it behaved as the blog says,
//! except that phase (c) must show zero failed requests where the blog
//! shows one. Then the blog's HTTPS variant (`config/demo-https.yaml`):
//! verified TLS origination to each endpoint's :443 with its own name as
//! SNI, and a failover when the primary's TLS listener stops, again with
//! zero failed requests. Everything is removed on success, failure or
//! Ctrl-C.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use redirector_tests::{
    cgroup::TestCgroup,
    daemon::{Daemon, DaemonOptions, PinDirGuard},
    dns::DnsServer,
    http::HttpServer,
    https::HttpsServer,
    netns::{self, Netns},
    pki::TestCa,
    pod::{CLUSTER_DNS, Pod, PodNetwork, PodNetworkOptions},
    tempdir::TempDir,
};

use crate::{
    cmd::{self, command},
    setup, sweep,
};

const EAST: &str = "dynamodb.us-east-1.demo.test";
const WEST: &str = "dynamodb.us-west-1.demo.test";
const EAST_IP: [u8; 4] = [10, 213, 1, 2];
const WEST_IP: [u8; 4] = [10, 213, 2, 2];
const REQUESTS: usize = 5;
/// The node's nameserver, as the app's resolv.conf names it.
const DNS_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::LOCALHOST;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

pub(crate) fn run() -> Result<()> {
    cmd::require_root("demo")?;
    // Ctrl-C must not kill us before the namespaces and cgroup are removed:
    // note it, stop at the next step, and let the destructors clean up.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    setup::run()?;
    sweep::sweep("before the demo")?;
    cmd::run(command("cargo").args(["build", "-q", "-p", "redirector-user", "--bins"]))
        .context("building the redirector")?;
    let result = demo();
    sweep::sweep("after the demo")?;
    result
}

/// Everything the demo creates; dropped (the app's pod, then the daemon
/// first) on any exit.
struct Stage {
    app: Option<Pod>,
    daemon: Option<Daemon>,
    pods: Option<PodNetwork>,
    tls: Vec<HttpsServer>,
    _servers: Vec<HttpServer>,
    _dns: DnsServer,
    pins: PinDirGuard,
    cgroup: TestCgroup,
    dir: TempDir,
    _links: Vec<netns::Link>,
    _regions: Vec<Netns>,
    node: Netns,
}

fn demo() -> Result<()> {
    let repo = repo_root()?;
    println!("== Istio's external-service failover blog post, reproduced on one machine ==\n");
    let node = Netns::new("node")?;
    let east = Netns::new("east")?;
    let west = Netns::new("west")?;
    let links = vec![
        netns::link(&node, "10.213.1.1/30", &east, "10.213.1.2/30")?,
        netns::link(&node, "10.213.2.1/30", &west, "10.213.2.2/30")?,
    ];
    let servers = vec![
        HttpServer::start(&east, (EAST_IP, 80).into(), EAST)?,
        HttpServer::start(&west, (WEST_IP, 80).into(), WEST)?,
    ];
    let dns = DnsServer::start(&node, (DNS_IP, 53).into())?;
    dns.set_a(EAST, &[EAST_IP.into()], 30)?;
    dns.set_a(WEST, &[WEST_IP.into()], 30)?;
    let mut stage = Stage {
        app: None,
        daemon: None,
        pods: None,
        tls: Vec::new(),
        _servers: servers,
        _dns: dns,
        pins: PinDirGuard::for_test(),
        cgroup: TestCgroup::new()?,
        dir: TempDir::new("demo")?,
        _links: links,
        _regions: vec![east, west],
        node,
    };
    let pods = PodNetwork::new(
        &stage.node,
        &stage.cgroup,
        &stage._dns,
        PodNetworkOptions::default(),
    )?;
    pods.route_back(&stage._regions[0], [10, 213, 1, 1].into())?;
    pods.route_back(&stage._regions[1], [10, 213, 2, 1].into())?;
    let cni_socket = stage.dir.path().join("cni.sock");
    pods.chain_redirector(&cni_socket)?;
    stage.pods = Some(pods);
    println!(
        "node: namespace {} (locality us-east1), pods' cgroups under {}",
        stage.node.name(),
        stage.cgroup.path().display()
    );
    println!(
        "endpoints: {EAST} = {} (namespace {}), {WEST} = {} (namespace {})",
        std::net::Ipv4Addr::from(EAST_IP),
        stage._regions[0].name(),
        std::net::Ipv4Addr::from(WEST_IP),
        stage._regions[1].name()
    );
    println!(
        "DNS: a real server on 127.0.0.1:53 in the node namespace, also on the cluster DNS \
         address {CLUSTER_DNS} (the pod's nameserver); it knows the endpoints' names, not \
         mydb.com\n"
    );
    check_interrupt()?;

    // (a) ServiceEntry only.
    let config = stage.dir.path().join("redirector.yaml");
    phase_header(
        "(a)",
        "the ServiceEntry alone",
        &repo,
        "config/demo-without-rule.yaml",
    );
    copy_config(&repo, "config/demo-without-rule.yaml", &config)?;
    stage.daemon = Some(Daemon::start(DaemonOptions {
        netns: &stage.node,
        cgroup: None,
        args: vec![
            "run".into(),
            "--config".into(),
            config.display().to_string(),
            "--cgroup".into(),
            stage.cgroup.path().display().to_string(),
            "--locality".into(),
            "us-east1".into(),
            "--nameserver".into(),
            "127.0.0.1:53".into(),
            "--pin-dir".into(),
            stage.pins.path().display().to_string(),
            "--cni-socket".into(),
            cni_socket.display().to_string(),
        ],
        ready_timeout: Duration::from_secs(30),
        env: Vec::new(),
    })?);
    let vip = service_vip(&stage)?;
    println!("redirector: mydb.com -> VIP {vip} (allocated from 240.240.0.0/16)");
    let app = stage
        .pods
        .as_ref()
        .context("the pod network")?
        .pod("sleep")?;
    println!(
        "pod default/sleep: {} on eth0, made by CNI ADD (bridge, host-local, loopback, then \
         redirector-cni, which returned once the redirector listened inside the pod)",
        app.ip()
    );
    stage.app = Some(app);
    println!("$ redirector pods");
    print!("{}", pods_table(&stage)?);
    println!("$ getent ahosts mydb.com | grep STREAM   # in the pod");
    let out = stage
        .app
        .as_ref()
        .context("the app's pod")?
        .client("getent")
        .args(["ahosts", "mydb.com"])
        .run()?;
    let answer = String::from_utf8_lossy(&out.stdout);
    let stream: Vec<&str> = answer.lines().filter(|l| l.contains("STREAM")).collect();
    for line in &stream {
        println!("{line}");
    }
    let addrs: Vec<&str> = stream
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    // The pod has no IPv6 (no ::1), so no IPv6 VIP is offered there.
    ensure!(
        out.status.success() && addrs.contains(&vip.as_str()),
        "DNS capture should answer mydb.com with {vip}: {out:?}"
    );
    let (bodies, errors) = loop_requests(&stage)?;
    let (e, w) = (count(&bodies, EAST), count(&bodies, WEST));
    ensure!(
        errors == 0 && e > 0 && w > 0,
        "phase (a): expected both regions, got {bodies:?} with {errors} errors"
    );
    println!(
        "-> both regions answer ({e} east, {w} west): without outlierDetection every endpoint shares one priority.\n"
    );

    // (b) + DestinationRule.
    phase_header(
        "(b)",
        "with the DestinationRule's outlierDetection",
        &repo,
        "config/demo.yaml",
    );
    reload(&mut stage, &repo, "config/demo.yaml", &config)?;
    let (bodies, errors) = loop_requests(&stage)?;
    ensure!(
        errors == 0 && count(&bodies, EAST) == REQUESTS,
        "phase (b): expected only {EAST}, got {bodies:?} with {errors} errors"
    );
    println!("-> only the node's own region (us-east1) answers.\n");

    // (c) The primary's port is wrong.
    phase_header(
        "(c)",
        "the us-east endpoint moved to port 81 (nothing listens there)",
        &repo,
        "config/demo-primary-down.yaml",
    );
    reload(&mut stage, &repo, "config/demo-primary-down.yaml", &config)?;
    let (bodies, errors) = loop_requests(&stage)?;
    ensure!(
        errors == 0 && count(&bodies, WEST) == REQUESTS,
        "phase (c): expected only {WEST} and no errors, got {bodies:?} with {errors} errors"
    );
    println!(
        "-> every request answered by the failover region; client errors: 0 (the blog shows 1).\n"
    );

    println!("$ redirector endpoints");
    let table = endpoints(&stage, false)?;
    print!("{table}");
    let east_row = table
        .lines()
        .find(|l| l.contains(EAST))
        .context("no row for the primary in `redirector endpoints`")?;
    ensure!(
        east_row.contains(":81") && east_row.contains("FAILED"),
        "the primary should show OUTLIER CHECK FAILED: {east_row}"
    );
    println!(
        "\n-> the primary's outlier check is FAILED, as `istioctl pc endpoints` shows in the blog.\n"
    );
    https_variant(&mut stage, &repo, &config)?;
    println!("\ndemo passed; removing namespaces, cgroup and pins.");
    Ok(())
}

/// (d) The blog's last section: the app still speaks plain HTTP to
/// mydb.com:80, the redirector originates TLS to each endpoint's :443,
/// verified against a CA made here, with each endpoint's own name as SNI.
/// Then the primary's TLS listener goes away.
fn https_variant(stage: &mut Stage, repo: &Path, config: &Path) -> Result<()> {
    let file = "config/demo-https.yaml";
    phase_header(
        "(d)",
        "the HTTPS variant: TLS origination to port 443",
        repo,
        file,
    );
    let ca = TestCa::new();
    let ca_file = ca.write_ca(stage.dir.path());
    for (i, (name, ip)) in [(EAST, EAST_IP), (WEST, WEST_IP)].into_iter().enumerate() {
        let (cert, key) = ca.leaf(&[name]);
        let server = HttpsServer::start(&stage._regions[i], (ip, 443).into(), name, &cert, &key)?;
        stage.tls.push(server);
    }
    println!(
        "endpoints now also serve HTTPS on :443 with certificates for their own names from a CA \
         made for the demo ({})",
        ca_file.display()
    );
    let text =
        std::fs::read_to_string(repo.join(file)).with_context(|| format!("reading {file}"))?;
    let placeholder = "/run/redirector-demo/ca.pem";
    ensure!(
        text.contains(placeholder),
        "{file} should name {placeholder}"
    );
    reload_text(
        stage,
        &text.replace(placeholder, &ca_file.display().to_string()),
        config,
    )?;
    let (bodies, errors) = loop_requests(stage)?;
    let east = &stage.tls[0];
    ensure!(
        errors == 0 && count(&bodies, EAST) == REQUESTS,
        "phase (d): expected only {EAST} over TLS, got {bodies:?} with {errors} errors"
    );
    ensure!(
        east.requests() == REQUESTS as u64 && east.last_sni().as_deref() == Some(EAST),
        "phase (d): the primary should have served {REQUESTS} requests over TLS with SNI {EAST}, \
         saw {} with SNI {:?}",
        east.requests(),
        east.last_sni()
    );
    println!(
        "-> TLS verified for the endpoint's own name, sent as SNI: {EAST} (Istio sends mydb.com to \
         both regions, which their certificates do not name: istio#50997). {} TLS handshake(s) for \
         {REQUESTS} requests: upstream connections are pooled.\n",
        east.handshakes()
    );
    println!("== (e) the primary's TLS listener stops ==");
    east.stop()?;
    let (bodies, errors) = loop_requests(stage)?;
    ensure!(
        errors == 0 && count(&bodies, WEST) == REQUESTS,
        "phase (e): expected only {WEST} and no errors, got {bodies:?} with {errors} errors"
    );
    println!("-> the failover region answers over TLS; client errors: 0.\n");
    println!("$ redirector endpoints");
    let table = endpoints(stage, false)?;
    print!("{table}");
    ensure!(
        table
            .lines()
            .any(|l| l.contains("mydb.com") && l.contains("SIMPLE")),
        "the service should show TLS SIMPLE:\n{table}"
    );
    Ok(())
}

fn phase_header(tag: &str, what: &str, repo: &Path, file: &str) {
    println!("== {tag} {what} ==");
    println!("# {}", repo.join(file).display());
}

fn copy_config(repo: &Path, file: &str, to: &Path) -> Result<()> {
    std::fs::copy(repo.join(file), to).with_context(|| format!("copying {file}"))?;
    Ok(())
}

/// Writes the next document set and has the daemon reload it (SIGHUP), as
/// `kubectl apply` would update Istio.
fn reload(stage: &mut Stage, repo: &Path, file: &str, config: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(repo.join(file)).with_context(|| format!("reading {file}"))?;
    reload_text(stage, &text, config)
}

/// Like [`reload`], with the documents' text.
fn reload_text(stage: &mut Stage, text: &str, config: &Path) -> Result<()> {
    let daemon = stage.daemon.as_ref().context("daemon not running")?;
    let before = daemon.log().matches("config reloaded").count();
    std::fs::write(config, text).with_context(|| format!("writing {}", config.display()))?;
    redirector_tests::process::signal(daemon.pid(), libc::SIGHUP)?;
    // A reload takes milliseconds; the deadline only bounds a machine too
    // loaded to do it (the daemon's log says how long each one took).
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.log().matches("config reloaded").count() == before {
        check_interrupt()?;
        if daemon.log().contains("config reload rejected") || Instant::now() > deadline {
            bail!(
                "the daemon did not reload the config; its log:\n{}",
                daemon.log()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    println!("redirector: reloaded");
    Ok(())
}

/// The blog's loop, `kubectl exec sleep -- sh -c 'for i in {1..5}; do
/// curl -sS http://mydb.com; echo; done'`, as written: curl in the pod
/// resolves mydb.com through the pod's resolv.conf (cluster DNS, search
/// domains, ndots:5), and the redirector's DNS capture answers with the
/// VIP.
fn loop_requests(stage: &Stage) -> Result<(Vec<String>, usize)> {
    println!(
        "$ for i in {{1..{REQUESTS}}}; do curl -sS http://mydb.com; echo; done   # in the pod"
    );
    let app = stage.app.as_ref().context("the app's pod")?;
    let mut bodies = Vec::new();
    let mut errors = 0;
    for _ in 0..REQUESTS {
        check_interrupt()?;
        let reply = app.get("http://mydb.com/");
        match reply {
            Ok((200, body)) => {
                println!("{body}");
                bodies.push(body);
            }
            Ok((status, body)) => {
                errors += 1;
                println!("{body} (HTTP {status})");
                bodies.push(body);
            }
            Err(curl) => {
                errors += 1;
                println!("{curl}");
                bodies.push(curl);
            }
        }
    }
    Ok((bodies, errors))
}

fn count(bodies: &[String], endpoint: &str) -> usize {
    let want = format!("healthy: {endpoint}");
    bodies.iter().filter(|b| **b == want).count()
}

fn endpoints(stage: &Stage, json: bool) -> Result<String> {
    let mut cmd = Command::new(redirector_tests::daemon::redirector_bin());
    cmd.arg("endpoints").arg("--pin-dir").arg(stage.pins.path());
    if json {
        cmd.args(["--output", "json"]);
    }
    let out = cmd.output().context("running redirector endpoints")?;
    ensure!(
        out.status.success(),
        "redirector endpoints: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// `redirector pods`: the namespaces the daemon serves.
fn pods_table(stage: &Stage) -> Result<String> {
    let out = Command::new(redirector_tests::daemon::redirector_bin())
        .arg("pods")
        .arg("--pin-dir")
        .arg(stage.pins.path())
        .output()
        .context("running redirector pods")?;
    ensure!(
        out.status.success(),
        "redirector pods: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout)?;
    ensure!(
        table
            .lines()
            .any(|l| l.contains("default/sleep") && l.contains("served")),
        "the pod should be served:\n{table}"
    );
    Ok(table)
}

fn service_vip(stage: &Stage) -> Result<String> {
    let report: serde_json::Value = serde_json::from_str(&endpoints(stage, true)?)?;
    report["services"][0]["vip"]
        .as_str()
        .map(str::to_owned)
        .context("no service in `redirector endpoints`")
}

fn repo_root() -> Result<PathBuf> {
    Ok(cmd::workspace_root())
}
