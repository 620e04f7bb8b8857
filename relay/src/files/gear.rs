//! FastCDC v2020's cut point search, four blocks of the window side by side.
//!
//! The crate's search (`fastcdc::v2020::cut`) is one chain of dependent shifts and adds, a byte
//! after the other: about 1.5 cycles a byte however wide the core, and the largest cost of a first
//! upload on the client. The gear hash of a position depends only on the 64 bytes up to it (older
//! bytes are shifted out of the 64-bit hash), so the window after a chunk's minimum size can be
//! searched in blocks, four at a time, each later block's hash started from the 64 bytes before
//! it: four independent chains that one core runs in not much more than the time of one. The
//! earliest block's cut, if any, wins; when a later block finds one first, only the rest of the
//! blocks before it are searched.
//!
//! Two positions are taken in one step, as the crate does: a shift by two and the even byte's
//! entry of a second table (the gear table shifted left by one) give twice the even position's
//! hash, and adding the odd byte's entry gives the odd position's.
//!
//! The cut points are exactly the crate's, tested against it on random and degenerate data: the
//! same masks per position (the crate checks an even position against the mask shifted left by
//! one, so that position ignores the mask's top bit), the same switch from the small to the large
//! mask at the average size, the same maximum.
//!
//! The crate keeps its gear table private; it is read back through the crate's public `cut`, whose
//! returned hash over two equal bytes `x x` is `3 G[x]` (mod 2^64, where 3 is invertible), and
//! checked against a second probe. Where the table did not read back so, the crate's own search
//! runs.

use std::sync::OnceLock;

use fastcdc::v2020::cut;

/// The crate's gear table and each entry shifted left by one (the crate's own second table).
struct Tables {
    gear: [u64; 256],
    twice: [u64; 256],
}

/// The tables, read back through the crate's public API; `None` if they did not check out.
fn tables() -> Option<&'static Tables> {
    static TABLES: OnceLock<Option<Tables>> = OnceLock::new();
    TABLES
        .get_or_init(|| {
            read_gear().map(|gear| Tables {
                gear,
                twice: gear.map(|g| g << 1),
            })
        })
        .as_ref()
}

/// The gear hash the crate returns for `[x, y]` when no position may cut: `2 G[x] + G[y]`.
fn probe(x: u8, y: u8) -> u64 {
    cut(&[x, y], 0, 2, 2, u64::MAX, u64::MAX, u64::MAX, u64::MAX).0
}

fn read_gear() -> Option<[u64; 256]> {
    // The inverse of 3 modulo 2^64.
    const INV3: u64 = 0xAAAA_AAAA_AAAA_AAAB;
    let mut g = [0u64; 256];
    for (x, slot) in g.iter_mut().enumerate() {
        *slot = probe(x as u8, x as u8).wrapping_mul(INV3);
    }
    // Every pair of differing neighbours in the table must agree with the closed form, or the
    // probe did not read what it meant to (a hash of zero ends the crate's search early).
    let ok = (0..=255u8).all(|x| {
        let y = x.wrapping_add(1);
        probe(x, y) == (g[x as usize] << 1).wrapping_add(g[y as usize])
    });
    ok.then_some(g)
}

/// What a cut search needs besides the bytes.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
    /// The masks before and after the average size (the crate's `mask_s` and `mask_l`).
    pub mask_s: u64,
    pub mask_l: u64,
}

/// The length of the chunk that begins `source`: what [`crate_cut_len`] answers, found faster.
pub fn cut_len(source: &[u8], s: &Sizes) -> usize {
    match tables() {
        Some(t) => search(source, s, t),
        None => crate_cut_len(source, s),
    }
}

/// The crate's own search: `cut(source, min, avg, max, mask_s, mask_l, mask_s << 1, mask_l << 1)`.
pub fn crate_cut_len(source: &[u8], s: &Sizes) -> usize {
    cut(
        source,
        s.min,
        s.avg,
        s.max,
        s.mask_s,
        s.mask_l,
        s.mask_s << 1,
        s.mask_l << 1,
    )
    .1
}

/// Where the crate's search looks: positions `start..end` (whole pairs from the minimum size,
/// rounded down to even), the small mask before `switch`, and the length it answers when nothing
/// matches.
struct Bounds {
    start: usize,
    switch: usize,
    end: usize,
    none: usize,
}

/// The crate's bounds for a source of `len` bytes; `None` when it answers `len` at once.
fn bounds(len: usize, s: &Sizes) -> Option<Bounds> {
    if len <= s.min {
        return None;
    }
    let remaining = len.min(s.max);
    let center = if len <= s.max && len < s.avg {
        len
    } else {
        s.avg
    };
    Some(Bounds {
        start: s.min / 2 * 2,
        switch: center / 2 * 2,
        end: remaining / 2 * 2,
        none: remaining,
    })
}

/// The masks of an even position and of the odd one after it: the crate checks an even position
/// against the mask shifted left by one, so there the mask's top bit does not count.
fn pair_masks(mask: u64) -> (u64, u64) {
    (mask & !(1 << 63), mask)
}

/// Positions searched in one block; [`CHAINS`] blocks are searched at once.
const BLOCK: usize = 16 << 10;
/// Blocks searched side by side. Two positions of one chain cost a shift and two adds in a row
/// (three cycles) and seven instructions; four chains keep a six-wide core busy.
const CHAINS: usize = 4;
/// The gear hash of a position depends on the 64 bytes up to it and on nothing before.
const WINDOW: usize = 64;

/// The crate's search, [`CHAINS`] blocks at a time: the hash is a chain of dependent adds, so a
/// core runs several chains side by side in little more than the time of one. Each later block's
/// hash is started from the 64 bytes before it, which gives exactly the hash the block before
/// would have handed on. A cut in an earlier block wins over one in a later block.
fn search(src: &[u8], s: &Sizes, t: &Tables) -> usize {
    let Some(b) = bounds(src.len(), s) else {
        return src.len();
    };
    let mask_of = |from: usize, to: usize| {
        if to <= b.switch {
            Some(s.mask_s)
        } else if from >= b.switch {
            Some(s.mask_l)
        } else {
            None
        }
    };
    let (mut p, mut h) = (b.start, 0u64);
    while p < b.end {
        let last = p + CHAINS * BLOCK;
        let mask = (last <= b.end).then(|| mask_of(p, last)).flatten();
        let found = match mask {
            Some(mask) => {
                let mut hs = [h; CHAINS];
                for (k, hk) in hs.iter_mut().enumerate().skip(1) {
                    let at = p + k * BLOCK;
                    *hk = warm_hash(&src[at - WINDOW..at], &t.gear);
                }
                side_by_side(&src[p..last], p, hs, mask, t)
            }
            None => scan(src, p, (p + BLOCK).min(b.end), h, &b, s, &t.gear),
        };
        match found {
            Found::Cut(at) => return at,
            Found::Hash(next, at) => (h, p) = (next, at),
        }
    }
    b.none
}

/// What a search of some positions found: a cut, or none and the hash of the last position
/// with the position after it.
enum Found {
    Cut(usize),
    Hash(u64, usize),
}

/// The gear hash one byte on from `h`.
fn step(h: u64, x: u8, g: &[u64; 256]) -> u64 {
    (h << 1).wrapping_add(g[x as usize])
}

/// Two bytes on from `h` (the hash before an even position): twice the even position's hash,
/// which is checked against the mask shifted left by one as the crate does, and the odd
/// position's hash, checked against the mask.
fn pair(h: u64, x: &[u8], t: &Tables) -> (u64, u64) {
    let twice_even = (h << 2).wrapping_add(t.twice[x[0] as usize]);
    (twice_even, twice_even.wrapping_add(t.gear[x[1] as usize]))
}

/// The hash of the last byte of `bytes` started from zero.
fn warm_hash(bytes: &[u8], g: &[u64; 256]) -> u64 {
    bytes.iter().fold(0u64, |h, &x| step(h, x, g))
}

/// Positions `from..to` one after the other, from `h`, the hash of position `from - 1`.
fn scan(
    src: &[u8],
    from: usize,
    to: usize,
    mut h: u64,
    b: &Bounds,
    s: &Sizes,
    g: &[u64; 256],
) -> Found {
    for (p, &x) in src.iter().enumerate().take(to).skip(from) {
        h = step(h, x, g);
        let (even, odd) = pair_masks(if p < b.switch { s.mask_s } else { s.mask_l });
        if h & (if p % 2 == 0 { even } else { odd }) == 0 {
            return Found::Cut(p);
        }
    }
    Found::Hash(h, to)
}

/// The [`CHAINS`] blocks of `src` (which starts at position `at`, an even one) side by side:
/// block `k` from `hs[k]`, the hash of the position before it, all with mask `mask`.
fn side_by_side(src: &[u8], at: usize, mut hs: [u64; CHAINS], mask: u64, t: &Tables) -> Found {
    let blocks: [&[u8; BLOCK]; CHAINS] =
        std::array::from_fn(|k| src[k * BLOCK..][..BLOCK].try_into().expect("a whole block"));
    let twice = mask << 1;
    for i in (0..BLOCK).step_by(2) {
        for k in 0..CHAINS {
            let (even, odd) = pair(hs[k], &blocks[k][i..i + 2], t);
            hs[k] = odd;
            let cut = if even & twice == 0 {
                i
            } else if odd & mask == 0 {
                i + 1
            } else {
                continue;
            };
            // The blocks before this one have been searched up to here: finish them in order.
            let earlier = (0..k).find_map(|j| {
                let mut h = hs[j];
                blocks[j][i + 2..]
                    .chunks_exact(2)
                    .enumerate()
                    .find_map(|(n, x)| {
                        let (even, odd) = pair(h, x, t);
                        h = odd;
                        let p = j * BLOCK + i + 2 + 2 * n;
                        if even & twice == 0 {
                            Some(p)
                        } else {
                            (odd & mask == 0).then_some(p + 1)
                        }
                    })
            });
            return Found::Cut(at + earlier.unwrap_or(k * BLOCK + cut));
        }
    }
    Found::Hash(hs[CHAINS - 1], at + CHAINS * BLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastcdc::v2020::MASKS;

    #[test]
    fn the_table_reads_back() {
        let g = &tables()
            .expect("the gear table reads back through the crate's cut")
            .gear;
        assert!(g.iter().all(|&v| v != 0));
    }

    #[test]
    fn a_hash_warmed_on_the_window_is_the_hash_carried_from_the_start() {
        // What the second block's start relies on: the whole 64-bit hash, not only the masked
        // bits (a cut just after a block boundary would be missed or invented otherwise).
        let g = &tables().expect("the gear table reads back").gear;
        let data = relay_kit::noise(9, 4096);
        let mut carried = 0;
        for (p, &x) in data.iter().enumerate() {
            carried = step(carried, x, g);
            if p + 1 >= WINDOW {
                assert_eq!(warm_hash(&data[p + 1 - WINDOW..=p], g), carried, "at {p}");
            }
        }
    }

    #[test]
    fn cuts_are_the_crates() {
        // Small sizes so that many cuts, the switch and the maximum are all met.
        let sizes = [
            Sizes {
                min: 64,
                avg: 256,
                max: 1024,
                mask_s: MASKS[9],
                mask_l: MASKS[7],
            },
            Sizes {
                min: 2048,
                avg: 8192,
                max: 32768,
                mask_s: MASKS[14],
                mask_l: MASKS[12],
            },
            Sizes {
                min: 256 << 10,
                avg: 1 << 20,
                max: 4 << 20,
                mask_s: MASKS[21],
                mask_l: MASKS[19],
            },
            // Cuts every few KiB after a long minimum: every block searched side by side holds
            // some, and a later block often finds one first.
            Sizes {
                min: 256 << 10,
                avg: 512 << 10,
                max: 4 << 20,
                mask_s: MASKS[12],
                mask_l: MASKS[10],
            },
        ];
        let data = relay_kit::noise(5, 12 << 20);
        let mut zeros_then_noise = vec![0u8; 6 << 20];
        zeros_then_noise.extend_from_slice(&data[..3 << 20]);
        let runs: Vec<u8> = (0..(3 << 20))
            .map(|i: usize| (i / 1000 % 7) as u8)
            .collect();
        let mut cuts = 0;
        for s in &sizes {
            for source in [&data[..], &zeros_then_noise[..], &runs[..]] {
                let mut at = 0;
                while at < source.len() {
                    let rest = &source[at..];
                    let ours = cut_len(rest, s);
                    assert_eq!(
                        ours,
                        crate_cut_len(rest, s),
                        "at {at} of {} (min {})",
                        source.len(),
                        s.min
                    );
                    at += ours.max(1);
                    cuts += 1;
                }
            }
            // Lengths odd and even around the minimum, the switch and the maximum.
            let around = |x: usize| x - 3..x + 4;
            let lens = (0..20)
                .chain(around(s.min))
                .chain(around(s.min + 9))
                .chain(around(s.avg))
                .chain(around(s.max));
            for len in lens {
                for src in [&data[1000..1000 + len], &zeros_then_noise[..len]] {
                    assert_eq!(
                        cut_len(src, s),
                        crate_cut_len(src, s),
                        "len {len} min {}",
                        s.min
                    );
                }
            }
        }
        assert!(cuts > 100, "{cuts} cuts");
    }
}
