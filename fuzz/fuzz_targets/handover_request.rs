//! A successor's request bytes → the pid the predecessor reads, or the
//! request skipped; never a panic, and the predecessor goes on serving.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = redirector_user::fuzzing::handover_request(data);
});
