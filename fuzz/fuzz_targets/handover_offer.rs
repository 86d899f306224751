//! A predecessor's offer (bytes, and how many descriptors came with it)
//! → what the successor takes, or a refusal; never a panic, and never
//! more descriptors taken than were sent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&fds, offer)) = data.split_first() else {
        return;
    };
    let fds = usize::from(fds % 4);
    if let Ok(taken) = redirector_user::fuzzing::handover_offer(offer, fds) {
        assert_eq!(taken.len(), fds, "{taken:?}");
    }
});
