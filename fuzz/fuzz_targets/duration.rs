//! Go-style durations: never a panic (the fraction of a huge number
//! included), and what parses is the sum of its parts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = redirector_user::fuzzing::duration(text) {
        // A duration followed by "0s" is the same duration.
        if !text.is_empty() && text != "0" && text != "+0" && text != "-0" {
            assert_eq!(
                redirector_user::fuzzing::duration(&format!("{text}0s")),
                Ok(d),
                "{text:?}"
            );
        }
    }
});
