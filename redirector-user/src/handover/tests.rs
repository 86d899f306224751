//! The exchange between two daemons, played in one process over a real
//! Unix socket, with real listening sockets on loopback.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    os::fd::AsFd as _,
};

use super::*;

fn temp_socket(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rd-handover-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("handover")
}

#[tokio::test]
async fn a_successor_gets_the_very_sockets_with_their_queues() {
    let path = temp_socket("queues");
    let server = Server::bind(path.clone()).unwrap();
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

    let asking = std::thread::spawn(move || request(&path));
    let successor = server.next().await;
    assert_eq!(successor.pid, std::process::id());
    successor.offer(&listening).unwrap();
    drop((listening, successor));
    let mut handed = asking.join().unwrap().unwrap();
    assert_eq!(handed.pid, std::process::id());

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
    let server = Server::bind(path.clone()).unwrap();
    let asking = std::thread::spawn(move || request(&path));
    drop(server.next().await);
    let err = asking.join().unwrap().unwrap_err().to_string();
    assert!(err.contains("without handing over"), "{err}");
}

#[test]
fn nobody_listening_is_an_error_naming_the_socket() {
    let path = temp_socket("nobody");
    let _ = std::fs::remove_file(&path);
    let err = request(&path).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[tokio::test]
async fn a_garbled_request_is_skipped_and_the_next_one_served() {
    let path = temp_socket("garbled");
    let server = Server::bind(path.clone()).unwrap();
    let mut garbled = UnixStream::connect(&path).unwrap();
    garbled.write_all(b"hello\n").unwrap();
    let asking = std::thread::spawn(move || request(&path));
    let successor = server.next().await;
    successor.offer(&Listening::default()).unwrap();
    drop(successor);
    let handed = asking.join().unwrap().unwrap();
    assert!(handed.describe().is_empty());
    // The garbled one was closed without an answer.
    let mut rest = Vec::new();
    garbled.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}
