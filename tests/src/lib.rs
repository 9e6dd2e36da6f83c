//! Cross-crate integration tests for presence-rs (server + core + clients).
//!
//! Placeholder: future end-to-end tests live in `tests/tests/`.

#![forbid(unsafe_code)]
