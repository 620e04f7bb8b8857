//! The media plane's own parsers: the STUN USERNAME ufrag that routes a new address, keyframe
//! detection on every codec, the VP8 frame height, the VP8/VP9 picture-id renumbering (which
//! must keep the payload's length and never touch a byte outside its two fields), and the count
//! of an offer's m-lines against the caps, and a chat message as a page sends it (whatever it
//! is, a relayed stamp is JSON that names the sender given, never one from the input). None
//! may panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::media::chat;
use relay::media::keyframe::{VideoCodec, is_keyframe, vp8_keyframe_height};
use relay::media::picture::PictureIds;
use relay::media::plane::check_offer_size;
use relay::media::stun::local_ufrag;

fuzz_target!(|data: &[u8]| {
    let _ = local_ufrag(data);
    for codec in [VideoCodec::Vp8, VideoCodec::Vp9, VideoCodec::H264] {
        let _ = is_keyframe(codec, data);
        // A slot that switches from a source at picture 0 to this payload's.
        let mut ids = PictureIds::default();
        let first = [0xa8u8, 0x80, 0x00, 0x00, 0x00];
        let _ = ids.rewrite(codec, &first, true);
        if let Some(new) = ids.rewrite(codec, data, true) {
            let mut own = data.to_vec();
            new.apply(&mut own);
            assert_eq!(own.len(), data.len());
            let changed = own.iter().zip(data).filter(|(a, b)| a != b).count();
            assert!(changed <= 3, "at most two picture-id bytes and TL0PICIDX");
        }
    }
    let _ = vp8_keyframe_height(data);
    for binary in [false, true] {
        if let Ok(text) = chat::parse(data, binary) {
            assert!(text.len() <= chat::MAX_TEXT_BYTES);
            let stamped: serde_json::Value =
                serde_json::from_slice(&chat::stamp("ann", 1, &text)).expect("a stamp is JSON");
            assert_eq!(stamped["from"], "ann");
            assert_eq!(stamped["text"], text.as_str());
        }
    }
    if let Ok(offer) = std::str::from_utf8(data) {
        let _ = check_offer_size(offer, 16, 8);
    }
});
