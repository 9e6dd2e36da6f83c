//! Where things are: the repository root, the target directory and package facts, read from
//! `cargo metadata` so a custom `CARGO_TARGET_DIR` is honoured.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::cmd;

/// Paths and package metadata of this workspace.
pub struct Workspace {
    /// The repository root (holds the workspace `Cargo.toml`).
    pub root: PathBuf,
    /// Cargo's target directory.
    pub target: PathBuf,
    metadata: Value,
}

impl Workspace {
    /// Reads the workspace layout with `cargo metadata --no-deps`.
    pub fn load() -> Result<Self> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .to_path_buf();
        let json = cmd::output(
            cmd::cargo()
                .args(["metadata", "--format-version", "1", "--no-deps"])
                .current_dir(&root),
        )?;
        let metadata: Value = serde_json::from_str(&json).context("parsing `cargo metadata`")?;
        let target = metadata["target_directory"]
            .as_str()
            .map(PathBuf::from)
            .context("`cargo metadata` has no target_directory")?;
        Ok(Workspace {
            root,
            target,
            metadata,
        })
    }

    /// The `cargo metadata` entry of package `name`.
    pub fn package(&self, name: &str) -> Result<&Value> {
        self.metadata["packages"]
            .as_array()
            .and_then(|packages| packages.iter().find(|p| p["name"] == name))
            .with_context(|| format!("package `{name}` is not in the workspace"))
    }

    /// A string field (`version`, `description`, …) of package `name`.
    pub fn package_field(&self, name: &str, field: &str) -> Result<String> {
        self.package(name)?[field]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("package `{name}` has no `{field}`"))
    }

    /// Whether package `name` has a binary target.
    pub fn has_bin(&self, name: &str) -> Result<bool> {
        let targets = self.package(name)?["targets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(targets.iter().any(|target| {
            target["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"))
        }))
    }

    /// The wasm-bindgen test runner built by `cargo build -p xtask --bin wasm-test-runner`.
    pub fn wasm_test_runner(&self) -> PathBuf {
        self.target
            .join("tools")
            .join(format!("wasm-test-runner{}", std::env::consts::EXE_SUFFIX))
    }
}
