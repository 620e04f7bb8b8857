//! Criterion benchmarks of relay's hot paths live in `benches/`; results in `RESULTS.md`.
