//! `rdt-upstream --listen <ip:port> --name <name> [--body-bytes 1024]
//! [--cert <pem> --key <pem>] [--stats <socket path>]`: the benchmark's
//! upstream, the same server behind every system under test, so
//! differences between rows are the systems' own.
//!
//! HTTP/1.1 with keep-alive (hyper) on one thread; with `--cert`/`--key`
//! it speaks HTTPS (rustls, ALPN `http/1.1`). Every request gets `200` and
//! a body of exactly `--body-bytes` bytes: `healthy: <name>`, a newline,
//! then `.` padding (the newline ends the name, which may contain dots).
//! SIGUSR1 switches to `503` with `503 from <name>` (same length), SIGUSR2
//! back to `200`: the "primary answers 503" fault without a restart. Both
//! bodies are built once and shared as `Bytes`, so a request allocates
//! nothing beyond what hyper needs. Prints `listening on <addr>` once bound.
//!
//! It counts connections, TLS handshakes (full or resumed, as rustls's
//! `handshake_kind()` says, and again at each connection's first request,
//! so handshakes of connections that carried traffic can be told from
//! health checks) and requests, in atomics: a request costs one increment.
//! Whoever connects to the `--stats` Unix socket gets one line with every
//! counter ([`UpstreamStats`]) and the socket closed. The TLS settings are
//! rustls's defaults, session cache and TLS 1.3 tickets included: what a
//! client gets resumed is what it earns against a stock rustls server.

use std::{
    cell::Cell,
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use clap::Parser;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use redirector_tests::upstream::UpstreamStats;
use rustls::{
    HandshakeKind, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, UnixListener},
    signal::unix::{SignalKind, signal},
};
use tokio_rustls::TlsAcceptor;

#[derive(Parser)]
#[command(name = "rdt-upstream", about = "The benchmark's HTTP/HTTPS upstream")]
struct Args {
    /// Address to listen on (port 0 picks a free one)
    #[arg(long)]
    listen: SocketAddr,
    /// Name in the bodies: `healthy: <name>`
    #[arg(long)]
    name: String,
    /// Exact length of every response body
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// Certificate chain (PEM): serve HTTPS
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) for --cert
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Unix socket that answers every connection with the counters
    #[arg(long)]
    stats: Option<PathBuf>,
}

/// The counters behind `--stats`; see [`UpstreamStats`] for each one.
#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    tls_failed: AtomicU64,
    tls_full: AtomicU64,
    tls_hello_retry: AtomicU64,
    tls_resumed: AtomicU64,
    tls_full_used: AtomicU64,
    tls_resumed_used: AtomicU64,
    requests: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// A completed handshake (`used`: at its connection's first request).
    fn handshake(&self, kind: HandshakeKind, used: bool) {
        match (kind, used) {
            (HandshakeKind::Resumed, false) => bump(&self.tls_resumed),
            (HandshakeKind::Resumed, true) => bump(&self.tls_resumed_used),
            (HandshakeKind::Full, false) => bump(&self.tls_full),
            (HandshakeKind::FullWithHelloRetryRequest, false) => {
                bump(&self.tls_full);
                bump(&self.tls_hello_retry);
            }
            (HandshakeKind::Full | HandshakeKind::FullWithHelloRetryRequest, true) => {
                bump(&self.tls_full_used);
            }
        }
    }

    fn snapshot(&self) -> UpstreamStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        UpstreamStats {
            connections: get(&self.connections),
            tls_failed: get(&self.tls_failed),
            tls_full: get(&self.tls_full),
            tls_hello_retry: get(&self.tls_hello_retry),
            tls_resumed: get(&self.tls_resumed),
            tls_full_used: get(&self.tls_full_used),
            tls_resumed_used: get(&self.tls_resumed_used),
            requests: get(&self.requests),
        }
    }
}

/// What every connection shares: the two prepared bodies, the switch and
/// the counters.
struct Answers {
    healthy: Bytes,
    unavailable: Bytes,
    failing: AtomicBool,
    counters: Counters,
}

impl Answers {
    fn new(name: &str, body_bytes: usize) -> Result<Answers, String> {
        let pad = |head: String| {
            if head.len() > body_bytes {
                return Err(format!(
                    "--body-bytes {body_bytes} is shorter than {:?} ({} bytes)",
                    head,
                    head.len()
                ));
            }
            let mut body = head.into_bytes();
            body.resize(body_bytes, b'.');
            Ok(Bytes::from(body))
        };
        Ok(Answers {
            healthy: pad(format!("healthy: {name}\n"))?,
            unavailable: pad(format!("503 from {name}\n"))?,
            failing: AtomicBool::new(false),
            counters: Counters::default(),
        })
    }

    fn respond(&self) -> Response<Full<Bytes>> {
        // hyper sets content-length from the exact size of a `Full` body.
        if self.failing.load(Ordering::Relaxed) {
            let mut response = Response::new(Full::new(self.unavailable.clone()));
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response
        } else {
            Response::new(Full::new(self.healthy.clone()))
        }
    }
}

fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<TlsAcceptor, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(std::iter::Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("reading {}: {e}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("reading {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| format!("TLS configuration: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves HTTP/1.1 on `io`; `handshake`: how its TLS session began, counted
/// again at the first request.
async fn serve<S>(io: S, answers: Arc<Answers>, handshake: Option<HandshakeKind>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let first = Cell::new(handshake);
    let service = service_fn(move |_request| {
        if let Some(kind) = first.take() {
            answers.counters.handshake(kind, true);
        }
        bump(&answers.counters.requests);
        let response = answers.respond();
        async move { Ok::<_, Infallible>(response) }
    });
    // Errors are clients going away mid-request: nothing to report.
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// SIGUSR1: answer 503 from now on; SIGUSR2: back to 200.
async fn watch_signals(answers: Arc<Answers>) -> std::io::Result<()> {
    let mut fail = signal(SignalKind::user_defined1())?;
    let mut heal = signal(SignalKind::user_defined2())?;
    loop {
        tokio::select! {
            Some(()) = fail.recv() => answers.failing.store(true, Ordering::Relaxed),
            Some(()) = heal.recv() => answers.failing.store(false, Ordering::Relaxed),
            else => return Ok(()),
        }
    }
}

/// Answers every connection to `listener` with the counters, one line.
async fn serve_stats(listener: UnixListener, answers: Arc<Answers>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let line = format!("{}\n", answers.counters.snapshot());
        tokio::spawn(async move {
            let _ = stream.write_all(line.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

fn bind_stats(path: &PathBuf) -> Result<UnixListener, String> {
    // A restarted upstream finds its predecessor's socket file.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing {}: {e}", path.display())),
    }
    UnixListener::bind(path).map_err(|e| format!("binding {}: {e}", path.display()))
}

async fn run(args: Args) -> Result<(), String> {
    let answers = Arc::new(Answers::new(&args.name, args.body_bytes)?);
    let tls = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    // Handlers first, so a signal right after the `listening` line counts.
    let signals = watch_signals(Arc::clone(&answers));
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("binding {}: {e}", args.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?;
    let stats_listener = match &args.stats {
        Some(path) => Some(bind_stats(path)?),
        None => None,
    };
    let stats = async {
        match stats_listener {
            Some(listener) => serve_stats(listener, Arc::clone(&answers)).await,
            None => std::future::pending().await,
        }
    };
    println!("listening on {local}");
    let accept = async {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of descriptors and the like: back off, keep serving.
                    eprintln!("rdt-upstream {}: accept: {err}", args.name);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            bump(&answers.counters.connections);
            let answers = Arc::clone(&answers);
            match &tls {
                None => {
                    tokio::spawn(serve(stream, answers, None));
                }
                Some(tls) => {
                    let handshake = tls.accept(stream);
                    tokio::spawn(async move {
                        match handshake.await {
                            Ok(stream) => {
                                let kind = stream.get_ref().1.handshake_kind();
                                if let Some(kind) = kind {
                                    answers.counters.handshake(kind, false);
                                }
                                serve(stream, answers, kind).await;
                            }
                            Err(_) => bump(&answers.counters.tls_failed),
                        }
                    });
                }
            }
        }
    };
    tokio::select! {
        result = signals => result.map_err(|e| format!("installing signal handlers: {e}")),
        () = accept => Ok(()),
        () = stats => Ok(()),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rdt-upstream: tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rdt-upstream: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_exact_length_and_name_the_server() {
        let answers = Answers::new("east.test", 64).unwrap();
        assert_eq!(answers.healthy.len(), 64);
        assert_eq!(answers.unavailable.len(), 64);
        assert!(answers.healthy.starts_with(b"healthy: east.test\n...."));
        assert!(answers.unavailable.starts_with(b"503 from east.test\n...."));
        assert!(Answers::new("east.test", 10).is_err());
    }
}
