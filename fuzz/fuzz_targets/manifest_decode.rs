//! The manifest decoder takes bytes from any client: it must refuse garbage without panicking,
//! and whatever it accepts must encode back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::files::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(m.encode(), data);
        assert_eq!(
            m.chunks().iter().map(|c| u64::from(c.len)).sum::<u64>(),
            m.size()
        );
    }
});
