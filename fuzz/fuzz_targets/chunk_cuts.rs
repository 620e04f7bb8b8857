//! The cut point search is the relay's own, the cut points must be FastCDC's: for any bytes and
//! any sizes of the kind the chunker uses (powers of two, min = avg / 4, max = avg * 4), the
//! relay's search and the crate's agree.
//!
//! The first byte picks the average (256 B to 128 KiB); the second, a length the input is
//! stretched to (each repeat of it shifted by its count), so that windows of hundreds of KiB,
//! where the search runs several blocks side by side, are reached from small inputs.
#![no_main]

use fastcdc::v2020::MASKS;
use libfuzzer_sys::fuzz_target;
use relay::files::gear::{Sizes, crate_cut_len, cut_len};

fuzz_target!(|data: &[u8]| {
    let [k, stretch, rest @ ..] = data else {
        return;
    };
    let bits = 8 + usize::from(k % 10);
    let avg = 1usize << bits;
    let s = Sizes {
        min: avg / 4,
        avg,
        max: avg * 4,
        mask_s: MASKS[bits + 1],
        mask_l: MASKS[bits - 1],
    };
    let len = if rest.is_empty() || *stretch == 0 {
        rest.len()
    } else {
        usize::from(*stretch) * 4096
    };
    let source: Vec<u8> = if len == rest.len() {
        rest.to_vec()
    } else {
        (0..len)
            .map(|i| rest[i % rest.len()].wrapping_add((i / rest.len()) as u8))
            .collect()
    };
    assert_eq!(
        cut_len(&source, &s),
        crate_cut_len(&source, &s),
        "{} bytes, average {avg}",
        source.len()
    );
});
