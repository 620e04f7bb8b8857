//! The audit witness's file as `relay admin audit verify --witness` reads it: any line, and the
//! JSON behind the tag of a line from the relay. Nothing may panic, and what is found lies inside
//! the line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::control::witness::witnessed;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data)
        && let Some(json) = witnessed(line)
    {
        assert!(line.contains(json));
        assert!(json.starts_with('{'));
    }
});
