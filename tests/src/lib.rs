//! Cross-crate integration tests (`tests/tests/`) and the load generator
//! (`src/bin/loadgen/`) that `cargo xtask bench` drives.

#![forbid(unsafe_code)]
