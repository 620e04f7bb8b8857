//! The file plane's CPU paths: content-defined chunking, BLAKE3 of a chunk, zstd's verdict on an
//! incompressible chunk, the manifest diff an upload's start pays, and manifest decoding.

use std::collections::HashSet;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use relay::files::chunker::{self, AVG_CHUNK, Chunker, chunk_hash};
use relay::files::manifest::{ChunkRef, Manifest};
use relay::files::plan;

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

fn bench(c: &mut Criterion) {
    let data = noise(1, 64 << 20);
    let mut g = c.benchmark_group("files");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("chunk_and_hash_64MiB", |b| {
        b.iter(|| {
            let mut chunker = Chunker::new(black_box(&data[..]));
            let mut n = 0;
            while let Some(c) = chunker.next_chunk().expect("in-memory read") {
                n += c.data.len();
            }
            n
        })
    });
    g.bench_function("cut_points_only_64MiB", |b| {
        b.iter(|| {
            fastcdc::v2020::FastCDC::new(black_box(&data[..]), 256 << 10, 1 << 20, 4 << 20)
                .map(|c| c.length)
                .sum::<usize>()
        })
    });
    g.bench_function("cut_file_one_thread_64MiB", |b| {
        b.iter(|| chunker::cut_file(black_box(&data[..]), 1).len())
    });
    let chunk = &data[..AVG_CHUNK];
    g.throughput(Throughput::Bytes(chunk.len() as u64));
    g.bench_function("blake3_1MiB", |b| b.iter(|| chunk_hash(black_box(chunk))));
    g.bench_function("zstd3_verdict_incompressible_1MiB", |b| {
        b.iter(|| plan::compress(black_box(chunk)))
    });
    g.finish();

    // A 10 GiB file's manifest (10,240 chunks) against a store holding 90% of it.
    let chunks: Vec<ChunkRef> = (0..10_240u32)
        .map(|i| ChunkRef {
            hash: chunk_hash(&i.to_le_bytes()),
            len: AVG_CHUNK as u32,
        })
        .collect();
    let held: HashSet<[u8; 32]> = chunks
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 != 0)
        .map(|(_, c)| c.hash)
        .collect();
    c.bench_function("manifest_diff_10k_chunks", |b| {
        b.iter(|| plan::missing_chunks(black_box(&chunks), |h| held.contains(h)))
    });
    let m = Manifest::new(chunks).expect("valid manifest");
    let bytes = m.encode();
    c.bench_function("manifest_decode_10k_chunks", |b| {
        b.iter(|| Manifest::decode(black_box(&bytes)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
