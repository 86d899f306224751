//! A DNS-over-TCP connection's bytes → what the responder writes back:
//! whole frames only, one per query it read, each a DNS message.
#![no_main]

use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;
use redirector_user::fuzzing::{dns_tcp, dns_tcp_frames};

fuzz_target!(|data: &[u8]| {
    let written = dns_tcp(data);
    let frames = dns_tcp_frames(&written);
    let framed: usize = frames.iter().map(|f| f.len() + 2).sum();
    assert_eq!(framed, written.len(), "a partial frame was written");
    assert!(frames.len() <= dns_tcp_frames(data).len());
    for frame in &frames {
        Message::from_vec(frame).expect("every reply is a DNS message");
    }
});
