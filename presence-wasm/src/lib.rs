//! Browser SDK for presence-rs.
//!
//! A thin WebAssembly face over `presence-core`: the core decides, this crate wires it to the
//! browser (WebSocket, timers, DOM activity). Built into an npm package by `cargo xtask npm`.
//!
//! The crate also builds natively so `cargo clippy --workspace` and `cargo test --workspace`
//! cover it; browser-only code is tested in headless Chromium (`tests/browser.rs`).

#![forbid(unsafe_code)]

use wasm_bindgen::prelude::wasm_bindgen;

/// The wire protocol version this SDK speaks, as defined by `presence-core`.
#[wasm_bindgen(js_name = protocolVersion)]
pub fn protocol_version() -> u32 {
    presence_core::PROTOCOL_VERSION
}
