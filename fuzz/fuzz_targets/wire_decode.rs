//! The frame decoders take bytes from the network: requests on the relay, answers on the client.
//! Neither may panic, and an accepted frame must encode back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::files::wire::{Request, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Request::decode_frame(data) {
        assert_eq!(r.encode().to_vec(), data);
    }
    if let Ok(r) = Response::decode_frame(data) {
        assert_eq!(r.encode().to_vec(), data);
    }
});
