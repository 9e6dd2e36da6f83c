//! `wasm-bindgen-test-runner`, built from the workspace so its version always matches the
//! `wasm-bindgen` in Cargo.lock (no `cargo install` needed). Cargo calls it as the runner for
//! `wasm32-unknown-unknown` (see `.cargo/config.toml`).

#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    wasm_bindgen_cli::wasm_bindgen_test_runner::run_cli_with_args(std::env::args_os())
}
