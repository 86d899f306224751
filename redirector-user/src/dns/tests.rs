use std::{
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        DNSClass, Name, RData, RecordType,
        rdata::{A, AAAA},
    },
};

use super::*;

const VIP: Ipv4Addr = Ipv4Addr::new(240, 240, 151, 69);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x1234, 0, 0, 0, 0x45);

fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, last)
}

fn hosts() -> Hosts {
    Hosts::new([
        ("mydb.com", VIP, VIP6),
        // A second port of the same host: one VIP.
        ("mydb.com", VIP, VIP6),
        ("Other.Example", Ipv4Addr::new(240, 240, 0, 9), v6(9)),
        ("absolute.test.", Ipv4Addr::new(240, 240, 0, 10), v6(10)),
    ])
}

fn query(name: &str, ty: RecordType) -> Message {
    let mut msg = Message::new(0xbeef, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_str(name).expect("name"), ty));
    msg
}

fn local(msg: &Message) -> Message {
    match reply(&msg.to_vec().expect("encode"), &hosts()) {
        Reply::Local(bytes) => Message::from_vec(&bytes).expect("a DNS message"),
        Reply::Forward { .. } => panic!("{msg:?} was forwarded"),
    }
}

fn forwarded(msg: &Message) -> bool {
    matches!(
        reply(&msg.to_vec().expect("encode"), &hosts()),
        Reply::Forward { .. }
    )
}

#[test]
fn a_for_a_configured_host_is_its_vip() {
    // Names on the wire are absolute; letter case is the app's.
    for name in ["mydb.com.", "MyDB.Com.", "MYDB.COM."] {
        let q = query(name, RecordType::A);
        let r = local(&q);
        assert_eq!(r.metadata.id, 0xbeef, "{name}: the app's transaction id");
        assert_eq!(r.metadata.message_type, MessageType::Response);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative && r.metadata.recursion_desired);
        assert!(r.metadata.recursion_available);
        assert_eq!(r.queries, q.queries, "{name}: question echoed as asked");
        let [answer] = r.answers.as_slice() else {
            panic!("{name}: one answer expected, got {:?}", r.answers)
        };
        assert_eq!(answer.data, RData::A(A(VIP)));
        assert_eq!(answer.ttl, ANSWER_TTL);
        assert_eq!(answer.name, q.queries[0].name().clone());
    }
}

#[test]
fn aaaa_for_a_configured_host_is_its_ipv6_vip() {
    for name in ["mydb.com.", "MYDB.com."] {
        let q = query(name, RecordType::AAAA);
        let r = local(&q);
        assert_eq!(r.metadata.id, 0xbeef);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.queries, q.queries);
        let [answer] = r.answers.as_slice() else {
            panic!("{name}: one answer expected, got {:?}", r.answers)
        };
        assert_eq!(answer.data, RData::AAAA(AAAA(VIP6)));
        assert_eq!(answer.ttl, ANSWER_TTL);
    }
    let r = local(&query("absolute.test.", RecordType::AAAA));
    assert_eq!(r.answers[0].data, RData::AAAA(AAAA(v6(10))));
}

#[test]
fn other_types_of_a_configured_host_are_nodata_and_not_forwarded() {
    for ty in [RecordType::MX, RecordType::HTTPS, RecordType::TXT] {
        let r = local(&query("mydb.com.", ty));
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{ty}");
        assert!(r.answers.is_empty(), "{ty}: {:?}", r.answers);
    }
}

#[test]
fn other_names_and_search_expansions_are_forwarded() {
    for name in [
        "example.org.",
        "mydb.com.svc.cluster.local.",
        "www.mydb.com.",
        "mydb.co.",
        "db.com.",
    ] {
        assert!(forwarded(&query(name, RecordType::A)), "{name}");
        assert!(forwarded(&query(name, RecordType::AAAA)), "{name}");
    }
}

#[test]
fn anything_but_one_standard_in_question_is_forwarded() {
    let mut two = query("mydb.com.", RecordType::A);
    two.add_query(Query::query(
        Name::from_str("mydb.com.").unwrap(),
        RecordType::AAAA,
    ));
    assert!(forwarded(&two), "two questions");

    let none = Message::new(1, MessageType::Query, OpCode::Query);
    assert!(forwarded(&none), "no question");

    let mut chaos = query("mydb.com.", RecordType::A);
    let q = chaos.queries[0]
        .clone()
        .set_query_class(DNSClass::CH)
        .clone();
    chaos.queries = vec![q];
    assert!(forwarded(&chaos), "class CH");

    let mut notify = query("mydb.com.", RecordType::A);
    notify.metadata.op_code = OpCode::Notify;
    assert!(forwarded(&notify), "NOTIFY");

    let mut response = query("mydb.com.", RecordType::A);
    response.metadata.message_type = MessageType::Response;
    assert!(forwarded(&response), "a response is nobody's question");

    assert_eq!(
        reply(b"\x12\x34 not dns", &hosts()),
        Reply::Forward { udp_size: 4096 }
    );
    assert_eq!(reply(b"", &hosts()), Reply::Forward { udp_size: 4096 });
}

#[test]
fn edns_in_the_query_gets_edns_in_the_answer() {
    let r = local(&query("mydb.com.", RecordType::A));
    assert!(r.edns.is_none());
    let mut q = query("mydb.com.", RecordType::A);
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    q.set_edns(edns);
    let r = local(&q);
    assert_eq!(r.edns.expect("an OPT record").max_payload(), 1232);
}

#[test]
fn hosts_match_exactly_whatever_the_case() {
    let h = hosts();
    let v4 = |name| h.get(name).map(|v| v.v4.clone());
    assert_eq!(v4("mydb.com"), Some(vec![VIP]), "one VIP per host");
    assert_eq!(
        h.get("mydb.com").map(|v| v.v6.clone()),
        Some(vec![VIP6]),
        "one IPv6 VIP per host"
    );
    assert_eq!(
        v4("other.example."),
        Some(vec![Ipv4Addr::new(240, 240, 0, 9)])
    );
    assert_eq!(
        v4("absolute.test"),
        Some(vec![Ipv4Addr::new(240, 240, 0, 10)])
    );
    assert_eq!(
        v4("ABSOLUTE.test."),
        Some(vec![Ipv4Addr::new(240, 240, 0, 10)])
    );
    assert_eq!(h.get("mydb.com.."), None);
    assert_eq!(h.get("com"), None);
}

#[test]
fn refused_keeps_the_id_and_question() {
    let q = query("example.org.", RecordType::A);
    let r = Message::from_vec(&refused(&q.to_vec().unwrap()).expect("an answer")).unwrap();
    assert_eq!(r.metadata.id, 0xbeef);
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert_eq!(r.queries, q.queries);
    assert_eq!(refused(b"junk"), None);
}

#[test]
fn the_udp_size_follows_the_queries_edns_within_512_to_4096() {
    let size = |msg: &Message| match reply(&msg.to_vec().expect("encode"), &hosts()) {
        Reply::Forward { udp_size } => udp_size,
        Reply::Local(_) => panic!("answered locally"),
    };
    let mut q = query("other.test.", RecordType::A);
    assert_eq!(size(&q), 512, "no EDNS: RFC 1035's 512");
    for (advertised, expected) in [(1232, 1232), (100, 512), (4096, 4096), (65535, 4096)] {
        let mut edns = Edns::new();
        edns.set_max_payload(advertised);
        q.set_edns(edns);
        assert_eq!(size(&q), expected, "EDNS {advertised}");
    }
}

#[test]
fn servfail_and_truncated_keep_the_id_and_question() {
    let q = query("other.test.", RecordType::AAAA);
    let bytes = q.to_vec().unwrap();
    let r = Message::from_vec(&servfail(&bytes).expect("an answer")).unwrap();
    assert_eq!(r.metadata.id, 0xbeef);
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(r.metadata.message_type, MessageType::Response);
    assert_eq!(r.queries, q.queries);
    let t = Message::from_vec(&truncated(&bytes).expect("an answer")).unwrap();
    assert!(t.metadata.truncation);
    assert_eq!(t.metadata.id, 0xbeef);
    assert_eq!(t.metadata.response_code, ResponseCode::NoError);
    assert!(t.answers.is_empty());
    assert_eq!(servfail(b"junk"), None);
    assert_eq!(truncated(b""), None);
}

mod tcp_framing {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt as _;

    use crate::dns::serve::{frame, read_message};

    const IDLE: Duration = Duration::from_secs(10);
    const READ: Duration = Duration::from_secs(3);

    #[tokio::test]
    async fn messages_are_read_whole_in_order_then_none_at_the_end() {
        let mut bytes = frame(b"first").unwrap();
        bytes.extend(frame(b"").unwrap());
        bytes.extend(frame(&[7u8; 300]).unwrap());
        let mut r = bytes.as_slice();
        assert_eq!(
            read_message(&mut r, IDLE, READ).await.unwrap().unwrap(),
            b"first"
        );
        assert_eq!(
            read_message(&mut r, IDLE, READ).await.unwrap().unwrap(),
            b""
        );
        assert_eq!(
            read_message(&mut r, IDLE, READ).await.unwrap().unwrap(),
            [7u8; 300]
        );
        assert_eq!(read_message(&mut r, IDLE, READ).await.unwrap(), None);
        assert!(frame(&vec![0u8; 65536]).is_err());
    }

    #[tokio::test]
    async fn a_stream_ending_inside_a_message_is_an_error() {
        for bytes in [&b"\x00"[..], b"\x00\x05abc", b"\xff\xff"] {
            let mut r = bytes;
            let e = read_message(&mut r, IDLE, READ).await.unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{bytes:?}");
        }
    }

    /// Nothing for `IDLE`: the connection is done; a message begun and not
    /// finished within `READ`: an error; a byte at a time within `READ`
    /// is fine.
    #[tokio::test(start_paused = true)]
    async fn idle_and_partial_messages_time_out() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let started = tokio::time::Instant::now();
        assert_eq!(read_message(&mut server, IDLE, READ).await.unwrap(), None);
        assert_eq!(started.elapsed(), IDLE);

        let (mut client2, mut server2) = tokio::io::duplex(1024);
        client2.write_all(b"\x00\x10abc").await.unwrap();
        let started = tokio::time::Instant::now();
        let e = read_message(&mut server2, IDLE, READ).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), READ);

        let writer = tokio::spawn(async move {
            for b in frame(b"slow but in time").unwrap() {
                client.write_all(&[b]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            client
        });
        let got = read_message(&mut server, IDLE, READ).await.unwrap();
        assert_eq!(got.as_deref(), Some(&b"slow but in time"[..]));
        drop(writer.await.unwrap());
    }
}
