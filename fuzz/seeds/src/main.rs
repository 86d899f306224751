//! Writes the seed corpus of every target to `fuzz/corpus/<target>/`:
//! the repository's config files, durations as users write them, DNS
//! queries as resolvers send them (built with hickory-proto), framed
//! DNS-over-TCP streams, handover messages as the daemons exchange them,
//! and endpoint response heads. Run from the repository root:
//! `cargo run --manifest-path fuzz/seeds/Cargo.toml` (the seeds are
//! committed; run it again after changing it).

use std::{fs, path::Path};

use hickory_proto::{
    op::{Edns, Message, OpCode, Query},
    rr::{DNSClass, Name, RecordType},
};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("fuzz/corpus").join(target);
    fs::create_dir_all(&dir).expect("corpus directory");
    fs::write(dir.join(name), bytes).expect("corpus file");
}

fn query(id: u16, name: &str, kind: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("a name"), kind));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().expect("a query encodes")
}

fn framed(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        out.extend_from_slice(&(m.len() as u16).to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

fn main() {
    // The config files users start from, and the blog's.
    for dir in ["config", "config/blog"] {
        for entry in fs::read_dir(dir).expect("config directory") {
            let path = entry.expect("an entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let name = path.file_name().expect("a name").to_string_lossy();
                write("config", &name, &fs::read(&path).expect("a config file"));
            }
        }
    }

    for (i, d) in [
        "15s",
        "1m",
        "1h30m",
        "1.5s",
        ".5s",
        "100ms",
        "10us",
        "10µs",
        "7ns",
        "0",
        "-1s",
        "+3s",
        "1h1m1s1ms",
        "2562047h",
        "9223372036.854775807s",
    ]
    .iter()
    .enumerate()
    {
        write("duration", &format!("{i:02}"), d.as_bytes());
    }

    let mut queries = vec![
        (
            "a",
            query(0x1234, "mydb.example.com.", RecordType::A, false),
        ),
        ("a-edns", query(1, "mydb.example.com.", RecordType::A, true)),
        (
            "aaaa",
            query(
                2,
                "api.dynamodb.us-east-1.amazonaws.com.",
                RecordType::AAAA,
                true,
            ),
        ),
        ("case", query(3, "MyDB.Example.COM.", RecordType::A, false)),
        ("txt", query(4, "mydb.example.com.", RecordType::TXT, false)),
        ("other", query(5, "example.org.", RecordType::A, true)),
        (
            "search",
            query(
                6,
                "mydb.example.com.svc.cluster.local.",
                RecordType::A,
                false,
            ),
        ),
    ];
    let mut chaos = Message::query();
    chaos.add_query({
        let mut q = Query::query(
            Name::from_ascii("mydb.example.com.").unwrap(),
            RecordType::A,
        );
        q.set_query_class(DNSClass::CH);
        q
    });
    queries.push(("chaos", chaos.to_vec().unwrap()));
    let mut two = Message::query();
    two.add_query(Query::query(
        Name::from_ascii("mydb.example.com.").unwrap(),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_ascii("example.org.").unwrap(),
        RecordType::A,
    ));
    queries.push(("two-questions", two.to_vec().unwrap()));
    let mut status = Message::query();
    status.metadata.op_code = OpCode::Status;
    queries.push(("status", status.to_vec().unwrap()));
    for (name, q) in &queries {
        write("dns_reply", name, q);
    }
    let all: Vec<Vec<u8>> = queries.iter().map(|(_, q)| q.clone()).collect();
    write("dns_tcp", "one", &framed(&all[..1]));
    write("dns_tcp", "pipelined", &framed(&all));
    let mut cut = framed(&all[..2]);
    cut.truncate(cut.len() - 3);
    write("dns_tcp", "truncated", &cut);

    // The first byte is how many descriptors come with the offer.
    let offers: [(&str, u8, &str); 4] = [
        ("empty", 0, r#"{"pid":1,"sockets":[],"extra":null}"#),
        (
            "proxy-dns",
            2,
            r#"{"pid":42,"sockets":[{"kind":"proxy","addr":"127.0.0.1:15001"},{"kind":"dns_udp","addr":"127.0.0.1:15053"}],"extra":{}}"#,
        ),
        (
            "namespace",
            3,
            r#"{"pid":7,"sockets":[{"kind":"netns","ns":4026531840},{"kind":"ns_map","ns":4026531840,"index":0},{"kind":"dns_tcp","addr":"[::1]:15053","ns":4026531840}],"extra":{"namespaces":[{"ns":4026531840,"pod":"default/app"}]}}"#,
        ),
        ("mismatch", 1, r#"{"pid":9,"sockets":[]}"#),
    ];
    for (name, fds, json) in offers {
        let mut bytes = vec![fds];
        bytes.extend_from_slice(json.as_bytes());
        bytes.push(b'\n');
        write("handover_offer", name, &bytes);
    }
    write("handover_request", "pid", b"{\"pid\":1234}\n");
    write("handover_request", "no-newline", b"{\"pid\":1234}");
    write(
        "handover_request",
        "extra-field",
        b"{\"pid\":5,\"proof\":{\"map_id\":17}}\n",
    );

    write(
        "http_response_head",
        "plain",
        b"content-type: text/plain\ncontent-length: 5\nserver: test\n",
    );
    write(
        "http_response_head",
        "hop-by-hop",
        b"connection: close, x-trace\nx-trace: 1\nkeep-alive: timeout=5\nte: trailers\nproxy-connection: keep-alive\ncontent-length: 0\n",
    );
    write(
        "http_response_head",
        "upgrade",
        b"connection: Upgrade\nupgrade: websocket\nsec-websocket-accept: x\n",
    );
    write(
        "http_response_head",
        "ambiguous",
        b"transfer-encoding: chunked\ncontent-length: 10\n",
    );
}
