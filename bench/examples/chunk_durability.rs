//! What making received chunks durable costs, measured two ways on the file system of `DIR`:
//!
//! - `store`: the relay's own chunk store (`FsBlobs::put`, each chunk kept): appended to a pack
//!   around the page cache and flushed;
//! - `files`: what the store did before packs: each chunk written to a temp file around the page
//!   cache, fsynced, renamed into place, its directory fsynced;
//! - `pack`: each chunk appended at a block boundary to one file, then `fdatasync`: the bound for
//!   the store's packs, with no bookkeeping at all.
//!
//! Each writes CHUNKS chunks of 1 MiB (default 1024, so 1 GiB) into a fresh directory, removing
//! the last round's first, as the benchmarks do between runs. Prints wall time and the CPU time of
//! the writing thread (from `/proc/thread-self/schedstat`); rounds alternate the two ways.
//!
//! Usage: cargo run --release -p relay-bench --example chunk_durability -- DIR [CHUNKS] [ROUNDS]
#![allow(clippy::unwrap_used)] // A measurement: any failure ends it.

use std::fs;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use relay::files::store::{Blobs, FsBlobs};

const CHUNK: usize = 1 << 20;
const BLOCK: usize = 4096;

/// CPU time of the calling thread so far.
fn thread_cpu() -> Duration {
    let stat = fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    let ns: u64 = stat.split_whitespace().next().unwrap().parse().unwrap();
    Duration::from_nanos(ns)
}

/// `len` bytes at a block boundary in memory, with some content.
fn aligned(len: usize) -> (Vec<u8>, usize) {
    let mut v = vec![0u8; len + BLOCK];
    let at = v.as_ptr().align_offset(BLOCK);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in &mut v[at..at + len] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    (v, at)
}

fn run(way: &str, dir: &Path, chunks: usize, data: &mut [u8]) -> (Duration, Duration) {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).unwrap();
    let (t0, c0) = (Instant::now(), thread_cpu());
    match way {
        "store" => {
            // A pack's registration (once per GiB) is left out.
            let blobs = FsBlobs::open(&dir.join("chunks"), Box::new(|_| Ok(()))).unwrap();
            for i in 0..chunks {
                data[..8].copy_from_slice(&(i as u64).to_le_bytes());
                blobs.put(data, &[0u8; 8]).unwrap().keep();
            }
        }
        "files" => {
            for i in 0..chunks {
                data[..8].copy_from_slice(&(i as u64).to_le_bytes());
                let hex = blake3::hash(&data[..8]).to_hex();
                let sub = dir.join(&hex[..2]);
                if !sub.exists() {
                    fs::create_dir(&sub).unwrap();
                    fs::File::open(dir).unwrap().sync_all().unwrap();
                }
                let tmp = sub.join(format!("{}.tmp", &hex[2..]));
                let f = fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&tmp)
                    .unwrap();
                f.write_all_at(data, 0).unwrap();
                f.sync_all().unwrap();
                fs::rename(&tmp, sub.join(&hex[2..])).unwrap();
                fs::File::open(&sub).unwrap().sync_all().unwrap();
            }
        }
        "pack" => {
            let pack = fs::OpenOptions::new()
                .create(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(dir.join("chunks.pack"))
                .unwrap();
            let stride = (CHUNK as u64).next_multiple_of(BLOCK as u64);
            for i in 0..chunks {
                data[..8].copy_from_slice(&(i as u64).to_le_bytes());
                pack.write_all_at(data, i as u64 * stride).unwrap();
                pack.sync_data().unwrap();
            }
        }
        _ => panic!("unknown way {way}"),
    }
    (t0.elapsed(), thread_cpu() - c0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(root) = args.get(1) else {
        eprintln!("usage: chunk_durability DIR [CHUNKS] [ROUNDS]");
        std::process::exit(2);
    };
    let chunks: usize = args.get(2).map_or(1024, |s| s.parse().unwrap());
    let rounds: usize = args.get(3).map_or(3, |s| s.parse().unwrap());
    let (mut buf, at) = aligned(CHUNK);
    let data = &mut buf[at..at + CHUNK];
    println!("{chunks} chunks of 1 MiB in {root}");
    for round in 1..=rounds {
        for way in ["store", "files", "pack"] {
            let (wall, cpu) = run(way, &Path::new(root).join(way), chunks, data);
            println!(
                "round {round} {way:5}  wall {:.3} s  cpu {:.3} s",
                wall.as_secs_f64(),
                cpu.as_secs_f64()
            );
        }
    }
    for way in ["store", "files", "pack"] {
        let _ = fs::remove_dir_all(Path::new(root).join(way));
    }
}
