//! `tally-benches` holds tally's criterion micro-benchmarks (one file per
//! scenario under `benches/`) and, later, the end-to-end load tool
//! `tally-bench`.
