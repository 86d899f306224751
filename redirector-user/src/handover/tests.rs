//! The exchange between two daemons, played in one process over a real
//! Unix socket, with real listening sockets on loopback.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    os::fd::AsFd as _,
};

use super::*;

/// A map of this process's own and its id: the proof a successor sends,
/// and the id the predecessor knows.
fn a_map() -> (OwnedFd, u32) {
    let obj = aya_obj::Map::new_from_params(2, 4, 4, 1, 0);
    let map = aya::maps::MapData::create(obj, "rd_handover_t", None).expect("a map (root)");
    let id = map.info().unwrap().id();
    (map.fd().as_fd().try_clone_to_owned().unwrap(), id)
}

/// A server for successors proving `map`'s id, and the proof.
fn server_and_proof(path: &Path) -> (Server, OwnedFd) {
    let (proof, id) = a_map();
    (Server::bind(path.to_owned(), vec![id]).unwrap(), proof)
}

fn temp_socket(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rd-handover-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("handover")
}

#[tokio::test]
async fn a_successor_gets_the_very_sockets_with_their_queues() {
    let path = temp_socket("queues");
    let (server, proof) = server_and_proof(&path);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (tcp_addr, udp_addr) = (tcp.local_addr().unwrap(), udp.local_addr().unwrap());
    let mut listening = Listening::default();
    listening.add(Kind::Proxy, tcp.as_fd()).unwrap();
    listening.add(Kind::DnsUdp, udp.as_fd()).unwrap();
    // The predecessor closes its own descriptors: the duplicates keep the
    // sockets alive, and what waits in them waits on.
    drop((tcp, udp));
    let mut queued = TcpStream::connect(tcp_addr).unwrap();
    queued.write_all(b"queued").unwrap();
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"query", udp_addr)
        .unwrap();

    let asking = std::thread::spawn(move || request(&path, Some(proof)));
    let successor = server.next().await;
    assert_eq!(successor.pid, std::process::id());
    let lock = tempfile_fd();
    successor
        .offer(
            &listening,
            Some(lock.as_fd()),
            serde_json::json!([{"cluster": "c"}]),
        )
        .unwrap();
    drop(listening);
    // Every descriptor came; the predecessor waits for the confirmation.
    let mut handed = asking.join().unwrap().unwrap();
    assert_eq!(handed.pid, std::process::id());
    assert_eq!(handed.outliers, serde_json::json!([{"cluster": "c"}]));
    assert!(handed.take_lock().is_some(), "the lock is shared");
    let confirmation = handed.take_confirmation().expect("version 2");
    let confirming = std::thread::spawn(move || confirmation.confirm());
    let deadline = Instant::now() + Duration::from_secs(30);
    successor.confirmed(deadline).expect("confirmed");
    drop(successor);
    assert_eq!(confirming.join().unwrap().unwrap(), Confirmed::Acknowledged);

    assert!(
        handed.take(Kind::Proxy, udp_addr).is_none(),
        "kind and address both match"
    );
    let fd = handed
        .take(Kind::Proxy, tcp_addr)
        .expect("the proxy listener");
    check(Kind::Proxy, &fd, tcp_addr).unwrap();
    let listener = TcpListener::from(fd);
    listener.set_nonblocking(false).unwrap();
    let (mut accepted, _) = listener.accept().unwrap();
    let mut got = [0u8; 6];
    accepted.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"queued", "the connect made before the handover");

    let fd = handed.take(Kind::DnsUdp, udp_addr).expect("the DNS socket");
    let err = check(Kind::DnsTcp, &fd, udp_addr).unwrap_err();
    assert!(
        err.to_string().contains("not a SOCK_STREAM socket"),
        "{err}"
    );
    check(Kind::DnsUdp, &fd, udp_addr).unwrap();
    let udp = UdpSocket::from(fd);
    udp.set_nonblocking(false).unwrap();
    let mut buf = [0u8; 16];
    let (n, _) = udp.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"query", "the query sent before the handover");
}

#[tokio::test]
async fn a_predecessor_that_closes_without_an_offer_is_an_error() {
    let path = temp_socket("no-offer");
    let (server, proof) = server_and_proof(&path);
    let asking = std::thread::spawn(move || request(&path, Some(proof)));
    drop(server.next().await);
    let err = asking.join().unwrap().unwrap_err().to_string();
    assert!(err.contains("without handing over"), "{err}");
}

#[test]
fn nobody_listening_is_an_error_naming_the_socket() {
    let path = temp_socket("nobody");
    let _ = std::fs::remove_file(&path);
    let err = request(&path, None).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[tokio::test]
async fn a_garbled_request_is_skipped_and_the_next_one_served() {
    let path = temp_socket("garbled");
    let (server, proof) = server_and_proof(&path);
    let mut garbled = UnixStream::connect(&path).unwrap();
    garbled.write_all(b"hello\n").unwrap();
    let asking = std::thread::spawn(move || request(&path, Some(proof)));
    let successor = server.next().await;
    successor
        .offer(&Listening::default(), None, serde_json::Value::Null)
        .unwrap();
    let handed = asking.join().unwrap().unwrap();
    assert!(handed.describe().is_empty());
    // The garbled one was closed without an answer.
    let mut rest = Vec::new();
    garbled.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

/// A descriptor standing for the pin directory's lock.
fn tempfile_fd() -> OwnedFd {
    let path = temp_socket("lock").with_extension("lock");
    std::fs::File::create(path).unwrap().into()
}

#[tokio::test]
async fn a_successor_that_goes_without_confirming_leaves_the_predecessor_serving() {
    let path = temp_socket("unconfirmed");
    let (server, proof) = server_and_proof(&path);
    let asking = std::thread::spawn(move || request(&path, Some(proof)));
    let successor = server.next().await;
    successor
        .offer(&Listening::default(), None, serde_json::Value::Null)
        .unwrap();
    // The successor dies with its end of the exchange.
    drop(asking.join().unwrap().unwrap());
    let started = Instant::now();
    let err = successor
        .confirmed(Instant::now() + Duration::from_secs(30))
        .unwrap_err()
        .to_string();
    assert!(err.contains("without confirming"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "at once, not at the deadline"
    );
}

#[tokio::test]
async fn a_confirmation_after_the_deadline_is_not_acknowledged_and_the_successor_stops() {
    let path = temp_socket("late");
    let (server, proof) = server_and_proof(&path);
    let asking = std::thread::spawn(move || request(&path, Some(proof)));
    let successor = server.next().await;
    successor
        .offer(&Listening::default(), None, serde_json::Value::Null)
        .unwrap();
    let mut handed = asking.join().unwrap().unwrap();
    let err = successor
        .confirmed(Instant::now() + Duration::from_millis(200))
        .unwrap_err()
        .to_string();
    assert!(err.contains("did not confirm within"), "{err}");
    drop(successor);
    // The predecessor (alive: this process) serves on; the successor
    // learns it did not take over.
    let err = handed
        .take_confirmation()
        .unwrap()
        .confirm()
        .unwrap_err()
        .to_string();
    assert!(err.contains("did not acknowledge"), "{err}");
}

#[tokio::test]
async fn a_peer_proving_another_map_is_refused_and_told_why() {
    let path = temp_socket("other-map");
    let (server, _proof) = server_and_proof(&path);
    let (other, other_id) = a_map();
    let asking = std::thread::spawn(move || request(&path, Some(other)));
    let serving = tokio::time::timeout(Duration::from_secs(2), server.next()).await;
    assert!(serving.is_err(), "nobody is handed anything");
    let err = asking.join().unwrap().unwrap_err().to_string();
    assert!(
        err.contains("refused")
            && err.contains(&format!(
                "the map it sent (id {other_id}) is not one of the 1 pinned"
            )),
        "{err}"
    );
}

#[tokio::test]
async fn a_peer_without_a_proof_or_of_another_version_is_refused() {
    let path = temp_socket("no-proof");
    let (server, _proof) = server_and_proof(&path);
    let p = path.clone();
    let asking = std::thread::spawn(move || request(&p, None));
    let serving = tokio::time::timeout(Duration::from_secs(2), server.next()).await;
    assert!(serving.is_err());
    let err = asking.join().unwrap().unwrap_err().to_string();
    assert!(
        err.contains("not one map opened from the pin directory"),
        "{err}"
    );

    // Version 1's request (no version): refused with a line saying why.
    let mut old = UnixStream::connect(&path).unwrap();
    old.write_all(b"{\"pid\":1}\n").unwrap();
    let serving = tokio::time::timeout(Duration::from_secs(2), server.next()).await;
    assert!(serving.is_err());
    let mut answer = String::new();
    old.read_to_string(&mut answer).unwrap();
    match parse_offer(answer.trim_end().as_bytes()).unwrap() {
        Reply::Refused(why) => assert!(why.contains("protocol version 1, this daemon 2"), "{why}"),
        Reply::Offer(o) => panic!("offered {o:?}"),
    }
}

#[test]
fn the_messages_parse_strictly_and_never_panic() {
    assert_eq!(
        parse_request(br#"{"version":2,"pid":7}"#).unwrap(),
        Request { version: 2, pid: 7 }
    );
    assert_eq!(parse_request(br#"{"pid":7}"#).unwrap().version, 1);
    assert!(parse_request(b"\xff\x00").is_err());
    assert!(matches!(
        parse_offer(br#"{"version":2,"refused":"no"}"#),
        Ok(Reply::Refused(r)) if r == "no"
    ));
    let Ok(Reply::Offer(offer)) =
        parse_offer(br#"{"version":2,"pid":1,"sockets":[{"kind":"lock"}]}"#)
    else {
        panic!("an offer")
    };
    assert_eq!(offer.sockets[0].kind, Kind::Lock);
    assert!(parse_offer(br#"{"pid":1,"sockets":[{"kind":"pipe"}]}"#).is_err());
    let many = format!(
        r#"{{"pid":1,"sockets":[{}]}}"#,
        vec![r#"{"kind":"proxy"}"#; MAX_FDS + 1].join(",")
    );
    assert!(
        parse_offer(many.as_bytes())
            .unwrap_err()
            .contains("more than any daemon")
    );
    parse_confirmation(br#"{"confirm":true}"#, false).unwrap();
    parse_confirmation(br#"{"ack":true}"#, true).unwrap();
    assert!(parse_confirmation(br#"{"confirm":false}"#, false).is_err());
    assert!(parse_confirmation(br#"{"ack":true}"#, false).is_err());
    assert!(parse_confirmation(br#"{"confirm":true,"x":1}"#, false).is_err());
}
