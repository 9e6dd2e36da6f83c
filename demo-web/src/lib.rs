//! Web demo of presence-rs: serves the browser SDK and a demo page.
//!
//! Placeholder: the demo is written in a later step; `cargo xtask demo` runs its binary once it has one.

#![forbid(unsafe_code)]
