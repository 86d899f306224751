//! Config text → the validated services (and what the daemon builds from
//! them) or the list of problems; neither may panic, and every problem
//! names the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(problems) = redirector_user::fuzzing::config(text) {
        assert!(
            problems.lines().all(|l| l.starts_with("fuzz.yaml")),
            "a problem that does not say where it is: {problems}"
        );
    }
});
