//! A successor's request bytes, sent without a proof → always skipped,
//! never a panic, and the predecessor goes on serving.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert!(
        redirector_user::fuzzing::handover_request(data),
        "a request without a proof was taken"
    );
});
