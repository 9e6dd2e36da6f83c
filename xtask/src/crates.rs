//! The crates as a registry would get them: `cargo package` (which builds each packed crate on
//! its own, so a path that reaches outside it fails here) and what each `.crate` must hold.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::cmd;
use crate::workspace::Workspace;

/// The crates meant for crates.io (the others say `publish = false`).
const PUBLISHED: &[&str] = &["presence-core", "presence-server"];
/// Files every published crate carries besides its sources.
const REQUIRED: &[&str] = &["README.md", "LICENSE-MIT", "LICENSE-APACHE", "Cargo.toml"];

/// Packs and verifies the published crates, then checks their file lists.
pub fn package(ws: &Workspace) -> Result<()> {
    forget_earlier_packs(ws)?;
    let mut command = cmd::cargo();
    // `--allow-dirty`: the steps before this one leave build outputs in the tree; what is
    // checked is the package, not the checkout.
    command
        .current_dir(&ws.root)
        .args(["package", "--locked", "--allow-dirty"]);
    for name in PUBLISHED {
        command.args(["--package", name]);
    }
    cmd::run(&mut command)?;
    for name in PUBLISHED {
        let out = cmd::output(cmd::cargo().current_dir(&ws.root).args([
            "package",
            "--list",
            "--locked",
            "--allow-dirty",
            "--package",
            name,
        ]))?;
        let missing: Vec<&str> = REQUIRED
            .iter()
            .filter(|f| !out.lines().any(|l| l == **f))
            .copied()
            .collect();
        if !missing.is_empty() {
            bail!("the {name} crate lacks {missing:?}");
        }
        println!(
            "{name}: {} files, with {}",
            out.lines().count(),
            REQUIRED.join(", ")
        );
    }
    Ok(())
}

/// Cargo builds the packed crates a verification depends on (presence-core, for the server)
/// from a temporary registry, unpacked under its home's `registry/src/<that registry>/`, and
/// takes a registry crate of a known version as unchanged: the next run on this machine would
/// build the server against the previous run's core. So the unpacked copies go first, and
/// their build fingerprints in the target directory (a registry build records no source files:
/// its `dep-lib-*` names no `src/`). The registries' own folders (`index.*`) are not touched.
fn forget_earlier_packs(ws: &Workspace) -> Result<()> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let ours = |name: &str| PUBLISHED.iter().any(|p| name.starts_with(&format!("{p}-")));
    if let Some(src) = home.map(|h| h.join("registry").join("src"))
        && let Ok(registries) = std::fs::read_dir(&src)
    {
        for registry in registries.flatten() {
            if registry.file_name().to_string_lossy().starts_with("index.") {
                continue;
            }
            for krate in std::fs::read_dir(registry.path())?.flatten() {
                if ours(&krate.file_name().to_string_lossy()) {
                    std::fs::remove_dir_all(krate.path())?;
                }
            }
        }
    }
    let Ok(fingerprints) = std::fs::read_dir(ws.target.join("debug").join(".fingerprint")) else {
        return Ok(());
    };
    for dir in fingerprints.flatten() {
        let name = dir.file_name().to_string_lossy().into_owned();
        if !ours(&name) {
            continue;
        }
        let from_registry = std::fs::read_dir(dir.path())?.flatten().any(|f| {
            f.file_name().to_string_lossy().starts_with("dep-lib-")
                && std::fs::read(f.path()).is_ok_and(|b| !b.windows(4).any(|w| w == b"src/"))
        });
        if from_registry {
            std::fs::remove_dir_all(dir.path())?;
        }
    }
    Ok(())
}
