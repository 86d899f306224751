//! Arbitrary query bytes → the responder's decision. An answer it makes
//! itself must be a well-formed response to that query (same id, same
//! question), whatever the query held.
#![no_main]

use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(answer) = redirector_user::fuzzing::dns_reply(data) else {
        return;
    };
    let query = Message::from_vec(data).expect("only a query that parses is answered");
    let answer = Message::from_vec(&answer).expect("our answer parses");
    assert_eq!(answer.metadata.id, query.metadata.id);
    assert_eq!(answer.metadata.message_type, MessageType::Response);
    assert_eq!(answer.queries, query.queries);
});
