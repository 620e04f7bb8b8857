//! The cut point search is the relay's own, the cut points must be FastCDC's: for any bytes and
//! any sizes of the kind the chunker uses (powers of two, min = avg / 4, max = avg * 4), the
//! relay's search and the crate's agree.
#![no_main]

use fastcdc::v2020::MASKS;
use libfuzzer_sys::fuzz_target;
use relay::files::gear::{Sizes, crate_cut_len, cut_len};

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let bits = 8 + usize::from(k % 8);
    let avg = 1usize << bits;
    let s = Sizes {
        min: avg / 4,
        avg,
        max: avg * 4,
        mask_s: MASKS[bits + 1],
        mask_l: MASKS[bits - 1],
    };
    assert_eq!(
        cut_len(rest, &s),
        crate_cut_len(rest, &s),
        "{} bytes, average {avg}",
        rest.len()
    );
});
