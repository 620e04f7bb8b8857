//! Token parsing and verification: any string is refused cleanly or verified, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::control::token::SigningKey;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = SigningKey::from_bytes([7; 32]).verify(text, 1_800_000_000, 1);
    }
});
