//! The media plane's own parsers: the STUN USERNAME ufrag that routes a new address, keyframe
//! detection on every codec, and the VP8 frame height. None may panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::media::keyframe::{VideoCodec, is_keyframe, vp8_keyframe_height};
use relay::media::stun::local_ufrag;

fuzz_target!(|data: &[u8]| {
    let _ = local_ufrag(data);
    for codec in [VideoCodec::Vp8, VideoCodec::Vp9, VideoCodec::H264] {
        let _ = is_keyframe(codec, data);
    }
    let _ = vp8_keyframe_height(data);
});
